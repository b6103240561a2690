"""Full-pass analyzers for a `preprocessing_fn`, as TensorFlow Transform's, baked into a graph.

    from tfprod.pipeline import transform as tft

    def preprocessing_fn(inputs):
        return {"radius_z": tft.scale_to_z_score(inputs["mean_radius"]),
                "region_id": tft.compute_and_apply_vocabulary(inputs["region"]),
                "area_bucket": tft.bucketize(inputs["mean_area"], 4)}

The analysis is a partial per piece of the training split and a merge, so a cluster's workers
can run it (`ctx.map`): each analyzer has a partial over a piece's values (moments, min/max,
value counts, the values themselves for quantiles), an associative merge and a final value. The
function runs over every piece in phases: in each, an analyzer whose value is not known yet
records its partial, unless its input depends on another analyzer still unknown; that is seen by
running the piece twice with two different stand-in values for the unknown ones and comparing
the analyzer's input. The merged partials give the values of this phase, and the next phase
runs with them, until every analyzer has its value (one phase when all analyze raw inputs).
Mean and standard deviation are merged with Chan's formulas (equal to a whole-column pass up to
float summation order); min, max, vocabularies and quantiles are exact.

Then the function is traced into a `tf.function` where each analyzer returns its value as a
constant: that graph is the transform the server applies, so serving computes exactly what
training saw. Missing values arrive as NaN (numbers) and "" (strings); the statistics ignore NaN.

Vocabularies are applied by comparison with a constant list (no lookup table: the graph needs no
initialisation and converts to TFLite and TF.js); ids are by descending frequency, then value, and
values outside the vocabulary get `len(vocabulary)` (one out-of-vocabulary bucket).
"""

from __future__ import annotations

import builtins
import contextlib
import contextvars
import dataclasses
import functools
import math
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from tfprod.pipeline.dsl import PipelineError

_COLLECT, _APPLY = "collect", "apply"


def _numbers(a: np.ndarray) -> np.ndarray:
    a = a.astype(np.float64)
    return a[~np.isnan(a)]


def _moments(a: np.ndarray) -> tuple[int, float, float]:
    x = _numbers(a)
    if not x.size:
        return 0, 0.0, 0.0
    m = float(x.mean())
    return int(x.size), m, float(((x - m) ** 2).sum())


def _chan(p: tuple[int, float, float], q: tuple[int, float, float]) -> tuple[int, float, float]:
    (n, m, m2), (k, mq, m2q) = p, q
    if not k:
        return p
    if not n:
        return q
    delta = mq - m
    return n + k, m + delta * k / (n + k), m2 + m2q + delta * delta * n * k / (n + k)


def _extreme(pick: Callable[[Any, Any], Any]) -> Callable[[Any, Any], Any]:
    return lambda p, q: q if p is None else p if q is None else pick(p, q)


def _words(a: np.ndarray) -> Counter[str]:
    counts = Counter(v.decode() if isinstance(v, bytes) else str(v) for v in a.reshape(-1))
    counts.pop("", None)  # a missing value is not a word: it maps to the out-of-vocabulary id
    return counts


def _quantiles(values: np.ndarray, num_buckets: int) -> list[float]:
    if not values.size:
        return []
    return sorted({float(q) for q in np.quantile(values, np.linspace(0, 1, num_buckets + 1)[1:-1])})


@dataclasses.dataclass(frozen=True)
class _Kind:
    """An analyzer: its partial over one piece's values, their associative merge, its final value,
    and two different stand-ins for it while it is unknown (functions of the analyzer's parameters)."""

    partial: Callable[..., Any]
    merge: Callable[[Any, Any], Any]
    finish: Callable[..., Any]
    stand_ins: tuple[Any, Any]


_KINDS = {
    "mean": _Kind(lambda a: _moments(a), _chan, lambda p: p[1], (0.37, 0.61)),
    "std": _Kind(lambda a: _moments(a), _chan, lambda p: math.sqrt(p[2] / p[0]) if p[0] else 0.0, (0.37, 0.61)),
    "min": _Kind(lambda a: float(_numbers(a).min()) if _numbers(a).size else None, _extreme(builtins.min),
                 lambda p: 0.0 if p is None else p, (0.37, 0.61)),
    "max": _Kind(lambda a: float(_numbers(a).max()) if _numbers(a).size else None, _extreme(builtins.max),
                 lambda p: 0.0 if p is None else p, (0.37, 0.61)),
    "vocabulary": _Kind(lambda a, top_k=None: _words(a), lambda p, q: p + q,
                        lambda p, top_k=None: [v for v, _ in sorted(p.items(), key=lambda kv: (-kv[1], kv[0]))[:top_k]],
                        ([], ["\x00stand-in"])),
    "quantiles": _Kind(lambda a, num_buckets=2: _numbers(a), lambda p, q: np.concatenate([p, q]),
                       lambda p, num_buckets=2: _quantiles(p, num_buckets), ([0.37], [0.61])),
}


@dataclasses.dataclass
class _Trace:
    mode: str
    values: list[Any]  # collect: the values known so far by position (None: unknown); apply: all of them
    names: list[str]
    params: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    position: int = 0
    variant: int = 0  # collect: which stand-in the unknown analyzers return
    inputs: list[np.ndarray] = dataclasses.field(default_factory=list)  # collect: each analyzer's input


_current: contextvars.ContextVar[_Trace | None] = contextvars.ContextVar("tfprod_transform", default=None)


class TransformError(PipelineError):
    pass


def _analyzer(name: str, x: Any, **params: Any) -> Any:
    trace = _current.get()
    if trace is None:
        raise TransformError(f"tft.{name} is an analyzer: call it inside a preprocessing_fn run by Transform")
    i = trace.position
    trace.position += 1
    if trace.mode == _COLLECT:
        if i >= len(trace.names):
            trace.names.append(name)
            trace.values.append(None)
        elif trace.names[i] != name:
            raise TransformError("preprocessing_fn called its analyzers in a different order on another piece of "
                                 "the data: keep the calls unconditional and in a fixed order")
        trace.params.append(params)
        trace.inputs.append(np.asarray(x))
        known = trace.values[i]
        return known if known is not None else _KINDS[name].stand_ins[trace.variant]
    if i >= len(trace.values) or trace.names[i] != name:
        raise TransformError("preprocessing_fn called its analyzers in a different order when traced: keep the "
                             "calls unconditional and in a fixed order")
    return trace.values[i]


def _same(a: np.ndarray, b: np.ndarray) -> bool:
    if a.shape != b.shape or a.dtype != b.dtype:
        return False
    return bool(np.array_equal(a, b, equal_nan=a.dtype.kind == "f"))


@dataclasses.dataclass(frozen=True)
class AnalyzeJob:
    """One piece of the training split through `preprocessing_fn` (from `module_file`), with the
    analyzer values known so far (a phase)."""

    module_file: str
    unit: Any  # examples.Unit
    features: list[str]
    dtypes: dict[str, str]
    names: list[str]
    values: list[Any]


def analyze_unit(job: AnalyzeJob) -> tuple[list[str], list[dict[str, Any]], list[Any]]:
    """The analyzers' names and parameters, and for each a partial over this piece: None where the
    value is known already or the analyzer's input depends on one still unknown."""
    import tensorflow as tf

    from tfprod.pipeline import examples
    from tfprod.pipeline.components import _user

    fn = _user.function(job.module_file, "preprocessing_fn")
    table = examples.read_unit(job.unit)
    inputs = {k: tf.constant(v) for k, v in _user.arrays(table, job.features, job.dtypes).items()}
    traces = []
    for variant in (0, 1):  # the same rows with two different stand-ins: what differs depends on them
        trace = _Trace(_COLLECT, list(job.values), list(job.names), variant=variant)
        token = _current.set(trace)
        try:
            fn(dict(inputs))
        except PipelineError:
            raise
        except Exception as e:  # the user's code: any error is theirs to see
            raise PipelineError(f"preprocessing_fn failed on the training split: {type(e).__name__}: {e}") from None
        finally:
            _current.reset(token)
        traces.append(trace)
    first, second = traces
    if first.names != second.names or first.position != second.position:
        raise TransformError("preprocessing_fn called different analyzers on two runs over the same rows: keep the "
                             "calls unconditional and in a fixed order")
    partials = [None if first.values[i] is not None or not _same(first.inputs[i], second.inputs[i])
                else _KINDS[name].partial(first.inputs[i], **first.params[i]) for i, name in enumerate(first.names)]
    return first.names, first.params, partials


def analyze(module_file: str, units: list[Any], features: list[str], dtypes: dict[str, str],
            map: Callable[[Callable[[Any], Any], list[Any]], list[Any]]) -> tuple[list[str], list[Any]]:
    """Every analyzer's name and value over the pieces `units`, in phases, each piece's partials
    computed by `map` (here or by a cluster's workers) and merged here in the pieces' order."""
    names: list[str] = []
    values: list[Any] = []
    while True:
        results = map(analyze_unit, [AnalyzeJob(module_file, u, features, dtypes, names, values) for u in units])
        if not results:
            raise TransformError("the training split has no rows to analyze")
        if not names:  # the first phase names them
            names, values = list(results[0][0]), [None] * len(results[0][0])
        if any(found != names or params != results[0][1] for found, params, _ in results):
            raise TransformError("preprocessing_fn called different analyzers on different pieces of the data: keep "
                                 "the calls unconditional and in a fixed order")
        if all(v is not None for v in values):
            return names, values
        progress = False
        for i, name in enumerate(names):
            parts = [r[2][i] for r in results]
            if values[i] is not None or any(p is None for p in parts):
                continue  # known, or its input depends on an analyzer of this phase: the next phase
            kind, params = _KINDS[name], results[0][1][i]
            merged = functools.reduce(kind.merge, parts)
            values[i] = kind.finish(merged, **params)
            progress = True
        if not progress:
            raise TransformError("preprocessing_fn's analyzers depend on values that change between two runs over "
                                 "the same rows (randomness?): an analyzer's input must be a function of the data")


def mean(x: Any) -> Any:
    return _constant(_analyzer("mean", x))


def std(x: Any) -> Any:
    return _constant(_analyzer("std", x))


def min(x: Any) -> Any:  # noqa: A001 (tft's name)
    return _constant(_analyzer("min", x))


def max(x: Any) -> Any:  # noqa: A001 (tft's name)
    return _constant(_analyzer("max", x))


def _constant(value: Any) -> Any:
    import tensorflow as tf

    return tf.constant(value, tf.float32)


def scale_to_z_score(x: Any) -> Any:
    """(x - mean) / std over the training split (std 0: x - mean)."""
    import tensorflow as tf

    m, s = mean(x), std(x)
    x = tf.cast(x, tf.float32)
    return tf.where(s > 0, (x - m) / tf.where(s > 0, s, 1.0), x - m)


def scale_to_0_1(x: Any) -> Any:
    import tensorflow as tf

    low, high = min(x), max(x)
    x = tf.cast(x, tf.float32)
    return tf.where(high > low, (x - low) / tf.where(high > low, high - low, 1.0), x - low)


def vocabulary(x: Any, top_k: int | None = None) -> list[str]:
    """The values of a string feature by descending frequency (then value), at most `top_k`."""
    return list(_analyzer("vocabulary", x, top_k=top_k))


def compute_and_apply_vocabulary(x: Any, top_k: int | None = None) -> Any:
    """int64 ids of a string feature in its training vocabulary; unknown values: len(vocabulary)."""
    import tensorflow as tf

    vocab = vocabulary(x, top_k)
    if not vocab:
        return tf.zeros_like(x, tf.int64)
    table = tf.constant(vocab, tf.string)
    hits = tf.equal(tf.expand_dims(x, -1), table)
    found = tf.reduce_any(hits, axis=-1)
    return tf.where(found, tf.argmax(tf.cast(hits, tf.int32), axis=-1), tf.cast(len(vocab), tf.int64))


def quantiles(x: Any, num_buckets: int) -> list[float]:
    """The `num_buckets - 1` inner boundaries that split the training values into equal parts
    (exact: the merge keeps every training value)."""
    return list(_analyzer("quantiles", x, num_buckets=num_buckets))


def bucketize(x: Any, num_buckets: int) -> Any:
    """int64 bucket ids 0..num_buckets-1 by the training quantiles."""
    import tensorflow as tf

    boundaries = quantiles(x, num_buckets)
    return tf.cast(tf.raw_ops.Bucketize(input=tf.cast(x, tf.float32), boundaries=boundaries), tf.int64)


@contextlib.contextmanager
def applying(values: list[Any], names: list[str]) -> Iterator[_Trace]:
    trace = _Trace(_APPLY, values, names)
    token = _current.set(trace)
    try:
        yield trace
    finally:
        _current.reset(token)
