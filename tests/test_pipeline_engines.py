"""The pipeline beyond one process: Ray tasks on a real loopback cluster, a Kubeflow Pipelines spec
run by kfp's local runner, an Airflow DAG parsed by Airflow and its tasks' commands run in order,
and artifacts in S3 (moto's server on loopback). Each answer is compared with the in-process run."""

from __future__ import annotations

import glob
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Iterator
from typing import Any

import jinja2
import numpy as np
import pytest
import yaml
from conftest import free_port

from tfprod.pipeline import storage
from tfprod.pipeline.store import MetadataStore

EXAMPLE = os.path.join(os.path.dirname(__file__), "..", "examples", "credit")
CREDIT = os.path.abspath(os.path.join(EXAMPLE, "pipeline.py"))
sys.path.insert(0, EXAMPLE)

from data import write_spans  # noqa: E402

# Ray on loopback only: its default binds the machine's address and turns token auth on
RAY_ENV = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}


def _tfprod(*args: str, env: dict[str, str] | None = None, cwd: str | None = None, timeout: int = 300
            ) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "tfprod", *args], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", **(env or {})}, cwd=cwd)


def _flat(text: str) -> str:  # rich wraps long lines on a terminal 80 columns wide
    return " ".join(text.split())


def _published(root: str, output: str) -> dict[str, bytes]:
    """The files of the one artifact published under ROOT/COMPONENT/OUTPUT/ (whatever its execution id)."""
    (execution,) = os.listdir(os.path.join(root, output))
    return _tree(os.path.join(root, output, execution))


def _tree(folder: str) -> dict[str, bytes]:
    out = {}
    for base, _, files in os.walk(folder):
        for name in files:
            path = os.path.join(base, name)
            with open(path, "rb") as f:
                out[os.path.relpath(path, folder)] = f.read()
    return out


@pytest.fixture(scope="module")
def credit_data(tmp_path_factory: pytest.TempPathFactory) -> str:
    folder = str(tmp_path_factory.mktemp("credit-data"))
    write_spans(folder)
    return folder


@pytest.fixture(scope="module")
def local_run(credit_data: str, tmp_path_factory: pytest.TempPathFactory) -> str:
    """The credit pipeline's span 1, in-process: what every other engine must reproduce."""
    work = tmp_path_factory.mktemp("in-process")
    done = _tfprod("pipeline", "run", CREDIT, "--set", "span=1", "--set", f"data={credit_data}",
                   "--set", f"root={work / 'root'}", "--set", f"serving={work / 'served'}")
    assert done.returncode == 0, done.stderr[-3000:]
    return str(work / "root")


@pytest.fixture(scope="module")
def ray_cluster() -> Iterator[str]:
    """`ray start --head` on 127.0.0.1 with 2 CPUs (two workers); the pipeline connects by address."""
    ray = os.path.join(os.path.dirname(sys.executable), "ray")
    port = free_port()
    env = {**os.environ, **RAY_ENV}
    started = subprocess.run([ray, "start", "--head", "--node-ip-address=127.0.0.1", f"--port={port}",
                              "--num-cpus=2", "--include-dashboard=false", "--disable-usage-stats"],
                             capture_output=True, text=True, timeout=120, env=env)
    assert started.returncode == 0, started.stderr[-3000:]
    try:
        yield f"127.0.0.1:{port}"
    finally:
        subprocess.run([ray, "stop", "--force"], capture_output=True, timeout=120, env=env)


@pytest.fixture(scope="module")
def s3() -> Iterator[dict[str, str]]:
    """A real S3 endpoint (moto's server) on loopback with a bucket `artifacts`; the environment
    that points boto3 and s3fs at it."""
    import boto3
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0)
    server.start()
    host, port = server.get_host_and_port()
    env = {"AWS_ENDPOINT_URL": f"http://{host}:{port}", "AWS_ACCESS_KEY_ID": "testing",
           "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
           "TFPROD_ARTIFACT_CACHE": tempfile.mkdtemp(prefix="tfprod-cache-")}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        boto3.client("s3").create_bucket(Bucket="artifacts")
        yield env
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        server.stop()
        shutil.rmtree(env["TFPROD_ARTIFACT_CACHE"], ignore_errors=True)


def _executions(url: str, run_id: str | None = None) -> dict[str, list[Any]]:
    store = MetadataStore(url, create=False)
    try:
        context = None
        if run_id is not None:
            context = next(c for c in _contexts(store) if c[1] == run_id)[0]
        out: dict[str, list[Any]] = {}
        for e in store.executions(context):
            out.setdefault(e.component, []).append(e)
        return out
    finally:
        store.close()


def _contexts(store: MetadataStore) -> list[tuple[int, str]]:
    import sqlalchemy as sa

    from tfprod.pipeline.store import ContextRow

    with store._session() as s:
        return [(r.id, r.name) for r in s.scalars(sa.select(ContextRow).where(ContextRow.type == "pipeline_run"))]


def test_ray_runner_on_a_loopback_cluster_gives_the_in_process_answers(
        ray_cluster: str, credit_data: str, local_run: str, tmp_path: Any) -> None:
    done = _tfprod("pipeline", "run", CREDIT, "--set", "span=1", "--set", f"data={credit_data}",
                   "--set", f"root={tmp_path / 'root'}", "--set", f"serving={tmp_path / 'served'}",
                   "--runner", "ray", "--ray_address", ray_cluster, env=RAY_ENV)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Ray: 2 CPU(s)" in done.stderr
    for output in ("ExampleGen/examples", "StatisticsGen/statistics", "SchemaGen/schema",
                   "Transform/transformed_examples"):  # to the last bit
        ray_files, local_files = _published(str(tmp_path / "root"), output), _published(local_run, output)
        assert ray_files and ray_files == local_files, output
    executions = _executions(f"sqlite:///{tmp_path / 'root' / 'metadata.sqlite'}")
    assert {e.properties["engine"] for runs in executions.values() for e in runs} == {"ray"}
    assert [e.state for e in executions["Pusher"]] == ["COMPLETE"]
    assert os.path.isdir(tmp_path / "served" / "1")


MIXED_PIPELINE = '''
import os
from tfprod.pipeline import ExampleGen, Pipeline, SchemaGen, StatisticsGen, Transform

def create_pipeline(root):
    here = os.path.dirname(os.path.abspath(__file__))
    examples = ExampleGen(input_base=os.path.join(here, "data"), pattern="part-*.csv")
    statistics = StatisticsGen(examples=examples.outputs["examples"])
    schema = SchemaGen(statistics=statistics.outputs["statistics"])
    transform = Transform(examples=examples.outputs["examples"], module_file=os.path.join(here, "prep.py"), label="y")
    return Pipeline("mixed", root=root, components=[examples, statistics, schema, transform])
'''

MIXED_PREP = '''
import tensorflow as tf
from tfprod.pipeline import transform as tft

def preprocessing_fn(inputs):
    z = tft.scale_to_z_score(inputs["x"])
    return {"z": z, "z01": tft.scale_to_0_1(z), "b": tft.bucketize(z, 3),
            "c": tft.compute_and_apply_vocabulary(inputs["c"])}
'''


def test_ray_and_in_process_agree_over_several_files_with_mixed_types_and_empty_pieces(
        ray_cluster: str, tmp_path: Any) -> None:
    """Four input files (integers in one, decimals in another, an all-empty column, a file too small
    to reach every split): several pieces per split, merged across workers in order."""
    (tmp_path / "data").mkdir()
    rng = np.random.default_rng(7)
    for i, rows in enumerate((300, 250, 200, 2)):
        x = rng.integers(0, 50, rows) if i == 0 else rng.normal(20, 5, rows).round(3)
        lines = ["x,y,c"] + [f"{x[r]},{'' if i == 2 else r % 2},{'abc'[r % 3]}" for r in range(rows)]
        (tmp_path / "data" / f"part-{i}.csv").write_text("\n".join(lines) + "\n")
    (tmp_path / "mixed_pipeline.py").write_text(MIXED_PIPELINE)
    (tmp_path / "prep.py").write_text(MIXED_PREP)
    runs = {}
    for engine, extra in (("local", []), ("ray", ["--runner", "ray", "--ray_address", ray_cluster])):
        root = tmp_path / f"root-{engine}"
        done = _tfprod("pipeline", "run", str(tmp_path / "mixed_pipeline.py"), "--set", f"root={root}", *extra,
                       env=RAY_ENV)
        assert done.returncode == 0, done.stderr[-3000:]
        runs[engine] = str(root)
    examples = _published(runs["ray"], "ExampleGen/examples")
    assert len([f for f in examples if f.startswith("Split-train/")]) == 4  # a part per input file
    for output in ("ExampleGen/examples", "StatisticsGen/statistics", "SchemaGen/schema",
                   "Transform/transformed_examples"):
        assert _published(runs["ray"], output) == _published(runs["local"], output), output
    from tfprod.pipeline import examples as ex

    table = ex.read_split(os.path.join(runs["ray"], "ExampleGen", "examples", "1"), "train")
    assert str(table.schema.field("x").type) == "double" and str(table.schema.field("y").type) == "int64"


SLOW_PIPELINE = '''
import os
import slow_work
from tfprod.pipeline import ExampleGen, Pipeline, storage
from tfprod.pipeline.dsl import Component

class Slow(Component):
    INPUTS = ("examples",)
    OUTPUTS = {"result": "Result"}

    def run(self, ctx):
        out = ctx.output("result", shared=True)  # on the S3 root: written in place before the work
        with storage.open_file(storage.join(out.uri, "partial.txt"), "w") as f:
            f.write("half")
        ctx.map(slow_work.work, [os.environ["PID_FILE"]])

def create_pipeline(root, data, metadata):
    examples = ExampleGen(input_base=data, pattern="span-1.csv")
    return Pipeline("slow", root=root, metadata_url=metadata,
                    components=[examples, Slow(examples=examples.outputs["examples"])])
'''

SLOW_WORK = '''
import os, time

def work(pid_file):
    with open(pid_file + ".tmp", "w") as f:
        f.write(str(os.getpid()))
    os.rename(pid_file + ".tmp", pid_file)
    time.sleep(300)
'''


def test_a_ray_worker_killed_mid_step_fails_the_run_and_publishes_nothing(
        ray_cluster: str, credit_data: str, s3: dict[str, str], tmp_path: Any) -> None:
    (tmp_path / "slow_pipeline.py").write_text(SLOW_PIPELINE)
    (tmp_path / "slow_work.py").write_text(SLOW_WORK)
    pid_file, url = tmp_path / "worker.pid", f"sqlite:///{tmp_path / 'metadata.sqlite'}"
    root = "s3://artifacts/slow"
    run = subprocess.Popen([sys.executable, "-m", "tfprod", "pipeline", "run", str(tmp_path / "slow_pipeline.py"),
                            "--set", f"root={root}", "--set", f"data={credit_data}", "--set", f"metadata={url}",
                            "--runner", "ray", "--ray_address", ray_cluster],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                           env={**os.environ, **RAY_ENV, **s3, "PID_FILE": str(pid_file), "TF_CPP_MIN_LOG_LEVEL": "2"})
    try:
        deadline = time.monotonic() + 120
        while not pid_file.exists():
            assert run.poll() is None, run.communicate()[1][-3000:]
            assert time.monotonic() < deadline, "the Ray task never started"
            time.sleep(0.2)
        assert storage.glob(f"{root}/Slow/result/2-*/partial.txt")  # the shared output, half-written
        os.kill(int(pid_file.read_text()), signal.SIGKILL)
        _, err = run.communicate(timeout=120)
    finally:
        if run.poll() is None:
            run.kill()
    assert run.returncode == 1, err[-3000:]
    assert "a Ray worker running work died" in _flat(err) and "nothing of that step was published" in _flat(err), err
    executions = _executions(url)
    assert [e.state for e in executions["ExampleGen"]] == ["COMPLETE"]
    assert [e.state for e in executions["Slow"]] == ["FAILED"]
    assert "a Ray worker running work died" in executions["Slow"][0].properties["error"]
    assert not storage.exists(f"{root}/Slow")  # the half-written output is gone with the step
    store = MetadataStore(url, create=False)
    try:
        assert store.artifacts("Result") == []
    finally:
        store.close()


def test_kfp_spec_compiles_loads_and_runs_with_kfps_local_runner(credit_data: str, local_run: str, tmp_path: Any
                                                                 ) -> None:
    spec = tmp_path / "credit.yaml"
    done = _tfprod("pipeline", "compile", CREDIT, "--to", "kfp", str(spec), "--image", "registry.local/tfprod:1.0",
                   "--set", "span=1", "--set", f"data={credit_data}", "--set", f"root={tmp_path / 'root'}",
                   "--set", f"serving={tmp_path / 'served'}")
    assert done.returncode == 0, done.stderr[-3000:]
    doc = yaml.safe_load(spec.read_text())
    tasks = doc["root"]["dag"]["tasks"]
    assert set(tasks) == {"examplegen", "statisticsgen", "schemagen", "examplevalidator", "transform", "trainer",
                          "evaluator", "infravalidator", "pusher"}
    assert sorted(tasks["pusher"]["dependentTasks"]) == ["evaluator", "infravalidator", "trainer"]
    assert tasks["pusher"]["inputs"]["parameters"]["in_evaluator"]["taskOutputParameter"]["producerTask"] == "evaluator"
    assert "examplevalidator" in tasks["transform"]["dependentTasks"]  # after the validator, which can stop the run
    assert {e["container"]["image"] for e in doc["deploymentSpec"]["executors"].values()} == {
        "registry.local/tfprod:1.0"}
    assert set(doc["root"]["inputDefinitions"]["parameters"]) == {"pipeline_file", "settings", "metadata_url"}
    script = textwrap.dedent(f"""
        import json, sys, warnings
        from kfp import local
        from kfp.components import load_component_from_file
        local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root={str(tmp_path / 'kfp-root')!r})
        pipeline = load_component_from_file({str(spec)!r})
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the image has no 'python' in its name: kfp warns
            task = pipeline()
        """)
    ran = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600,
                         env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}, cwd=tmp_path)
    assert ran.returncode == 0, (ran.stdout + ran.stderr)[-4000:]
    assert "Pipeline \x1b[95m'credit'\x1b[0m finished with status \x1b[92mSUCCESS" in ran.stdout + ran.stderr
    (output,) = glob.glob(str(tmp_path / "kfp-root" / "*" / "pusher" / "executor_output.json"))
    with open(output) as f:
        handoff = json.loads(json.load(f)["parameterValues"]["Output"])  # the task's output parameter
    assert handoff["component"] == "Pusher" and handoff["state"] == "COMPLETE" and not handoff["stopped"]
    executions = _executions(f"sqlite:///{tmp_path / 'root' / 'metadata.sqlite'}", handoff["run_id"])
    assert len(executions) == 9 and all([e.state for e in runs] == ["COMPLETE"] for runs in executions.values())
    assert os.path.isdir(tmp_path / "served" / "1")
    for output in ("ExampleGen/examples", "StatisticsGen/statistics", "SchemaGen/schema"):
        assert _published(str(tmp_path / "root"), output) == _published(local_run, output), output


DATA_PIPELINE = '''
from tfprod.pipeline import ExampleGen, ExampleValidator, Pipeline, SchemaGen, StatisticsGen

def create_pipeline(data, root):
    examples = ExampleGen(input_base=data, pattern="span-{SPAN}.csv")
    statistics = StatisticsGen(examples=examples.outputs["examples"])
    schema = SchemaGen(statistics=statistics.outputs["statistics"], drift_threshold=0.25)
    validator = ExampleValidator(statistics=statistics.outputs["statistics"], schema=schema.outputs["schema"])
    return Pipeline("data-checks", root=root, components=[examples, statistics, schema, validator])
'''

DAGBAG = '''
import json, sys
from airflow.dag_processing.dagbag import DagBag
bag = DagBag(dag_folder=sys.argv[1])
dag = bag.dags.get("tfprod_data-checks") or bag.dags.get("tfprod_data_checks")
print(json.dumps({"errors": {k: str(v) for k, v in bag.import_errors.items()}, "dags": sorted(bag.dags),
                  "tasks": [{"id": t.task_id, "upstream": sorted(t.upstream_task_ids), "command": t.bash_command,
                             "env": t.env, "skip": t.skip_on_exit_code}
                            for t in dag.topological_sort()] if dag else []}))
'''


def test_airflow_dag_parses_in_airflow_and_its_task_commands_run_the_pipeline(credit_data: str, tmp_path: Any
                                                                               ) -> None:
    (tmp_path / "data").mkdir()
    shutil.copy(os.path.join(credit_data, "span-1.csv"), tmp_path / "data")
    (tmp_path / "data_pipeline.py").write_text(DATA_PIPELINE)
    (tmp_path / "dags").mkdir()
    done = _tfprod("pipeline", "compile", str(tmp_path / "data_pipeline.py"), "--to", "airflow",
                   str(tmp_path / "dags" / "data_checks.py"), "--set", f"data={tmp_path / 'data'}",
                   "--set", f"root={tmp_path / 'root'}", "--schedule", "@daily",
                   "--tfprod", f"{sys.executable} -m tfprod")
    assert done.returncode == 0, done.stderr
    parsed = subprocess.run([sys.executable, "-c", DAGBAG, str(tmp_path / "dags")], capture_output=True, text=True,
                            timeout=300, env={**os.environ, "AIRFLOW_HOME": str(tmp_path / "airflow")})
    assert parsed.returncode == 0, parsed.stderr[-3000:]
    bag = json.loads(parsed.stdout.splitlines()[-1])
    assert bag["errors"] == {} and bag["dags"] == ["tfprod_data_checks"]
    tasks = bag["tasks"]
    assert [(t["id"], t["upstream"]) for t in tasks] == [
        ("ExampleGen", []), ("StatisticsGen", ["ExampleGen"]), ("SchemaGen", ["StatisticsGen"]),
        ("ExampleValidator", ["SchemaGen", "StatisticsGen"])]
    assert all(99 in t["skip"] for t in tasks)

    def run_task(task: dict[str, Any], run_id: str) -> subprocess.CompletedProcess[str]:
        env = {k: jinja2.Template(v).render(run_id=run_id) for k, v in task["env"].items()}
        return subprocess.run(["bash", "-c", jinja2.Template(task["command"]).render(run_id=run_id)],
                              capture_output=True, text=True, timeout=300,
                              env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", **env})

    def dag_run(run_id: str) -> list[subprocess.CompletedProcess[str]]:
        """What Airflow's workers would do: each task's command, rendered with the run's id, in order."""
        out = []
        for t in tasks:
            out.append(run_task(t, run_id))
            if out[-1].returncode:
                break
        return out

    first = dag_run("scheduled__2026-12-01T00:00:00+00:00")
    assert [r.returncode for r in first] == [0, 0, 0, 0], first[-1].stderr[-3000:]
    handoffs = [json.loads(r.stdout.splitlines()[-1]) for r in first]
    assert [h["state"] for h in handoffs] == ["COMPLETE"] * 4
    assert handoffs[1]["outputs"]["statistics"]["uri"].endswith("/StatisticsGen/statistics/2")

    shutil.copy(os.path.join(credit_data, "span-2.csv"), tmp_path / "data")  # the drifted span lands
    second = dag_run("scheduled__2026-12-02T00:00:00+00:00")
    assert [r.returncode for r in second] == [0, 0, 0, 99], second[-1].stderr[-3000:]
    stopped = json.loads(second[-1].stdout.splitlines()[-1])
    assert stopped["state"] == "STOPPED" and "mean_radius" in stopped["stopped"]
    again = run_task(tasks[-1], "scheduled__2026-12-02T00:00:00+00:00")
    assert again.returncode == 99 and json.loads(again.stdout.splitlines()[-1])["state"] == "SKIPPED"
    runs = _executions(f"sqlite:///{tmp_path / 'root' / 'metadata.sqlite'}", "scheduled__2026-12-02T00:00:00+00:00")
    assert [e.state for e in runs["ExampleValidator"]] == ["COMPLETE"]  # the stop is published, once


def test_step_errors_are_clear(tmp_path: Any) -> None:
    (tmp_path / "data_pipeline.py").write_text(DATA_PIPELINE)
    common = [str(tmp_path / "data_pipeline.py"), "--set", f"data={tmp_path}", "--set", f"root={tmp_path / 'root'}"]
    unknown = _tfprod("pipeline", "step", common[0], "Trainer", "--run_id", "r1", *common[1:])
    assert unknown.returncode == 1 and "has no component 'Trainer'" in _flat(unknown.stderr)
    early = _tfprod("pipeline", "step", common[0], "StatisticsGen", "--run_id", "r1", *common[1:])
    assert early.returncode == 1 and "which run r1 has not produced: run ExampleGen first" in _flat(early.stderr)
    junk = _tfprod("pipeline", "step", common[0], "StatisticsGen", "--run_id", "r1", "--upstream", "{oops", *common[1:])
    assert junk.returncode == 1 and "is not the handoff of a tfprod pipeline step" in _flat(junk.stderr)
    s3_root = _tfprod("pipeline", "run", common[0], "--set", f"data={tmp_path}", "--set", "root=s3://bucket/x")
    assert s3_root.returncode == 2 and "pass metadata_url" in _flat(s3_root.stderr)
    secret = _tfprod("pipeline", "compile", common[0], "--to", "airflow", str(tmp_path / "dag.py"), *common[1:],
                     "--metadata_url", "postgresql://tfprod:hunter2@db.internal/metadata")
    assert secret.returncode == 2 and "TFPROD_METADATA_URL" in _flat(secret.stderr)
    assert not (tmp_path / "dag.py").exists()
    from tfprod.pipeline.engines import kfp

    assert [kfp._name(i) for i in ("Class", "1Stats", "Stats-Gen", "!")] == ["c_class", "c_1stats", "stats_gen", "step"]


def test_a_step_stopped_by_sigterm_records_failed_and_publishes_nothing(credit_data: str, tmp_path: Any) -> None:
    """What an orchestrator does to a task it gives up on: the step unwinds, not just dies."""
    (tmp_path / "slow_pipeline.py").write_text(SLOW_PIPELINE)
    (tmp_path / "slow_work.py").write_text(SLOW_WORK)
    pid_file, url = tmp_path / "worker.pid", f"sqlite:///{tmp_path / 'metadata.sqlite'}"
    args = [str(tmp_path / "slow_pipeline.py"), "--set", f"root={tmp_path / 'root'}", "--set", f"data={credit_data}",
            "--set", f"metadata={url}"]
    assert _tfprod("pipeline", "step", args[0], "ExampleGen", "--run_id", "r1", *args[1:]).returncode == 0
    step = subprocess.Popen([sys.executable, "-m", "tfprod", "pipeline", "step", args[0], "Slow", "--run_id", "r1",
                             *args[1:]], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PID_FILE": str(pid_file), "TF_CPP_MIN_LOG_LEVEL": "2"})
    try:
        deadline = time.monotonic() + 120
        while not pid_file.exists():
            assert step.poll() is None and time.monotonic() < deadline, step.communicate()[1][-3000:]
            time.sleep(0.2)
        assert int(pid_file.read_text()) == step.pid  # in-process: the work runs in the step itself
        step.send_signal(signal.SIGTERM)
        step.communicate(timeout=60)
    finally:
        if step.poll() is None:
            step.kill()
    assert step.returncode == 143
    executions = _executions(url, "r1")
    assert [e.state for e in executions["Slow"]] == ["FAILED"]
    assert executions["Slow"][0].properties["error"] == "interrupted (SystemExit)"
    assert not (tmp_path / "root" / "Slow").exists() and os.listdir(tmp_path / "root" / ".staging") == []


def test_s3_artifact_root_with_ray_workers_reproduces_the_local_run_and_caches(
        ray_cluster: str, credit_data: str, local_run: str, s3: dict[str, str], tmp_path: Any) -> None:
    import boto3

    args = [CREDIT, "--set", "span=1", "--set", f"data={credit_data}", "--set", "root=s3://artifacts/credit",
            "--set", f"serving={tmp_path / 'served'}", "--set", f"metadata=sqlite:///{tmp_path / 'metadata.sqlite'}",
            "--runner", "ray", "--ray_address", ray_cluster]
    done = _tfprod("pipeline", "run", *args, env={**RAY_ENV, **s3}, cwd=str(tmp_path))
    assert done.returncode == 0, done.stderr[-3000:]
    keys = {o["Key"] for o in boto3.client("s3").list_objects_v2(Bucket="artifacts", Prefix="credit/")["Contents"]}
    # remote URIs are never reused: ROOT/COMPONENT/OUTPUT/EXECUTION-RANDOM
    assert any(re.fullmatch(r"credit/ExampleGen/examples/1-[0-9a-f]{8}/Split-train/data-00000-of-00001\.parquet", k)
               for k in keys)  # written by a worker
    assert any(re.fullmatch(r"credit/Trainer/model/6-[0-9a-f]{8}/1/saved_model\.pb", k) for k in keys)  # uploaded
    assert not any("/.staging/" in k for k in keys)
    assert any(k.startswith("credit/reports/") and k.endswith("report.md") for k in keys)
    store = MetadataStore(f"sqlite:///{tmp_path / 'metadata.sqlite'}", create=False)
    try:
        uris = [a.uri for t in ("Examples", "ExampleStatistics", "Schema", "Model") for a in store.artifacts(t)]
        assert uris and all(u.startswith("s3://artifacts/credit/") for u in uris)
    finally:
        store.close()
    for output in ("ExampleGen/examples", "StatisticsGen/statistics", "SchemaGen/schema",
                   "Transform/transformed_examples"):
        remote = storage.localize(f"s3://artifacts/credit/{output}")  # a fresh download of the whole prefix
        assert _published(remote, "") == _published(local_run, output), output
    assert os.path.isdir(tmp_path / "served" / "1")
    again = _tfprod("pipeline", "run", *args[:-4], env=s3, cwd=str(tmp_path))  # in-process this time: all cached
    assert again.returncode == 0, again.stderr[-3000:]
    assert again.stderr.count("cached (execution") == 9, again.stderr[-3000:]
