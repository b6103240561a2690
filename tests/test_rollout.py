"""Gray release: real servers with two real versions that answer differently (y = 0.5x + 2 and
y = 2x + 1), routed by a rollout config; answers checked against TensorFlow's own."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import time

import grpc
import numpy as np
import pytest
import saved_models
import tensorflow as tf
from conftest import free_port
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc, regression_pb2

from tfprod.config.model_config import ConfigError, ModelConfig
from tfprod.rollout import analysis
from tfprod.rollout.config import Analysis, Arm, Shadow, parse_rollout_config

MODELS = [ModelConfig("hpt", "/m", labels={"stable": 1, "canary": 2})]


def _parse(text: str) -> dict:  # type: ignore[type-arg]
    import tomllib
    return parse_rollout_config(tomllib.loads(textwrap.dedent(text)), MODELS)


@pytest.mark.parametrize("text, message", [
    ('[models.hpt]\nstable = "stable"\ncanary = 2\nsteps = [1, 150]', "150 is not a weight in percent"),
    ('[models.hpt]\nstable = "stable"\ncanary = 2\nsteps = [-1, 5]', "-1 is not a weight"),
    ('[models.hpt]\nstable = "stable"\ncanary = 2\nsteps = [50, 10]', "must rise"),
    ('[models.hpt]\nstable = "stable"\ncanary = 2\nsteps = [0, 10]', "only a shadow can judge it"),
    ('[models.hpt]\nstable = "gold"\ncanary = 2\nsteps = [10]', "no label 'gold'"),
    ('[models.nope]\nstable = 1\ncanary = 2\nsteps = [10]', "no model 'nope'"),
    ('[models.hpt]\nstable = 1\ncanary = 2\nsteps = [10]\nweight = 3', "unknown setting(s) weight"),
    ('[models.hpt]\nstable = 1\ncanary = 2\nsteps = [10]\n[models.hpt.analysis]\nmax_error_rate = 5',
     "is a rate"),
])
def test_bad_rollout_configs_are_refused_with_the_reason(text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        _parse(text)


def test_buckets_are_sticky_and_raising_the_weight_keeps_canary_users() -> None:
    keys = [f"user-{i}" for i in range(4000)]
    at_5 = {k for k in keys if analysis.on_canary(5, analysis.bucket("m", k))}
    at_50 = {k for k in keys if analysis.on_canary(50, analysis.bucket("m", k))}
    assert at_5 < at_50  # every 5% user is still on the canary at 50%
    assert abs(len(at_5) / len(keys) - 0.05) < 0.02 and abs(len(at_50) / len(keys) - 0.5) < 0.04
    assert analysis.bucket("m", "user-1") == analysis.bucket("m", "user-1")


def test_disagreement_and_psi() -> None:
    rules = Shadow(Arm(version=1), compare="close")
    live = {"y": np.array([1.0, 2.0, 3.0, 4.0])}
    assert analysis.disagreeing_rows(live, {"y": np.array([1.0, 2.0, 3.5, 4.0])}, rules) == (4, 1)
    assert analysis.disagreeing_rows(live, {"z": np.array([1.0])}, rules) == (4, 4)
    top1 = Shadow(rules.arm, compare="top1")
    scores = {"p": np.array([[0.1, 0.9], [0.8, 0.2]])}
    assert analysis.disagreeing_rows(scores, {"p": np.array([[0.4, 0.6], [0.4, 0.6]])}, top1) == (2, 1)
    rng = np.random.default_rng(0)
    same = analysis.psi(rng.normal(size=5000), rng.normal(size=5000), False)
    shifted = analysis.psi(rng.normal(size=5000), rng.normal(1.0, size=5000), False)
    assert same < 0.02 < 0.2 < shifted
    # classes: shares 0.5/0.5 against 0.9/0.1 -> (0.4 ln 1.8) + (-0.4 ln 0.2)
    assert analysis.psi(np.array([0.0, 1.0] * 50), np.array([0.0] * 90 + [1.0] * 10), True) == \
        pytest.approx(0.4 * np.log(1.8) - 0.4 * np.log(0.2))
    assert analysis.row_values(np.zeros([0], np.float32)) is None  # a request of no rows has nothing to drift


def test_judge_holds_on_little_evidence_and_fails_an_erroring_canary() -> None:
    rules = Analysis(min_requests=10, max_error_rate=0.05)
    few = analysis.ArmWindow(requests=3)
    assert analysis.judge(rules, 10, analysis.ArmWindow(requests=100), few, analysis.ShadowWindow()).result == \
        "inconclusive"
    bad = analysis.ArmWindow(requests=20, errors=10)
    verdict = analysis.judge(rules, 10, analysis.ArmWindow(requests=100), bad, analysis.ShadowWindow())
    assert verdict.result == "fail" and "error rate 50.00%" in verdict.reasons[0]


class RenamedInput(tf.Module):
    """A canary whose input was renamed: every request written for the stable signature fails on it."""

    @tf.function(input_signature=[tf.TensorSpec([None], tf.float32, name="z")])
    def predict(self, z: tf.Tensor) -> dict[str, tf.Tensor]:
        return {"y": 2.0 * z + 1.0}


@pytest.fixture(scope="module")
def two_versions(tmp_path_factory: pytest.TempPathFactory) -> str:
    root = tmp_path_factory.mktemp("rollout")
    base = root / "hpt"
    saved_models.half_plus_two(str(base / "1"))
    saved_models.half_plus_two(str(base / "2"), a=2.0, b=1.0)
    module = RenamedInput()
    tf.saved_model.save(module, str(base / "3"), signatures={"serving_default": module.predict})
    saved_models.slow(str(base / "4"))
    return str(root)


def _models_config(root: str, canary: int = 2) -> str:
    models = os.path.join(root, "models.config")
    with open(models + ".tmp", "w") as f:
        f.write(f"""model_config_list {{ config {{ name: "hpt" base_path: "{root}/hpt" model_platform: "tensorflow"
  model_version_policy {{ specific {{ versions: 1 versions: 2 versions: 3 versions: 4 }} }}
  version_labels {{ key: "stable" value: 1 }} version_labels {{ key: "canary" value: {canary} }} }} }}""")
    os.replace(models + ".tmp", models)  # a polling server never reads half a file
    return models


def _configs(root: str, rollout: str) -> list[str]:
    models = _models_config(root)
    path = os.path.join(root, "rollout.toml")
    with open(path, "w") as f:
        f.write(textwrap.dedent(rollout))
    monitoring = os.path.join(root, "monitoring.config")
    with open(monitoring, "w") as f:
        f.write('prometheus_config { enable: true path: "/metrics" }')
    return [f"--model_config_file={models}", f"--rollout_config_file={path}", f"--monitoring_config_file={monitoring}"]


def _fresh(two_versions: str, name: str) -> str:
    root = os.path.join(two_versions, name)
    os.makedirs(root)
    os.symlink(os.path.join(two_versions, "hpt"), os.path.join(root, "hpt"))
    return root


def _y(server, x: float, headers: dict | None = None, path: str = "/v1/models/hpt:predict"):  # type: ignore[no-untyped-def]
    r = server.client.post(path, json={"instances": [x]}, headers=headers or {})
    assert r.status_code == 200, r.text
    return r.json()["predictions"][0], r.headers


def test_weighted_sticky_split_explicit_versions_and_admin(start_server, two_versions: str) -> None:  # type: ignore[no-untyped-def]
    root = _fresh(two_versions, "split")
    flags = _configs(root, """
        [models.hpt]
        stable = "stable"
        canary = "canary"
        steps = [20, 60, 100]
        sticky_key = "x-user-id"
        [models.hpt.analysis]
        interval_s = 3600
        min_requests = 1000000
        [models.hpt.shadow]
        version = 3
        sample_percent = 100
        max_in_flight = 2
    """)
    server = start_server(flags)
    stable_y, canary_y = 0.5 * 3.0 + 2.0, 2.0 * 3.0 + 1.0
    # without a key: per-request random at 20%
    answers = [_y(server, 3.0) for _ in range(300)]
    canary = sum(1 for y, h in answers if y == pytest.approx(canary_y))
    assert all(y in (pytest.approx(stable_y), pytest.approx(canary_y)) for y, _ in answers)
    assert 30 <= canary <= 95, canary  # 20% of 300 = 60; 4+ sigma bounds
    for y, headers in answers:
        assert headers["x-tfprod-arm"] == ("canary" if y == pytest.approx(canary_y) else "stable")
        assert headers["x-tfprod-version"] == ("2" if headers["x-tfprod-arm"] == "canary" else "1")
    # sticky: the same key, the same arm, every time
    arms = {}
    for i in range(60):
        arm = {_y(server, 3.0, {"x-user-id": f"u{i}"})[1]["x-tfprod-arm"] for _ in range(3)}
        assert len(arm) == 1
        arms[f"u{i}"] = arm.pop()
    # explicit versions and labels are never rerouted
    for _ in range(20):
        assert _y(server, 3.0, path="/v1/models/hpt/versions/1:predict")[0] == pytest.approx(stable_y)
        y, headers = _y(server, 3.0, path="/v1/models/hpt/labels/canary:predict")
        assert y == pytest.approx(canary_y) and "x-tfprod-arm" not in headers
    # gRPC reads the key from metadata and says the arm in trailing metadata
    with grpc.insecure_channel(server.grpc_target) as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        request = predict_pb2.PredictRequest()
        request.model_spec.name = "hpt"
        request.inputs["x"].CopyFrom(tf.make_tensor_proto(np.array([3.0], np.float32)))
        for key in ("u1", "u2", "u3"):
            response, call = stub.Predict.with_call(request, metadata=(("x-user-id", key),))
            trailing = dict(call.trailing_metadata())
            assert trailing["x-tfprod-arm"] == arms[key]
            assert response.model_spec.version.value == (2 if arms[key] == "canary" else 1)
        request.inputs["x"].CopyFrom(tf.make_tensor_proto(np.zeros([0], np.float32)))
        assert stub.Predict(request).outputs["y"].tensor_shape.dim[0].size == 0  # no rows: still answered
    # KServe V2 routes the same way, and never reroutes a request naming its version
    v2 = {"inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": [3.0]}]}
    both = [k for k in arms if arms[k] == "canary"][:2] + [k for k in arms if arms[k] == "stable"][:2]
    assert len(both) == 4, arms
    for key in both:
        r = server.client.post("/v2/models/hpt/infer", json=v2, headers={"x-user-id": key})
        assert r.status_code == 200 and r.headers["x-tfprod-arm"] == arms[key], r.text
        assert r.json()["outputs"][0]["data"][0] == pytest.approx(canary_y if arms[key] == "canary" else stable_y)
        r = server.client.post("/v2/models/hpt/versions/1/infer", json=v2, headers={"x-user-id": key})
        assert r.json()["outputs"][0]["data"][0] == pytest.approx(stable_y) and "x-tfprod-arm" not in r.headers
    # classify and regress are routed alike, on REST and gRPC
    with grpc.insecure_channel(server.grpc_target) as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        for key in both:
            expected = canary_y if arms[key] == "canary" else stable_y
            r = server.client.post("/v1/models/hpt:regress", headers={"x-user-id": key}, json={
                "signature_name": "regress_x_to_y", "examples": [{"x": 3.0}]})
            assert r.json() == {"results": [pytest.approx(expected)]} and r.headers["x-tfprod-arm"] == arms[key]
            r = server.client.post("/v1/models/hpt:classify", headers={"x-user-id": key}, json={
                "signature_name": "classify_x_to_y", "examples": [{"x": 3.0}]})
            assert r.json()["results"][0][0][1] == pytest.approx(expected) and r.headers["x-tfprod-arm"] == arms[key]
            request = regression_pb2.RegressionRequest()
            request.model_spec.name, request.model_spec.signature_name = "hpt", "regress_x_to_y"
            request.input.example_list.examples.add().features.feature["x"].float_list.value.append(3.0)
            reply, call = stub.Regress.with_call(request, metadata=(("x-user-id", key),))
            assert reply.result.regressions[0].value == pytest.approx(expected)
            assert dict(call.trailing_metadata())["x-tfprod-arm"] == arms[key]
    # admin: raise the weight; earlier canary users stay on the canary
    r = server.client.post("/v1/rollouts/hpt:set_weight", json={"weight": 60})
    assert r.status_code == 200 and r.json()["state"] == "paused" and r.json()["weight"] == 60
    for key, arm in arms.items():
        if arm == "canary":
            assert _y(server, 3.0, {"x-user-id": key})[1]["x-tfprod-arm"] == "canary"
    assert server.client.post("/v1/rollouts/hpt:set_weight", json={"weight": 101}).status_code == 400
    assert server.client.post("/v1/rollouts/nope:pause").status_code == 404
    # the shadow (version 3, renamed input) fails on every request: counted, never answered
    metrics = server.client.get("/metrics").text
    assert ':tfprod:rollout:request_count{arm="canary",model_name="hpt",status="OK",version="2"}' in metrics
    assert 'shadow_request_count{model_name="hpt",outcome="error"}' in metrics
    # promotion moves the stable label with no failed request
    r = server.client.post("/v1/rollouts/hpt:promote")
    assert r.status_code == 200 and r.json()["state"] == "promoted"
    labels = server.client.get("/v1/models/hpt/labels/stable").json()
    assert labels["model_version_status"][0]["version"] == "2"
    for _ in range(20):
        assert _y(server, 3.0)[0] == pytest.approx(canary_y)
        assert _y(server, 3.0, path="/v1/models/hpt/labels/stable:predict")[0] == pytest.approx(canary_y)


def test_an_erroring_canary_is_rolled_back_while_stable_serves(start_server, two_versions: str) -> None:  # type: ignore[no-untyped-def]
    root = _fresh(two_versions, "rollback")
    flags = _configs(root, """
        [models.hpt]
        stable = 1
        canary = 3
        steps = [50, 100]
        [models.hpt.analysis]
        interval_s = 1
        min_requests = 5
        failure_limit = 2
        max_error_rate = 0.05
    """)
    server = start_server(flags)
    rolled_back = False
    deadline = time.monotonic() + 30  # failure_limit=2 intervals of 1 s, a few requests each
    while time.monotonic() < deadline:
        r = server.client.post("/v1/models/hpt:predict", json={"inputs": {"x": [3.0]}})
        assert r.status_code == 200 or "z" in r.text  # only the canary (input renamed to z) fails
        if r.status_code != 200:  # and its errors say so
            assert (r.headers["x-tfprod-arm"], r.headers["x-tfprod-version"]) == ("canary", "3"), r.headers
        state = server.client.get("/v1/rollouts/hpt").json()
        if state["state"] == "rolled_back":
            rolled_back = True
            break
    assert rolled_back, server.log()[-3000:]
    assert state["weight"] == 0 and "error rate" in state["reason"]
    assert state["last_analysis"]["canary"]["error_rate"] > 0.5
    for _ in range(30):  # every request on the stable arm now
        r = server.client.post("/v1/models/hpt:predict", json={"inputs": {"x": [3.0]}})
        assert r.status_code == 200 and r.headers["x-tfprod-arm"] == "stable"
    assert "rolled back" in server.log()
    metrics = server.client.get("/metrics").text
    stable = [line for line in metrics.splitlines() if line.startswith(":tfprod:rollout:request_count{") and
              'arm="stable"' in line]
    assert stable and all('status="OK"' in line for line in stable), stable  # 0 failed stable-arm requests
    assert any('arm="canary"' in line and 'status="INVALID_ARGUMENT"' in line for line in metrics.splitlines())
    assert ':tfprod:rollout:rollback_count{model_name="hpt"} 1' in metrics
    assert ':tfprod:rollout:state{model_name="hpt",state="rolled_back"} 1' in metrics
    # the state survives a restart
    with open(os.path.join(root, "rollout.toml.state.json")) as f:
        saved = json.load(f)
    assert saved["rollouts"]["hpt"]["state"] == "rolled_back"
    server.stop()
    again = start_server(flags)
    assert again.client.get("/v1/rollouts/hpt").json()["state"] == "rolled_back"
    # a state file edited into nonsense is ignored: the rollout starts at its first step
    again.stop()
    saved["rollouts"]["hpt"]["weight"] = "50"
    with open(os.path.join(root, "rollout.toml.state.json"), "w") as f:
        json.dump(saved, f)
    third = start_server(flags)
    restarted = third.client.get("/v1/rollouts/hpt").json()
    assert restarted["state"] == "progressing" and restarted["weight"] == 50
    assert third.client.post("/v1/models/hpt:predict", json={"instances": [3.0]}).status_code == 200
    # a bad rollout config at start is refused with its reason
    bad = _configs(os.path.join(two_versions, "rollback"), '[models.hpt]\nstable = 1\ncanary = 9\nsteps = [5]\n')
    refused = start_server(bad, wait=False)
    assert refused.proc.wait(timeout=120) != 0
    assert "has no version 9" in refused.log()
    workers = start_server([*flags, "--num_workers=2"], wait=False)  # each worker would judge its own share
    assert workers.proc.wait(timeout=60) != 0 and "needs --num_workers=1" in workers.log()


def test_admin_scope_and_a_bad_config_on_poll_keeps_the_rollout(start_server, two_versions: str) -> None:  # type: ignore[no-untyped-def]
    import hashlib
    root = _fresh(two_versions, "admin")
    rollout = '[models.hpt]\nstable = "stable"\ncanary = "canary"\nsteps = [10, 100]\n'
    flags = _configs(root, rollout)
    security = os.path.join(root, "security.toml")
    with open(security, "w") as f:
        for name, scopes in (("reader", ["read:*", "predict:*"]), ("operator", ["admin"])):
            f.write(f'[[auth.api_keys]]\nname = "{name}"\nsha256 = "{hashlib.sha256(name.encode()).hexdigest()}"\n'
                    f'scopes = {json.dumps(scopes)}\n')
    server = start_server([*flags, f"--security_config_file={security}", "--model_config_file_poll_wait_seconds=1"])
    reader, operator = {"X-API-Key": "reader"}, {"X-API-Key": "operator"}
    assert server.client.get("/v1/rollouts").status_code == 401
    assert server.client.get("/v1/rollouts", headers=reader).json()["rollouts"][0]["weight"] == 10
    refused = server.client.post("/v1/rollouts/hpt:pause", headers=reader)
    assert refused.status_code == 403 and "admin" in refused.text
    assert server.client.post("/v1/rollouts/hpt:pause", headers=operator).json()["state"] == "paused"
    # a bad file on the next poll is refused; the running rollout stays as it was
    with open(os.path.join(root, "rollout.toml"), "w") as f:
        f.write(rollout.replace("[10, 100]", "[10, 500]"))
    server.wait_until(lambda: "keeping the running rollouts" in server.log(), 15, "the refusal")
    assert "500 is not a weight in percent" in server.log()
    state = server.client.get("/v1/rollouts/hpt", headers=reader).json()
    assert state["state"] == "paused" and state["steps"] == [10, 100]
    # abort sends every request to stable; resume starts again at the first step
    aborted = server.client.post("/v1/rollouts/hpt:abort", headers=operator).json()
    assert (aborted["state"], aborted["weight"]) == ("aborted", 0)
    for _ in range(20):
        r = server.client.post("/v1/models/hpt:predict", json={"instances": [3.0]}, headers=reader)
        assert r.json()["predictions"] == [pytest.approx(3.5)] and r.headers["x-tfprod-arm"] == "stable"
    resumed = server.client.post("/v1/rollouts/hpt:resume", headers=operator).json()
    assert (resumed["state"], resumed["step"], resumed["weight"]) == ("progressing", 0, 10)
    # unversioned metadata reads the stable arm
    metadata = server.client.get("/v1/models/hpt/metadata", headers=reader).json()
    assert metadata["model_spec"]["version"] == "1"
    # a good change of thresholds keeps the state; removing the rollout gives the model config's rules back
    with open(os.path.join(root, "rollout.toml"), "w") as f:
        f.write(rollout + "[models.hpt.analysis]\nmin_requests = 7\ninterval_s = 1\n")
    server.wait_until(lambda: "rollout config applied: hpt" in server.log(), 15, "the new thresholds")
    assert server.client.get("/v1/rollouts/hpt", headers=reader).json()["history"] == resumed["history"]
    # the canary label moved back onto the stable version: nothing to roll out, the rollout stops ...
    _models_config(root, canary=1)
    server.wait_until(lambda: server.client.get("/v1/rollouts/hpt", headers=reader).json()["state"] == "aborted",
                      20, "the rollout stopped")
    assert "nothing to roll out" in server.client.get("/v1/rollouts/hpt", headers=reader).json()["reason"]
    # ... and moved on to a new version, it starts again at the first step
    _models_config(root, canary=4)
    server.wait_until(lambda: server.client.get("/v1/rollouts/hpt", headers=reader).json()["state"] == "progressing",
                      20, "the rollout started again")
    again = server.client.get("/v1/rollouts/hpt", headers=reader).json()
    assert (again["canary"]["version"], again["weight"]) == (4, 10)
    with open(os.path.join(root, "rollout.toml"), "w") as f:
        f.write("")
    server.wait_until(lambda: "(no rollouts)" in server.log(), 15, "the rollout removed")
    assert server.client.get("/v1/rollouts/hpt", headers=reader).status_code == 404
    r = server.client.post("/v1/models/hpt:predict", json={"instances": [3.0]}, headers=reader)
    assert r.status_code == 200 and "x-tfprod-arm" not in r.headers  # TF Serving's rule again: the latest version


def test_a_slow_canary_is_rolled_back(start_server, two_versions: str) -> None:  # type: ignore[no-untyped-def]
    flags = _configs(_fresh(two_versions, "slow"), """
        [models.hpt]
        stable = 1
        canary = 4
        steps = [50, 100]
        [models.hpt.analysis]
        interval_s = 1
        min_requests = 3
        failure_limit = 2
        max_p99_ratio = 3
    """)
    server = start_server(flags)
    deadline, state = time.monotonic() + 40, {}
    while time.monotonic() < deadline and state.get("state") != "rolled_back":
        r = server.client.post("/v1/models/hpt:predict", json={"instances": [0.05]})  # the canary waits 50 ms
        assert r.status_code == 200
        state = server.client.get("/v1/rollouts/hpt").json()
    assert state["state"] == "rolled_back", server.log()[-3000:]
    assert "max_p99_ratio" in state["reason"] and state["last_analysis"]["canary"]["p99_ms"] >= 50


def test_a_canary_passes_every_step_from_1_to_100_percent(start_server, two_versions: str) -> None:  # type: ignore[no-untyped-def]
    flags = _configs(_fresh(two_versions, "steps"), """
        [models.hpt]
        stable = "stable"
        canary = "canary"
        steps = [1, 50, 100]
        sticky_key = "x-user-id"
        [models.hpt.analysis]
        interval_s = 1
        min_requests = 3
    """)
    server = start_server(flags)
    at_1 = [k for k in (f"user-{i}" for i in range(2000)) if analysis.on_canary(1, analysis.bucket("hpt", k))][:5]
    weights, deadline = [], time.monotonic() + 40
    while time.monotonic() < deadline:
        for key in at_1:
            y, headers = _y(server, 3.0, {"x-user-id": key})
            assert y == pytest.approx(7.0) and headers["x-tfprod-version"] == "2"  # a 1% user stays on the canary
            assert headers["x-tfprod-arm"] == "canary" or server.client.get("/v1/rollouts/hpt").json()["state"] == \
                "promoted"  # after promotion the stable arm is version 2
        state = server.client.get("/v1/rollouts/hpt").json()
        if not weights or weights[-1] != state["weight"]:
            weights.append(state["weight"])
        if state["state"] == "promoted":
            break
    assert state["state"] == "promoted", server.log()[-3000:]
    assert weights[:3] == [1, 50, 100]
    # the label moves just after the state says promoted (outside the rollout's lock; routing
    # already uses the promoted version meanwhile)
    server.wait_until(lambda: server.client.get("/v1/models/hpt/labels/stable").json()["model_version_status"][0][
        "version"] == "2", 10, "the stable label on version 2")


def test_shadow_disagreement_rate_and_latency_bound_and_promotion_under_load(  # type: ignore[no-untyped-def]
        start_server, two_versions: str) -> None:
    import concurrent.futures

    flags = _configs(_fresh(two_versions, "shadow"), """
        [models.hpt]
        stable = "stable"
        canary = "canary"
        steps = [0, 100]
        [models.hpt.shadow]
        label = "canary"
        sample_percent = 100
        max_in_flight = 64
        [models.hpt.analysis]
        interval_s = 3600
        max_disagreement = 0.9
    """)
    server = start_server(flags)
    rows = [2 / 3, 1.0, 2.0, 3.0]  # y = 0.5x + 2 and y = 2x + 1 agree at x = 2/3 only
    expected = (0.5 * np.array(rows, np.float32) + 2).tolist()
    shadowed, direct = [], []
    for _ in range(40):
        started = time.perf_counter()
        r = server.client.post("/v1/models/hpt:predict", json={"instances": rows})
        shadowed.append(time.perf_counter() - started)
        assert r.json()["predictions"] == pytest.approx(expected) and r.headers["x-tfprod-arm"] == "stable"
        started = time.perf_counter()
        server.client.post("/v1/models/hpt/versions/1:predict", json={"instances": rows})
        direct.append(time.perf_counter() - started)
    # the shadow runs after the answer: live requests are no slower than unshadowed ones, within a bound
    assert np.median(shadowed) <= 2 * np.median(direct) + 0.01, (np.median(shadowed), np.median(direct))

    def counts() -> tuple[float, float]:
        text = server.client.get("/metrics").text
        values = {}
        for line in text.splitlines():
            for kind in ("compared", "disagreeing"):
                if line.startswith(f':tfprod:rollout:shadow_{kind}_rows{{model_name="hpt"}}'):
                    values[kind] = float(line.rsplit(" ", 1)[1])
        return values.get("compared", 0.0), values.get("disagreeing", 0.0)
    server.wait_until(lambda: counts()[0] == 40 * len(rows), 10, "every shadow compared")
    compared, disagreeing = counts()
    assert disagreeing / compared == pytest.approx(0.75)

    def call(i: int) -> int:
        path = "/v1/models/hpt/labels/stable:predict" if i % 2 else "/v1/models/hpt:predict"
        return server.client.post(path, json={"instances": [3.0]}).status_code

    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        before = [pool.submit(call, i) for i in range(200)]
        time.sleep(0.2)
        assert server.client.post("/v1/rollouts/hpt:promote").json()["state"] == "promoted"
        after = [pool.submit(call, i) for i in range(100)]
        codes = [f.result() for f in before + after]
    assert codes.count(200) == len(codes)
    assert _y(server, 3.0, path="/v1/models/hpt/labels/stable:predict")[0] == pytest.approx(7.0)


def test_the_rollout_demo_promotes_a_good_canary_and_rolls_back_a_broken_one(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """`make rollout-demo` end to end: the walk in docs/rollout.md, with its real numbers."""
    demo = os.path.join(os.path.dirname(__file__), "..", "examples", "rollout", "demo.py")
    work = tmp_path / "rollout-demo"
    # its own session: a demo stuck past the timeout goes down with its server
    proc = subprocess.Popen([sys.executable, demo, "--workdir", str(work), "--rest_api_port", str(free_port()),
                             "--port", str(free_port()), "--exit"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env={**os.environ, "COLUMNS": "200"}, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=420)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 0, out[-4000:] + err[-4000:] + (work / "server.log").read_text()[-4000:]
    for step in ("passed: 10%", "passed: 50%", "passed: 100%", "promoted version 2", "labels/stable is now version 2",
                 "the canary is now version 3: started again at 1%", "rolled back: shadow disagreement",
                 "failed requests: 0", ':tfprod:rollout:rollback_count{model_name="digits"} 1.0'):
        assert step in out, (step, out[-4000:])
    passes = re.findall(r"analysis at (\d+)%: pass: .*?shadow \d+ rows, ([\d.]+)% disagree", out)
    assert passes and all(float(d) < 10 for _, d in passes), passes  # v2 and v1 agree on most digits
    saved = json.loads((work / "rollout.toml.state.json").read_text())["rollouts"]["digits"]
    assert saved["state"] == "rolled_back" and saved["canary_version"] == 3 and saved["promoted"] == 2
