"""TF Serving's users' models, as they built them: a TF 1 graph from `tf.compat.v1.saved_model.Builder`
(placeholders of shape [None, 1], a scalar-declared serialized tf.Example, assets, a main_op, a
legacy_init_op, saved_model.pbtxt, two meta graphs), served and checked against a TF 1 session.

TF Serving runs a signature by feeding tensor names into a Session: it never compares fed shapes
with the declared ones, so its quickstart request `{"instances": [1.0, 2.0, 5.0]}` to a `[-1, 1]`
input answers `[2.5, 3.0, 4.5]`.
"""

from __future__ import annotations

import os
import time

import grpc
import numpy as np
import pytest
import saved_models
import tensorflow as tf
from tensorflow_serving.apis import (
    classification_pb2,
    inference_pb2,
    input_pb2,
    predict_pb2,
    prediction_service_pb2_grpc,
    regression_pb2,
)

tf1 = tf.compat.v1
WORDS = ("apple", "banana", "cherry")


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> str:
    root = tmp_path_factory.mktemp("tf1")
    saved_models.tf1_half_plus_two(str(root / "hpt" / "1"), words=WORDS)
    saved_models.tf1_half_plus_two(str(root / "hpt" / "2"), as_text=True, legacy_init_op=True, words=WORDS)
    return str(root / "hpt")


@pytest.fixture(scope="module")
def server(start_server, base, tmp_path_factory):  # type: ignore[no-untyped-def]
    config = tmp_path_factory.mktemp("tf1cfg") / "models.config"
    config.write_text(f'model_config_list {{ config {{ name: "half_plus_two" base_path: "{base}" '
                      'model_platform: "tensorflow" model_version_policy { all {} } } }')
    server = start_server([f"--model_config_file={config}"])
    server.wait_until(lambda: [v["state"] for v in server.client.get("/v1/models/half_plus_two").json()[
        "model_version_status"]] == ["AVAILABLE", "AVAILABLE"], 60, "both versions")  # ready = one of them
    return server


@pytest.fixture(scope="module")
def stub(server) -> prediction_service_pb2_grpc.PredictionServiceStub:  # type: ignore[no-untyped-def]
    return prediction_service_pb2_grpc.PredictionServiceStub(grpc.insecure_channel(server.grpc_target))


def tf1_run(version_dir: str, signature: str, feeds: dict[str, np.ndarray], tags: tuple[str, ...] = ("serve",)
            ) -> dict[str, np.ndarray]:
    """The signature run in a fresh TF 1 session. Each input is mapped onto a new placeholder of the
    fed shape, so TF itself (not the server) says what the graph makes of a shape it did not declare
    (the recorded `_output_shapes` hints are dropped first, as they pin the declared shapes)."""
    from tfprod.format.saved_model import read_meta_graph

    meta_graph = read_meta_graph(version_dir, frozenset(tags))
    for node in meta_graph.graph_def.node:
        node.attr.pop("_output_shapes", None)
    sig = meta_graph.signature_def[signature]
    with tf.Graph().as_default() as graph, tf1.Session(graph=graph) as sess:
        fed = {alias: tf1.placeholder(tf.string if value.dtype == object else tf.as_dtype(value.dtype), value.shape)
               for alias, value in feeds.items()}
        saver = tf1.train.import_meta_graph(meta_graph, input_map={sig.inputs[k].name: p for k, p in fed.items()})
        saver.restore(sess, os.path.join(version_dir, "variables", "variables"))
        fetched = sess.run({k: v.name for k, v in sig.outputs.items()}, {fed[k]: v for k, v in feeds.items()})
        return {k: np.asarray(v) for k, v in fetched.items()}


def example(**features: float) -> tf.train.Example:
    return tf.train.Example(features=tf.train.Features(feature={
        k: tf.train.Feature(float_list=tf.train.FloatList(value=[v])) for k, v in features.items()}))


@pytest.mark.parametrize("version", [1, 2], ids=["pb-main_op", "pbtxt-legacy_init_op"])
def test_quickstart_request_answers_as_tf_serving(server, base, version) -> None:  # type: ignore[no-untyped-def]
    url = f"/v1/models/half_plus_two/versions/{version}:predict"
    r = server.client.post(url, json={"instances": [1.0, 2.0, 5.0]})
    assert r.status_code == 200, r.text
    assert r.json() == {"predictions": [2.5, 3.0, 4.5]}
    expected = tf1_run(os.path.join(base, str(version)), "serving_default", {"x": np.array([1, 2, 5], np.float32)})
    assert r.json()["predictions"] == expected["y"].tolist()


@pytest.mark.parametrize(("body", "expected"), [
    pytest.param({"instances": [[1.0], [2.0]]}, {"predictions": [[2.5], [3.0]]}, id="rows-as-declared"),
    pytest.param({"inputs": {"x": [1.0, 2.0, 5.0]}}, {"outputs": [2.5, 3.0, 4.5]}, id="columnar-[3]"),
    pytest.param({"inputs": [1.0, 2.0, 5.0]}, {"outputs": [2.5, 3.0, 4.5]}, id="columnar-unnamed"),
    pytest.param({"inputs": {"x": [[[1.0, 2.0]]]}}, {"outputs": [[[2.5, 3.0]]]}, id="columnar-rank-3"),
    pytest.param({"signature_name": "unknown_rank", "inputs": {"x": 3.0}}, {"outputs": 4.5}, id="scalar"),
])
def test_rest_shapes_the_graph_accepts(server, base, body, expected) -> None:  # type: ignore[no-untyped-def]
    r = server.client.post("/v1/models/half_plus_two:predict", json=body)
    assert r.status_code == 200, r.text
    assert r.json() == expected
    sig = body.get("signature_name", "serving_default")
    x = body.get("instances") or body["inputs"]
    x = x["x"] if isinstance(x, dict) else x
    ran = tf1_run(os.path.join(base, "2"), sig, {"x": np.array(x, np.float32)})
    assert next(iter(expected.values())) == ran["y"].tolist()


@pytest.mark.parametrize("shape", [[3], [1], [2, 1], []], ids=str)
def test_grpc_predict_any_shape(stub, base, shape) -> None:  # type: ignore[no-untyped-def]
    x = np.arange(1, 1 + int(np.prod(shape)), dtype=np.float32).reshape(shape)
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "half_plus_two"
    if not shape:
        request.model_spec.signature_name = "unknown_rank"
    request.inputs["x"].CopyFrom(tf.make_tensor_proto(x))
    reply = stub.Predict(request, timeout=10)
    y = tf.make_ndarray(reply.outputs["y"])
    expected = tf1_run(os.path.join(base, "2"), request.model_spec.signature_name or "serving_default", {"x": x})
    assert y.shape == tuple(shape)
    np.testing.assert_array_equal(y, expected["y"])
    assert reply.model_spec.version.value == 2


def test_classify_and_regress_on_scalar_example_input(server, stub, base) -> None:  # type: ignore[no-untyped-def]
    examples = [{"x": 1.0, "x2": 10.0}, {"x": 4.0, "x2": 20.0}]
    serialized = np.array([example(**e).SerializeToString() for e in examples], dtype=object)
    want_y2 = tf1_run(os.path.join(base, "1"), "regress_x_to_y2", {"inputs": serialized})["outputs"]
    want_y3 = tf1_run(os.path.join(base, "1"), "regress_x2_to_y3", {"inputs": serialized})["outputs"]

    r = server.client.post("/v1/models/half_plus_two:regress", json={"signature_name": "regress_x_to_y2",
                                                                      "examples": examples})
    assert r.status_code == 200, r.text
    assert r.json() == {"results": want_y2.ravel().tolist()}
    r = server.client.post("/v1/models/half_plus_two:classify", json={"signature_name": "classify_x_to_y2",
                                                                       "examples": examples})
    assert r.status_code == 200, r.text
    assert r.json() == {"results": [[["half", s]] for s in want_y2.ravel().tolist()]}

    proto_examples = input_pb2.Input()
    proto_examples.example_list.examples.extend(example(**e) for e in examples)
    regress = regression_pb2.RegressionRequest(input=proto_examples)
    regress.model_spec.name, regress.model_spec.signature_name = "half_plus_two", "regress_x2_to_y3"
    got = [r.value for r in stub.Regress(regress, timeout=10).result.regressions]
    np.testing.assert_allclose(got, want_y3.ravel())
    classify = classification_pb2.ClassificationRequest(input=proto_examples)
    classify.model_spec.name, classify.model_spec.signature_name = "half_plus_two", "classify_x_to_y2"
    classes = stub.Classify(classify, timeout=10).result.classifications
    assert [[(c.label, c.score) for c in k.classes] for k in classes] == [[("half", s)] for s in want_y2.ravel()]

    multi = inference_pb2.MultiInferenceRequest(input=proto_examples)
    for name, method in (("regress_x_to_y2", "tensorflow/serving/regress"),
                         ("classify_x_to_y2", "tensorflow/serving/classify")):
        task = multi.tasks.add()
        task.model_spec.name, task.model_spec.signature_name, task.method_name = "half_plus_two", name, method
    results = stub.MultiInference(multi, timeout=10).results
    np.testing.assert_allclose([r.value for r in results[0].regression_result.regressions], want_y2.ravel())
    assert [k.classes[0].score for k in results[1].classification_result.classifications] == want_y2.ravel().tolist()


def test_v2_infer_on_the_tf1_model(server, base) -> None:  # type: ignore[no-untyped-def]
    """V2 keeps its own rule (shapes checked against the metadata, as Triton does): [3, 1] fits [-1, 1]."""
    r = server.client.post("/v2/models/half_plus_two/infer", json={"inputs": [
        {"name": "x", "datatype": "FP32", "shape": [3, 1], "data": [1.0, 2.0, 5.0]}]})
    assert r.status_code == 200, r.text
    (out,) = r.json()["outputs"]
    expected = tf1_run(os.path.join(base, "2"), "serving_default", {"x": np.array([[1], [2], [5]], np.float32)})
    assert (out["name"], out["shape"], out["data"]) == ("y", [3, 1], expected["y"].ravel().tolist())


@pytest.mark.parametrize("version", [1, 2], ids=["main_op", "legacy_init_op"])
def test_assets_and_init_ops_run_at_load(server, version) -> None:  # type: ignore[no-untyped-def]
    r = server.client.post(f"/v1/models/half_plus_two/versions/{version}:predict",
                           json={"signature_name": "lookup", "instances": ["banana", "kiwi", "apple"]})
    assert r.status_code == 200, r.text
    assert r.json() == {"predictions": [1, -1, 0]}


def test_inspect_reads_a_pbtxt_version(base) -> None:  # type: ignore[no-untyped-def]
    from tfprod.export.inspect import describe

    doc = describe(os.path.join(base, "2"))  # saved_model.pbtxt only
    assert [mg["tags"] for mg in doc["meta_graphs"]] == [["serve"], ["gpu", "serve"]]
    assert doc["meta_graphs"][0]["signatures"]["serving_default"]["inputs"]["x"]["shape"] == [-1, 1]


def test_metadata_shows_the_declared_shapes(server) -> None:  # type: ignore[no-untyped-def]
    r = server.client.get("/v1/models/half_plus_two/versions/1/metadata")
    assert r.status_code == 200, r.text
    defs = r.json()["metadata"]["signature_def"]["signature_def"]
    x = defs["serving_default"]["inputs"]["x"]
    assert [d["size"] for d in x["tensor_shape"]["dim"]] == ["-1", "1"]
    assert defs["regress_x_to_y2"]["inputs"]["inputs"]["tensor_shape"] == {"dim": [], "unknown_rank": False}


def test_tensorflow_errors_come_back_and_the_next_request_is_served(server, stub) -> None:  # type: ignore[no-untyped-def]
    r = server.client.post("/v1/models/half_plus_two:regress",
                           json={"signature_name": "regress_x_to_y2", "examples": [{"y": [1.0, 2.0]}]})
    assert r.status_code == 400
    assert "Feature: x (data type: float) is required but could not be found" in r.json()["error"]
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "half_plus_two"
    request.inputs["x"].CopyFrom(tf.make_tensor_proto(np.array([1], np.int64)))
    with pytest.raises(grpc.RpcError) as e:
        stub.Predict(request, timeout=10)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "is DT_INT64 but the signature expects DT_FLOAT" in e.value.details()
    r = server.client.post("/v1/models/half_plus_two:predict", json={"instances": [1.0, 2.0, 5.0]})
    assert r.json() == {"predictions": [2.5, 3.0, 4.5]}


def test_saved_model_tags_pick_the_meta_graph(start_server, base) -> None:  # type: ignore[no-untyped-def]
    server = start_server(["--model_name=hpt", f"--model_base_path={base}", "--saved_model_tags=serve,gpu"])
    r = server.client.post("/v1/models/hpt:predict", json={"instances": [1.0, 2.0]})
    assert r.status_code == 200, r.text
    expected = tf1_run(os.path.join(base, "2"), "serving_default", {"x": np.array([1.0, 2.0], np.float32)},
                       tags=("serve", "gpu"))
    assert r.json() == {"predictions": expected["y"].tolist()} == {"predictions": [3.5, 4.0]}


def test_ports_open_only_once_the_configured_models_loaded(base, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """From the moment the process starts, poll gRPC Predict every 20 ms: the port is closed
    (UNAVAILABLE) until the model loaded, then OK; never NOT_FOUND for a model in the config."""
    from conftest import ServerProcess

    server = ServerProcess(["--model_name=hpt", f"--model_base_path={base}"], str(tmp_path / "race.log"))
    try:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(grpc.insecure_channel(server.grpc_target))
        request = predict_pb2.PredictRequest()
        request.model_spec.name = "hpt"
        request.inputs["x"].CopyFrom(tf.make_tensor_proto(np.array([1.0], np.float32)))
        codes: list[grpc.StatusCode] = []
        rest: list[int] = []
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and server.proc.poll() is None:
            try:
                stub.Predict(request, timeout=1)
                codes.append(grpc.StatusCode.OK)
                break
            except grpc.RpcError as e:
                codes.append(e.code())
            try:
                rest.append(server.client.get("/v1/models/hpt").status_code)
            except Exception:  # noqa: BLE001  (connection refused: the port is not open yet)
                pass
            time.sleep(0.02)
        assert codes[-1] == grpc.StatusCode.OK, server.log()[-3000:]
        assert set(codes[:-1]) <= {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED}, codes
        assert 404 not in rest
        assert len(codes) > 1  # the loop did start before the server was up
    finally:
        server.stop()


def test_unknown_output_alias_is_refused_and_the_metagraph_stays_as_served(base) -> None:  # type: ignore[no-untyped-def]
    """Every caller of a servable (the APIs, warmup) gets TF Serving's text; the served MetaGraph
    (what GetModelMetadata shows) is not touched by the lookup."""
    from tfprod.core.manager import ServableId
    from tfprod.errors import ServingError
    from tfprod.servables import saved_model

    servable = saved_model.load(ServableId("hpt", 1), os.path.join(base, "1"))
    try:
        sig = servable.signature("serving_default")
        with pytest.raises(ServingError, match="output tensor alias not found in signature: nope Outputs expected "
                                               r"to be in the set \{y\}"):
            servable.run(sig, {"x": np.array([1.0], np.float32)}, ("nope",))
        assert list(servable.meta_graph.signature_def["serving_default"].outputs) == ["y"]
        assert servable.run(sig, {"x": np.array([1.0], np.float32)}, ("y", "y"))["y"].tolist() == [2.5]
    finally:
        servable.unload()
