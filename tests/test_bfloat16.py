"""A model whose signature takes and returns DT_BFLOAT16, through REST v1 JSON, gRPC TensorProto
and V2 binary tensors, checked against TensorFlow calling the same SavedModel."""

from __future__ import annotations

import json
import os
from typing import Any

import grpc
import ml_dtypes
import numpy as np
import pytest
import tensorflow as tf
from conftest import ServerProcess
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

XS = [1.5, -2.25, 3.0e38, 0.1]


class Bf16(tf.Module):
    @tf.function(input_signature=[tf.TensorSpec([None], tf.bfloat16, name="x")])
    def predict(self, x: tf.Tensor) -> dict[str, tf.Tensor]:
        return {"y": x * tf.constant(0.5, tf.bfloat16), "y32": tf.cast(x, tf.float32) + 1.0}


@pytest.fixture(scope="module")
def bf16(start_server: Any, tmp_path_factory: pytest.TempPathFactory) -> tuple[ServerProcess, dict[str, np.ndarray]]:
    root = tmp_path_factory.mktemp("bf16")
    module = Bf16()
    path = os.path.join(root, "bf16", "1")
    tf.saved_model.save(module, path, signatures={"serving_default": module.predict})
    loaded = tf.saved_model.load(path).signatures["serving_default"]
    expected = {k: v.numpy() for k, v in loaded(x=tf.constant(XS, tf.bfloat16)).items()}
    server = start_server([f"--model_base_path={os.path.dirname(path)}", "--model_name=bf16"])
    return server, expected


def test_rest_json(bf16: tuple[ServerProcess, dict[str, np.ndarray]]) -> None:
    server, expected = bf16
    r = server.client.post("/v1/models/bf16:predict", content=json.dumps({"instances": XS}))
    assert r.status_code == 200, r.text
    rows = r.json()["predictions"]
    # JSON carries the float32 value of each bfloat16 (shortest text that reads back as that float32)
    assert np.array([row["y"] for row in rows], np.float32).tolist() == expected["y"].astype(np.float32).tolist()
    assert np.array([row["y32"] for row in rows], np.float32).tolist() == expected["y32"].tolist()
    metadata = server.client.get("/v1/models/bf16/metadata").json()
    assert metadata["metadata"]["signature_def"]["signature_def"]["serving_default"]["inputs"]["x"]["dtype"] == \
        "DT_BFLOAT16"
    bad = server.client.post("/v1/models/bf16:predict", content=json.dumps({"instances": ["a"]}))
    assert bad.status_code == 400 and "DT_BFLOAT16" in bad.json()["error"]


def test_grpc_tensor_proto(bf16: tuple[ServerProcess, dict[str, np.ndarray]]) -> None:
    server, expected = bf16
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "bf16"
    request.inputs["x"].CopyFrom(tf.make_tensor_proto(np.array(XS, ml_dtypes.bfloat16)))
    with grpc.insecure_channel(server.grpc_target) as channel:
        response = prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict(request, timeout=30)
    y = tf.make_ndarray(response.outputs["y"])
    assert response.outputs["y"].dtype == tf.bfloat16.as_datatype_enum
    assert y.astype(np.float32).tolist() == expected["y"].astype(np.float32).tolist()


def test_v2_binary(bf16: tuple[ServerProcess, dict[str, np.ndarray]]) -> None:
    import tritonclient.http as triton

    server, expected = bf16
    client = triton.InferenceServerClient(server.url.removeprefix("http://"))
    tensor = triton.InferInput("x", [len(XS)], "BF16")
    tensor.set_data_from_numpy(np.array(XS, ml_dtypes.bfloat16), binary_data=True)
    result = client.infer("bf16", [tensor], outputs=[triton.InferRequestedOutput("y", binary_data=True)])
    assert result.as_numpy("y").astype(np.float32).tolist() == expected["y"].astype(np.float32).tolist()
    client.close()
