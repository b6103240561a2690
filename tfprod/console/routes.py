"""The console's routes on the REST port (docs/console.md).

    /ui/                                          the page (a static app: index.html)
    /ui/console/{file}                            its script, style and the vendored uPlot
    /ui/api/models                                every model: config, versions, signatures, audit, files
    /ui/api/metrics                               the server's own counts and histograms (a pool's, merged)
    /ui/api/models/{name}/versions/{v}/lineage    where a version pushed by the pipeline came from

The page and its files hold no data and are open, so a browser can load them and ask for a key;
every JSON route needs the `read` scope (server-wide for models and metrics, the model's for its
lineage). Rollouts are read and acted on through the public admin API (/v1/rollouts).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import os
import re
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import quote, unquote

from starlette.responses import Response
from tensorflow.core.framework import types_pb2

from tfprod.api.ui import file_response
from tfprod.codec import json_tensor, messages
from tfprod.core.states import State
from tfprod.edge import page
from tfprod.edge.tfjs import MODEL_JSON, TFJS_DIR
from tfprod.errors import Code, ServingError
from tfprod.security.guard import Guard
from tfprod.servables.tflite import TFLITE_FILE
from tfprod.server_core import ServerCore
from tfprod.service import ModelSpec, Service

STATIC_DIR = os.path.join(os.path.dirname(__file__), "static")
_FILES = {"console.js": "text/javascript", "console.css": "text/css",
          "vendor/uPlot.iife.min.js": "text/javascript", "vendor/uPlot.min.css": "text/css",
          "vendor/LICENSE": "text/plain; charset=utf-8"}
_FILE = re.compile(r"/ui/console/(.+)")
_LINEAGE = re.compile(r"/ui/api/models/([^/]+)/versions/(\d+)/lineage")
Route = tuple[str, str, Callable[[bytes], Response]]
# The page can run any script it loads; it loads only its own (no CDN, no inline script).
_POLICY = {"Content-Security-Policy": "default-src 'self'; img-src 'self' data:; base-uri 'none'; "
                                      "object-src 'none'; form-action 'self'; frame-ancestors 'none'"}


@functools.cache
def _file(name: str) -> page.File:
    with open(os.path.join(STATIC_DIR, name), "rb") as f:
        content = f.read()
    return page.File(content, "text/html; charset=utf-8" if name == "index.html" else _FILES[name],
                     hashlib.sha256(content).hexdigest()[:32])


class Console:
    def __init__(self, service: Service, core: ServerCore, guard: Guard,
                 metrics: Callable[[], dict[str, Any]],
                 checked: Callable[[str, int], dict[str, str] | None] = lambda name, version: None) -> None:
        self._service = service
        self._core = core
        self._guard = guard
        self._metrics = metrics  # ServingMetrics.console of this process, or of the pool's merged metrics
        self._checked = checked  # what the security rules checked of a version when it loaded

    def route(self, method: str, path: str, if_none_match: str | None) -> Route | None:
        """The console's route for this request, or None when the path is not the console's."""
        if method not in ("GET", "HEAD") and (path in ("/ui", "/ui/", "/ui/index.html")
                                              or path.startswith(("/ui/console/", "/ui/api/"))):
            raise ServingError(Code.NOT_FOUND, f"Malformed request: {method} {path}")
        if path in ("/ui", "/ui/", "/ui/index.html"):
            return "", "ConsolePage", lambda _: file_response(_file("index.html"), if_none_match, "", _POLICY)
        if m := _FILE.fullmatch(path):
            found = _file(m.group(1)) if m.group(1) in _FILES else None
            return "", "ConsoleFiles", lambda _: file_response(found, if_none_match,
                                                              f"the console has no file {m.group(1)}", _POLICY)
        if path == "/ui/api/models":
            return "", "ConsoleModels", lambda _: _json(self.models())
        if path == "/ui/api/metrics":
            return "", "ConsoleMetrics", lambda _: _json(self.metrics())
        if m := _LINEAGE.fullmatch(path):
            name, version = unquote(m.group(1)), int(m.group(2))
            return name, "GetLineage", lambda _: _json(self.lineage(name, version))
        if path.startswith("/ui/api/"):
            raise ServingError(Code.NOT_FOUND, f"Malformed request: {method} {path}")
        return None

    def metrics(self) -> dict[str, Any]:
        """The served models' counts (a name nobody serves, asked for by a stranger, is left out)
        and the server's clock when they were read: the page's intervals are measured on it."""
        served = set(self._service.models())
        read_at = time.time()
        return {"time": read_at, "models": {k: v for k, v in self._metrics().items() if k in served}}

    def models(self) -> dict[str, Any]:
        rules = self._guard.config.models
        configured = {m.name: m for m in self._core.models}
        out = []
        for name, (statuses, labels) in sorted(self._service.models().items()):
            config = configured.get(name)
            versions = []
            for status in sorted(statuses, key=lambda s: -s.version):
                entry: dict[str, Any] = {"version": status.version, "state": status.state.name,
                                         "error": status.error.message if status.error else "",
                                         "labels": sorted(k for k, v in labels.items() if v == status.version)}
                if status.state is State.AVAILABLE:
                    entry.update(self._version(name, status.version))
                versions.append(entry)
            out.append({"name": name, "base_path": config.base_path if config else "",
                        "policy": _policy(config.policy) if config else "",
                        "labels": {k: v for k, v in sorted(labels.items())}, "versions": versions})
        return {"models": out, "auth": bool(self._guard.config.auth), "checks": {
            "signature": "verified at load against the trusted keys" if rules.require_signature else "not required",
            "graph_scan": {"enforce": "enforced at load", "warn": "run at load, warnings only",
                           "off": "off"}.get(rules.graph_scan, rules.graph_scan)}}

    def _version(self, name: str, version: int) -> dict[str, Any]:
        try:
            _, meta_graph, audit = self._service.metadata(ModelSpec(name, version))
            _, path = self._service.version_dir(ModelSpec(name, version))
        except ServingError:  # unloaded since the statuses were read
            return {}
        signatures = {}
        for key, sig in sorted(messages.signature_def_map(meta_graph).signature_def.items()):
            signatures[key] = {"method": sig.method_name, "inputs": _tensors(sig.inputs),
                               "outputs": _tensors(sig.outputs)}
        quoted = quote(name, safe="")
        tfjs = os.path.isfile(os.path.join(path, TFJS_DIR, MODEL_JSON))
        pipeline = (audit or {}).get("pipeline")
        return {"signatures": signatures, "audit": audit or {}, "checked": self._checked(name, version) or {},
                "files": {"tflite": os.path.isfile(os.path.join(path, TFLITE_FILE)), "tfjs": tfjs},
                "browser": f"/ui/models/{quoted}/versions/{version}/browser" if tfjs else "",
                "lineage": f"/ui/api/models/{quoted}/versions/{version}/lineage"
                if isinstance(pipeline, dict) and pipeline.get("run_id") else ""}

    def lineage(self, name: str, version: int) -> dict[str, Any]:
        from tfprod.pipeline.lineage import LineageError, chain  # the pipeline's store: only when asked

        _, path = self._service.version_dir(ModelSpec(name, version))
        try:
            return chain(path)
        except LineageError as e:
            raise ServingError(Code.NOT_FOUND, str(e)) from None


def _tensors(infos: Any) -> dict[str, Any]:
    return {alias: {"dtype": types_pb2.DataType.Name(info.dtype),
                    "shape": None if info.tensor_shape.unknown_rank else [d.size for d in info.tensor_shape.dim]}
            for alias, info in sorted(infos.items())}


def _policy(policy: Any) -> str:
    fields = dataclasses.asdict(policy)
    kind = type(policy).__name__.lower()
    if "versions" in fields:
        return f"{kind} {sorted(fields['versions'])}"
    return f"{kind} {fields['num_versions']}" if "num_versions" in fields else kind


def _json(doc: Any) -> Response:
    return Response(json_tensor.dumps(doc), media_type="application/json", headers={"Cache-Control": "no-store"})
