"""tfprod.export and `tfprod inspect` on real models: Keras (the digits MLP, a small CNN, a
multi-input model) and a tf.Module; served by a real server; converted to TFLite."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any

import numpy as np
import pytest
import tensorflow as tf
from conftest import ServerProcess
from sklearn.datasets import load_digits

from tfprod.export import ExportError, data_fingerprint, read_metadata, save

AUDIT = {"owner": "risk-team", "approval_id": "CR-2026-114", "source_revision": "9f1c2e7",
         "training_params": {"epochs": 2, "batch_size": 64}, "metrics": {"accuracy": 0.9}}


@pytest.fixture(scope="module")
def digits() -> tuple[np.ndarray, np.ndarray]:
    x, y = load_digits(return_X_y=True)
    return (x / 16.0).astype(np.float32), y


def mlp() -> tf.keras.Model:
    tf.keras.utils.set_random_seed(0)
    return tf.keras.Sequential([tf.keras.Input((64,), name="pixels"), tf.keras.layers.Dense(16, activation="relu"),
                                tf.keras.layers.Dense(10, activation="softmax")])


def cnn() -> tf.keras.Model:
    tf.keras.utils.set_random_seed(0)
    return tf.keras.Sequential([tf.keras.Input((8, 8, 1), name="image"),
                                tf.keras.layers.Conv2D(4, 3, activation="relu"),
                                tf.keras.layers.Flatten(), tf.keras.layers.Dense(10, activation="softmax")])


def two_inputs() -> tf.keras.Model:
    a, b = tf.keras.Input((3,), name="a"), tf.keras.Input((2,), name="b")
    out = tf.keras.layers.Dense(1)(tf.keras.layers.Concatenate()([a, b]))
    return tf.keras.Model({"a": a, "b": b}, out)


class Scaler(tf.Module):
    def __init__(self) -> None:
        self.scale = tf.Variable(3.0)

    @tf.function
    def scaled(self, x: tf.Tensor) -> dict[str, tf.Tensor]:
        return {"y": self.scale * x}


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory, digits: tuple[np.ndarray, np.ndarray]) -> dict[str, Any]:
    x, y = digits
    model = mlp()
    model.compile("adam", "sparse_categorical_crossentropy")
    model.fit(x, y, epochs=2, verbose=0)
    root = tmp_path_factory.mktemp("export")
    audit = {**AUDIT, "training_data_sha256": data_fingerprint(x, y)}
    scaler = Scaler()
    return {
        "root": str(root), "mlp": model, "x": x,
        "digits": save(model, str(root / "digits"), metadata=audit),
        "cnn": save(cnn(), str(root / "cnn")),
        "two": save(two_inputs(), str(root / "two")),
        "module": save(scaler, str(root / "module"), signatures={
            "serving_default": (scaler.scaled, [tf.TensorSpec([None], tf.float32, name="x")])}),
        "audit": audit,
    }


def test_versions_are_numbered_and_carry_validated_metadata(exported: dict[str, Any]) -> None:
    assert exported["digits"].endswith(os.path.join("digits", "1"))
    meta = read_metadata(exported["digits"])
    assert meta is not None
    assert {k: meta[k] for k in exported["audit"]} == exported["audit"]
    assert meta["tensorflow_version"] == tf.__version__ and meta["created_at"].endswith("+00:00")
    assert not [d for d in os.listdir(os.path.dirname(exported["digits"])) if d.startswith(".")]  # no staging left


@pytest.mark.parametrize(("metadata", "where"), [
    ({"metrics": {"accuracy": "high"}}, "metrics/accuracy"),
    ({"training_data_sha256": "not-a-hash"}, "training_data_sha256"),
    ({"owner": ""}, "owner"),
])
def test_invalid_metadata_writes_nothing(tmp_path: Any, metadata: dict[str, Any], where: str) -> None:
    with pytest.raises(ExportError, match=f"audit metadata is invalid at {where}"):
        save(mlp(), str(tmp_path / "m"), metadata=metadata)
    assert not os.path.exists(tmp_path / "m" / "1")


def test_an_existing_version_is_never_overwritten(exported: dict[str, Any]) -> None:
    with pytest.raises(ExportError, match="versions are immutable"):
        save(mlp(), os.path.dirname(exported["digits"]), version=1)


def test_signatures_match_the_models(exported: dict[str, Any]) -> None:
    for name, want in (("digits", {"pixels"}), ("cnn", {"image"}), ("two", {"a", "b"}), ("module", {"x"})):
        sig = tf.saved_model.load(exported[name]).signatures["serving_default"]
        assert set(sig.structured_input_signature[1]) == want, name


def test_served_answers_and_rest_metadata_carry_the_audit(exported: dict[str, Any], start_server: Any) -> None:
    root = exported["root"]
    config = os.path.join(root, "models.config")
    with open(config, "w") as f:
        f.write("model_config_list {\n" + "".join(
            f'  config {{ name: "{m}" base_path: "{root}/{m}" model_platform: "tensorflow" }}\n'
            for m in ("digits", "cnn", "two", "module")) + "}\n")
    server: ServerProcess = start_server([f"--model_config_file={config}"])
    x = exported["x"][:3]
    r = server.client.post("/v1/models/digits:predict", json={"instances": x.tolist()})
    assert r.status_code == 200, r.text
    np.testing.assert_allclose(r.json()["predictions"], exported["mlp"](x).numpy(), rtol=1e-5)
    r = server.client.post("/v1/models/module:predict", json={"instances": [1.0, 2.0]})
    assert r.json() == {"predictions": [3.0, 6.0]}
    r = server.client.post("/v1/models/two:predict", json={"instances": [{"a": [1, 2, 3], "b": [4, 5]}]})
    assert r.status_code == 200, r.text
    meta = server.client.get("/v1/models/digits/metadata").json()["metadata"]
    assert meta["audit"]["approval_id"] == "CR-2026-114"
    assert "serving_default" in meta["signature_def"]["signature_def"]
    assert "audit" in server.client.get("/v1/models/cnn/metadata").json()["metadata"]  # exported without extras


def test_inspect_json_and_tables(exported: dict[str, Any]) -> None:
    result = subprocess.run([sys.executable, "-m", "tfprod", "inspect", "--json", os.path.dirname(exported["digits"])],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)
    sig = doc["meta_graphs"][0]["signatures"]["serving_default"]
    assert sig["inputs"]["pixels"] == {"dtype": "DT_FLOAT", "shape": [-1, 64]}
    assert sig["method_name"] == "tensorflow/serving/predict"
    assert doc["audit"]["owner"] == "risk-team"
    assert any(f["path"] == "saved_model.pb" and f["bytes"] > 0 for f in doc["files"])
    tables = subprocess.run([sys.executable, "-m", "tfprod", "inspect", exported["two"]], capture_output=True,
                            text=True, timeout=120)
    assert tables.returncode == 0 and "serving_default" in tables.stdout and "audit metadata" in tables.stdout
    missing = subprocess.run([sys.executable, "-m", "tfprod", "inspect", "/does/not/exist"], capture_output=True,
                             text=True, timeout=120)
    assert missing.returncode != 0 and "Traceback" not in missing.stderr and "error" in missing.stderr


@pytest.mark.parametrize("mode", ["float32", "int8"])
def test_exported_keras_models_convert_to_tflite(exported: dict[str, Any], mode: str) -> None:
    converter = tf.lite.TFLiteConverter.from_saved_model(exported["digits"])
    if mode == "int8":
        rows = exported["x"][:100]
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = lambda: ([rows[i:i + 1]] for i in range(len(rows)))
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    flatbuffer = converter.convert()
    assert len(flatbuffer) > 1000


def test_a_policy_refuses_versions_without_required_metadata(exported: dict[str, Any], start_server: Any,
                                                            tmp_path: Any) -> None:
    """--required_metadata_fields: the digits version (approval_id set) serves; the cnn version
    (exported without one) ends in END with the reason, and the server says what it waits for."""
    root = exported["root"]
    config = tmp_path / "models.config"
    config.write_text("model_config_list {\n" + "".join(
        f'  config {{ name: "{m}" base_path: "{root}/{m}" model_platform: "tensorflow" }}\n'
        for m in ("digits", "cnn")) + "}\n")
    server: ServerProcess = start_server([f"--model_config_file={config}", "--max_num_load_retries=0",
                                          "--required_metadata_fields=owner,approval_id"], wait=False)
    server.wait_until(lambda: server.client.get("/v1/models/cnn").json().get("model_version_status", [{}])[0]
                      .get("state") == "END", 90, "the cnn version to be refused")
    status = server.client.get("/v1/models/cnn").json()["model_version_status"][0]["status"]
    assert status["error_code"] == "FAILED_PRECONDITION"
    assert "lacks required audit metadata: owner, approval_id" in status["error_message"]
    server.wait_until(lambda: server.client.get("/v1/models/digits").json()["model_version_status"][0]["state"]
                      == "AVAILABLE", 60, "digits")
    assert server.client.get("/readyz").json()["waiting_for"] == ["cnn"]


def test_classify_and_regress_signatures_over_examples(tmp_path: Any, start_server: Any,
                                                       exported: dict[str, Any]) -> None:
    from tfprod.export import ExampleSignature

    model = exported["mlp"]
    features = {"pixels": tf.io.FixedLenFeature([64], tf.float32)}

    def classify(parsed: dict[str, Any]) -> dict[str, Any]:
        scores = model(parsed["pixels"])
        classes = tf.tile(tf.as_string(tf.range(10))[None, :], [tf.shape(scores)[0], 1])
        return {"classes": classes, "scores": scores}

    def regress(parsed: dict[str, Any]) -> dict[str, Any]:
        return {"outputs": tf.cast(tf.argmax(model(parsed["pixels"]), axis=1), tf.float32)}

    path = save(model, str(tmp_path / "digits"), signatures={
        "classify": ExampleSignature("classify", features, classify),
        "regress": ExampleSignature("regress", features, regress)})
    server: ServerProcess = start_server([f"--model_base_path={os.path.dirname(path)}", "--model_name=d",
                                          "--enable_signature_method_name_check"])
    x = exported["x"][:2]
    want = model(x).numpy()
    examples = [{"pixels": row.tolist()} for row in x]
    r = server.client.post("/v1/models/d:classify", json={"signature_name": "classify", "examples": examples})
    assert r.status_code == 200, r.text
    results = r.json()["results"]
    assert [label for label, _ in results[0]] == [str(i) for i in range(10)]
    np.testing.assert_allclose([[score for _, score in row] for row in results], want, rtol=1e-5)
    r = server.client.post("/v1/models/d:regress", json={"signature_name": "regress", "examples": examples})
    assert r.json() == {"results": [float(v) for v in want.argmax(axis=1)]}
    r = server.client.post("/v1/models/d:predict", json={"instances": x.tolist()})  # serving_default added
    np.testing.assert_allclose(r.json()["predictions"], want, rtol=1e-5)
