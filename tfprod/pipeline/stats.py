"""TFDV's statistics, computed with pyarrow as partials over batches plus merges of partials.

Two passes, each a partial per record batch and an associative merge (so a cluster can run the
same functions over its blocks): the first gathers counts, missing values, moments (Chan's
parallel mean/M2), min, max, zeros and string value counts; the second counts values into 10,000
equal-width bins between the merged min and max, from which the median, the 10-bucket standard
histogram and the 10-quantile histogram come. Counts, min, max, histograms and string statistics
are exact and independent of the batching; mean and standard deviation are equal up to float
summation order.

The result is a `DatasetFeatureStatisticsList` (tensorflow-metadata), the proto TFDV writes and
its visualisation reads.
"""

from __future__ import annotations

import dataclasses
import math
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from tensorflow_metadata.proto.v0 import statistics_pb2

FINE_BINS = 10_000
BUCKETS = 10
TOP_K = 10
RANK_BUCKETS = 1000  # TFDV's default: the values a domain or an L-infinity distance can see
BATCH_ROWS = 65_536


@dataclasses.dataclass
class NumericPartial:
    kind: str  # "INT" | "FLOAT"
    count: int = 0  # values present, NaN included
    missing: int = 0
    nan: int = 0
    mean: float = 0.0
    m2: float = 0.0
    low: float = math.inf
    high: float = -math.inf
    zeros: int = 0

    def merge(self, other: NumericPartial) -> NumericPartial:
        n_a, n_b = self.count - self.nan, other.count - other.nan
        n = n_a + n_b
        delta = other.mean - self.mean
        mean = self.mean + delta * n_b / n if n else 0.0
        m2 = self.m2 + other.m2 + delta * delta * n_a * n_b / n if n else 0.0
        kind = "FLOAT" if "FLOAT" in (self.kind, other.kind) else "INT"
        return NumericPartial(kind, self.count + other.count, self.missing + other.missing, self.nan + other.nan,
                              mean, m2, min(self.low, other.low), max(self.high, other.high), self.zeros + other.zeros)


@dataclasses.dataclass
class StringPartial:
    count: int = 0
    missing: int = 0
    length: int = 0
    values: Counter[str] = dataclasses.field(default_factory=Counter)

    def merge(self, other: StringPartial) -> StringPartial:
        return StringPartial(self.count + other.count, self.missing + other.missing, self.length + other.length,
                             self.values + other.values)


Partial = NumericPartial | StringPartial
Partials = dict[str, Partial]


def _kind(t: pa.DataType) -> str:
    if pa.types.is_floating(t):
        return "FLOAT"
    if pa.types.is_integer(t) or pa.types.is_boolean(t):
        return "INT"
    if pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_binary(t) or pa.types.is_null(t):
        return "STRING"  # a column with no value at all (type null) is an all-missing string column
    raise ValueError(f"column type {t} is not supported (numbers, booleans and strings are)")


def first_pass(batch: pa.RecordBatch | pa.Table) -> Partials:
    """Counts, moments, min/max, zeros and string value counts of one batch."""
    out: Partials = {}
    for name, column in zip(batch.schema.names, batch.columns, strict=True):
        kind = _kind(column.type)
        missing = column.null_count
        present = pc.drop_null(column)
        if kind == "STRING":
            values = present.cast(pa.string()) if not pa.types.is_string(column.type) else present
            counts = pc.value_counts(values)
            lengths = pc.sum(pc.utf8_length(values)).as_py() or 0
            out[name] = StringPartial(len(values), missing, int(lengths), Counter(
                dict(zip(counts.field("values").to_pylist(), counts.field("counts").to_pylist(), strict=True))))
            continue
        data = _as_floats(present)
        finite = data[np.isfinite(data)]  # NaN and infinities are counted (num_nan), not averaged or binned
        p = NumericPartial(kind, len(data), missing, len(data) - len(finite))
        if finite.size:
            p.mean = float(finite.mean())
            p.m2 = float(((finite - p.mean) ** 2).sum())
            p.low, p.high = float(finite.min()), float(finite.max())
            p.zeros = int((finite == 0).sum())
        out[name] = p
    return out


def _as_floats(column: Any) -> np.ndarray:
    """A null-free numeric column as float64 (integers beyond 2**53 lose precision, none is refused)."""
    if pa.types.is_floating(column.type):
        return np.asarray(column.cast(pa.float64()), np.float64)
    return np.asarray(column.cast(pa.int64())).astype(np.float64)


def merge(a: Partials, b: Partials) -> Partials:
    out = dict(a)
    for name, p in b.items():
        mine = out.get(name)
        if mine is None:
            out[name] = p
        elif type(mine) is not type(p):
            raise ValueError(f"column '{name}' is a number in one batch and a string in another")
        else:
            out[name] = mine.merge(p)  # type: ignore[arg-type]
    return out


def second_pass(batch: pa.RecordBatch | pa.Table, ranges: dict[str, tuple[float, float]]) -> dict[str, np.ndarray]:
    """Counts of one batch's values in FINE_BINS equal-width bins of each numeric column's range."""
    out = {}
    for name, (low, high) in ranges.items():
        data = _as_floats(pc.drop_null(batch.column(name)))
        data = data[np.isfinite(data)]
        out[name] = fine_counts(data, low, high)
    return out


def fine_counts(data: np.ndarray, low: float, high: float) -> np.ndarray:
    if high <= low:
        counts = np.zeros(FINE_BINS, np.int64)
        counts[0] = data.size
        return counts
    index = np.minimum(((data - low) / (high - low) * FINE_BINS).astype(np.int64), FINE_BINS - 1)
    return np.bincount(index, minlength=FINE_BINS).astype(np.int64)


def merge_counts(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    out = dict(a)
    for k, v in b.items():
        out[k] = out[k] + v if k in out else v
    return out


def batches(table: pa.Table, rows: int = BATCH_ROWS) -> Iterable[pa.RecordBatch]:
    yield from table.to_batches(max_chunksize=rows)


def compute(table: pa.Table, name: str = "", rows: int = BATCH_ROWS) -> statistics_pb2.DatasetFeatureStatistics:
    """Both passes over an in-memory `table`, in pieces of `rows`, then the proto."""
    pieces = [table.slice(i, rows) for i in range(0, table.num_rows, rows)] or [table]
    return compute_units(pieces, name, lambda fn, items: [fn(i) for i in items])


def _read(unit: Any) -> pa.Table:
    """A piece of a split: an `examples.Unit` (a file's row group), or a table already in memory."""
    if isinstance(unit, pa.Table):
        return unit
    from tfprod.pipeline import examples

    return examples.read_unit(unit)


def unit_first_pass(unit: Any) -> tuple[int, Partials]:
    """Rows and merged first-pass partials of one piece of a split."""
    table = _read(unit)
    partials: Partials = {}
    for batch in batches(table):
        partials = merge(partials, first_pass(batch))
    return table.num_rows, partials


def unit_second_pass(job: tuple[Any, dict[str, tuple[float, float]]]) -> dict[str, np.ndarray]:
    unit, ranges = job
    counts: dict[str, np.ndarray] = {}
    for batch in batches(_read(unit)):
        counts = merge_counts(counts, second_pass(batch, ranges))
    return counts


def compute_units(units: Sequence[Any], name: str, map: Callable[[Callable[[Any], Any], Sequence[Any]], list[Any]]
                  ) -> statistics_pb2.DatasetFeatureStatistics:
    """Both passes over the pieces of a split, each piece's partial computed by `map` (here or on a
    cluster's workers) and merged here in the pieces' order: the same answer on every engine."""
    first = map(unit_first_pass, list(units))
    rows, partials, order = 0, dict[str, Partial](), list[str]()
    for n, p in first:
        rows += n
        partials = merge(partials, p)
        order += [c for c in p if c not in order]
    ranges = {n: (p.low, p.high) for n, p in partials.items() if isinstance(p, NumericPartial) and p.count > p.nan}
    counts: dict[str, np.ndarray] = {}
    for c in map(unit_second_pass, [(u, ranges) for u in units]):
        counts = merge_counts(counts, c)
    return to_proto(name, rows, partials, counts, order)


def to_proto(name: str, num_examples: int, partials: Partials, counts: dict[str, np.ndarray],
             order: Sequence[str]) -> statistics_pb2.DatasetFeatureStatistics:
    ds = statistics_pb2.DatasetFeatureStatistics(name=name, num_examples=num_examples)
    for feature in order:
        p = partials[feature]
        f = ds.features.add()
        f.path.step.append(feature)
        if isinstance(p, StringPartial):
            f.type = statistics_pb2.FeatureNameStatistics.STRING
            s = f.string_stats
            _common(s.common_stats, p.count, p.missing)
            s.unique = len(p.values)
            s.avg_length = p.length / p.count if p.count else 0.0
            ranked = sorted(p.values.items(), key=lambda kv: (-kv[1], kv[0]))
            for value, freq in ranked[:TOP_K]:
                s.top_values.add(value=value, frequency=freq)
            for rank, (value, freq) in enumerate(ranked[:RANK_BUCKETS]):
                s.rank_histogram.buckets.add(low_rank=rank, high_rank=rank, label=value, sample_count=freq)
            continue
        types = statistics_pb2.FeatureNameStatistics
        f.type = types.FLOAT if p.kind == "FLOAT" else types.INT
        n = f.num_stats
        _common(n.common_stats, p.count, p.missing)
        finite = p.count - p.nan
        n.mean = p.mean
        n.std_dev = math.sqrt(p.m2 / finite) if finite else 0.0
        n.num_zeros = p.zeros
        if finite:
            n.min, n.max = p.low, p.high
            fine = counts[feature]
            n.median = quantile(fine, p.low, p.high, 0.5)
            standard = n.histograms.add(type=statistics_pb2.Histogram.STANDARD, num_nan=p.nan)
            step = FINE_BINS // BUCKETS
            width = (p.high - p.low) / BUCKETS
            for i in range(BUCKETS):
                standard.buckets.add(low_value=p.low + i * width, high_value=p.low + (i + 1) * width if i < BUCKETS - 1
                                     else p.high, sample_count=float(fine[i * step:(i + 1) * step].sum()))
            quantiles = n.histograms.add(type=statistics_pb2.Histogram.QUANTILES, num_nan=p.nan)
            edges = [quantile(fine, p.low, p.high, q / BUCKETS) for q in range(BUCKETS + 1)]
            edges[0], edges[-1] = p.low, p.high
            for i in range(BUCKETS):
                quantiles.buckets.add(low_value=edges[i], high_value=edges[i + 1], sample_count=finite / BUCKETS)
    return ds


def _common(c: Any, present: int, missing: int) -> None:
    c.num_non_missing, c.num_missing = present, missing
    if present:
        c.min_num_values = c.max_num_values = 1
        c.avg_num_values = 1.0
        c.tot_num_values = present


def quantile(fine: np.ndarray, low: float, high: float, q: float) -> float:
    """The q-quantile from FINE_BINS counts, interpolated inside its bin."""
    total = int(fine.sum())
    if total == 0 or high <= low:
        return low
    target = q * total
    cumulative = np.cumsum(fine)
    i = int(np.searchsorted(cumulative, target, side="left"))
    i = min(i, FINE_BINS - 1)
    before = cumulative[i - 1] if i else 0
    inside = (target - before) / fine[i] if fine[i] else 0.0
    return float(low + (i + min(max(inside, 0.0), 1.0)) * (high - low) / FINE_BINS)


def statistics_list(datasets: Sequence[statistics_pb2.DatasetFeatureStatistics]
                    ) -> statistics_pb2.DatasetFeatureStatisticsList:
    out = statistics_pb2.DatasetFeatureStatisticsList()
    out.datasets.extend(datasets)
    return out


def feature(ds: statistics_pb2.DatasetFeatureStatistics, name: str) -> statistics_pb2.FeatureNameStatistics | None:
    return next((f for f in ds.features if list(f.path.step) == [name] or f.name == name), None)
