"""Evaluator: the candidate's metrics overall and per slice, against value thresholds and against
the latest blessed model (the baseline); blessing is explicit."""

from __future__ import annotations

import functools
import json
import math
import os
from typing import Any

import numpy as np

from tfprod.pipeline import examples as ex
from tfprod.pipeline import storage
from tfprod.pipeline.components import _user, trainer
from tfprod.pipeline.dsl import Component, PipelineError, RunContext
from tfprod.pipeline.store import Artifact

EVALUATION_FILE = "evaluation.json"
TASKS = ("binary", "multiclass", "regression")
METRICS = {"binary": ("accuracy", "auc", "log_loss", "examples"), "multiclass": ("accuracy", "examples"),
           "regression": ("mse", "mae", "examples")}


class Evaluator(Component):
    """`Evaluator(examples=..., model=..., task="binary", slice_by=["region"],
    thresholds={"auc": {"lower": 0.9}}, change_thresholds={"auc": {"max_decrease": 0.01}})`.

    `examples` are the raw examples (their eval split goes through the serving signature, as
    clients' requests would). A model is blessed when every value threshold holds overall and, if
    the pipeline has pushed a model before (the baseline), every change threshold holds against it
    on the same rows. With no baseline yet, change thresholds are not applied (and the evaluation
    says so)."""

    INPUTS = ("examples", "model")
    OUTPUTS = {"evaluation": "ModelEvaluation", "blessing": "ModelBlessing"}

    def __init__(self, *, task: str = "binary", slice_by: list[str] | None = None,
                 thresholds: dict[str, dict[str, float]] | None = None,
                 change_thresholds: dict[str, dict[str, float]] | None = None, **kw: Any) -> None:
        if task not in TASKS:
            raise TypeError(f"Evaluator task must be one of {TASKS}")
        if not thresholds and not change_thresholds:
            raise TypeError("Evaluator needs thresholds= and/or change_thresholds=: blessing is explicit, a model "
                            f"is never blessed or refused silently (metrics for {task}: {METRICS[task]})")
        for name in [*(thresholds or {}), *(change_thresholds or {})]:
            if name not in METRICS[task]:
                raise TypeError(f"Evaluator: no metric {name!r} for task {task} (have {METRICS[task]})")
        super().__init__(task=task, slice_by=slice_by or [], thresholds=thresholds or {},
                         change_thresholds=change_thresholds or {}, **kw)

    def run(self, ctx: RunContext) -> None:
        examples, model = ctx.input("examples"), ctx.input("model")
        assert examples is not None and model is not None
        split = "eval" if "eval" in examples.properties["splits"] else "train"
        table = ex.read_split(examples.uri, split)
        label = model.properties["label"]
        y = np.asarray(table.column(label).to_numpy(zero_copy_only=False))
        slices = {c: np.asarray(table.column(c).cast("string").fill_null("").to_pylist(), object)
                  for c in self.params["slice_by"]}
        units = ex.units(examples.uri, split)  # scored piece by piece, by the run's workers, in the table's order
        candidate = self._metrics(_scores(ctx, model, units), y, slices)
        baseline_id = ctx.cache_context.get("baseline")  # the one in the step's cache key
        baseline_model = ctx.store.artifact(baseline_id) if baseline_id else None
        baseline = self._metrics(_scores(ctx, baseline_model, units), y, slices) if baseline_model else None
        reasons = []
        for name, bound in self.params["thresholds"].items():
            value = candidate["overall"][name]
            if math.isnan(value):
                reasons.append(f"{name} is undefined on the evaluation rows (one class only?)")
                continue
            if "lower" in bound and not value >= bound["lower"]:
                reasons.append(f"{name} {value:.4f} is below the threshold {bound['lower']}")
            if "upper" in bound and not value <= bound["upper"]:
                reasons.append(f"{name} {value:.4f} is above the threshold {bound['upper']}")
        if baseline is not None:
            for name, bound in self.params["change_thresholds"].items():
                change = candidate["overall"][name] - baseline["overall"][name]
                if math.isnan(change):
                    reasons.append(f"{name} cannot be compared with the baseline (undefined on these rows)")
                    continue
                if "max_decrease" in bound and change < -bound["max_decrease"]:
                    reasons.append(f"{name} fell by {-change:.4f} against the baseline (limit {bound['max_decrease']})")
                if "max_increase" in bound and change > bound["max_increase"]:
                    reasons.append(f"{name} rose by {change:.4f} against the baseline (limit {bound['max_increase']})")
        blessed = not reasons
        doc = {"split": split, "candidate": candidate, "baseline": baseline,
               "baseline_model": baseline_model.id if baseline_model else None,
               "thresholds": self.params["thresholds"], "change_thresholds": self.params["change_thresholds"],
               "change_thresholds_applied": baseline is not None, "blessed": blessed, "reasons": reasons}
        evaluation = ctx.output("evaluation", overall=candidate["overall"], blessed=blessed,
                                baseline_model=doc["baseline_model"])
        with open(os.path.join(evaluation.uri, EVALUATION_FILE), "w") as f:
            json.dump(doc, f, indent=1, default=float)
        blessing = ctx.output("blessing", blessed=blessed, model_id=model.id, reasons=reasons,
                              baseline_model=doc["baseline_model"], metrics=candidate["overall"])
        with open(os.path.join(blessing.uri, "BLESSED" if blessed else "NOT_BLESSED"), "w") as f:
            f.write("\n".join(reasons) + "\n")
        if not blessed:
            ctx.stop("model not blessed: " + "; ".join(reasons))

    def _metrics(self, scores: np.ndarray, y: np.ndarray, slices: dict[str, np.ndarray]) -> dict[str, Any]:
        out: dict[str, Any] = {"overall": metrics(self.params["task"], scores, y), "slices": {}}
        for column, values in slices.items():
            for value in sorted(set(values)):
                mask = values == value
                out["slices"][f"{column}={value}"] = metrics(self.params["task"], scores[mask], y[mask])
        return out

    def cache_context(self, store: Any, pipeline_context: int, inputs: dict[str, list[Artifact]]) -> dict[str, Any]:
        model = inputs["model"][0] if inputs.get("model") else None
        baseline = _baseline(store, pipeline_context, model.id if model else None)
        return {"baseline": baseline.id if baseline else None}


def load(artifact: Artifact) -> dict[str, Any] | None:
    """The evaluation.json of a ModelEvaluation artifact (None when it has none)."""
    path = os.path.join(storage.localize(artifact.uri), EVALUATION_FILE)
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        return dict(json.load(f))


def _baseline(store: Any, pipeline_context: int, model_id: int | None) -> Artifact | None:
    """The model of this pipeline's latest push: blessed, validated and serving (a model blessed
    but stopped later, by infra validation, never becomes the baseline)."""
    for pushed in store.artifacts("PushedModel", pipeline_context):
        if pushed.properties.get("model_id") not in (None, model_id):
            return store.artifact(pushed.properties["model_id"])  # type: ignore[no-any-return]
    return None


def _scores(ctx: RunContext, model: Artifact, units: list[ex.Unit]) -> np.ndarray:
    ctx.progress(f"scoring model {model.id} on {len(units)} piece(s)")
    return np.concatenate(ctx.map(score_unit, [(model, unit) for unit in units]))


def score_unit(job: tuple[Artifact, ex.Unit]) -> np.ndarray:
    model, unit = job
    return predict(model, ex.read_unit(unit))


@functools.lru_cache(maxsize=4)
def _signature(saved_model_dir: str, stamp: int) -> Any:
    import tensorflow as tf

    return tf.saved_model.load(saved_model_dir).signatures["serving_default"]


def predict(model: Artifact, table: Any) -> np.ndarray:
    """The serving signature's first output on the table's raw features."""
    import tensorflow as tf

    folder = trainer.saved_model_dir(model)  # published, or downloaded once: its time tells versions apart
    fn = _signature(folder, os.stat(os.path.join(folder, "saved_model.pb")).st_mtime_ns)
    raw = model.properties["raw_features"]
    columns = _user.arrays(table, list(raw), raw)
    try:
        out = fn(**{k: tf.constant(v) for k, v in columns.items()})
    except (tf.errors.OpError, ValueError, TypeError) as e:
        raise PipelineError(f"the model cannot score the examples: {str(e)[:300]}") from None
    return np.asarray(out[sorted(out)[0]])


def metrics(task: str, scores: np.ndarray, y: np.ndarray) -> dict[str, float]:
    n = len(y)
    if n == 0:
        return {"examples": 0.0}
    if task == "regression":
        pred = scores.reshape(n, -1)[:, 0]
        return {"mse": float(((pred - y) ** 2).mean()), "mae": float(np.abs(pred - y).mean()), "examples": float(n)}
    if task == "multiclass":
        return {"accuracy": float((scores.reshape(n, -1).argmax(-1) == y).mean()), "examples": float(n)}
    p = scores.reshape(n, -1)[:, -1].astype(np.float64)
    from sklearn.metrics import roc_auc_score

    auc = float(roc_auc_score(y, p)) if len(set(y.tolist())) == 2 else math.nan
    clipped = np.clip(p, 1e-7, 1 - 1e-7)
    return {"accuracy": float(((p >= 0.5) == (y == 1)).mean()), "auc": auc,
            "log_loss": float(-(y * np.log(clipped) + (1 - y) * np.log(1 - clipped)).mean()), "examples": float(n)}
