"""`tfprod pipeline run PIPELINE.py [--no_cache] [--set NAME=VALUE ...] [--runner local|ray]`,
`tfprod pipeline compile PIPELINE.py --to kfp|airflow OUT`, `tfprod pipeline step PIPELINE.py COMPONENT --run_id RUN`.

PIPELINE.py declares a `pipeline` (a `tfprod.pipeline.Pipeline`) or a `create_pipeline(**args)`
function; `--set` passes its keyword arguments (strings). Exit status: 0 when the run went to its
end, 1 when a component failed or stopped it (anomalies, a model not blessed), 2 for usage errors.
"""

from __future__ import annotations

import argparse
import os
import runpy
import signal
import sys
from collections.abc import Sequence
from typing import Any

from tfprod.pipeline.dsl import Pipeline, PipelineError


def load(path: str, overrides: dict[str, str]) -> Pipeline:
    if not os.path.isfile(path):
        raise PipelineError(f"{path} is not a file")
    here = os.path.dirname(os.path.abspath(path))
    sys.path.insert(0, here)  # the pipeline's own modules (preprocessing_fn, run_fn) import from beside it
    try:
        namespace = runpy.run_path(path, run_name="__pipeline__")
    finally:
        sys.path.remove(here)
    if "create_pipeline" in namespace:
        pipeline = namespace["create_pipeline"](**overrides)
    elif overrides:
        raise PipelineError(f"--set needs a create_pipeline(**args) function in {path}")
    else:
        pipeline = namespace.get("pipeline")
    if not isinstance(pipeline, Pipeline):
        raise PipelineError(f"{path} must define `pipeline = Pipeline(...)` or `def create_pipeline(...)`")
    return pipeline


def main(argv: Sequence[str]) -> int:
    p = argparse.ArgumentParser(prog="tfprod pipeline", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run", help="run a pipeline in this process")
    r.add_argument("file")
    r.add_argument("--no_cache", action="store_true", help="run every component even when its inputs, "
                   "parameters and code are unchanged")
    r.add_argument("--set", action="append", default=[], metavar="NAME=VALUE",
                   help="an argument of create_pipeline()")
    r.add_argument("--runner", choices=("local", "ray"), default="local",
                   help="where each step's data-parallel work runs: here (default) or as Ray tasks")
    r.add_argument("--ray_address", default="", metavar="HOST:PORT",
                   help="the Ray cluster to use (default: a new local one; 'auto': the one started on this machine)")
    r.add_argument("--ray_max_retries", type=int, default=0, metavar="N",
                   help="times Ray runs a task again when its worker dies (default 0: the step fails)")
    c = sub.add_parser("compile", help="write the pipeline for an orchestrator: a Kubeflow Pipelines v2 spec or an "
                       "Airflow DAG file")
    c.add_argument("file")
    c.add_argument("--to", choices=("kfp", "airflow"), required=True)
    c.add_argument("output", help="the file to write (kfp: .yaml, airflow: .py in the DAG folder)")
    c.add_argument("--set", action="append", default=[], metavar="NAME=VALUE",
                   help="an argument of create_pipeline(), passed to every step")
    c.add_argument("--pipeline_file", default="", metavar="PATH",
                   help="the pipeline file's path where the steps run (in the image; default: its absolute path here)")
    c.add_argument("--image", default="", help="kfp: the tfprod image the steps run in (default tfprod:latest)")
    c.add_argument("--metadata_url", default="", help="the metadata store every step uses (default: the pipeline's)")
    c.add_argument("--schedule", default=None, help="airflow: the DAG's schedule (cron or @daily; default: none)")
    c.add_argument("--tfprod", default="tfprod", help="airflow: the tfprod command on the workers")
    s = sub.add_parser("step", help="run one component as a step of an orchestrated run (what a KFP or Airflow task "
                       "runs); prints its handoff (JSON) last")
    s.add_argument("file")
    s.add_argument("component")
    s.add_argument("--run_id", required=True, help="the same for every step of one run")
    s.add_argument("--upstream", action="append", default=[], metavar="HANDOFF",
                   help="the handoff an upstream step printed (default: its outputs in this run, from the store)")
    s.add_argument("--set", action="append", default=[], metavar="NAME=VALUE",
                   help="an argument of create_pipeline()")
    s.add_argument("--metadata_url", default=os.environ.get("TFPROD_METADATA_URL", ""),
                   help="the metadata store (default: $TFPROD_METADATA_URL, else the pipeline's)")
    s.add_argument("--no_cache", action="store_true")
    s.add_argument("--stop_exit_code", type=int, default=0, metavar="N",
                   help="the exit status when this step stops the run or is skipped (Airflow skips on 99)")
    args = p.parse_args(argv)
    overrides = {}
    for item in args.set:
        name, sep, value = item.partition("=")
        if not sep:
            print(f"tfprod pipeline: error: --set {item!r}: expected NAME=VALUE", file=sys.stderr)
            return 2
        overrides[name] = value
    import sqlalchemy
    from rich.console import Console

    from tfprod.pipeline import runner

    console = Console(stderr=True)
    try:
        pipeline = load(args.file, overrides)
    except (PipelineError, TypeError, ValueError) as e:
        print(f"tfprod pipeline: error: {e}", file=sys.stderr)
        return 2
    if args.command == "compile":
        return _compile(args, pipeline, overrides)
    # an orchestrator's or a user's SIGTERM unwinds like Ctrl-C: the step records FAILED and removes its outputs
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    if args.command == "step":
        return _step(args, pipeline, console)
    marks = {"running": "[cyan]…[/cyan]", "cached": "[blue]=[/blue]", "done": "[green]✓[/green]",
             "failed": "[red]✗[/red]"}

    def progress(component: str, message: str) -> None:
        mark = next((m for k, m in marks.items() if message.startswith(k)), " ")
        console.print(f"{mark} [bold]{component}[/bold] {message}", highlight=False)

    engine = runner.Engine()
    try:
        if args.runner == "ray":
            from tfprod.pipeline.engines.ray import RayEngine

            console.print(f"connecting to Ray at {args.ray_address or '(a new local cluster)'}", highlight=False)
            engine = RayEngine(args.ray_address, code_dir=os.path.dirname(os.path.abspath(args.file)),
                               max_retries=args.ray_max_retries)
            console.print(f"Ray: {engine.workers} CPU(s)", highlight=False)
        result = runner.run(pipeline, use_cache=not args.no_cache, progress=progress, engine=engine)
    except PipelineError as e:
        console.print(f"[red]run failed[/red]: {e}; nothing of that step was published", highlight=False)
        return 1
    except (OSError, sqlalchemy.exc.SQLAlchemyError) as e:  # the root or the store cannot be used
        console.print(f"[red]run failed[/red]: {type(e).__name__}: {str(e).splitlines()[0][:300]}",
                      highlight=False)
        return 1
    finally:
        engine.close()
    if result.stopped:
        console.print(f"[yellow]run {result.run_id} stopped[/yellow] by {result.stopped}", highlight=False)
        console.print(f"report: {result.report}", highlight=False)
        return 1
    console.print(f"[green]run {result.run_id} complete[/green] ({len(result.steps)} components); report: "
                  f"{result.report}", highlight=False)
    return 0


def _compile(args: argparse.Namespace, pipeline: Pipeline, overrides: dict[str, str]) -> int:
    import sqlalchemy

    file = args.pipeline_file or os.path.abspath(args.file)
    for url in (args.metadata_url, pipeline.metadata_url):
        try:
            secret = bool(url) and sqlalchemy.engine.make_url(url).password is not None
        except sqlalchemy.exc.ArgumentError:
            secret = False
        if secret:
            print("tfprod pipeline: error: the metadata URL has a password, which the compiled file would show to "
                  "anyone who can read it (and its rendered commands): leave it out here and give the workers "
                  "TFPROD_METADATA_URL in their environment", file=sys.stderr)
            return 2
    try:
        if args.to == "kfp":
            from tfprod.pipeline.engines import kfp

            if args.metadata_url:
                pipeline.metadata_url = args.metadata_url
            kfp.compile_pipeline(pipeline, file, args.output, image=args.image or kfp.DEFAULT_IMAGE,
                                 settings=overrides)
        else:
            from tfprod.pipeline.engines import airflow

            airflow.write_dag(pipeline, file, args.output, settings=overrides, schedule=args.schedule,
                              tfprod=args.tfprod, metadata_url=args.metadata_url)
    except (PipelineError, OSError) as e:
        print(f"tfprod pipeline: error: {e}", file=sys.stderr)
        return 1
    print(f"wrote {args.output} ({args.to}, {len(pipeline.components)} components)")
    return 0


def _step(args: argparse.Namespace, pipeline: Pipeline, console: Any) -> int:
    import json

    import sqlalchemy

    from tfprod.pipeline.engines.step import run_step

    if args.metadata_url:
        pipeline.metadata_url = args.metadata_url
    try:
        handoff = run_step(pipeline, args.component, args.run_id, args.upstream, use_cache=not args.no_cache,
                           progress=lambda c, m: console.print(f"[bold]{c}[/bold] {m}", highlight=False))
    except PipelineError as e:
        console.print(f"[red]step failed[/red]: {e}; nothing of it was published", highlight=False)
        return 1
    except (OSError, sqlalchemy.exc.SQLAlchemyError) as e:
        console.print(f"[red]step failed[/red]: {type(e).__name__}: {str(e).splitlines()[0][:300]}", highlight=False)
        return 1
    print(json.dumps(handoff), flush=True)
    return args.stop_exit_code if handoff["stopped"] else 0
