"""The pipeline's data half: ExampleGen, statistics (partials and merges), schema, validation, the
runner's caching and publishing (the store under concurrent runs: test_pipeline_store.py). Real files, real protos."""

from __future__ import annotations

import math
import os
import subprocess
import sys
import textwrap
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest
from tensorflow_metadata.proto.v0 import anomalies_pb2, schema_pb2, statistics_pb2

from tfprod.pipeline import (
    ExampleGen,
    ExampleValidator,
    Pipeline,
    PipelineError,
    SchemaGen,
    StatisticsGen,
    runner,
    stats,
    validate,
)
from tfprod.pipeline import examples as ex
from tfprod.pipeline.components import statisticsgen
from tfprod.pipeline.store import MetadataStore

AI = anomalies_pb2.AnomalyInfo


def _table(rows: int = 500, seed: int = 0) -> pa.Table:
    rng = np.random.default_rng(seed)
    x = rng.normal(3.0, 2.0, rows)
    x[::17] = np.nan
    mask = np.zeros(rows, bool)
    mask[::11] = True
    return pa.table({
        "x": pa.array(x, mask=mask),
        "n": pa.array(rng.integers(-3, 4, rows)),
        "city": pa.array(rng.choice(["paris", "oslo", "rome", "lima"], rows, p=[0.4, 0.3, 0.2, 0.1])),
    })


def _feature(ds: statistics_pb2.DatasetFeatureStatistics, name: str) -> statistics_pb2.FeatureNameStatistics:
    found = stats.feature(ds, name)
    assert found is not None
    return found


def test_statistics_match_numpy_and_do_not_depend_on_the_batching() -> None:
    table = _table()
    whole, small = stats.compute(table, rows=100_000), stats.compute(table, rows=7)
    x = np.asarray(table.column("x").to_numpy(zero_copy_only=False), np.float64)
    present = x[~np.isnan(x)]  # nulls became NaN here; the table's NaNs too
    f = _feature(whole, "x").num_stats
    nulls = table.column("x").null_count
    assert f.common_stats.num_missing == nulls and f.common_stats.num_non_missing == 500 - nulls
    assert math.isclose(f.mean, present.mean(), rel_tol=1e-12) and math.isclose(f.std_dev, present.std(), rel_tol=1e-9)
    assert f.min == present.min() and f.max == present.max()
    assert abs(f.median - np.median(present)) <= (f.max - f.min) / stats.FINE_BINS * 2
    standard = next(h for h in f.histograms if h.type == statistics_pb2.Histogram.STANDARD)
    assert len(standard.buckets) == 10 and sum(b.sample_count for b in standard.buckets) == present.size
    assert standard.num_nan == np.isnan(np.asarray(table.column("x").drop_null(), np.float64)).sum()
    n = _feature(whole, "n").num_stats
    assert n.num_zeros == int((table.column("n").to_numpy() == 0).sum())
    city = _feature(whole, "city").string_stats
    values, counts = np.unique(table.column("city").to_numpy(zero_copy_only=False), return_counts=True)
    assert city.unique == 4 and city.top_values[0].value == values[counts.argmax()]
    assert [b.sample_count for b in city.rank_histogram.buckets] == sorted(counts, reverse=True)
    # batching changes nothing but float summation order
    for a, b in zip(whole.features, small.features, strict=True):
        if a.HasField("num_stats"):
            assert math.isclose(a.num_stats.mean, b.num_stats.mean, rel_tol=1e-12)
            assert math.isclose(a.num_stats.std_dev, b.num_stats.std_dev, rel_tol=1e-9)
            a.num_stats.mean = b.num_stats.mean
            a.num_stats.std_dev = b.num_stats.std_dev
        assert a == b


def test_statistics_over_parquet_row_groups_equal_the_table_in_memory(tmp_path: Any) -> None:
    """What StatisticsGen computes (pieces read from the split's files, merged in order) is what the
    same pieces give in memory, to the last bit."""
    table = _table()
    os.makedirs(tmp_path / "Split-train")
    pq.write_table(table.slice(0, 200), tmp_path / "Split-train" / "data-00000-of-00002.parquet", row_group_size=64)
    pq.write_table(table.slice(200), tmp_path / "Split-train" / "data-00001-of-00002.parquet", row_group_size=64)
    units = ex.units(str(tmp_path), "train")
    assert len(units) == 4 + 5
    from_files = stats.compute_units(units, "train", lambda fn, items: [fn(i) for i in items])
    pieces = [table.slice(0, 200).slice(i, 64) for i in range(0, 200, 64)] + [
        table.slice(200).slice(i, 64) for i in range(0, 300, 64)]
    assert from_files == stats.compute_units(pieces, "train", lambda fn, items: [fn(i) for i in items])
    assert from_files.num_examples == 500 and [f.path.step[0] for f in from_files.features] == table.schema.names


def test_pipeline_wiring_errors_are_clear(tmp_path: Any) -> None:
    examples = ExampleGen(input_base=str(tmp_path))
    statistics = StatisticsGen(examples=examples)  # a component with one output stands for it
    with pytest.raises(ValueError, match=r"component ids must differ: \['StatisticsGen'\]"):
        Pipeline("p", root=str(tmp_path), components=[examples, statistics, StatisticsGen(examples=examples)])
    with pytest.raises(ValueError, match="StatisticsGen.examples reads ExampleGen, which is not in the pipeline"):
        Pipeline("p", root=str(tmp_path), components=[statistics])
    with pytest.raises(TypeError, match="must be another component's output"):
        StatisticsGen(examples="data/")
    with pytest.raises(TypeError, match="needs the input"):
        StatisticsGen()
    with pytest.raises(ValueError, match="letters, digits"):
        Pipeline("no spaces", root=str(tmp_path), components=[])
    other = StatisticsGen(id="Other", examples=examples)
    statistics.inputs["examples"] = other.outputs["statistics"]  # a cycle, wired by hand
    other.inputs["examples"] = statistics.outputs["statistics"]
    with pytest.raises(ValueError, match="the pipeline has a cycle"):
        Pipeline("p", root=str(tmp_path), components=[statistics, other]).ordered()


def test_statistics_take_awkward_columns() -> None:
    table = pa.table({"ids": pa.array([2**62, 2**62 + 1, 5], pa.int64()), "x": pa.array([1.0, np.inf, -np.inf]),
                      "empty": pa.nulls(3)})
    ds = stats.compute(table)
    ids = _feature(ds, "ids").num_stats
    assert ids.max == float(2**62 + 1) and ids.min == 5.0
    x = _feature(ds, "x").num_stats
    assert x.mean == 1.0 and x.histograms[0].num_nan == 2  # infinities counted, not averaged
    empty = _feature(ds, "empty").string_stats.common_stats
    assert empty.num_missing == 3 and empty.num_non_missing == 0


def _hist(*buckets: tuple[float, float, float]) -> statistics_pb2.Histogram:
    h = statistics_pb2.Histogram(type=statistics_pb2.Histogram.STANDARD)
    for low, high, count in buckets:
        h.buckets.add(low_value=low, high_value=high, sample_count=count)
    return h


def test_drift_measures_follow_their_formulas_on_hand_made_histograms() -> None:
    js = validate.jensen_shannon
    assert js(_hist((0, 1, 1), (1, 2, 0)), _hist((0, 1, 0), (1, 2, 1))) == 1.0
    assert js(_hist((0, 1, 5), (1, 2, 5)), _hist((0, 1, 1), (1, 2, 1))) == 0.0
    kl = 0.75 * math.log2(0.75 / 0.5) + 0.25 * math.log2(0.25 / 0.5)
    assert math.isclose(js(_hist((0, 1, 3), (1, 2, 1)), _hist((0, 1, 1), (1, 2, 3))), kl, rel_tol=1e-12)
    # one bucket over [0, 2] against two: re-bucketed uniformly to (2, 2) against (4, 0)
    m = (0.75, 0.25)
    expected = 0.5 * (0.5 * math.log2(0.5 / m[0]) + 0.5 * math.log2(0.5 / m[1])) + 0.5 * math.log2(1 / m[0])
    assert math.isclose(js(_hist((0, 2, 4)), _hist((0, 1, 4), (1, 2, 0))), expected, rel_tol=1e-12)

    def strings(**counts: int) -> statistics_pb2.FeatureNameStatistics:
        f = statistics_pb2.FeatureNameStatistics(type=statistics_pb2.FeatureNameStatistics.STRING)
        f.string_stats.common_stats.num_non_missing = sum(counts.values())
        for label, c in counts.items():
            f.string_stats.rank_histogram.buckets.add(label=label, sample_count=c)
        return f
    assert validate.l_infinity(strings(x=3, y=1), strings(x=1, z=1)) == 0.5  # z: 0 against 1/2
    # two constant columns: zero-width buckets at different values are different distributions
    assert js(_hist((5, 5, 10)), _hist((1000, 1000, 10))) == 1.0
    assert js(_hist((5, 5, 10)), _hist((5, 5, 3))) == 0.0


def test_schema_inference_and_the_anomalies_tfdv_reports() -> None:
    train = stats.compute(_table(seed=1), "train")
    schema = validate.infer_schema(train, drift_threshold=0.05, skew_threshold=0.05)
    city = next(f for f in schema.feature if f.name == "city")
    assert city.type == schema_pb2.BYTES and city.domain == "city"
    assert sorted(schema.string_domain[0].value) == ["lima", "oslo", "paris", "rome"]
    x = next(f for f in schema.feature if f.name == "x")
    assert x.type == schema_pb2.FLOAT and x.presence.min_fraction == 0.0
    assert x.drift_comparator.jensen_shannon_divergence.threshold == 0.05
    assert city.skew_comparator.infinity_norm.threshold == 0.05
    assert not validate.validate(stats.compute(_table(seed=2)), schema).anomaly_info
    n = next(f for f in schema.feature if f.name == "n")
    n.int_domain.max = 2
    bad = _table(seed=3)
    bad = bad.drop_columns(["city"]).append_column("city", pa.array(["paris", "madrid"] * 250)) \
        .append_column("extra", pa.array([1.0] * 500))
    found = validate.validate(stats.compute(bad), schema)
    reasons = {name: {r.type for r in info.reason} for name, info in found.anomaly_info.items()}
    assert reasons == {"city": {AI.ENUM_TYPE_UNEXPECTED_STRING_VALUES}, "extra": {AI.SCHEMA_NEW_COLUMN},
                       "n": {AI.FLOAT_TYPE_BIG_FLOAT}}
    assert "madrid" in found.anomaly_info["city"].description
    missing = validate.validate(stats.compute(_table().drop_columns(["n"])), schema)
    assert {r.type for r in missing.anomaly_info["n"].reason} == {AI.SCHEMA_MISSING_COLUMN}
    shifted = _table(seed=4)
    shifted = shifted.set_column(0, "x", pa.array(np.asarray(shifted.column("x"), np.float64) + 4))
    drift = validate.validate(stats.compute(shifted), schema, previous=train)
    assert {r.type for r in drift.anomaly_info["x"].reason} == {AI.COMPARATOR_JENSEN_SHANNON_DIVERGENCE_HIGH}
    measured = next(i for i in drift.drift_skew_info if list(i.path.step) == ["x"]).drift_measurements[0]
    assert measured.value > 0.5 and measured.threshold == 0.05
    skew = validate.validate(stats.compute(_table(seed=5)), schema, serving=stats.compute(bad))
    assert AI.COMPARATOR_L_INFTY_HIGH in {r.type for r in skew.anomaly_info["city"].reason}


def _write_inputs(folder: Any, table: pa.Table) -> dict[str, str]:
    folder.mkdir(exist_ok=True)
    paths = {"csv": str(folder / "data.csv"), "parquet": str(folder / "data.parquet"),
             "tfrecord": str(folder / "data.tfrecord")}
    pacsv.write_csv(table, paths["csv"])
    pq.write_table(table, paths["parquet"])
    ex.write_tfrecord(paths["tfrecord"], table)
    return paths


def test_examplegen_reads_csv_parquet_and_tfrecord_alike_and_splits_deterministically(tmp_path: Any) -> None:
    table = pa.table({"id": pa.array(range(1000)), "v": pa.array(np.linspace(0, 1, 1000)),
                      "c": pa.array(["a", "b"] * 500)})
    paths = _write_inputs(tmp_path / "in", table)
    read = {k: ex.read_files([p]) for k, p in paths.items()}
    for k, t in read.items():
        assert t.num_rows == 1000 and t.column("id").to_pylist() == list(range(1000)), k
        assert np.allclose(np.asarray(t.column("v"), np.float64), np.linspace(0, 1, 1000), atol=1e-7), k
    parts = ex.split_rows(read["csv"], {"train": 8, "eval": 2}, key="id")
    again = ex.split_rows(read["parquet"], {"train": 8, "eval": 2}, key="id")
    assert parts["train"].column("id").to_pylist() == again["train"].column("id").to_pylist()
    assert 740 < parts["train"].num_rows < 860 and parts["train"].num_rows + parts["eval"].num_rows == 1000
    blank = tmp_path / "in" / "blank.csv"
    blank.write_text("c,v\na,1\n,2\n")
    assert ex.read_files([str(blank)]).column("c").null_count == 1  # an empty cell is missing, not ""
    bad = tmp_path / "in" / "broken.parquet"
    bad.write_bytes(b"PAR1 not really")
    with pytest.raises(PipelineError, match="cannot read .*broken.parquet"):
        ex.read_files([str(bad)])
    (tmp_path / "spans").mkdir()
    for span in (3, 12, 7):
        pacsv.write_csv(table.slice(0, span), str(tmp_path / "spans" / f"day-{span}.csv"))
    assert sorted(ex.spans(str(tmp_path / "spans"), "day-{SPAN}.csv")) == [3, 7, 12]


def _pipeline(root: Any, data: Any, span: int | None = None, drift: float | None = 0.3,
              schema_file: str | None = None, **kw: Any) -> Pipeline:
    gen = ExampleGen(input_base=str(data), pattern="span-{SPAN}.csv", span=span, **kw)
    st = StatisticsGen(examples=gen.outputs["examples"])
    sc = SchemaGen(schema_file=schema_file) if schema_file else SchemaGen(statistics=st.outputs["statistics"],
                                                                          drift_threshold=drift)
    val = ExampleValidator(statistics=st.outputs["statistics"], schema=sc.outputs["schema"])
    return Pipeline("test", root=str(root), components=[gen, st, sc, val])


def _spans(data: Any) -> None:
    data.mkdir(exist_ok=True)
    for span, seed in ((1, 1), (2, 2), (3, 3)):
        t = _table(600, seed)
        if span == 2:  # drifted
            t = t.set_column(0, "x", pa.array(np.asarray(t.column("x"), np.float64) * 3 + 5))
        pacsv.write_csv(t, str(data / f"span-{span}.csv"))


def test_runs_are_cached_drift_stops_a_run_and_the_store_records_it(tmp_path: Any) -> None:
    _spans(tmp_path / "data")
    first = runner.run(_pipeline(tmp_path / "root", tmp_path / "data", span=1))
    assert [s.state for s in first.steps] == ["COMPLETE"] * 4 and not first.stopped
    examples = first.output("ExampleGen", "examples")
    assert examples.properties["span"] == 1 and len(examples.properties["fingerprint"]) == 64
    assert set(os.listdir(examples.uri)) == {"Split-train", "Split-eval"}
    ds = statisticsgen.load(first.output("StatisticsGen", "statistics"), "train")
    assert ds.num_examples == examples.properties["rows"]["train"]
    again = runner.run(_pipeline(tmp_path / "root", tmp_path / "data", span=1))
    assert [s.state for s in again.steps] == ["CACHED"] * 4
    assert again.output("StatisticsGen", "statistics").id == first.output("StatisticsGen", "statistics").id
    schema = os.path.join(first.output("SchemaGen", "schema").uri, "schema.pbtxt")
    drifted = runner.run(_pipeline(tmp_path / "root", tmp_path / "data", span=2, schema_file=schema))
    assert drifted.stopped.startswith("ExampleValidator: 1 anomalies in span 2: train: x:")
    assert drifted.steps[-1].state == "STOPPED"
    good = runner.run(_pipeline(tmp_path / "root", tmp_path / "data", schema_file=schema))  # latest: span 3
    assert not good.stopped  # compared with span 1, the last span that passed, not the drifted span 2
    assert good.output("ExampleValidator", "anomalies").properties["drift_baseline_span"] == 1
    store = MetadataStore(f"sqlite:///{tmp_path / 'root' / 'metadata.sqlite'}")
    try:
        states = [e.state for e in store.executions()]
        assert states.count("CACHED") == 4 + 1 and states.count("COMPLETE") == 4 + 4 + 3  # the pinned schema: cached
        run = store.context("pipeline_run", good.run_id)
        assert [e.component for e in store.executions(run)] == ["ExampleGen", "StatisticsGen", "SchemaGen",
                                                                 "ExampleValidator"]
        validator = store.executions(run)[-1]
        assert set(store.inputs_of(validator.id)) == {"statistics", "schema"}
    finally:
        store.close()


def test_a_failing_step_publishes_nothing_and_stops_the_run(tmp_path: Any) -> None:
    _spans(tmp_path / "data")
    (tmp_path / "data" / "span-4.csv").write_text("x,n,city\n1.0,2,paris\n1.0,2,paris,extra,fields\n")
    with pytest.raises(PipelineError, match=r"ExampleGen failed: cannot read .*span-4.csv"):
        runner.run(_pipeline(tmp_path / "root", tmp_path / "data"))
    root = tmp_path / "root"
    assert not (root / "ExampleGen").exists() and os.listdir(root / ".staging") == []
    store = MetadataStore(f"sqlite:///{root / 'metadata.sqlite'}")
    try:
        failed, = store.executions()
        assert failed.state == "FAILED" and "span-4.csv" in failed.properties["error"]
        assert store.outputs_of(failed.id) == {}
    finally:
        store.close()


def test_pipeline_cli_exit_codes_and_messages(tmp_path: Any) -> None:
    _spans(tmp_path / "data")
    script = tmp_path / "pipe.py"
    script.write_text(textwrap.dedent(f"""
        from tfprod.pipeline import *
        def create_pipeline(span):
            gen = ExampleGen(input_base={str(tmp_path / 'data')!r}, pattern="span-{{SPAN}}.csv", span=int(span))
            st = StatisticsGen(examples=gen.outputs["examples"])
            sc = SchemaGen(statistics=st.outputs["statistics"], drift_threshold=0.3) if span == "1" else \\
                SchemaGen(schema_file={str(tmp_path / 'schema.pbtxt')!r})
            return Pipeline("cli", root={str(tmp_path / 'root')!r}, components=[gen, st, sc, ExampleValidator(
                statistics=st.outputs["statistics"], schema=sc.outputs["schema"])])
    """))

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "tfprod", "pipeline", *args], capture_output=True, text=True,
                              timeout=300)
    done = cli("run", str(script), "--set", "span=1")
    assert done.returncode == 0 and "complete" in done.stderr, done.stderr
    schema = next((tmp_path / "root" / "SchemaGen" / "schema").iterdir()) / "schema.pbtxt"
    (tmp_path / "schema.pbtxt").write_text(schema.read_text())
    done = cli("run", str(script), "--set", "span=2")
    assert done.returncode == 1 and "stopped by ExampleValidator" in done.stderr and "Traceback" not in done.stderr
    assert "Jensen-Shannon divergence" in done.stderr
    custom = tmp_path / "custom.py"
    custom.write_text(textwrap.dedent(f"""
        import os
        from tfprod.pipeline import Component, Pipeline
        class Hello(Component):
            OUTPUTS = {{"note": "Note"}}
            def run(self, ctx):
                with open(os.path.join(ctx.output("note").uri, "hello.txt"), "w") as f:
                    f.write("hi")
        pipeline = Pipeline("custom", root={str(tmp_path / 'custom-root')!r}, components=[Hello()])
    """))
    done = cli("run", str(custom))
    assert done.returncode == 0 and "complete" in done.stderr, done.stderr
    assert "cached" in cli("run", str(custom)).stderr
    plain = tmp_path / "plain" / "1" / "assets.extra"
    plain.mkdir(parents=True)
    (plain / "tfprod_metadata.json").write_text('{"owner": "someone"}')
    done = subprocess.run([sys.executable, "-m", "tfprod", "lineage", str(tmp_path / "plain"), "1"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 1 and "not pushed by a tfprod pipeline" in done.stderr and "Traceback" not in done.stderr
    done = cli("run", str(tmp_path / "nope.py"))
    assert done.returncode == 2 and "is not a file" in done.stderr
