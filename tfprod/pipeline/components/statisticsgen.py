"""StatisticsGen: TFDV's statistics per split, as `Split-<name>/FeatureStats.pb`."""

from __future__ import annotations

import os

from tfprod.pipeline import examples as ex
from tfprod.pipeline import stats, storage
from tfprod.pipeline.dsl import Component, RunContext
from tfprod.pipeline.store import Artifact

STATS_FILE = "FeatureStats.pb"  # TFDV's name: a binary DatasetFeatureStatisticsList


class StatisticsGen(Component):
    INPUTS = ("examples",)
    OUTPUTS = {"statistics": "ExampleStatistics"}

    def run(self, ctx: RunContext) -> None:
        examples = ctx.input("examples")
        assert examples is not None
        out = ctx.output("statistics", span=examples.properties.get("span"), splits=examples.properties["splits"],
                         fingerprint=examples.properties.get("fingerprint"))
        for split in examples.properties["splits"]:
            ctx.progress(f"statistics of {split}")
            ds = stats.compute_units(ex.units(examples.uri, split), split, ctx.map)
            folder = os.path.join(out.uri, f"Split-{split}")
            os.makedirs(folder)
            with open(os.path.join(folder, STATS_FILE), "wb") as f:
                f.write(stats.statistics_list([ds]).SerializeToString())


def load(artifact: Artifact, split: str):  # type: ignore[no-untyped-def]
    """The DatasetFeatureStatistics of `split` in a statistics artifact."""
    from tensorflow_metadata.proto.v0 import statistics_pb2

    with open(os.path.join(storage.localize(artifact.uri), f"Split-{split}", STATS_FILE), "rb") as f:
        return statistics_pb2.DatasetFeatureStatisticsList.FromString(f.read()).datasets[0]
