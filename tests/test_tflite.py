"""`tfprod convert` in every quantization mode and LiteRT serving: real conversions of a digits
model, served by a real server, answers checked against the SavedModel in TensorFlow and against
LiteRT run directly on the same file."""

from __future__ import annotations

import concurrent.futures
import json
import os
import shutil
import subprocess
import sys
from typing import Any

import grpc
import numpy as np
import pytest
import tensorflow as tf
from ai_edge_litert.interpreter import Interpreter
from conftest import ServerProcess
from sklearn.datasets import load_digits
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

from tfprod.edge.convert import ConversionError, convert, representative_rows
from tfprod.format.saved_model import read_meta_graph, signatures_of

# Largest |difference| from the SavedModel's softmax outputs, per mode (documented in docs/edge.md).
TOLERANCE = {"none": 1e-5, "dynamic": 0.05, "float16": 0.01, "int8": 0.1}
TFPROD = [sys.executable, "-m", "tfprod"]


@pytest.fixture(scope="module")
def digits(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("tflite")
    x, y = load_digits(return_X_y=True)
    x = (x / 16.0).astype(np.float32)
    tf.keras.utils.set_random_seed(0)
    model = tf.keras.Sequential([tf.keras.Input((64,), name="pixels"), tf.keras.layers.Dense(64, activation="relu"),
                                 tf.keras.layers.Dense(10, activation="softmax")])
    model.compile("adam", "sparse_categorical_crossentropy")
    model.fit(x[:1500], y[:1500], epochs=8, batch_size=64, verbose=0)
    saved = str(root / "saved")
    model.export(saved, verbose=False)
    np.save(root / "rep.npy", x[:300])
    np.savez(root / "rep.npz", pixels=x[:300])
    with open(root / "rep.csv", "w") as f:
        f.write(",".join(f"p{i}" for i in range(64)) + "\n")
        f.writelines(",".join(f"{v:g}" for v in row) + "\n" for row in x[:300])
    with tf.io.TFRecordWriter(str(root / "rep.tfrecord")) as w:
        for row in x[:300]:
            feature = {"pixels": tf.train.Feature(float_list=tf.train.FloatList(value=row))}
            w.write(tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString())
    files = {}
    for mode in ("none", "dynamic", "float16"):
        files[mode] = convert(saved, mode)
    files["int8"] = convert(saved, "int8", representative=str(root / "rep.npy"))
    files["int8_io"] = convert(saved, "int8", representative=str(root / "rep.npy"), io_type="int8")
    test_x = x[1500:1600]
    reference = tf.saved_model.load(saved).signatures["serving_default"](pixels=tf.constant(test_x))
    return {"root": root, "saved": saved, "files": files, "x": test_x, "y": y[1500:1600],
            "expected": next(iter(reference.values())).numpy()}


def litert(flatbuffer: bytes, x: np.ndarray) -> np.ndarray:
    """LiteRT run directly on the file, float in and out ((de)quantizing an int8-io model)."""
    runner = Interpreter(model_content=flatbuffer).get_signature_runner("serving_default")
    detail = runner.get_input_details()["pixels"]
    scale, zero = detail["quantization"]
    feed = x if not scale else np.clip(np.round(x / scale + zero), -128, 127).astype(np.int8)
    out_detail = next(iter(runner.get_output_details().values()))
    out = next(iter(runner(pixels=feed).values()))
    out_scale, out_zero = out_detail["quantization"]
    return (out.astype(np.float32) - out_zero) * out_scale if out_scale else out


@pytest.fixture(scope="module")
def lite_server(digits: dict[str, Any], start_server: Any) -> ServerProcess:
    root = digits["root"]
    lines = []
    for mode, flatbuffer in digits["files"].items():
        version = root / "served" / mode / "1"
        version.mkdir(parents=True)
        (version / "model.tflite").write_bytes(flatbuffer)  # a version holding only model.tflite
        lines.append(f'  config {{ name: "{mode}" base_path: "{version.parent}" model_platform: "tensorflow" }}\n')
    both = root / "served" / "both" / "1"
    shutil.copytree(digits["saved"], both)
    (both / "model.tflite").write_bytes(digits["files"]["int8"])
    lines.append(f'  config {{ name: "both" base_path: "{both.parent}" model_platform: "tensorflow" }}\n')
    (root / "models.config").write_text("model_config_list {\n" + "".join(lines) + "}\n")
    (root / "batching.config").write_text("max_batch_size { value: 128 }\nbatch_timeout_micros { value: 2000 }\n")
    (root / "monitoring.config").write_text("prometheus_config { enable: true }\n")
    return start_server([f"--model_config_file={root / 'models.config'}", "--prefer_tflite_model",
                         f"--monitoring_config_file={root / 'monitoring.config'}",
                         "--enable_batching", f"--batching_parameters_file={root / 'batching.config'}"])


def rest_predict(server: ServerProcess, model: str, x: np.ndarray) -> np.ndarray:
    r = server.client.post(f"/v1/models/{model}:predict", content=json.dumps({"instances": x.tolist()}))
    assert r.status_code == 200, r.text
    return np.array(r.json()["predictions"], np.float32)


@pytest.mark.parametrize("mode", ["none", "dynamic", "float16", "int8", "int8_io"])
def test_each_mode_answers_like_litert_and_close_to_the_saved_model(lite_server: ServerProcess,
                                                                    digits: dict[str, Any], mode: str) -> None:
    answer = rest_predict(lite_server, mode, digits["x"])
    np.testing.assert_allclose(answer, litert(digits["files"][mode], digits["x"]), atol=1e-6)
    assert np.abs(answer - digits["expected"]).max() <= TOLERANCE[mode.removesuffix("_io")]
    agreement = (answer.argmax(1) == digits["expected"].argmax(1)).mean()
    assert agreement >= 0.97, agreement


def test_metadata_shows_float_io_for_a_quantized_model(lite_server: ServerProcess) -> None:
    r = lite_server.client.get("/v1/models/int8_io/metadata")
    assert r.status_code == 200, r.text
    signature = r.json()["metadata"]["signature_def"]["signature_def"]["serving_default"]
    assert signature["inputs"]["pixels"]["dtype"] == "DT_FLOAT"
    assert [d["size"] for d in signature["inputs"]["pixels"]["tensor_shape"]["dim"]] == ["-1", "64"]
    v2 = lite_server.client.get("/v2/models/int8_io").json()
    assert v2["inputs"] == [{"name": "pixels", "datatype": "FP32", "shape": [-1, 64]}]


def test_prefer_tflite_model_serves_the_tflite_file(lite_server: ServerProcess, digits: dict[str, Any]) -> None:
    answer = rest_predict(lite_server, "both", digits["x"])
    np.testing.assert_allclose(answer, litert(digits["files"]["int8"], digits["x"]), atol=1e-6)
    assert not np.allclose(answer, digits["expected"], atol=1e-6)  # not TensorFlow's answer


def test_grpc_and_v2_answer_from_litert(lite_server: ServerProcess, digits: dict[str, Any]) -> None:
    x = digits["x"][:4]
    expected = litert(digits["files"]["float16"], x)
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "float16"
    request.inputs["pixels"].CopyFrom(tf.make_tensor_proto(x))
    with grpc.insecure_channel(lite_server.grpc_target) as channel:
        response = prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict(request, timeout=30)
    np.testing.assert_allclose(tf.make_ndarray(next(iter(response.outputs.values()))), expected, atol=1e-6)
    body = {"inputs": [{"name": "pixels", "datatype": "FP32", "shape": [4, 64], "data": x.ravel().tolist()}]}
    r = lite_server.client.post("/v2/models/float16/infer", content=json.dumps(body))
    assert r.status_code == 200, r.text
    np.testing.assert_allclose(np.array(r.json()["outputs"][0]["data"]).reshape(4, 10), expected, atol=1e-6)


def test_batched_concurrent_requests_get_their_own_rows(lite_server: ServerProcess, digits: dict[str, Any]) -> None:
    x = digits["x"][:32]
    expected = litert(digits["files"]["int8"], x)
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda i: rest_predict(lite_server, "int8", x[i:i + 1]), range(len(x))))
    np.testing.assert_allclose(np.concatenate(answers), expected, atol=1e-6)
    metrics = lite_server.client.get("/monitoring/prometheus/metrics").text
    runs = [line for line in metrics.splitlines()
            if line.startswith(':tensorflow:serving:batching_session:wrapped_run_count{model_name="int8"}')]
    assert runs and float(runs[0].split()[-1]) >= 1, metrics[-2000:]  # LiteRT calls went through the batcher
    bad = lite_server.client.post("/v1/models/int8:predict", content=json.dumps({"instances": [[1.0] * 3]}))
    assert bad.status_code == 400, bad.text  # a wrong shape is the client's error, and the next one is served
    assert rest_predict(lite_server, "int8", x[:1]).shape == (1, 10)


@pytest.mark.parametrize("kind", ["rep.npy", "rep.npz", "rep.csv", "rep.tfrecord"])
def test_representative_data_formats(digits: dict[str, Any], kind: str) -> None:
    sig = signatures_of(read_meta_graph(digits["saved"], frozenset({"serve"})))["serving_default"]
    rows = representative_rows(str(digits["root"] / kind), sig)
    assert len(rows) == 300 and rows[0]["pixels"].shape == (1, 64)
    np.testing.assert_allclose(rows[7]["pixels"][0], np.load(digits["root"] / "rep.npy")[7], atol=1e-6)
    int8 = convert(digits["saved"], "int8", representative=str(digits["root"] / kind))
    assert int8 == digits["files"]["int8"]  # the same calibration rows give the same model


def test_cli_converts_into_the_version_directory(digits: dict[str, Any], tmp_path: Any) -> None:
    version = tmp_path / "1"
    shutil.copytree(digits["saved"], version)
    out = subprocess.run([*TFPROD, "convert", str(version), "--quantize", "int8", "--representative",
                          str(digits["root"] / "rep.tfrecord")], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert "model.tflite" in out.stdout and (version / "model.tflite").stat().st_size > 0
    missing = subprocess.run([*TFPROD, "convert", str(version), "--quantize", "int8"], capture_output=True,
                             text=True, timeout=300)
    assert missing.returncode == 1 and "--representative" in missing.stderr and "Traceback" not in missing.stderr


def test_an_op_without_an_int8_kernel_gets_a_clear_error(tmp_path: Any) -> None:
    class Sine(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None, 4], tf.float32, name="x")])
        def predict(self, x: tf.Tensor) -> dict[str, tf.Tensor]:
            return {"y": tf.math.sin(x) * 2.0}

    module = Sine()
    tf.saved_model.save(module, str(tmp_path / "sine"), signatures={"serving_default": module.predict})
    np.save(tmp_path / "rep.npy", np.random.default_rng(0).random((20, 4), np.float32))
    with pytest.raises(ConversionError) as info:  # TFLite has no int8 SIN: the converter leaves it in float
        convert(str(tmp_path / "sine"), "int8", representative=str(tmp_path / "rep.npy"))
    assert "SIN" in str(info.value) and "--quantize dynamic" in str(info.value)
    assert len(convert(str(tmp_path / "sine"), "dynamic")) > 0  # the suggestion works


def test_conversion_errors_name_the_problem(digits: dict[str, Any], tmp_path: Any) -> None:
    np.save(tmp_path / "wrong.npy", np.zeros((5, 3), np.float32))
    with pytest.raises(ConversionError, match="expects"):
        convert(digits["saved"], "int8", representative=str(tmp_path / "wrong.npy"))
    with pytest.raises(ConversionError, match="npz"):
        convert(digits["saved"], "int8", representative=str(tmp_path / "data.txt"))
    with pytest.raises(ConversionError, match="io_type"):
        convert(digits["saved"], "dynamic", io_type="int8")
    assert os.path.isdir(digits["saved"])


def test_report_measures_and_gives_verdicts(digits: dict[str, Any], tmp_path: Any) -> None:
    np.save(tmp_path / "eval.npy", digits["x"])
    np.save(tmp_path / "labels.npy", digits["y"])
    out = subprocess.run([*TFPROD, "convert", digits["saved"], "--quantize", "dynamic,float16,int8",
                          "--representative", str(digits["root"] / "rep.npy"), "--eval", str(tmp_path / "eval.npy"),
                          "--labels", str(tmp_path / "labels.npy"), "--report", str(tmp_path / "report")],
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    verdicts = [line for line in out.stdout.splitlines() if line.startswith(("dynamic", "float16", "int8"))]
    assert len(verdicts) == 3, out.stdout
    for line in verdicts:
        assert "size -60-75%:" in line and "speed 2-3x:" in line and "accuracy loss < 1 point:" in line, line
    report = (tmp_path / "report" / "report.md").read_text()
    assert (tmp_path / "report" / "report.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    table = {cells[0]: cells for cells in (
        [c.strip() for c in line.strip("|").split("|")] for line in report.splitlines() if line.startswith("| "))}
    for mode in ("none", "dynamic", "float16", "int8"):
        flatbuffer = (tmp_path / "report" / f"model_{mode}.tflite").read_bytes()
        assert table[mode][1] == f"{len(flatbuffer):,}"  # the size reported is the file's
        got = litert(flatbuffer, digits["x"])  # agreement and accuracy, measured again here
        assert table[mode][7] == f"{(got.argmax(1) == digits['expected'].argmax(1)).mean():.2%}"
        assert table[mode][8] == f"{(got.argmax(1) == digits['y']).mean():.2%}"
    assert table["SavedModel (TF)"][8] == f"{(digits['expected'].argmax(1) == digits['y']).mean():.2%}"


def test_cnn_int8_targets(tmp_path: Any) -> None:
    """A CNN with over 100k parameters: int8 is at most 30% of the float32 file, agrees with the
    SavedModel on at least 99% of held-out digits and loses at most one accuracy point."""
    x, y = load_digits(return_X_y=True)
    x = (x / 16.0).astype(np.float32).reshape(-1, 8, 8, 1)
    tf.keras.utils.set_random_seed(1)
    model = tf.keras.Sequential([
        tf.keras.Input((8, 8, 1), name="image"),
        tf.keras.layers.Conv2D(32, 3, padding="same", activation="relu"),
        tf.keras.layers.Conv2D(64, 3, padding="same", activation="relu"),
        tf.keras.layers.Flatten(),
        tf.keras.layers.Dense(32, activation="relu"),
        tf.keras.layers.Dense(10, activation="softmax"),
    ])
    assert model.count_params() >= 100_000
    model.compile("adam", "sparse_categorical_crossentropy")
    model.fit(x[:1400], y[:1400], epochs=4, batch_size=64, verbose=0)
    saved = str(tmp_path / "cnn")
    model.export(saved, verbose=False)
    np.save(tmp_path / "rep.npy", x[:300])
    float32 = convert(saved, "none")
    int8 = convert(saved, "int8", representative=str(tmp_path / "rep.npy"))
    assert len(int8) <= 0.30 * len(float32), (len(int8), len(float32))
    held_out = x[1400:]
    expected = model.predict(held_out, verbose=0)
    runner = Interpreter(model_content=int8).get_signature_runner("serving_default")
    got = np.concatenate([next(iter(runner(image=held_out[i:i + 1]).values())) for i in range(len(held_out))])
    assert (got.argmax(1) == expected.argmax(1)).mean() >= 0.99  # measured: 100%, int8 26% of float32
    loss = (expected.argmax(1) == y[1400:]).mean() - (got.argmax(1) == y[1400:]).mean()
    assert loss <= 0.01, loss


def test_inspect_reads_a_tflite_only_version(lite_server: ServerProcess, digits: dict[str, Any]) -> None:
    version = digits["root"] / "served" / "int8_io" / "1"
    out = subprocess.run([*TFPROD, "inspect", str(version.parent), "--json"], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    assert doc["tflite_bytes"] == len(digits["files"]["int8_io"])
    graph = doc["meta_graphs"][0]
    assert graph["graph_scan"] is None
    assert graph["signatures"]["serving_default"]["inputs"]["pixels"] == {"dtype": "DT_FLOAT", "shape": [-1, 64]}
