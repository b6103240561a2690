"""`tfprod pipeline compile PIPELINE.py --to airflow OUT.py`: an Airflow DAG file, one task per component.

Each task is a BashOperator running `tfprod pipeline step ... --run_id "$TFPROD_RUN_ID"`, the
variable set to Airflow's `{{ run_id }}` (through the environment, so no run id is ever shell
text): the tasks of a DAG run share it, and a step finds its inputs as its producers' outputs in
that run's context in the metadata store, so nothing passes through XCom but the handoff. The
tasks run one after another in the in-process order (the pipeline's edges, plus a chain), so a
step that stops the run or fails is seen by every later step. A step
that stops the run exits 99, which Airflow reads as "skipped": the tasks after it are skipped.
The DAG file imports only Airflow (3.x), so the scheduler parses it without tfprod; the workers
need tfprod on their PATH (or `--tfprod` names the command).
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Mapping

from tfprod.pipeline.dsl import Pipeline, PipelineError

STOP_EXIT_CODE = 99  # BashOperator's skip_on_exit_code default

TEMPLATE = '''"""Airflow DAG of the tfprod pipeline {name}: written by `tfprod pipeline compile --to airflow`."""

import datetime
import shlex

from airflow.providers.standard.operators.bash import BashOperator
from airflow.sdk import DAG

STEP = {step!r}


def step(component):
    # the run id reaches the command through the environment, never as shell text; STEP is no template
    return BashOperator(task_id=component, env={{"TFPROD_RUN_ID": "{{{{ run_id }}}}"}}, append_env=True,
                        bash_command="{{% raw %}}" + STEP + " " + shlex.quote(component)
                        + ' --run_id "$TFPROD_RUN_ID"{{% endraw %}}')


with DAG(
    dag_id={dag_id!r},
    description={description!r},
    schedule={schedule!r},
    start_date=datetime.datetime(2026, 1, 1, tzinfo=datetime.timezone.utc),
    catchup=False,
    max_active_runs=1,
    tags=["tfprod"],
) as dag:
{tasks}
{edges}
'''


def _var(component_id: str) -> str:
    return "t_" + re.sub(r"\W", "_", component_id)


def write_dag(pipeline: Pipeline, pipeline_file: str, out: str, *, settings: Mapping[str, str] | None = None,
              schedule: str | None = None, tfprod: str = "tfprod", metadata_url: str = "") -> None:
    """Write the DAG of `pipeline` (declared in `pipeline_file`, as the workers see it) to `out`."""
    order = pipeline.ordered()
    task_ids = [c.id for c in order]
    bad = [t for t in task_ids if not re.fullmatch(r"[A-Za-z0-9_.-]+", t)]
    if bad:
        raise PipelineError(f"Airflow task ids are letters, digits, '_', '.' and '-': rename {bad}")
    step = " ".join([*map(shlex.quote, shlex.split(tfprod)), "pipeline", "step", shlex.quote(pipeline_file)]
                    + [f"--set {shlex.quote(f'{k}={v}')}" for k, v in sorted((settings or {}).items())]
                    + ([f"--metadata_url {shlex.quote(metadata_url)}"] if metadata_url else [])
                    + [f"--stop_exit_code {STOP_EXIT_CODE}"])
    tasks = "\n".join(f"    {_var(c.id)} = step({c.id!r})" for c in order)
    edges = "\n".join([f"    {_var(ch)} >> {_var(c.id)}" for c in order
                        for ch in dict.fromkeys(x.producer.id for x in c.inputs.values())]
                       + [f"    {_var(a.id)} >> {_var(b.id)}" for a, b in zip(order, order[1:], strict=False)])
    text = TEMPLATE.format(name=pipeline.name, dag_id=f"tfprod_{re.sub(r'[^A-Za-z0-9_]', '_', pipeline.name)}",
                           description=f"tfprod pipeline {pipeline.name} ({len(order)} components)",
                           schedule=schedule, step=step, tasks=tasks, edges=edges)
    compile(text, out, "exec")  # a DAG file that does not parse is never written
    with open(out, "w") as f:
        f.write(text)
