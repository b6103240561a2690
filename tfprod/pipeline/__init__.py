"""Pipelines that feed the server: components declared in a Python file, run in-process, with a
metadata and lineage store. `tfprod pipeline run pipeline.py`."""

from tfprod.pipeline.components.examplegen import ExampleGen
from tfprod.pipeline.components.examplevalidator import ExampleValidator
from tfprod.pipeline.components.schemagen import SchemaGen
from tfprod.pipeline.components.statisticsgen import StatisticsGen
from tfprod.pipeline.dsl import Component, Pipeline, PipelineError, RunContext

__all__ = ["Component", "ExampleGen", "ExampleValidator", "Pipeline", "PipelineError", "RunContext", "SchemaGen",
           "StatisticsGen"]
