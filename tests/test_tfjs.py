"""TF.js export, the shipped runtime and the parity gate: real models converted, run by TF.js on
its WASM backend in headless Chromium (and Node), compared with TensorFlow on the same inputs."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from typing import Any

import numpy as np
import pytest
import saved_models
import tensorflow as tf

from tfprod.edge import page, parity, tfjs
from tfprod.format.saved_model import read_meta_graph, signatures_of

SERVE = frozenset({"serve"})


def _read(path: str, mode: str = "r") -> Any:
    with open(path, mode) as f:
        return f.read()


def _keras(path: str, layers: list[Any], shape: tuple[int, ...]) -> str:
    tf.keras.utils.set_random_seed(0)
    model = tf.keras.Sequential([tf.keras.Input(shape, name="x"), *layers])
    model.export(path, verbose=False)
    return path


class MultiIO(tf.Module):
    """Two inputs (float features, int ids), three outputs of three dtypes and shapes."""

    def __init__(self) -> None:
        self.w = tf.Variable(tf.random.stateless_normal([3, 4], seed=[1, 2]))

    @tf.function(input_signature=[tf.TensorSpec([None, 3], tf.float32, name="features"),
                                  tf.TensorSpec([None], tf.int32, name="ids")])
    def serve(self, features: tf.Tensor, ids: tf.Tensor) -> dict[str, tf.Tensor]:
        return {"scores": tf.nn.softmax(tf.matmul(features, self.w)), "ids_plus": ids * 2 + 1,
                "total": tf.reduce_sum(features, -1)}


class BatchEinsum(tf.Module):
    @tf.function(input_signature=[tf.TensorSpec([None, 2, 3], tf.float32, name="a")])
    def serve(self, a: tf.Tensor) -> dict[str, tf.Tensor]:
        return {"y": tf.einsum("bij,bkj->bik", a, a)}


@pytest.fixture(scope="module")
def edge_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("edge")
    rnd = "random_normal"  # non-zero biases and statistics: Grappler would fold zeros away
    models = {"digits": str(root / "digits" / "1"), "tf1": str(root / "tf1" / "1")}
    saved_models.digits_classifier(models["digits"])
    saved_models.tf1_half_plus_two(models["tf1"])
    models["cnn"] = _keras(str(root / "cnn" / "1"), [
        tf.keras.layers.Conv2D(4, 3, activation="relu", bias_initializer=rnd),
        tf.keras.layers.BatchNormalization(beta_initializer=rnd, moving_mean_initializer=rnd),
        tf.keras.layers.DepthwiseConv2D(3, activation="relu6", bias_initializer=rnd),
        tf.keras.layers.MaxPooling2D(), tf.keras.layers.Flatten(),
        tf.keras.layers.Dense(16, activation="tanh", bias_initializer=rnd),
        tf.keras.layers.Dense(10, activation="softmax", bias_initializer=rnd)], (28, 28, 1))
    multi = MultiIO()
    models["multi"] = str(root / "multi" / "1")
    tf.saved_model.save(multi, models["multi"], signatures={"serving_default": multi.serve})
    return models


def _inputs(version_dir: str, rows: int = 24, key: str = "serving_default") -> dict[str, np.ndarray]:
    return parity.generated_inputs(signatures_of(read_meta_graph(version_dir, SERVE))[key], rows)


def test_shipped_runtime_matches_its_manifest_and_a_tampered_copy_does_not(tmp_path: Any) -> None:
    assert page.verify_runtime() == []
    manifest = page.runtime_manifest()
    assert manifest["version"] == "4.22.0"
    assert {"tf-core.min.js", "tf-converter.min.js", "tf-backend-wasm.min.js", "tfjs-backend-wasm.wasm",
            "tfjs-backend-wasm-simd.wasm", "tfjs-backend-wasm-threaded-simd.wasm", "LICENSE", "NOTICE",
            "ops.json"} <= set(manifest["files"])
    assert "Apache License" in _read(os.path.join(tfjs.RUNTIME_DIR, "LICENSE"))
    assert "XNNPACK" in _read(os.path.join(tfjs.RUNTIME_DIR, "NOTICE"))
    copy = tmp_path / "tfjs"
    shutil.copytree(tfjs.RUNTIME_DIR, copy)
    core = copy / "tf-core.min.js"
    core.write_bytes(core.read_bytes().replace(b"function", b"funct1on", 1))
    os.remove(copy / "tfjs-backend-wasm.wasm")
    problems = page.verify_runtime(str(copy))
    assert len(problems) == 2
    assert problems[0].startswith("tf-core.min.js: sha256") and problems[1] == "tfjs-backend-wasm.wasm: missing"


def test_model_json_is_a_graph_model_with_the_signature_keys_and_weight_shards(edge_models: dict[str, str],
                                                                              tmp_path: Any) -> None:
    out = tfjs.export(edge_models["multi"], str(tmp_path / "tfjs"))
    model = json.loads(_read(os.path.join(out, "model.json")))
    assert model["format"] == "graph-model" and model["convertedBy"].startswith("tfprod")
    assert sorted(model["signature"]["inputs"]) == ["features", "ids"]
    assert sorted(model["signature"]["outputs"]) == ["ids_plus", "scores", "total"]
    assert model["signature"]["inputs"]["ids"]["dtype"] == "DT_INT32"
    assert model["userDefinedMetadata"]["signatureKey"] == "serving_default"
    group, = model["weightsManifest"]
    assert group["paths"] == ["group1-shard1of1.bin"] and sorted(os.listdir(out)) == [*group["paths"], "model.json"]
    sizes = {"float32": 4, "int32": 4, "bool": 1}
    assert os.path.getsize(os.path.join(out, group["paths"][0])) == sum(
        int(np.prod(w["shape"])) * sizes[w["dtype"]] for w in group["weights"])
    consts = [n for n in model["modelTopology"]["node"] if n["op"] == "Const"]
    assert consts and all("tensorContent" not in n["attr"]["value"]["tensor"] for n in consts)
    assert {n["name"] for n in consts} == {w["name"] for w in group["weights"]}


def test_audit_metadata_travels_in_user_defined_metadata(tmp_path: Any) -> None:
    from tfprod import export

    tf.keras.utils.set_random_seed(0)
    model = tf.keras.Sequential([tf.keras.Input((4,), name="x"), tf.keras.layers.Dense(2)])
    version = export.save(model, str(tmp_path / "m"), metadata={"model_owner": "credit-risk"})
    meta = tfjs.convert(version)[0]["userDefinedMetadata"]
    assert meta["audit"]["model_owner"] == "credit-risk" and meta["quantization"] == "none"


def test_weights_shard_at_4_mib_and_quantize_to_the_documented_layouts(tmp_path: Any) -> None:
    path = _keras(str(tmp_path / "wide" / "1"), [tf.keras.layers.Dense(1500, bias_initializer="ones")], (1000,))
    model, shards = tfjs.convert(path, "none")
    assert list(shards) == ["group1-shard1of2.bin", "group1-shard2of2.bin"]
    assert len(shards["group1-shard1of2.bin"]) == tfjs.SHARD_BYTES
    assert sum(map(len, shards.values())) == (1000 * 1500 + 1500) * 4
    for mode, dtype, size in (("float16", "float16", 2), ("uint16", "uint16", 2), ("uint8", "uint8", 1)):
        model, shards = tfjs.convert(path, mode)
        kernel = next(w for w in model["weightsManifest"][0]["weights"] if w["shape"] == [1000, 1500])
        assert kernel["dtype"] == "float32" and kernel["quantization"]["dtype"] == dtype
        assert kernel["quantization"]["original_dtype"] == "float32"
        if mode != "float16":
            q = kernel["quantization"]
            zero = round(-q["min"] / q["scale"])  # zero is one of the levels
            assert q["scale"] > 0 and q["min"] <= 0 and abs(zero * q["scale"] + q["min"]) < 1e-9
        assert sum(map(len, shards.values())) == (1000 * 1500 + 1500) * size


@pytest.mark.parametrize("name", ["digits", "cnn", "multi", "tf1"])
def test_every_quantization_mode_runs_in_chromium_like_tensorflow(edge_models: dict[str, str], name: str,
                                                                   chromium: Any) -> None:
    version = edge_models[name]
    x = _inputs(version)
    results = parity.gate(version, x, "serving_default", ["tfjs"], list(tfjs.MODES),
                          parity.BrowserRunner(browser=chromium))
    outputs = sorted(signatures_of(read_meta_graph(version, SERVE))["serving_default"].outputs)
    assert sorted({r.mode for r in results}) == sorted(tfjs.MODES)
    assert all(sorted(r.output for r in results if r.mode == m) == outputs for m in tfjs.MODES)
    failed = [(r.mode, r.output, r.relative, r.top1) for r in results if not r.passed]
    assert not failed
    fp32 = [r for r in results if r.mode == "none"]
    assert max(r.relative for r in fp32) < 1e-5  # float32 in the browser: TensorFlow's answer


def test_node_runs_the_same_runtime_files(edge_models: dict[str, str]) -> None:
    version = edge_models["multi"]
    x = _inputs(version)
    results = parity.gate(version, x, "serving_default", ["tfjs"], ["none"], "node")
    assert {r.runtime for r in results} == {"tfjs (node)"} and all(r.passed for r in results)
    ids = next(r for r in results if r.output == "ids_plus")
    assert ids.max_abs_diff == 0  # integers: exact


def test_fusions_tfjs_cannot_run_are_split_back(edge_models: dict[str, str]) -> None:
    model, _ = tfjs.convert(edge_models["cnn"])
    nodes = model["modelTopology"]["node"]
    fused = [n for n in nodes if n["op"].startswith("_Fused")]
    assert fused, "Grappler fused nothing: the test no longer covers un-fusing"

    def ops_of(n: dict[str, Any]) -> list[str]:
        import base64
        return [base64.b64decode(s).decode() for s in n["attr"]["fused_ops"]["list"]["s"]]
    for n in fused:  # what TF.js runs fused: BiasAdd, then at most one activation it knows
        assert n["op"] in ("_FusedMatMul", "_FusedConv2D")
        assert ops_of(n)[0] == "BiasAdd" and set(ops_of(n)[1:]) <= {"Relu", "Relu6", "Elu", "LeakyRelu", "Sigmoid"}
    ops = [n["op"] for n in nodes]
    assert "Tanh" in ops and "DepthwiseConv2dNative" in ops  # the Dense+tanh and depthwise fusions, split


def test_constants_that_cannot_be_quantized_stay_float32() -> None:
    masks = np.array([-np.inf, 0.0, 1.5], np.float32)  # an attention mask
    for mode in ("uint8", "uint16", "float16"):
        entry, data = tfjs._weight("mask", masks, mode)
        assert "quantization" not in entry and np.array_equal(np.frombuffer(data, "<f4"), masks)
    big = np.array([1e5, -3.0], np.float32)  # beyond float16's 65504
    entry, _ = tfjs._weight("big", big, "float16")
    assert "quantization" not in entry
    assert tfjs._weight("big", big, "uint8")[0]["quantization"]["dtype"] == "uint8"


def _refused(path: str, *words: str, signature: str = "") -> None:
    with pytest.raises(tfjs.ConversionError) as e:
        tfjs.convert(path, signature_key=signature)
    for word in words:
        assert word in str(e.value), str(e.value)


def test_refused_ops_name_the_op_and_what_to_do(edge_models: dict[str, str], tmp_path: Any) -> None:
    _refused(_keras(str(tmp_path / "lstm"), [tf.keras.layers.LSTM(4)], (5, 3)), "LoopCond", "unroll=True")
    _refused(_keras(str(tmp_path / "pool3d"), [tf.keras.layers.MaxPooling3D()], (4, 4, 4, 1)), "MaxPool3D",
             "all-negative")
    _refused(_keras(str(tmp_path / "gelu"), [tf.keras.layers.Dense(4, activation=lambda t: tf.nn.gelu(t))], (8,)),
             "Erfc", "approximate=True")
    einsum = BatchEinsum()
    tf.saved_model.save(einsum, str(tmp_path / "einsum"), signatures={"serving_default": einsum.serve})
    _refused(str(tmp_path / "einsum"), "Einsum", "MatMul")
    _refused(edge_models["tf1"], "ParseExample", "serialized tf.Examples", signature="classify_x_to_y2")
    _refused(edge_models["tf1"], "HashTable", "lookup tables", signature="lookup")
    # an unrolled LSTM is what the message suggests: it converts and runs like TensorFlow
    unrolled = _keras(str(tmp_path / "unrolled"), [tf.keras.layers.LSTM(4, unroll=True)], (5, 3))
    assert all(r.passed for r in parity.gate(unrolled, _inputs(unrolled), "serving_default", ["tfjs"], [], "node"))


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "tfprod", *args], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})


def test_convert_cli_writes_tfjs_into_the_version_and_explains_refusals(edge_models: dict[str, str],
                                                                        tmp_path: Any) -> None:
    version = str(tmp_path / "digits" / "1")
    shutil.copytree(edge_models["digits"], version)
    done = _cli("convert", version, "--to", "tfjs", "--quantize", "float16")
    assert done.returncode == 0, done.stderr
    assert "wrote" in done.stdout and os.path.isfile(os.path.join(version, "tfjs", "model.json"))
    assert not [f for f in os.listdir(version) if f.startswith(".tfjs")]  # no staging left behind
    lstm = _keras(str(tmp_path / "lstm"), [tf.keras.layers.GRU(2)], (3, 2))
    done = _cli("convert", lstm, "--to", "tfjs")
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert "tfprod convert: error: the model cannot run in TF.js" in done.stderr and "unroll=True" in done.stderr
    assert not os.path.exists(os.path.join(lstm, "tfjs"))
    done = _cli("convert", version, "--to", "tfjs", "--quantize", "int8")
    assert done.returncode == 1 and "none, float16, uint16, uint8" in done.stderr
    empty = tmp_path / "empty"
    empty.mkdir()
    for command in (["convert", str(empty), "--to", "tfjs"], ["parity", str(empty)]):
        done = _cli(*command)
        assert done.returncode in (1, 2) and "Traceback" not in done.stderr, done.stderr
        assert "saved_model.pb" in done.stderr or "SavedModel" in done.stderr, done.stderr


def test_parity_cli_passes_on_a_good_version_and_fails_on_a_mismatched_tflite(edge_models: dict[str, str],
                                                                             tmp_path: Any) -> None:
    version = str(tmp_path / "digits" / "1")
    shutil.copytree(edge_models["digits"], version)
    plot = str(tmp_path / "parity.png")
    done = _cli("parity", version, "--plot", plot, "--rows", "32")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "tfjs (chromium)" in done.stdout and "tflite" in done.stdout and "passed: 2 checks" in done.stdout
    assert _read(plot, "rb")[:8] == b"\x89PNG\r\n\x1a\n"
    # a model.tflite from another model with the same signature: a release gate must stop it
    other = str(tmp_path / "other")
    saved_models.digits_classifier(other, epochs=1)
    from tfprod.edge.convert import convert
    with open(os.path.join(version, "model.tflite"), "wb") as f:
        f.write(convert(other, "none"))
    done = _cli("parity", version, "--plot", plot, "--runtimes", "tf,tflite")
    assert done.returncode == 1, done.stdout + done.stderr
    assert "FAILED: 1 of 1" in done.stdout and "model.tflite" in done.stdout
    done = _cli("parity", version, "--runtimes", "tf,coreml")
    assert done.returncode == 2 and "coreml" in done.stderr


def test_tools_pick_the_same_default_signature() -> None:
    """convert --to tfjs, convert --report and parity: serving_default, else the only one, else ask."""
    from tfprod.signature import default_signature_key

    assert default_signature_key(["predict", "serving_default"]) == "serving_default"
    assert default_signature_key(["predict"]) == "predict"
    assert default_signature_key(["double", "triple"]) == ""
