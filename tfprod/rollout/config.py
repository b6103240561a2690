"""The rollout config file (`--rollout_config_file`, TOML) -> frozen rollouts, keyed by model.

It lives beside models.config, which stays TF Serving's own format: TF Serving users keep their
file and add this one. Every `[models.NAME]` table is one model's rollout:

    [models.digits]
    stable = "stable"            # a label of the model config, or a version number
    canary = 2                   # likewise
    steps = [1, 10, 50, 100]     # canary weights in percent, advanced one per passing analysis
    sticky_key = "x-user-id"     # request header / gRPC metadata key; absent: per request

    [models.digits.shadow]       # optional: mirror a sample of the stable arm's requests
    version = 3                  # or label = "..."
    sample_percent = 10
    max_in_flight = 4

    [models.digits.analysis]
    interval_s = 60
    min_requests = 100

Unknown keys, weights outside 0-100 and labels the model config does not have are refused here;
versions are checked against what the server has when the file is applied (`controller`).
docs/rollout.md shows every setting.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from typing import Any

from tfprod.config.model_config import ConfigError, ModelConfig
from tfprod.config.table import Table, read_toml

_DOCS = "docs/rollout.md"
COMPARE = ("close", "top1")


@dataclasses.dataclass(frozen=True)
class Arm:
    """A version, or a label of the model config (resolved on every request)."""

    version: int | None = None
    label: str | None = None

    def __str__(self) -> str:
        return f"label '{self.label}'" if self.label is not None else f"version {self.version}"


@dataclasses.dataclass(frozen=True)
class Shadow:
    arm: Arm
    sample_percent: float = 100.0
    max_in_flight: int = 4
    compare: str = "close"  # "close": |a-b| <= atol + rtol*|b| per element; "top1": same argmax per row
    atol: float = 1e-6
    rtol: float = 1e-5
    output: str | None = None  # compare this output only (default: every output both answers have)


@dataclasses.dataclass(frozen=True)
class Analysis:
    interval_s: float = 60.0
    min_requests: int = 100  # fewer canary (or, at weight 0, shadowed) requests: inconclusive, hold
    failure_limit: int = 2  # consecutive failed intervals, then the canary weight goes to 0
    max_error_rate: float | None = 0.01  # canary error rate above the stable arm's by more than this
    max_p99_ms: float | None = None
    max_p99_ratio: float | None = None  # canary P99 / stable P99
    max_disagreement: float | None = None  # shadow rows disagreeing / rows compared
    max_psi: float | None = None  # population stability index of the canary's outputs against stable's
    drift_output: str | None = None  # the output PSI reads (default: the first by name)


@dataclasses.dataclass(frozen=True)
class Rollout:
    model: str
    stable: Arm
    canary: Arm
    steps: tuple[float, ...]
    sticky_key: str | None = None
    shadow: Shadow | None = None
    analysis: Analysis = Analysis()

    def identity(self) -> tuple[Any, ...]:
        """What makes it the same rollout across a config change or a restart: its arms and steps."""
        return (self.stable, self.canary, self.steps)


def read_rollout_config(path: str, models: Sequence[ModelConfig]) -> dict[str, Rollout]:
    doc = read_toml(path, "--rollout_config_file")
    try:
        return parse_rollout_config(doc, models)
    except ConfigError as e:
        raise ConfigError(f"--rollout_config_file {path}: {e}") from None


def parse_rollout_config(doc: Mapping[str, Any], models: Sequence[ModelConfig]) -> dict[str, Rollout]:
    top = Table(doc, "rollout config", _DOCS)
    tables = top.get("models", dict, {})
    top.done()
    configured = {m.name: m for m in models}
    rollouts = {}
    for name, table in tables.items():
        model = configured.get(name)
        if model is None:
            raise ConfigError(f"[models.{name}]: no model '{name}' in the model config "
                              f"(it has {', '.join(sorted(configured)) or 'none'})")
        rollouts[name] = _rollout(name, table, model)
    return rollouts


def _rollout(name: str, doc: Any, model: ModelConfig) -> Rollout:
    where = f"[models.{name}]"
    t = Table(doc, where, _DOCS)
    stable = _arm(t.get("stable", (str, int)), f"{where}.stable", model)
    canary = _arm(t.get("canary", (str, int)), f"{where}.canary", model)
    steps = t.get("steps", list)
    sticky = t.get("sticky_key", str)
    shadow_doc = t.get("shadow", dict)
    analysis_doc = t.get("analysis", dict, {})
    t.done()
    if stable == canary:
        raise ConfigError(f"{where}: stable and canary are both {stable}: a rollout needs two arms")
    if not steps:
        raise ConfigError(f"{where}.steps: give the canary's weights in percent, e.g. steps = [1, 10, 50, 100]")
    for w in steps:
        if isinstance(w, bool) or not isinstance(w, int | float) or not (0 <= w <= 100) or math.isnan(w):
            raise ConfigError(f"{where}.steps: {w!r} is not a weight in percent between 0 and 100")
    if any(b <= a for a, b in zip(steps, steps[1:], strict=False)):
        raise ConfigError(f"{where}.steps: {steps} must rise step by step")
    analysis = _analysis(analysis_doc, f"[models.{name}.analysis]")
    if steps[0] == 0 and (shadow_doc is None or analysis.max_disagreement is None):
        raise ConfigError(f"{where}.steps: a first step of 0 sends the canary no traffic, so only a shadow can judge "
                          f"it: add [models.{name}.shadow] and [models.{name}.analysis] max_disagreement")
    if sticky is not None and not sticky.strip():
        raise ConfigError(f"{where}.sticky_key: give a header name such as 'x-user-id', or leave it out")
    return Rollout(name, stable, canary, tuple(float(w) for w in steps),
                   sticky.strip().lower() if sticky else None,
                   _shadow(shadow_doc, f"{where}.shadow", model) if shadow_doc is not None else None, analysis)


def _arm(value: Any, where: str, model: ModelConfig) -> Arm:
    if value is None:
        raise ConfigError(f"{where} is missing: give a label of the model config or a version number")
    if isinstance(value, int):
        if value < 0:
            raise ConfigError(f"{where}: version {value} is negative")
        return Arm(version=value)
    if value not in model.labels:
        have = ", ".join(f"{k}={v}" for k, v in sorted(model.labels.items())) or "none"
        raise ConfigError(f"{where}: model '{model.name}' has no label '{value}' in the model config "
                          f"(its labels: {have}); give a label it has, or a version number")
    return Arm(label=value)


def _shadow(doc: Any, where: str, model: ModelConfig) -> Shadow:
    t = Table(doc, where, _DOCS)
    version, label = t.get("version", int), t.get("label", str)
    if (version is None) == (label is None):
        raise ConfigError(f"{where}: give the shadow's version or its label (one of them)")
    arm = _arm(version if version is not None else label, where, model)
    shadow = Shadow(arm, float(t.get("sample_percent", (int, float), 100.0)), t.get("max_in_flight", int, 4),
                    t.get("compare", str, "close"), float(t.get("atol", (int, float), 1e-6)),
                    float(t.get("rtol", (int, float), 1e-5)), t.get("output", str))
    t.done()
    if not 0 < shadow.sample_percent <= 100:
        raise ConfigError(f"{where}.sample_percent: {shadow.sample_percent:g} is not a percentage in (0, 100]")
    if shadow.max_in_flight < 1:
        raise ConfigError(f"{where}.max_in_flight must be at least 1")
    if shadow.compare not in COMPARE:
        raise ConfigError(f"{where}.compare must be one of {', '.join(COMPARE)}, got {shadow.compare!r}")
    if shadow.atol < 0 or shadow.rtol < 0:
        raise ConfigError(f"{where}: atol and rtol must not be negative")
    return shadow


def _analysis(doc: Any, where: str) -> Analysis:
    t = Table(doc, where, _DOCS)
    default = Analysis()

    def number(key: str, lowest: float = 0.0) -> float | None:
        value = t.get(key, (int, float), getattr(default, key))
        if value is not None and not value >= lowest:
            raise ConfigError(f"{where}.{key}: {value!r} must be at least {lowest:g}")
        return None if value is None else float(value)

    analysis = Analysis(
        interval_s=number("interval_s", 0.1) or default.interval_s,
        min_requests=t.get("min_requests", int, default.min_requests),
        failure_limit=t.get("failure_limit", int, default.failure_limit),
        max_error_rate=number("max_error_rate"),
        max_p99_ms=number("max_p99_ms"),
        max_p99_ratio=number("max_p99_ratio"),
        max_disagreement=number("max_disagreement"),
        max_psi=number("max_psi"),
        drift_output=t.get("drift_output", str),
    )
    t.done()
    if analysis.min_requests < 1 or analysis.failure_limit < 1:
        raise ConfigError(f"{where}: min_requests and failure_limit must be at least 1")
    for key in ("max_error_rate", "max_disagreement"):
        value = getattr(analysis, key)
        if value is not None and value > 1:
            raise ConfigError(f"{where}.{key}: {value:g} is a rate: give it between 0 and 1")
    return analysis
