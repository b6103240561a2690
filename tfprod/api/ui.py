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

import dataclasses
import hashlib
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


@dataclasses.dataclass(frozen=True)
class _Verified:
    stamp: object  # the version's files (path, inode, mtime, ctime, size) when it was checked
    refusal: str  # why its signature does not cover it, or ""
    digests: dict[str, str]  # sha256 of each tfjs/ file as verified


class UiRoutes:
    def __init__(self, service: Service, guard: Guard) -> None:
        self._service = service
        self._guard = guard
        self._lock = threading.Lock()
        self._checking: dict[str, threading.Lock] = {}  # version dir -> one verification at a time
        self._verified: dict[str, _Verified] = {}

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
        self._signed_digests(name, version, path)
        model = f"/ui/models/{quote(name, safe='')}"
        base = f"{model}/versions/{version}"
        content = page.render(model=name, version=version, static_url=f"{model}/static/",
                              model_url=f"{base}/tfjs/{MODEL_JSON}",
                              predict_url=f"/v1/models/{quote(name, safe='')}/versions/{version}:predict",
                              signature=page.signature_key(tfjs_dir))
        return Response(content, media_type="text/html", headers={**page.ISOLATION, "Cache-Control": "no-cache"})

    def _model_file(self, name: str, version: int, file: str, if_none_match: str | None) -> Response:
        version, path = self._service.version_dir(ModelSpec(name, version))
        digests = self._signed_digests(name, version, path)
        found = page.model_file(os.path.join(path, TFJS_DIR), file)
        if found is not None and digests is not None and hashlib.sha256(found.content).hexdigest() != digests.get(file):
            with self._lock:  # changed since it was verified: never served; checked again next time
                self._verified.pop(path, None)
            raise self._refused(name, version, f"tfjs/{file} changed after its signature was checked")
        return _file(found, if_none_match, f"version {version} of model '{name}' has no TF.js file {file}")

    def _signed_digests(self, name: str, version: int, path: str) -> dict[str, str] | None:
        """None when versions need no signature; else the sha256 of each tfjs/ file as the
        version's signature covers them (403 when it does not). The bytes served are checked
        against these, so a file changed after the check is never handed out."""
        rules = self._guard.config.models
        if not rules.require_signature:
            return None
        with self._lock:
            checking = self._checking.setdefault(path, threading.Lock())
        with checking:  # the page's parallel fetches wait for one verification instead of each hashing
            stamp = _stamp(path)
            with self._lock:
                known = self._verified.get(path)
            if known is None or known.stamp != stamp:  # converted, re-signed, touched: check again
                tfjs_dir = os.path.join(path, TFJS_DIR)
                before = _digests(tfjs_dir)
                try:
                    signing.verify(path, rules.trusted_keys)
                    refusal = ""
                except signing.VerificationError as e:
                    refusal = str(e)
                after = _digests(tfjs_dir)
                if before != after:
                    refusal = refusal or "its TF.js files changed while they were checked"
                known = _Verified(stamp, refusal, after)
                with self._lock:
                    self._verified[path] = known
        if known.refusal:
            raise self._refused(name, version, known.refusal)
        return known.digests

    @staticmethod
    def _refused(name: str, version: int, why: str) -> ServingError:
        return ServingError(Code.PERMISSION_DENIED,
                            f"the TF.js files of version {version} of model '{name}' are not covered by its "
                            f"signature ({why}); re-sign the version (`tfprod sign VERSION_DIR --private_key KEY`) "
                            "after converting it")


def _stamp(path: str) -> object:
    """Every file under `path` with its inode, mtime, ctime and size: what a re-check is keyed on."""
    found = []
    for root, _, files in os.walk(path):
        for f in files:
            try:
                st = os.stat(os.path.join(root, f))
            except FileNotFoundError:  # renamed away while we looked (a conversion in progress)
                continue
            found.append((os.path.join(root, f), st.st_ino, st.st_mtime_ns, st.st_ctime_ns, st.st_size))
    return tuple(sorted(found))


def _digests(tfjs_dir: str) -> dict[str, str]:
    out = {}
    for name in sorted(os.listdir(tfjs_dir)) if os.path.isdir(tfjs_dir) else []:
        try:
            with open(os.path.join(tfjs_dir, name), "rb") as f:
                out[name] = hashlib.sha256(f.read()).hexdigest()
        except (FileNotFoundError, IsADirectoryError):
            continue
    return out


def _file(found: page.File | None, if_none_match: str | None, missing: str) -> Response:
    if found is None:
        raise ServingError(Code.NOT_FOUND, missing)
    headers = found.headers()
    if if_none_match and if_none_match.strip() == headers["ETag"]:
        return Response(status_code=304, headers=headers)
    return Response(found.content, media_type=found.media_type, headers=headers)
