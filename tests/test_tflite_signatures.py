"""LiteRT serving of `model.tflite` files without native signatures, as TF Serving's tflite_session.cc
serves them: a `serving_default` signature over the model's tensors, or the SignatureDefs stored in
its `signature_defs_metadata`; inputs resized to what is fed. Real TF1 graphs converted at test time,
one real server; answers checked against TensorFlow running the same graphs and LiteRT run directly."""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from typing import Any

import grpc
import numpy as np
import pytest
import tensorflow as tf
from ai_edge_litert.interpreter import Interpreter
from conftest import ServerProcess
from flatbuffers import flexbuffers
from tensorflow.core.protobuf import meta_graph_pb2
from tensorflow.lite.python import schema_py_generated as schema
from tensorflow.lite.tools import flatbuffer_utils
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

from tfprod.errors import ServingError
from tfprod.servables.tflite import read_meta_graph

W = np.array([[1.0], [2.0], [-1.0]], np.float32)
INT8_TOLERANCE = 0.1  # largest |difference| from TF of the int8 model, whose inputs lie in [-1, 1]
REGRESS = "tensorflow/serving/regress"
MODELS = ("one", "two", "meta", "native")


class Half(tf.Module):
    """x * 0.5 + 2 with its input fixed at [1, 4], converted with a native signature."""

    @tf.function(input_signature=[tf.TensorSpec([1, 4], tf.float32, name="x")])
    def __call__(self, x: tf.Tensor) -> dict[str, tf.Tensor]:
        return {"y": x * 0.5 + 2.0}


def with_signature_defs(flatbuffer: bytes, signature_defs: Mapping[str, meta_graph_pb2.SignatureDef]) -> bytes:
    """The flatbuffer with `signature_defs` stored as TF's SetSignatureDefMap (signature_def_util.cc) stores
    them: a new buffer holding a flexbuffers map of key -> serialized SignatureDef, named by a metadata
    entry `signature_defs_metadata`."""
    builder = flexbuffers.Builder()
    with builder.Map():
        for key, sig_def in signature_defs.items():
            builder.Key(key)
            # TF writes the proto's bytes as a flexbuffers string; the Python builder's String() takes text
            # only (it would UTF-8 encode), so the bytes go through its string writer as they are.
            builder._WriteBlob(sig_def.SerializeToString(), append_zero=True, type_=flexbuffers.Type.STRING)
    model = flatbuffer_utils.convert_bytearray_to_object(flatbuffer)
    buffer = schema.BufferT()
    buffer.data = np.frombuffer(bytes(builder.Finish()), np.uint8)
    model.buffers.append(buffer)
    entry = schema.MetadataT()
    entry.name, entry.buffer = "signature_defs_metadata", len(model.buffers) - 1
    model.metadata.append(entry)
    return bytes(flatbuffer_utils.convert_object_to_bytearray(model))


def litert(flatbuffer: bytes, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """LiteRT run directly: inputs by tensor name, resized to what is fed and quantized when the tensor is;
    every output, dequantized, by tensor name."""
    interpreter = Interpreter(model_content=flatbuffer)
    inputs = {d["name"]: d for d in interpreter.get_input_details()}
    for name, value in feeds.items():
        interpreter.resize_tensor_input(inputs[name]["index"], value.shape)
    interpreter.allocate_tensors()
    for name, value in feeds.items():
        scale, zero = inputs[name]["quantization"]
        interpreter.set_tensor(inputs[name]["index"], np.round(value / scale + zero).astype(np.int8) if scale
                               else value)
    interpreter.invoke()
    out = {}
    for d in interpreter.get_output_details():
        value, (scale, zero) = interpreter.get_tensor(d["index"]), d["quantization"]
        out[d["name"]] = (value.astype(np.float32) - zero) * scale if scale else value
    return out


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """TF1 graphs and their conversions: `one` (x fixed at [1, 4] -> y), `two` (a [None, 3], b [None, 1] ->
    s, p), `meta` (`two` quantized to int8 in and out, with a stored `scores` regress SignatureDef), and
    `native` (`one` as a tf.function, with a native signature)."""
    graph = tf.Graph()
    with graph.as_default():
        x = tf.compat.v1.placeholder(tf.float32, [1, 4], name="x")
        y = tf.identity(x * 0.5 + 2.0, name="y")
        a = tf.compat.v1.placeholder(tf.float32, [None, 3], name="a")
        b = tf.compat.v1.placeholder(tf.float32, [None, 1], name="b")
        s = tf.identity(tf.matmul(a, tf.constant(W)) + b, name="s")
        p = tf.identity(a * b - 0.25, name="p")
        build = tf.compat.v1.saved_model.utils.build_tensor_info
        scores = meta_graph_pb2.SignatureDef(method_name=REGRESS)
        scores.inputs["features"].CopyFrom(build(a))  # named "a:0": the TFLite tensor is "a"
        scores.inputs["bias"].CopyFrom(build(b))
        scores.outputs["total"].CopyFrom(build(s))
        scores.outputs["total"].name = "s"  # an exact TFLite name
    sess = tf.compat.v1.Session(graph=graph)
    lite = tf.compat.v1.lite.TFLiteConverter
    files = {"one": lite.from_session(sess, [x], [y]).convert(),
             "two": lite.from_session(sess, [a, b], [s, p]).convert()}
    int8 = lite.from_session(sess, [a, b], [s, p])
    rng = np.random.default_rng(0)
    int8.optimizations = [tf.lite.Optimize.DEFAULT]
    int8.representative_dataset = lambda: ([rng.uniform(-1, 1, (1, 3)).astype(np.float32),
                                            rng.uniform(-1, 1, (1, 1)).astype(np.float32)] for _ in range(100))
    int8.inference_input_type = int8.inference_output_type = tf.int8
    files["int8"] = int8.convert()
    files["meta"] = with_signature_defs(files["int8"], {"scores": scores})
    half = Half()
    files["native"] = tf.lite.TFLiteConverter.from_concrete_functions([half.__call__.get_concrete_function()],
                                                                      half).convert()

    root = tmp_path_factory.mktemp("tflite_signatures")
    for name in MODELS:
        (root / name / "1").mkdir(parents=True)
        (root / name / "1" / "model.tflite").write_bytes(files[name])
    yield {"root": root, "files": files, "tf": lambda fetches, feeds: sess.run(fetches, feeds),
           "x": x, "y": y, "a": a, "b": b, "s": s, "p": p}
    sess.close()


@pytest.fixture(scope="module")
def server(models: dict[str, Any], start_server: Any) -> ServerProcess:
    root = models["root"]
    lines = "".join(f'  config {{ name: "{name}" base_path: "{root / name}" model_platform: "tensorflow" }}\n'
                    for name in MODELS)
    (root / "models.config").write_text(f"model_config_list {{\n{lines}}}\n")
    return start_server([f"--model_config_file={root / 'models.config'}"])


def post(server: ServerProcess, model: str, doc: Any, status: int = 200) -> Any:
    r = server.client.post(f"/v1/models/{model}:predict", content=json.dumps(doc))
    assert r.status_code == status, r.text
    return r.json()


def grpc_predict(server: ServerProcess, model: str, inputs: Mapping[str, np.ndarray],
                 signature: str = "") -> dict[str, np.ndarray]:
    request = predict_pb2.PredictRequest()
    request.model_spec.name, request.model_spec.signature_name = model, signature
    for alias, value in inputs.items():
        request.inputs[alias].CopyFrom(tf.make_tensor_proto(value))
    with grpc.insecure_channel(server.grpc_target) as channel:
        response = prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict(request, timeout=30)
    return {alias: tf.make_ndarray(t) for alias, t in response.outputs.items()}


def signature_doc(server: ServerProcess, model: str) -> dict[str, Any]:
    r = server.client.get(f"/v1/models/{model}/metadata")
    assert r.status_code == 200, r.text
    return r.json()["metadata"]["signature_def"]["signature_def"]


def tensor(doc: Mapping[str, Any]) -> tuple[str, str, list[int]]:
    return doc["name"], doc["dtype"], [int(d["size"]) for d in doc["tensor_shape"].get("dim", [])]


def test_the_files_have_no_native_signatures(models: dict[str, Any]) -> None:
    for name in ("one", "two", "int8", "meta"):
        assert Interpreter(model_content=models["files"][name]).get_signature_list() == {}, name
    model = flatbuffer_utils.convert_bytearray_to_object(models["files"]["meta"])
    assert b"signature_defs_metadata" in [m.name for m in model.metadata]


def test_metadata_shows_each_kind_as_tf_serving_does(server: ServerProcess, models: dict[str, Any]) -> None:
    one, two, meta = (signature_doc(server, name) for name in ("one", "two", "meta"))
    assert list(one) == ["serving_default"] and one["serving_default"]["method_name"] == "tensorflow/serving/predict"
    assert tensor(one["serving_default"]["inputs"]["x"]) == ("x", "DT_FLOAT", [1, 4])  # fixed in the flatbuffer
    assert tensor(one["serving_default"]["outputs"]["y"]) == ("y", "DT_FLOAT", [1, 4])
    assert {k: tensor(v) for k, v in two["serving_default"]["inputs"].items()} == {
        "a": ("a", "DT_FLOAT", [-1, 3]), "b": ("b", "DT_FLOAT", [-1, 1])}
    assert sorted(two["serving_default"]["outputs"]) == ["p", "s"]
    # the stored SignatureDef: its key, method, aliases and shapes; names resolved to TFLite tensors ("a:0" -> "a");
    # DT_FLOAT over int8 tensors, since clients send real numbers
    assert list(meta) == ["scores"] and meta["scores"]["method_name"] == REGRESS
    assert {k: tensor(v) for k, v in meta["scores"]["inputs"].items()} == {
        "features": ("a", "DT_FLOAT", [-1, 3]), "bias": ("b", "DT_FLOAT", [-1, 1])}
    assert {k: tensor(v) for k, v in meta["scores"]["outputs"].items()} == {"total": ("s", "DT_FLOAT", [-1, 1])}
    graph = read_meta_graph(str(models["root"] / "meta" / "1"))  # what `tfprod inspect` shows
    assert graph.signature_def["scores"].inputs["features"].name == "a"
    assert graph.signature_def["scores"].method_name == REGRESS
    native = signature_doc(server, "native")["serving_default"]["inputs"]["x"]  # named by its TFLite tensor
    runner = Interpreter(model_content=models["files"]["native"]).get_signature_runner("serving_default")
    assert tensor(native) == (runner.get_input_details()["x"]["name"], "DT_FLOAT", [1, 4])


def test_tensor_signature_answers_over_rest_and_grpc(server: ServerProcess, models: dict[str, Any]) -> None:
    rng = np.random.default_rng(1)
    a, b = rng.uniform(-1, 1, (5, 3)).astype(np.float32), rng.uniform(-1, 1, (5, 1)).astype(np.float32)
    expected_s, expected_p = models["tf"]([models["s"], models["p"]], {models["a"]: a, models["b"]: b})
    direct = litert(models["files"]["two"], {"a": a, "b": b})
    np.testing.assert_allclose(direct["s"], expected_s, atol=1e-5)
    instances = [{"a": ra.tolist(), "b": rb.tolist()} for ra, rb in zip(a, b, strict=True)]
    rows = post(server, "two", {"instances": instances})
    np.testing.assert_allclose([r["s"] for r in rows["predictions"]], direct["s"], atol=1e-6)
    np.testing.assert_allclose([r["p"] for r in rows["predictions"]], direct["p"], atol=1e-6)
    columns = post(server, "two", {"inputs": {"a": a.tolist(), "b": b.tolist()}})["outputs"]
    np.testing.assert_allclose(columns["p"], expected_p, atol=1e-5)
    np.testing.assert_allclose(columns["s"], direct["s"], atol=1e-6)
    answer = grpc_predict(server, "two", {"a": a, "b": b})
    np.testing.assert_allclose(answer["s"], expected_s, atol=1e-5)
    np.testing.assert_allclose(answer["p"], direct["p"], atol=1e-6)


@pytest.mark.parametrize("model", ["one", "native"])
def test_a_fixed_input_is_resized_to_each_batch(server: ServerProcess, models: dict[str, Any], model: str) -> None:
    x = np.random.default_rng(2).uniform(-5, 5, (7, 4)).astype(np.float32)
    for n in (1, 3, 7, 1):  # and back: each call sets its own shape on the interpreter it gets
        expected = np.concatenate([models["tf"](models["y"], {models["x"]: row[None]}) for row in x[:n]])
        answer = post(server, model, {"instances": x[:n].tolist()})["predictions"]
        np.testing.assert_allclose(answer, expected, atol=1e-6)
        if model == "one":
            np.testing.assert_allclose(answer, litert(models["files"]["one"], {"x": x[:n]})["y"], atol=1e-6)
    np.testing.assert_allclose(grpc_predict(server, model, {"x": x[:3]})["y"], x[:3] * 0.5 + 2.0, atol=1e-6)


def test_stored_signature_serves_the_quantized_model(server: ServerProcess, models: dict[str, Any]) -> None:
    rng = np.random.default_rng(3)
    a, b = rng.uniform(-1, 1, (6, 3)).astype(np.float32), rng.uniform(-1, 1, (6, 1)).astype(np.float32)
    direct = litert(models["files"]["meta"], {"a": a, "b": b})["s"]
    assert np.abs(direct - models["tf"](models["s"], {models["a"]: a, models["b"]: b})).max() <= INT8_TOLERANCE
    doc = {"signature_name": "scores", "inputs": {"features": a.tolist(), "bias": b.tolist()}}
    np.testing.assert_allclose(post(server, "meta", doc)["outputs"], direct, atol=1e-6)  # one output: unnamed
    answer = grpc_predict(server, "meta", {"features": a, "bias": b}, signature="scores")
    assert list(answer) == ["total"]
    np.testing.assert_allclose(answer["total"], direct, atol=1e-6)
    missing = post(server, "meta", {"instances": [[0.0]]}, status=400)  # no serving_default: only "scores"
    assert "serving_default" in missing["error"]
    # its method is regress, but the Regress API feeds serialized tf.Examples, which this model does not take
    r = server.client.post("/v1/models/meta:regress", content=json.dumps({"signature_name": "scores",
                                                                          "examples": [{"a": 1.0}]}))
    assert r.status_code == 400 and r.json()["error"] == "Expected one input Tensor.", r.text


def test_shapes_litert_cannot_run_are_invalid_argument(server: ServerProcess, models: dict[str, Any]) -> None:
    wide = post(server, "two", {"inputs": {"a": np.ones((2, 4)).tolist(), "b": np.ones((2, 1)).tolist()}}, 400)
    assert wide["error"].startswith("LiteRT:") and "inputs fed: a [2, 4], b [2, 1]" in wide["error"], wide
    mixed = post(server, "two", {"inputs": {"a": np.ones((3, 3)).tolist(), "b": np.ones((2, 1)).tolist()}}, 400)
    assert mixed["error"].startswith("LiteRT:"), mixed
    with pytest.raises(grpc.RpcError) as info:
        grpc_predict(server, "two", {"a": np.ones((2, 5), np.float32), "b": np.ones((2, 1), np.float32)})
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "LiteRT" in info.value.details()
    a, b = np.eye(3, dtype=np.float32), np.ones((3, 1), np.float32)  # the same interpreter, resized back
    answer = post(server, "two", {"inputs": {"a": a.tolist(), "b": b.tolist()}})["outputs"]
    np.testing.assert_allclose(answer["s"], W + 1.0, atol=1e-6)


def test_stored_signature_defs_come_first_and_bad_ones_fail_the_load(models: dict[str, Any], tmp_path: Any) -> None:
    version = tmp_path / "1"
    version.mkdir()
    renamed = meta_graph_pb2.SignatureDef(method_name="tensorflow/serving/predict")
    renamed.inputs["input"].name, renamed.outputs["output"].name = "x", "y"  # no dtypes, shapes: the tensors'
    (version / "model.tflite").write_bytes(with_signature_defs(models["files"]["one"], {"renamed": renamed}))
    graph = read_meta_graph(str(version))
    assert list(graph.signature_def) == ["renamed"]
    assert graph.signature_def["renamed"].inputs["input"].tensor_shape.dim[1].size == 4
    native = with_signature_defs(models["files"]["native"], {"renamed": renamed})
    (version / "model.tflite").write_bytes(native)
    with pytest.raises(ServingError, match="Signature input input references an unknown tensor 'x'"):
        read_meta_graph(str(version))  # TF Serving reads the stored ones only: these name no tensor of it
    (version / "model.tflite").write_bytes(native.replace(b"signature_defs_metadata", b"signature_defs_metadatx"))
    assert list(read_meta_graph(str(version)).signature_def) == ["serving_default"]  # the native signature again
