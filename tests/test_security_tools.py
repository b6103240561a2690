"""`tfprod sign/verify/apikey`, interoperability with OpenSSF's own `model_signing` CLI, the
graph scan in `tfprod inspect`, and the security config's checks (a mistake fails loudly)."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import subprocess
import sys
from typing import Any

import pytest
import saved_models
from cryptography.hazmat.primitives import serialization
from pki import key_pairs

from tfprod.config.model_config import ConfigError
from tfprod.security.config import Scope, parse_security_config
from tfprod.security.guard import Caller, Guard

TFPROD = [sys.executable, "-m", "tfprod"]
MODEL_SIGNING = [sys.executable, "-m", "model_signing"]


def run(cmd: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    return key_pairs(tmp_path_factory.mktemp("keys"), "ours", "theirs")


def test_signatures_interoperate_with_model_signing_cli(model_dir: str, keys: dict[str, str], tmp_path: Any) -> None:
    ours, theirs = str(tmp_path / "ours"), str(tmp_path / "theirs")
    shutil.copytree(os.path.join(model_dir, "half_plus_two", "1"), ours)
    shutil.copytree(os.path.join(model_dir, "half_plus_two", "1"), theirs)
    signed = run([*TFPROD, "sign", ours, "--private_key", keys["ours"]])
    assert signed.returncode == 0 and "model.sig" in signed.stdout, signed.stderr
    check = run([*MODEL_SIGNING, "verify", "key", ours, "--signature", os.path.join(ours, "model.sig"),
                 "--public_key", keys["ours.pub"]])
    assert check.returncode == 0, check.stdout + check.stderr  # OpenSSF's tool accepts our signature
    made = run([*MODEL_SIGNING, "sign", "key", theirs, "--private_key", keys["theirs"], "--signature",
                os.path.join(theirs, "model.sig")])
    assert made.returncode == 0, made.stderr
    verified = run([*TFPROD, "verify", theirs, "--public_key", keys["ours.pub"], "--public_key", keys["theirs.pub"]])
    assert verified.returncode == 0 and "theirs.pub" in verified.stdout, verified.stderr  # and we accept theirs
    wrong = run([*TFPROD, "verify", theirs, "--public_key", keys["ours.pub"]])
    assert wrong.returncode == 1 and "NOT verified" in wrong.stderr and "trusted key" in wrong.stderr
    with open(os.path.join(theirs, "saved_model.pb"), "ab") as f:
        f.write(b"\0")
    tampered = run([*TFPROD, "verify", theirs, "--public_key", keys["theirs.pub"]])
    assert tampered.returncode == 1 and "changed saved_model.pb" in tampered.stderr
    assert "Traceback" not in tampered.stderr + wrong.stderr


def test_apikey_prints_a_key_and_a_config_entry_that_works() -> None:
    out = run([*TFPROD, "apikey", "batch-scorer", "--scope", "predict:digits"])
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    key = next(line for line in lines if line.startswith("tfp_"))
    entry = "\n".join(lines[lines.index("[[auth.api_keys]]"):])
    import tomllib
    config = parse_security_config({"auth": tomllib.loads(entry.replace("[[auth.api_keys]]", "[[api_keys]]"))}, ".")
    assert config.api_keys[0].sha256 == hashlib.sha256(key.encode()).digest()
    caller = Guard(config, _NoStats()).authenticate(None, key, "127.0.0.1")
    assert caller == Caller("key:batch-scorer", (Scope("predict", "digits"),))


class _NoStats:
    def record_refusal(self, model: str, reason: str) -> None:
        pass


def test_inspect_shows_the_graph_scan(tmp_path: Any) -> None:
    saved_models.vocab_lookup(str(tmp_path / "vocab" / "1"), ["a", "b"])
    out = run([*TFPROD, "inspect", str(tmp_path / "vocab"), "--json"])
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    assert doc["signed"] is False
    findings = doc["meta_graphs"][0]["graph_scan"]
    assert {"op": "InitializeTableFromTextFileV2", "root": "init op", "reason": "reads or writes files"} in findings
    table = run([*TFPROD, "inspect", str(tmp_path / "vocab")])
    assert "InitializeTableFromTextFileV2" in table.stdout and "unsigned" in table.stdout


CONFIG_ERRORS = {
    "unknown key": ({"limits": {"max_body_byte": 10}}, "unknown setting(s) max_body_byte"),
    "alg none": ({"auth": {"jwt": {"algorithms": ["none"], "secret_env": "X"}}}, "none"),
    "HS with public keys": ({"auth": {"jwt": {"algorithms": ["HS256"], "public_key_file": "k.pem"}}}, "HS256"),
    "RS with a secret": ({"auth": {"jwt": {"algorithms": ["RS256"], "secret_file": "s"}}}, "RS256"),
    "two key sources": ({"auth": {"jwt": {"algorithms": ["RS256"], "public_key_file": "a", "jwks_file": "b"}}},
                        "exactly one"),
    "short secret": ({"auth": {"jwt": {"algorithms": ["HS256"], "secret_env": "TFPROD_TEST_SHORT"}}}, "32 bytes"),
    "nobody can call": ({"auth": {}}, "nobody could call"),
    "bad hash": ({"auth": {"api_keys": [{"name": "a", "sha256": "abc"}]}}, "64 hex digits"),
    "bad scope": ({"auth": {"api_keys": [{"name": "a", "sha256": "0" * 64, "scopes": ["write:x"]}]}},
                  "predict:digits"),
    "wrong type": ({"limits": {"max_concurrent_requests": "10"}}, "must be a int"),
    "bool as number": ({"limits": {"max_batch_rows": True}}, "must be a int"),
    "negative": ({"limits": {"max_batch_rows": -1}}, "positive"),
    "zero rate": ({"limits": {"rate": [{"per_second": 0}]}}, "per_second"),
    "signature without keys": ({"models": {"require_signature": True}}, "trusted_keys"),
    "graph scan mode": ({"models": {"graph_scan": "maybe"}}, "enforce"),
    "mTLS without CA": ({"tls": {"cert_file": "c", "key_file": "k", "require_client_cert": True}}, "client_ca_file"),
    "same key twice": ({"auth": {"api_keys": [{"name": "a", "sha256": "1" * 64}, {"name": "b", "sha256": "1" * 64}]}},
                       "same sha256"),
    "NaN rate": ({"limits": {"rate": [{"per_second": float("nan")}]}}, "per_second"),
    "infinite burst": ({"limits": {"rate": [{"per_second": 1, "burst": float("inf")}]}}, "burst"),
    "allow_ops as a string": ({"models": {"allow_ops": {"m": "ReadFile"}}}, "list of op names"),
    "trusted key not a path": ({"models": {"trusted_keys": [1]}}, "PEM file paths"),
    "star scope": ({"auth": {"api_keys": [{"name": "a", "sha256": "0" * 64, "scopes": ["*"]}]}}, "action"),
}


@pytest.mark.parametrize("case", CONFIG_ERRORS)
def test_config_mistakes_are_errors(case: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TFPROD_TEST_SHORT", "short")
    doc, words = CONFIG_ERRORS[case]
    with pytest.raises(ConfigError) as info:
        parse_security_config(doc, "/nonexistent")
    assert words in str(info.value)


def test_scopes() -> None:
    assert Scope.parse("predict:fraud-*").allows("predict", "fraud-eu")
    assert Scope.parse("predict:fraud-*").allows("read", "fraud-eu")  # predict covers read
    assert not Scope.parse("predict:fraud-*").allows("predict", "digits")
    assert not Scope.parse("read:*").allows("predict", "digits")
    assert not Scope.parse("predict:digits").allows("read", "")  # server-wide needs every model
    assert Scope.parse("admin").allows("predict", "anything") and Scope.parse("admin").allows("admin", "")


def test_serve_refuses_a_bad_security_config(tmp_path: Any) -> None:
    config = tmp_path / "security.toml"
    (tmp_path / "security.toml").write_text('[auth.jwt]\nalgorithms = ["none"]\nsecret_env = "X"\n')
    out = run([*TFPROD, "serve", "--model_base_path", str(tmp_path), f"--security_config_file={config}"])
    assert out.returncode == 1 and "algorithm(s) none" in out.stderr and "Traceback" not in out.stderr
    (tmp_path / "security.toml").write_text("[auth\n")
    out = run([*TFPROD, "serve", "--model_base_path", str(tmp_path), f"--security_config_file={config}"])
    assert out.returncode == 1 and "not valid TOML" in out.stderr


def test_serving_beyond_loopback_without_auth_warns(caplog: pytest.LogCaptureFixture) -> None:
    from tfprod.server import ServerOptions, _warn_if_open

    with caplog.at_level(logging.WARNING, "tfprod.server"):
        _warn_if_open(ServerOptions(models=(), host="127.0.0.1"))
        assert not caplog.records
        _warn_if_open(ServerOptions(models=(), host="0.0.0.0"))
    assert "authentication is off" in caplog.text and "--security_config_file" in caplog.text


def test_jwt_with_a_pem_public_key(tmp_path: Any) -> None:
    import base64
    import hmac
    import time

    import jwt
    from cryptography.hazmat.primitives.asymmetric import rsa

    from tfprod.errors import Code, ServingError

    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = private.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    (tmp_path / "issuer.pem").write_bytes(pem)
    config = parse_security_config({"auth": {"jwt": {"algorithms": ["RS256"], "public_key_file": "issuer.pem"}}},
                                   str(tmp_path))
    guard = Guard(config, _NoStats())
    claims = {"sub": "svc", "exp": int(time.time()) + 60, "scope": ["predict:digits", "unrelated.scope"]}
    caller = guard.authenticate(f"Bearer {jwt.encode(claims, private, algorithm='RS256')}", None, "::1")
    assert caller == Caller("jwt:svc", (Scope("predict", "digits"),))  # scopes for other services are ignored

    def b64(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    head = b64(b'{"alg":"HS256","typ":"JWT"}') + "." + b64(json.dumps(claims).encode())
    confused = head + "." + b64(hmac.new(pem, head.encode(), hashlib.sha256).digest())
    with pytest.raises(ServingError) as info:
        guard.authenticate(f"Bearer {confused}", None, "::1")
    assert info.value.code == Code.UNAUTHENTICATED and "HS256" in info.value.message


def test_jwks_with_a_symmetric_key_is_refused(tmp_path: Any) -> None:
    (tmp_path / "jwks.json").write_text(json.dumps({"keys": [{"kty": "oct", "k": "c2VjcmV0", "kid": "s"}]}))
    with pytest.raises(ConfigError, match="symmetric"):
        parse_security_config({"auth": {"jwt": {"algorithms": ["RS256"], "jwks_file": "jwks.json"}}},
                              str(tmp_path))
    (tmp_path / "jwks.json").write_text("[1, 2]")
    (tmp_path / "security.toml").write_text('[auth.jwt]\nalgorithms = ["RS256"]\njwks_file = "jwks.json"\n')
    from tfprod.security.config import read_security_config
    with pytest.raises(ConfigError):
        read_security_config(str(tmp_path / "security.toml"))


def test_a_reload_cannot_turn_authentication_off() -> None:
    on = parse_security_config({"auth": {"api_keys": [{"name": "a", "sha256": "0" * 64}]}}, ".")
    guard = Guard(on, _NoStats())
    with pytest.raises(ConfigError, match="restart"):
        guard._reload(parse_security_config({}, "."))
    assert guard.config.auth


def test_token_scopes_can_be_namespaced(tmp_path: Any) -> None:
    import time

    import jwt

    secret = "s" * 40
    (tmp_path / "secret").write_text(secret)
    config = parse_security_config({"auth": {"jwt": {"algorithms": ["HS256"], "secret_file": "secret",
                                                     "scope_prefix": "tfprod/"}}}, str(tmp_path))
    claims = {"sub": "svc", "exp": int(time.time()) + 60, "scope": "admin predict:* tfprod/predict:digits"}
    caller = Guard(config, _NoStats()).authenticate(f"Bearer {jwt.encode(claims, secret)}", None, "::1")
    assert caller.scopes == (Scope("predict", "digits"),)  # another service's "admin" grants nothing here


def test_rate_buckets_stay_bounded() -> None:
    from tfprod.security import guard as guard_module

    config = parse_security_config({"limits": {"rate": [{"per_second": 1, "burst": 1}]}}, ".")
    guard = Guard(config, _NoStats())
    for i in range(guard_module.MAX_BUCKETS + 50):
        guard.permit(Caller("addr:1.2.3.4"), f"model-{i}", "Predict")
    assert len(guard._buckets) == guard_module.MAX_BUCKETS
