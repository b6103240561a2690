"""`--log_format=json` and `--access_log` on a real server: every line the server's Python side
writes is one JSON object, lifecycle lines name their model and version, access lines their
request."""

from __future__ import annotations

import json

import grpc
import numpy as np
import tensorflow as tf
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc


def _objects(log: str) -> list[dict]:  # type: ignore[type-arg]
    # TensorFlow's C++ side writes its own lines (absl) to stderr; the server's own are JSON
    return [json.loads(line) for line in log.splitlines() if line.startswith("{")]


def test_json_logs_and_access_lines(start_server, model_dir: str) -> None:  # type: ignore[no-untyped-def]
    server = start_server(["--model_name=hpt", f"--model_base_path={model_dir}/half_plus_two", "--log_format=json",
                           "--access_log"])
    r = server.client.post("/v1/models/hpt:predict", json={"instances": [1.0]}, headers={"x-request-id": "abc-123"})
    assert r.status_code == 200
    assert server.client.post("/v1/models/nope:predict", json={"instances": [1.0]}).status_code == 404
    with grpc.insecure_channel(server.grpc_target) as channel:
        request = predict_pb2.PredictRequest()
        request.model_spec.name = "hpt"
        request.inputs["x"].CopyFrom(tf.make_tensor_proto(np.array([1.0], np.float32)))
        prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict(request, metadata=(("x-request-id", "g-7"),))

    def access() -> list[dict]:  # type: ignore[type-arg]
        return [o for o in _objects(server.log()) if o["logger"] == "tfprod.access"]
    server.wait_until(lambda: len(access()) >= 3, 10, "three access lines")
    objects = _objects(server.log())
    ours = [line for line in server.log().splitlines() if " tfprod." in line and not line.startswith("{")]
    assert not ours, ours  # no text line from tfprod's loggers
    assert all({"time", "level", "logger", "message"} <= set(o) for o in objects)
    loaded = [o for o in objects if o["logger"] == "tfprod.manager" and o["message"].startswith("loaded")]
    assert loaded and all(o["model"] == "hpt" and isinstance(o["version"], int) for o in loaded)
    lines = {o.get("request_id"): o for o in access()}
    assert lines["abc-123"]["protocol"] == "REST" and lines["abc-123"]["api"] == "Predict"
    assert lines["abc-123"]["status"] == "OK" and lines["abc-123"]["model"] == "hpt"
    assert lines["g-7"]["protocol"] == "GRPC" and lines["g-7"]["status"] == "OK"
    assert any(o["status"] == "NOT_FOUND" and o["model"] == "nope" for o in access())
    # off by default
    quiet = start_server(["--model_name=hpt", f"--model_base_path={model_dir}/half_plus_two"])
    assert quiet.client.post("/v1/models/hpt:predict", json={"instances": [1.0]}).status_code == 200
    assert "tfprod.access" not in quiet.log() and "loaded hpt version" in quiet.log()
