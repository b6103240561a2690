"""TF Serving's REST API against a real server, answers checked against TensorFlow directly."""

from __future__ import annotations

import base64
import gzip
import json
import os
from typing import Any

import numpy as np
import pytest
import tensorflow as tf
from conftest import ServerProcess
from google.protobuf import json_format
from tensorflow.core.protobuf import saved_model_pb2


@pytest.fixture(scope="module")
def server(model_dir: str, start_server: Any, tmp_path_factory: pytest.TempPathFactory) -> ServerProcess:
    cfg = tmp_path_factory.mktemp("rest")
    models = "\n".join(
        f'config {{ name: "{name}" base_path: "{os.path.join(model_dir, name)}" model_platform: "tensorflow" }}'
        for name in ("half_plus_two", "multi_io", "digits")
    )
    (cfg / "models.config").write_text(f"model_config_list {{ {models} }}")
    (cfg / "monitoring.config").write_text('prometheus_config { enable: true path: "/monitoring/prometheus/metrics" }')
    return start_server([f"--model_config_file={cfg / 'models.config'}",
                         f"--monitoring_config_file={cfg / 'monitoring.config'}"])


@pytest.fixture(scope="module")
def tf_models(model_dir: str) -> dict[str, Any]:
    """The same SavedModels loaded in this process: the reference answers."""
    return {name: tf.saved_model.load(os.path.join(model_dir, name, "1"))
            for name in ("half_plus_two", "multi_io", "digits")}


def post(server: ServerProcess, path: str, doc: Any, status: int = 200) -> Any:
    r = server.client.post(path, content=json.dumps(doc))
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/json")
    return r.json()


def test_predict_rows_and_columns_match_tensorflow(server: ServerProcess, tf_models: dict[str, Any]) -> None:
    x = [1.0, 2.0, 5.0, -3.25]
    want = tf_models["half_plus_two"].signatures["serving_default"](x=tf.constant(x))["y"].numpy().tolist()
    assert post(server, "/v1/models/half_plus_two:predict", {"instances": x}) == {"predictions": want}
    assert post(server, "/v1/models/half_plus_two/versions/1:predict", {"inputs": x}) == {"outputs": want}
    assert post(server, "/v1/models/half_plus_two:predict", {"inputs": {"x": x}}) == {"outputs": want}
    assert want == [2.5, 3.0, 4.5, 0.375]


def test_shapes_are_the_graphs_to_judge(server: ServerProcess, tf_models: dict[str, Any]) -> None:
    """TF Serving never compares a fed shape with the signature's: y = a*x + b over x declared [-1]
    runs on [2, 1] as TensorFlow's graph runs it."""
    x = np.array([[1.0], [-3.25]], np.float32)
    module = tf_models["half_plus_two"]
    want = tf.add(tf.multiply(module.a, x), module.b).numpy().tolist()  # the graph's two ops, on [2, 1]
    assert want == [[2.5], [0.375]]
    assert post(server, "/v1/models/half_plus_two:predict", {"instances": x.tolist()}) == {"predictions": want}


def test_digits_predictions_match_tensorflow(server: ServerProcess, tf_models: dict[str, Any]) -> None:
    from sklearn.datasets import load_digits

    rows = (load_digits().data[:16] / 16.0).astype(np.float32)
    want = tf_models["digits"].signatures["serving_default"](pixels=tf.constant(rows))["output_0"].numpy()
    got = np.array(post(server, "/v1/models/digits:predict", {"instances": rows.tolist()})["predictions"])
    assert got.shape == (16, 10)
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)
    assert (got.argmax(1) == want.argmax(1)).all()


def test_multiple_named_inputs_outputs_strings(server: ServerProcess, tf_models: dict[str, Any]) -> None:
    a = [[1.5, 2.0], [0.25, -1.0]]
    b = [2**40 + 1, -7]
    text = [b"hello", b"\x00\xffbin"]
    ref = {k: v.numpy() for k, v in tf_models["multi_io"].signatures["serving_default"](
        a=tf.constant(a), b=tf.constant(b, tf.int64), text=tf.constant(text)).items()}
    instances = [{"a": a[i], "b": b[i], "text": {"b64": base64.b64encode(text[i]).decode()}} for i in range(2)]
    rows = post(server, "/v1/models/multi_io:predict", {"instances": instances})["predictions"]
    # float32 is written in its shortest round-trip form: equal once read back as float32
    assert np.array([r["total"] for r in rows], np.float32).tolist() == ref["total"].tolist()
    assert [r["doubled"] for r in rows] == ref["doubled"].tolist() == [2**41 + 2, -14]  # int64 exact
    assert [r["length"] for r in rows] == ref["length"].tolist()
    assert [base64.b64decode(r["echo_bytes"]["b64"]) for r in rows] == text  # *_bytes -> b64
    assert rows[0]["upper"] == "HELLO"
    cols = post(server, "/v1/models/multi_io:predict", {"inputs": {"a": a, "b": b, "text": ["x", "yz"]}})["outputs"]
    assert set(cols) == {"total", "doubled", "length", "upper", "echo_bytes"}
    assert cols["length"] == [1, 2]
    scaled = post(server, "/v1/models/multi_io:predict", {"signature_name": "scale", "instances": [[1, 2, 3]]})
    assert scaled == {"predictions": [[10.0, 20.0, 30.0]]}


def test_classify_and_regress(server: ServerProcess) -> None:
    doc = {"signature_name": "classify_x_to_y", "examples": [{"x": 1.0}, {"x": 3.5}]}
    assert post(server, "/v1/models/half_plus_two:classify", doc) == {"results": [[["", 2.5]], [["", 3.75]]]}
    doc = {"signature_name": "regress_x_to_y", "examples": [{"x": 1.0}, {"x": -2.0}]}
    assert post(server, "/v1/models/half_plus_two:regress", doc) == {"results": [2.5, 1.0]}
    doc = {"signature_name": "regress_x2_to_y", "context": {"x2": 4.0}, "examples": [{"x": 1.0}]}
    assert post(server, "/v1/models/half_plus_two:regress", doc) == {"results": [4.0]}
    bad = post(server, "/v1/models/half_plus_two:regress",
               {"signature_name": "regress_x_to_y", "examples": [{"x": 3}]}, 400)
    assert "Data types don't match" in bad["error"]  # an int64 feature where the model parses float


def test_status_json_is_tf_servings(server: ServerProcess) -> None:
    want = {"model_version_status": [
        {"version": "1", "state": "AVAILABLE", "status": {"error_code": "OK", "error_message": ""}}]}
    assert server.client.get("/v1/models/half_plus_two").json() == want
    assert server.client.get("/v1/models/half_plus_two/versions/1").json() == want
    r = server.client.get("/v1/models/half_plus_two/versions/7")
    assert (r.status_code, r.json()) == (404, {"error": "Could not find version 7 of model half_plus_two"})
    r = server.client.get("/v1/models/nope")
    assert (r.status_code, r.json()) == (404, {"error": "Could not find any versions of model nope"})


def test_metadata_is_the_saved_models_signature_defs(server: ServerProcess, model_dir: str) -> None:
    body = server.client.get("/v1/models/multi_io/metadata").json()
    assert body["model_spec"] == {"name": "multi_io", "signature_name": "", "version": "1"}
    saved = saved_model_pb2.SavedModel()
    with open(os.path.join(model_dir, "multi_io", "1", "saved_model.pb"), "rb") as f:
        saved.ParseFromString(f.read())
    want = {name: json_format.MessageToDict(sig, always_print_fields_with_no_presence=True,
                                            preserving_proto_field_name=True)
            for name, sig in saved.meta_graphs[0].signature_def.items()}
    got = body["metadata"]["signature_def"]["signature_def"]
    assert got == want
    a = got["serving_default"]["inputs"]["a"]
    assert a["dtype"] == "DT_FLOAT"
    assert a["tensor_shape"] == {"dim": [{"size": "-1", "name": ""}, {"size": "2", "name": ""}],
                                 "unknown_rank": False}
    assert got["serving_default"]["method_name"] == "tensorflow/serving/predict"
    assert server.client.get("/v1/models/multi_io/versions/1/metadata").json() == body


def test_list_models_and_health(server: ServerProcess) -> None:
    models = {m["name"]: m for m in server.client.get("/v1/models").json()["models"]}
    assert set(models) == {"half_plus_two", "multi_io", "digits"}
    assert models["digits"]["model_version_status"][0]["state"] == "AVAILABLE"
    assert server.client.get("/healthz").status_code == 200
    assert server.client.get("/readyz").json() == {"status": "ready"}


@pytest.mark.parametrize(("method", "path", "doc", "status", "message"), [
    pytest.param("POST", "/v1/models/nope:predict", {"instances": [1.0]}, 404,
                 "Servable not found for request: Latest(nope)", id="unknown-model"),
    pytest.param("POST", "/v1/models/half_plus_two/versions/9:predict", {"instances": [1.0]}, 404,
                 "Servable not found for request: Specific(half_plus_two, 9)", id="unknown-version"),
    pytest.param("POST", "/v1/models/half_plus_two/labels/canary:predict", {"instances": [1.0]}, 400,
                 "Unrecognized servable version label: canary", id="unknown-label"),
    pytest.param("POST", "/v1/models/half_plus_two:predict", {"signature_name": "nope", "instances": [1.0]}, 400,
                 'Serving signature name: "nope" not found in signature def', id="unknown-signature"),
    pytest.param("POST", "/v1/models/digits:predict", {"instances": [[0.0] * 63]}, 400,
                 "Matrix size-incompatible: In[0]: [1,63], In[1]: [64,32]", id="wrong-width-tf-says"),
    pytest.param("POST", "/v1/models/half_plus_two:classify", {"examples": [{"x": 1.0}]}, 400,
                 "No classification inputs found", id="classify-on-predict-signature"),
    pytest.param("GET", "/v1/models/half_plus_two:predict", None, 400,
                 "Malformed request: GET /v1/models/half_plus_two:predict", id="get-on-predict"),
    pytest.param("POST", "/v1/models/half_plus_two/metadata", {}, 400, "Malformed request", id="post-on-metadata"),
    pytest.param("POST", "/v1/models/half_plus_two:explain", {}, 400, "Malformed request", id="unknown-verb"),
    pytest.param("GET", "/v1/models/half_plus_two/versions/99999999999999999999", None, 400,
                 "Failed to convert version", id="version-overflow"),
    pytest.param("GET", "/nothing/here", None, 404, "Malformed request: GET /nothing/here", id="unknown-path"),
])
def test_errors_are_tf_servings(server: ServerProcess, method: str, path: str, doc: Any, status: int,
                                message: str) -> None:
    r = server.client.request(method, path, content=None if doc is None else json.dumps(doc))
    assert r.status_code == status, r.text
    assert message in r.json()["error"]
    assert post(server, "/v1/models/half_plus_two:predict", {"instances": [1.0]}) == {"predictions": [2.5]}


def test_paths_are_case_insensitive_and_names_are_url_decoded(server: ServerProcess) -> None:
    assert post(server, "/V1/Models/half_plus_two:PREDICT", {"instances": [2.0]}) == {"predictions": [3.0]}
    assert post(server, "/v1/models/half%5Fplus%5Ftwo:predict", {"instances": [2.0]}) == {"predictions": [3.0]}


def test_gzip_body_and_non_finite_numbers(server: ServerProcess) -> None:
    body = gzip.compress(json.dumps({"instances": [4.0]}).encode())
    r = server.client.post("/v1/models/half_plus_two:predict", content=body, headers={"Content-Encoding": "gzip"})
    assert r.json() == {"predictions": [4.0]}
    r = server.client.post("/v1/models/half_plus_two:predict", content=b'{"instances": [NaN, Infinity, -Infinity]}')
    assert r.status_code == 200
    assert r.text == '{"predictions":[NaN,Infinity,-Infinity]}'


def test_prometheus_metrics_under_tf_serving_names(server: ServerProcess) -> None:
    post(server, "/v1/models/half_plus_two:predict", {"instances": [1.0]})
    post(server, "/v1/models/half_plus_two:predict", {"instances": ["bad"]}, 400)
    text = server.client.get("/monitoring/prometheus/metrics").text
    lines = text.splitlines()

    def value(prefix: str) -> float:
        matches = [float(line.rsplit(" ", 1)[1]) for line in lines if line.startswith(prefix)]
        assert matches, f"{prefix} not in metrics:\n{text}"
        return matches[0]

    ok = value(':tensorflow:serving:request_count{model_name="half_plus_two",status="OK"}')
    bad = value(':tensorflow:serving:request_count{model_name="half_plus_two",status="INVALID_ARGUMENT"}')
    assert ok >= 1 and bad >= 1
    latency = ':tensorflow:serving:request_latency_count{API="Predict",entrypoint="REST",model_name="half_plus_two"}'
    assert value(latency) >= 1
    assert any(line.startswith(":tensorflow:serving:request_latency_bucket{") for line in lines)
    assert value(':tfprod:serving:model_version_state{model_name="digits",version="1"}') == 30
    post(server, "/v1/models/half_plus_two:predict", {"instances": [1.0]})
    text = server.client.get("/monitoring/prometheus/metrics").text
    lines = text.splitlines()
    assert value(':tensorflow:serving:request_count{model_name="half_plus_two",status="OK"}') == ok + 1
