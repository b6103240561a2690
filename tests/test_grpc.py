"""TF Serving's gRPC API against a real server, through the real stubs of tensorflow-serving-api.

Every answer is checked against TensorFlow computing the same inputs on the same SavedModel.

Servers (each costs seconds, both start at once): `server` serves half_plus_two (label "stable"),
multi_io, digits and slow from a models.config, with Prometheus metrics and a Unix socket beside
the TCP port; `mgmt` starts with half_plus_two only, --enable_signature_method_name_check and
--max_num_load_retries=0 and a 64 KiB message limit from --grpc_channel_arguments, and takes
HandleReloadConfigRequest (its tests restore its config).
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
import tensorflow as tf
from conftest import ServerProcess
from google.protobuf import any_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from tensorflow.core.example import example_pb2
from tensorflow.core.framework import tensor_pb2, tensor_shape_pb2, types_pb2
from tensorflow.core.protobuf import saved_model_pb2
from tensorflow_serving.apis import (
    classification_pb2,
    get_model_metadata_pb2,
    get_model_status_pb2,
    inference_pb2,
    model_management_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
    regression_pb2,
)
from tensorflow_serving.config import model_server_config_pb2

CLASSIFY = "tensorflow/serving/classify"
REGRESS = "tensorflow/serving/regress"
PREDICT = "tensorflow/serving/predict"
TIMEOUT = 30  # seconds, for every RPC that should answer promptly
AVAILABLE = get_model_status_pb2.ModelVersionStatus.AVAILABLE
END = get_model_status_pb2.ModelVersionStatus.END


def config_text(model_dir: str, names: list[str], labels: dict[str, dict[str, int]] | None = None) -> str:
    parts = []
    for name in names:
        body = f'name: "{name}" base_path: "{os.path.join(model_dir, name)}" model_platform: "tensorflow"'
        for label, version in (labels or {}).get(name, {}).items():
            body += f' version_labels {{ key: "{label}" value: {version} }}'
        parts.append(f"config {{ {body} }}")
    return "model_config_list { " + " ".join(parts) + " }"


@pytest.fixture(scope="module")
def servers(model_dir: str, start_server: Any, tmp_path_factory: pytest.TempPathFactory
            ) -> dict[str, ServerProcess]:
    """Both servers, started together so their start-ups overlap; each fixture below waits for its own."""
    cfg = tmp_path_factory.mktemp("grpc")
    (cfg / "models.config").write_text(config_text(
        model_dir, ["half_plus_two", "multi_io", "digits", "slow"], {"half_plus_two": {"stable": 1}}))
    (cfg / "monitoring.config").write_text('prometheus_config { enable: true path: "/monitoring/prometheus/metrics" }')
    (cfg / "mgmt.config").write_text(config_text(model_dir, ["half_plus_two"]))
    main = start_server([f"--model_config_file={cfg / 'models.config'}",
                         f"--monitoring_config_file={cfg / 'monitoring.config'}",
                         f"--grpc_socket_path={cfg / 'tfprod.sock'}"], wait=False)
    main.socket_path = str(cfg / "tfprod.sock")  # type: ignore[attr-defined]
    mgmt = start_server([f"--model_config_file={cfg / 'mgmt.config'}", "--enable_signature_method_name_check",
                         "--max_num_load_retries=0", "--file_system_poll_wait_seconds=1",
                         "--grpc_channel_arguments=grpc.max_receive_message_length=65536"], wait=False)
    return {"main": main, "mgmt": mgmt}


@pytest.fixture(scope="module")
def server(servers: dict[str, ServerProcess]) -> ServerProcess:
    servers["main"].wait_ready()
    return servers["main"]


@pytest.fixture(scope="module")
def mgmt(servers: dict[str, ServerProcess]) -> ServerProcess:
    servers["mgmt"].wait_ready()
    return servers["mgmt"]


@pytest.fixture(scope="module")
def channel(server: ServerProcess) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(server.grpc_target) as ch:
        grpc.channel_ready_future(ch).result(timeout=TIMEOUT)
        yield ch


@pytest.fixture(scope="module")
def mgmt_channel(mgmt: ServerProcess) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(mgmt.grpc_target) as ch:
        grpc.channel_ready_future(ch).result(timeout=TIMEOUT)
        yield ch


@pytest.fixture(scope="module")
def stub(channel: grpc.Channel) -> prediction_service_pb2_grpc.PredictionServiceStub:
    return prediction_service_pb2_grpc.PredictionServiceStub(channel)


@pytest.fixture(scope="module")
def model_stub(channel: grpc.Channel) -> model_service_pb2_grpc.ModelServiceStub:
    return model_service_pb2_grpc.ModelServiceStub(channel)


@pytest.fixture(scope="module")
def tf_models(model_dir: str) -> dict[str, Any]:
    """The same SavedModels loaded in this process: the reference answers."""
    return {name: tf.saved_model.load(os.path.join(model_dir, name, "1"))
            for name in ("half_plus_two", "multi_io", "digits")}


# -- helpers -----------------------------------------------------------------------------


def reference(tf_models: dict[str, Any], model: str, signature: str = "serving_default",
              **inputs: Any) -> dict[str, np.ndarray]:
    outputs = tf_models[model].signatures[signature](**{k: tf.constant(v) for k, v in inputs.items()})
    return {k: v.numpy() for k, v in outputs.items()}


def predict_request(model: str, inputs: dict[str, Any], *, version: int | None = None, label: str | None = None,
                    signature: str = "", output_filter: tuple[str, ...] = ()) -> predict_pb2.PredictRequest:
    request = predict_pb2.PredictRequest()
    request.model_spec.name = model
    if version is not None:
        request.model_spec.version.value = version
    if label is not None:
        request.model_spec.version_label = label
    request.model_spec.signature_name = signature
    for name, value in inputs.items():
        proto = value if isinstance(value, tensor_pb2.TensorProto) else tf.make_tensor_proto(value)
        request.inputs[name].CopyFrom(proto)
    request.output_filter.extend(output_filter)
    return request


def outputs_of(response: Any) -> dict[str, np.ndarray]:
    return {k: tf.make_ndarray(v) for k, v in response.outputs.items()}


XS = np.array([1.0, 2.0, 5.0, -3.25], np.float32)


def half_plus_two_answers(stub: prediction_service_pb2_grpc.PredictionServiceStub, tf_models: dict[str, Any]) -> None:
    """A normal Predict: what every error test sends afterwards to show the server still serves."""
    got = outputs_of(stub.Predict(predict_request("half_plus_two", {"x": XS}), timeout=TIMEOUT))
    assert got["y"].tolist() == reference(tf_models, "half_plus_two", x=XS)["y"].tolist()


def examples(*features: dict[str, float]) -> list[example_pb2.Example]:
    out = []
    for feats in features:
        ex = example_pb2.Example()
        for name, value in feats.items():
            ex.features.feature[name].float_list.value.append(value)
        out.append(ex)
    return out


def serialized(exs: list[example_pb2.Example]) -> np.ndarray:
    return np.array([e.SerializeToString() for e in exs], dtype=object)


def rpc_error(call: Any, request: Any, code: grpc.StatusCode, **kw: Any) -> str:
    with pytest.raises(grpc.RpcError) as info:
        call(request, timeout=kw.pop("timeout", TIMEOUT), **kw)
    err = info.value
    assert err.code() == code, err.details()
    return str(err.details())


def signature_defs_on_disk(model_dir: str, model: str) -> Any:
    saved = saved_model_pb2.SavedModel()
    with open(os.path.join(model_dir, model, "1", "saved_model.pb"), "rb") as f:
        saved.ParseFromString(f.read())
    return saved.meta_graphs[0].signature_def


# -- 1. Predict ----------------------------------------------------------------------------


def test_predict_half_plus_two_matches_tensorflow_and_echoes_spec(stub: Any, tf_models: dict[str, Any]) -> None:
    response = stub.Predict(predict_request("half_plus_two", {"x": XS}), timeout=TIMEOUT)
    want = reference(tf_models, "half_plus_two", x=XS)
    got = outputs_of(response)
    assert set(got) == set(want) == {"y"}
    assert got["y"].dtype == np.float32 and got["y"].shape == want["y"].shape
    assert got["y"].tolist() == want["y"].tolist()
    # written as TF Serving writes answers (AsProtoField): clients reading float_val directly get the values
    assert not response.outputs["y"].tensor_content
    assert list(response.outputs["y"].float_val) == want["y"].ravel().tolist()
    spec = response.model_spec
    assert (spec.name, spec.WhichOneof("version_choice"), spec.version.value, spec.signature_name) == (
        "half_plus_two", "version", 1, "serving_default")
    by_version = stub.Predict(predict_request("half_plus_two", {"x": XS}, version=1, signature="serving_default"),
                              timeout=TIMEOUT)
    assert outputs_of(by_version)["y"].tolist() == want["y"].tolist()
    assert by_version.model_spec.version.value == 1


def test_predict_with_version_label_echoes_the_version_number(stub: Any, tf_models: dict[str, Any]) -> None:
    response = stub.Predict(predict_request("half_plus_two", {"x": XS}, label="stable"), timeout=TIMEOUT)
    assert outputs_of(response)["y"].tolist() == reference(tf_models, "half_plus_two", x=XS)["y"].tolist()
    spec = response.model_spec
    assert spec.WhichOneof("version_choice") == "version"
    assert (spec.name, spec.version.value, spec.version_label, spec.signature_name) == (
        "half_plus_two", 1, "", "serving_default")


MULTI_A = np.array([[1.5, 2.0], [0.25, -1.0]], np.float32)
MULTI_B = np.array([2**40 + 1, -7], np.int64)
MULTI_TEXT = np.array([b"hello", b"\x00\xffbin"], dtype=object)


def test_predict_multi_io_named_inputs_string_and_int64(stub: Any, tf_models: dict[str, Any]) -> None:
    request = predict_request("multi_io", {"a": MULTI_A, "b": MULTI_B, "text": MULTI_TEXT})
    assert request.inputs["b"].dtype == types_pb2.DT_INT64 and request.inputs["text"].dtype == types_pb2.DT_STRING
    got = outputs_of(stub.Predict(request, timeout=TIMEOUT))
    want = reference(tf_models, "multi_io", a=MULTI_A, b=MULTI_B, text=MULTI_TEXT)
    assert set(got) == set(want) == {"total", "doubled", "length", "upper", "echo_bytes"}
    for name in want:
        assert got[name].dtype == want[name].dtype, name
        assert got[name].tolist() == want[name].tolist(), name
    assert got["doubled"].tolist() == [2**41 + 2, -14]  # int64 beyond 2**53 kept exact
    assert got["echo_bytes"].tolist() == MULTI_TEXT.tolist()  # raw bytes untouched
    m = np.array([[1, 2, 3]], np.float64)
    scaled = stub.Predict(predict_request("multi_io", {"m": m}, signature="scale"), timeout=TIMEOUT)
    assert outputs_of(scaled)["scaled"].tolist() == reference(tf_models, "multi_io", "scale", m=m)["scaled"].tolist()
    assert scaled.model_spec.signature_name == "scale"


def test_predict_output_filter_returns_only_the_requested_outputs(stub: Any, tf_models: dict[str, Any]) -> None:
    request = predict_request("multi_io", {"a": MULTI_A, "b": MULTI_B, "text": MULTI_TEXT},
                              output_filter=("upper", "doubled"))
    got = outputs_of(stub.Predict(request, timeout=TIMEOUT))
    want = reference(tf_models, "multi_io", a=MULTI_A, b=MULTI_B, text=MULTI_TEXT)
    assert set(got) == {"upper", "doubled"}
    assert got["upper"].tolist() == want["upper"].tolist()
    assert got["doubled"].tolist() == want["doubled"].tolist()


@pytest.fixture(scope="module")
def digits_rows() -> np.ndarray:
    from sklearn.datasets import load_digits

    return (load_digits().data[:32] / 16.0).astype(np.float32)


def test_predict_digits_probabilities_match_tensorflow(stub: Any, tf_models: dict[str, Any],
                                                       digits_rows: np.ndarray) -> None:
    got = outputs_of(stub.Predict(predict_request("digits", {"pixels": digits_rows}), timeout=TIMEOUT))
    want = reference(tf_models, "digits", pixels=digits_rows)
    assert set(got) == set(want)
    (name,) = want
    assert got[name].shape == (32, 10) and got[name].dtype == np.float32
    np.testing.assert_allclose(got[name], want[name], rtol=1e-5, atol=1e-7)
    assert (got[name].argmax(1) == want[name].argmax(1)).all()


# -- 2. REST and gRPC agree ------------------------------------------------------------------


def test_rest_and_grpc_give_identical_numbers(server: ServerProcess, stub: Any, digits_rows: np.ndarray) -> None:
    r = server.client.post("/v1/models/digits:predict", json={"inputs": {"pixels": digits_rows.tolist()}})
    assert r.status_code == 200, r.text
    rest = np.array(r.json()["outputs"], np.float32)
    grpc_out = outputs_of(stub.Predict(predict_request("digits", {"pixels": digits_rows}), timeout=TIMEOUT))
    (grpc_digits,) = grpc_out.values()
    assert rest.shape == grpc_digits.shape
    assert rest.tobytes() == grpc_digits.tobytes()  # float32 bit for bit

    r = server.client.post("/v1/models/half_plus_two:predict", json={"instances": XS.tolist()})
    assert r.status_code == 200, r.text
    grpc_y = outputs_of(stub.Predict(predict_request("half_plus_two", {"x": XS}), timeout=TIMEOUT))["y"]
    assert np.array(r.json()["predictions"], np.float32).tobytes() == grpc_y.tobytes()

    r = server.client.post("/v1/models/multi_io:predict", json={"inputs": {
        "a": MULTI_A.tolist(), "b": MULTI_B.tolist(), "text": ["hello", "x"]}})
    assert r.status_code == 200, r.text
    multi = outputs_of(stub.Predict(predict_request("multi_io", {
        "a": MULTI_A, "b": MULTI_B, "text": np.array([b"hello", b"x"], dtype=object)}), timeout=TIMEOUT))
    rest_multi = r.json()["outputs"]
    assert np.array(rest_multi["total"], np.float32).tobytes() == multi["total"].tobytes()
    assert rest_multi["doubled"] == multi["doubled"].tolist()
    assert rest_multi["length"] == multi["length"].tolist()


# -- 3. Classify, Regress, MultiInference ------------------------------------------------------


def test_classify_example_list(stub: Any, tf_models: dict[str, Any]) -> None:
    exs = examples({"x": 1.0}, {"x": 3.5}, {"x": -8.0})
    request = classification_pb2.ClassificationRequest()
    request.model_spec.name = "half_plus_two"
    request.model_spec.signature_name = "classify_x_to_y"
    request.input.example_list.examples.extend(exs)
    response = stub.Classify(request, timeout=TIMEOUT)
    want = reference(tf_models, "half_plus_two", "classify_x_to_y", inputs=serialized(exs))["scores"]
    assert want.shape == (3, 1)
    got = [[(c.label, c.score) for c in cl.classes] for cl in response.result.classifications]
    assert got == [[("", float(row[0]))] for row in want]
    assert (response.model_spec.name, response.model_spec.version.value, response.model_spec.signature_name) == (
        "half_plus_two", 1, "classify_x_to_y")


def test_regress_example_list_and_list_with_context(stub: Any, tf_models: dict[str, Any]) -> None:
    exs = examples({"x": 1.0}, {"x": -2.0})
    request = regression_pb2.RegressionRequest()
    request.model_spec.name = "half_plus_two"
    request.model_spec.signature_name = "regress_x_to_y"
    request.input.example_list.examples.extend(exs)
    response = stub.Regress(request, timeout=TIMEOUT)
    want = reference(tf_models, "half_plus_two", "regress_x_to_y", inputs=serialized(exs))["outputs"]
    assert [r.value for r in response.result.regressions] == [float(v) for v in want.reshape(-1)]
    assert (response.model_spec.version.value, response.model_spec.signature_name) == (1, "regress_x_to_y")

    # with a context: its features reach every example; where both set one, the example's wins
    (context,) = examples({"x": 10.0, "x2": 4.0})
    request = regression_pb2.RegressionRequest()
    request.model_spec.name = "half_plus_two"
    request.model_spec.signature_name = "regress_x_to_y"
    request.input.example_list_with_context.context.CopyFrom(context)
    request.input.example_list_with_context.examples.extend(examples({"x": 1.0}, {}))
    merged = examples({"x": 1.0, "x2": 4.0}, {"x": 10.0, "x2": 4.0})
    want = reference(tf_models, "half_plus_two", "regress_x_to_y", inputs=serialized(merged))["outputs"]
    got = [r.value for r in stub.Regress(request, timeout=TIMEOUT).result.regressions]
    assert got == [float(v) for v in want.reshape(-1)]
    request.model_spec.signature_name = "regress_x2_to_y"  # a feature only the context has
    want = reference(tf_models, "half_plus_two", "regress_x2_to_y", inputs=serialized(merged))["outputs"]
    got = [r.value for r in stub.Regress(request, timeout=TIMEOUT).result.regressions]
    assert got == [float(v) for v in want.reshape(-1)]

    classify = classification_pb2.ClassificationRequest()
    classify.model_spec.name = "half_plus_two"
    classify.model_spec.signature_name = "classify_x_to_y"
    classify.input.CopyFrom(request.input)
    want = reference(tf_models, "half_plus_two", "classify_x_to_y", inputs=serialized(merged))["scores"]
    got = [[c.score for c in cl.classes] for cl in stub.Classify(classify, timeout=TIMEOUT).result.classifications]
    assert got == want.tolist()


def multi_inference_request(tasks: list[tuple[str, str, str]], exs: list[example_pb2.Example]
                            ) -> inference_pb2.MultiInferenceRequest:
    request = inference_pb2.MultiInferenceRequest()
    for model, signature, method in tasks:
        task = request.tasks.add(method_name=method)
        task.model_spec.name = model
        task.model_spec.signature_name = signature
    request.input.example_list.examples.extend(exs)
    return request


def test_multi_inference_classify_and_regress(stub: Any, tf_models: dict[str, Any]) -> None:
    exs = examples({"x": 1.0}, {"x": 7.0})
    request = multi_inference_request([("half_plus_two", "classify_x_to_y", CLASSIFY),
                                       ("half_plus_two", "regress_x_to_y", REGRESS)], exs)
    response = stub.MultiInference(request, timeout=TIMEOUT)
    assert len(response.results) == 2
    classified, regressed = response.results
    assert classified.WhichOneof("result") == "classification_result"
    assert regressed.WhichOneof("result") == "regression_result"
    scores = reference(tf_models, "half_plus_two", "classify_x_to_y", inputs=serialized(exs))["scores"]
    outputs = reference(tf_models, "half_plus_two", "regress_x_to_y", inputs=serialized(exs))["outputs"]
    assert [[(c.label, c.score) for c in cl.classes] for cl in classified.classification_result.classifications] == [
        [("", float(row[0]))] for row in scores]
    assert [r.value for r in regressed.regression_result.regressions] == [float(v) for v in outputs.reshape(-1)]
    for result, signature in zip(response.results, ("classify_x_to_y", "regress_x_to_y"), strict=True):
        assert (result.model_spec.name, result.model_spec.version.value, result.model_spec.signature_name) == (
            "half_plus_two", 1, signature)


@pytest.mark.parametrize(("tasks", "code", "message"), [
    pytest.param([("half_plus_two", "classify_x_to_y", CLASSIFY), ("multi_io", "regress_x_to_y", REGRESS)],
                 grpc.StatusCode.INVALID_ARGUMENT,
                 "All ModelSpecs in a MultiInferenceRequest must access the same model name.", id="two-models"),
    pytest.param([("half_plus_two", "regress_x_to_y", REGRESS), ("half_plus_two", "regress_x_to_y", REGRESS)],
                 grpc.StatusCode.INVALID_ARGUMENT, "Duplicate evaluation of signature: regress_x_to_y",
                 id="duplicate-signature"),
    pytest.param([("half_plus_two", "serving_default", PREDICT)],
                 grpc.StatusCode.UNIMPLEMENTED, f"Unsupported signature method_name: {PREDICT}",
                 id="predict-method"),
])
def test_multi_inference_errors(stub: Any, tf_models: dict[str, Any], tasks: list[tuple[str, str, str]],
                                code: grpc.StatusCode, message: str) -> None:
    details = rpc_error(stub.MultiInference, multi_inference_request(tasks, examples({"x": 1.0})), code)
    assert details == message
    half_plus_two_answers(stub, tf_models)


# -- 4. GetModelMetadata -------------------------------------------------------------------


def metadata_request(model: str, fields: list[str]) -> get_model_metadata_pb2.GetModelMetadataRequest:
    request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=fields)
    request.model_spec.name = model
    return request


@pytest.mark.parametrize("model", ["multi_io", "half_plus_two"])
def test_metadata_is_the_saved_models_signature_defs(stub: Any, model_dir: str, model: str) -> None:
    response = stub.GetModelMetadata(metadata_request(model, ["signature_def"]), timeout=TIMEOUT)
    assert (response.model_spec.name, response.model_spec.version.value) == (model, 1)
    assert set(response.metadata) == {"signature_def"}
    packed: any_pb2.Any = response.metadata["signature_def"]
    assert packed.TypeName() == "tensorflow.serving.SignatureDefMap"
    sig_map = get_model_metadata_pb2.SignatureDefMap()
    assert packed.Unpack(sig_map)
    on_disk = signature_defs_on_disk(model_dir, model)
    assert set(sig_map.signature_def) == set(on_disk)
    for name, sig in on_disk.items():
        assert sig_map.signature_def[name] == sig, name


def test_metadata_field_errors(stub: Any, tf_models: dict[str, Any]) -> None:
    details = rpc_error(stub.GetModelMetadata, metadata_request("half_plus_two", []),
                        grpc.StatusCode.INVALID_ARGUMENT)
    assert details == "GetModelMetadataRequest must specify at least one metadata_field"
    details = rpc_error(stub.GetModelMetadata, metadata_request("half_plus_two", ["signature_def", "graph"]),
                        grpc.StatusCode.INVALID_ARGUMENT)
    assert details == "Metadata field graph is not supported"
    half_plus_two_answers(stub, tf_models)


# -- 5. GetModelStatus ---------------------------------------------------------------------


def status_request(model: str, version: int | None = None, label: str | None = None
                   ) -> get_model_status_pb2.GetModelStatusRequest:
    request = get_model_status_pb2.GetModelStatusRequest()
    request.model_spec.name = model
    if version is not None:
        request.model_spec.version.value = version
    if label is not None:
        request.model_spec.version_label = label
    return request


def test_get_model_status(model_stub: Any) -> None:
    for request in (status_request("half_plus_two"), status_request("half_plus_two", 1),
                    status_request("half_plus_two", label="stable")):
        response = model_stub.GetModelStatus(request, timeout=TIMEOUT)
        assert [(s.version, s.state, s.status.error_code, s.status.error_message)
                for s in response.model_version_status] == [(1, AVAILABLE, 0, "")]
    details = rpc_error(model_stub.GetModelStatus, status_request("half_plus_two", 7), grpc.StatusCode.NOT_FOUND)
    assert details == "Could not find version 7 of model half_plus_two"
    details = rpc_error(model_stub.GetModelStatus, status_request("nope"), grpc.StatusCode.NOT_FOUND)
    assert details == "Could not find any versions of model nope"


# -- 6. Errors -----------------------------------------------------------------------------


def _tensor(dtype: int, dims: list[int], content: bytes) -> tensor_pb2.TensorProto:
    return tensor_pb2.TensorProto(dtype=dtype, tensor_content=content, tensor_shape=tensor_shape_pb2.TensorShapeProto(
        dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=d) for d in dims]))


LONG_SIGNATURE = "s" * 2048

PREDICT_ERRORS = [
    pytest.param(predict_request("nope", {"x": XS}), grpc.StatusCode.NOT_FOUND,
                 "Servable not found for request: Latest(nope)", id="unknown-model"),
    pytest.param(predict_request("half_plus_two", {"x": XS}, version=9), grpc.StatusCode.NOT_FOUND,
                 "Servable not found for request: Specific(half_plus_two, 9)", id="unknown-version"),
    pytest.param(predict_request("half_plus_two", {"x": XS}, label="canary"), grpc.StatusCode.INVALID_ARGUMENT,
                 "Unrecognized servable version label: canary", id="unknown-label"),
    pytest.param(predict_pb2.PredictRequest(inputs={"x": tf.make_tensor_proto(XS)}),
                 grpc.StatusCode.INVALID_ARGUMENT, "Missing ModelSpec", id="no-model-spec"),
    pytest.param(predict_request("half_plus_two", {"x": XS}, signature="nope"), grpc.StatusCode.INVALID_ARGUMENT,
                 'Serving signature name: "nope" not found in signature def', id="unknown-signature"),
    pytest.param(predict_request("half_plus_two", {"x": np.array([1, 2], np.int64)}),
                 grpc.StatusCode.INVALID_ARGUMENT, "input 'x' is DT_INT64 but the signature expects DT_FLOAT",
                 id="wrong-dtype"),
    pytest.param(predict_request("half_plus_two", {"z": XS}), grpc.StatusCode.INVALID_ARGUMENT,
                 "input tensor alias not found in signature: z", id="wrong-alias"),
    pytest.param(predict_request("multi_io", {"a": MULTI_A, "b": MULTI_B}), grpc.StatusCode.INVALID_ARGUMENT,
                 "input size does not match signature: 2!=3", id="missing-input"),
    pytest.param(predict_request("half_plus_two", {"x": XS}, output_filter=("y", "y")),
                 grpc.StatusCode.INVALID_ARGUMENT, "duplicate output tensor alias: y", id="duplicate-filter"),
    pytest.param(predict_request("half_plus_two", {"x": XS}, output_filter=("z",)),
                 grpc.StatusCode.INVALID_ARGUMENT, "output tensor alias not found in signature: z",
                 id="unknown-filter"),
    pytest.param(predict_request("half_plus_two", {"x": _tensor(types_pb2.DT_FLOAT, [3], b"\0" * 8)}),
                 grpc.StatusCode.INVALID_ARGUMENT, "input 'x': tensor_content holds 8 bytes", id="short-content"),
    pytest.param(predict_request("half_plus_two", {"x": _tensor(types_pb2.DT_FLOAT, [2], b"\0" * 12)}),
                 grpc.StatusCode.INVALID_ARGUMENT, "input 'x': tensor_content holds 12 bytes", id="long-content"),
    pytest.param(predict_request("digits", {"pixels": np.zeros((1, 63), np.float32)}),
                 grpc.StatusCode.INVALID_ARGUMENT, "Matrix size-incompatible: In[0]: [1,63], In[1]: [64,32]",
                 id="wrong-width-tf-says"),
]


@pytest.mark.parametrize(("request_", "code", "message"), PREDICT_ERRORS)
def test_predict_errors(stub: Any, tf_models: dict[str, Any], request_: predict_pb2.PredictRequest,
                        code: grpc.StatusCode, message: str) -> None:
    details = rpc_error(stub.Predict, request_, code)
    assert details.startswith(message), details
    half_plus_two_answers(stub, tf_models)


def test_long_error_details_are_truncated_to_1024_bytes(stub: Any, tf_models: dict[str, Any]) -> None:
    details = rpc_error(stub.Predict, predict_request("half_plus_two", {"x": XS}, signature=LONG_SIGNATURE),
                        grpc.StatusCode.INVALID_ARGUMENT)
    full = f'Serving signature name: "{LONG_SIGNATURE}" not found in signature def'
    assert details == full.encode()[:1024].decode() + "...TRUNCATED"
    assert len(details.encode()) == 1024 + len("...TRUNCATED")
    half_plus_two_answers(stub, tf_models)


def scrape(server: ServerProcess) -> str:
    r = server.client.get("/monitoring/prometheus/metrics")
    assert r.status_code == 200, r.text
    return r.text


def metric(text: str, series: str) -> float:
    values = [float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(series + " ")]
    return values[0] if values else 0.0


def test_deadline_passing_while_the_model_runs(stub: Any, tf_models: dict[str, Any]) -> None:
    started = time.monotonic()
    rpc_error(stub.Predict, predict_request("slow", {"x": np.array([3.0], np.float32)}),
              grpc.StatusCode.DEADLINE_EXCEEDED, timeout=1.0)
    assert time.monotonic() - started < 2.5  # the deadline, not the model's 3 s
    half_plus_two_answers(stub, tf_models)  # served while the slow model still busy-waits
    assert time.monotonic() - started < 2.8
    fast = stub.Predict(predict_request("slow", {"x": np.array([0.0], np.float32)}), timeout=TIMEOUT)
    assert outputs_of(fast)["y"].tolist() == [0.0]


def test_timed_out_calls_are_counted_deadline_exceeded(server: ServerProcess, stub: Any) -> None:
    """TF Serving counts a call whose deadline passed as DEADLINE_EXCEEDED, never OK (and records
    latency for OK calls only). Several calls: which of gRPC's cancellation and the server's own
    timer fires first varies from call to call."""
    count = ':tensorflow:serving:request_count{{model_name="slow",status="{}"}}'
    latency = ':tensorflow:serving:request_latency_count{API="Predict",entrypoint="GRPC",model_name="slow"}'
    statuses = ("OK", "DEADLINE_EXCEEDED", "CANCELLED", "UNKNOWN", "INTERNAL")
    calls = 8
    before = scrape(server)
    for _ in range(calls):
        rpc_error(stub.Predict, predict_request("slow", {"x": np.array([0.5], np.float32)}),
                  grpc.StatusCode.DEADLINE_EXCEEDED, timeout=0.25)

    def deltas() -> dict[str, float]:
        now = scrape(server)
        return {s: metric(now, count.format(s)) - metric(before, count.format(s)) for s in statuses}

    server.wait_until(lambda: sum(deltas().values()) >= calls, 10, "the timed-out calls in the metrics")
    assert deltas() == {"OK": 0, "DEADLINE_EXCEEDED": calls, "CANCELLED": 0, "UNKNOWN": 0, "INTERNAL": 0}
    assert metric(scrape(server), latency) == metric(before, latency)


def test_classify_on_a_predict_signature_without_the_method_name_check(stub: Any, tf_models: dict[str, Any]) -> None:
    request = classification_pb2.ClassificationRequest()
    request.model_spec.name = "half_plus_two"  # serving_default: method_name predict, input x float
    request.input.example_list.examples.extend(examples({"x": 1.0}))
    details = rpc_error(stub.Classify, request, grpc.StatusCode.INVALID_ARGUMENT)
    assert details.startswith("No classification inputs found in SignatureDef"), details
    half_plus_two_answers(stub, tf_models)


def test_classify_and_regress_with_no_examples(stub: Any) -> None:
    request = regression_pb2.RegressionRequest()
    request.model_spec.name = "half_plus_two"
    request.model_spec.signature_name = "regress_x_to_y"
    assert rpc_error(stub.Regress, request, grpc.StatusCode.INVALID_ARGUMENT) == "Input is empty."


# -- 7. Health, 8. Unix socket ---------------------------------------------------------------


def test_health_check(channel: grpc.Channel) -> None:
    health = health_pb2_grpc.HealthStub(channel)
    for service in ("", "tensorflow.serving.PredictionService", "tensorflow.serving.ModelService"):
        response = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=TIMEOUT)
        assert response.status == health_pb2.HealthCheckResponse.SERVING, service
    rpc_error(health.Check, health_pb2.HealthCheckRequest(service="no.such.Service"), grpc.StatusCode.NOT_FOUND)


def test_unix_socket_serves_predict(server: ServerProcess, tf_models: dict[str, Any]) -> None:
    path = server.socket_path  # type: ignore[attr-defined]
    assert Path(path).is_socket()
    with grpc.insecure_channel(f"unix:{path}") as ch:
        unix_stub = prediction_service_pb2_grpc.PredictionServiceStub(ch)
        half_plus_two_answers(unix_stub, tf_models)
        health = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=TIMEOUT)
        assert health.status == health_pb2.HealthCheckResponse.SERVING


# -- 10. Metrics -----------------------------------------------------------------------------


def test_grpc_requests_in_prometheus_metrics(server: ServerProcess, stub: Any, tf_models: dict[str, Any]) -> None:
    latency = ':tensorflow:serving:request_latency_count{API="Predict",entrypoint="GRPC",model_name="half_plus_two"}'
    count = ':tensorflow:serving:request_count{{model_name="half_plus_two",status="{}"}}'
    before = scrape(server)
    half_plus_two_answers(stub, tf_models)
    rpc_error(stub.Predict, predict_request("half_plus_two", {"x": XS}, version=9), grpc.StatusCode.NOT_FOUND)
    rpc_error(stub.Predict, predict_request("half_plus_two", {"z": XS}), grpc.StatusCode.INVALID_ARGUMENT)
    statuses = ("OK", "NOT_FOUND", "INVALID_ARGUMENT")

    def deltas() -> dict[str, float]:
        now = scrape(server)
        return {s: metric(now, count.format(s)) - metric(before, count.format(s)) for s in statuses}

    # a failed call is counted just after its status is sent: wait for it, briefly
    server.wait_until(lambda: sum(deltas().values()) >= 3, 10, "the three calls in the metrics")
    assert deltas() == {"OK": 1, "NOT_FOUND": 1, "INVALID_ARGUMENT": 1}
    after = scrape(server)
    assert metric(after, latency) == metric(before, latency) + 1
    assert any(line.startswith(':tensorflow:serving:request_latency_bucket{API="Predict",entrypoint="GRPC"')
               for line in after.splitlines())
    classify = classification_pb2.ClassificationRequest()
    classify.model_spec.name = "half_plus_two"
    classify.model_spec.signature_name = "classify_x_to_y"
    classify.input.example_list.examples.extend(examples({"x": 1.0}))
    stub.Classify(classify, timeout=TIMEOUT)
    classify_latency = latency.replace('API="Predict"', 'API="Classify"')
    assert metric(scrape(server), classify_latency) == metric(after, classify_latency) + 1


# -- 9, 11. The management server: method-name check, HandleReloadConfigRequest -------------


def test_classify_on_a_predict_signature_with_the_method_name_check(mgmt_channel: grpc.Channel) -> None:
    stub = prediction_service_pb2_grpc.PredictionServiceStub(mgmt_channel)
    request = classification_pb2.ClassificationRequest()
    request.model_spec.name = "half_plus_two"
    request.input.example_list.examples.extend(examples({"x": 1.0}))
    details = rpc_error(stub.Classify, request, grpc.StatusCode.INVALID_ARGUMENT)
    assert details == f"Expected classification signature method_name to be {CLASSIFY}. Was: {PREDICT}"
    regress = regression_pb2.RegressionRequest()
    regress.model_spec.name = "half_plus_two"
    regress.model_spec.signature_name = "classify_x_to_y"
    regress.input.example_list.examples.extend(examples({"x": 1.0}))
    details = rpc_error(stub.Regress, regress, grpc.StatusCode.INVALID_ARGUMENT)
    assert details == f"Expected regression signature method_name to be {REGRESS}. Was: {CLASSIFY}"
    regress.model_spec.signature_name = "regress_x_to_y"  # the right method name still serves
    assert len(stub.Regress(regress, timeout=TIMEOUT).result.regressions) == 1


def reload_request(model_dir: str, models: dict[str, str]) -> model_management_pb2.ReloadConfigRequest:
    """models: name -> base path (relative to model_dir, or absolute)."""
    request = model_management_pb2.ReloadConfigRequest()
    for name, base in models.items():
        request.config.model_config_list.config.add(name=name, base_path=os.path.join(model_dir, base),
                                                    model_platform="tensorflow")
    return request


def versions(model_stub: Any, model: str) -> dict[int, int]:
    response = model_stub.GetModelStatus(status_request(model), timeout=TIMEOUT)
    return {s.version: s.state for s in response.model_version_status}


def wait_for(predicate: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def test_reload_adds_a_model_and_answers_once_it_is_available(mgmt_channel: grpc.Channel, model_dir: str,
                                                             tf_models: dict[str, Any]) -> None:
    model_stub = model_service_pb2_grpc.ModelServiceStub(mgmt_channel)
    stub = prediction_service_pb2_grpc.PredictionServiceStub(mgmt_channel)
    rpc_error(stub.Predict, predict_request("multi_io", {"a": MULTI_A, "b": MULTI_B, "text": MULTI_TEXT}),
              grpc.StatusCode.NOT_FOUND)
    response = model_stub.HandleReloadConfigRequest(
        reload_request(model_dir, {"half_plus_two": "half_plus_two", "multi_io": "multi_io"}), timeout=60)
    assert response.status.error_code == 0 and response.status.error_message == ""
    # no waiting: the reload answered once multi_io was AVAILABLE
    got = outputs_of(stub.Predict(predict_request("multi_io", {"a": MULTI_A, "b": MULTI_B, "text": MULTI_TEXT}),
                                  timeout=TIMEOUT))
    assert got["doubled"].tolist() == reference(tf_models, "multi_io", a=MULTI_A, b=MULTI_B,
                                                text=MULTI_TEXT)["doubled"].tolist()
    assert versions(model_stub, "multi_io") == {1: AVAILABLE}
    half_plus_two_answers(stub, tf_models)


def test_reload_dropping_a_model_unloads_it(mgmt_channel: grpc.Channel, model_dir: str,
                                            tf_models: dict[str, Any]) -> None:
    model_stub = model_service_pb2_grpc.ModelServiceStub(mgmt_channel)
    stub = prediction_service_pb2_grpc.PredictionServiceStub(mgmt_channel)
    response = model_stub.HandleReloadConfigRequest(reload_request(model_dir, {"multi_io": "multi_io"}), timeout=60)
    assert response.status.error_code == 0
    wait_for(lambda: versions(model_stub, "half_plus_two") == {1: END}, 20, "half_plus_two to unload")
    rpc_error(stub.Predict, predict_request("half_plus_two", {"x": XS}), grpc.StatusCode.NOT_FOUND)
    # and back: the reload answers once it serves again
    response = model_stub.HandleReloadConfigRequest(reload_request(model_dir, {"half_plus_two": "half_plus_two"}),
                                                    timeout=60)
    assert response.status.error_code == 0
    half_plus_two_answers(stub, tf_models)


@pytest.mark.parametrize("config", ["custom", "none"])
def test_reload_without_a_model_config_list_is_invalid(mgmt_channel: grpc.Channel, tf_models: dict[str, Any],
                                                        config: str) -> None:
    model_stub = model_service_pb2_grpc.ModelServiceStub(mgmt_channel)
    request = model_management_pb2.ReloadConfigRequest()
    if config == "custom":
        request.config.custom_model_config.Pack(model_server_config_pb2.ModelConfig(name="x", base_path="/x"))
    rpc_error(model_stub.HandleReloadConfigRequest, request, grpc.StatusCode.INVALID_ARGUMENT)
    half_plus_two_answers(prediction_service_pb2_grpc.PredictionServiceStub(mgmt_channel), tf_models)


def test_reload_with_a_version_that_fails_to_load(mgmt_channel: grpc.Channel, model_dir: str, tmp_path: Path,
                                                  tf_models: dict[str, Any]) -> None:
    model_stub = model_service_pb2_grpc.ModelServiceStub(mgmt_channel)
    broken = tmp_path / "broken"
    (broken / "1").mkdir(parents=True)
    (broken / "1" / "saved_model.pb").write_bytes(b"this is not a SavedModel")
    request = reload_request(model_dir, {"half_plus_two": "half_plus_two", "broken": str(broken)})
    message = rpc_error(model_stub.HandleReloadConfigRequest, request, grpc.StatusCode.UNKNOWN, timeout=60)
    assert "did not become available" in message and "broken" in message, message
    states = versions(model_stub, "broken")
    assert states == {1: END}
    assert model_stub.GetModelStatus(status_request("broken"), timeout=TIMEOUT).model_version_status[
        0].status.error_code != 0
    half_plus_two_answers(prediction_service_pb2_grpc.PredictionServiceStub(mgmt_channel), tf_models)
    # leave the server as it started
    response = model_stub.HandleReloadConfigRequest(reload_request(model_dir, {"half_plus_two": "half_plus_two"}),
                                                    timeout=60)
    assert response.status.error_code == 0


def test_channel_arguments_reach_the_server(mgmt_channel: grpc.Channel) -> None:
    """--grpc_channel_arguments=grpc.max_receive_message_length=65536: a 100 KB request is refused with
    RESOURCE_EXHAUSTED, and a small one is still served."""
    stub = prediction_service_pb2_grpc.PredictionServiceStub(mgmt_channel)
    big = predict_request("half_plus_two", {"x": np.zeros(25_000, np.float32)})
    with pytest.raises(grpc.RpcError) as e:
        stub.Predict(big, timeout=TIMEOUT)
    assert e.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, e.value.details()
    small = stub.Predict(predict_request("half_plus_two", {"x": np.array([2.0], np.float32)}), timeout=TIMEOUT)
    assert tf.make_ndarray(small.outputs["y"]).tolist() == [3.0]
