"""Full-pass analyzers for a `preprocessing_fn`, as TensorFlow Transform's, baked into a graph.

    from tfprod.pipeline import transform as tft

    def preprocessing_fn(inputs):
        return {"radius_z": tft.scale_to_z_score(inputs["mean_radius"]),
                "region_id": tft.compute_and_apply_vocabulary(inputs["region"]),
                "area_bucket": tft.bucketize(inputs["mean_area"], 4)}

The analysis is a partial per piece of the training split and a merge, so a cluster's workers
can run it (`ctx.map`): each analyzer has a partial over a piece's values (moments, min/max,
value counts, the values themselves for quantiles), an associative merge and a final value. It
runs in phases. Before each, the function is traced as a graph in which every analyzer still
unknown returns a marked stand-in tensor; an unknown analyzer whose input has none of those
marks among its ancestors is ready. Then the function runs eagerly over every piece, the ready
analyzers record their partials, and the merged partials give their values for the next phase.
One phase when every analyzer reads raw inputs, one more per level of analyzers over analyzers.
A list an analyzer returns into Python (`tft.vocabulary`, `tft.quantiles` called directly) cannot
be followed in the graph: every analyzer after it waits for it; a function that cannot be traced
as a graph is analyzed one analyzer per phase. Mean and standard deviation are merged with Chan's
formulas (equal to a whole-column pass up to float summation order); min, max, vocabularies and
quantiles are exact.

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

_COLLECT, _PLAN, _APPLY = "collect", "plan", "apply"


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


def _reduce(fn: Callable[[np.ndarray], Any], a: np.ndarray) -> float | None:
    x = _numbers(a)
    return float(fn(x)) if x.size else None  # None: a piece without numbers


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
    """An analyzer: its partial over one piece's values, their associative merge, its final value
    (both given the analyzer's parameters), and what it returns while it is unknown."""

    partial: Callable[..., Any]
    merge: Callable[[Any, Any], Any]
    finish: Callable[..., Any]
    stand_in: Any


_KINDS = {
    "mean": _Kind(lambda a: _moments(a), _chan, lambda p: p[1], 0.0),
    "std": _Kind(lambda a: _moments(a), _chan, lambda p: math.sqrt(p[2] / p[0]) if p[0] else 0.0, 1.0),
    "min": _Kind(lambda a: _reduce(np.min, a), _extreme(builtins.min), lambda p: 0.0 if p is None else p, 0.0),
    "max": _Kind(lambda a: _reduce(np.max, a), _extreme(builtins.max), lambda p: 0.0 if p is None else p, 1.0),
    "vocabulary": _Kind(lambda a, top_k=None: _words(a), lambda p, q: p + q,
                        lambda p, top_k=None: [v for v, _ in sorted(p.items(), key=lambda kv: (-kv[1], kv[0]))[:top_k]],
                        []),
    "quantiles": _Kind(lambda a, num_buckets=2: _numbers(a), lambda p, q: np.concatenate([p, q]),
                       lambda p, num_buckets=2: _quantiles(p, num_buckets), [0.0]),
}


@dataclasses.dataclass
class _Trace:
    mode: str
    values: list[Any]  # the values known so far by position (None: unknown); apply: all of them
    names: list[str]
    params: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    position: int = 0
    inputs: list[Any] = dataclasses.field(default_factory=list)  # collect, plan: each analyzer's input
    markers: dict[str, int] = dataclasses.field(default_factory=dict)  # plan: stand-in op name -> position
    barriers: list[int] = dataclasses.field(default_factory=list)  # plan: unknown lists handed to Python


_current: contextvars.ContextVar[_Trace | None] = contextvars.ContextVar("tfprod_transform", default=None)


class TransformError(PipelineError):
    pass


_FLOATS = ("mean", "std", "min", "max")


def _analyzer(name: str, x: Any, as_tensor: bool = False, **params: Any) -> Any:
    """The analyzer's value: in apply mode its constant; while analyzing, the value if known, else a
    stand-in (a marked tensor when planning, so what depends on it can be seen)."""
    trace = _current.get()
    if trace is None:
        raise TransformError(f"tft.{name} is an analyzer: call it inside a preprocessing_fn run by Transform")
    i = trace.position
    trace.position += 1
    if trace.mode == _APPLY:
        if i >= len(trace.values) or trace.names[i] != name:
            raise TransformError("preprocessing_fn called its analyzers in a different order when traced: keep the "
                                 "calls unconditional and in a fixed order")
        return trace.values[i]
    if i >= len(trace.names):
        trace.names.append(name)
        trace.values.append(None)
    elif trace.names[i] != name:
        raise TransformError("preprocessing_fn called its analyzers in a different order on another run: keep the "
                             "calls unconditional and in a fixed order")
    trace.params.append(params)
    trace.inputs.append(x if trace.mode == _PLAN else np.asarray(x))
    known = trace.values[i]
    if known is not None:
        return known
    stand_in = _KINDS[name].stand_in
    if trace.mode == _PLAN:
        if name in _FLOATS or as_tensor:
            import tensorflow as tf

            marked = tf.identity(tf.constant(stand_in, tf.string if name == "vocabulary" else tf.float32),
                                 name=f"tfprod_unknown_{i}")
            trace.markers[marked.op.name] = i
            return marked
        trace.barriers.append(i)  # a list in Python: what uses it cannot be followed
    return stand_in


def _depends(tensor: Any, markers: dict[str, int]) -> bool:
    """Whether a stand-in op is among the ancestors of `tensor` (a graph tensor; anything else: no)."""
    op = getattr(tensor, "op", None)
    if op is None or not markers:
        return False
    seen: set[str] = set()
    stack = [op]
    while stack:
        op = stack.pop()
        if op.name in markers:
            return True
        if op.name in seen:
            continue
        seen.add(op.name)
        stack.extend(t.op for t in op.inputs)
        stack.extend(op.control_inputs)
    return False


def _plan(fn: Callable[..., Any], features: list[str], dtypes: dict[str, str], names: list[str],
          values: list[Any]) -> tuple[list[str], list[int]] | None:
    """Trace `fn` as a graph with the known values: the analyzers' names and the unknown ones that are
    ready (their input depends on no unknown analyzer). None when `fn` cannot be traced."""
    import tensorflow as tf

    from tfprod.pipeline.components import _user

    trace = _Trace(_PLAN, list(values), list(names))
    specs = _user.specs(features, dtypes)

    def traced(*args: Any) -> Any:
        token = _current.set(trace)
        try:
            return fn(dict(zip(features, args, strict=True)))
        finally:
            _current.reset(token)
    try:
        tf.function(traced, input_signature=specs).get_concrete_function()
    except Exception:  # Python that needs eager values: one analyzer per phase instead
        return None
    ready = [i for i, v in enumerate(trace.values) if v is None
             and not any(j < i for j in trace.barriers) and not _depends(trace.inputs[i], trace.markers)]
    return trace.names, ready


@dataclasses.dataclass(frozen=True)
class AnalyzeJob:
    """One piece of the training split through `preprocessing_fn` (from `module_file`), with the
    analyzer values known so far and the positions whose partials this phase computes (None: the
    first unknown one)."""

    module_file: str
    unit: Any  # examples.Unit
    features: list[str]
    dtypes: dict[str, str]
    names: list[str]
    values: list[Any]
    ready: list[int] | None


def analyze_unit(job: AnalyzeJob) -> tuple[list[str], list[dict[str, Any]], dict[int, Any]]:
    """The analyzers' names and parameters, and the partials of the ready ones over this piece."""
    import tensorflow as tf

    from tfprod.pipeline import examples
    from tfprod.pipeline.components import _user

    fn = _user.function(job.module_file, "preprocessing_fn")
    table = examples.read_unit(job.unit)
    trace = _Trace(_COLLECT, list(job.values), list(job.names))
    token = _current.set(trace)
    try:
        fn({k: tf.constant(v) for k, v in _user.arrays(table, job.features, job.dtypes).items()})
    except PipelineError:
        raise
    except Exception as e:  # the user's code: any error is theirs to see
        raise PipelineError(f"preprocessing_fn failed on the training split: {type(e).__name__}: {e}") from None
    finally:
        _current.reset(token)
    ready = job.ready if job.ready is not None else [
        next(i for i, v in enumerate(trace.values) if v is None)] if None in trace.values else []
    return trace.names, trace.params, {i: _KINDS[trace.names[i]].partial(trace.inputs[i], **trace.params[i])
                                       for i in ready}


def analyze(module_file: str, units: list[Any], features: list[str], dtypes: dict[str, str],
            map: Callable[[Callable[[Any], Any], list[Any]], list[Any]]) -> tuple[list[str], list[Any]]:
    """Every analyzer's name and value over the pieces `units`, in phases, each piece's partials
    computed by `map` (here or by a cluster's workers) and merged here in the pieces' order."""
    from tfprod.pipeline.components import _user

    if not units:
        raise TransformError("the training split has no rows to analyze")
    fn = _user.function(module_file, "preprocessing_fn")
    names: list[str] = []
    values: list[Any] = []
    while True:
        plan = _plan(fn, features, dtypes, names, values)
        if plan is not None:
            names, ready = plan[0], plan[1]
            values = values + [None] * (len(names) - len(values))
            if not ready:
                return names, values
        results = map(analyze_unit, [AnalyzeJob(module_file, u, features, dtypes, names, values,
                                                ready if plan is not None else None) for u in units])
        found, params = list(results[0][0]), results[0][1]
        if any(r[0] != found or r[1] != params for r in results) or (names and found != names):
            raise TransformError("preprocessing_fn called different analyzers on different pieces of the data: keep "
                                 "the calls unconditional and in a fixed order")
        names, values = found, values + [None] * (len(found) - len(values))
        for i in results[0][2]:
            kind = _KINDS[names[i]]
            values[i] = kind.finish(functools.reduce(kind.merge, [r[2][i] for r in results]), **params[i])
        if plan is None and None not in values:
            return names, values


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

    return tf.cast(value, tf.float32) if tf.is_tensor(value) else tf.constant(value, tf.float32)


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

    vocab = _analyzer("vocabulary", x, as_tensor=True, top_k=top_k)
    if tf.is_tensor(vocab):  # planning: a stand-in whose dependents must be seen
        hits = tf.equal(tf.expand_dims(x, -1), vocab)
        return tf.argmax(tf.cast(hits, tf.int32), axis=-1)
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

    boundaries = _analyzer("quantiles", x, as_tensor=True, num_buckets=num_buckets)
    if tf.is_tensor(boundaries):  # planning: a stand-in whose dependents must be seen
        return tf.searchsorted(boundaries, tf.cast(x, tf.float32), side="right", out_type=tf.int64)
    return tf.cast(tf.raw_ops.Bucketize(input=tf.cast(x, tf.float32), boundaries=boundaries), tf.int64)


@contextlib.contextmanager
def applying(values: list[Any], names: list[str]) -> Iterator[_Trace]:
    trace = _Trace(_APPLY, values, names)
    token = _current.set(trace)
    try:
        yield trace
    finally:
        _current.reset(token)
