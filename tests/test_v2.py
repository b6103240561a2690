"""The V2 / Open Inference Protocol against a real server, spoken by tritonclient (HTTP and gRPC).

Every inference answer is checked against TensorFlow running the same SavedModel in this
process: the server runs the same graph on the same inputs, so float32 answers must be equal
bit for bit. Hostile requests go over raw HTTP (httpx) and raw gRPC messages built from
tritonclient's own protos, since tritonclient refuses to send most of them.

Servers (each costs seconds): one `server` with half_plus_two, multi_io and digits and
Prometheus metrics, shared by everything but the repository tests; one `repo` server whose
config (half_plus_two and multi_io) is polled every second, for the model repository extension.
"""

from __future__ import annotations

import json
import os
import re
import struct
import threading
import time
from collections.abc import Iterator
from typing import Any

import grpc
import httpx
import numpy as np
import pytest
import tensorflow as tf
import tritonclient.grpc as tgrpc
import tritonclient.http as thttp
from conftest import ServerProcess
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc
from tritonclient.grpc import service_pb2 as triton_pb2
from tritonclient.grpc import service_pb2_grpc as triton_pb2_grpc
from tritonclient.utils import InferenceServerException

import tfprod

MODELS = ("half_plus_two", "multi_io", "digits")
TRANSPORTS = ("http", "grpc")
# How an inference request travels: JSON or binary tensors over HTTP, or gRPC (raw contents).
MODES = ("http-json", "http-binary", "grpc")
METRICS_PATH = "/monitoring/prometheus/metrics"
V2_TYPES = {tf.float32: "FP32", tf.float64: "FP64", tf.int32: "INT32", tf.int64: "INT64", tf.string: "BYTES"}
NOT_UTF8 = b"\x00\xff\xfebin\x80"


# -- servers and clients --------------------------------------------------------------------


def config_text(model_dir: str, names: tuple[str, ...]) -> str:
    models = "\n".join(
        f'  config {{ name: "{name}" base_path: "{os.path.join(model_dir, name)}" model_platform: "tensorflow" }}'
        for name in names)
    return "model_config_list {\n" + models + "\n}\n"


@pytest.fixture(scope="module")
def server(model_dir: str, start_server: Any, tmp_path_factory: pytest.TempPathFactory) -> ServerProcess:
    cfg = tmp_path_factory.mktemp("v2")
    (cfg / "models.config").write_text(config_text(model_dir, MODELS))
    (cfg / "monitoring.config").write_text(f'prometheus_config {{ enable: true path: "{METRICS_PATH}" }}')
    return start_server([f"--model_config_file={cfg / 'models.config'}",
                         f"--monitoring_config_file={cfg / 'monitoring.config'}"])


@pytest.fixture(scope="module")
def clients(server: ServerProcess) -> Iterator[dict[str, Any]]:
    made = {"http": thttp.InferenceServerClient(server.url.removeprefix("http://"), network_timeout=30),
            "grpc": tgrpc.InferenceServerClient(server.grpc_target)}
    yield made
    for client in made.values():
        client.close()


@pytest.fixture(scope="module")
def tf_models(model_dir: str) -> dict[str, Any]:
    """The same SavedModels loaded in this process: the reference answers."""
    return {name: tf.saved_model.load(os.path.join(model_dir, name, "1")) for name in MODELS}


@pytest.fixture(scope="module")
def digit_rows() -> np.ndarray:
    from sklearn.datasets import load_digits

    return (load_digits().data[:24] / 16.0).astype(np.float32)


def reference(tf_models: dict[str, Any], model: str, inputs: dict[str, np.ndarray],
              signature: str = "serving_default") -> dict[str, np.ndarray]:
    outputs = tf_models[model].signatures[signature](**{k: tf.constant(v) for k, v in inputs.items()})
    return {k: v.numpy() for k, v in outputs.items()}


def lib_of(mode: str) -> Any:
    return tgrpc if mode.startswith("grpc") else thttp


def client_of(clients: dict[str, Any], mode: str) -> Any:
    return clients["grpc" if mode.startswith("grpc") else "http"]


def infer(clients: dict[str, Any], mode: str, model: str, inputs: dict[str, tuple[np.ndarray, str]],
          outputs: list[str] | None = None, **kw: Any) -> Any:
    """A tritonclient inference; `inputs` maps name -> (array, V2 datatype)."""
    lib, binary = lib_of(mode), mode != "http-json"
    request_inputs = []
    for name, (array, dtype) in inputs.items():
        given = lib.InferInput(name, list(array.shape), dtype)
        if lib is thttp:
            given.set_data_from_numpy(array, binary_data=binary)
        else:
            given.set_data_from_numpy(array)
        request_inputs.append(given)
    requested = None
    if outputs is not None:
        requested = [lib.InferRequestedOutput(n, binary_data=binary) if lib is thttp else lib.InferRequestedOutput(n)
                     for n in outputs]
    return client_of(clients, mode).infer(model, request_inputs, outputs=requested, **kw)


def as_bytes(array: np.ndarray) -> np.ndarray:
    """BYTES outputs come back as str (JSON) or bytes (binary, gRPC): compare them as bytes."""
    out = np.empty(array.size, dtype=object)
    out[:] = [v.encode("utf-8") if isinstance(v, str) else bytes(v) for v in array.reshape(-1)]
    return out.reshape(array.shape)


def assert_same(got: np.ndarray, want: np.ndarray) -> None:
    """Equal values, shape and dtype; exact for floats (the same graph ran on the same inputs)."""
    assert got is not None
    assert got.shape == want.shape
    if want.dtype == object:
        assert as_bytes(got).tolist() == as_bytes(want).tolist()
        return
    assert got.dtype == want.dtype, (got.dtype, want.dtype)
    np.testing.assert_array_equal(got, want)


def output_names(result: Any, mode: str) -> list[str]:
    response = result.get_response()
    if mode.startswith("grpc"):
        return [o.name for o in response.outputs]
    return [o["name"] for o in response["outputs"]]


def v2_post(server: ServerProcess, path: str, doc: Any, status: int = 200) -> Any:
    r = server.client.post(path, content=json.dumps(doc))
    assert r.status_code == status, r.text
    return r.json()


def assert_serving(server: ServerProcess) -> None:
    """A valid V2 infer still answers (after a hostile request)."""
    doc = {"inputs": [{"name": "x", "shape": [3], "datatype": "FP32", "data": [1.0, 2.0, -3.0]}]}
    body = v2_post(server, "/v2/models/half_plus_two/infer", doc)
    assert body["outputs"] == [{"name": "y", "datatype": "FP32", "shape": [3], "data": [2.5, 3.0, 0.5]}]


def expect_error(call: Any, status: str, *fragments: str) -> InferenceServerException:
    with pytest.raises(InferenceServerException) as info:
        call()
    error = info.value
    assert error.status() == status, (error.status(), error.message())
    for fragment in fragments:
        assert fragment in error.message(), error.message()
    return error


def status_of(transport: str, http: int, grpc_code: str) -> str:
    return str(http) if transport == "http" else f"StatusCode.{grpc_code}"


# -- 1. server --------------------------------------------------------------------------------


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_server_live_ready_and_metadata(clients: dict[str, Any], transport: str) -> None:
    client = clients[transport]
    assert client.is_server_live()
    assert client.is_server_ready()
    meta = client.get_server_metadata(**({"as_json": True} if transport == "grpc" else {}))
    assert meta["name"] == "tfprod"
    assert meta["version"] == tfprod.__version__
    assert meta["extensions"] == ["binary_tensor_data", "model_repository"]


def test_rest_health_endpoints(server: ServerProcess) -> None:
    assert server.client.get("/v2/health/live").status_code == 200
    assert server.client.get("/v2/health/ready").status_code == 200
    assert server.client.get("/v2").json()["name"] == "tfprod"


# -- 2. model metadata ----------------------------------------------------------------------


def tensors(entries: list[dict[str, Any]]) -> dict[str, tuple[str, list[int]]]:
    """name -> (datatype, shape); gRPC's JSON writes int64 dims as strings."""
    return {e["name"]: (e["datatype"], [int(d) for d in e["shape"]]) for e in entries}


def signature_tensors(tf_models: dict[str, Any], model: str,
                      signature: str = "serving_default") -> tuple[dict[str, Any], dict[str, Any]]:
    """What the SavedModel's signature says, as V2 metadata would say it."""
    fn = tf_models[model].signatures[signature]

    def describe(specs: dict[str, tf.TensorSpec]) -> dict[str, tuple[str, list[int]]]:
        return {name: (V2_TYPES[spec.dtype], [-1 if d is None else d for d in spec.shape.as_list()])
                for name, spec in specs.items()}
    return describe(fn.structured_input_signature[1]), describe(fn.structured_outputs)


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("version", ["", "1"])
def test_model_metadata_is_the_signature(clients: dict[str, Any], tf_models: dict[str, Any], transport: str,
                                         model: str, version: str) -> None:
    kw = {"as_json": True} if transport == "grpc" else {}
    meta = clients[transport].get_model_metadata(model, version, **kw)
    assert meta["name"] == model
    assert meta["versions"] == ["1"]
    assert meta["platform"] == "tensorflow_savedmodel"
    want_inputs, want_outputs = signature_tensors(tf_models, model)
    assert tensors(meta["inputs"]) == want_inputs
    assert tensors(meta["outputs"]) == want_outputs


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_tensors_come_in_a_stable_order(clients: dict[str, Any], transport: str) -> None:
    """Metadata lists, and a request that names no outputs gets, a signature's tensors sorted by name
    (the canonical order of a protobuf map: text format and deterministic serialization sort its
    keys), so the order is the same on every start of the server. Iterating the SignatureDef's
    map instead gives an order that changes from process to process."""
    kw = {"as_json": True} if transport == "grpc" else {}
    meta = clients[transport].get_model_metadata("multi_io", **kw)
    assert [t["name"] for t in meta["inputs"]] == ["a", "b", "text"]
    assert [t["name"] for t in meta["outputs"]] == ["doubled", "echo_bytes", "length", "total", "upper"]
    mode = "grpc" if transport == "grpc" else "http-binary"
    result = infer(clients, mode, "multi_io", typed(multi_io_inputs([b"order"])))
    assert output_names(result, mode) == ["doubled", "echo_bytes", "length", "total", "upper"]


def test_model_metadata_spot_checks(clients: dict[str, Any]) -> None:
    meta = clients["http"].get_model_metadata("multi_io")
    assert tensors(meta["inputs"]) == {"a": ("FP32", [-1, 2]), "b": ("INT64", [-1]), "text": ("BYTES", [-1])}
    assert tensors(meta["outputs"]) == {"total": ("FP32", [-1]), "doubled": ("INT64", [-1]),
                                        "length": ("INT32", [-1]), "upper": ("BYTES", [-1]),
                                        "echo_bytes": ("BYTES", [-1])}
    assert tensors(clients["http"].get_model_metadata("digits")["inputs"]) == {"pixels": ("FP32", [-1, 64])}
    assert tensors(clients["http"].get_model_metadata("half_plus_two")["outputs"]) == {"y": ("FP32", [-1])}


def test_model_metadata_of_another_signature_over_rest(clients: dict[str, Any], tf_models: dict[str, Any]) -> None:
    meta = clients["http"].get_model_metadata("multi_io", query_params={"signature_name": "scale"})
    want_inputs, want_outputs = signature_tensors(tf_models, "multi_io", "scale")
    assert tensors(meta["inputs"]) == want_inputs == {"m": ("FP64", [-1, 3])}
    assert tensors(meta["outputs"]) == want_outputs
    expect_error(lambda: clients["http"].get_model_metadata("multi_io", query_params={"signature_name": "nope"}),
                 "400", "nope")


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_model_metadata_errors(clients: dict[str, Any], transport: str) -> None:
    client = clients[transport]
    expect_error(lambda: client.get_model_metadata("no_such_model"), status_of(transport, 404, "NOT_FOUND"),
                 "no_such_model")
    expect_error(lambda: client.get_model_metadata("half_plus_two", "7"), status_of(transport, 404, "NOT_FOUND"),
                 "half_plus_two", "7")


# -- 3. readiness -----------------------------------------------------------------------------


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_model_readiness(clients: dict[str, Any], transport: str) -> None:
    client = clients[transport]
    for model in MODELS:
        assert client.is_model_ready(model)
        assert client.is_model_ready(model, "1")
    assert not client.is_model_ready("no_such_model")
    assert not client.is_model_ready("half_plus_two", "2")


def test_rest_model_ready_status_codes(server: ServerProcess) -> None:
    assert server.client.get("/v2/models/digits/ready").status_code == 200
    assert server.client.get("/v2/models/digits/versions/1/ready").status_code == 200
    r = server.client.get("/v2/models/digits/versions/3/ready")
    assert r.status_code == 400 and "digits" in r.json()["error"]
    assert server.client.get("/v2/models/no_such_model/ready").status_code == 400


# -- 4. inference -----------------------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
def test_digits_match_tensorflow(clients: dict[str, Any], tf_models: dict[str, Any], digit_rows: np.ndarray,
                                 mode: str) -> None:
    want = reference(tf_models, "digits", {"pixels": digit_rows})["output_0"]
    result = infer(clients, mode, "digits", {"pixels": (digit_rows, "FP32")}, ["output_0"], request_id="req-7")
    got = result.as_numpy("output_0")
    assert_same(got, want)
    assert got.shape == (24, 10)
    assert (got.argmax(1) == load_digit_labels()[:24]).mean() > 0.8  # a real classifier, really run
    response = result.get_response()
    if mode == "grpc":
        assert (response.model_name, response.model_version, response.id) == ("digits", "1", "req-7")
        return
    assert (response["model_name"], response["model_version"], response["id"]) == ("digits", "1", "req-7")
    (output,) = response["outputs"]
    if mode == "http-binary":  # the answer really travelled as binary tensor data
        assert output["parameters"] == {"binary_data_size": 24 * 10 * 4} and "data" not in output
    else:
        assert "data" in output and "parameters" not in output


def load_digit_labels() -> np.ndarray:
    from sklearn.datasets import load_digits

    return load_digits().target


def test_http_all_outputs_binary_by_default_and_gzip_request(clients: dict[str, Any], tf_models: dict[str, Any],
                                                             digit_rows: np.ndarray) -> None:
    """No outputs requested: tritonclient asks for binary_data_output; gzip-compressed request body."""
    want = reference(tf_models, "digits", {"pixels": digit_rows})["output_0"]
    given = thttp.InferInput("pixels", list(digit_rows.shape), "FP32")
    given.set_data_from_numpy(digit_rows, binary_data=True)
    result = clients["http"].infer("digits", [given], request_compression_algorithm="gzip")
    assert_same(result.as_numpy("output_0"), want)
    assert result.get_output("output_0")["parameters"]["binary_data_size"] == want.nbytes


def multi_io_inputs(texts: list[bytes]) -> dict[str, np.ndarray]:
    n = len(texts)
    a = np.arange(2 * n, dtype=np.float32).reshape(n, 2) * np.float32(0.37) - np.float32(1.5)
    b = np.array([2**40 + 1, -7, 2**62, 0, -(2**63), 5][:n], dtype=np.int64)
    text = np.empty(n, dtype=object)
    text[:] = texts
    return {"a": a, "b": b, "text": text}


def typed(inputs: dict[str, np.ndarray]) -> dict[str, tuple[np.ndarray, str]]:
    kinds = {np.dtype(np.float32): "FP32", np.dtype(np.float64): "FP64", np.dtype(np.int64): "INT64",
             np.dtype(object): "BYTES"}
    return {name: (array, kinds[array.dtype]) for name, array in inputs.items()}


@pytest.mark.parametrize("mode", MODES)
def test_multi_io_bytes_and_int64_match_tensorflow(clients: dict[str, Any], tf_models: dict[str, Any],
                                                   mode: str) -> None:
    texts = [b"hello", "h\u00e9llo w\u00f6rld".encode(), b"", b"x" * 300]
    if mode != "http-json":  # JSON strings can only carry UTF-8
        texts += [NOT_UTF8, b"\x00"]
    inputs = multi_io_inputs(texts)
    want = reference(tf_models, "multi_io", inputs)
    result = infer(clients, mode, "multi_io", typed(inputs),
                   None if mode == "http-json" else ["total", "doubled", "length", "upper", "echo_bytes"])
    for name, value in want.items():
        assert_same(result.as_numpy(name), value)
    assert result.as_numpy("doubled").tolist()[:2] == [2**41 + 2, -14]  # int64 exact, beyond float64's 2**53
    if mode != "http-json":
        assert as_bytes(result.as_numpy("echo_bytes")).tolist() == texts


@pytest.mark.parametrize("mode", MODES)
def test_requested_outputs_subset(clients: dict[str, Any], tf_models: dict[str, Any], mode: str) -> None:
    inputs = multi_io_inputs([b"ab", b"cde"])
    want = reference(tf_models, "multi_io", inputs)
    result = infer(clients, mode, "multi_io", typed(inputs), ["upper", "doubled"])
    assert output_names(result, mode) == ["upper", "doubled"]
    assert_same(result.as_numpy("upper"), want["upper"])
    assert_same(result.as_numpy("doubled"), want["doubled"])
    assert result.as_numpy("total") is None


def test_non_utf8_bytes_output_as_json_is_refused(clients: dict[str, Any]) -> None:
    """Binary input may carry any bytes; asking for them back as JSON must say to use binary."""
    inputs = multi_io_inputs([NOT_UTF8])
    lib_inputs = []
    for name, (array, dtype) in typed(inputs).items():
        given = thttp.InferInput(name, list(array.shape), dtype)
        given.set_data_from_numpy(array, binary_data=True)
        lib_inputs.append(given)
    out = [thttp.InferRequestedOutput("echo_bytes", binary_data=False)]
    expect_error(lambda: clients["http"].infer("multi_io", lib_inputs, outputs=out), "400",
                 "echo_bytes", "binary")


@pytest.mark.parametrize("mode", MODES)
def test_signature_name_parameter_selects_scale(clients: dict[str, Any], tf_models: dict[str, Any],
                                                mode: str) -> None:
    """multi_io's `scale` signature takes a plain FP64 tensor."""
    m = np.array([[1.0, -2.5, 1e-300], [3.25, 0.1, 7.0]], dtype=np.float64)
    want = reference(tf_models, "multi_io", {"m": m}, "scale")["scaled"]
    result = infer(clients, mode, "multi_io", {"m": (m, "FP64")}, ["scaled"], parameters={"signature_name": "scale"})
    assert_same(result.as_numpy("scaled"), want)


@pytest.mark.parametrize("mode", ["http-binary", "grpc"])
def test_signature_name_parameter_selects_regress_on_serialized_examples(
        clients: dict[str, Any], tf_models: dict[str, Any], mode: str) -> None:
    """half_plus_two's regress_x_to_y takes a plain string tensor of serialized tf.Examples."""
    xs = [1.0, -2.0, 3.5]
    examples = np.empty(len(xs), dtype=object)
    examples[:] = [tf.train.Example(features=tf.train.Features(feature={
        "x": tf.train.Feature(float_list=tf.train.FloatList(value=[x]))})).SerializeToString() for x in xs]
    want = reference(tf_models, "half_plus_two", {"inputs": examples}, "regress_x_to_y")["outputs"]
    result = infer(clients, mode, "half_plus_two", {"inputs": (examples, "BYTES")}, ["outputs"],
                   parameters={"signature_name": "regress_x_to_y"})
    assert_same(result.as_numpy("outputs"), want)
    assert want.reshape(-1).tolist() == [2.5, 1.0, 3.75]


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_unknown_signature_name_is_an_error(clients: dict[str, Any], transport: str) -> None:
    x = np.array([1.0], np.float32)
    mode = "grpc" if transport == "grpc" else "http-json"
    expect_error(lambda: infer(clients, mode, "half_plus_two", {"x": (x, "FP32")},
                               parameters={"signature_name": "no_such_sig"}),
                 status_of(transport, 400, "INVALID_ARGUMENT"), "no_such_sig")


def test_grpc_typed_contents_match_tensorflow(server: ServerProcess, tf_models: dict[str, Any],
                                              digit_rows: np.ndarray) -> None:
    """tritonclient always sends raw contents; typed `contents` fields, built from Triton's protos."""
    inputs = multi_io_inputs([b"abc", NOT_UTF8])
    want = reference(tf_models, "multi_io", inputs)
    request = triton_pb2.ModelInferRequest(model_name="multi_io")
    request.inputs.add(name="a", datatype="FP32", shape=[2, 2]).contents.fp32_contents.extend(
        inputs["a"].reshape(-1).tolist())
    request.inputs.add(name="b", datatype="INT64", shape=[2]).contents.int64_contents.extend(inputs["b"].tolist())
    request.inputs.add(name="text", datatype="BYTES", shape=[2]).contents.bytes_contents.extend(
        inputs["text"].tolist())
    with grpc.insecure_channel(server.grpc_target) as channel:
        response = triton_pb2_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request, timeout=30)
    got = tgrpc.InferResult(response)
    for name, value in want.items():
        assert_same(got.as_numpy(name), value)


@pytest.mark.parametrize("mode", MODES)
def test_empty_batch_explicit_version_and_non_finite_floats(clients: dict[str, Any], tf_models: dict[str, Any],
                                                            mode: str) -> None:
    empty = np.zeros((0, 64), np.float32)
    want = reference(tf_models, "digits", {"pixels": empty})["output_0"]
    result = infer(clients, mode, "digits", {"pixels": (empty, "FP32")}, ["output_0"], model_version="1")
    assert_same(result.as_numpy("output_0"), want)
    assert want.shape == (0, 10)

    x = np.array([np.nan, np.inf, -np.inf, 3.4e38, -0.0, 1e-45], np.float32)
    want = reference(tf_models, "half_plus_two", {"x": x})["y"]
    assert np.isnan(want[0]) and want[1] == np.inf and want[2] == -np.inf
    result = infer(clients, mode, "half_plus_two", {"x": (x, "FP32")}, ["y"], model_version="1")
    assert_same(result.as_numpy("y"), want)


def test_http_per_output_binary_choice(clients: dict[str, Any], tf_models: dict[str, Any]) -> None:
    inputs = multi_io_inputs([b"mixed", b"choice"])
    want = reference(tf_models, "multi_io", inputs)
    lib_inputs = []
    for name, (array, dtype) in typed(inputs).items():
        given = thttp.InferInput(name, list(array.shape), dtype)
        given.set_data_from_numpy(array, binary_data=name != "b")
        lib_inputs.append(given)
    outputs = [thttp.InferRequestedOutput("upper", binary_data=False),
               thttp.InferRequestedOutput("doubled", binary_data=True),
               thttp.InferRequestedOutput("total", binary_data=False)]
    result = clients["http"].infer("multi_io", lib_inputs, outputs=outputs)
    assert "data" in result.get_output("upper") and "data" in result.get_output("total")
    assert result.get_output("doubled")["parameters"] == {"binary_data_size": 16}
    for name in ("upper", "doubled", "total"):
        assert_same(result.as_numpy(name), want[name])


# -- 5. four front ends, one answer -----------------------------------------------------------


def test_every_front_end_gives_identical_numbers(server: ServerProcess, clients: dict[str, Any],
                                                 tf_models: dict[str, Any], digit_rows: np.ndarray) -> None:
    want = reference(tf_models, "digits", {"pixels": digit_rows})["output_0"]
    answers = {mode: infer(clients, mode, "digits", {"pixels": (digit_rows, "FP32")}).as_numpy("output_0")
               for mode in MODES}
    r = server.client.post("/v1/models/digits:predict", json={"instances": digit_rows.tolist()})
    assert r.status_code == 200, r.text
    answers["v1-rest"] = np.array(r.json()["predictions"], dtype=np.float32)
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "digits"
    request.inputs["pixels"].CopyFrom(tf.make_tensor_proto(digit_rows))
    with grpc.insecure_channel(server.grpc_target) as channel:
        response = prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict(request, timeout=30)
    answers["v1-grpc"] = tf.make_ndarray(response.outputs["output_0"])
    for front_end, got in answers.items():
        assert got.dtype == np.float32, front_end
        assert np.array_equal(got, want), front_end

    inputs = multi_io_inputs([b"same", b"answers"])
    want_io = reference(tf_models, "multi_io", inputs)
    v1 = server.client.post("/v1/models/multi_io:predict", json={"inputs": {
        "a": inputs["a"].tolist(), "b": inputs["b"].tolist(), "text": ["same", "answers"]}}).json()["outputs"]
    v2 = infer(clients, "grpc", "multi_io", typed(inputs))
    assert np.array_equal(np.array(v1["total"], np.float32), want_io["total"])
    assert v1["doubled"] == want_io["doubled"].tolist() == v2.as_numpy("doubled").tolist()
    assert_same(v2.as_numpy("total"), want_io["total"])


# -- 6. hostile requests ----------------------------------------------------------------------


def _binary_body(doc: dict[str, Any], blob: bytes) -> tuple[bytes, dict[str, str]]:
    header = json.dumps(doc).encode()
    return header + blob, {"Inference-Header-Content-Length": str(len(header))}


def _x(data: Any, shape: list[int] | None = None, dtype: str = "FP32") -> dict[str, Any]:
    return {"inputs": [{"name": "x", "shape": [len(data)] if shape is None else shape, "datatype": dtype,
                        "data": data}]}


_TWO_FLOATS = struct.pack("<2f", 1.0, 2.0)
_BIN_X = {"inputs": [{"name": "x", "shape": [2], "datatype": "FP32", "parameters": {"binary_data_size": 8}}]}
_DEEP = b'{"inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": ' + b"[" * 5000 + b"1.0" + \
    b"]" * 5000 + b"}]}"

HOSTILE: list[Any] = [
    pytest.param("half_plus_two", b'{"inputs": [{"name": "x",', {}, 400, "JSON Parse error", id="malformed-json"),
    pytest.param("half_plus_two", b"", {}, 400, "empty", id="empty-body"),
    pytest.param("half_plus_two", b"[1, 2]", {}, 400, "must be a JSON object", id="not-an-object"),
    pytest.param("half_plus_two", b'{"outputs": []}', {}, 400, "'inputs' array", id="no-inputs"),
    pytest.param("half_plus_two", _x([1.0, 2.0], dtype="FP64"), {}, 400,
                 "input 'x' has datatype FP64 but the model expects FP32", id="wrong-datatype"),
    pytest.param("half_plus_two", _x([1.0], dtype="FLOAT32"), {}, 400, "the V2 datatypes are", id="no-such-datatype"),
    pytest.param("half_plus_two", _x(["a"]), {}, 400, "input 'x' (FP32) has the value \"a\"", id="string-for-fp32"),
    pytest.param("half_plus_two", _x([1.0, 2.0], shape=[3]), {}, 400, "input 'x' has 2 values but shape [3] needs 3",
                 id="element-count"),
    pytest.param("half_plus_two", _x([1.0, 2.0], shape=[1, 2]), {}, 400,
                 "input 'x' has shape [1,2] but the model expects [-1]", id="wrong-rank"),
    pytest.param("digits", {"inputs": [{"name": "pixels", "shape": [1, 63], "datatype": "FP32", "data": [0.0] * 63}]},
                 {}, 400, "input 'pixels' has shape [1,63] but the model expects [-1,64]", id="wrong-width"),
    pytest.param("digits", {"inputs": [{"name": "pixels", "shape": [2, 64], "datatype": "FP32",
                                        "data": [[0.0] * 64, [0.0] * 63]}]},
                 {}, 400, "nested 'data' does not match shape [2,64]", id="ragged-nesting"),
    pytest.param("half_plus_two", _x([1.0], shape=[-1]), {}, 400, "every dimension must be between 0",
                 id="negative-dim"),
    pytest.param("half_plus_two", _x([1e39]), {}, 400, "out of range for FP32", id="fp32-overflow"),
    pytest.param("half_plus_two", _binary_body({"inputs": [{"name": "x", "shape": [4], "datatype": "FP32",
                                                            "parameters": {"binary_data_size": 16}}]}, _TWO_FLOATS),
                 None, 400, "binary_data_size 16, but only 8 bytes", id="binary-size-beyond-body"),
    pytest.param("half_plus_two", _binary_body(_BIN_X, _TWO_FLOATS + b"junk"), None, 400, "add up to 8",
                 id="binary-bytes-left-over"),
    pytest.param("half_plus_two", _binary_body({"inputs": [{"name": "x", "shape": [2], "datatype": "FP32",
                                                            "parameters": {"binary_data_size": 6}}]},
                                               _TWO_FLOATS[:6]),
                 None, 400, "has 6 bytes of data, but FP32 shape [2] needs 8", id="binary-size-not-shape"),
    pytest.param("half_plus_two", _BIN_X, {}, 400, "no Inference-Header-Content-Length",
                 id="binary-size-without-header"),
    pytest.param("half_plus_two", json.dumps(_BIN_X).encode() + _TWO_FLOATS, {}, 400, "JSON Parse error",
                 id="binary-body-without-header"),
    pytest.param("half_plus_two", json.dumps(_BIN_X).encode() + _TWO_FLOATS,
                 {"Inference-Header-Content-Length": "100000"}, 400, "Inference-Header-Content-Length is 100000",
                 id="header-length-beyond-body"),
    pytest.param("half_plus_two", json.dumps(_BIN_X).encode() + _TWO_FLOATS,
                 {"Inference-Header-Content-Length": "0"}, 400, "must be between 1", id="header-length-zero"),
    pytest.param("half_plus_two", json.dumps(_BIN_X).encode() + _TWO_FLOATS,
                 {"Inference-Header-Content-Length": "twelve"}, 400, "must be a byte count", id="header-not-numeric"),
    pytest.param("half_plus_two", json.dumps(_BIN_X).encode() + _TWO_FLOATS,
                 {"Inference-Header-Content-Length": b"\xb9"}, 400, "must be a byte count",
                 id="header-superscript-digit"),
    pytest.param("half_plus_two", json.dumps(_BIN_X).encode() + _TWO_FLOATS,
                 {"Inference-Header-Content-Length": "-5"}, 400, "must be a byte count", id="header-negative"),
    pytest.param("half_plus_two", {"inputs": [{"name": "z", "shape": [1], "datatype": "FP32", "data": [1.0]}]}, {},
                 400, "unknown input 'z'; the model's inputs are 'x'", id="unknown-input"),
    pytest.param("half_plus_two", {"inputs": [_x([1.0])["inputs"][0], _x([2.0])["inputs"][0]]}, {}, 400,
                 "input 'x' appears more than once", id="duplicate-input"),
    pytest.param("multi_io", {"inputs": [{"name": "a", "shape": [1, 2], "datatype": "FP32", "data": [1.0, 2.0]}]},
                 {}, 400, ("missing input ", "'b'", "'text'"), id="missing-inputs"),
    pytest.param("half_plus_two", _DEEP, {}, 400, "JSON Parse error", id="nested-5000-deep"),
    pytest.param("half_plus_two", _DEEP.replace(b"1.0", b"NaN"), {}, 400, "JSON Parse error",
                 id="nested-5000-deep-with-nan"),
    pytest.param("half_plus_two", {**_x([1.0]), "outputs": [{"name": "nope"}]}, {}, 400,
                 "unknown output 'nope' requested; the model's outputs are 'y'", id="unknown-output"),
    pytest.param("half_plus_two", {**_x([1.0]), "outputs": [{"name": "y"}, {"name": "y"}]}, {}, 400,
                 "output 'y' is requested more than once", id="duplicate-output"),
    pytest.param("half_plus_two", {**_x([1.0]), "parameters": {"signature_name": 3}}, {}, 400,
                 "'signature_name' must be a string", id="signature-name-not-string"),
    pytest.param("half_plus_two", {**_x([1.0]), "parameters": {"binary_data_output": "yes"}}, {}, 400,
                 "binary_data_output", id="binary-data-output-not-bool"),
    pytest.param("multi_io", {"inputs": [
        {"name": "a", "shape": [1, 2], "datatype": "FP32", "data": [1.0, 2.0]},
        {"name": "b", "shape": [1], "datatype": "INT64", "data": [2**63]},
        {"name": "text", "shape": [1], "datatype": "BYTES", "data": ["t"]}]}, {}, 400, "out of range for INT64",
        id="int64-overflow"),
    pytest.param("half_plus_two", {"inputs": [{"name": "x", "shape": [1], "datatype": "FP32",
                                               "parameters": {"shared_memory_region": "r"}}]}, {}, 501,
                 "shared memory", id="shared-memory"),
    pytest.param("no_such_model", _x([1.0]), {}, 404, "no_such_model", id="unknown-model"),
    pytest.param("half_plus_two/versions/5", _x([1.0]), {}, 404, "half_plus_two, 5", id="unknown-version"),
]


@pytest.mark.parametrize(("model", "body", "headers", "status", "message"), HOSTILE)
def test_hostile_rest_infer(server: ServerProcess, model: str, body: Any, headers: dict[str, Any] | None,
                            status: int, message: str | tuple[str, ...]) -> None:
    if isinstance(body, tuple):  # a binary body: its header length comes with it
        body, headers = body
    elif isinstance(body, dict):
        body = json.dumps(body).encode()
    r = server.client.post(f"/v2/models/{model}/infer", content=body, headers=headers or {})
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/json")
    error = r.json()["error"]
    for fragment in (message,) if isinstance(message, str) else message:
        assert fragment in error, error
    assert len(error) < 2000
    assert_serving(server)


def test_grpc_raw_contents_of_the_wrong_size(server: ServerProcess) -> None:
    def call(request: triton_pb2.ModelInferRequest) -> grpc.RpcError:
        with grpc.insecure_channel(server.grpc_target) as channel:
            stub = triton_pb2_grpc.GRPCInferenceServiceStub(channel)
            with pytest.raises(grpc.RpcError) as info:
                stub.ModelInfer(request, timeout=30)
            ok = triton_pb2.ModelInferRequest(model_name="half_plus_two")
            ok.inputs.add(name="x", datatype="FP32", shape=[2])
            ok.raw_input_contents.append(_TWO_FLOATS)
            assert tgrpc.InferResult(stub.ModelInfer(ok, timeout=30)).as_numpy("y").tolist() == [2.5, 3.0]
        return info.value

    request = triton_pb2.ModelInferRequest(model_name="half_plus_two")
    request.inputs.add(name="x", datatype="FP32", shape=[3])
    request.raw_input_contents.append(_TWO_FLOATS)
    error = call(request)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "input 'x' has 8 bytes of data, but FP32 shape [3] needs 12" in error.details()

    request.raw_input_contents.append(_TWO_FLOATS)  # two raw entries for one input
    error = call(request)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "2 raw_input_contents for 1 inputs" in error.details()

    bad_bytes = triton_pb2.ModelInferRequest(model_name="multi_io")
    for name, dtype, shape in (("a", "FP32", [1, 2]), ("b", "INT64", [1]), ("text", "BYTES", [1])):
        bad_bytes.inputs.add(name=name, datatype=dtype, shape=shape)
    bad_bytes.raw_input_contents.extend([_TWO_FLOATS, struct.pack("<q", 1),
                                         struct.pack("<I", 3) + b"ab"])
    error = call(bad_bytes)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "input 'text' (BYTES) element 0 has length 3, but only 2 bytes are left" in error.details()


@pytest.mark.parametrize("version", ["\u00b2", "1.0", "-1", "99999999999999999999"])
def test_grpc_bad_version_strings_are_invalid_argument(clients: dict[str, Any], version: str) -> None:
    """V2 versions are strings; one that is not a number is the client's error, not INTERNAL."""
    x = np.array([1.0], np.float32)
    expect_error(lambda: infer(clients, "grpc", "half_plus_two", {"x": (x, "FP32")}, model_version=version),
                 "StatusCode.INVALID_ARGUMENT", "model version must be a non-negative integer")
    expect_error(lambda: clients["grpc"].is_model_ready("half_plus_two", version),
                 "StatusCode.INVALID_ARGUMENT", "model version")


# -- 8. metrics -------------------------------------------------------------------------------


def metric(server: ServerProcess, name: str, **labels: str) -> float:
    text = server.client.get(METRICS_PATH).text
    total = 0.0
    for line in text.splitlines():
        m = re.fullmatch(r"([^{\s]+)(?:\{(.*)\})? (\S+)", line)
        if not m or m.group(1) != name:
            continue
        got = dict(re.findall(r'(\w+)="([^"]*)"', m.group(2) or ""))
        if got == labels:
            total += float(m.group(3))
    return total


def test_v2_requests_are_counted_per_entrypoint(server: ServerProcess, clients: dict[str, Any],
                                                digit_rows: np.ndarray) -> None:
    count = ":tensorflow:serving:request_count"
    latency = ":tensorflow:serving:request_latency_count"
    ok = metric(server, count, model_name="digits", status="OK")
    bad = metric(server, count, model_name="digits", status="INVALID_ARGUMENT")
    rest = metric(server, latency, API="ModelInfer", entrypoint="REST", model_name="digits")
    grpc_ = metric(server, latency, API="ModelInfer", entrypoint="GRPC", model_name="digits")

    infer(clients, "http-binary", "digits", {"pixels": (digit_rows[:2], "FP32")})
    assert metric(server, count, model_name="digits", status="OK") == ok + 1
    assert metric(server, latency, API="ModelInfer", entrypoint="REST", model_name="digits") == rest + 1
    assert metric(server, latency, API="ModelInfer", entrypoint="GRPC", model_name="digits") == grpc_

    infer(clients, "grpc", "digits", {"pixels": (digit_rows[:2], "FP32")})
    assert metric(server, count, model_name="digits", status="OK") == ok + 2
    assert metric(server, latency, API="ModelInfer", entrypoint="GRPC", model_name="digits") == grpc_ + 1
    assert metric(server, latency, API="ModelInfer", entrypoint="REST", model_name="digits") == rest + 1

    v2_post(server, "/v2/models/digits/infer",
            {"inputs": [{"name": "pixels", "shape": [1, 2], "datatype": "FP32", "data": [0.0, 0.0]}]}, 400)
    assert metric(server, count, model_name="digits", status="INVALID_ARGUMENT") == bad + 1
    text = server.client.get(METRICS_PATH).text
    assert re.search(r':tensorflow:serving:request_latency_bucket\{API="ModelInfer",entrypoint="GRPC",'
                     r'le="[^"]+",model_name="digits"\}', text), text


# -- 7. the model repository extension --------------------------------------------------------


@pytest.fixture(scope="module")
def repo_server(model_dir: str, start_server: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    cfg = tmp_path_factory.mktemp("v2repo") / "models.config"
    cfg.write_text(config_text(model_dir, ("half_plus_two", "multi_io")))
    server = start_server([f"--model_config_file={cfg}", "--model_config_file_poll_wait_seconds=1"])
    made = {"http": thttp.InferenceServerClient(server.url.removeprefix("http://"), network_timeout=60),
            "grpc": tgrpc.InferenceServerClient(server.grpc_target)}
    yield server, made, cfg
    for client in made.values():
        client.close()


@pytest.fixture
def repo(repo_server: Any, model_dir: str) -> Iterator[Any]:
    """The repository server; afterwards its config is the original one and multi_io is loaded, so a
    failing test leaves the next one a known state."""
    yield repo_server
    server, clients, cfg = repo_server
    original = config_text(model_dir, ("half_plus_two", "multi_io"))
    if cfg.read_text() != original:
        cfg.write_text(original)
        server.wait_until(lambda: set(index_of(clients["http"], "http")) == {"half_plus_two", "multi_io"}, 15,
                          "the original config")
    clients["http"].load_model("multi_io")


def index_of(client: Any, transport: str) -> dict[str, tuple[str, str]]:
    if transport == "grpc":
        models = client.get_model_repository_index(as_json=True).get("models", [])
    else:
        models = client.get_model_repository_index()
    return {m["name"]: (m.get("state", ""), m.get("reason", "")) for m in models}


def half_plus_two_serves(clients: dict[str, Any]) -> None:
    x = np.array([1.0, 4.0], np.float32)
    for mode in ("http-binary", "grpc"):
        assert infer(clients, mode, "half_plus_two", {"x": (x, "FP32")}).as_numpy("y").tolist() == [2.5, 4.0]


def multi_io_serves(clients: dict[str, Any], tf_models: dict[str, Any], mode: str) -> None:
    inputs = multi_io_inputs([b"back", NOT_UTF8])
    want = reference(tf_models, "multi_io", inputs)
    result = infer(clients, mode, "multi_io", typed(inputs), list(want))
    for name, value in want.items():
        assert_same(result.as_numpy(name), value)


def assert_unloaded(server: ServerProcess, clients: dict[str, Any]) -> None:
    for transport in TRANSPORTS:
        assert not clients[transport].is_model_ready("multi_io")
        assert clients[transport].is_model_ready("half_plus_two")
        assert clients[transport].is_server_ready()  # only configured, loaded models count
        assert index_of(clients[transport], transport)["multi_io"][0] == "UNAVAILABLE"
    ready_only = v2_post(server, "/v2/repository/index", {"ready": True})
    assert [m["name"] for m in ready_only] == ["half_plus_two"]
    r = server.client.post("/v1/models/multi_io:predict", json={"instances": [{"a": [1.0, 2.0], "b": 1, "text": "t"}]})
    assert r.status_code == 404, r.text
    r = server.client.post("/v2/models/multi_io/infer", json={"inputs": []})
    assert r.status_code == 404, r.text
    expect_error(lambda: clients["http"].get_model_metadata("multi_io"), "404", "multi_io")
    half_plus_two_serves(clients)


def assert_loaded(clients: dict[str, Any], tf_models: dict[str, Any]) -> None:
    for transport in TRANSPORTS:
        assert clients[transport].is_model_ready("multi_io")
        assert index_of(clients[transport], transport) == {"half_plus_two": ("READY", ""),
                                                           "multi_io": ("READY", "")}


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_repository_index_lists_the_config(repo: Any, transport: str) -> None:
    server, clients, _ = repo
    assert index_of(clients[transport], transport) == {"half_plus_two": ("READY", ""), "multi_io": ("READY", "")}
    ready = v2_post(server, "/v2/repository/index", {"ready": True})
    assert sorted(ready, key=lambda m: m["name"]) == [{"name": "half_plus_two", "state": "READY", "reason": ""},
                                                      {"name": "multi_io", "state": "READY", "reason": ""}]
    r = server.client.post("/v2/repository/index", content=b'{"ready": "yes"}')
    assert r.status_code == 400 and "ready" in r.json()["error"]


def test_unload_survives_config_polls_and_load_brings_it_back_http(repo: Any, tf_models: dict[str, Any],
                                                                   model_dir: str) -> None:
    server, clients, cfg = repo
    http = clients["http"]
    http.unload_model("multi_io")
    assert_unloaded(server, clients)
    assert index_of(http, "http")["multi_io"] == ("UNAVAILABLE", "unloaded")
    http.unload_model("multi_io")  # unloading an unloaded model is fine

    # Make the next polls apply a (reordered) config, then let at least two polls pass.
    applied = server.log().count("model config applied")
    cfg.write_text(config_text(model_dir, ("multi_io", "half_plus_two")))
    deadline = time.monotonic() + 2.5
    while time.monotonic() < deadline or server.log().count("model config applied") == applied:
        assert time.monotonic() < deadline + 10, "the rewritten config was never applied"
        half_plus_two_serves(clients)  # serving throughout
        time.sleep(0.1)
    assert server.log().count("model config applied") == applied + 1
    assert_unloaded(server, clients)

    http.load_model("multi_io")
    multi_io_serves(clients, tf_models, "http-binary")  # right after load answers
    assert_loaded(clients, tf_models)
    http.load_model("multi_io")  # loading a loaded model answers at once
    multi_io_serves(clients, tf_models, "grpc")

    expect_error(lambda: http.load_model("no_such_model"), "404", "no_such_model")
    expect_error(lambda: http.unload_model("no_such_model"), "404", "no_such_model")
    assert_loaded(clients, tf_models)


def test_unload_and_load_over_grpc(repo: Any, tf_models: dict[str, Any]) -> None:
    server, clients, _ = repo
    g = clients["grpc"]
    stop = threading.Event()
    failures: list[str] = []

    def keep_inferring() -> None:  # half_plus_two keeps serving while multi_io goes and comes back
        with httpx.Client(base_url=server.url, timeout=10) as client:
            while not stop.is_set():
                r = client.post("/v2/models/half_plus_two/infer", json=_x([2.0]))
                if r.status_code != 200 or r.json()["outputs"][0]["data"] != [3.0]:
                    failures.append(r.text)

    thread = threading.Thread(target=keep_inferring, daemon=True)
    thread.start()
    try:
        g.unload_model("multi_io")
        assert_unloaded(server, clients)
        expect_error(lambda: multi_io_serves(clients, tf_models, "grpc"), "StatusCode.NOT_FOUND", "multi_io")
        g.load_model("multi_io")
        multi_io_serves(clients, tf_models, "grpc")
        assert_loaded(clients, tf_models)
        expect_error(lambda: g.load_model("no_such_model"), "StatusCode.NOT_FOUND", "no_such_model")
        expect_error(lambda: g.unload_model("no_such_model"), "StatusCode.NOT_FOUND", "no_such_model")
    finally:
        stop.set()
        thread.join(timeout=15)
    assert not failures, failures[:3]


def test_rapid_unload_load_cycles_across_transports(repo: Any, tf_models: dict[str, Any]) -> None:
    server, clients, _ = repo
    for unloader, loader in (("http", "grpc"), ("grpc", "http"), ("http", "http")):
        clients[unloader].unload_model("multi_io")
        assert not clients[loader].is_model_ready("multi_io")
        clients[loader].load_model("multi_io")
        multi_io_serves(clients, tf_models, "grpc" if loader == "grpc" else "http-binary")
    assert_loaded(clients, tf_models)


def test_an_unloaded_model_that_leaves_and_rejoins_the_config_loads_again(repo: Any, tf_models: dict[str, Any],
                                                                           model_dir: str) -> None:
    server, clients, cfg = repo
    http = clients["http"]
    http.unload_model("multi_io")
    assert_unloaded(server, clients)
    cfg.write_text(config_text(model_dir, ("half_plus_two",)))
    server.wait_until(lambda: "multi_io" not in index_of(http, "http"), 15, "multi_io to leave the config")
    expect_error(lambda: http.load_model("multi_io"), "404", "multi_io")  # no longer in the config
    cfg.write_text(config_text(model_dir, ("half_plus_two", "multi_io")))
    server.wait_until(lambda: http.is_model_ready("multi_io"), 20, "multi_io to load with the config")
    multi_io_serves(clients, tf_models, "http-binary")
    assert_loaded(clients, tf_models)


def test_server_not_ready_while_a_configured_model_has_no_version(repo: Any, model_dir: str,
                                                                   tmp_path_factory: pytest.TempPathFactory) -> None:
    server, clients, cfg = repo
    ghost = tmp_path_factory.mktemp("ghost")  # a base path with no version in it
    cfg.write_text(config_text(model_dir, ("half_plus_two", "multi_io")).replace(
        "\n}\n", f'\n  config {{ name: "ghost" base_path: "{ghost}" model_platform: "tensorflow" }}\n}}\n'))
    server.wait_until(lambda: "ghost" in index_of(clients["http"], "http"), 15, "ghost in the index")
    for transport in TRANSPORTS:
        assert not clients[transport].is_server_ready()
        assert not clients[transport].is_model_ready("ghost")
        assert index_of(clients[transport], transport)["ghost"][0] != "READY"
        assert clients[transport].is_server_live()
    assert server.client.get("/v2/health/ready").status_code == 400
    assert sorted(m["name"] for m in v2_post(server, "/v2/repository/index", {"ready": True})) == [
        "half_plus_two", "multi_io"]
    half_plus_two_serves(clients)
    cfg.write_text(config_text(model_dir, ("half_plus_two", "multi_io")))
    server.wait_until(lambda: clients["grpc"].is_server_ready(), 15, "ready without ghost")
    assert server.client.get("/v2/health/ready").status_code == 200


def test_readiness_that_is_not_strict_ignores_a_model_without_a_version(
        model_dir: str, start_server: Any, tmp_path_factory: pytest.TempPathFactory) -> None:
    """--strict_readiness=false (Triton's flag): a server that answers is ready, whatever its models
    (a broken model added to a shared config must not take every replica out of a Service); the
    model itself still says it is not ready. (And --enable_console=false leaves no console.)"""
    cfg = tmp_path_factory.mktemp("lenient") / "models.config"
    ghost = tmp_path_factory.mktemp("ghost")
    cfg.write_text(config_text(model_dir, ("half_plus_two",)).replace(
        "\n}\n", f'\n  config {{ name: "ghost" base_path: "{ghost}" model_platform: "tensorflow" }}\n}}\n'))
    server = start_server([f"--model_config_file={cfg}", "--strict_readiness=false", "--enable_console=false"])
    assert server.client.get("/readyz").json() == {"status": "ready"}
    for path in ("/ui/", "/ui/api/models", "/ui/console/console.js"):  # the console is off
        assert server.client.get(path).status_code == 404, path
    assert server.client.get("/v2/health/ready").status_code == 200
    assert server.client.get("/v2/models/ghost/ready").status_code == 400
    assert server.client.get("/v2/models/half_plus_two/ready").status_code == 200
    server.stop()


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_load_with_config_override_is_refused(repo: Any, transport: str) -> None:
    """tritonclient can send a config override or model files with a load; models come from the model
    config here, so such a load is refused rather than silently ignored, and nothing changes."""
    server, clients, _ = repo
    expect_error(lambda: clients[transport].load_model("multi_io", config='{"backend": "tensorflow"}'),
                 status_of(transport, 501, "UNIMPLEMENTED"), "model config")
    assert clients[transport].is_model_ready("multi_io")
