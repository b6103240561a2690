"""The credit pipeline: `tfprod pipeline run examples/credit/pipeline.py --set span=1`.

Arguments (all strings, from --set): span (default: the latest), data (the spans' folder),
root (artifacts and the metadata store; a local folder or s3://bucket/prefix), metadata (the
store's database URL; default: sqlite in the root, required for an s3:// root), serving (the base
path a tfprod serve watches), min_auc (the value threshold)."""

import os

from tfprod.pipeline import (
    Evaluator,
    ExampleGen,
    ExampleValidator,
    InfraValidator,
    Pipeline,
    Pusher,
    SchemaGen,
    StatisticsGen,
    Trainer,
    Transform,
)

HERE = os.path.dirname(os.path.abspath(__file__))


def create_pipeline(span="", data="credit-data", root="credit-pipeline", serving="models/credit", min_auc="0.95",
                    metadata=""):
    examples = ExampleGen(input_base=data, pattern="span-{SPAN}.csv", span=int(span) if span else None)
    statistics = StatisticsGen(examples=examples.outputs["examples"])
    schema = SchemaGen(statistics=statistics.outputs["statistics"], drift_threshold=0.25)
    validator = ExampleValidator(statistics=statistics.outputs["statistics"], schema=schema.outputs["schema"])
    transform = Transform(examples=examples.outputs["examples"], module_file=os.path.join(HERE, "preprocessing.py"),
                          label="label")
    trainer = Trainer(examples=transform.outputs["transformed_examples"],
                      transform_graph=transform.outputs["transform_graph"], module_file=os.path.join(HERE, "model.py"),
                      hyperparameters={"epochs": 30, "units": 16, "learning_rate": 0.01},
                      metadata={"owner": "credit-risk", "approval_id": "CR-2026-114"})
    evaluator = Evaluator(examples=examples.outputs["examples"], model=trainer.outputs["model"], slice_by=["region"],
                          thresholds={"auc": {"lower": float(min_auc)}},
                          change_thresholds={"auc": {"max_decrease": 0.02}})
    infra = InfraValidator(model=trainer.outputs["model"], examples=examples.outputs["examples"])
    pusher = Pusher(model=trainer.outputs["model"], blessing=evaluator.outputs["blessing"],
                    infra_blessing=infra.outputs["infra_blessing"], push_destination=serving)
    # components run in this order (each after its inputs): a validator that stops the run stops it before training
    return Pipeline("credit", root=root, metadata_url=metadata,
                    components=[examples, statistics, schema, validator, transform, trainer, evaluator, infra, pusher])
