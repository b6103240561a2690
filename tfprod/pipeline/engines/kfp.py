"""`tfprod pipeline compile PIPELINE.py --to kfp OUT.yaml`: a Kubeflow Pipelines v2 spec, written
by the kfp SDK (`pip install tfprod[kfp]`).

One KFP component per tfprod component, named after it, whose inputs (`in_PRODUCER`) are the
handoffs of the components it reads: the artifacts pass by URI (and id) from task to task. The
tasks also run one after another in the in-process order, so a step that stops the run (or
fails) is seen by every later step before it starts. Each task calls
`tfprod.pipeline.engines.step` in the tfprod image (`--image`), which caches, records and
publishes as the in-process runner does, in the store named by the run's `metadata_url`
parameter; all tasks of a run share the KFP job's name as the run id. KFP's own caching is off:
tfprod's cache key (code, parameters, input artifacts) decides.

The components are Python-function components rather than container components because kfp's
local runner (`kfp.local.SubprocessRunner`, how the spec is tested without a cluster) refuses
container components; in a cluster both run the same command in the same image. The image must
hold kfp (the `kfp` extra): the components do not pip-install it at start.
"""

# no `from __future__ import annotations` here: kfp reads the pipeline function's annotations as types
import json
import keyword
import linecache
import os
import re
from collections.abc import Mapping
from typing import Any

from tfprod.pipeline.dsl import Component, Pipeline, PipelineError

DEFAULT_IMAGE = "tfprod:latest"


def entry(pipeline_file: str, component: str, run_id: str, settings: str, metadata_url: str,
          upstream: list[str]) -> str:
    """What a KFP task runs: the step, then its handoff as the task's output."""
    from tfprod.pipeline.cli import load
    from tfprod.pipeline.engines.step import run_step

    pipeline = load(pipeline_file, json.loads(settings or "{}"))
    metadata_url = metadata_url or os.environ.get("TFPROD_METADATA_URL", "")  # a password stays out of the spec
    if metadata_url:
        pipeline.metadata_url = metadata_url
    return json.dumps(run_step(pipeline, component, run_id, upstream,
                               progress=lambda c, m: print(f"{c}: {m}", flush=True)))


def _name(text: str) -> str:
    """A Python identifier (kfp's component and parameter names) for a component id."""
    name = re.sub(r"[^a-z0-9_]", "_", text.lower()).strip("_") or "step"
    return f"c_{name}" if keyword.iskeyword(name) or name[0].isdigit() else name


def _component(component: Component, producers: list[str], image: str) -> Any:
    """A KFP component for one tfprod component. kfp builds a Python component from the function's
    source (inspect.getsource), so the function is generated as source and registered with linecache."""
    from kfp import dsl

    name = _name(component.id)
    args = ", ".join(["pipeline_file: str", "settings: str", "metadata_url: str", "run_id: str",
                      *(f"in_{_name(p)}: str" for p in producers)])
    source = (f"def {name}({args}) -> str:\n"
              f"    from tfprod.pipeline.engines.kfp import entry\n"
              f"    return entry(pipeline_file, {component.id!r}, run_id, settings, metadata_url, "
              f"[{', '.join('in_' + _name(p) for p in producers)}])\n")
    filename = f"<tfprod kfp component {component.id}>"
    linecache.cache[filename] = (len(source), None, source.splitlines(True), filename)
    namespace: dict[str, Any] = {}
    exec(compile(source, filename, "exec", dont_inherit=True), namespace)  # real annotations: kfp reads them
    return dsl.component(namespace[name], base_image=image, install_kfp_package=False)


def compile_pipeline(pipeline: Pipeline, pipeline_file: str, out: str, *, image: str = DEFAULT_IMAGE,
                     settings: Mapping[str, str] | None = None) -> None:
    """Write the KFP spec of `pipeline` (declared in `pipeline_file`, its path inside the image) to `out`."""
    try:
        from kfp import compiler, dsl
    except ImportError:
        raise PipelineError("--to kfp needs the Kubeflow Pipelines SDK: pip install 'tfprod[kfp]'") from None
    order = pipeline.ordered()
    names = [_name(c.id) for c in order]
    clash = sorted({n for n in names if names.count(n) > 1})
    if clash:
        raise PipelineError(f"component ids that differ only in case or punctuation make the same KFP name: {clash}")
    producers = {c.id: list(dict.fromkeys(ch.producer.id for ch in c.inputs.values())) for c in order}
    factories = {c.id: _component(c, producers[c.id], image) for c in order}
    default_settings, default_url = json.dumps(dict(settings or {}), sort_keys=True), pipeline.store_url()

    @dsl.pipeline(name=_name(pipeline.name).replace("_", "-"),
                  description=f"The tfprod pipeline {pipeline.name} ({len(order)} components)")
    def kfp_pipeline(pipeline_file: str = pipeline_file, settings: str = default_settings,
                     metadata_url: str = default_url) -> None:
        tasks: dict[str, Any] = {}
        previous = None
        for c in order:
            task = factories[c.id](pipeline_file=pipeline_file, settings=settings, metadata_url=metadata_url,
                                   run_id=dsl.PIPELINE_JOB_NAME_PLACEHOLDER,
                                   **{f"in_{_name(p)}": tasks[p].output for p in producers[c.id]})
            task.set_display_name(c.id)
            task.set_caching_options(False)
            if previous is not None:  # one after another, as in-process: a stop is seen by every later step
                task.after(previous)
            tasks[c.id] = previous = task

    compiler.Compiler().compile(kfp_pipeline, out)
