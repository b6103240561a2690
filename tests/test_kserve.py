"""tfprod as a KServe runtime (deploy/kserve): the ClusterServingRuntime and the InferenceServices are
validated strictly against KServe 0.21.0's own API schema, as the models generated from it in the kserve
PyPI wheel declare it (every key a field of its type, required fields present, values of the field's
type; tests/kserve_schema.py), with the Kubernetes types in them (the runtime's container, its probes,
ports, resources, metadata) validated against Kubernetes' strict schemas at 1.25 and 1.37
(kubernetes-validate). The runtime is then run here as KServe would run it (its arguments, the model's
name for `{{.Name}}`, a base path for /mnt/models): its probes' paths answer, and one model answers on
TF Serving's v1 REST, V2 REST and gRPC, and on the metrics path the runtime announces."""

from __future__ import annotations

import copy
import json
import os
import time
from typing import Any

import grpc
import httpx
import numpy as np
import pytest
import tensorflow as tf
import yaml
from conftest import ServerProcess
from kserve_schema import Schema, fetch_wheel, read_models
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

from tfprod.cli import serve_parser

ROOT = os.path.join(os.path.dirname(__file__), "..")
KSERVE = os.path.join(ROOT, "deploy", "kserve")
TOOLS = os.path.join(ROOT, "build", "tools")  # the kserve wheel, downloaded once
KUBERNETES = ("1.25.0", "1.37.0")  # the Helm chart's kubeVersion floor, and the newest schemas
PROTOCOLS = {"v1", "v2", "grpc-v1", "grpc-v2"}  # KServe's protocolVersion values


def _docs(name: str) -> list[dict[str, Any]]:
    with open(os.path.join(KSERVE, name)) as f:
        return [d for d in yaml.safe_load_all(f) if d]


@pytest.fixture(scope="module")
def schemas() -> dict[str, Schema]:
    models = read_models(fetch_wheel(TOOLS))
    return {version: Schema(models, version) for version in KUBERNETES}


def test_the_runtime_and_inference_services_follow_kserves_schema(schemas: dict[str, Schema]) -> None:
    docs = _docs("cluster-serving-runtime.yaml") + _docs("inferenceservices.yaml")
    assert len(docs) == 4
    for version, schema in schemas.items():
        for doc in docs:
            assert schema.errors(doc) == [], f"{doc['kind']} {doc['metadata']['name']} at Kubernetes {version}"


def test_the_kserve_schema_refuses_what_kserve_would(schemas: dict[str, Schema]) -> None:
    schema = schemas[KUBERNETES[-1]]
    (runtime,) = _docs("cluster-serving-runtime.yaml")
    bad = copy.deepcopy(runtime)
    bad["spec"]["supportedModelFormat"] = bad["spec"].pop("supportedModelFormats")
    bad["spec"]["protocolVersion"] = bad["spec"].pop("protocolVersions")
    bad["spec"]["containers"][0]["readinessProbe"]["httpGet"]["paht"] = "/readyz"
    bad_probe, *errors = schema.errors(bad)
    assert bad_probe.startswith("spec.containers[0].readinessProbe.httpGet: ") and "'paht'" in bad_probe
    assert errors == [
        "spec.supportedModelFormat: not a field of V1alpha1ServingRuntimeSpec",
        "spec.protocolVersion: not a field of V1alpha1ServingRuntimeSpec",
    ]
    del bad["spec"]["containers"]
    assert "spec.containers: missing, required by V1alpha1ServingRuntimeSpec" in schema.errors(bad)
    service = _docs("inferenceservices.yaml")[0]
    wrong = copy.deepcopy(service)
    wrong["spec"]["predictor"]["minReplicas"] = "two"
    wrong["spec"]["predictor"]["model"]["protocolVersoin"] = "v2"
    assert schema.errors(wrong) == [
        "spec.predictor.model.protocolVersoin: not a field of V1beta1ModelSpec",
        "spec.predictor.minReplicas: 'two' is not of type int",
    ]
    missing = copy.deepcopy(service)
    del missing["spec"]["predictor"]["model"]["modelFormat"]
    assert schema.errors(missing) == ["spec.predictor.model.modelFormat: missing, required by V1beta1ModelSpec"]
    assert schema.errors({**service, "apiVersion": "serving.kserve.io/v1"}) != []


def test_the_runtime_and_inference_services_are_what_kserve_reads() -> None:
    (runtime,) = _docs("cluster-serving-runtime.yaml")
    assert (runtime["apiVersion"], runtime["kind"]) == ("serving.kserve.io/v1alpha1", "ClusterServingRuntime")
    spec = runtime["spec"]
    formats = spec["supportedModelFormats"]
    assert {(f["name"], f["version"]) for f in formats} == {("tensorflow", "1"), ("tensorflow", "2")}
    assert all(f["priority"] == 3 for f in formats)
    assert set(spec["protocolVersions"]) == PROTOCOLS
    (container,) = spec["containers"]
    assert container["name"] == "kserve-container"
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
        v2 = server.client.post(
            "/v2/models/hpt/infer",
            json={"inputs": [{"name": "x", "shape": [2], "datatype": "FP32", "data": [1.0, 2.0]}]},
        )
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
