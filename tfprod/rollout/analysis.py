"""The pure parts of a rollout: which arm a request goes to, whether two answers agree, how far two
output distributions drifted, and the verdict on one interval. No clocks, no threads, no I/O.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Mapping
from typing import Any

import numpy as np

from tfprod.rollout.config import Analysis, Shadow

BUCKETS = 10_000  # a weight is honoured to 0.01 %


def bucket(model: str, key: str) -> int:
    """hash(key) mod 10,000: the same on every replica and across restarts (no shared state), and a
    key below a weight's threshold stays below every higher one, so raising the weight keeps
    earlier canary users on the canary."""
    digest = hashlib.blake2b(f"{model}\0{key}".encode("utf-8", "surrogateescape"), digest_size=8).digest()
    return int.from_bytes(digest, "big") % BUCKETS


def on_canary(weight: float, drawn: int) -> bool:
    """`drawn` is a key's bucket, or a random one in [0, BUCKETS) for a request without a key."""
    return drawn < round(weight * BUCKETS / 100)


def disagreeing_rows(live: Mapping[str, np.ndarray], shadow: Mapping[str, np.ndarray],
                     rules: Shadow) -> tuple[int, int]:
    """(rows compared, rows where the answers differ) over the outputs both have (or `rules.output`).
    An output the shadow lacks, or of another shape, makes every row differ."""
    names = [rules.output] if rules.output is not None else sorted(live)
    rows = max((_rows(live[n]) for n in names if n in live), default=0)
    if rows == 0:
        return 0, 0
    differs = np.zeros(rows, dtype=bool)
    for name in names:
        a, b = live.get(name), shadow.get(name)
        if a is None:
            continue
        if b is None or a.shape != b.shape:
            return rows, rows
        row_differs = _row_differs(a, b, rules)
        if row_differs.shape[0] != rows:  # a scalar, or an output of other rows: one verdict for the request
            row_differs = np.repeat(row_differs.any(), rows)
        differs |= row_differs
    return rows, int(differs.sum())


def _rows(a: np.ndarray) -> int:
    return int(a.shape[0]) if a.ndim else 1


def _row_differs(a: np.ndarray, b: np.ndarray, rules: Shadow) -> np.ndarray:
    numeric = a.dtype.kind in "biuf" and b.dtype.kind in "biuf"
    if not numeric:
        equal = np.asarray(a == b)
    elif rules.compare == "top1" and a.ndim >= 2 and a.shape[-1] > 1:
        return np.asarray((np.argmax(a, axis=-1) != np.argmax(b, axis=-1)).reshape(a.shape[0], -1).any(axis=1))
    else:
        x, y = a.astype(np.float64), b.astype(np.float64)
        equal = (np.abs(x - y) <= rules.atol + rules.rtol * np.abs(y)) | (np.isnan(x) & np.isnan(y)) | (x == y)
    if equal.ndim == 0:
        return np.asarray([not bool(equal)])
    return np.asarray(~equal.reshape(equal.shape[0], -1).all(axis=1))


def row_values(output: np.ndarray) -> tuple[np.ndarray, bool] | None:
    """One number per row for drift: the value of a one-element row, else its argmax (a class:
    categorical). None for text outputs."""
    if output.dtype.kind not in "biuf" or output.size == 0:
        return None
    rows = output.reshape(_rows(output), -1)
    if rows.shape[1] == 1:
        return rows[:, 0].astype(np.float64), output.dtype.kind in "biu"
    return np.argmax(rows, axis=1).astype(np.float64), True


_PSI_BINS = 10
_PSI_FLOOR = 1e-4  # an empty bin counts as this share (ln(0) would be infinite)


def psi(expected: np.ndarray, actual: np.ndarray, categorical: bool) -> float:
    """Population stability index of `actual` against `expected`: sum (a - e) ln(a / e) over bins;
    categories for classes, else ten bins cut at `expected`'s deciles. Above 0.2 is a big shift by
    the usual rule of thumb, below 0.1 small."""
    if categorical:
        classes, codes = np.unique(np.concatenate([expected, actual]), return_inverse=True)
        e = np.bincount(codes[:len(expected)], minlength=len(classes)).astype(np.float64)
        a = np.bincount(codes[len(expected):], minlength=len(classes)).astype(np.float64)
    else:
        cuts = np.unique(np.quantile(expected, np.linspace(0, 1, _PSI_BINS + 1)[1:-1]))
        e = np.bincount(np.searchsorted(cuts, expected, side="right"), minlength=len(cuts) + 1).astype(np.float64)
        a = np.bincount(np.searchsorted(cuts, actual, side="right"), minlength=len(cuts) + 1).astype(np.float64)
    e = np.maximum(e / e.sum(), _PSI_FLOOR)
    a = np.maximum(a / a.sum(), _PSI_FLOOR)
    return float(np.sum((a - e) * np.log(a / e)))


@dataclasses.dataclass
class ArmWindow:
    """What one arm did in one interval (latencies and drift values are a bounded sample)."""

    requests: int = 0
    errors: int = 0
    latencies_s: list[float] = dataclasses.field(default_factory=list)
    drift: list[float] = dataclasses.field(default_factory=list)
    categorical: bool = False

    def p99_ms(self) -> float | None:
        return float(np.percentile(self.latencies_s, 99) * 1000) if self.latencies_s else None

    def error_rate(self) -> float:
        return self.errors / self.requests if self.requests else 0.0


@dataclasses.dataclass
class ShadowWindow:
    requests: int = 0
    rows: int = 0
    disagreeing: int = 0
    errors: int = 0
    dropped: int = 0

    def disagreement(self) -> float | None:
        return self.disagreeing / self.rows if self.rows else None


@dataclasses.dataclass(frozen=True)
class Verdict:
    result: str  # "pass", "fail" or "inconclusive"
    reasons: tuple[str, ...]
    numbers: dict[str, Any]


def judge(rules: Analysis, weight: float, stable: ArmWindow, canary: ArmWindow, shadow: ShadowWindow) -> Verdict:
    """One interval's verdict. Evidence is the canary's requests, or at weight 0 the shadowed ones;
    below `min_requests` nothing is concluded (the rollout holds, it never advances on silence)."""
    numbers: dict[str, Any] = {
        "stable": {"requests": stable.requests, "error_rate": stable.error_rate(), "p99_ms": stable.p99_ms()},
        "canary": {"requests": canary.requests, "error_rate": canary.error_rate(), "p99_ms": canary.p99_ms()},
        "shadow": {"requests": shadow.requests, "rows": shadow.rows, "disagreement": shadow.disagreement(),
                   "errors": shadow.errors, "dropped": shadow.dropped},
        "psi": None,
    }
    evidence = canary.requests if weight > 0 else shadow.requests
    if evidence < rules.min_requests:
        what = "canary" if weight > 0 else "shadowed"
        return Verdict("inconclusive", (f"{evidence} {what} requests, fewer than min_requests={rules.min_requests}",),
                       numbers)
    reasons = []
    if weight > 0 and rules.max_error_rate is not None and \
            canary.error_rate() - stable.error_rate() > rules.max_error_rate:
        reasons.append(f"canary error rate {canary.error_rate():.2%} is above the stable arm's "
                       f"{stable.error_rate():.2%} by more than max_error_rate={rules.max_error_rate:.2%}")
    p99_c, p99_s = canary.p99_ms(), stable.p99_ms()
    if weight > 0 and rules.max_p99_ms is not None and p99_c is not None and p99_c > rules.max_p99_ms:
        reasons.append(f"canary P99 latency {p99_c:.1f} ms is above max_p99_ms={rules.max_p99_ms:g}")
    if weight > 0 and rules.max_p99_ratio is not None and p99_c is not None and p99_s \
            and p99_c > rules.max_p99_ratio * p99_s:
        reasons.append(f"canary P99 latency {p99_c:.1f} ms is more than max_p99_ratio={rules.max_p99_ratio:g} "
                       f"times the stable arm's {p99_s:.1f} ms")
    disagreement = shadow.disagreement()
    shadow_errors = shadow.errors / shadow.requests if shadow.requests else 0.0
    if rules.max_disagreement is not None and shadow_errors > (rules.max_error_rate or 0.0):
        reasons.append(f"{shadow_errors:.2%} of {shadow.requests} shadowed requests failed on the shadow")
    elif rules.max_disagreement is not None and disagreement is not None and disagreement > rules.max_disagreement:
        reasons.append(f"shadow disagreement {disagreement:.2%} of {shadow.rows} rows is above "
                       f"max_disagreement={rules.max_disagreement:.2%}")
    if rules.max_psi is not None and stable.drift and canary.drift and \
            min(stable.requests - stable.errors, canary.requests - canary.errors) >= rules.min_requests:
        value = psi(np.asarray(stable.drift), np.asarray(canary.drift), stable.categorical or canary.categorical)
        numbers["psi"] = value
        if value > rules.max_psi:
            reasons.append(f"canary output drift PSI {value:.3f} is above max_psi={rules.max_psi:g}")
    if reasons:
        return Verdict("fail", tuple(reasons), numbers)
    return Verdict("pass", (), numbers)
