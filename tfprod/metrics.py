"""Prometheus metrics under TF Serving's names, collected into a registry the caller owns.

Counters are exposed as `untyped`: prometheus-client's text writer renames every counter to
`<name>_total`, which would break dashboards built on TF Serving's
`:tensorflow:serving:request_count`; an untyped family keeps the exact series names, and PromQL
(`rate`, `increase`) treats it the same.
"""

from __future__ import annotations

import threading
from collections import defaultdict
from collections.abc import Iterator

from prometheus_client.core import HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from tfprod.core.manager import ServableId
from tfprod.core.states import State
from tfprod.errors import ServingError

# TF Serving's request latency buckets: Exponential(10, 1.8, 33) microseconds.
LATENCY_BUCKETS_US = tuple(10 * 1.8**i for i in range(33))

REQUEST_COUNT = ":tensorflow:serving:request_count"
REQUEST_LATENCY = ":tensorflow:serving:request_latency"
LOAD_ATTEMPTS = ":tensorflow:cc:saved_model:load_attempt_count"
VERSION_STATE = ":tfprod:serving:model_version_state"


class _Histogram:
    def __init__(self) -> None:
        self.counts = [0] * (len(LATENCY_BUCKETS_US) + 1)
        self.total = 0.0

    def observe(self, value: float) -> None:
        i = 0
        while i < len(LATENCY_BUCKETS_US) and value > LATENCY_BUCKETS_US[i]:
            i += 1
        self.counts[i] += 1
        self.total += value


class ServingMetrics(Collector):
    """Register with `registry.register(metrics)` in the composition root."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._requests: dict[tuple[str, str], int] = defaultdict(int)
        self._latency: dict[tuple[str, str, str], _Histogram] = defaultdict(_Histogram)
        self._loads: dict[tuple[str, str], int] = defaultdict(int)
        self._states: dict[tuple[str, str], int] = {}

    def record_request(self, model: str, status: str, api: str, entrypoint: str, seconds: float) -> None:
        with self._lock:
            self._requests[(model, status)] += 1
            if status == "OK":  # TF Serving records latency of successful requests only
                self._latency[(model, api, entrypoint)].observe(seconds * 1e6)

    def record_state(self, sid: ServableId, state: State, error: ServingError | None) -> None:
        with self._lock:
            self._states[(sid.name, str(sid.version))] = state.value
            if state is State.AVAILABLE:
                self._loads[(sid.name, "success")] += 1
            elif state is State.END and error is not None:
                self._loads[(sid.name, "fail")] += 1

    def collect(self) -> Iterator[Metric]:
        with self._lock:
            requests = dict(self._requests)
            latency = {k: (list(h.counts), h.total) for k, h in self._latency.items()}
            loads = dict(self._loads)
            states = dict(self._states)
        count = Metric(REQUEST_COUNT, "The total number of requests.", "unknown")
        for (model, status), n in requests.items():
            count.add_sample(REQUEST_COUNT, {"model_name": model, "status": status}, n)
        yield count
        hist = HistogramMetricFamily(REQUEST_LATENCY, "Distribution of wall time (in microseconds) for "
                                     "Tensorflow Serving request.", labels=["model_name", "API", "entrypoint"])
        for labels, (counts, total) in latency.items():
            cumulative, buckets = 0, []
            for bound, c in zip([*map(_bound, LATENCY_BUCKETS_US), "+Inf"], counts, strict=True):
                cumulative += c
                buckets.append((bound, cumulative))
            hist.add_metric(list(labels), buckets, total)
        yield hist
        attempts = Metric(LOAD_ATTEMPTS, "The number of times a SavedModel was attempted to load.", "unknown")
        for (model, status), n in loads.items():
            attempts.add_sample(LOAD_ATTEMPTS, {"model_name": model, "status": status}, n)
        yield attempts
        state = Metric(VERSION_STATE, "State of each model version (10 START, 20 LOADING, "
                       "30 AVAILABLE, 40 UNLOADING, 50 END).", "gauge")
        for (model, version), value in states.items():
            state.add_sample(VERSION_STATE, {"model_name": model, "version": version}, value)
        yield state


def _bound(value: float) -> str:
    return f"{value:g}"
