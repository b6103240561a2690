"""tfprod as a KServe runtime (deploy/kserve): the runtime's container is validated strictly as a
Kubernetes Container, and run here as KServe would run it (its arguments, the model's name for
`{{.Name}}`, a base path for /mnt/models): its probes' paths answer, and one model answers on
TF Serving's v1 REST, V2 REST and gRPC, and on the metrics path the runtime announces.

KServe's CRD schemas are not packaged on PyPI, npm or Debian; the KServe fields are checked
against the values KServe documents (model formats, protocol versions, the h2c port name)."""

from __future__ import annotations

import json
import os
import time
from typing import Any

import grpc
import httpx
import kubernetes_validate
import numpy as np
import tensorflow as tf
import yaml
from conftest import ServerProcess
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

from tfprod.cli import serve_parser

ROOT = os.path.join(os.path.dirname(__file__), "..")
KSERVE = os.path.join(ROOT, "deploy", "kserve")
PROTOCOLS = {"v1", "v2", "grpc-v1", "grpc-v2"}  # KServe's protocolVersion values


def _docs(name: str) -> list[dict[str, Any]]:
    with open(os.path.join(KSERVE, name)) as f:
        return [d for d in yaml.safe_load_all(f) if d]


def test_the_runtime_and_inference_services_are_what_kserve_reads() -> None:
    (runtime,) = _docs("cluster-serving-runtime.yaml")
    assert (runtime["apiVersion"], runtime["kind"]) == ("serving.kserve.io/v1alpha1", "ClusterServingRuntime")
    spec = runtime["spec"]
    assert set(spec) == {"annotations", "supportedModelFormats", "protocolVersions", "containers"}
    formats = spec["supportedModelFormats"]
    assert {(f["name"], f["version"]) for f in formats} == {("tensorflow", "1"), ("tensorflow", "2")}
    assert all(set(f) <= {"name", "version", "autoSelect", "priority"} and f["priority"] == 3 for f in formats)
    assert set(spec["protocolVersions"]) == PROTOCOLS
    (container,) = spec["containers"]
    assert container["name"] == "kserve-container"
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "runtime"}, "spec": {"containers": [container]}}
    for version in ("1.25.0", "1.37.0"):
        kubernetes_validate.validate(pod, version, strict=True)
    args = serve_parser().parse_args([a.replace("{{.Name}}", "digits") for a in container["args"]])
    assert (args.model_name, args.model_base_path) == ("digits", "/mnt/models")  # KServe's storage convention
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"  # not KServe's default TCP probe
    assert spec["annotations"]["prometheus.kserve.io/port"] == str(args.rest_api_port)
    services = _docs("inferenceservices.yaml")
    assert {s["spec"]["predictor"]["model"].get("protocolVersion", "v1") for s in services} <= PROTOCOLS
    for service in services:
        model = service["spec"]["predictor"]["model"]
        assert model["runtime"] == runtime["metadata"]["name"] and model["modelFormat"]["name"] == "tensorflow"
        if model.get("protocolVersion", "v1").startswith("grpc"):
            assert model["ports"] == [{"name": "h2c", "containerPort": args.port, "protocol": "TCP"}]


def test_the_runtime_container_serves_both_protocols(tmp_path, model_dir: str) -> None:  # type: ignore[no-untyped-def]
    (runtime,) = _docs("cluster-serving-runtime.yaml")
    (container,) = runtime["spec"]["containers"]
    assert container["command"] == ["tfprod", "serve"]
    server = None
    args = []
    for arg in container["args"]:
        arg = arg.replace("{{.Name}}", "hpt").replace("/mnt/models", os.path.join(model_dir, "half_plus_two"))
        if arg.startswith(("--rest_api_port=", "--port=")):
            continue  # ServerProcess picks free loopback ports
        args.append(arg.replace("/etc/tfprod/monitoring.config", os.path.join(ROOT, "deploy", "monitoring.config")))
    server = ServerProcess(args, str(tmp_path / "server.log"))
    try:
        server.wait_ready()
        assert server.client.get(container["livenessProbe"]["httpGet"]["path"]).status_code == 200
        assert server.client.get(container["readinessProbe"]["httpGet"]["path"]).status_code == 200
        v1 = server.client.post("/v1/models/hpt:predict", json={"instances": [1.0, 2.0]})
        assert v1.json() == {"predictions": [2.5, 3.0]}
        v2 = server.client.post("/v2/models/hpt/infer", json={
            "inputs": [{"name": "x", "shape": [2], "datatype": "FP32", "data": [1.0, 2.0]}]})
        assert v2.json()["outputs"][0]["data"] == [2.5, 3.0]
        with grpc.insecure_channel(server.grpc_target) as channel:
            request = predict_pb2.PredictRequest()
            request.model_spec.name = "hpt"
            request.inputs["x"].CopyFrom(tf.make_tensor_proto(np.array([1.0], np.float32)))
            reply = prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict(request)
            assert tf.make_ndarray(reply.outputs["y"]).tolist() == [2.5]
        path = runtime["spec"]["annotations"]["prometheus.kserve.io/path"]
        deadline = time.monotonic() + 10
        while ":tensorflow:serving:request_count" not in (text := server.client.get(path).text):
            assert time.monotonic() < deadline, text[-2000:]
            time.sleep(0.2)
        lines = [json.loads(line) for line in server.log().splitlines() if line.startswith("{")]
        assert any(o["logger"] == "tfprod.manager" for o in lines)  # --log_format=json
    except (httpx.HTTPError, AssertionError):
        if server is not None:
            print(server.log()[-4000:])
        raise
    finally:
        server.stop()

