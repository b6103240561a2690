"""Version lifecycle end to end: real `tfprod serve` processes watching real directories.

Hot swaps under load, versions that are half written or still being written, versions that
fail to load, removed versions, --model_config_file reloads (labels, version policies, syntax
errors), startup with a bad config, and SIGTERM with requests in flight.

Servers (each costs seconds): one `disk` server whose models each own a base path (tests change
only their own model), one `config` server whose config file the tests rewrite, one server with
a slow model that is sent SIGTERM, and one startup that must fail.
"""

from __future__ import annotations

import dataclasses
import os
import random
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
import saved_models
from conftest import ServerProcess, free_port

REPO = Path(__file__).resolve().parent.parent
FAST_FLAGS = [
    "--file_system_poll_wait_seconds=1",
    "--max_num_load_retries=1",
    "--load_retry_interval_micros=200000",
]
CONFIG_PARSE_ERROR = "Error parsing text-format tensorflow.serving.ModelServerConfig"

# y = 0.5x + 2 (half_plus_two/1) and y = 2x + 1 (plus_one_x2), at x = 1 and x = 2.
XS = [1.0, 2.0]
V_HALF = [2.5, 3.0]
V_X2 = [3.0, 5.0]


# -- helpers -----------------------------------------------------------------------------


def half(model_dir: str) -> str:
    return os.path.join(model_dir, "half_plus_two", "1")


def x2(model_dir: str) -> str:
    return os.path.join(model_dir, "plus_one_x2")


def predict(client: httpx.Client, model: str, xs: list[float] = XS, version: int | None = None,
            label: str | None = None) -> httpx.Response:
    path = f"/v1/models/{model}"
    if version is not None:
        path += f"/versions/{version}"
    if label is not None:
        path += f"/labels/{label}"
    return client.post(f"{path}:predict", json={"instances": xs})


def predictions(client: httpx.Client, model: str, **kw) -> list[float]:  # type: ignore[no-untyped-def]
    r = predict(client, model, **kw)
    assert r.status_code == 200, r.text
    return [float(v) for v in r.json()["predictions"]]


def statuses(client: httpx.Client, model: str) -> list[dict]:  # type: ignore[type-arg]
    r = client.get(f"/v1/models/{model}")
    assert r.status_code == 200, r.text
    return r.json()["model_version_status"]


def states(client: httpx.Client, model: str) -> dict[int, str]:
    return {int(s["version"]): s["state"] for s in statuses(client, model)}


def wait_states(server: ServerProcess, model: str, expected: dict[int, str], timeout: float = 20) -> None:
    """Wait until every version in `expected` is in its state (other versions may exist)."""
    def ok() -> bool:
        r = server.client.get(f"/v1/models/{model}")
        if r.status_code != 200:
            return False
        now = {int(s["version"]): s["state"] for s in r.json()["model_version_status"]}
        return all(now.get(v) == st for v, st in expected.items())
    server.wait_until(ok, timeout, f"{model} versions {expected}")


def model_config(models: list[dict]) -> str:  # type: ignore[type-arg]
    """A ModelServerConfig text proto. Each dict: name, base_path, optional policy, labels."""
    parts = []
    for m in models:
        body = f'name: "{m["name"]}" base_path: "{m["base_path"]}" model_platform: "tensorflow"'
        if "policy" in m:
            body += f" model_version_policy {{ {m['policy']} }}"
        for label, version in m.get("labels", {}).items():
            body += f' version_labels {{ key: "{label}" value: {version} }}'
        parts.append(f"  config {{ {body} }}")
    return "model_config_list {\n" + "\n".join(parts) + "\n}\n"


def write_atomically(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


class Load:
    """Client threads that POST predict in a loop until stopped (bounded in time)."""

    def __init__(self, url: str, model: str, threads: int = 4, max_s: float = 15) -> None:
        self.url, self.model, self.max_s = url, model, max_s
        self.stop_event = threading.Event()
        # Per thread: (status code, predictions or error text) in order of completion, and latencies (ms).
        self.results: list[list[tuple[int, object]]] = [[] for _ in range(threads)]
        self.latencies_ms: list[list[float]] = [[] for _ in range(threads)]
        self.threads = [threading.Thread(target=self._run, args=(i,), daemon=True) for i in range(threads)]

    def _run(self, i: int) -> None:
        deadline = time.monotonic() + self.max_s
        with httpx.Client(base_url=self.url, timeout=10) as client:
            while not self.stop_event.is_set() and time.monotonic() < deadline:
                started = time.monotonic()
                try:
                    r = predict(client, self.model)
                except httpx.HTTPError as e:
                    self.results[i].append((-1, repr(e)))
                    continue
                finally:
                    self.latencies_ms[i].append((time.monotonic() - started) * 1e3)
                body = r.json()
                self.results[i].append((r.status_code, body.get("predictions", body)))

    def __enter__(self) -> Load:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop_event.set()
        for t in self.threads:
            t.join(timeout=15)

    def count(self) -> int:
        return sum(len(r) for r in self.results)

    def seen(self, value: list[float]) -> bool:
        return any(body == value for rs in self.results for _, body in list(rs))

    def failures(self) -> list[tuple[int, object]]:
        return [(code, body) for rs in self.results for code, body in rs if code != 200]


def run_load_until(load: Load, predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


class Writer:
    """Appends to a file in a version directory every 0.2 s, so the directory never settles."""

    def __init__(self, path: str, seconds: float) -> None:
        self.path, self.seconds = path, seconds
        self.writes = 0
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        deadline = time.monotonic() + self.seconds
        while time.monotonic() < deadline:
            with open(self.path, "a") as f:
                f.write(f"chunk {self.writes}\n" * 100)
            self.writes += 1
            time.sleep(0.2)

    def __enter__(self) -> Writer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.thread.join(timeout=self.seconds + 5)


# -- the `disk` server: one model per scenario, each with its own base path -----------------

DISK_MODELS = ["hot", "hot_race", "partial", "changing", "shared_a", "shared_b", "corrupt", "gone"]


@dataclasses.dataclass
class DiskServer:
    server: ServerProcess
    root: Path
    model_dir: str

    def base(self, model: str) -> Path:
        return self.root / ("shared" if model.startswith("shared_") else model)


@pytest.fixture(scope="module")
def disk(start_server, model_dir: str, tmp_path_factory: pytest.TempPathFactory) -> DiskServer:  # type: ignore[no-untyped-def]
    root = tmp_path_factory.mktemp("disk")
    models = []
    for name in DISK_MODELS:
        base = root / ("shared" if name.startswith("shared_") else name)
        if not base.exists():
            saved_models.publish(half(model_dir), str(base), 1)
        models.append({"name": name, "base_path": str(base)})
    config = root / "models.config"
    config.write_text(model_config(models))
    server = start_server([f"--model_config_file={config}", *FAST_FLAGS])
    return DiskServer(server, root, model_dir)


def test_hot_swap_under_concurrent_load_has_no_failed_requests(disk: DiskServer, capsys) -> None:  # type: ignore[no-untyped-def]
    client, base = disk.server.client, disk.base("hot")
    assert predictions(client, "hot") == V_HALF
    with Load(disk.server.url, "hot") as load:
        run_load_until(load, lambda: load.count() >= 20, 10, "load to start")
        before = [len(ms) for ms in load.latencies_ms]
        saved_models.publish(x2(disk.model_dir), str(base), 2)
        run_load_until(load, lambda: load.seen(V_X2), 12, "answers from version 2")
        shutil.rmtree(base / "1")
        seen_at = load.count()
        run_load_until(load, lambda: load.count() >= seen_at + 40, 10, "load after removing version 1")
        time.sleep(1.5)  # a poll interval with version 1 gone from disk
    assert load.failures() == []
    assert load.count() >= 100
    steady = sorted(ms for i, per in enumerate(load.latencies_ms) for ms in per[:before[i]])
    swapping = sorted(ms for i, per in enumerate(load.latencies_ms) for ms in per[before[i]:])
    with capsys.disabled():  # reported, not asserted: timings on a shared 2-core machine are noise
        print(f"\n[swap stall] before the swap: median {steady[len(steady) // 2]:.1f} ms, max {steady[-1]:.1f} ms; "
              f"through it: median {swapping[len(swapping) // 2]:.1f} ms, max {swapping[-1]:.1f} ms "
              f"({len(swapping)} requests, 4 clients)")
    for per_thread in load.results:
        answers = [body for _, body in per_thread]
        assert answers and answers[0] == V_HALF
        assert answers[-1] == V_X2
        first_new = answers.index(V_X2)
        # Version 1 before the swap, version 2 after it; never back, never anything else.
        assert all(a == V_HALF for a in answers[:first_new]), answers
        assert all(a == V_X2 for a in answers[first_new:]), answers
    wait_states(disk.server, "hot", {2: "AVAILABLE", 1: "END"}, timeout=10)
    listed = statuses(client, "hot")
    assert [s["version"] for s in listed] == ["2", "1"]  # newest first
    assert all(s["status"]["error_code"] == "OK" for s in listed)
    assert predictions(client, "hot") == V_X2
    assert predict(client, "hot", version=1).status_code == 404


def test_hot_swap_removing_old_version_right_after_publishing_has_no_failed_requests(disk: DiskServer) -> None:
    base = disk.base("hot_race")
    assert predictions(disk.server.client, "hot_race") == V_HALF
    with Load(disk.server.url, "hot_race") as load:
        run_load_until(load, lambda: load.count() >= 20, 10, "load to start")
        saved_models.publish(x2(disk.model_dir), str(base), 2)
        shutil.rmtree(base / "1")  # an operator's "publish new, delete old"
        run_load_until(load, lambda: load.seen(V_X2), 15, "answers from version 2")
        time.sleep(0.5)
    wait_states(disk.server, "hot_race", {2: "AVAILABLE", 1: "END"}, timeout=10)
    failures = load.failures()
    assert failures == [], f"{len(failures)} of {load.count()} requests failed, e.g. {failures[:3]}"


def test_version_without_saved_model_pb_never_loads(disk: DiskServer) -> None:
    client, base = disk.server.client, disk.base("partial")
    # A copy that stopped half way: variables are there, the graph (written last) is not.
    shutil.copytree(os.path.join(x2(disk.model_dir), "variables"), base / "2" / "variables")
    deadline = time.monotonic() + 3.5  # three poll intervals and more
    while time.monotonic() < deadline:
        assert set(states(client, "partial")) == {1}
        assert predictions(client, "partial") == V_HALF
        time.sleep(0.25)
    assert states(client, "partial") == {1: "AVAILABLE"}
    assert predict(client, "partial", version=2).status_code == 404
    # The source is still scanning: a complete version 3 is found and served, 2 still ignored.
    saved_models.publish(x2(disk.model_dir), str(base), 3)
    wait_states(disk.server, "partial", {3: "AVAILABLE", 1: "END"}, timeout=15)
    assert 2 not in states(client, "partial")
    assert predictions(client, "partial") == V_X2


def test_version_whose_files_keep_changing_loads_only_after_writes_stop(disk: DiskServer) -> None:
    client, base = disk.server.client, disk.base("changing")
    version_dir = base / "2"
    shutil.copytree(x2(disk.model_dir), version_dir)  # saved_model.pb is there from the start
    with Writer(str(version_dir / "still_writing.log"), seconds=3.0) as writer:
        while writer.thread.is_alive():
            assert set(states(client, "changing")) == {1}, "loaded a version still being written"
            assert predictions(client, "changing") == V_HALF
            time.sleep(0.2)
    assert writer.writes >= 10
    stopped = time.monotonic()
    wait_states(disk.server, "changing", {2: "AVAILABLE", 1: "END"}, timeout=15)
    assert time.monotonic() - stopped < 10
    assert predictions(client, "changing") == V_X2


def test_version_still_being_written_does_not_load_for_models_sharing_a_base_path(disk: DiskServer) -> None:
    client, base = disk.server.client, disk.base("shared_a")
    version_dir = base / "2"
    shutil.copytree(x2(disk.model_dir), version_dir)
    loaded_while_writing: set[str] = set()
    with Writer(str(version_dir / "still_writing.log"), seconds=3.0) as writer:
        while writer.thread.is_alive():
            for model in ("shared_a", "shared_b"):
                if 2 in states(client, model):
                    loaded_while_writing.add(model)
            time.sleep(0.2)
    wait_states(disk.server, "shared_a", {2: "AVAILABLE"}, timeout=15)
    wait_states(disk.server, "shared_b", {2: "AVAILABLE"}, timeout=15)
    assert loaded_while_writing == set()


def test_version_that_fails_to_load_ends_with_error_and_old_version_keeps_serving(disk: DiskServer) -> None:
    client, base = disk.server.client, disk.base("corrupt")
    bad = base / ".tmp-corrupt"
    bad.mkdir()
    shutil.copytree(os.path.join(half(disk.model_dir), "variables"), bad / "variables")
    (bad / "saved_model.pb").write_bytes(random.Random(1234).randbytes(4096))
    os.rename(bad, base / "3")
    wait_states(disk.server, "corrupt", {3: "END"}, timeout=15)
    listed = statuses(client, "corrupt")
    assert [s["version"] for s in listed] == ["3", "1"]
    failed, old = listed
    assert failed["state"] == "END"
    assert failed["status"]["error_code"] not in ("OK", 0, "0")
    assert failed["status"]["error_message"], failed
    assert old["state"] == "AVAILABLE" and old["status"]["error_code"] == "OK"
    assert predictions(client, "corrupt") == V_HALF
    assert predict(client, "corrupt", version=3).status_code == 404
    assert client.get("/readyz").status_code == 200
    log = disk.server.log()
    assert "loading corrupt version 3 failed (attempt 1 of 2)" in log
    assert "loading corrupt version 3 failed (attempt 2 of 2)" in log
    # A version that failed for good is not retried on every poll while it stays on disk.
    time.sleep(2.5)
    assert disk.server.log().count("loading corrupt version 3 failed") == 2
    assert states(client, "corrupt") == {3: "END", 1: "AVAILABLE"}
    assert predictions(client, "corrupt") == V_HALF


def test_removing_the_only_version_unloads_it(disk: DiskServer) -> None:
    client, base = disk.server.client, disk.base("gone")
    assert predictions(client, "gone") == V_HALF
    shutil.rmtree(base / "1")
    try:
        wait_states(disk.server, "gone", {1: "END"}, timeout=15)
        assert states(client, "gone") == {1: "END"}
        r = predict(client, "gone")
        assert r.status_code == 404, r.text
        assert "error" in r.json()
        ready = client.get("/readyz")
        assert ready.status_code == 503
        assert ready.json()["waiting_for"] == ["gone"]
        assert client.get("/healthz").status_code == 200
    finally:
        # Publishing it again brings it back (and the shared server back to ready).
        saved_models.publish(half(disk.model_dir), str(base), 1)
    wait_states(disk.server, "gone", {1: "AVAILABLE"}, timeout=15)
    assert predictions(client, "gone") == V_HALF
    disk.server.wait_until(lambda: client.get("/readyz").status_code == 200, 10, "ready again")


# -- --model_config_file: labels, version policies, reloads ----------------------------------


def test_model_config_file_labels_policies_and_reloads(start_server, model_dir: str, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    shared = tmp_path / "shared"  # versions 1 (0.5x+2), 2 (2x+1), 3 (0.5x+2)
    saved_models.publish(half(model_dir), str(shared), 1)
    saved_models.publish(x2(model_dir), str(shared), 2)
    saved_models.publish(half(model_dir), str(shared), 3)
    for name, src in (("b", half(model_dir)), ("c", x2(model_dir))):
        saved_models.publish(src, str(tmp_path / name), 1)
    a = {"name": "a", "base_path": str(shared), "policy": "all {}", "labels": {"stable": 1, "canary": 2}}
    b = {"name": "b", "base_path": str(tmp_path / "b")}
    spec = {"name": "spec", "base_path": str(shared), "policy": "specific { versions: 1 }"}
    lat2 = {"name": "lat2", "base_path": str(shared), "policy": "latest { num_versions: 2 }"}
    c = {"name": "c", "base_path": str(tmp_path / "c")}
    config = tmp_path / "models.config"
    config.write_text(model_config([a, b, spec, lat2]))
    server = start_server([f"--model_config_file={config}", "--model_config_file_poll_wait_seconds=1",
                           *FAST_FLAGS])
    client = server.client

    # Version policies over the same three versions.
    wait_states(server, "a", {1: "AVAILABLE", 2: "AVAILABLE", 3: "AVAILABLE"})
    assert states(client, "spec") == {1: "AVAILABLE"}
    wait_states(server, "lat2", {2: "AVAILABLE", 3: "AVAILABLE"})
    assert states(client, "lat2") == {3: "AVAILABLE", 2: "AVAILABLE"}
    assert predictions(client, "a", version=1) == V_HALF
    assert predictions(client, "a", version=2) == V_X2
    assert predictions(client, "a", version=3) == V_HALF
    assert predictions(client, "spec") == V_HALF  # not the newest on disk: the one asked for
    assert predict(client, "spec", version=2).status_code == 404
    assert predictions(client, "lat2", version=2) == V_X2
    assert predict(client, "lat2", version=1).status_code == 404

    # Labels.
    assert predictions(client, "a", label="stable") == V_HALF
    assert predictions(client, "a", label="canary") == V_X2
    assert predict(client, "a", label="nope").status_code == 400
    assert predictions(client, "b") == V_HALF

    # Reload: b removed, c added, stable moves to 2, canary dropped.
    a2 = {**a, "labels": {"stable": 2}}
    write_atomically(config, model_config([a2, spec, lat2, c]))
    server.wait_until(lambda: predict(client, "b").status_code == 404, 15, "b unloaded")
    wait_states(server, "b", {1: "END"}, timeout=10)
    wait_states(server, "c", {1: "AVAILABLE"}, timeout=15)
    assert predictions(client, "c") == V_X2
    server.wait_until(lambda: predictions(client, "a", label="stable") == V_X2, 10, "stable -> 2")
    assert predict(client, "a", label="canary").status_code == 400
    listed = {m["name"]: m for m in client.get("/v1/models").json()["models"]}
    assert {"a", "c", "spec", "lat2"} <= set(listed)
    assert listed["a"]["version_labels"] == {"stable": "2"}
    assert client.get("/readyz").status_code == 200  # b is not configured any more
    assert predictions(client, "a", version=1) == V_HALF  # a's versions untouched

    # A config file with a syntax error is logged; the running config keeps serving.
    write_atomically(config, model_config([a, b, spec, lat2]).replace("config {", "config {{", 1))
    server.wait_until(lambda: CONFIG_PARSE_ERROR in server.log(), 10, "the parse error in the log")
    time.sleep(1.5)  # another poll with the broken file
    assert predictions(client, "a", label="stable") == V_X2
    assert predictions(client, "c") == V_X2
    assert predict(client, "b").status_code == 404
    assert client.get("/readyz").status_code == 200

    # Polling goes on after the error: a fixed file is applied (b comes back, c goes).
    write_atomically(config, model_config([a, b, spec, lat2]))
    server.wait_until(lambda: predict(client, "b").status_code == 200, 15, "b loaded again")
    assert predictions(client, "b") == V_HALF
    server.wait_until(lambda: predict(client, "c").status_code == 404, 15, "c unloaded")
    server.wait_until(lambda: predictions(client, "a", label="stable") == V_HALF, 10, "stable -> 1")
    assert predictions(client, "a", label="canary") == V_X2


def test_startup_with_unparseable_model_config_file_fails_fast(tmp_path: Path) -> None:
    config = tmp_path / "bad.config"
    config.write_text('model_config_list { config { name: "a" base_path: "/x" ')  # unterminated
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", "tfprod", "serve", "--host=127.0.0.1", f"--rest_api_port={free_port()}",
         f"--port={free_port()}", f"--model_config_file={config}"],
        capture_output=True, text=True, timeout=60, cwd=REPO,
    )
    assert result.returncode != 0
    assert CONFIG_PARSE_ERROR in result.stderr, result.stderr[-2000:]
    assert time.monotonic() - started < 60


# -- SIGTERM with requests in flight -----------------------------------------------------------


def test_sigterm_lets_requests_in_flight_finish_then_exits_zero(start_server, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    saved_models.slow(str(tmp_path / "slow" / "1"))
    server = start_server([f"--model_base_path={tmp_path / 'slow'}", "--model_name=slow", *FAST_FLAGS])
    quick = server.client.post("/v1/models/slow:predict", json={"instances": [0.0]})
    assert quick.status_code == 200 and quick.json()["predictions"] == [0.0], quick.text

    request_s = 3.0  # each request busy-waits this long in the model
    results: list[tuple[int, object, float]] = []  # status, body, seconds from t0 to the answer
    lock = threading.Lock()
    t0 = time.monotonic()

    def call(i: int) -> None:
        with httpx.Client(base_url=server.url, timeout=30) as client:
            try:
                r = client.post("/v1/models/slow:predict", json={"instances": [request_s, float(i)]})
                outcome: tuple[int, object, float] = (r.status_code, r.json(), time.monotonic() - t0)
            except httpx.HTTPError as e:
                outcome = (-1, repr(e), time.monotonic() - t0)
        with lock:
            results.append(outcome)

    threads = [threading.Thread(target=call, args=(i,), daemon=True) for i in range(3)]
    for t in threads:
        t.start()
    time.sleep(0.8)  # the requests reached the model and are busy in it
    sigterm_s = time.monotonic() - t0
    server.proc.send_signal(signal.SIGTERM)

    # While the three requests drain, the listening socket is already closed.
    refused_while_draining = False
    deadline = time.monotonic() + 1.5  # well before the requests in flight end
    while time.monotonic() < deadline and not refused_while_draining:
        time.sleep(0.1)
        try:
            with httpx.Client(base_url=server.url, timeout=2) as c:
                c.get("/healthz")
        except httpx.ConnectError:
            with lock:
                refused_while_draining = len(results) == 0 and server.proc.poll() is None
            break
        except httpx.HTTPError:
            pass
    for t in threads:
        t.join(timeout=30)
    try:
        returncode = server.proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        server.proc.kill()
        server.proc.wait()
        raise AssertionError(f"still running 30 s after SIGTERM:\n{server.log()[-3000:]}") from None

    assert len(results) == 3
    for status, body, done_s in results:
        assert status == 200, body
        assert isinstance(body, dict) and body["predictions"][0] == request_s
        assert done_s > sigterm_s + 1  # it really was in flight when SIGTERM came
    assert sorted(r[1]["predictions"][1] for r in results) == [0.0, 1.0, 2.0]  # type: ignore[index]
    assert refused_while_draining, "no connection refused while requests were still in flight"
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{server.url}/healthz", timeout=2)
    log = server.log()
    assert "shutting down: unloading models" in log
    assert "unloaded slow version 1" in log
    assert returncode == 0, log[-3000:]


def test_sigterm_large_grpc_calls_complete_or_hear_unavailable(start_server, model_dir: str) -> None:  # type: ignore[no-untyped-def]
    """~800 KB gRPC Predicts around SIGTERM: a call the server accepted before the signal completes,
    one after it hears UNAVAILABLE (retryable); none ends CANCELLED. Two servers, 12 calls each."""
    import grpc
    import numpy as np
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

    request = predict_pb2.PredictRequest()
    request.model_spec.name = "digits"
    request.inputs["pixels"].CopyFrom(tf.make_tensor_proto(np.random.default_rng(0).random((3125, 64), np.float32)))
    assert request.ByteSize() > 800_000
    seen: list[str] = []
    for _ in range(2):
        server = start_server([f"--model_base_path={os.path.join(model_dir, 'digits')}", "--model_name=digits"])
        stub = prediction_service_pb2_grpc.PredictionServiceStub(grpc.insecure_channel(server.grpc_target))
        stub.Predict(request, timeout=10)
        codes: list[str] = []

        def call(delay_s: float) -> None:
            time.sleep(delay_s)
            try:
                stub.Predict(request, timeout=20)  # noqa: B023  (joined before the loop moves on)
                codes.append("OK")  # noqa: B023
            except grpc.RpcError as e:
                codes.append(e.code().name)  # noqa: B023
        threads = [threading.Thread(target=call, args=(i * 0.002,)) for i in range(12)]
        for t in threads:
            t.start()
        time.sleep(0.008)
        server.proc.send_signal(signal.SIGTERM)
        for t in threads:
            t.join(timeout=30)
        assert server.proc.wait(timeout=30) == 0
        assert len(codes) == 12
        seen += codes
    assert set(seen) <= {"OK", "UNAVAILABLE"}, seen
    assert "OK" in seen and "UNAVAILABLE" in seen  # the signal really came among the calls
