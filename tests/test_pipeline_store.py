"""The metadata store on both backends, SQLite and a real PostgreSQL server: its model, migrations,
and concurrent pipeline runs from several processes recording whole lineage."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from typing import Any

import numpy as np
import postgres
import pyarrow as pa
import pyarrow.csv as pacsv
import pytest
import sqlalchemy as sa

from tfprod.pipeline.store import Artifact, MetadataStore, revision_of, upgrade


@pytest.fixture(scope="module")
def postgres_url() -> Iterator[str]:
    with postgres.server() as url:
        yield url


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request: pytest.FixtureRequest, tmp_path: Any) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'metadata.sqlite'}"
        return
    url = request.getfixturevalue("postgres_url")
    yield url
    engine = sa.create_engine(url)
    with engine.begin() as c:  # each test starts from an empty database
        c.execute(sa.text("DROP SCHEMA public CASCADE; CREATE SCHEMA public"))
    engine.dispose()


def test_the_store_records_lineage_the_ml_metadata_way(store_url: str) -> None:
    store = MetadataStore(store_url)
    try:
        assert revision_of(store._engine) == "0002"
        pipeline = store.context("pipeline", "p")
        assert store.context("pipeline", "p") == pipeline  # one context per (type, name)
        run = store.context("pipeline_run", "r1")
        writer = store.start_execution("ExampleGen", "ExampleGen", "k1", [pipeline, run], {}, {"run_id": "r1"})
        data = Artifact("Examples", "/a/examples", {"span": 3})
        store.finish_execution(writer, "COMPLETE", {"examples": [data]}, [pipeline, run])
        assert data.id is not None
        reader = store.start_execution("StatisticsGen", "StatisticsGen", "k2", [pipeline, run],
                                       {"examples": [data]}, {})
        store.finish_execution(reader, "COMPLETE", {"statistics": [Artifact("ExampleStatistics", "/a/s")]},
                               [pipeline, run])
        again = store.start_execution("ExampleGen", "ExampleGen", "k1", [pipeline], {}, {})
        store.finish_execution(again, "CACHED", {"examples": [data]}, [pipeline])  # same artifact, same context
        assert store.producer(data.id).id == writer  # type: ignore[union-attr]
        assert [e.id for e in store.consumers(data.id)] == [reader]
        assert store.inputs_of(reader)["examples"][0].uri == "/a/examples"
        assert store.artifacts("Examples", pipeline, {"span": 3})[0].id == data.id
        assert store.artifacts("Examples", pipeline, {"span": 4}) == []
        hit = store.cached("k1")
        assert hit is not None and hit[0].id == writer and hit[1]["examples"][0].id == data.id
        assert [e.component for e in store.executions(run)] == ["ExampleGen", "StatisticsGen"]
    finally:
        store.close()


def test_an_older_store_is_migrated_without_losing_anything(store_url: str) -> None:
    engine = sa.create_engine(store_url)
    upgrade(engine, "0001")
    with engine.begin() as c:
        c.execute(sa.text("INSERT INTO contexts (type, name, properties, created_at) "
                          "VALUES ('pipeline', 'old', '{}', CURRENT_TIMESTAMP)"))
    assert revision_of(engine) == "0001"
    assert "ix_executions_component" not in {i["name"] for i in sa.inspect(engine).get_indexes("executions")}
    store = MetadataStore(store_url)  # opening it migrates it
    try:
        assert revision_of(engine) == "0002"
        assert "ix_executions_component" in {i["name"] for i in sa.inspect(engine).get_indexes("executions")}
        assert store.context("pipeline", "old") == 1
    finally:
        store.close()
        engine.dispose()


def test_concurrent_runs_from_several_processes_record_whole_lineage(store_url: str, tmp_path: Any) -> None:
    data = tmp_path / "data"
    data.mkdir()
    rng = np.random.default_rng(0)
    pacsv.write_csv(pa.table({"x": rng.normal(size=400), "c": rng.choice(["a", "b"], 400)}),
                    str(data / "span-1.csv"))
    script = tmp_path / "pipe.py"
    script.write_text(textwrap.dedent(f"""
        from tfprod.pipeline import ExampleGen, StatisticsGen, Pipeline
        def create_pipeline(seed):
            gen = ExampleGen(input_base={str(data)!r}, pattern="span-{{SPAN}}.csv",
                             splits={{"train": 7, "eval": 3, "x": int(seed)}})
            return Pipeline("shared", root={str(tmp_path / 'root')!r}, metadata_url={store_url!r},
                            components=[gen, StatisticsGen(examples=gen.outputs["examples"])])
    """))
    procs = [subprocess.Popen([sys.executable, "-m", "tfprod", "pipeline", "run", str(script), "--set", f"seed={i}"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ})
             for i in [1, 2, 3, 4, 1]]  # the last repeats the first: cached, concurrently
    outputs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0] * 5, [o[1][-2000:] for o in outputs]
    assert not any("locked" in err or "Traceback" in err for _, err in outputs)
    store = MetadataStore(store_url)
    try:
        runs = [e for e in store.executions() if e.component == "StatisticsGen"]
        assert len(runs) == 5 and {e.state for e in runs} <= {"COMPLETE", "CACHED"}
        assert sum(e.state == "COMPLETE" for e in runs) >= 4
        for e in runs:  # statistics <- examples <- the ExampleGen that wrote them
            examples, = store.inputs_of(e.id)["examples"]
            producer = store.producer(examples.id)
            assert producer is not None and producer.type == "ExampleGen" and producer.state == "COMPLETE"
        assert len({c for e in runs for t, c in store.contexts_of(e.id) if t == "pipeline_run"}) == 5
    finally:
        store.close()
