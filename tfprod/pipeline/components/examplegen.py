"""ExampleGen: input files (CSV, Parquet, TFRecord of tf.Examples) to train/eval splits."""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import pyarrow as pa

from tfprod.pipeline import examples as ex
from tfprod.pipeline.dsl import Component, PipelineError, RunContext


class ExampleGen(Component):
    """`ExampleGen(input_base="data", pattern="span-{SPAN}.csv", splits={"train": 8, "eval": 2},
    split_key="", span=None, output_format="parquet")`. The latest span unless `span` names one;
    the data fingerprint (sha256 of the span's files) and the span go into the artifact's
    properties, and through them into the audit metadata of the model trained on it."""

    OUTPUTS = {"examples": "Examples"}

    def __init__(self, *, input_base: str, pattern: str = "*.csv", splits: dict[str, int] | None = None,
                 split_key: str = "", span: int | None = None, output_format: str = "parquet", **kw: Any) -> None:
        if output_format not in ex.FORMATS:
            raise ValueError(f"output_format must be one of {ex.FORMATS}")
        super().__init__(input_base=input_base, pattern=pattern, splits=splits or {"train": 8, "eval": 2},
                         split_key=split_key, span=span, output_format=output_format, **kw)

    def _files(self) -> tuple[int, list[str]]:
        p = self.params
        found = ex.spans(p["input_base"], p["pattern"])
        if not found:
            raise PipelineError(f"no input files match {p['pattern']!r} under {p['input_base']}")
        span = p["span"] if p["span"] is not None else max(found)
        if span not in found:
            raise PipelineError(f"span {span} not found under {p['input_base']} (spans: {sorted(found)})")
        return span, found[span]

    def describe_params(self) -> dict[str, Any]:
        # the input files' content is part of the cache key: new data in the same span re-runs the step.
        # Resolved once per step: the step then reads the span its cache key names, even if a newer one lands.
        span, files = self._files()
        prefix = os.path.join(self.params["input_base"], "")  # relative names: the data folder may move
        return {**super().describe_params(), "resolved_span": span, "fingerprint": ex.fingerprint(files),
                "files": [f[len(prefix):] for f in files]}

    def run(self, ctx: RunContext) -> None:
        p = self.params
        span, digest = ctx.params["resolved_span"], ctx.params["fingerprint"]
        files = [os.path.join(p["input_base"], f) for f in ctx.params["files"]]
        ctx.progress(f"reading span {span}: {len(files)} file(s)")
        out = ctx.output("examples", shared=True)  # the workers write the parts
        jobs = [ex.SplitJob(ex.absolute(f), i, len(files), ex.absolute(out.uri), p["splits"], p["split_key"],
                            p["output_format"]) for i, f in enumerate(files)]
        parts = ctx.map(ex.split_file, jobs)
        columns = parts[0]["columns"]
        for f, part in zip(files, parts, strict=True):
            if part["columns"] != columns:
                raise PipelineError(f"the input files have different columns: {files[0]} has {columns}, {f} has "
                                    f"{part['columns']}")
        try:  # one file's int column and another's floats (or its all-empty column): one type, as one read would
            schema = pa.unify_schemas([part["schema"] for part in parts], promote_options="permissive")
        except (pa.ArrowInvalid, pa.ArrowTypeError) as e:
            raise PipelineError(f"the input files have different column types: {e}") from None
        recast = [dataclasses.replace(job, schema=schema) for job, part in zip(jobs, parts, strict=True)
                  if part["schema"] != schema]
        if recast:
            ctx.progress(f"{len(recast)} file(s) cast to the span's column types")
            ctx.map(ex.split_file, recast)
        rows = {k: sum(part["rows"][k] for part in parts) for k in p["splits"]}
        if not sum(rows.values()):
            raise PipelineError(f"span {span} has no rows ({', '.join(files)})")
        ctx.output("examples", span=span, fingerprint=digest, files=files,
                   splits=list(p["splits"]), format=p["output_format"], columns=columns, rows=rows)
