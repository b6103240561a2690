"""Transform: the user's preprocessing_fn, analyzed over the training split and exported as a graph."""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

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
        train = ex.read_split(examples.uri, "train")
        features = [c for c in train.schema.names if c != label]
        dtypes = {c: _user.dtype_of(t) for c, t in zip(train.schema.names, train.schema.types, strict=True)}
        ctx.progress(f"analyzing {train.num_rows} training rows")
        with tft.analyzing() as trace:
            try:
                analyzed = fn({k: tf.constant(v) for k, v in _user.arrays(train, features, dtypes).items()})
            except PipelineError:
                raise
            except Exception as e:
                raise PipelineError(f"preprocessing_fn failed on the training split: {type(e).__name__}: {e}") \
                    from None
        if not isinstance(analyzed, dict) or not analyzed:
            raise PipelineError("preprocessing_fn must return a dict of feature tensors")
        if label and label in analyzed:
            raise PipelineError(f"preprocessing_fn returned the label '{label}': it is carried through as it is")
        specs = [tf.TensorSpec([None], tf.string if dtypes[c] == "string" else getattr(tf, dtypes[c]), name=c)
                 for c in features]

        def transform_fn(*args: Any) -> dict[str, Any]:
            with tft.applying(trace.values, trace.names):
                return dict(fn(dict(zip(features, args, strict=True))))
        module = tf.Module()
        module.transform = tf.function(transform_fn, input_signature=specs)
        concrete = module.transform.get_concrete_function()
        graph = ctx.output("transform_graph", raw_features={c: dtypes[c] for c in features}, label=label,
                           outputs=sorted(analyzed), analyzers=[{"analyzer": n, "value": v}
                                                                for n, v in zip(trace.names, trace.values,
                                                                                strict=True)])
        tf.saved_model.save(module, os.path.join(graph.uri, GRAPH_DIR), signatures={"transform": concrete})
        out = ctx.output("transformed_examples", splits=examples.properties["splits"],
                         span=examples.properties.get("span"), fingerprint=examples.properties.get("fingerprint"),
                         format="parquet", label=label)
        for split in examples.properties["splits"]:
            table = ex.read_split(examples.uri, split)
            result = concrete(*[tf.constant(v) for v in _user.arrays(table, features, dtypes).values()])
            columns = {k: pa.array(np.asarray(v).reshape(len(table), -1)[:, 0] if np.asarray(v).ndim > 1 and
                                   np.asarray(v).shape[1] == 1 else np.asarray(v)) for k, v in sorted(result.items())}
            if label:
                columns[label] = table.column(label)
            folder = os.path.join(out.uri, f"Split-{split}")
            os.makedirs(folder)
            pq.write_table(pa.table(columns), os.path.join(folder, "data.parquet"))


def load(artifact: Artifact) -> Any:
    import tensorflow as tf

    return tf.saved_model.load(os.path.join(storage.localize(artifact.uri), GRAPH_DIR))
