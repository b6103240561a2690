"""`tfprod pipeline run PIPELINE.py [--no_cache] [--set NAME=VALUE ...] [--runner local|ray]`.

PIPELINE.py declares a `pipeline` (a `tfprod.pipeline.Pipeline`) or a `create_pipeline(**args)`
function; `--set` passes its keyword arguments (strings). Exit status: 0 when the run went to its
end, 1 when a component failed or stopped it (anomalies, a model not blessed), 2 for usage errors.
"""

from __future__ import annotations

import argparse
import os
import runpy
import sys
from collections.abc import Sequence

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
