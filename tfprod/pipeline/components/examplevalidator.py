"""ExampleValidator: anomalies of each split against the schema, drift against the previous span,
skew against serving data; anomalies stop the run (nothing downstream is trained or pushed)."""

from __future__ import annotations

import os
from typing import Any

from tensorflow_metadata.proto.v0 import anomalies_pb2

from tfprod.pipeline import validate
from tfprod.pipeline.components import schemagen, statisticsgen
from tfprod.pipeline.dsl import Component, RunContext
from tfprod.pipeline.store import Artifact

ANOMALIES_FILE = "SchemaDiff.pb"  # TFDV's name: a binary Anomalies proto


class ExampleValidator(Component):
    """`ExampleValidator(statistics=..., schema=..., serving_statistics=None, stop_on_anomalies=True)`.

    Every split is checked against the schema. Drift (the schema's drift comparators) compares the
    train split with the train split of the latest earlier span that passed validation; skew (skew
    comparators) compares it with `serving_statistics`."""

    INPUTS = ("statistics", "schema", "serving_statistics")
    OPTIONAL = ("serving_statistics",)
    OUTPUTS = {"anomalies": "ExampleAnomalies"}

    def __init__(self, *, stop_on_anomalies: bool = True, **kw: Any) -> None:
        super().__init__(stop_on_anomalies=stop_on_anomalies, **kw)

    def run(self, ctx: RunContext) -> None:
        statistics, schema_artifact = ctx.input("statistics"), ctx.input("schema")
        assert statistics is not None and schema_artifact is not None
        schema = schemagen.load(schema_artifact)
        span = statistics.properties.get("span")
        baseline_id = ctx.cache_context.get("drift_baseline")  # the one in the step's cache key
        baseline = ctx.store.artifact(baseline_id) if baseline_id else None
        serving_artifact = ctx.input("serving_statistics")
        found: dict[str, list[str]] = {}
        measures: dict[str, dict[str, Any]] = {}
        out = ctx.output("anomalies", span=span, splits=statistics.properties["splits"], statistics_id=statistics.id,
                         drift_baseline_span=baseline.properties.get("span") if baseline else None,
                         drift_baseline_statistics_id=baseline_id)
        for split in statistics.properties["splits"]:
            ds = statisticsgen.load(statistics, split)
            # drift on the train split only: the eval split is too small for stable histograms
            previous = statisticsgen.load(baseline, split) if baseline and split == "train" and \
                split in baseline.properties["splits"] else None
            serving = None
            if serving_artifact is not None and split == "train":
                serving = statisticsgen.load(serving_artifact, serving_artifact.properties["splits"][0])
            anomalies = validate.validate(ds, schema, previous, serving)
            folder = os.path.join(out.uri, f"Split-{split}")
            os.makedirs(folder)
            with open(os.path.join(folder, ANOMALIES_FILE), "wb") as f:
                f.write(anomalies.SerializeToString())
            if anomalies.anomaly_info:
                found[split] = validate.describe(anomalies)
            kind = anomalies_pb2.DriftSkewInfo.Measurement.Type.Name
            measures[split] = {"/".join(i.path.step): {
                **{f"drift_{kind(m.type)}": m.value for m in i.drift_measurements},
                **{f"skew_{kind(m.type)}": m.value for m in i.skew_measurements}} for i in anomalies.drift_skew_info}
        out.properties.update(anomalies={k: v for k, v in found.items()}, measurements=measures,
                              blessed=not found)
        if found and self.params["stop_on_anomalies"]:
            lines = [f"{split}: {line}" for split, items in found.items() for line in items]
            ctx.stop(f"{len(lines)} anomalies in span {span}: " + "; ".join(lines[:3])
                     + (f" (and {len(lines) - 3} more: see {out.uri})" if len(lines) > 3 else ""))

    def cache_context(self, store: Any, pipeline_context: int, inputs: dict[str, list[Artifact]]) -> dict[str, Any]:
        span = inputs["statistics"][0].properties.get("span") if inputs.get("statistics") else None
        baseline = _baseline(store, pipeline_context, span)
        return {"drift_baseline": baseline.id if baseline else None}


def _baseline(store: Any, pipeline_context: int, span: int | None) -> Artifact | None:
    """The statistics of the largest earlier span that passed validation (a drifted span that was
    stopped never becomes the reference)."""
    if span is None:
        return None
    candidates = [a for a in store.artifacts("ExampleAnomalies", pipeline_context, {"blessed": True})
                  if a.properties.get("span") is not None and a.properties["span"] < span
                  and a.properties.get("statistics_id")]
    if not candidates:
        return None
    best = max(candidates, key=lambda a: (a.properties["span"], a.id))  # the largest earlier span, its latest check
    return store.artifact(best.properties["statistics_id"])  # type: ignore[no-any-return]
