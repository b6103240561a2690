"""Who is calling, may they, and not too often: one `Guard` for REST v1, V2 and gRPC alike.

The front ends ask it three questions, cheapest first, before a request body is read or parsed:
`authenticate` (API key or JWT from the headers/metadata), `permit` (the caller's scopes for this
model and API, then their rate limit) and `slot` (the concurrency cap). Every refusal is a
`ServingError` the front end answers like any other (401/403/429, UNAUTHENTICATED/...), and a
refusal metric. With no `[auth]` in the config every caller is anonymous and allowed; limits
still apply per client address.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import fnmatch
import hashlib
import hmac
import logging
import math
import os
import threading
import time
from collections.abc import Iterator
from typing import Any, Protocol

import jwt

from tfprod.config.model_config import ConfigError
from tfprod.errors import Code, ServingError
from tfprod.security.config import RateRule, Scope, SecurityConfig, read_security_config

log = logging.getLogger("tfprod.security")

# What each API needs. APIs not listed (health, liveness, readiness, V2 server metadata: the
# server's name, version and extensions) are open to everyone.
ACTION_OF_API = {
    "Predict": "predict", "Classify": "predict", "Regress": "predict", "MultiInference": "predict",
    "ModelInfer": "predict",
    "GetModelStatus": "read", "GetModelMetadata": "read", "ListModels": "read", "ModelMetadata": "read",
    "ModelReady": "read", "RepositoryIndex": "read", "BrowserPage": "read", "ModelFiles": "read", "StaticFiles": "read",
    "HandleReloadConfigRequest": "admin", "RepositoryModelLoad": "admin", "RepositoryModelUnload": "admin",
    "ListRollouts": "read", "GetRollout": "read", "UpdateRollout": "admin",
    "ConsoleModels": "read", "ConsoleMetrics": "read", "GetLineage": "read",  # the console's page and files are open
}


MAX_BUCKETS = 100_000  # rate-limit buckets kept; about 100 bytes each


class RefusalStats(Protocol):
    def record_refusal(self, model: str, reason: str) -> None: ...


class RateLimited(ServingError):
    def __init__(self, message: str, retry_after_s: int) -> None:
        super().__init__(Code.RESOURCE_EXHAUSTED, message)
        self.retry_after_s = retry_after_s
        self.headers["retry-after"] = str(retry_after_s)  # REST's Retry-After, gRPC's trailing metadata


@dataclasses.dataclass(frozen=True)
class Caller:
    identity: str  # "key:NAME", "jwt:SUBJECT" or "addr:IP"
    scopes: tuple[Scope, ...] | None = None  # None: authentication is off, everything is allowed


class _Bucket:
    __slots__ = ("tokens", "at")

    def __init__(self, tokens: float, at: float) -> None:
        self.tokens, self.at = tokens, at


def client_address(peer: str) -> str:
    """gRPC's peer ('ipv4:127.0.0.1:5000', 'ipv6:[::1]:5000', 'unix:...') -> the address alone."""
    kind, _, rest = peer.partition(":")
    if kind == "ipv6":
        return rest.rpartition("]")[0].lstrip("[")
    if kind == "ipv4":
        return rest.rpartition(":")[0]
    return peer


class Guard:
    def __init__(self, config: SecurityConfig, stats: RefusalStats) -> None:
        self._config = config
        self._stats = stats
        self._lock = threading.Lock()
        self._buckets: collections.OrderedDict[tuple[int, str, str], _Bucket] = collections.OrderedDict()
        self._in_flight = 0
        self._stop = threading.Event()
        self._last_warning = float("-inf")
        self._suppressed = 0

    @property
    def config(self) -> SecurityConfig:
        return self._config

    def admit(self, authorization: str | None, api_key: str | None, address: str, model: str, api: str) -> None:
        """Raise unless this caller may call `api` on `model` now. Open APIs (health) pass."""
        if api not in ACTION_OF_API:
            return
        try:
            caller = self.authenticate(authorization, api_key, address)
        except ServingError as e:
            self._stats.record_refusal("", "unauthenticated")  # not the model named by a stranger: no new series
            self._warn(f"refused {api} from {address}: {e.message}")
            raise
        self.permit(caller, model, api)

    def check_credentials(self, authorization: str | None, api_key: str | None, api: str) -> None:
        """Authentication alone, for a transport that knows the API but not yet the model (gRPC
        before it reads the message). `admit` still decides on the model afterwards."""
        if self._config.auth and api in ACTION_OF_API:
            try:
                self.authenticate(authorization, api_key, "")
            except ServingError as e:
                self._stats.record_refusal("", "unauthenticated")
                self._warn(f"refused {api} over gRPC: {e.message}")
                raise

    # -- authentication -------------------------------------------------------------------

    def authenticate(self, authorization: str | None, api_key: str | None, address: str) -> Caller:
        config = self._config
        if not config.auth:
            return Caller(f"addr:{address}")
        if api_key:
            return self._api_key(api_key)
        scheme, _, credential = (authorization or "").strip().partition(" ")
        credential = credential.strip()
        if scheme.lower() != "bearer" or not credential:
            raise ServingError(Code.UNAUTHENTICATED, "Missing credentials: send an API key in the X-API-Key "
                               "header or a token as 'Authorization: Bearer <token>'")
        if credential.count(".") == 2 and config.jwt is not None:
            return self._token(credential)
        return self._api_key(credential)

    def _api_key(self, key: str) -> Caller:
        digest = hashlib.sha256(key.encode("utf-8", "surrogateescape")).digest()
        found = None
        for candidate in self._config.api_keys:  # every key is compared: the time says nothing about which
            if hmac.compare_digest(candidate.sha256, digest):
                found = candidate
        if found is None:
            raise ServingError(Code.UNAUTHENTICATED, "API key is not valid")
        return Caller(f"key:{found.name}", found.scopes)

    def _token(self, token: str) -> Caller:
        options = self._config.jwt
        assert options is not None
        try:
            header = jwt.get_unverified_header(token)
            algorithm = header.get("alg")
            if algorithm not in options.algorithms:  # 'none' and algorithm confusion end here
                raise jwt.InvalidAlgorithmError(f"algorithm {str(algorithm)[:16]!r} is not accepted")
            key = options.key
            if options.jwks is not None:
                key = _jwk(options.jwks, header.get("kid"))
            claims = jwt.decode(token, key, algorithms=list(options.algorithms), audience=options.audience,
                                issuer=options.issuer, leeway=options.leeway_s,
                                options={"require": list(options.required_claims)})
        except jwt.ExpiredSignatureError:
            raise ServingError(Code.UNAUTHENTICATED, "Invalid token: it has expired") from None
        except jwt.ImmatureSignatureError:
            raise ServingError(Code.UNAUTHENTICATED, "Invalid token: it is not valid yet (nbf/iat)") from None
        except jwt.InvalidAudienceError:
            raise ServingError(Code.UNAUTHENTICATED, "Invalid token: wrong audience (aud)") from None
        except jwt.InvalidIssuerError:
            raise ServingError(Code.UNAUTHENTICATED, "Invalid token: wrong issuer (iss)") from None
        except jwt.MissingRequiredClaimError as e:
            raise ServingError(Code.UNAUTHENTICATED, f"Invalid token: {e}") from None
        except jwt.InvalidSignatureError:
            raise ServingError(Code.UNAUTHENTICATED, "Invalid token: signature verification failed") from None
        except (jwt.InvalidAlgorithmError, jwt.PyJWKError) as e:
            raise ServingError(Code.UNAUTHENTICATED, f"Invalid token: {e}") from None
        except jwt.InvalidTokenError as e:
            raise ServingError(Code.UNAUTHENTICATED, f"Invalid token: malformed ({type(e).__name__})") from None
        raw = claims.get(options.scope_claim, "")
        names = raw.split() if isinstance(raw, str) else [s for s in raw if isinstance(s, str)] \
            if isinstance(raw, list) else []
        scopes = []
        for name in names:
            if not name.startswith(options.scope_prefix):
                continue
            try:
                scopes.append(Scope.parse(name[len(options.scope_prefix):]))
            except ConfigError:
                continue  # scopes meant for other services
        return Caller(f"jwt:{str(claims.get('sub', '?'))[:128]}", tuple(scopes))

    # -- authorization and limits ---------------------------------------------------------

    def permit(self, caller: Caller, model: str, api: str) -> None:
        """Raise unless `caller` may call `api` on `model` now."""
        action = ACTION_OF_API.get(api)
        if action is None:
            return
        if caller.scopes is not None and not any(s.allows(action, model) for s in caller.scopes):
            self._stats.record_refusal(model, "permission_denied")
            what = f"model '{model}'" if model else "this server"
            self._warn(f"refused {api} on {what} to {caller.identity}: no {action} scope")
            raise ServingError(Code.PERMISSION_DENIED, f"{caller.identity} may not call {api} on {what} "
                               f"(needs scope '{action}:{model or '*'}')")
        rules = self._config.limits.rate
        if rules:
            self._take(rules, caller.identity, model)

    def _take(self, rules: tuple[RateRule, ...], identity: str, model: str) -> None:
        index = next((i for i, r in enumerate(rules)
                      if fnmatch.fnmatchcase(identity, r.caller) and fnmatch.fnmatchcase(model, r.model)), None)
        if index is None:
            return
        rule, now = rules[index], time.monotonic()
        with self._lock:
            key = (index, identity, model)
            bucket = self._buckets.get(key)
            if bucket is None:
                if len(self._buckets) >= MAX_BUCKETS:  # memory stays bounded: the longest idle goes
                    self._buckets.popitem(last=False)
                bucket = self._buckets[key] = _Bucket(rule.burst, now)
            else:
                self._buckets.move_to_end(key)
            bucket.tokens = min(rule.burst, bucket.tokens + (now - bucket.at) * rule.per_second)
            bucket.at = now
            if bucket.tokens >= 1.0:
                bucket.tokens -= 1.0
                return
            wait = math.ceil((1.0 - bucket.tokens) / rule.per_second)
        self._stats.record_refusal(model, "rate_limited")
        raise RateLimited(f"Rate limit exceeded for {identity} on model '{model}': {rule.per_second:g} "
                          f"requests/s, bursts of {rule.burst:g}; retry in {wait} s", max(1, wait))

    def _warn(self, message: str) -> None:
        """Log refusals, at most one line a second: a flood of bad calls must not flood the log
        (the refusal metric counts every one)."""
        now = time.monotonic()
        with self._lock:
            if now - self._last_warning < 1.0:
                self._suppressed += 1
                return
            suppressed, self._suppressed, self._last_warning = self._suppressed, 0, now
        log.warning("%s%s", message, f" ({suppressed} more refusals since the last line)" if suppressed else "")

    @contextlib.contextmanager
    def slot(self) -> Iterator[None]:
        """Hold one of the `max_concurrent_requests` places for the length of a request."""
        cap = self._config.limits.max_concurrent_requests
        with self._lock:
            if cap and self._in_flight >= cap:
                full = True
            else:
                full = False
                self._in_flight += 1
        if full:
            self._stats.record_refusal("", "concurrency_limit")
            raise RateLimited(f"The server is at its limit of {cap} concurrent requests; retry shortly", 1)
        try:
            yield
        finally:
            with self._lock:
                self._in_flight -= 1

    # -- reloading ------------------------------------------------------------------------

    def watch(self, interval_s: float = 1.0) -> None:
        """Re-read the config file when it changes (revoking a key needs no restart). TLS settings
        are read at startup only."""
        path = self._config.path
        if not path:
            return

        def stamp() -> Any:
            try:
                st = os.stat(path)
                return st.st_mtime_ns, st.st_size
            except OSError:
                return None

        def loop() -> None:
            loaded = previous = stamp()
            while not self._stop.wait(interval_s):
                now = stamp()
                settled, previous = now == previous, now
                if now is None or now == loaded or not settled:
                    continue  # unchanged, gone, or still being written: wait for two equal looks
                loaded = now
                try:
                    self._reload(read_security_config(path))
                except Exception as e:  # never let the watcher die: the running config stays
                    log.error("security config %s not reloaded, the running one stays: %s", path, e)

        threading.Thread(target=loop, name="tfprod-security-config", daemon=True).start()

    def _reload(self, config: SecurityConfig) -> None:
        running = self._config
        if running.auth and not config.auth:
            raise ConfigError("it turns authentication off; that takes a restart")
        if config.tls != running.tls:
            log.warning("security config: [tls] changes take effect at the next restart")
        fixed = ("max_body_bytes", "max_json_depth", "max_tensor_elements", "max_batch_rows", "request_timeout_s")
        changed = [f for f in fixed if getattr(config.limits, f) != getattr(running.limits, f)]
        if changed:
            log.warning("security config: [limits] %s take effect at the next restart", ", ".join(changed))
        with self._lock:
            self._config = dataclasses.replace(config, tls=running.tls)
            self._buckets.clear()
        log.info("security config %s reloaded", config.path)

    def stop(self) -> None:
        self._stop.set()


def _jwk(jwks: jwt.PyJWKSet, kid: Any) -> Any:
    if kid is None:
        if len(jwks.keys) == 1:
            return jwks.keys[0]
        raise jwt.InvalidTokenError("token has no 'kid' and the JWK set has several keys")
    for key in jwks.keys:
        if key.key_id == kid:
            return key
    raise jwt.PyJWKError(f"no key with kid {str(kid)[:64]!r} in the JWK set (revoked or unknown)")
