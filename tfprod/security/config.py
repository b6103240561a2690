"""The security config file (`--security_config_file`, TOML) -> frozen options.

One file turns on every protection: `[auth]` (API keys, JWT, per-model scopes), `[limits]`
(rate limits, concurrency, request bounds), `[models]` (signatures, graph scan) and `[tls]`.
Unknown keys are errors: a typo in a security setting must not silently turn it off. Relative
paths are read relative to the file. docs/security.md shows every setting.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import math
import os
from collections.abc import Mapping
from typing import Any

import jwt

from tfprod.config.model_config import ConfigError
from tfprod.config.table import Table, read_toml

ACTIONS = ("read", "predict", "admin")
_HMAC = ("HS256", "HS384", "HS512")
_ASYMMETRIC = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA")


@dataclasses.dataclass(frozen=True)
class Scope:
    """`predict:fraud-*`: an action on the models whose names match a glob. `admin` covers every
    action, `predict` covers `read`; a bare action means every model."""

    action: str
    models: str = "*"

    @classmethod
    def parse(cls, text: str) -> Scope:
        action, _, models = text.partition(":")
        if action not in ACTIONS:
            raise ConfigError(f"scope {text!r}: the action must be one of {', '.join(ACTIONS)} "
                              "(as in 'predict:digits', 'read:*', 'admin')")
        return cls(action, models or "*")

    def allows(self, action: str, model: str) -> bool:
        if ACTIONS.index(self.action) < ACTIONS.index(action):
            return False
        if not model:  # server-wide calls (list models, reload config) need a scope over every model
            return self.models == "*"
        return fnmatch.fnmatchcase(model, self.models)


@dataclasses.dataclass(frozen=True)
class ApiKey:
    name: str
    sha256: bytes  # keys are stored hashed; the key itself never is
    scopes: tuple[Scope, ...]


@dataclasses.dataclass(frozen=True)
class JwtOptions:
    algorithms: tuple[str, ...]
    key: Any = None  # an HMAC secret (bytes) or a public key object
    jwks: jwt.PyJWKSet | None = None
    audience: str | None = None
    issuer: str | None = None
    leeway_s: float = 0.0
    scope_claim: str = "scope"
    scope_prefix: str = ""  # only token scopes starting with it count, e.g. "tfprod/" in "tfprod/predict:digits"
    required_claims: tuple[str, ...] = ("exp",)


@dataclasses.dataclass(frozen=True)
class RateRule:
    caller: str  # a glob on the caller: "key:NAME", "jwt:SUBJECT" or "addr:IP"
    model: str
    per_second: float
    burst: float


@dataclasses.dataclass(frozen=True)
class Limits:
    rate: tuple[RateRule, ...] = ()
    max_concurrent_requests: int = 0  # 0: no cap
    max_body_bytes: int | None = None
    max_tensor_elements: int | None = None
    max_batch_rows: int | None = None
    max_json_depth: int | None = None  # None: the JSON parser's own bound (1024)
    request_timeout_s: float | None = None


@dataclasses.dataclass(frozen=True)
class ModelRules:
    require_signature: bool = False
    trusted_keys: tuple[str, ...] = ()  # PEM public key files
    graph_scan: str = "warn"  # enforce | warn | off
    allow_ops: Mapping[str, tuple[str, ...]] = dataclasses.field(default_factory=dict)

    def allowed_ops(self, model: str) -> tuple[str, ...]:
        return tuple(op for pattern, ops in self.allow_ops.items() if fnmatch.fnmatchcase(model, pattern)
                     for op in ops)


@dataclasses.dataclass(frozen=True)
class TlsOptions:
    cert_file: str
    key_file: str
    client_ca_file: str = ""
    require_client_cert: bool = False


@dataclasses.dataclass(frozen=True)
class SecurityConfig:
    path: str = ""
    auth: bool = False
    api_keys: tuple[ApiKey, ...] = ()
    jwt: JwtOptions | None = None
    limits: Limits = Limits()
    models: ModelRules = ModelRules()
    tls: TlsOptions | None = None


def read_security_config(path: str) -> SecurityConfig:
    doc = read_toml(path, "--security_config_file")
    try:
        return parse_security_config(doc, os.path.dirname(os.path.abspath(path)), path)
    except ConfigError:
        raise
    except (TypeError, ValueError, AttributeError, KeyError) as e:  # a value of an unexpected shape
        raise ConfigError(f"--security_config_file {path}: {type(e).__name__}: {e}") from None


def parse_security_config(doc: Mapping[str, Any], base_dir: str, path: str = "") -> SecurityConfig:
    top = Table(doc, "security config")
    auth_doc = top.get("auth", dict)
    limits = _limits(top.get("limits", dict, {}))
    models = _models(top.get("models", dict, {}), base_dir)
    tls_doc = top.get("tls", dict)
    top.done()
    config = SecurityConfig(path=path, limits=limits, models=models,
                            tls=_tls(tls_doc, base_dir) if tls_doc is not None else None)
    if auth_doc is None:
        return config
    auth = Table(auth_doc, "[auth]")
    enabled = auth.get("enabled", bool, True)
    keys = tuple(_api_key(k, i) for i, k in enumerate(auth.get("api_keys", list, [])))
    jwt_doc = auth.get("jwt", dict)
    auth.done()
    names = [k.name for k in keys]
    if len(set(names)) != len(names):
        raise ConfigError("[auth]: two api_keys share a name; names identify callers in logs and rate limits")
    hashes = [k.sha256 for k in keys if k.sha256]
    if len(set(hashes)) != len(hashes):
        raise ConfigError("[auth]: two api_keys have the same sha256: one key would act as two callers")
    jwt_options = _jwt(jwt_doc, base_dir) if jwt_doc is not None else None
    if enabled and not keys and jwt_options is None:
        raise ConfigError("[auth] is enabled but lists no api_keys and no [auth.jwt]: nobody could call the server")
    return dataclasses.replace(config, auth=enabled, api_keys=keys, jwt=jwt_options)


def _scopes(value: Any, where: str) -> tuple[Scope, ...]:
    if isinstance(value, str):
        value = value.split()
    if not isinstance(value, list) or not all(isinstance(s, str) for s in value):
        raise ConfigError(f"{where}.scopes must be a list of strings such as ['predict:digits']")
    return tuple(Scope.parse(s) for s in value)


def _api_key(doc: Any, index: int) -> ApiKey:
    t = Table(doc, f"[[auth.api_keys]] #{index + 1}")
    name = t.get("name", str)
    digest = t.get("sha256", str)
    revoked = t.get("revoked", bool, False)
    scopes = _scopes(t.get("scopes", (list, str), []), f"[[auth.api_keys]] {name!r}")
    t.done()
    if not name or not digest:
        raise ConfigError(f"[[auth.api_keys]] #{index + 1}: 'name' and 'sha256' are required "
                          "(`tfprod apikey NAME` prints both)")
    try:
        raw = bytes.fromhex(digest)
    except ValueError:
        raw = b""
    if len(raw) != 32:
        raise ConfigError(f"[[auth.api_keys]] {name!r}: sha256 must be 64 hex digits (the hash of the key)")
    return ApiKey(name, b"" if revoked else raw, scopes)


def _read(base_dir: str, path: str, where: str) -> bytes:
    full = os.path.join(base_dir, path)
    try:
        with open(full, "rb") as f:
            return f.read()
    except OSError as e:
        raise ConfigError(f"{where}: cannot read {full}: {e.strerror}") from None


def _jwt(doc: Any, base_dir: str) -> JwtOptions:
    t = Table(doc, "[auth.jwt]")
    algorithms = tuple(t.get("algorithms", list, []))
    secret_env = t.get("secret_env", str)
    secret_file = t.get("secret_file", str)
    public_key_file = t.get("public_key_file", str)
    jwks_file = t.get("jwks_file", str)
    options = JwtOptions(
        algorithms=algorithms,
        audience=t.get("audience", str),
        issuer=t.get("issuer", str),
        leeway_s=float(t.get("leeway_s", (int, float), 0)),
        scope_claim=t.get("scope_claim", str, "scope"),
        scope_prefix=t.get("scope_prefix", str, ""),
        required_claims=tuple(t.get("required_claims", list, ["exp"])),
    )
    t.done()
    sources = [s for s in (secret_env, secret_file, public_key_file, jwks_file) if s]
    if len(sources) != 1:
        raise ConfigError("[auth.jwt]: set exactly one of secret_env, secret_file (HS256), public_key_file "
                          "or jwks_file (RS256/ES256)")
    if not algorithms or not all(isinstance(a, str) for a in algorithms):
        raise ConfigError("[auth.jwt].algorithms must list the accepted algorithms, e.g. ['RS256']")
    hmac = secret_env or secret_file
    allowed = _HMAC if hmac else _ASYMMETRIC
    wrong = [a for a in algorithms if a not in allowed]
    if wrong:  # 'none', or a key type that would allow algorithm confusion
        raise ConfigError(f"[auth.jwt]: algorithm(s) {', '.join(wrong)} cannot be used with "
                          f"{'a shared secret' if hmac else 'public keys'}; allowed: {', '.join(allowed)}")
    if secret_env:
        secret = os.environ.get(secret_env, "").encode()
        if len(secret) < 32:
            raise ConfigError(f"[auth.jwt]: environment variable {secret_env} must hold a secret of at least "
                              "32 bytes")
        return dataclasses.replace(options, key=secret)
    if secret_file:
        secret = _read(base_dir, secret_file, "[auth.jwt].secret_file").strip()
        if len(secret) < 32:
            raise ConfigError("[auth.jwt].secret_file must hold a secret of at least 32 bytes")
        return dataclasses.replace(options, key=secret)
    if public_key_file:
        pem = _read(base_dir, public_key_file, "[auth.jwt].public_key_file")
        try:
            from cryptography.hazmat.primitives.serialization import load_pem_public_key
            return dataclasses.replace(options, key=load_pem_public_key(pem))
        except ValueError as e:
            raise ConfigError(f"[auth.jwt].public_key_file is not a PEM public key: {e}") from None
    text = _read(base_dir, jwks_file, "[auth.jwt].jwks_file")
    try:
        jwks = jwt.PyJWKSet.from_json(text.decode())
    except (jwt.PyJWKSetError, jwt.PyJWKError, ValueError, TypeError, AttributeError) as e:
        raise ConfigError(f"[auth.jwt].jwks_file is not a usable JWK set: {e}") from None
    if any(key.key_type == "oct" for key in jwks.keys):
        raise ConfigError("[auth.jwt].jwks_file holds a symmetric ('oct') key: use secret_file for HS256")
    return dataclasses.replace(options, jwks=jwks)


def _limits(doc: Any) -> Limits:
    t = Table(doc, "[limits]")
    rules = []
    for i, rule_doc in enumerate(t.get("rate", list, [])):
        r = Table(rule_doc, f"[[limits.rate]] #{i + 1}")
        per_second = float(r.get("per_second", (int, float), 0))
        rule = RateRule(r.get("caller", str, "*"), r.get("model", str, "*"), per_second,
                        float(r.get("burst", (int, float), max(1.0, per_second))))
        r.done()
        if not (0 < rule.per_second < math.inf and 1 <= rule.burst < math.inf):
            raise ConfigError(f"[[limits.rate]] #{i + 1}: per_second must be > 0 and burst >= 1")
        rules.append(rule)

    def positive(key: str, kind: type | tuple[type, ...] = int) -> Any:
        value = t.get(key, kind)
        if value is not None and value <= 0:
            raise ConfigError(f"[limits].{key} must be positive")
        return value

    limits = Limits(
        rate=tuple(rules),
        max_concurrent_requests=positive("max_concurrent_requests") or 0,
        max_body_bytes=positive("max_body_bytes"),
        max_tensor_elements=positive("max_tensor_elements"),
        max_batch_rows=positive("max_batch_rows"),
        max_json_depth=positive("max_json_depth"),
        request_timeout_s=positive("request_timeout_s", (int, float)),
    )
    t.done()
    return limits


def _models(doc: Any, base_dir: str) -> ModelRules:
    t = Table(doc, "[models]")
    keys = t.get("trusted_keys", list, [])
    allow = t.get("allow_ops", dict, {})
    if not all(isinstance(k, str) for k in keys):
        raise ConfigError("[models].trusted_keys must be a list of PEM file paths")
    for pattern, ops in allow.items():
        if not isinstance(ops, list) or not all(isinstance(op, str) for op in ops):
            raise ConfigError(f"[models.allow_ops].{pattern} must be a list of op names, e.g. ['ReadFile']")
    rules = ModelRules(
        require_signature=t.get("require_signature", bool, False),
        trusted_keys=tuple(os.path.join(base_dir, k) for k in keys),
        graph_scan=t.get("graph_scan", str, "warn"),
        allow_ops={str(k): tuple(v) for k, v in allow.items()},
    )
    t.done()
    if rules.graph_scan not in ("enforce", "warn", "off"):
        raise ConfigError(f"[models].graph_scan must be 'enforce', 'warn' or 'off', got {rules.graph_scan!r}")
    if rules.require_signature and not rules.trusted_keys:
        raise ConfigError("[models].require_signature needs trusted_keys: the public keys (PEM) whose "
                          "signatures are accepted")
    for key in rules.trusted_keys:
        _read("", key, "[models].trusted_keys")
    return rules


def _tls(doc: Any, base_dir: str) -> TlsOptions:
    t = Table(doc, "[tls]")
    cert, key = t.get("cert_file", str), t.get("key_file", str)
    ca = t.get("client_ca_file", str, "")
    require = t.get("require_client_cert", bool, False)
    t.done()
    if not cert or not key:
        raise ConfigError("[tls]: cert_file and key_file are both required (PEM files)")
    if require and not ca:
        raise ConfigError("[tls].require_client_cert needs client_ca_file: the CA that signs client certificates")
    paths = [os.path.join(base_dir, p) if p else "" for p in (cert, key, ca)]
    for p in filter(None, paths):
        _read("", p, "[tls]")
    return TlsOptions(paths[0], paths[1], paths[2], require)
