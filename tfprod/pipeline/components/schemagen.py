"""SchemaGen: a schema inferred from the training statistics, or a pinned one a person edited."""

from __future__ import annotations

import os
from typing import Any

from google.protobuf import text_format
from tensorflow_metadata.proto.v0 import schema_pb2

from tfprod.pipeline import storage, validate
from tfprod.pipeline.components import statisticsgen
from tfprod.pipeline.dsl import Component, PipelineError, RunContext
from tfprod.pipeline.store import Artifact

SCHEMA_FILE = "schema.pbtxt"


class SchemaGen(Component):
    """`SchemaGen(statistics=..., schema_file=None, drift_threshold=None, skew_threshold=None)`.

    Without `schema_file` the schema is inferred from the train split (types, presence, string
    domains; drift and skew comparators on every feature when thresholds are given) and written as
    text: copy `schema.pbtxt` next to the pipeline, edit it, and pass it as `schema_file` to pin it.
    """

    INPUTS = ("statistics",)
    OPTIONAL = ("statistics",)
    OUTPUTS = {"schema": "Schema"}

    def __init__(self, *, statistics: Any = None, schema_file: str | None = None, drift_threshold: float | None = None,
                 skew_threshold: float | None = None, **kw: Any) -> None:
        if statistics is None and schema_file is None:
            raise TypeError("SchemaGen needs statistics= (to infer a schema) or schema_file= (a pinned one)")
        super().__init__(statistics=statistics, schema_file=schema_file, drift_threshold=drift_threshold,
                         skew_threshold=skew_threshold, **kw)

    def code_files(self) -> list[str]:
        return [self.params["schema_file"]] if self.params["schema_file"] else []

    def run(self, ctx: RunContext) -> None:
        p = self.params
        if p["schema_file"]:
            try:
                with open(p["schema_file"]) as f:
                    schema = text_format.Parse(f.read(), schema_pb2.Schema())
            except (OSError, text_format.ParseError) as e:
                raise PipelineError(f"cannot read the pinned schema {p['schema_file']}: {e}") from None
            source = p["schema_file"]
        else:
            statistics = ctx.input("statistics")
            assert statistics is not None
            split = "train" if "train" in statistics.properties["splits"] else statistics.properties["splits"][0]
            schema = validate.infer_schema(statisticsgen.load(statistics, split), p["drift_threshold"],
                                           p["skew_threshold"])
            source = f"inferred from the {split} split"
        out = ctx.output("schema", source=source, features=[f.name for f in schema.feature])
        with open(os.path.join(out.uri, SCHEMA_FILE), "w") as f:
            f.write(text_format.MessageToString(schema))


def load(artifact: Artifact) -> schema_pb2.Schema:
    with open(os.path.join(storage.localize(artifact.uri), SCHEMA_FILE)) as f:
        return text_format.Parse(f.read(), schema_pb2.Schema())
