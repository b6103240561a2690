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
    files: dict[str, page.File]  # the tfjs/ files as read while the signature was checked: what is served


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
            return name, "StaticFiles", lambda _: self._static(name, file, if_none_match)
        if m := _PAGE.fullmatch(path):
            name, version = unquote(m.group(1)), m.group(2)
            return name, "BrowserPage", lambda _: self._page(name, int(version) if version else None)
        if m := _MODEL_FILE.fullmatch(path):
            name, version, file = unquote(m.group(1)), int(m.group(2)), m.group(3)
            return name, "ModelFiles", lambda _: self._model_file(name, version, file, if_none_match)
        raise ServingError(Code.NOT_FOUND, f"Malformed request: {method} {path}")

    def _static(self, name: str, file: str, if_none_match: str | None) -> Response:
        self._service.version_dir(ModelSpec(name, None))  # a model this server serves (else NOT_FOUND)
        return file_response(page.static_file(file), if_none_match, f"no file {file}")

    def _page(self, name: str, version: int | None) -> Response:
        version, path = self._service.version_dir(ModelSpec(name, version))
        tfjs_dir = os.path.join(path, TFJS_DIR)
        if not os.path.isfile(os.path.join(tfjs_dir, MODEL_JSON)):
            return Response(page.missing_page(name, version), 404, media_type="text/html", headers=page.ISOLATION)
        self._signed_files(name, version, path)
        model = f"/ui/models/{quote(name, safe='')}"
        base = f"{model}/versions/{version}"
        content = page.render(model=name, version=version, static_url=f"{model}/static/",
                              model_url=f"{base}/tfjs/{MODEL_JSON}",
                              predict_url=f"/v1/models/{quote(name, safe='')}/versions/{version}:predict",
                              signature=page.signature_key(tfjs_dir))
        return Response(content, media_type="text/html", headers={**page.ISOLATION, "Cache-Control": "no-cache"})

    def _model_file(self, name: str, version: int, file: str, if_none_match: str | None) -> Response:
        version, path = self._service.version_dir(ModelSpec(name, version))
        signed = self._signed_files(name, version, path)
        found = signed.get(file) if signed is not None else page.model_file(os.path.join(path, TFJS_DIR), file)
        return file_response(found, if_none_match, f"version {version} of model '{name}' has no TF.js file {file}")

    def _signed_files(self, name: str, version: int, path: str) -> dict[str, page.File] | None:
        """None when versions need no signature; else the tfjs/ files as read while the version's
        signature was checked (403 when it does not cover them). They are served from memory until
        any file of the version changes (inode, mtime, ctime or size), so what a browser gets is
        what was verified, with no hashing per request."""
        rules = self._guard.config.models
        if not rules.require_signature:
            return None
        stamp = _stamp(path)
        with self._lock:
            known = self._verified.get(path)
            checking = self._checking.setdefault(path, threading.Lock())
        if known is None or known.stamp != stamp:  # converted, re-signed, touched: check again
            with checking:  # the page's parallel fetches wait for one verification instead of each hashing
                with self._lock:
                    known = self._verified.get(path)
                if known is None or known.stamp != stamp:
                    tfjs_dir = os.path.join(path, TFJS_DIR)
                    files = {n: f for n in (os.listdir(tfjs_dir) if os.path.isdir(tfjs_dir) else [])
                             if (f := page.model_file(tfjs_dir, n)) is not None}
                    try:
                        signing.verify(path, rules.trusted_keys)
                        refusal = ""
                    except signing.VerificationError as e:
                        refusal = str(e)
                    if _stamp(path) != stamp:  # written while it was read or verified
                        refusal = refusal or "its files changed while they were checked"
                    known = _Verified(stamp, refusal, files)
                    with self._lock:
                        self._verified[path] = known
        if known.refusal:
            raise self._refused(name, version, known.refusal)
        return known.files

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


def file_response(found: page.File | None, if_none_match: str | None, missing: str,
                  extra_headers: dict[str, str] | None = None) -> Response:
    """A file with its ETag (304 when the caller has it), or NOT_FOUND saying `missing`."""
    if found is None:
        raise ServingError(Code.NOT_FOUND, missing)
    headers = {**found.headers(), **(extra_headers or {})}
    if if_none_match and if_none_match.strip() == headers["ETag"]:
        return Response(status_code=304, headers=headers)
    return Response(found.content, media_type=found.media_type, headers=headers)
