"""Full-pass analyzers for a `preprocessing_fn`, as TensorFlow Transform's, baked into a graph.

    from tfprod.pipeline import transform as tft

    def preprocessing_fn(inputs):
        return {"radius_z": tft.scale_to_z_score(inputs["mean_radius"]),
                "region_id": tft.compute_and_apply_vocabulary(inputs["region"]),
                "area_bucket": tft.bucketize(inputs["mean_area"], 4)}

The function runs twice. First over the whole training split at once (eager tensors): each
analyzer computes its statistic over the full column and records it, in call order. Then it is
traced into a `tf.function` where each analyzer returns its recorded value as a constant: that
graph is the transform the server applies, so serving computes exactly what training saw.
Missing values arrive as NaN (numbers) and "" (strings); the statistics ignore NaN.

Vocabularies are applied by comparison with a constant list (no lookup table: the graph needs no
initialisation and converts to TFLite and TF.js); ids are by descending frequency, then value, and
values outside the vocabulary get `len(vocabulary)` (one out-of-vocabulary bucket).
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from tfprod.pipeline.dsl import PipelineError

_ANALYZE, _APPLY = "analyze", "apply"


@dataclasses.dataclass
class _Trace:
    mode: str
    values: list[Any]
    names: list[str]
    position: int = 0


_current: contextvars.ContextVar[_Trace | None] = contextvars.ContextVar("tfprod_transform", default=None)


class TransformError(PipelineError):
    pass


def _analyzer(name: str, compute: Callable[[np.ndarray], Any], x: Any) -> Any:
    trace = _current.get()
    if trace is None:
        raise TransformError(f"tft.{name} is an analyzer: call it inside a preprocessing_fn run by Transform")
    if trace.mode == _ANALYZE:
        value = compute(np.asarray(x))
        trace.values.append(value)
        trace.names.append(name)
        return value
    if trace.position >= len(trace.values) or trace.names[trace.position] != name:
        raise TransformError("preprocessing_fn called its analyzers in a different order when traced: keep the "
                             "calls unconditional and in a fixed order")
    value = trace.values[trace.position]
    trace.position += 1
    return value


def _numbers(a: np.ndarray) -> np.ndarray:
    a = a.astype(np.float64)
    return a[~np.isnan(a)]


def mean(x: Any) -> Any:
    return _constant(_analyzer("mean", lambda a: float(_numbers(a).mean()) if _numbers(a).size else 0.0, x))


def std(x: Any) -> Any:
    return _constant(_analyzer("std", lambda a: float(_numbers(a).std()) if _numbers(a).size else 0.0, x))


def min(x: Any) -> Any:  # noqa: A001 (tft's name)
    return _constant(_analyzer("min", lambda a: float(_numbers(a).min()) if _numbers(a).size else 0.0, x))


def max(x: Any) -> Any:  # noqa: A001 (tft's name)
    return _constant(_analyzer("max", lambda a: float(_numbers(a).max()) if _numbers(a).size else 0.0, x))


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
    def compute(a: np.ndarray) -> list[str]:
        counts = Counter(v.decode() if isinstance(v, bytes) else str(v) for v in a.reshape(-1))
        counts.pop("", None)  # a missing value is not a word: it maps to the out-of-vocabulary id
        ranked = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
        return [v for v, _ in ranked[:top_k]]
    return list(_analyzer("vocabulary", compute, x))


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
    """The `num_buckets - 1` inner boundaries that split the training values into equal parts."""
    def compute(a: np.ndarray) -> list[float]:
        values = _numbers(a)
        if not values.size:
            return []
        qs = np.quantile(values, np.linspace(0, 1, num_buckets + 1)[1:-1])
        return sorted({float(q) for q in qs})
    return list(_analyzer("quantiles", compute, x))


def bucketize(x: Any, num_buckets: int) -> Any:
    """int64 bucket ids 0..num_buckets-1 by the training quantiles."""
    import tensorflow as tf

    boundaries = quantiles(x, num_buckets)
    return tf.cast(tf.raw_ops.Bucketize(input=tf.cast(x, tf.float32), boundaries=boundaries), tf.int64)


@contextlib.contextmanager
def analyzing() -> Iterator[_Trace]:
    trace = _Trace(_ANALYZE, [], [])
    token = _current.set(trace)
    try:
        yield trace
    finally:
        _current.reset(token)


@contextlib.contextmanager
def applying(values: list[Any], names: list[str]) -> Iterator[_Trace]:
    trace = _Trace(_APPLY, values, names)
    token = _current.set(trace)
    try:
        yield trace
    finally:
        _current.reset(token)
