"""Pipelines that feed the server: components declared in a Python file, run in-process, with a
metadata and lineage store. `tfprod pipeline run pipeline.py`."""

from tfprod.pipeline.components.evaluator import Evaluator
from tfprod.pipeline.components.examplegen import ExampleGen
from tfprod.pipeline.components.examplevalidator import ExampleValidator
from tfprod.pipeline.components.infravalidator import InfraValidator
from tfprod.pipeline.components.pusher import Pusher
from tfprod.pipeline.components.schemagen import SchemaGen
from tfprod.pipeline.components.statisticsgen import StatisticsGen
from tfprod.pipeline.components.trainer import Trainer, TrainerArgs
from tfprod.pipeline.components.transformc import Transform
from tfprod.pipeline.dsl import Component, Pipeline, PipelineError, RunContext

__all__ = ["Component", "Evaluator", "ExampleGen", "ExampleValidator", "InfraValidator", "Pipeline", "PipelineError",
           "Pusher", "RunContext", "SchemaGen", "StatisticsGen", "Trainer", "TrainerArgs", "Transform"]
