"""The /ui/ routes of the REST port: a version's in-browser page and the files it loads.

    /ui/models/{name}[/versions/{v}]/browser     the page (latest available version by default)
    /ui/models/{name}/versions/{v}/tfjs/{file}   the version's TF.js model (model.json, shards)
    /ui/models/{name}/static/{file}              the page's script and the shipped TF.js runtime

All of them need the `read` scope on the model when auth is on (the runtime files too: under the
model's path, so a caller allowed one model needs no server-wide scope). Under `require_signature` the model files are
handed out only while the version's signature covers them: `tfprod convert` writes `tfjs/` into
the version after it was signed, and a browser must never run files nobody signed.
"""

from __future__ import annotations

import os
import re
import threading
from collections.abc import Callable
from urllib.parse import quote, unquote

from starlette.responses import Response

from tfprod.edge import page
from tfprod.edge.tfjs import MODEL_JSON, TFJS_DIR
from tfprod.errors import Code, ServingError
from tfprod.security import signing
from tfprod.security.guard import Guard
from tfprod.service import ModelSpec, Service

_PAGE = re.compile(r"/ui/models/([^/]+)(?:/versions/(\d+))?/browser/?")
_MODEL_FILE = re.compile(r"/ui/models/([^/]+)/versions/(\d+)/tfjs/([^/]+)")
_STATIC = re.compile(r"/ui/models/([^/]+)/static/(.+)")
Route = tuple[str, str, Callable[[bytes], Response]]


class UiRoutes:
    def __init__(self, service: Service, guard: Guard) -> None:
        self._service = service
        self._guard = guard
        self._lock = threading.Lock()
        self._verified: dict[str, tuple[object, str]] = {}  # version dir -> (its files' stamp, refusal or "")

    def route(self, method: str, path: str, if_none_match: str | None) -> Route:
        if method not in ("GET", "HEAD"):
            raise ServingError(Code.NOT_FOUND, f"Malformed request: {method} {path}")
        if m := _STATIC.fullmatch(path):
            name, file = unquote(m.group(1)), m.group(2)
            return name, "StaticFiles", lambda _: _file(page.static_file(file), if_none_match, f"no file {file}")
        if m := _PAGE.fullmatch(path):
            name, version = unquote(m.group(1)), m.group(2)
            return name, "BrowserPage", lambda _: self._page(name, int(version) if version else None)
        if m := _MODEL_FILE.fullmatch(path):
            name, version, file = unquote(m.group(1)), int(m.group(2)), m.group(3)
            return name, "ModelFiles", lambda _: self._model_file(name, version, file, if_none_match)
        raise ServingError(Code.NOT_FOUND, f"Malformed request: {method} {path}")

    def _page(self, name: str, version: int | None) -> Response:
        version, path = self._service.version_dir(ModelSpec(name, version))
        tfjs_dir = os.path.join(path, TFJS_DIR)
        if not os.path.isfile(os.path.join(tfjs_dir, MODEL_JSON)):
            return Response(page.missing_page(name, version), 404, media_type="text/html", headers=page.ISOLATION)
        self._check_signed(name, version, path)
        model = f"/ui/models/{quote(name, safe='')}"
        base = f"{model}/versions/{version}"
        content = page.render(model=name, version=version, static_url=f"{model}/static/",
                              model_url=f"{base}/tfjs/{MODEL_JSON}",
                              predict_url=f"/v1/models/{quote(name, safe='')}/versions/{version}:predict",
                              signature=page.signature_key(tfjs_dir))
        return Response(content, media_type="text/html", headers={**page.ISOLATION, "Cache-Control": "no-cache"})

    def _model_file(self, name: str, version: int, file: str, if_none_match: str | None) -> Response:
        version, path = self._service.version_dir(ModelSpec(name, version))
        self._check_signed(name, version, path)
        return _file(page.model_file(os.path.join(path, TFJS_DIR), file), if_none_match,
                     f"version {version} of model '{name}' has no TF.js file {file}")

    def _check_signed(self, name: str, version: int, path: str) -> None:
        rules = self._guard.config.models
        if not rules.require_signature:
            return
        stamp = _stamp(path)
        with self._lock:
            known = self._verified.get(path)
        if known is None or known[0] != stamp:  # the files changed (converted, re-signed): check again
            try:
                signing.verify(path, rules.trusted_keys)
                refusal = ""
            except signing.VerificationError as e:
                refusal = str(e)
            with self._lock:
                self._verified[path] = (stamp, refusal)
                known = self._verified[path]
        if known[1]:
            raise ServingError(Code.PERMISSION_DENIED,
                               f"the TF.js files of version {version} of model '{name}' are not covered by its "
                               f"signature ({known[1]}); re-sign the version (`tfprod sign VERSION_DIR "
                               "--private_key KEY`) after converting it")


def _stamp(path: str) -> object:
    """Every file's (path, mtime, size) under `path`: what a re-check is keyed on."""
    found = []
    for root, _, files in os.walk(path):
        for f in files:
            st = os.stat(os.path.join(root, f))
            found.append((os.path.join(root, f), st.st_mtime_ns, st.st_size))
    return tuple(sorted(found))


def _file(found: page.File | None, if_none_match: str | None, missing: str) -> Response:
    if found is None:
        raise ServingError(Code.NOT_FOUND, missing)
    headers = found.headers()
    if if_none_match and if_none_match.strip() == headers["ETag"]:
        return Response(status_code=304, headers=headers)
    return Response(found.content, media_type=found.media_type, headers=headers)
