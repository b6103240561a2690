"""Prometheus metrics under TF Serving's names, collected into a registry the caller owns.

Counters are exposed as `untyped`: prometheus-client's text writer renames every counter to
`<name>_total`, which would break dashboards built on TF Serving's
`:tensorflow:serving:request_count`; an untyped family keeps the exact series names, and PromQL
(`rate`, `increase`) treats it the same.
"""

from __future__ import annotations

import bisect
import copy
import threading
from collections import defaultdict
from collections.abc import Iterator, Sequence
from typing import Any

from prometheus_client.core import HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from tfprod.core.manager import ServableId, VersionStatus
from tfprod.core.states import State
from tfprod.errors import ServingError
from tfprod.workers.pool import merge_statuses

# TF Serving's request latency buckets: Exponential(10, 1.8, 33) microseconds.
LATENCY_BUCKETS_US = tuple(10 * 1.8**i for i in range(33))

REQUEST_COUNT = ":tensorflow:serving:request_count"
REQUEST_LATENCY = ":tensorflow:serving:request_latency"
WARMUP_LATENCY = ":tensorflow:serving:model_warmup_latency"
LOAD_ATTEMPTS = ":tensorflow:cc:saved_model:load_attempt_count"
VERSION_STATE = ":tfprod:serving:model_version_state"
REFUSALS = ":tfprod:security:refusal_count"


INFERENCE_APIS = frozenset({"Predict", "Classify", "Regress", "MultiInference", "ModelInfer"})
BATCH_SIZE_BUCKETS = tuple(float(2**i) for i in range(14))
BATCHING = ":tensorflow:serving:batching_session:"


class Histogram:
    def __init__(self, bounds: tuple[float, ...] = LATENCY_BUCKETS_US) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.total = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.total += value

    def add(self, other: Histogram) -> None:
        self.counts = [a + b for a, b in zip(self.counts, other.counts, strict=True)]
        self.total += other.total

    def add_to(self, family: HistogramMetricFamily, labels: list[str]) -> None:
        cumulative, buckets = 0, []
        for bound, c in zip([*map(_bound, self.bounds), "+Inf"], self.counts, strict=True):
            cumulative += c
            buckets.append((bound, cumulative))
        family.add_metric(labels, buckets, self.total)


_BATCH_HISTOGRAMS = {  # name -> (help, buckets)
    "queuing_latency": ("Distribution of wall time (in microseconds) a task waited in a batch queue.",
                        LATENCY_BUCKETS_US),
    "input_batch_size": ("Distribution of the number of rows in a batch before padding.", BATCH_SIZE_BUCKETS),
    "processed_batch_size": ("Distribution of the number of rows a batch ran with, padding included.",
                             BATCH_SIZE_BUCKETS),
    "padding_size": ("Distribution of the number of padding rows in a batch.", BATCH_SIZE_BUCKETS),
}


_COUNTERS = ("_requests", "_loads", "_wrapped_runs", "_refusals", "_version_requests")
_HISTOGRAMS = ("_latency", "_batching", "_warmup", "_version_latency")


class ServingMetrics(Collector):
    """Register with `registry.register(metrics)` in the composition root. In a pool of workers,
    `merged` sums every worker's `snapshot` into one collector for a scrape."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._requests: dict[tuple[str, str], int] = defaultdict(int)
        self._latency: dict[tuple[str, str, str], Histogram] = defaultdict(Histogram)
        self._loads: dict[tuple[str, str], int] = defaultdict(int)
        self._states: dict[tuple[str, str], int] = {}
        self._batching: dict[tuple[str, str], Histogram] = {}
        self._warmup: dict[str, Histogram] = defaultdict(Histogram)
        self._wrapped_runs: dict[str, int] = defaultdict(int)
        self._refusals: dict[tuple[str, str], int] = defaultdict(int)
        # per version, for the console only (TF Serving's series carry no version label)
        self._version_requests: dict[tuple[str, int, str], int] = defaultdict(int)
        self._version_latency: dict[tuple[str, int], Histogram] = defaultdict(Histogram)

    def record_request(self, model: str, status: str, api: str, entrypoint: str, seconds: float) -> None:
        with self._lock:
            self._requests[(model, status)] += 1
            if status == "OK":  # TF Serving records latency of successful requests only
                self._latency[(model, api, entrypoint)].observe(seconds * 1e6)

    def record_version(self, model: str, version: int, status: str, seconds: float) -> None:
        """A call on one version: from taking its handle to its answer (decoding the inputs, batch
        queueing and the model; the HTTP body and the output's encoding aside)."""
        with self._lock:
            self._version_requests[(model, version, status)] += 1
            if status == "OK":
                self._version_latency[(model, version)].observe(seconds * 1e6)

    def record_state(self, sid: ServableId, state: State, error: ServingError | None) -> None:
        with self._lock:
            self._states[(sid.name, str(sid.version))] = state.value
            if state is State.AVAILABLE:
                self._loads[(sid.name, "success")] += 1
            elif state is State.END and error is not None:
                self._loads[(sid.name, "fail")] += 1

    def record_refusal(self, model: str, reason: str) -> None:
        """A request or a model version turned away by a security rule."""
        with self._lock:
            self._refusals[(model, reason)] += 1

    def record_warmup(self, model: str, seconds: float) -> None:
        with self._lock:
            self._warmup[model].observe(seconds * 1e6)

    def record_batch(self, model: str, queuing_s: Sequence[float], input_size: int, processed_size: int) -> None:
        with self._lock:
            for name, values in (("queuing_latency", [q * 1e6 for q in queuing_s]), ("input_batch_size", [input_size]),
                                 ("processed_batch_size", [processed_size]),
                                 ("padding_size", [processed_size - input_size])):
                hist = self._batching.get((name, model))
                if hist is None:
                    hist = self._batching[(name, model)] = Histogram(_BATCH_HISTOGRAMS[name][1])
                for v in values:
                    hist.observe(v)
            self._wrapped_runs[model] += 1

    def snapshot(self) -> dict[str, dict[Any, Any]]:
        """Every series, as plain data another process can merge."""
        with self._lock:
            return {name: copy.deepcopy(dict(getattr(self, name))) for name in (*_COUNTERS, *_HISTOGRAMS, "_states")}

    def console(self) -> dict[str, Any]:
        """Every model's cumulative counts and histograms as JSON-ready data, for the console
        (tfprod/console), which draws rates and quantiles from the difference of two reads."""
        with self._lock:
            models: dict[str, dict[str, Any]] = {}

            def model(name: str) -> dict[str, Any]:
                return models.setdefault(name, {"requests": {}, "latency_us": _empty(LATENCY_BUCKETS_US),
                                                "versions": {}, "batching": {}})

            for (name, status), n in self._requests.items():
                if name:
                    model(name)["requests"][status] = n
            for (name, api, _), h in self._latency.items():
                if name and api in INFERENCE_APIS:  # not status, metadata or admin calls
                    _add(model(name)["latency_us"], h)
            def version(name: str, number: int) -> dict[str, Any]:
                return model(name)["versions"].setdefault(str(number), {"requests": {},
                                                                        "latency_us": _empty(LATENCY_BUCKETS_US)})

            for (name, number, status), n in self._version_requests.items():
                version(name, number)["requests"][status] = n
            for (name, number), h in self._version_latency.items():
                _add(version(name, number)["latency_us"], h)
            for (kind, name), h in self._batching.items():
                if kind in ("queuing_latency", "input_batch_size"):
                    model(name)["batching"][kind] = {"bounds": list(h.bounds), "counts": list(h.counts),
                                                     "sum": h.total}
            return models

    @classmethod
    def merged(cls, snapshots: Sequence[dict[str, dict[Any, Any]]]) -> ServingMetrics:
        """Counters and histograms summed; a version's state as the pool's (see merge_statuses)."""
        out = cls()
        for snap in snapshots:
            for name in _COUNTERS:
                counts = getattr(out, name)
                for key, n in snap.get(name, {}).items():
                    counts[key] += n
            for name in _HISTOGRAMS:
                histograms = getattr(out, name)
                for key, h in snap.get(name, {}).items():
                    if key in histograms:
                        histograms[key].add(h)
                    else:
                        histograms[key] = copy.deepcopy(h)
        models = {model for snap in snapshots for model, _ in snap["_states"]}
        for model in models:
            per_worker = [[VersionStatus(int(v), State(value)) for (m, v), value in snap["_states"].items()
                           if m == model] for snap in snapshots]
            for status in merge_statuses(per_worker):
                out._states[(model, str(status.version))] = status.state.value
        return out

    def collect(self) -> Iterator[Metric]:
        with self._lock:
            requests = dict(self._requests)
            latency = {k: copy.deepcopy(h) for k, h in self._latency.items()}
            batching = {k: copy.deepcopy(h) for k, h in self._batching.items()}
            wrapped = dict(self._wrapped_runs)
            warmup = {k: copy.deepcopy(h) for k, h in self._warmup.items()}
            loads = dict(self._loads)
            states = dict(self._states)
            refusals = dict(self._refusals)
        count = Metric(REQUEST_COUNT, "The total number of requests.", "unknown")
        for (model, status), n in requests.items():
            count.add_sample(REQUEST_COUNT, {"model_name": model, "status": status}, n)
        yield count
        hist = HistogramMetricFamily(REQUEST_LATENCY, "Distribution of wall time (in microseconds) for "
                                     "Tensorflow Serving request.", labels=["model_name", "API", "entrypoint"])
        for labels, h in latency.items():
            h.add_to(hist, list(labels))
        yield hist
        for name, (help_text, _) in _BATCH_HISTOGRAMS.items():
            family = HistogramMetricFamily(BATCHING + name, help_text, labels=["model_name"])
            for (kind, model), h in batching.items():
                if kind == name:
                    h.add_to(family, [model])
            yield family
        runs = Metric(BATCHING + "wrapped_run_count", "The number of batched model runs.", "unknown")
        for model, n in wrapped.items():
            runs.add_sample(BATCHING + "wrapped_run_count", {"model_name": model}, n)
        yield runs
        family = HistogramMetricFamily(WARMUP_LATENCY, "Distribution of wall time (in microseconds) for "
                                       "warming up a model version.", labels=["model_name"])
        for model, h in warmup.items():
            h.add_to(family, [model])
        yield family
        attempts = Metric(LOAD_ATTEMPTS, "The number of times a SavedModel was attempted to load.", "unknown")
        for (model, status), n in loads.items():
            attempts.add_sample(LOAD_ATTEMPTS, {"model_name": model, "status": status}, n)
        yield attempts
        state = Metric(VERSION_STATE, "State of each model version (10 START, 20 LOADING, "
                       "30 AVAILABLE, 40 UNLOADING, 50 END).", "gauge")
        for (model, version), value in states.items():
            state.add_sample(VERSION_STATE, {"model_name": model, "version": version}, value)
        yield state
        refused = Metric(REFUSALS, "Requests and model versions refused by a security rule (reason: "
                         "unauthenticated, permission_denied, rate_limited, concurrency_limit, signature, "
                         "graph_scan).", "unknown")
        for (model, reason), n in refusals.items():
            refused.add_sample(REFUSALS, {"model_name": model, "reason": reason}, n)
        yield refused


def _empty(bounds: tuple[float, ...]) -> dict[str, Any]:
    return {"bounds": list(bounds), "counts": [0] * (len(bounds) + 1), "sum": 0.0}


def _add(into: dict[str, Any], h: Histogram) -> None:
    into["counts"] = [a + b for a, b in zip(into["counts"], h.counts, strict=True)]
    into["sum"] += h.total


def _bound(value: float) -> str:
    return f"{value:g}"
