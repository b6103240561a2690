"""The in-browser page's files: the page itself, its script, the shipped TF.js runtime and a
version's converted model files. Framework-free, so the server's /ui/ routes and the parity
gate's own loopback server hand out the same bytes with the same headers."""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import html
import json
import os
import re

from tfprod.edge.tfjs import MODEL_JSON, RUNTIME_DIR, runtime_manifest

WEB_DIR = os.path.dirname(RUNTIME_DIR)
# Cross-origin isolation lets the threaded WASM build use SharedArrayBuffer; every file the page
# loads is same-origin, which require-corp allows.
ISOLATION = {
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Embedder-Policy": "require-corp",
    "Cross-Origin-Resource-Policy": "same-origin",
    "X-Content-Type-Options": "nosniff",
}
_TYPES = {".js": "text/javascript", ".wasm": "application/wasm", ".json": "application/json", ".css": "text/css",
          ".bin": "application/octet-stream", "": "text/plain; charset=utf-8"}
_PAGE_FILES = ("browser.js", "browser.css")
_MODEL_FILE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


@dataclasses.dataclass(frozen=True)
class File:
    content: bytes
    media_type: str
    etag: str

    def headers(self) -> dict[str, str]:
        return {**ISOLATION, "ETag": f'"{self.etag}"', "Cache-Control": "no-cache"}


def _media_type(name: str) -> str:
    return _TYPES.get(os.path.splitext(name)[1], "application/octet-stream")


class RuntimeTampered(Exception):
    pass


def verify_runtime(directory: str = RUNTIME_DIR) -> list[str]:
    """The runtime files in `directory` that differ from its manifest (changed, missing)."""
    with open(os.path.join(directory, "manifest.json")) as f:
        expected = json.load(f)["files"]
    problems = []
    for name, want in sorted(expected.items()):
        try:
            with open(os.path.join(directory, name), "rb") as f:
                digest = hashlib.sha256(f.read()).hexdigest()
        except OSError:
            problems.append(f"{name}: missing")
            continue
        if digest != want["sha256"]:
            problems.append(f"{name}: sha256 {digest[:16]}..., the manifest says {want['sha256'][:16]}...")
    return problems


@functools.cache
def _runtime_file(name: str) -> File:
    """A runtime file, read once and checked against the manifest: a browser never gets a
    runtime file that differs from the one the manifest names."""
    with open(os.path.join(RUNTIME_DIR, name), "rb") as f:
        content = f.read()
    digest = hashlib.sha256(content).hexdigest()
    if digest != runtime_manifest()["files"][name]["sha256"]:
        raise RuntimeTampered(f"the shipped TF.js runtime file {name} does not match its sha256 manifest "
                              "(tfprod/edge/web/tfjs/manifest.json): reinstall tfprod")
    return File(content, _media_type(name), digest[:32])


def static_file(name: str) -> File | None:
    """`browser.js`, `browser.css` or `tfjs/<a file of the runtime manifest>`; None for anything else."""
    if name.startswith("tfjs/") and name[5:] in runtime_manifest()["files"]:
        return _runtime_file(name[5:])
    if name not in _PAGE_FILES:
        return None
    with open(os.path.join(WEB_DIR, name), "rb") as f:
        content = f.read()
    return File(content, _media_type(name), hashlib.sha256(content).hexdigest()[:32])


def model_file(tfjs_dir: str, name: str) -> File | None:
    """A file of a converted model (model.json, weight shards); None when absent or not a plain
    file name inside the directory."""
    if not _MODEL_FILE.fullmatch(name):
        return None
    path = os.path.join(tfjs_dir, name)
    real = os.path.realpath(path)
    if os.path.dirname(real) != os.path.realpath(tfjs_dir) or not os.path.isfile(real):
        return None
    with open(real, "rb") as f:
        content = f.read()
    stat = os.stat(real)
    return File(content, _media_type(name), f"{stat.st_mtime_ns:x}-{stat.st_size:x}")


def signature_key(tfjs_dir: str) -> str:
    with open(os.path.join(tfjs_dir, MODEL_JSON)) as f:
        meta = json.load(f).get("userDefinedMetadata") or {}
    return str(meta.get("signatureKey") or "serving_default")


def render(*, model: str, version: int, static_url: str, model_url: str, predict_url: str | None,
           signature: str) -> bytes:
    """The page for one version; `predict_url` None: no server answer (the parity gate's page)."""
    with open(os.path.join(WEB_DIR, "browser.html")) as f:
        template = f.read()
    config = {"model": model, "version": version, "modelUrl": model_url, "predictUrl": predict_url,
              "runtimeUrl": static_url + "tfjs/", "signatureKey": signature}
    text = json.dumps(config).replace("<", "\\u003c")  # inside <script>: no way out of the element
    heading = f"{model} version {version} in the browser"
    values = {"title": html.escape(f"{heading} - tfprod"), "heading": html.escape(heading),
              "static": html.escape(static_url), "config": text}
    return re.sub(r"\{(title|heading|static|config)\}", lambda m: values[m.group(1)], template).encode()


def missing_page(model: str, version: int) -> bytes:
    """What the page route answers for a version without a TF.js model."""
    heading = f"{model} version {version} has no TF.js model"
    return (f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{html.escape(heading)} - tfprod'
            f'</title></head><body><main><h1>{html.escape(heading)}</h1><p>Convert it, then reload this page:</p>'
            f'<pre>tfprod convert MODEL_BASE_PATH/{version} --to tfjs</pre></main></body></html>').encode()
