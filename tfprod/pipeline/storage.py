"""Artifact and data URIs: local paths or object storage (`s3://`, any fsspec protocol), so the
steps of a cluster run share one artifact root (`pip install tfprod[s3]`).

What a component writes goes to a local staging directory and is uploaded when the step
publishes (a SavedModel, a JSON file: written with the tools that made them). What it reads goes
through `localize`, which downloads a remote artifact once into a local cache (artifacts never
change once published), or through the readers of `tfprod.pipeline.examples`, which open remote
files directly, so a cluster's workers read the same URIs the driver does.

Credentials and endpoints are fsspec's and botocore's own: `AWS_ACCESS_KEY_ID`,
`AWS_SECRET_ACCESS_KEY`, `AWS_ENDPOINT_URL` (a MinIO or other S3-compatible server)...
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import uuid
from typing import Any

from tfprod.core.remote import filesystem as remote_filesystem
from tfprod.core.remote import is_remote
from tfprod.errors import ServingError
from tfprod.pipeline.dsl import PipelineError

CACHE = os.environ.get("TFPROD_ARTIFACT_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "tfprod",
                                                                  "artifacts")


EMPTY = ".empty"  # the one object of an artifact that has no files


remote = is_remote  # one rule for what is object storage, the server's (tfprod.core.remote)


def filesystem(protocol: str) -> Any:
    """The server's file system for a protocol (uncached listings: a step sees what another
    process just published; TensorFlow's S3 variables honoured), with a pipeline's error."""
    try:
        return remote_filesystem(protocol)
    except ServingError as e:
        raise PipelineError(e.message) from None


def fs_of(uri: str) -> Any:
    return filesystem(uri.split("://", 1)[0])


def join(uri: str, *parts: str) -> str:
    return "/".join([uri.rstrip("/"), *parts]) if remote(uri) else os.path.join(uri, *parts)


def exists(uri: str) -> bool:
    return fs_of(uri).exists(uri) if remote(uri) else os.path.exists(uri)


def glob(pattern: str) -> list[str]:
    if not remote(pattern):
        import glob as _glob

        return sorted(_glob.glob(pattern))
    fs = fs_of(pattern)
    return sorted(fs.unstrip_protocol(p) for p in fs.glob(pattern))


def open_file(uri: str, mode: str = "rb") -> Any:
    return fs_of(uri).open(uri, mode) if remote(uri) else open(uri, mode)


def localize(uri: str) -> str:
    """A local path with the content of `uri` (itself when it is local): a remote artifact is
    downloaded once into the cache, whole or not at all."""
    if not remote(uri):
        return uri
    target = os.path.join(CACHE, hashlib.sha256(uri.encode()).hexdigest()[:24])
    if os.path.exists(target):
        return target
    fs = fs_of(uri)
    os.makedirs(CACHE, exist_ok=True)
    staging = tempfile.mkdtemp(prefix=".download-", dir=CACHE)
    try:
        prefix = fs._strip_protocol(uri).rstrip("/")
        if fs.isfile(uri):
            shutil.rmtree(staging)
            fs.get_file(uri, staging)
        else:
            found = fs.find(uri)
            if not found:
                raise PipelineError(f"{uri} does not exist")
            for path in found:
                local = os.path.join(staging, os.path.relpath(path, prefix))
                os.makedirs(os.path.dirname(local), exist_ok=True)
                fs.get_file(path, local)
        try:
            os.rename(staging, target)
        except OSError:  # another process downloaded it first
            shutil.rmtree(staging, ignore_errors=True)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return target


def upload(local: str, uri: str) -> None:
    """Copy the local directory `local` to `uri`, file by file."""
    fs = fs_of(uri)
    count = 0
    for folder, _, files in os.walk(local):
        for name in files:
            path = os.path.join(folder, name)
            fs.put_file(path, join(uri, *os.path.relpath(path, local).split(os.sep)))
            count += 1
    if not count:  # an object store has no empty folders: a marker keeps the artifact visible to exists()
        fs.pipe_file(join(uri, EMPTY), b"")


def remove(uri: str) -> None:
    if remote(uri):
        fs = fs_of(uri)
        if fs.exists(uri):
            fs.rm(uri, recursive=True)
    else:
        shutil.rmtree(uri, ignore_errors=True)


def staging_dir(root: str, execution: int) -> str:
    """Where a step writes before it publishes: under the root when it is local (a rename
    publishes it), else a local temporary directory (an upload publishes it)."""
    if remote(root):
        return tempfile.mkdtemp(prefix=f"tfprod-staging-{execution}-")
    path = os.path.join(root, ".staging", str(execution))
    os.makedirs(path, exist_ok=True)
    return path


def unique(uri: str) -> str:
    return f"{uri}-{uuid.uuid4().hex[:8]}"
