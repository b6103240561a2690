"""Batching correctness on a real server: each caller gets exactly its rows; padding never leaks;
signatures and versions never share a batch; REST, gRPC and V2 callers do; a full queue answers
503 / UNAVAILABLE at once. No timing assertions: a wide batch window (0.4 s) and a barrier make
callers meet in one batch, and the `batch_probe` model reports the row count of the batch each row
ran in.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import threading
from collections.abc import Callable
from typing import Any

import grpc
import numpy as np
import pytest
import saved_models
import tensorflow as tf
import tritonclient.grpc as tgrpc
from conftest import ServerProcess
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

PARAMS = """max_batch_size { value: 8 }
batch_timeout_micros { value: 400000 }
num_batch_threads { value: 1 }
max_enqueued_batches { value: 16 }
allowed_batch_sizes: 1
allowed_batch_sizes: 2
allowed_batch_sizes: 4
allowed_batch_sizes: 8
pad_variable_length_inputs: true
"""
# With --enable_per_model_batching_parameters each version directory's batching_params.pbtxt
# decides (a version without one is not batched, as in TF Serving): probe gets PARAMS, the slow
# model one task at a time with one batch waiting, so a third concurrent caller finds the queue full.
SLOW_PARAMS = """max_batch_size { value: 1 }
num_batch_threads { value: 1 }
max_enqueued_batches { value: 1 }
"""


@pytest.fixture(scope="module")
def server(model_dir: str, start_server: Any, tmp_path_factory: pytest.TempPathFactory) -> ServerProcess:
    root = tmp_path_factory.mktemp("batching")
    probe = root / "probe"
    saved_models.batch_probe(str(probe / "1"))
    (probe / "1" / "batching_params.pbtxt").write_text(PARAMS)  # per-model parameters: see SLOW_PARAMS
    saved_models.publish(str(probe / "1"), str(probe), 2)
    slow = root / "slow"
    saved_models.publish(f"{model_dir}/slow/1", str(slow), 1)
    (slow / "1" / "batching_params.pbtxt").write_text(SLOW_PARAMS)
    (root / "batching.config").write_text(PARAMS)
    (root / "monitoring.config").write_text("prometheus_config { enable: true }")
    (root / "models.config").write_text(f"""model_config_list {{
  config {{ name: "probe" base_path: "{probe}" model_platform: "tensorflow"
           model_version_policy {{ all {{}} }} }}
  config {{ name: "slow" base_path: "{slow}" model_platform: "tensorflow" }}
}}""")
    server = start_server([f"--model_config_file={root / 'models.config'}", "--enable_batching",
                           f"--batching_parameters_file={root / 'batching.config'}",
                           "--enable_per_model_batching_parameters",
                           f"--monitoring_config_file={root / 'monitoring.config'}"])
    server.probe_path = str(probe)  # type: ignore[attr-defined]
    return server


@pytest.fixture(scope="module")
def stub(server: ServerProcess) -> Any:
    channel = grpc.insecure_channel(server.grpc_target)
    yield prediction_service_pb2_grpc.PredictionServiceStub(channel)
    channel.close()


def rest(server: ServerProcess, x: np.ndarray, signature: str = "", version: int | None = None) -> dict[str, Any]:
    path = "/v1/models/probe" + (f"/versions/{version}" if version else "") + ":predict"
    body: dict[str, Any] = {"instances": x.tolist()}
    if signature:
        body["signature_name"] = signature
    r = server.client.post(path, json=body)
    assert r.status_code == 200, r.text
    rows = r.json()["predictions"]
    return {k: np.array([row[k] for row in rows]) for k in rows[0]}


def grpc_predict(stub: Any, x: np.ndarray, signature: str = "") -> dict[str, Any]:
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "probe"
    request.model_spec.signature_name = signature
    request.inputs["x"].CopyFrom(tf.make_tensor_proto(x))
    response = stub.Predict(request, timeout=30)
    return {k: tf.make_ndarray(v) for k, v in response.outputs.items()}


def v2_infer(server: ServerProcess, x: np.ndarray) -> dict[str, Any]:
    client = tgrpc.InferenceServerClient(server.grpc_target)
    try:
        inp = tgrpc.InferInput("x", list(x.shape), "FP32")
        inp.set_data_from_numpy(x)
        result = client.infer("probe", [inp])
        return {k: result.as_numpy(k) for k in ("y", "rows", "length")}
    finally:
        client.close()


def together(calls: list[Callable[[], Any]]) -> list[Any]:
    """Run the calls at the same moment, each on its own thread; their results in order."""
    barrier = threading.Barrier(len(calls))
    results: list[Any] = [None] * len(calls)
    errors: list[BaseException] = []

    def run(i: int) -> None:
        barrier.wait()
        try:
            results[i] = calls[i]()
        except BaseException as e:  # noqa: BLE001 - re-raised below in the test thread
            errors.append(e)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(calls))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    if errors:
        raise errors[0]
    return results


def test_concurrent_callers_get_exactly_their_rows(server: ServerProcess, stub: Any) -> None:
    rng = np.random.default_rng(7)
    inputs = [rng.normal(size=(n, 3)).astype(np.float32) for n in (1, 2, 3, 1, 2, 1)]
    calls = [(lambda x=x: rest(server, x)) if i % 2 else (lambda x=x: grpc_predict(stub, x))
             for i, x in enumerate(inputs)]
    for x, got in zip(inputs, together(calls), strict=True):
        assert got["y"].shape == x.shape  # the caller's rows and nothing else
        np.testing.assert_array_equal(got["y"].astype(np.float32), 2.0 * x)  # the float32 product TF computes
        assert set(got["rows"].tolist()) <= {1, 2, 4, 8}


def test_padding_rows_never_reach_a_caller(server: ServerProcess) -> None:
    inputs = [np.full((1, 2), v, np.float32) for v in (1.0, 2.0, 3.0)]
    results = together([lambda x=x: rest(server, x) for x in inputs])
    for x, got in zip(inputs, results, strict=True):
        assert got["y"].tolist() == (2 * x).tolist()
    # Three single rows met in one batch, padded to the allowed size 4.
    assert [got["rows"].tolist() for got in results] == [[4], [4], [4]]


def test_variable_lengths_are_padded_within_a_batch(server: ServerProcess) -> None:
    short, long = np.ones((1, 2), np.float32), np.ones((1, 5), np.float32)
    got_short, got_long = together([lambda: rest(server, short), lambda: rest(server, long)])
    assert got_long["y"].tolist() == (2 * long).tolist()
    assert got_short["length"].tolist() == [5]  # ran padded to the longest row in its batch
    assert got_short["y"][:, :2].tolist() == (2 * short).tolist()


def test_signatures_never_share_a_batch(server: ServerProcess) -> None:
    x = np.ones((1, 1), np.float32)
    results = together([lambda: rest(server, x, "serving_default")] * 3 + [lambda: rest(server, x, "thrice")] * 3)
    assert [r["y"].item() for r in results] == [2.0] * 3 + [3.0] * 3
    assert {r["rows"].item() for r in results} == {4}  # 3 rows each, padded to 4; mixed would be 8


def test_versions_never_share_a_batch(server: ServerProcess) -> None:
    x = np.ones((1, 1), np.float32)
    results = together([lambda: rest(server, x, version=1)] * 2 + [lambda: rest(server, x, version=2)] * 2)
    assert {r["rows"].item() for r in results} == {2}  # mixed would be 4


def test_rest_grpc_and_v2_callers_share_a_batch(server: ServerProcess, stub: Any) -> None:
    x = np.ones((1, 1), np.float32)
    before = _metric(server, ':tensorflow:serving:batching_session:wrapped_run_count{model_name="probe"}')
    results = together([lambda: rest(server, x), lambda: grpc_predict(stub, x), lambda: v2_infer(server, x)])
    assert [r["rows"].item() for r in results] == [4, 4, 4]  # one batch of 3 rows, padded to 4
    after = _metric(server, ':tensorflow:serving:batching_session:wrapped_run_count{model_name="probe"}')
    assert after - before == 1
    processed = ':tensorflow:serving:batching_session:processed_batch_size_bucket{le="4",model_name="probe"}'
    assert _metric(server, processed) >= 1


def test_a_task_larger_than_max_batch_size_is_refused(server: ServerProcess) -> None:
    r = server.client.post("/v1/models/probe:predict", json={"instances": [[1.0]] * 9})
    assert r.status_code == 400
    assert "Task size 9 is larger than maximum input batch size 8" in r.json()["error"]
    assert rest(server, np.ones((2, 1), np.float32))["y"].tolist() == [[2.0], [2.0]]


def test_a_full_queue_answers_503_at_once(server: ServerProcess, stub: Any) -> None:
    def slow_call(seconds: float) -> tuple[int, str]:
        r = server.client.post("/v1/models/slow:predict", json={"instances": [seconds]})
        return r.status_code, r.text

    first = threading.Thread(target=slow_call, args=(3.0,))  # holds the one batch thread for 3 s
    first.start()
    server.wait_until(lambda: _metric(server, ':tensorflow:serving:batching_session:queuing_latency_count'
                                      '{model_name="slow"}') >= 1, 10, "the first slow call to start")
    # Room for one more task: of four callers arriving now, one waits its turn and three are refused.
    results = together([lambda: slow_call(0.0)] * 4)
    first.join(timeout=30)
    assert sorted(status for status, _ in results) == [200, 503, 503, 503], results
    refused = next(text for status, text in results if status == 503)
    assert "The batch scheduling queue to which this task was submitted is full" in refused
    assert slow_call(0.0)[0] == 200  # served again once the queue drains


@pytest.mark.parametrize(("params", "flags", "message"), [
    ("max_batch_size { value: 8 }", [], "--batching_parameters_file is set but --enable_batching is not"),
    ("max_batch_size { value: 8 } allowed_batch_sizes: 4 allowed_batch_sizes: 2", ["--enable_batching"],
     "must be positive and in increasing order"),
    ("max_batch_size { value: 8 } allowed_batch_sizes: 2 allowed_batch_sizes: 4", ["--enable_batching"],
     "Last entry in allowed_batch_sizes must match max_batch_size; last entry was 4; expected 8"),
    ("max_batch_size: 8", ["--enable_batching"], "Error parsing text-format tensorflow.serving.BatchingParameters"),
])
def test_inconsistent_batching_settings_stop_startup(tmp_path: Any, params: str, flags: list[str],
                                                      message: str) -> None:
    (tmp_path / "batching.config").write_text(params)
    result = subprocess.run([sys.executable, "-m", "tfprod", "serve", "--rest_api_port=1", "--model_base_path=/x",
                             f"--batching_parameters_file={tmp_path / 'batching.config'}", *flags],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode != 0
    assert message in result.stderr, result.stderr
    assert "Traceback" not in result.stderr


def _metric(server: ServerProcess, series: str) -> float:
    text = server.client.get("/monitoring/prometheus/metrics").text
    values = [float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(series + " ")]
    return values[0] if values else 0.0


def test_batches_in_flight_finish_across_a_version_swap(server: ServerProcess) -> None:
    """Runs last: it replaces the probe's versions 1 and 2 with 3 while callers keep sending."""
    probe = server.probe_path  # type: ignore[attr-defined]
    stop, failures, served = threading.Event(), [], [0]

    def load() -> None:
        while not stop.is_set():
            r = server.client.post("/v1/models/probe:predict", json={"instances": [[1.0]]})
            if r.status_code != 200 or r.json()["predictions"][0]["y"] != [2.0]:
                failures.append((r.status_code, r.text))
            served[0] += 1

    threads = [threading.Thread(target=load) for _ in range(6)]
    for t in threads:
        t.start()
    try:
        saved_models.publish(f"{probe}/1", probe, 3)  # with its batching_params.pbtxt
        server.wait_until(lambda: server.client.get("/v1/models/probe/versions/3").json()
                          .get("model_version_status", [{}])[0].get("state") == "AVAILABLE", 60, "version 3")
        shutil.rmtree(f"{probe}/1")
        shutil.rmtree(f"{probe}/2")
        server.wait_until(lambda: {s["version"]: s["state"] for s in server.client.get("/v1/models/probe").json()
                                   ["model_version_status"]} == {"3": "AVAILABLE", "2": "END", "1": "END"},
                          60, "versions 1 and 2 to unload")
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=30)
    assert served[0] > 0 and not failures, failures[:3]
    r = server.client.post("/v2/models/probe/infer", json={"inputs": [
        {"name": "x", "datatype": "FP32", "shape": [1, 1], "data": [1.0]}]})
    assert r.json()["model_version"] == "3"


def test_waiting_callers_hold_no_thread(start_server: Any, tmp_path: Any) -> None:
    """With one REST and one gRPC worker thread, seven concurrent callers still meet in one batch
    (padded to eight) and the server starts no thread for them: they await their batch on the
    event loop, not on a worker thread each."""
    probe = tmp_path / "probe"
    saved_models.batch_probe(str(probe / "1"))
    (tmp_path / "batching.config").write_text(PARAMS)
    server = start_server(["--model_name=probe", f"--model_base_path={probe}", "--enable_batching",
                           f"--batching_parameters_file={tmp_path / 'batching.config'}",
                           "--rest_api_num_threads=1", "--grpc_max_threads=1"])
    channel = grpc.insecure_channel(server.grpc_target)
    stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
    rest(server, np.zeros((1, 3), np.float32))
    grpc_predict(stub, np.zeros((1, 3), np.float32))  # every pool and TensorFlow's own threads started

    def threads() -> int:
        with open(f"/proc/{server.proc.pid}/status") as f:
            return int(next(line for line in f if line.startswith("Threads:")).split()[1])
    before, during = threads(), []
    sampling = threading.Event()

    def sample() -> None:
        while not sampling.is_set():
            during.append(threads())
            sampling.wait(0.02)
    sampler = threading.Thread(target=sample)
    sampler.start()
    xs = [np.full((1, 3), float(i), np.float32) for i in range(7)]
    calls = [(lambda x=x: rest(server, x)) if i % 2 else (lambda x=x: grpc_predict(stub, x)) for i, x in enumerate(xs)]
    results = together(calls)  # not a full batch: they wait the 0.4 s batch timeout
    sampling.set()
    sampler.join()
    channel.close()
    assert max(during) <= before + 1, (before, during)  # no thread per waiting caller
    for x, got in zip(xs, results, strict=True):
        np.testing.assert_array_equal(got["y"], 2.0 * x)
    assert [got["rows"].tolist() for got in results] == [[8]] * 7, [got["rows"].tolist() for got in results]
    assert len(during) > 10  # sampled all through the wait


def test_a_caller_that_hangs_up_is_dropped_before_its_batch(server: ServerProcess) -> None:
    """A REST client that gives up while its request waits for the batch thread never reaches the
    model: the batch after it runs the next caller, not the abandoned one."""
    import httpx

    ran = ':tensorflow:serving:batching_session:queuing_latency_count{model_name="slow"}'
    before = _metric(server, ran)
    first = threading.Thread(target=lambda: server.client.post("/v1/models/slow:predict",
                                                               json={"instances": [2.0]}))
    first.start()  # holds the one batch thread for 2 s
    server.wait_until(lambda: _metric(server, ran) >= before + 1, 10, "the first slow call to start")
    with pytest.raises(httpx.ReadTimeout), httpx.Client(base_url=server.url, timeout=0.5) as impatient:
        impatient.post("/v1/models/slow:predict", json={"instances": [5.0]})  # would hold the thread 5 s
    first.join(timeout=30)
    r = server.client.post("/v1/models/slow:predict", json={"instances": [0.0]})
    assert (r.status_code, r.json()) == (200, {"predictions": [0.0]})
    assert _metric(server, ran) == before + 2  # the first call and the last one: the abandoned one never ran
