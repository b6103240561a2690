"""Base paths in object storage: a real S3 endpoint (moto's server on loopback) and real
`tfprod serve` processes reading `s3://` base paths through TensorFlow's S3 variables; a real GCS
JSON API (gcp-storage-emulator on loopback) read by a `tfprod serve` given `gs://` base paths and
`STORAGE_EMULATOR_HOST`, as gcsfs reads it."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import boto3
import pytest
import saved_models
import tensorflow as tf

BUCKET = "models"


@pytest.fixture(scope="module")
def s3() -> Iterator[dict[str, Any]]:
    """moto's S3 server on 127.0.0.1 with a bucket, and the environment a server reads it with
    (`server`: the moto server now, which a test may stop and start again on the same port)."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0)
    server.start()
    host, port = server.get_host_and_port()
    env = {"S3_ENDPOINT": f"{host}:{port}", "S3_USE_HTTPS": "0", "AWS_REGION": "us-east-1",
           "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}
    with pytest.MonkeyPatch.context() as patch:
        for k, v in env.items():
            patch.setenv(k, v)
        patch.delenv("AWS_ENDPOINT_URL", raising=False)
        client = boto3.client("s3", endpoint_url=f"http://{host}:{port}", region_name="us-east-1")
        client.create_bucket(Bucket=BUCKET)
        state: dict[str, Any] = {**env, "port": str(port), "server": server}
        yield state
    with contextlib.suppress(Exception):
        state["server"].stop()


def _client(s3: dict[str, Any]):  # type: ignore[no-untyped-def]
    return boto3.client("s3", endpoint_url=f"http://127.0.0.1:{s3['port']}", region_name="us-east-1")


def _upload(s3: dict[str, Any], local: str, prefix: str, first: str | None = None, last: str | None = None,
            pause_s: float = 0.0) -> None:
    """Upload a version file by file, `first` (or `last`) before (or after) the others."""
    files = sorted(os.path.relpath(os.path.join(d, f), local) for d, _, fs in os.walk(local) for f in fs)
    files.sort(key=lambda f: (f != first, f == last))
    client = _client(s3)
    for name in files:
        client.upload_file(os.path.join(local, name), BUCKET, f"{prefix}/{name}")
        time.sleep(pause_s)


def _y(server, rows, version: int | None = None):  # type: ignore[no-untyped-def]
    path = f"/v1/models/hpt{'' if version is None else f'/versions/{version}'}:predict"
    r = server.client.post(path, json={"instances": rows})
    assert r.status_code == 200, r.text
    return r.json()["predictions"]


def test_an_s3_base_path_serves_a_version_once_complete_and_hot_updates(  # type: ignore[no-untyped-def]
        s3, start_server, tmp_path) -> None:
    v1, v2 = str(tmp_path / "v1"), str(tmp_path / "v2")
    saved_models.tf1_half_plus_two(v1)  # a TF 1 graph with an asset (its lookup table's vocabulary)
    saved_models.half_plus_two(v2, a=2.0, b=1.0)
    _upload(s3, v1, "hpt/1", last="saved_model.pb")  # variables and assets first: nothing to load yet
    cache = tmp_path / "cache"
    server = start_server(["--model_name=hpt", f"--model_base_path=s3://{BUCKET}/hpt",
                           "--file_system_poll_wait_seconds=1", f"--model_cache_dir={cache}"])
    assert _y(server, [[3.0], [-1.0]]) == [[3.5], [1.5]]
    r = server.client.post("/v1/models/hpt:predict", json={"signature_name": "lookup",
                                                           "instances": ["banana", "cherry", "kiwi"]})
    assert r.status_code == 200, r.text  # the asset came down with the version
    assert [p if not isinstance(p, dict) else next(iter(p.values())) for p in r.json()["predictions"]] == [1, 2, -1]
    # version 2, graph file first, the rest trickling in: offered only once its listing holds still
    started = time.monotonic()
    _upload(s3, v2, "hpt/2", first="saved_model.pb", pause_s=0.3)
    server.wait_until(lambda: server.client.get("/v1/models/hpt/versions/2").status_code == 200 and
                      server.client.get("/v1/models/hpt/versions/2").json()["model_version_status"][0]["state"]
                      == "AVAILABLE", 30, "version 2 from S3")
    seen_after_s = time.monotonic() - started
    expected = tf.saved_model.load(v2).signatures["serving_default"](x=tf.constant([3.0, -1.0]))["y"].numpy()
    assert _y(server, [3.0, -1.0]) == pytest.approx(expected.tolist())
    assert "version 2" not in "".join(line for line in server.log().splitlines() if "fail" in line.lower())
    assert seen_after_s < 15, seen_after_s
    # the copy served is in the cache, listed as it was downloaded
    copies = [d for d in cache.iterdir() if d.name.startswith("s3-")]
    assert len(copies) == 1 and (copies[0] / "2" / "saved_model.pb").is_file()
    assert (copies[0] / "2" / ".tfprod-listing.json").is_file()


def test_s3_deleted_version_bucket_down_and_wrong_credentials(s3, start_server, tmp_path) -> None:  # type: ignore[no-untyped-def]
    from moto.core.authorization import enable_iam_authentication
    from moto.server import ThreadedMotoServer

    for version, (a, b) in ((1, (0.5, 2.0)), (2, (2.0, 1.0))):
        local = str(tmp_path / f"v{version}")
        saved_models.half_plus_two(local, a=a, b=b)
        _upload(s3, local, f"many/{version}", last="saved_model.pb")
    config = tmp_path / "models.config"
    config.write_text(f'model_config_list {{ config {{ name: "hpt" base_path: "s3://{BUCKET}/many" '
                      'model_platform: "tensorflow" model_version_policy { all {} } } '
                      f'config {{ name: "newest" base_path: "s3://{BUCKET}/many/" model_platform: "tensorflow" }} }}')
    server = start_server([f"--model_config_file={config}", "--file_system_poll_wait_seconds=1",
                           f"--model_cache_dir={tmp_path / 'cache'}"])

    def state(version: int, model: str = "hpt") -> str:
        statuses = server.client.get(f"/v1/models/{model}").json()["model_version_status"]
        return next((s["state"] for s in statuses if s["version"] == str(version)), "")
    # ready once each model has a version: the second of "all" may still be loading
    server.wait_until(lambda: state(1) == state(2) == state(2, "newest") == "AVAILABLE", 30, "both versions")
    assert _y(server, [3.0], 1) == [3.5] and _y(server, [3.0], 2) == [7.0]
    # a second model on the same base path (TF Serving's latest policy) is served from the same listing
    newest = server.client.get("/v1/models/newest").json()["model_version_status"]
    assert [(s["version"], s["state"]) for s in newest] == [("2", "AVAILABLE")]
    # deleting a version unloads it
    client = _client(s3)
    for item in client.list_objects_v2(Bucket=BUCKET, Prefix="many/1/")["Contents"]:
        client.delete_object(Bucket=BUCKET, Key=item["Key"])
    server.wait_until(lambda: state(1) == "END", 15, "version 1 unloaded")
    # the bucket goes away: version 2 keeps serving, the listing is retried
    port = int(s3["port"])
    s3["server"].stop()
    server.wait_until(lambda: "cannot list s3://models/many" in server.log(), 15, "the listing refused")
    for _ in range(20):
        assert _y(server, [3.0]) == [7.0]
    s3["server"] = ThreadedMotoServer(ip_address="127.0.0.1", port=port)  # the same data, in this process
    s3["server"].start()
    server.wait_until(lambda: "s3://models/many answers again" in server.log(), 15, "the bucket back")
    local = str(tmp_path / "v3")
    saved_models.half_plus_two(local, a=-1.0, b=0.0)
    _upload(s3, local, "many/3", last="saved_model.pb")
    server.wait_until(lambda: state(3) == "AVAILABLE", 15, "version 3 after the outage")
    assert _y(server, [3.0], 3) == [-3.0] and _y(server, [3.0], 2) == [7.0]
    # wrong credentials: a clear error, the model waits and /readyz says so
    with enable_iam_authentication(), pytest.MonkeyPatch.context() as patch:
        patch.setenv("AWS_ACCESS_KEY_ID", "AKIAWRONG")
        denied = start_server(["--model_name=hpt", f"--model_base_path=s3://{BUCKET}/many",
                               f"--model_cache_dir={tmp_path / 'cache2'}"], wait=False)
        denied.wait_until(lambda: "cannot list s3://models/many" in denied.log(), 60, "the refusal")
        assert "check the credentials" in denied.log(), denied.log()[-2000:]
        denied.wait_until(lambda: denied.client.get("/readyz").status_code == 503, 30, "the ports")
        assert denied.client.get("/readyz").json()["waiting_for"] == ["hpt"]


@pytest.fixture(scope="module")
def gcs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """gcp-storage-emulator (in memory) on a free loopback port, its bucket, and a gcsfs file system
    on it; `tfprod serve` processes started meanwhile inherit `STORAGE_EMULATOR_HOST` and no Google
    credentials (gcsfs then falls back to anonymous access: the emulator checks none)."""
    import gcsfs.core
    from conftest import free_port

    port = free_port()
    emulator = subprocess.Popen([sys.executable, "-m", "gcp_storage_emulator", "start", "--host=127.0.0.1",
                                 f"--port={port}", "--in-memory", "--quiet"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while True:
            assert emulator.poll() is None, f"gcp-storage-emulator exited with {emulator.returncode}"
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
                break
            assert time.monotonic() < deadline, "gcp-storage-emulator did not listen"
            time.sleep(0.1)
        with pytest.MonkeyPatch.context() as patch:
            patch.setenv("STORAGE_EMULATOR_HOST", f"http://127.0.0.1:{port}")
            patch.setenv("NO_GCE_CHECK", "true")  # no metadata-server probe (google-auth, gcsfs)
            patch.setenv("CLOUDSDK_CONFIG", str(tmp_path_factory.mktemp("gcloud")))  # no gcloud credentials
            patch.delenv("GOOGLE_APPLICATION_CREDENTIALS", raising=False)
            # the uploader: gcsfs's JSON-API file system (gcsfs.GCSFileSystem, its HNS/zonal subclass, asks a
            # gRPC control API for each bucket's layout first: with anonymous credentials against the emulator's
            # plain-HTTP port that is a TLS handshake retried for 60 s per call)
            fs = gcsfs.core.GCSFileSystem(token="anon", endpoint_url=f"http://127.0.0.1:{port}",
                                          skip_instance_cache=True, use_listings_cache=False)
            fs.mkdir(BUCKET)
            yield fs
    finally:
        emulator.kill()
        emulator.wait()


def test_a_gs_base_path_serves_hot_updates_and_unloads_a_deleted_version(  # type: ignore[no-untyped-def]
        gcs, start_server, tmp_path) -> None:
    def upload(local: str, prefix: str) -> None:  # file by file, the graph last (as a copy tool may)
        files = sorted(os.path.relpath(os.path.join(d, f), local) for d, _, fs in os.walk(local) for f in fs)
        for name in sorted(files, key=lambda f: f == "saved_model.pb"):
            gcs.put_file(os.path.join(local, name), f"{BUCKET}/{prefix}/{name}")

    def answer(local: str) -> list[float]:  # TensorFlow's own
        predict = tf.saved_model.load(local).signatures["serving_default"]
        return predict(x=tf.constant([3.0, -1.0]))["y"].numpy().tolist()

    def state(version: int) -> str:
        statuses = server.client.get("/v1/models/hpt").json()["model_version_status"]
        return next((s["state"] for s in statuses if s["version"] == str(version)), "")
    v1, v2 = str(tmp_path / "v1"), str(tmp_path / "v2")
    saved_models.half_plus_two(v1)
    saved_models.half_plus_two(v2, a=2.0, b=1.0)
    upload(v1, "models/hpt/1")
    cache = tmp_path / "cache"
    server = start_server(["--model_name=hpt", f"--model_base_path=gs://{BUCKET}/models/hpt",
                           "--file_system_poll_wait_seconds=1", f"--model_cache_dir={cache}"])
    assert _y(server, [3.0, -1.0]) == pytest.approx(answer(v1)) == [3.5, 1.5]
    # version 2 is picked up by the poll once its listing holds still, and version 1 goes
    started = time.monotonic()
    upload(v2, "models/hpt/2")
    server.wait_until(lambda: state(2) == "AVAILABLE", 30, "version 2 from GCS")
    seen_after_s = time.monotonic() - started
    assert _y(server, [3.0, -1.0]) == pytest.approx(answer(v2)) == [7.0, -1.0]
    assert seen_after_s < 15, seen_after_s
    server.wait_until(lambda: state(1) == "END", 15, "version 1 unloaded")
    copies = [d for d in cache.iterdir() if d.name.startswith("gs-")]
    assert len(copies) == 1 and (copies[0] / "2" / "saved_model.pb").is_file()
    # version 2 deleted: it is unloaded and version 1, still listed, serves again
    gcs.rm(f"{BUCKET}/models/hpt/2", recursive=True)
    server.wait_until(lambda: state(2) == "END" and state(1) == "AVAILABLE", 15, "version 2 unloaded")
    assert _y(server, [3.0, -1.0]) == pytest.approx(answer(v1))
    assert "cannot" not in server.log(), server.log()[-2000:]


def test_a_version_is_complete_with_its_graph_and_every_variables_shard() -> None:
    from tfprod.core.remote import is_complete

    def files(*names: str) -> tuple[tuple[str, int, int], ...]:
        return tuple((n, 1, 0) for n in names)
    assert is_complete(files("saved_model.pb"))  # no variables at all: a constant graph
    assert is_complete(files("model.tflite"))
    assert not is_complete(files("variables/variables.index", "variables/variables.data-00000-of-00001"))
    assert not is_complete(files("saved_model.pb", "variables/variables.index"))  # its shard still uploading
    assert not is_complete(files("saved_model.pb", "variables/variables.data-00000-of-00001"))  # no index yet
    assert not is_complete(files("saved_model.pb", "variables/variables.index",
                                 "variables/variables.data-00001-of-00002"))
    assert is_complete(files("saved_model.pb", "variables/variables.index", "variables/variables.data-00000-of-00002",
                             "variables/variables.data-00001-of-00002", "assets/vocab.txt"))


def test_a_base_path_whose_store_has_no_file_system_is_refused_at_start() -> None:
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-m", "tfprod", "serve", "--model_name=m",
                           "--model_base_path=nope://bucket/m", "--rest_api_port=0", "--port=0",
                           "--grpc_socket_path=/nonexistent/never.sock"], capture_output=True, text=True, timeout=60)
    assert done.returncode != 0 and "cannot read nope:// paths" in done.stderr, done.stderr[-2000:]
