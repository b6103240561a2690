"""Transform: the user's preprocessing_fn, analyzed over the training split and exported as a graph."""

from __future__ import annotations

import dataclasses
import functools
import os
import tempfile
from typing import Any

import numpy as np
import pyarrow as pa

from tfprod.pipeline import examples as ex
from tfprod.pipeline import storage
from tfprod.pipeline import transform as tft
from tfprod.pipeline.components import _user
from tfprod.pipeline.dsl import Component, PipelineError, RunContext
from tfprod.pipeline.store import Artifact

GRAPH_DIR = "transform_fn"  # a SavedModel with the `transform` signature: raw features -> features


class Transform(Component):
    """`Transform(examples=..., module_file="preprocessing.py", label="label")`: `preprocessing_fn(inputs)`
    maps raw feature tensors (the label left out) to transformed ones, with `tfprod.pipeline.transform`
    analyzers; the label is carried into the transformed examples unchanged."""

    INPUTS = ("examples",)
    OUTPUTS = {"transform_graph": "TransformGraph", "transformed_examples": "Examples"}

    def __init__(self, *, examples: Any, module_file: str, label: str = "", **kw: Any) -> None:
        super().__init__(examples=examples, module_file=module_file, label=label, **kw)

    def code_files(self) -> list[str]:
        return [self.params["module_file"]]

    def run(self, ctx: RunContext) -> None:
        import tensorflow as tf

        examples = ctx.input("examples")
        assert examples is not None
        label = self.params["label"]
        fn = _user.function(self.params["module_file"], "preprocessing_fn")
        units = ex.units(examples.uri, "train")
        schema = ex.read_unit(units[0]).schema
        features = [c for c in schema.names if c != label]
        dtypes = {c: _user.dtype_of(t) for c, t in zip(schema.names, schema.types, strict=True)}
        ctx.progress(f"analyzing {examples.properties.get('rows', {}).get('train', '?')} training rows in "
                     f"{len(units)} piece(s)")
        names, values = tft.analyze(self.params["module_file"], units, features, dtypes, ctx.map)
        specs = _user.specs(features, dtypes)

        def transform_fn(*args: Any) -> dict[str, Any]:
            with tft.applying(values, names):
                out = fn(dict(zip(features, args, strict=True)))
            if not isinstance(out, dict) or not out:
                raise PipelineError("preprocessing_fn must return a dict of feature tensors")
            if label and label in out:
                raise PipelineError(f"preprocessing_fn returned the label '{label}': it is carried through as it is")
            return dict(out)
        module = tf.Module()
        module.transform = tf.function(transform_fn, input_signature=specs)
        try:
            concrete = module.transform.get_concrete_function()
        except PipelineError:
            raise
        except Exception as e:  # the user's code, traced: any error is theirs to see
            raise PipelineError(f"preprocessing_fn failed when traced: {type(e).__name__}: {e}") from None
        analyzed = concrete.structured_outputs
        # shared: the run's workers load the graph and write the transformed examples' parts
        graph = ctx.output("transform_graph", shared=True, raw_features={c: dtypes[c] for c in features}, label=label,
                           outputs=sorted(analyzed), analyzers=[{"analyzer": n, "value": v}
                                                                for n, v in zip(names, values, strict=True)])
        if storage.remote(graph.uri):  # TensorFlow writes SavedModels to local files
            with tempfile.TemporaryDirectory() as local:
                tf.saved_model.save(module, os.path.join(local, GRAPH_DIR), signatures={"transform": concrete})
                storage.upload(local, graph.uri)
        else:
            tf.saved_model.save(module, os.path.join(graph.uri, GRAPH_DIR), signatures={"transform": concrete})
        out = ctx.output("transformed_examples", shared=True, splits=examples.properties["splits"],
                         span=examples.properties.get("span"), fingerprint=examples.properties.get("fingerprint"),
                         format="parquet", label=label)
        for split in examples.properties["splits"]:
            ctx.progress(f"transforming {split}")
            units = ex.units(examples.uri, split)
            ctx.map(apply_unit, [ApplyJob(graph.uri, unit, features, dtypes, label, out.uri, split, i, len(units))
                                 for i, unit in enumerate(units)])


@dataclasses.dataclass(frozen=True)
class ApplyJob:
    """One piece of a split through the transform graph at `graph`, written as part `index` of `count`."""

    graph: str
    unit: ex.Unit
    features: list[str]
    dtypes: dict[str, str]
    label: str
    out: str
    split: str
    index: int
    count: int


def _graph(uri: str) -> Any:
    # a local staging path can hold another graph later (a root whose store was replaced): its time is in the key
    stamp = 0 if storage.remote(uri) else os.stat(os.path.join(uri, GRAPH_DIR, "saved_model.pb")).st_mtime_ns
    return _load_graph(uri, stamp)


@functools.lru_cache(maxsize=4)
def _load_graph(uri: str, stamp: int) -> Any:
    import tensorflow as tf

    return tf.saved_model.load(os.path.join(storage.localize(uri), GRAPH_DIR)).signatures["transform"]


def apply_unit(job: ApplyJob) -> int:
    """The transformed features of one piece of a split (the label carried as it is); its rows."""
    import tensorflow as tf

    table = ex.read_unit(job.unit)
    result = _graph(job.graph)(**{k: tf.constant(v) for k, v in _user.arrays(table, job.features, job.dtypes).items()})
    columns = {}
    for k, v in sorted(result.items()):
        a = np.asarray(v)
        columns[k] = pa.array(a.reshape(len(table), -1)[:, 0] if a.ndim > 1 and a.shape[1] == 1 else a)
    if job.label:
        columns[job.label] = table.column(job.label)
    ex.write_split(job.out, job.split, pa.table(columns), "parquet", f"data-{job.index:05d}-of-{job.count:05d}")
    return table.num_rows


def load(artifact: Artifact) -> Any:
    import tensorflow as tf

    return tf.saved_model.load(os.path.join(storage.localize(artifact.uri), GRAPH_DIR))
