"""`tfprod serve --num_workers N`: N real serving processes on the same ports under a supervisor.

Connections are spread over the workers by the kernel (SO_REUSEPORT), so each check below makes
many fresh connections: with 2 workers, 30 of them all reach one worker with probability 2^-29.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import grpc
import httpx
import numpy as np
import pytest
import saved_models
import tensorflow as tf
from conftest import ServerProcess, free_port
from tensorflow_serving.apis import (
    model_management_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
)

from tfprod.core.manager import VersionStatus
from tfprod.core.states import State
from tfprod.errors import Code, ServingError
from tfprod.metrics import REQUEST_COUNT, ServingMetrics
from tfprod.workers.pool import merge_statuses

FRESH = 30  # fresh connections per check


def children(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(p) for p in f.read().split()]
    except FileNotFoundError:
        return []


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def predict_fresh(server: ServerProcess, model: str, xs: list[float]) -> list[httpx.Response]:
    """One request per new connection."""
    out = []
    for _ in range(FRESH):
        with httpx.Client(base_url=server.url, timeout=30) as client:
            out.append(client.post(f"/v1/models/{model}:predict", json={"instances": xs}))
    return out


def request_count(server: ServerProcess, model: str) -> int:
    text = server.client.get("/monitoring/prometheus/metrics").text
    m = re.search(rf'^{re.escape(REQUEST_COUNT)}{{model_name="{model}",status="OK"}} (\S+)$', text, re.M)
    return int(float(m.group(1))) if m else 0


@pytest.fixture(scope="module")
def pool(start_server, tmp_path_factory: pytest.TempPathFactory) -> ServerProcess:  # type: ignore[no-untyped-def]
    root = tmp_path_factory.mktemp("pool")
    saved_models.half_plus_two(str(root / "hpt" / "1"))
    saved_models.half_plus_two(str(root / "other" / "1"), a=2.0, b=1.0)
    (root / "models.config").write_text(f'model_config_list {{ config {{ name: "hpt" base_path: "{root / "hpt"}" '
                                        'model_platform: "tensorflow" } }')
    (root / "monitoring.config").write_text("prometheus_config { enable: true }")
    server = start_server([f"--model_config_file={root / 'models.config'}", "--num_workers=2", "--enable_batching",
                           f"--monitoring_config_file={root / 'monitoring.config'}",
                           "--file_system_poll_wait_seconds=1"])
    server.root = root  # type: ignore[attr-defined]
    server.wait_until(lambda: len(children(server.proc.pid)) == 2 and "all 2 workers are serving" in server.log(),
                      60, "both workers")
    return server


def reference(a: float, b: float, xs: list[float]) -> list[float]:
    return (tf.constant(xs) * a + b).numpy().tolist()


def test_workers_share_the_ports_and_count_as_one_server(pool: ServerProcess) -> None:
    before = request_count(pool, "hpt")
    answers = predict_fresh(pool, "hpt", [1.0, 3.0])
    assert [r.status_code for r in answers] == [200] * FRESH
    assert all(r.json()["predictions"] == reference(0.5, 2.0, [1.0, 3.0]) for r in answers)
    # gRPC on the same port, each call on its own channel
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "hpt"
    request.inputs["x"].CopyFrom(tf.make_tensor_proto(np.array([4.0], np.float32)))
    for _ in range(10):
        with grpc.insecure_channel(pool.grpc_target) as channel:
            reply = prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict(request, timeout=30)
        assert tf.make_ndarray(reply.outputs["y"]).tolist() == reference(0.5, 2.0, [4.0])
    # one scrape, whichever worker it reaches, counts the requests every worker answered
    assert request_count(pool, "hpt") - before == FRESH + 10
    for _ in range(5):
        with httpx.Client(base_url=pool.url) as c:
            assert c.get("/readyz").json() == {"status": "ready"}
            assert c.get("/v1/models/hpt").json()["model_version_status"][0]["state"] == "AVAILABLE"


def test_a_reload_reaches_every_worker_and_survives_a_restart(pool: ServerProcess) -> None:
    root = pool.root  # type: ignore[attr-defined]
    request = model_management_pb2.ReloadConfigRequest()
    for name in ("hpt", "other"):
        request.config.model_config_list.config.add(name=name, base_path=str(root / name), model_platform="tensorflow")
    with grpc.insecure_channel(pool.grpc_target) as channel:
        response = model_service_pb2_grpc.ModelServiceStub(channel).HandleReloadConfigRequest(request, timeout=60)
    assert response.status.error_code == 0, response.status.error_message
    answers = predict_fresh(pool, "other", [1.0])  # no waiting: the reload answered once every worker served it
    assert [r.status_code for r in answers] == [200] * FRESH, [r.text for r in answers if r.status_code != 200]
    assert answers[0].json()["predictions"] == reference(2.0, 1.0, [1.0])

    # A worker killed outright is replaced, and the new one serves the reloaded config, not the file's.
    counted = request_count(pool, "hpt")  # every worker reports (and keeps on disk) its count
    workers = children(pool.proc.pid)
    os.kill(workers[0], signal.SIGKILL)
    served: list[int] = []
    stop = threading.Event()

    def keep_asking() -> None:  # the surviving worker answers while the other restarts
        while not stop.is_set():
            try:
                with httpx.Client(base_url=pool.url, timeout=30) as c:
                    served.append(c.post("/v1/models/hpt:predict", json={"instances": [1.0]}).status_code)
            except httpx.TransportError:  # a connection the killed worker had accepted
                served.append(-1)
            time.sleep(0.02)

    asker = threading.Thread(target=keep_asking)
    asker.start()
    try:
        pool.wait_until(lambda: len(children(pool.proc.pid)) == 2 and workers[0] not in children(pool.proc.pid)
                        and pool.log().count("worker 0 serving") + pool.log().count("worker 1 serving") == 3,
                        60, "the worker's replacement to serve")
    finally:
        stop.set()
        asker.join()
    assert "exited with status -9; restarting it" in pool.log()
    assert served and served.count(200) >= len(served) - 1, served
    # the dead worker's requests still count: the pool's counter never goes down
    assert request_count(pool, "hpt") == counted + served.count(200)
    answers = predict_fresh(pool, "other", [1.0])
    assert [r.status_code for r in answers] == [200] * FRESH, [r.text for r in answers if r.status_code != 200]


def test_a_caller_without_the_key_does_not_break_the_pool_channel(pool: ServerProcess) -> None:
    """Workers ask each other over unix sockets with a key handshake: a stranger that connects,
    or hangs up halfway, ends only its own call."""
    worker = children(pool.proc.pid)[0]
    with open(f"/proc/{worker}/environ", "rb") as f:
        env = dict(item.split(b"=", 1) for item in f.read().split(b"\0") if b"=" in item)
    directory = env[b"TFPROD_WORKER_DIR"].decode()
    for path in sorted(Path(directory).glob("worker-*.sock")):
        for _ in range(3):
            with socket.socket(socket.AF_UNIX) as stranger:
                stranger.connect(str(path))
                stranger.recv(100)  # the challenge; hang up without answering it
            with socket.socket(socket.AF_UNIX) as stranger:
                stranger.connect(str(path))
                stranger.sendall(b"\0\0\0\x04junk")
    started = time.monotonic()
    for _ in range(10):
        with httpx.Client(base_url=pool.url, timeout=30) as c:
            assert c.get("/readyz").json() == {"status": "ready"}
    assert time.monotonic() - started < 5, "a worker's pool channel stalled"


def test_a_v2_unload_and_load_apply_to_every_worker(pool: ServerProcess) -> None:
    assert pool.client.post("/v2/repository/models/other/unload").status_code == 200
    answers = predict_fresh(pool, "other", [1.0])
    assert {r.status_code for r in answers} == {404}, [r.text for r in answers]
    index = pool.client.post("/v2/repository/index", json={}).json()
    assert {m["name"]: m["state"] for m in index} == {"hpt": "READY", "other": "UNAVAILABLE"}
    assert pool.client.post("/v2/repository/models/other/load").status_code == 200
    assert {r.status_code for r in predict_fresh(pool, "other", [1.0])} == {200}


def test_sigterm_drains_every_worker_and_the_supervisor_exits_zero(start_server, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    saved_models.slow(str(tmp_path / "slow" / "1"))
    server = start_server([f"--model_base_path={tmp_path / 'slow'}", "--model_name=slow", "--num_workers=2"])
    server.wait_until(lambda: "all 2 workers are serving" in server.log(), 60, "both workers")
    workers = children(server.proc.pid)
    results: list[int] = []

    def call() -> None:
        with httpx.Client(base_url=server.url, timeout=30) as client:
            r = client.post("/v1/models/slow:predict", json={"instances": [2.0]})
            results.append(r.status_code if r.status_code == 200 else r.text)

    threads = [threading.Thread(target=call) for _ in range(6)]
    for t in threads:
        t.start()
    time.sleep(0.8)  # in the model, on both workers (6 connections)
    server.proc.send_signal(signal.SIGTERM)
    for t in threads:
        t.join()
    assert server.proc.wait(timeout=60) == 0
    assert results == [200] * 6
    assert not any(alive(p) for p in workers)


def test_a_worker_that_cannot_start_stops_the_pool_with_its_error(tmp_path: Path) -> None:
    (tmp_path / "model.h5").write_bytes(b"not a SavedModel")
    done = subprocess.run([sys.executable, "-m", "tfprod", "serve", f"--model_base_path={tmp_path / 'model.h5'}",
                           "--num_workers=2", "--host=127.0.0.1", f"--rest_api_port={free_port()}", "--port=0"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 1
    assert "is a Keras file" in done.stderr and "before it served" in done.stderr


def test_a_taken_port_is_refused_before_any_worker_starts() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = subprocess.run([sys.executable, "-m", "tfprod", "serve", "--model_base_path=/nonexistent",
                               "--num_workers=2", "--host=127.0.0.1", f"--rest_api_port={port}", "--port=0"],
                              capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    assert f"tfprod serve: error: cannot listen on 127.0.0.1:{port}" in done.stderr
    assert "starting 2 workers" not in done.stderr


# -- the pool's merge rules, on their own ---------------------------------------------------

def states(*pairs: tuple[int, State]) -> list[VersionStatus]:
    return [VersionStatus(v, s) for v, s in pairs]


@pytest.mark.parametrize(("workers", "expected"), [
    # the same everywhere
    ([states((1, State.AVAILABLE)), states((1, State.AVAILABLE))], {1: State.AVAILABLE}),
    # a new version loading in one worker, not yet found by the other: not AVAILABLE for the pool
    ([states((2, State.AVAILABLE), (1, State.END)), states((1, State.AVAILABLE))],
     {2: State.START, 1: State.UNLOADING}),
    ([states((2, State.LOADING)), states((2, State.AVAILABLE))], {2: State.LOADING}),
    # a restarted worker never saw version 1, unloaded before it started
    ([states((2, State.AVAILABLE), (1, State.END)), states((2, State.AVAILABLE))],
     {2: State.AVAILABLE, 1: State.END}),
    ([states((1, State.AVAILABLE)), []], {1: State.START}),
])
def test_merged_statuses(workers: list[list[VersionStatus]], expected: dict[int, State]) -> None:
    merged = merge_statuses(workers)
    assert [s.version for s in merged] == sorted(expected, reverse=True)
    assert {s.version: s.state for s in merged} == expected


def test_merged_status_keeps_the_error_of_a_failed_load() -> None:
    error = ServingError(Code.INVALID_ARGUMENT, "broken graph")
    merged = merge_statuses([[VersionStatus(3, State.END, error)], [VersionStatus(3, State.END, error)]])
    assert merged == [VersionStatus(3, State.END, error)]
    # failed in one worker, served by the other: the pool cannot promise it, and says why
    merged = merge_statuses([[VersionStatus(3, State.END, error)], [VersionStatus(3, State.AVAILABLE)]])
    assert merged == [VersionStatus(3, State.END, error)]


def test_merged_metrics_sum_every_worker() -> None:
    workers = [ServingMetrics(), ServingMetrics()]
    for i, m in enumerate(workers):
        for _ in range(i + 2):
            m.record_request("m", "OK", "predict", "REST", 0.001)
        m.record_batch("m", [0.0001], 3, 4)
    merged = ServingMetrics.merged([m.snapshot() for m in workers])
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value for f in merged.collect() for s in f.samples}
    assert samples[(REQUEST_COUNT, (("model_name", "m"), ("status", "OK")))] == 5
    assert samples[(":tensorflow:serving:request_latency_count",
                    (("API", "predict"), ("entrypoint", "REST"), ("model_name", "m")))] == 5
    assert samples[(":tensorflow:serving:batching_session:wrapped_run_count", (("model_name", "m"),))] == 2
