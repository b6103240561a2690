"""Trainer: the user's run_fn trains a Keras model on the transformed features; the model is
exported behind the Transform graph (raw features in, so serving applies the training
transformation) through `tfprod.export.save`, with its audit metadata filled in."""

from __future__ import annotations

import dataclasses
import os
import subprocess
from typing import Any

import numpy as np

from tfprod.pipeline import examples as ex
from tfprod.pipeline import storage
from tfprod.pipeline.components import _user, transformc
from tfprod.pipeline.dsl import Component, PipelineError, RunContext
from tfprod.pipeline.store import Artifact

SAVED_MODEL = "1"  # the exported version inside the model artifact


@dataclasses.dataclass
class TrainerArgs:
    """What run_fn gets: transformed features by name, labels, and the hyper-parameters."""

    train: dict[str, np.ndarray]
    train_labels: np.ndarray
    eval: dict[str, np.ndarray]
    eval_labels: np.ndarray
    hyperparameters: dict[str, Any]
    working_dir: str


class Trainer(Component):
    """`Trainer(examples=transform.outputs["transformed_examples"], transform_graph=transform.outputs[
    "transform_graph"], module_file="model.py", hyperparameters={...}, metadata={"owner": ...})`.
    `run_fn(args: TrainerArgs)` returns a trained Keras model taking a dict of transformed features."""

    INPUTS = ("examples", "transform_graph")
    OUTPUTS = {"model": "Model"}

    def __init__(self, *, module_file: str, hyperparameters: dict[str, Any] | None = None,
                 metadata: dict[str, Any] | None = None, **kw: Any) -> None:
        super().__init__(module_file=module_file, hyperparameters=hyperparameters or {}, metadata=metadata or {},
                         **kw)

    def code_files(self) -> list[str]:
        return [self.params["module_file"]]

    def run(self, ctx: RunContext) -> None:
        import tensorflow as tf

        from tfprod import export

        examples, graph = ctx.input("examples"), ctx.input("transform_graph")
        assert examples is not None and graph is not None
        label = graph.properties["label"]
        if not label:
            raise PipelineError("Trainer needs the label: give Transform(label=...)")
        features = graph.properties["outputs"]
        split_eval = "eval" if "eval" in examples.properties["splits"] else "train"
        data = {}
        for split in ("train", split_eval):
            table = ex.read_split(examples.uri, split)
            columns = {c: np.asarray(table.column(c).to_numpy(zero_copy_only=False)) for c in features}
            data[split] = (columns, np.asarray(table.column(label).to_numpy(zero_copy_only=False)))
        run_fn = _user.function(self.params["module_file"], "run_fn")
        args = TrainerArgs(data["train"][0], data["train"][1], data[split_eval][0], data[split_eval][1],
                           dict(self.params["hyperparameters"]), ctx.staging)
        ctx.progress(f"run_fn on {len(args.train_labels)} rows")
        try:
            model = run_fn(args)
        except Exception as e:
            raise PipelineError(f"run_fn failed: {type(e).__name__}: {e}") from None
        if not isinstance(model, tf.keras.Model):
            raise PipelineError(f"run_fn must return a tf.keras.Model, got {type(model).__name__}")
        inputs = [t.name for t in model.inputs] if getattr(model, "inputs", None) else features
        metrics = {}
        if model.optimizer is not None and getattr(model, "compiled", True):
            found = model.evaluate({k: args.eval[k] for k in inputs if k in args.eval}, args.eval_labels, verbose=0,
                                   return_dict=True)
            metrics = {f"eval_{k}": float(v) for k, v in found.items()}
        transform = transformc.load(graph)
        raw = graph.properties["raw_features"]
        names = list(raw)
        apply = transform.signatures["transform"]

        def serve(*values: Any) -> dict[str, Any]:
            transformed = apply(**dict(zip(names, values, strict=True)))
            y = model({k: transformed[k] for k in inputs if k in transformed})
            return dict(y) if isinstance(y, dict) else {"outputs": y}
        specs = _user.specs(names, raw)
        audit = {
            **self.params["metadata"],
            "training_data_sha256": examples.properties.get("fingerprint"),
            "training_params": dict(self.params["hyperparameters"]),
            "metrics": {**(self.params["metadata"].get("metrics") or {}), **metrics},  # measured wins
            "source_revision": self.params["metadata"].get("source_revision") or _revision(self.params["module_file"]),
            "pipeline": {"name": ctx.pipeline_name, "run_id": ctx.run_id, "metadata_url": ctx.store.public_url,
                         "span": examples.properties.get("span"), "examples_artifact": examples.id,
                         "transform_artifact": graph.id, "module_file": os.path.abspath(self.params["module_file"]),
                         "code_version": self.code_version()},
        }
        if audit["training_data_sha256"] is None:
            del audit["training_data_sha256"]
        out = ctx.output("model", label=label, raw_features=raw, metrics=metrics, saved_model=SAVED_MODEL,
                         span=examples.properties.get("span"))
        # Keras's export (ExportArchive) keeps the model's variables restorable the way a Session
        # loads them, as TF Serving and tfprod serve do; the transform graph holds constants only
        export.save(model, out.uri, version=int(SAVED_MODEL), signatures={"serving_default": (serve, specs)},
                    metadata=audit)


def _revision(module_file: str) -> str:
    """The git commit of the module file's checkout, else the file's sha256."""
    try:
        done = subprocess.run(["git", "-C", os.path.dirname(os.path.abspath(module_file)), "rev-parse", "HEAD"],
                              capture_output=True, text=True, timeout=10)
        if done.returncode == 0 and done.stdout.strip():
            return done.stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        pass
    import hashlib

    with open(module_file, "rb") as f:
        return "sha256:" + hashlib.sha256(f.read()).hexdigest()


def saved_model_dir(model: Artifact) -> str:
    return os.path.join(storage.localize(model.uri), model.properties.get("saved_model", SAVED_MODEL))
