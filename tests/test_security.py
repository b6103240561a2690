"""The attack table of docs/security.md, one test per row, on real servers.

`guarded`: TLS on REST and gRPC, API keys and RS256/ES256 JWTs (JWK set), per-model scopes, rate
limits, a concurrency cap, request bounds, a request timeout, signed models only (one trusted
key) and the graph scan enforced. `mutual`: mutual TLS on both ports, HS256 JWTs and an API key
that the test revokes while the server runs. Every row ends with a normal request that
succeeds: a refusal never costs the next caller anything.
"""

from __future__ import annotations

import base64
import concurrent.futures
import hashlib
import hmac
import json
import os
import shutil
import ssl
import time
from collections.abc import Iterator
from typing import Any

import grpc
import httpx
import jwt
import numpy as np
import pytest
import saved_models
import tensorflow as tf
from conftest import ServerProcess
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from grpc_health.v1 import health_pb2, health_pb2_grpc
from pki import key_pairs, make_pki, new_key
from tensorflow_serving.apis import (
    get_model_metadata_pb2,
    model_management_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
)

from tfprod.security import signing

XS = [1.0, 2.0, -3.25]
AUDIENCE, ISSUER = "tfprod-tests", "https://issuer.test"
KEYS = {name: f"tfp_test_{name}_" + "x" * 24 for name in ("scorer", "reader", "admin", "limited", "old", "temp")}


def _sha(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def _api_key(name: str, scopes: list[str], revoked: bool = False) -> str:
    return (f'[[auth.api_keys]]\nname = "{name}"\nsha256 = "{_sha(KEYS[name])}"\nscopes = {json.dumps(scopes)}\n'
            + ("revoked = true\n" if revoked else ""))


@pytest.fixture(scope="module")
def pki() -> dict[str, bytes]:
    return make_pki()


@pytest.fixture(scope="module")
def jwt_keys() -> dict[str, Any]:
    return {"rsa": rsa.generate_private_key(public_exponent=65537, key_size=2048), "ec": new_key(),
            "rogue_rsa": rsa.generate_private_key(public_exponent=65537, key_size=2048),
            "hs": b"s" * 48}


@pytest.fixture(scope="module")
def signer(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """A trusted release key and an untrusted one, as PEM files."""
    return key_pairs(tmp_path_factory.mktemp("signing-keys"), "release", "untrusted")


def _client_context(pki: dict[str, bytes], root: Any, cert: str | None = "client_cert") -> ssl.SSLContext:
    (root / "ca.pem").write_bytes(pki["ca"])
    context = ssl.create_default_context(cafile=str(root / "ca.pem"))
    if cert:
        (root / f"{cert}.pem").write_bytes(pki[cert])
        (root / "client.key").write_bytes(pki["client_key"])
        context.load_cert_chain(str(root / f"{cert}.pem"), str(root / "client.key"))
    return context


def _signed_copy(src: str, base: str, version: int, key: str) -> str:
    tmp = os.path.join(base, f".staging-{version}")
    shutil.copytree(src, tmp)
    signing.sign(tmp, key)
    os.makedirs(base, exist_ok=True)
    os.rename(tmp, os.path.join(base, str(version)))
    return os.path.join(base, str(version))


@pytest.fixture(scope="module")
def guarded(model_dir: str, start_server: Any, pki: dict[str, bytes], jwt_keys: dict[str, Any],
            signer: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> ServerProcess:
    root = tmp_path_factory.mktemp("guarded")
    (root / "server.pem").write_bytes(pki["server_cert"])
    (root / "server.key").write_bytes(pki["server_key"])
    shutil.copy(signer["release.pub"], root / "release.pub")
    jwks = {"keys": [
        {**json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(jwt_keys["rsa"].public_key())), "kid": "rsa1",
         "alg": "RS256", "use": "sig"},
        {**json.loads(jwt.algorithms.ECAlgorithm.to_jwk(jwt_keys["ec"].public_key())), "kid": "ec1",
         "alg": "ES256", "use": "sig"},
    ]}
    (root / "jwks.json").write_text(json.dumps(jwks))
    models = root / "models"
    vocab_src = str(root / "vocab_src")
    saved_models.vocab_lookup(vocab_src, ["zero", "one", "two"])
    for name, src in (("half_plus_two", "half_plus_two/1"), ("slow", "slow/1"), ("signed", "half_plus_two/1"),
                      ("scanned", "half_plus_two/1")):
        _signed_copy(os.path.join(model_dir, src), str(models / name), 1, signer["release"])
    _signed_copy(vocab_src, str(models / "vocab"), 1, signer["release"])
    (root / "models.config").write_text("model_config_list {\n" + "".join(
        f'  config {{ name: "{n}" base_path: "{models / n}" model_platform: "tensorflow" }}\n'
        for n in ("half_plus_two", "slow", "signed", "scanned", "vocab")) + "}\n")
    (root / "monitoring.config").write_text("prometheus_config { enable: true }\n")
    (root / "security.toml").write_text(
        "[auth]\n"
        + _api_key("scorer", ["predict:half_plus_two", "predict:slow", "predict:signed", "predict:scanned",
                              "predict:vocab"])
        + _api_key("reader", ["read:*"]) + _api_key("admin", ["admin"]) + _api_key("limited", ["predict:*"])
        + _api_key("old", ["predict:*"], revoked=True)
        + f'[auth.jwt]\nalgorithms = ["RS256", "ES256"]\njwks_file = "jwks.json"\naudience = "{AUDIENCE}"\n'
        f'issuer = "{ISSUER}"\n\n'
        "[limits]\nmax_concurrent_requests = 4\nmax_body_bytes = 1048576\nmax_tensor_elements = 100000\n"
        "max_batch_rows = 512\nmax_json_depth = 8\nrequest_timeout_s = 3\n"
        '[[limits.rate]]\ncaller = "key:limited"\nmodel = "*"\nper_second = 0.5\nburst = 5\n\n'
        '[models]\nrequire_signature = true\ntrusted_keys = ["release.pub"]\ngraph_scan = "enforce"\n'
        '[models.allow_ops]\nvocab = ["InitializeTableFromTextFileV2"]\n\n'
        '[tls]\ncert_file = "server.pem"\nkey_file = "server.key"\n')
    return start_server([f"--model_config_file={root / 'models.config'}",
                         f"--security_config_file={root / 'security.toml'}",
                         f"--monitoring_config_file={root / 'monitoring.config'}",
                         "--file_system_poll_wait_seconds=1"], tls=_client_context(pki, root, cert=None))


@pytest.fixture(scope="module")
def mutual(model_dir: str, start_server: Any, pki: dict[str, bytes], jwt_keys: dict[str, Any],
           tmp_path_factory: pytest.TempPathFactory) -> ServerProcess:
    root = tmp_path_factory.mktemp("mutual")
    for name in ("server_cert", "server_key", "ca"):
        (root / f"{name}.pem").write_bytes(pki[name])
    (root / "jwt.secret").write_bytes(jwt_keys["hs"])
    _write_mutual_config(root, revoke_temp=False)
    server = start_server([f"--model_base_path={os.path.join(model_dir, 'half_plus_two')}",
                           "--model_name=half_plus_two", f"--security_config_file={root / 'security.toml'}"],
                          tls=_client_context(pki, root))
    server.config_root = root  # type: ignore[attr-defined]
    return server


def _write_mutual_config(root: Any, revoke_temp: bool) -> None:
    text = ("[auth]\n" + _api_key("temp", ["predict:*"], revoked=revoke_temp)
            + '[auth.jwt]\nalgorithms = ["HS256"]\nsecret_file = "jwt.secret"\n\n'
            '[tls]\ncert_file = "server_cert.pem"\nkey_file = "server_key.pem"\nclient_ca_file = "ca.pem"\n'
            "require_client_cert = true\n")
    tmp = root / "security.toml.tmp"
    tmp.write_text(text)
    os.replace(tmp, root / "security.toml")  # a reader never sees half a file


def token(key: Any, algorithm: str = "RS256", kid: str | None = "rsa1", **claims: Any) -> str:
    now = int(time.time())
    payload = {"sub": "alice", "aud": AUDIENCE, "iss": ISSUER, "iat": now, "exp": now + 300,
               "scope": "predict:half_plus_two read:*", **claims}
    payload = {k: v for k, v in payload.items() if v is not None}
    return jwt.encode(payload, key, algorithm=algorithm, headers={"kid": kid} if kid else None)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def forged(header: dict[str, Any], payload: dict[str, Any], secret: bytes | None) -> str:
    """A token made by hand, as an attacker would: any header, HMAC with any secret, or none."""
    head = _b64(json.dumps(header).encode()) + "." + _b64(json.dumps(payload).encode())
    mac = hmac.new(secret, head.encode(), hashlib.sha256).digest() if secret is not None else b""
    return head + "." + _b64(mac)


def bearer(value: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {value}"}


def key(name: str) -> dict[str, str]:
    return {"X-API-Key": KEYS[name]}


def expected(model_dir: str, xs: list[float] = XS) -> list[float]:
    model = tf.saved_model.load(os.path.join(model_dir, "half_plus_two", "1"))
    return model.signatures["serving_default"](x=tf.constant(xs, tf.float32))["y"].numpy().tolist()


def predict(server: ServerProcess, headers: dict[str, str], model: str = "half_plus_two",
            body: Any = None) -> httpx.Response:
    content = json.dumps(body if body is not None else {"instances": XS})
    return server.client.post(f"/v1/models/{model}:predict", content=content, headers=headers)


def assert_still_serving(server: ServerProcess, model_dir: str, headers: dict[str, str] | None = None) -> None:
    r = predict(server, headers or key("scorer"))
    assert r.status_code == 200, r.text
    assert r.json()["predictions"] == expected(model_dir)


def refused(r: httpx.Response, status: int, *words: str) -> None:
    assert r.status_code == status, r.text
    message = r.json()["error"]  # TF Serving's error body
    for word in words:
        assert word in message, message


# -- authentication: REST ------------------------------------------------------------------

def test_missing_credentials_are_401_on_v1_and_v2(guarded: ServerProcess, model_dir: str) -> None:
    refused(predict(guarded, {}), 401, "Missing credentials", "X-API-Key")
    refused(guarded.client.get("/v1/models/half_plus_two"), 401)
    refused(guarded.client.post("/v2/models/half_plus_two/infer", content=json.dumps(
        {"inputs": [{"name": "x", "shape": [3], "datatype": "FP32", "data": XS}]})), 401)
    refused(guarded.client.get("/v2/models/half_plus_two"), 401)
    refused(predict(guarded, {"Authorization": "Basic dXNlcjpwYXNz"}), 401)
    assert_still_serving(guarded, model_dir)


def test_health_endpoints_stay_open(guarded: ServerProcess) -> None:
    for path in ("/healthz", "/readyz", "/v2/health/live", "/v2/health/ready"):
        assert guarded.client.get(path).status_code == 200, path


@pytest.mark.parametrize("value", ["tfp_nobody_" + "x" * 30, KEYS["scorer"][:-1], "", "x" * 5000, b"\xe9\xff"])
def test_wrong_api_keys_are_401(guarded: ServerProcess, model_dir: str, value: Any) -> None:
    refused(predict(guarded, {"X-API-Key": value} if value else bearer("nope")), 401)
    assert_still_serving(guarded, model_dir)


def test_revoked_api_key_is_401(guarded: ServerProcess, model_dir: str) -> None:
    refused(predict(guarded, key("old")), 401, "API key is not valid")
    refused(predict(guarded, bearer(KEYS["old"])), 401)
    assert_still_serving(guarded, model_dir, bearer(KEYS["scorer"]))  # a key also works as a bearer token


def test_valid_tokens_of_both_algorithms(guarded: ServerProcess, model_dir: str, jwt_keys: dict[str, Any]) -> None:
    assert_still_serving(guarded, model_dir, bearer(token(jwt_keys["rsa"])))
    assert_still_serving(guarded, model_dir, bearer(token(jwt_keys["ec"], "ES256", "ec1")))


def _claims(**changes: Any) -> dict[str, Any]:
    now = int(time.time())
    return {k: v for k, v in {"sub": "mallory", "aud": AUDIENCE, "iss": ISSUER, "exp": now + 300,
                              "scope": "predict:*", **changes}.items() if v is not None}


TOKEN_ATTACKS = {
    # name: (make(jwt_keys, public_pem) -> token, words in the answer)
    "expired": (lambda k, _: token(k["rsa"], exp=int(time.time()) - 60), "expired"),
    "not yet valid": (lambda k, _: token(k["rsa"], nbf=int(time.time()) + 600), "not valid yet"),
    "wrong audience": (lambda k, _: token(k["rsa"], aud="someone-else"), "audience"),
    "no audience": (lambda k, _: token(k["rsa"], aud=None), "aud"),
    "wrong issuer": (lambda k, _: token(k["rsa"], iss="https://evil.test"), "issuer"),
    "no expiry": (lambda k, _: token(k["rsa"], exp=None), "exp"),
    "forged signature": (lambda k, _: token(k["rogue_rsa"]), "signature"),
    "unknown key id (revoked)": (lambda k, _: token(k["rogue_rsa"], kid="rsa-retired"), "kid"),
    "alg none": (lambda k, _: forged({"alg": "none", "typ": "JWT", "kid": "rsa1"}, _claims(), None), "none"),
    "alg None": (lambda k, _: forged({"alg": "None", "typ": "JWT"}, _claims(), None), "None"),
    "HS256 signed with the RSA public key": (
        lambda k, pem: forged({"alg": "HS256", "typ": "JWT", "kid": "rsa1"}, _claims(), pem), "HS256"),
    "ES256 token claiming the RSA key": (lambda k, _: token(k["ec"], "ES256", "rsa1"), "Invalid token"),
    "garbage": (lambda k, _: "aaa.bbb.ccc", "malformed"),
    "tampered payload": (lambda k, _: ".".join([token(k["rsa"]).split(".")[0], _b64(json.dumps(
        _claims(scope="admin")).encode()), token(k["rsa"]).split(".")[2]]), "signature"),
}


@pytest.mark.parametrize("attack", TOKEN_ATTACKS)
def test_bad_tokens_are_401(guarded: ServerProcess, model_dir: str, jwt_keys: dict[str, Any], attack: str) -> None:
    make, words = TOKEN_ATTACKS[attack]
    pem = jwt_keys["rsa"].public_key().public_bytes(serialization.Encoding.PEM,
                                                    serialization.PublicFormat.SubjectPublicKeyInfo)
    refused(predict(guarded, bearer(make(jwt_keys, pem))), 401, words)
    assert_still_serving(guarded, model_dir)


# -- authorization -------------------------------------------------------------------------

def test_scopes_decide_per_model_and_action(guarded: ServerProcess, model_dir: str,
                                             jwt_keys: dict[str, Any]) -> None:
    refused(predict(guarded, key("reader")), 403, "key:reader", "predict:half_plus_two")
    assert guarded.client.get("/v1/models/half_plus_two/metadata", headers=key("reader")).status_code == 200
    assert guarded.client.get("/v1/models", headers=key("reader")).status_code == 200
    refused(guarded.client.get("/v1/models", headers=key("scorer")), 403)  # not a scope over every model
    other_model = bearer(token(jwt_keys["rsa"], scope="predict:slow"))
    refused(predict(guarded, other_model), 403, "jwt:alice")
    no_scope = bearer(token(jwt_keys["rsa"], scope=None))
    refused(predict(guarded, no_scope), 403)
    refused(guarded.client.post("/v2/repository/models/half_plus_two/unload", headers=key("scorer")), 403,
            "RepositoryModelUnload")
    refused(guarded.client.post("/v2/repository/models/half_plus_two/unload", headers=key("reader")), 403)
    r = guarded.client.post("/v2/repository/models/half_plus_two/load", headers=key("admin"))
    assert r.status_code == 200, r.text
    assert_still_serving(guarded, model_dir, key("admin"))  # admin covers predict


# -- gRPC: the same rules ------------------------------------------------------------------

@pytest.fixture(scope="module")
def guarded_channel(guarded: ServerProcess, pki: dict[str, bytes]) -> Iterator[grpc.Channel]:
    channel = grpc.secure_channel(guarded.grpc_target, grpc.ssl_channel_credentials(root_certificates=pki["ca"]))
    yield channel
    channel.close()


def grpc_predict(channel: grpc.Channel, metadata: list[tuple[str, str]], model: str = "half_plus_two",
                 xs: list[float] = XS, timeout: float = 30) -> list[float]:
    request = predict_pb2.PredictRequest()
    request.model_spec.name = model
    request.inputs["x"].CopyFrom(tf.make_tensor_proto(np.array(xs, np.float32)))
    response = prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict(
        request, metadata=metadata, timeout=timeout)
    return tf.make_ndarray(response.outputs["y"]).tolist()


def grpc_failure(call: Any) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        call()
    return info.value


def test_grpc_authentication_and_scopes(guarded_channel: grpc.Channel, model_dir: str,
                                        jwt_keys: dict[str, Any]) -> None:
    error = grpc_failure(lambda: grpc_predict(guarded_channel, []))
    assert error.code() == grpc.StatusCode.UNAUTHENTICATED and "Missing credentials" in error.details()
    error = grpc_failure(lambda: grpc_predict(guarded_channel, [("x-api-key", KEYS["old"])]))
    assert error.code() == grpc.StatusCode.UNAUTHENTICATED
    error = grpc_failure(lambda: grpc_predict(guarded_channel,
                                              [("authorization", f"Bearer {token(jwt_keys['rsa'], exp=1)}")]))
    assert error.code() == grpc.StatusCode.UNAUTHENTICATED and "expired" in error.details()
    error = grpc_failure(lambda: grpc_predict(guarded_channel, [("x-api-key", KEYS["reader"])]))
    assert error.code() == grpc.StatusCode.PERMISSION_DENIED
    reload = model_management_pb2.ReloadConfigRequest()
    stub = model_service_pb2_grpc.ModelServiceStub(guarded_channel)
    error = grpc_failure(lambda: stub.HandleReloadConfigRequest(reload, metadata=[("x-api-key", KEYS["scorer"])],
                                                                timeout=30))
    assert error.code() == grpc.StatusCode.PERMISSION_DENIED and "HandleReloadConfigRequest" in error.details()
    metadata = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
    metadata.model_spec.name = "half_plus_two"
    stub_p = prediction_service_pb2_grpc.PredictionServiceStub(guarded_channel)
    assert stub_p.GetModelMetadata(metadata, metadata=[("x-api-key", KEYS["reader"])], timeout=30).model_spec.name
    health = health_pb2_grpc.HealthStub(guarded_channel).Check(health_pb2.HealthCheckRequest(), timeout=30)
    assert health.status == health_pb2.HealthCheckResponse.SERVING  # health stays open
    assert grpc_predict(guarded_channel, [("authorization", f"Bearer {token(jwt_keys['rsa'])}")]) == \
        expected(model_dir)


def test_grpc_refuses_strangers_before_parsing_their_message(guarded_channel: grpc.Channel, model_dir: str) -> None:
    raw = guarded_channel.unary_unary("/tensorflow.serving.PredictionService/Predict",
                                      request_serializer=None, response_deserializer=None)
    garbage = b"\xff\xff\xff\xff not a protobuf"
    error = grpc_failure(lambda: raw(garbage, timeout=30))
    assert error.code() == grpc.StatusCode.UNAUTHENTICATED  # refused before the bytes were parsed
    error = grpc_failure(lambda: raw(garbage, metadata=[("x-api-key", KEYS["scorer"])], timeout=30))
    assert error.code() != grpc.StatusCode.UNAUTHENTICATED  # a known caller gets as far as the parser
    assert grpc_predict(guarded_channel, [("x-api-key", KEYS["scorer"])]) == expected(model_dir)


def test_grpc_v2_needs_credentials_too(guarded: ServerProcess, pki: dict[str, bytes], model_dir: str) -> None:
    from tfprod.protos import grpc_predict_v2_pb2 as pb
    from tfprod.protos import grpc_predict_v2_pb2_grpc as pb_grpc

    channel = grpc.secure_channel(guarded.grpc_target, grpc.ssl_channel_credentials(root_certificates=pki["ca"]))
    stub = pb_grpc.GRPCInferenceServiceStub(channel)
    request = pb.ModelInferRequest(model_name="half_plus_two")
    tensor = request.inputs.add(name="x", datatype="FP32", shape=[3])
    tensor.contents.fp32_contents.extend(XS)
    error = grpc_failure(lambda: stub.ModelInfer(request, timeout=30))
    assert error.code() == grpc.StatusCode.UNAUTHENTICATED
    answer = stub.ModelInfer(request, metadata=[("x-api-key", KEYS["scorer"])], timeout=30)
    assert np.frombuffer(answer.raw_output_contents[0], np.float32).tolist() == expected(model_dir)
    assert stub.ServerLive(pb.ServerLiveRequest(), timeout=30).live  # liveness stays open
    channel.close()


# -- rate limits and the concurrency cap ---------------------------------------------------

def test_rate_limit_allows_the_burst_then_429_then_refills(guarded: ServerProcess, guarded_channel: grpc.Channel,
                                                             model_dir: str) -> None:
    # key:limited: 0.5 requests/s, bursts of 5, shared by REST and gRPC
    codes = [predict(guarded, key("limited")).status_code for _ in range(5)]
    assert codes == [200] * 5
    over = predict(guarded, key("limited"))
    refused(over, 429, "Rate limit", "key:limited")
    assert int(over.headers["Retry-After"]) >= 1
    error = grpc_failure(lambda: grpc_predict(guarded_channel, [("x-api-key", KEYS["limited"])]))
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert dict(error.trailing_metadata())["retry-after"].isdigit()
    assert_still_serving(guarded, model_dir)  # other callers are not limited
    time.sleep(2.2)  # one token back
    assert predict(guarded, key("limited")).status_code == 200
    assert predict(guarded, key("limited")).status_code == 429


def test_concurrency_cap_answers_429_at_once(guarded: ServerProcess, model_dir: str) -> None:
    slow_body = {"instances": [1.0]}  # TF may run two at a time on two cores: 2 s, within the 3 s timeout
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        busy = [pool.submit(predict, guarded, key("scorer"), "slow", slow_body) for _ in range(4)]
        time.sleep(0.4)
        started = time.monotonic()
        over = predict(guarded, key("scorer"))
        assert time.monotonic() - started < 1.0
        refused(over, 429, "concurrent")
        assert over.headers["Retry-After"] == "1"
        assert [f.result().status_code for f in busy] == [200] * 4
    assert_still_serving(guarded, model_dir)


def test_request_timeout_is_504(guarded: ServerProcess, guarded_channel: grpc.Channel, model_dir: str) -> None:
    refused(predict(guarded, key("scorer"), "slow", {"instances": [4.0]}), 504, "timed out")
    error = grpc_failure(lambda: grpc_predict(guarded_channel, [("x-api-key", KEYS["scorer"])], "slow", [4.0]))
    assert error.code() == grpc.StatusCode.DEADLINE_EXCEEDED  # no client deadline: the server's applies
    time.sleep(1.5)  # the abandoned runs finish on their worker threads
    assert_still_serving(guarded, model_dir)


# -- request bounds ------------------------------------------------------------------------

def test_oversize_body_is_413(guarded: ServerProcess, model_dir: str) -> None:
    refused(guarded.client.post("/v1/models/half_plus_two:predict", content=b"[" * (2 << 20),
                                headers=key("scorer")), 413, "1048576")
    assert_still_serving(guarded, model_dir)


def test_oversize_grpc_message_is_refused(guarded_channel: grpc.Channel, model_dir: str) -> None:
    error = grpc_failure(lambda: grpc_predict(guarded_channel, [("x-api-key", KEYS["scorer"])],
                                              xs=[1.0] * 400_000))
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert grpc_predict(guarded_channel, [("x-api-key", KEYS["scorer"])]) == expected(model_dir)


def test_ten_thousand_deep_nesting_is_400(guarded: ServerProcess, model_dir: str) -> None:
    body = b'{"instances": ' + b"[" * 10_000 + b"1.0" + b"]" * 10_000 + b"}"
    r = guarded.client.post("/v1/models/half_plus_two:predict", content=body, headers=key("scorer"))
    refused(r, 400, "10001", "max_json_depth")
    nine = b'{"instances": ' + b"[" * 8 + b"1.0" + b"]" * 8 + b"}"  # depth 9: over the limit of 8
    refused(guarded.client.post("/v2/models/half_plus_two/infer", content=nine, headers=key("scorer")), 400,
            "depth 9")
    brackets_in_strings = json.dumps({"instances": XS, "signature_name": "serving_default", "x": "[[[[[[[[[["})
    r = guarded.client.post("/v1/models/half_plus_two:predict", content=brackets_in_strings, headers=key("scorer"))
    assert r.status_code == 200, r.text
    assert_still_serving(guarded, model_dir)


def test_huge_shape_claims_are_400_without_allocating(guarded: ServerProcess, guarded_channel: grpc.Channel,
                                                     model_dir: str) -> None:
    claim = {"inputs": [{"name": "x", "shape": [100_000_000], "datatype": "FP32", "data": [1.0]}]}
    started = time.monotonic()
    r = guarded.client.post("/v2/models/half_plus_two/infer", content=json.dumps(claim), headers=key("scorer"))
    assert r.status_code == 400, r.text
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "half_plus_two"
    request.inputs["x"].dtype = tf.float32.as_datatype_enum
    request.inputs["x"].tensor_shape.dim.add(size=100_000_000)
    request.inputs["x"].float_val.append(1.0)
    stub = prediction_service_pb2_grpc.PredictionServiceStub(guarded_channel)
    error = grpc_failure(lambda: stub.Predict(request, metadata=[("x-api-key", KEYS["scorer"])], timeout=30))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert time.monotonic() - started < 5
    assert_still_serving(guarded, model_dir)


def test_tensor_elements_and_batch_rows_are_bounded(guarded: ServerProcess, model_dir: str) -> None:
    refused(predict(guarded, key("scorer"), body={"instances": [0.5] * 120_000}), 400, "max_tensor_elements")
    refused(predict(guarded, key("scorer"), body={"instances": [0.5] * 600}), 400, "max_batch_rows")
    examples = {"signature_name": "classify_x_to_y", "examples": [{"x": 0.5}] * 600}
    r = guarded.client.post("/v1/models/half_plus_two:classify", content=json.dumps(examples), headers=key("scorer"))
    refused(r, 400, "'examples' has 600 rows", "max_batch_rows")
    r = predict(guarded, key("scorer"), body={"instances": [0.5] * 512})
    assert r.status_code == 200 and len(r.json()["predictions"]) == 512
    assert_still_serving(guarded, model_dir)


# -- model versions: signatures and the graph scan -----------------------------------------

def _status(server: ServerProcess, model: str) -> dict[int, dict[str, Any]]:
    r = server.client.get(f"/v1/models/{model}", headers=key("reader"))
    assert r.status_code == 200, r.text
    return {int(v["version"]): v for v in r.json()["model_version_status"]}


def _wait_refused(server: ServerProcess, model: str, version: int, *words: str) -> str:
    def ended() -> bool:
        v = _status(server, model).get(version)
        return v is not None and v["state"] == "END"
    server.wait_until(ended, 60, f"{model} version {version} to be refused")
    status = _status(server, model)[version]["status"]
    assert status["error_code"] == "PERMISSION_DENIED", status
    for word in words:
        assert word in status["error_message"], status
    return str(status["error_message"])


def _tampered(src: str, dest: str, signer: dict[str, str], change: str) -> None:
    staging = dest + ".staging"
    shutil.copytree(src, staging)
    signing.sign(staging, signer["untrusted" if change == "untrusted key" else "release"])
    if change == "changed byte":
        data = os.path.join(staging, "variables", "variables.data-00000-of-00001")
        with open(data, "r+b") as f:
            f.seek(-1, os.SEEK_END)
            last = f.read(1)[0]
            f.seek(-1, os.SEEK_END)
            f.write(bytes([last ^ 0x01]))
    elif change == "added file":
        with open(os.path.join(staging, "variables", "extra.bin"), "wb") as f:
            f.write(b"not signed")
    elif change == "removed file":
        os.remove(os.path.join(staging, "fingerprint.pb"))
    elif change == "unsigned":
        os.remove(os.path.join(staging, signing.SIGNATURE_FILE))
    os.rename(staging, dest)


@pytest.mark.parametrize("change, words", [
    ("changed byte", ["changed variables/variables.data-00000-of-00001"]),
    ("added file", ["added variables/extra.bin"]),
    ("removed file", ["removed fingerprint.pb"]),
    ("untrusted key", ["not from a trusted key"]),
    ("unsigned", ["not signed", "tfprod sign"]),
])
def test_unverified_versions_are_refused_and_the_old_one_keeps_serving(
        guarded: ServerProcess, model_dir: str, signer: dict[str, str], change: str, words: list[str]) -> None:
    base = os.path.join(os.path.dirname(_base_of(guarded, "signed")), "signed")
    version = max(int(v) for v in os.listdir(base) if v.isdigit()) + 1
    _tampered(os.path.join(model_dir, "half_plus_two", "1"), os.path.join(base, str(version)), signer, change)
    _wait_refused(guarded, "signed", version, *words)
    assert refusals(guarded)[("signed", "signature")] >= 1
    assert _status(guarded, "signed")[1]["state"] == "AVAILABLE"
    assert_still_serving(guarded, model_dir)
    r = predict(guarded, key("scorer"), "signed")
    assert r.status_code == 200 and r.json()["predictions"] == expected(model_dir)
    assert "refused" in guarded.log()


def _base_of(server: ServerProcess, model: str) -> str:
    config = next(a for a in server.proc.args if str(a).startswith("--model_config_file="))  # type: ignore[union-attr]
    with open(str(config).split("=", 1)[1]) as f:
        text = f.read()
    return text.split(f'name: "{model}" base_path: "', 1)[1].split('"', 1)[0]


def test_init_op_reading_a_file_is_refused_unless_allowed(guarded: ServerProcess, model_dir: str,
                                                           signer: dict[str, str], tmp_path: Any) -> None:
    # `vocab` is allowed InitializeTableFromTextFileV2 by the config: it loaded and answers
    r = guarded.client.post("/v1/models/vocab:predict", content=json.dumps({"instances": ["two", "zero", "?"]}),
                            headers=key("scorer"))
    assert r.status_code == 200 and r.json()["predictions"] == [2, 0, -1], r.text
    # the same kind of model, signed by the trusted key, as a new version of `scanned`: refused
    src = str(tmp_path / "vocab")
    saved_models.vocab_lookup(src, ["a", "b"])
    _signed_copy(src, _base_of(guarded, "scanned"), 2, signer["release"])
    message = _wait_refused(guarded, "scanned", 2, "InitializeTableFromTextFileV2", "init op", "allow_ops")
    assert "scanned" in message
    assert refusals(guarded)[("scanned", "graph_scan")] == 1
    r = predict(guarded, key("scorer"), "scanned")
    assert r.status_code == 200 and r.json()["predictions"] == expected(model_dir)


def refusals(server: ServerProcess) -> dict[tuple[str, str], float]:
    """:tfprod:security:refusal_count by (model_name, reason)."""
    counts = {}
    for line in server.client.get("/monitoring/prometheus/metrics").text.splitlines():
        if line.startswith(":tfprod:security:refusal_count{"):
            labels, value = line.rsplit(" ", 1)
            model = labels.split('model_name="', 1)[1].split('"', 1)[0]
            reason = labels.split('reason="', 1)[1].split('"', 1)[0]
            counts[(model, reason)] = float(value)
    return counts


def test_refusals_are_counted(guarded: ServerProcess) -> None:
    assert guarded.client.post("/v1/models/stranger-made-up:predict", content=b"{}").status_code == 401
    assert predict(guarded, key("reader")).status_code == 403
    assert 429 in [predict(guarded, key("limited")).status_code for _ in range(6)]  # burst 5
    counts = refusals(guarded)
    assert counts[("", "unauthenticated")] >= 1, counts
    assert counts[("half_plus_two", "permission_denied")] >= 1, counts
    assert counts[("half_plus_two", "rate_limited")] >= 1, counts
    assert not any("stranger-made-up" in model for model, _ in counts)  # strangers cannot mint series
    assert "stranger-made-up" not in guarded.client.get("/monitoring/prometheus/metrics").text


# -- TLS and mutual TLS --------------------------------------------------------------------

def test_rest_refuses_plain_http_when_tls_is_on(guarded: ServerProcess, model_dir: str) -> None:
    with pytest.raises(httpx.TransportError):
        httpx.get(f"http://127.0.0.1:{guarded.port}/healthz", timeout=5)
    with pytest.raises(httpx.TransportError):  # a certificate nobody vouches for
        httpx.get(f"https://127.0.0.1:{guarded.port}/healthz", timeout=5)
    assert_still_serving(guarded, model_dir)


def test_mutual_tls_with_hs256_tokens(mutual: ServerProcess, pki: dict[str, bytes], jwt_keys: dict[str, Any],
                                      model_dir: str) -> None:
    good = token(jwt_keys["hs"], "HS256", None, aud=None, iss=None)
    assert_still_serving(mutual, model_dir, bearer(good))
    refused(predict(mutual, bearer(token(b"w" * 48, "HS256", None, aud=None, iss=None))), 401, "signature")
    refused(predict(mutual, bearer(token(jwt_keys["rsa"], aud=None, iss=None))), 401, "RS256")
    refused(predict(mutual, {}), 401)
    credentials = grpc.ssl_channel_credentials(root_certificates=pki["ca"], private_key=pki["client_key"],
                                               certificate_chain=pki["client_cert"])
    with grpc.secure_channel(mutual.grpc_target, credentials) as channel:
        assert grpc_predict(channel, [("authorization", f"Bearer {good}")]) == expected(model_dir)


def test_mutual_tls_refuses_clients_without_a_trusted_certificate(mutual: ServerProcess, pki: dict[str, bytes],
                                                                  jwt_keys: dict[str, Any], model_dir: str,
                                                                  tmp_path: Any) -> None:
    for cert in (None, "stranger_cert"):
        context = _client_context(pki, tmp_path, cert)
        with pytest.raises(httpx.TransportError):
            httpx.get(f"{mutual.url}/healthz", verify=context, timeout=5)
    credentials = grpc.ssl_channel_credentials(root_certificates=pki["ca"])
    with grpc.secure_channel(mutual.grpc_target, credentials) as channel:
        error = grpc_failure(lambda: grpc_predict(channel, [], timeout=5))
        assert error.code() == grpc.StatusCode.UNAVAILABLE
    assert_still_serving(mutual, model_dir, bearer(token(jwt_keys["hs"], "HS256", None, aud=None, iss=None)))


def test_revoking_a_key_takes_effect_without_a_restart(mutual: ServerProcess, model_dir: str,
                                                       jwt_keys: dict[str, Any]) -> None:
    assert_still_serving(mutual, model_dir, key("temp"))
    root = mutual.config_root  # type: ignore[attr-defined]
    _write_mutual_config(root, revoke_temp=True)
    mutual.wait_until(lambda: predict(mutual, key("temp")).status_code == 401, 15, "the key to be revoked")
    assert_still_serving(mutual, model_dir, bearer(token(jwt_keys["hs"], "HS256", None, aud=None, iss=None)))
    _write_mutual_config(root, revoke_temp=False)
    mutual.wait_until(lambda: predict(mutual, key("temp")).status_code == 200, 15, "the key to be back")
