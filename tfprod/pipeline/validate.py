"""Schemas and anomalies the way TFDV makes them: inference from statistics, checks of statistics
against a schema, drift (against the previous span) and skew (training against serving data).

Drift and skew follow TFDV's comparators, set per feature in the schema:
`drift_comparator { jensen_shannon_divergence { threshold: 0.1 } }` for numeric features (the
Jensen-Shannon divergence, log base 2, of the two standard histograms re-bucketed onto the union
of their boundaries with counts spread uniformly inside a bucket, so it lies in [0, 1]) and
`drift_comparator { infinity_norm { threshold: 0.1 } }` for categorical ones (the largest
difference of a value's share between the two datasets).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from tensorflow_metadata.proto.v0 import anomalies_pb2, schema_pb2, statistics_pb2

from tfprod.pipeline.stats import feature as feature_stats

MAX_DOMAIN = 100  # string features with at most this many values get a domain
FS = statistics_pb2.FeatureNameStatistics
AI = anomalies_pb2.AnomalyInfo


def infer_schema(ds: statistics_pb2.DatasetFeatureStatistics, drift_threshold: float | None = None,
                 skew_threshold: float | None = None) -> schema_pb2.Schema:
    """A schema for the features of `ds`: types, presence, single values, string domains for
    categorical features; comparators with the given thresholds on every feature."""
    schema = schema_pb2.Schema()
    for f in ds.features:
        name = f.path.step[0] if f.path.step else f.name
        out = schema.feature.add(name=name)
        common = f.string_stats.common_stats if f.type == FS.STRING else f.num_stats.common_stats
        present = common.num_non_missing
        out.presence.min_fraction = 1.0 if common.num_missing == 0 else 0.0
        out.presence.min_count = 1
        out.value_count.min = out.value_count.max = 1
        if f.type == FS.STRING:
            out.type = schema_pb2.BYTES
            if 0 < f.string_stats.unique <= MAX_DOMAIN and present:
                domain = schema.string_domain.add(name=name)
                domain.value.extend(sorted(b.label for b in f.string_stats.rank_histogram.buckets))
                out.domain = name
        else:
            out.type = schema_pb2.FLOAT if f.type == FS.FLOAT else schema_pb2.INT
        categorical = f.type == FS.STRING
        for threshold, comparator in ((drift_threshold, out.drift_comparator), (skew_threshold, out.skew_comparator)):
            if threshold is not None:
                measure = comparator.infinity_norm if categorical else comparator.jensen_shannon_divergence
                measure.threshold = threshold
    return schema


def _distribution(f: statistics_pb2.FeatureNameStatistics) -> dict[str, float]:
    buckets = f.string_stats.rank_histogram.buckets
    total = f.string_stats.common_stats.num_non_missing or sum(b.sample_count for b in buckets) or 1
    return {b.label: b.sample_count / total for b in buckets}


def l_infinity(a: statistics_pb2.FeatureNameStatistics, b: statistics_pb2.FeatureNameStatistics) -> float:
    """max over values |share in a - share in b| (TFDV's L-infinity distance)."""
    p, q = _distribution(a), _distribution(b)
    return max((abs(p.get(v, 0.0) - q.get(v, 0.0)) for v in {*p, *q}), default=0.0)


def standard_histogram(f: statistics_pb2.FeatureNameStatistics) -> statistics_pb2.Histogram | None:
    return next((h for h in f.num_stats.histograms if h.type == statistics_pb2.Histogram.STANDARD), None)


def rebucket(h: statistics_pb2.Histogram, edges: Sequence[float]) -> np.ndarray:
    """`h`'s counts on new bucket `edges`, each bucket's count spread uniformly over its width (a
    zero-width bucket puts its count where its value falls)."""
    out = np.zeros(len(edges) - 1)
    for b in h.buckets:
        lo, hi = b.low_value, b.high_value
        if hi <= lo:
            i = min(max(int(np.searchsorted(edges, lo, side="right")) - 1, 0), len(out) - 1)
            out[i] += b.sample_count
            continue
        for i in range(len(out)):
            overlap = min(hi, edges[i + 1]) - max(lo, edges[i])
            if overlap > 0:
                out[i] += b.sample_count * overlap / (hi - lo)
    return out


def _widened(h: statistics_pb2.Histogram) -> statistics_pb2.Histogram:
    """Zero-width buckets (a constant column) as narrow ones, so that two different constants
    land in different buckets."""
    out = statistics_pb2.Histogram()
    out.CopyFrom(h)
    for b in out.buckets:
        if b.high_value <= b.low_value:
            b.high_value = b.low_value + 1e-9 * max(1.0, abs(b.low_value))
    return out


def jensen_shannon(a: statistics_pb2.Histogram, b: statistics_pb2.Histogram) -> float:
    """The Jensen-Shannon divergence (log2) of two histograms on the union of their boundaries."""
    a, b = _widened(a), _widened(b)
    edges = sorted({x for h in (a, b) for bucket in h.buckets for x in (bucket.low_value, bucket.high_value)})
    if len(edges) < 2:
        return 0.0
    p, q = rebucket(a, edges), rebucket(b, edges)
    if p.sum() == 0 or q.sum() == 0:
        return 1.0 if p.sum() != q.sum() else 0.0
    p, q = p / p.sum(), q / q.sum()
    m = (p + q) / 2

    def kl(x: np.ndarray) -> float:
        mask = x > 0
        return float((x[mask] * np.log2(x[mask] / m[mask])).sum())
    return min(1.0, 0.5 * kl(p) + 0.5 * kl(q))


def _add(anomalies: anomalies_pb2.Anomalies, name: str, kind: int, short: str, description: str) -> None:
    info = anomalies.anomaly_info[name]
    info.path.step[:] = [name]
    info.severity = AI.ERROR
    info.reason.add(type=kind, short_description=short, description=description)
    info.short_description = short if len(info.reason) == 1 else "Multiple errors"
    info.description = " ".join(r.description for r in info.reason)


def validate(ds: statistics_pb2.DatasetFeatureStatistics, schema: schema_pb2.Schema,
             previous: statistics_pb2.DatasetFeatureStatistics | None = None,
             serving: statistics_pb2.DatasetFeatureStatistics | None = None) -> anomalies_pb2.Anomalies:
    """Anomalies of `ds` against `schema`; drift against `previous`, skew against `serving`,
    where the schema's comparators ask for them."""
    anomalies = anomalies_pb2.Anomalies()
    anomalies.anomaly_name_format = anomalies_pb2.Anomalies.SERIALIZED_PATH
    anomalies.baseline.CopyFrom(schema)
    domains = {d.name: set(d.value) for d in schema.string_domain}
    known = set()
    for spec in schema.feature:
        known.add(spec.name)
        f = feature_stats(ds, spec.name)
        if f is None:
            if spec.presence.min_fraction > 0 or spec.presence.min_count > 0:
                _add(anomalies, spec.name, AI.SCHEMA_MISSING_COLUMN, "Column dropped",
                     f"The feature '{spec.name}' is in the schema but not in the data.")
            continue
        string = f.type == FS.STRING
        common = f.string_stats.common_stats if string else f.num_stats.common_stats
        total = common.num_non_missing + common.num_missing
        if total and common.num_non_missing / total < spec.presence.min_fraction:
            _add(anomalies, spec.name, AI.FEATURE_TYPE_LOW_FRACTION_PRESENT, "Column missing values",
                 f"The feature '{spec.name}' is present in {common.num_non_missing / total:.2%} of the examples; "
                 f"the schema requires at least {spec.presence.min_fraction:.2%}.")
        if spec.type == schema_pb2.BYTES and not string or spec.type in (schema_pb2.INT, schema_pb2.FLOAT) and string:
            _add(anomalies, spec.name, AI.UNEXPECTED_DATA_TYPE, "Unexpected data type",
                 f"The feature '{spec.name}' is {FS.Type.Name(f.type)} in the data but "
                 f"{schema_pb2.FeatureType.Name(spec.type)} in the schema.")
            continue
        if spec.type == schema_pb2.INT and f.type == FS.FLOAT:
            _add(anomalies, spec.name, AI.INT_TYPE_INT_EXPECTED, "Float values", f"The feature '{spec.name}' has "
                 "non-integer values; the schema says INT.")
        allowed = domains.get(spec.domain) if spec.domain else set(spec.string_domain.value) or None
        if string and allowed is not None:
            unexpected = sorted(b.label for b in f.string_stats.rank_histogram.buckets if b.label not in allowed)
            if unexpected:
                _add(anomalies, spec.name, AI.ENUM_TYPE_UNEXPECTED_STRING_VALUES, "Unexpected string values",
                     f"Examples contain values missing from the schema: {', '.join(unexpected[:10])}"
                     + (f" (and {len(unexpected) - 10} more)" if len(unexpected) > 10 else "") + ".")
        if not string and common.num_non_missing:
            domain = spec.float_domain if spec.HasField("float_domain") else spec.int_domain \
                if spec.HasField("int_domain") else None
            if domain is not None and domain.HasField("min") and f.num_stats.min < domain.min:
                _add(anomalies, spec.name, AI.FLOAT_TYPE_SMALL_FLOAT, "Out-of-range values",
                     f"Unexpectedly low value: {f.num_stats.min:g} < {domain.min:g}.")
            if domain is not None and domain.HasField("max") and f.num_stats.max > domain.max:
                _add(anomalies, spec.name, AI.FLOAT_TYPE_BIG_FLOAT, "Out-of-range values",
                     f"Unexpectedly high value: {f.num_stats.max:g} > {domain.max:g}.")
        for other, comparator, what in ((previous, spec.drift_comparator, "drift"),
                                        (serving, spec.skew_comparator, "skew")):
            if other is not None and spec.HasField(f"{what}_comparator"):
                _compare(anomalies, spec.name, f, feature_stats(other, spec.name), comparator, what)
    for f in ds.features:
        name = f.path.step[0] if f.path.step else f.name
        if name not in known:
            _add(anomalies, name, AI.SCHEMA_NEW_COLUMN, "New column",
                 f"The feature '{name}' is in the data but not in the schema.")
    return anomalies


def _compare(anomalies: anomalies_pb2.Anomalies, name: str, f: statistics_pb2.FeatureNameStatistics,
             other: statistics_pb2.FeatureNameStatistics | None, comparator: schema_pb2.FeatureComparator,
             what: str) -> None:
    info = next((i for i in anomalies.drift_skew_info if list(i.path.step) == [name]), None)
    if info is None:
        info = anomalies.drift_skew_info.add()
        info.path.step.append(name)
    measurements = info.drift_measurements if what == "drift" else info.skew_measurements
    against = "the previous span" if what == "drift" else "the serving data"
    if other is None:
        _add(anomalies, name, AI.COMPARATOR_CONTROL_DATA_MISSING, f"Missing in {against}",
             f"The feature '{name}' is missing in {against}, so its {what} cannot be measured.")
        return
    M = anomalies_pb2.DriftSkewInfo.Measurement
    if comparator.HasField("infinity_norm") and f.type == FS.STRING:
        value, threshold = l_infinity(f, other), comparator.infinity_norm.threshold
        measurements.add(type=M.L_INFTY, value=value, threshold=threshold)
        if value > threshold:
            _add(anomalies, name, AI.COMPARATOR_L_INFTY_HIGH, f"High L-infinity distance ({what})",
                 f"The L-infinity distance between this data and {against} is {value:.4f} (up to 1), "
                 f"above the threshold {threshold:g}.")
    if comparator.HasField("jensen_shannon_divergence") and f.type != FS.STRING:
        a, b = standard_histogram(f), standard_histogram(other)
        if a is None or b is None:
            return
        value, threshold = jensen_shannon(a, b), comparator.jensen_shannon_divergence.threshold
        measurements.add(type=M.JENSEN_SHANNON_DIVERGENCE, value=value, threshold=threshold)
        if value > threshold:
            _add(anomalies, name, AI.COMPARATOR_JENSEN_SHANNON_DIVERGENCE_HIGH,
                 f"High Jensen-Shannon divergence ({what})",
                 f"The Jensen-Shannon divergence between this data and {against} is {value:.4f} (up to 1), "
                 f"above the threshold {threshold:g}.")


def describe(anomalies: anomalies_pb2.Anomalies) -> list[str]:
    return [f"{name}: {info.description}" for name, info in sorted(anomalies.anomaly_info.items())]

