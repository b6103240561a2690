"""Model base paths in object storage: `s3://bucket/models/digits`, `gs://...`, any fsspec
protocol (`pip install 'tfprod[s3]'` or `'tfprod[gcs]'`).

A scan is one recursive listing of the base path (S3: ListObjectsV2, 1,000 keys a call), never a
cached one (fsspec's listing cache would hide a new version). A version is complete when its
listing holds `saved_model.pb` (or `.pbtxt`, or `model.tflite`); the source offers it once two
scans saw the same listing (names, sizes, ETags), after `fetch` has downloaded it into the local
cache: every file checked against its listed size, the download renamed into place whole. The
manager then loads that directory, so the signature check and the graph scan apply as to a
local path.

TensorFlow's S3 variables are honoured (`S3_ENDPOINT` as host:port or URL, `S3_USE_HTTPS`,
`S3_VERIFY_SSL`, `AWS_REGION`); credentials are botocore's own chain (`AWS_ACCESS_KEY_ID` and
`AWS_SECRET_ACCESS_KEY`, `AWS_PROFILE`, web identity on EKS, instance roles), and Google's
application default credentials for gs://.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
import time
import zlib
from collections.abc import Iterator
from typing import Any

from tfprod.errors import Code, ServingError

log = logging.getLogger("tfprod.source")

Fingerprint = tuple[tuple[str, int, int], ...]  # (path in the version, size, ETag or mtime as a number)
MARKER = ".tfprod-listing.json"  # the listing a cached download was made from
# a SavedModel's graph file (tfprod.format.saved_model.MODEL_FILES) or a LiteRT model; named here
# because the config reader imports this module, before TensorFlow may be
_MODEL_FILES = ("saved_model.pb", "saved_model.pbtxt", "model.tflite")
_EXTRAS = {"s3": "s3", "s3a": "s3", "gs": "gcs", "gcs": "gcs"}


def is_remote(path: str) -> bool:
    return "://" in path and not path.startswith("file://")


class Unreachable(Exception):
    """The store did not answer a listing (down, refused, wrong credentials): keep what serves."""


def _s3_options() -> dict[str, Any]:
    """TensorFlow's S3 file system variables, as s3fs arguments."""
    options: dict[str, Any] = {}
    client: dict[str, Any] = {}
    endpoint = os.environ.get("S3_ENDPOINT")
    if endpoint:
        if "://" not in endpoint:
            endpoint = ("http://" if os.environ.get("S3_USE_HTTPS", "1") == "0" else "https://") + endpoint
        client["endpoint_url"] = endpoint
    if os.environ.get("S3_VERIFY_SSL", "1") == "0":
        client["verify"] = False
    region = os.environ.get("AWS_REGION")
    if region:
        client["region_name"] = region
    if client:
        options["client_kwargs"] = client
    return options


@functools.cache
def filesystem(protocol: str) -> Any:
    try:
        import fsspec

        options = _s3_options() if _EXTRAS.get(protocol) == "s3" else {}
        return fsspec.filesystem(protocol, use_listings_cache=False, skip_instance_cache=True, **options)
    except (ImportError, ValueError) as e:
        extra = _EXTRAS.get(protocol)
        hint = f" (pip install 'tfprod[{extra}]')" if extra else ""
        raise ServingError(Code.FAILED_PRECONDITION, f"cannot read {protocol}:// paths: {e}{hint}") from None


def _split(path: str) -> tuple[Any, str]:
    protocol, rest = path.split("://", 1)
    return filesystem(protocol), rest.rstrip("/")


def _tag(info: dict[str, Any]) -> int:
    """What changes when an object is written again: its ETag (S3, GCS), else its modification time."""
    tag = info.get("ETag") or info.get("etag") or info.get("md5Hash") or info.get("LastModified") or \
        info.get("updated") or info.get("mtime") or ""
    return zlib.crc32(str(tag).encode())


def scan(base_path: str) -> dict[int, Fingerprint]:
    """Every integer-named version under `base_path` with its files, from one listing. Empty when
    nothing is there; `Unreachable` when the store does not answer."""
    try:
        fs, root = _split(base_path)
    except ServingError as e:  # its file system is not installed: say so at every poll's error
        raise Unreachable(e.message) from None
    try:
        found = fs.find(root, detail=True)
    except FileNotFoundError:
        return {}
    except PermissionError as e:
        raise Unreachable(f"cannot list {base_path}: {e}: check the credentials (AWS_ACCESS_KEY_ID and "
                          "AWS_SECRET_ACCESS_KEY, AWS_PROFILE, or the pod's role; GOOGLE_APPLICATION_CREDENTIALS "
                          "for gs://)") from None
    except Exception as e:  # botocore, aiohttp, google-auth errors alike: the store did not answer
        raise Unreachable(f"cannot list {base_path}: {type(e).__name__}: {e}") from None
    versions: dict[int, list[tuple[str, int, int]]] = {}
    for key, info in found.items():
        if info.get("type", "file") != "file":
            continue
        name = key[len(root):].lstrip("/")
        top, _, rest = name.partition("/")
        if not (top.isdigit() and rest) or rest.endswith("/"):
            continue  # not in a version, or a "directory" placeholder object
        if any(part in ("", ".", "..") for part in rest.split("/")):
            log.warning("ignoring %s/%s: a key that would land outside its version's directory", base_path, name)
            continue
        versions.setdefault(int(top), []).append((rest, int(info.get("size") or 0), _tag(info)))
    return {v: tuple(sorted(files)) for v, files in versions.items()}


_SHARD = re.compile(r"variables/variables\.data-(\d{5})-of-(\d{5})")


def is_complete(files: Fingerprint) -> bool:
    """A graph file, and if the version has variables, their index and every data shard it names
    (`variables.data-00000-of-00002`): an object is listed only once uploaded whole, so a large
    shard still on its way is simply absent."""
    names = {name for name, _, _ in files}
    if not names.intersection(_MODEL_FILES):
        return False
    shards = [m for m in map(_SHARD.fullmatch, names) if m]
    if not shards and "variables/variables.index" not in names:
        return True  # no variables (or not yet listed: the settle window covers that)
    if "variables/variables.index" not in names or not shards:
        return False
    total = int(shards[0].group(2))
    return {int(m.group(1)) for m in shards if int(m.group(2)) == total} == set(range(total))


def cache_dir_of(cache: str, base_path: str) -> str:
    """Where the versions of one base path are downloaded to."""
    digest = hashlib.sha256(base_path.encode()).hexdigest()[:16]
    return os.path.join(cache, f"{base_path.split('://', 1)[0]}-{digest}")


@contextlib.contextmanager
def _locked(directory: str, version: int | str, blocking: bool = True) -> Iterator[bool]:
    """One process at a time on a version's copy (the workers of a pool share the cache)."""
    os.makedirs(directory, exist_ok=True)
    with open(os.path.join(directory, f".{version}.lock"), "w") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX if blocking else fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def fetch(base_path: str, version: int, files: Fingerprint, cache: str) -> str:
    """The local copy of a version, downloaded once (a copy made from the same listing is reused:
    after a restart, or by the other workers of a pool)."""
    directory = cache_dir_of(cache, base_path)
    target = os.path.join(directory, str(version))
    listing = json.dumps([list(f) for f in files])
    if _marker(target) == listing:
        return target
    with _locked(directory, version):
        if _marker(target) == listing:  # another worker of the pool downloaded it meanwhile
            return target
        fs, root = _split(base_path)
        staging = tempfile.mkdtemp(prefix=f".{version}-", dir=directory)
        try:
            for name, size, _ in files:
                local = os.path.join(staging, *name.split("/"))
                os.makedirs(os.path.dirname(local), exist_ok=True)
                fs.get_file(f"{root}/{version}/{name}", local)
                if os.path.getsize(local) != size:
                    raise Unreachable(f"{base_path}/{version}/{name} changed while it was downloaded")
            with open(os.path.join(staging, MARKER), "w") as f:
                f.write(listing)
            if os.path.isdir(target):  # an older download of a version written again
                old = tempfile.mkdtemp(prefix=f".{version}-old-", dir=directory)
                os.rename(target, os.path.join(old, "v"))
                shutil.rmtree(old, ignore_errors=True)  # a loaded version keeps its open files (POSIX)
            os.rename(staging, target)
            return target
        except Unreachable:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        except Exception as e:
            shutil.rmtree(staging, ignore_errors=True)
            raise Unreachable(f"cannot download {base_path}/{version}: {type(e).__name__}: {e}") from None


def _marker(target: str) -> str | None:
    try:
        with open(os.path.join(target, MARKER)) as f:
            return f.read()
    except OSError:
        return None


def prune(cache: str, base_path: str, keep: set[int], min_age_s: float = 600.0) -> None:
    """Remove the copies of versions not in `keep` once they are `min_age_s` old (another worker
    of a pool, a poll behind or ahead, may still want a fresher one), and downloads a crash left
    half-done an hour ago."""
    directory = cache_dir_of(cache, base_path)
    try:
        names = os.listdir(directory)
    except FileNotFoundError:
        return
    now = time.time()
    for name in names:
        path = os.path.join(directory, name)
        try:
            age = now - os.path.getmtime(os.path.join(path, MARKER) if name.isdigit() else path)
        except OSError:
            age = float("inf")
        if name.isdigit() and int(name) not in keep and age >= min_age_s:
            with _locked(directory, name, blocking=False) as mine:
                if mine:
                    shutil.rmtree(path, ignore_errors=True)
        elif name.startswith(".") and not name.endswith(".lock") and age > 3600:
            shutil.rmtree(path, ignore_errors=True)
