"""The in-process runner: components in dependency order, cached, recorded, published atomically.

For each component: its cache key is the component's code, its parameters and the ids of its
input artifacts. When a complete execution with that key exists and its artifacts are still on
disk, the step is not run: a CACHED execution points at the same artifacts. Otherwise the step
runs into `ROOT/.staging/EXECUTION/`, and only when it returns are its outputs renamed to
`ROOT/COMPONENT/OUTPUT/EXECUTION/` and recorded; a step that raises is recorded FAILED, its
staging removed, and the run stops.
"""

from __future__ import annotations

import dataclasses
import datetime
import functools
import hashlib
import os
import shutil
import uuid
from collections.abc import Callable
from typing import Any

from tfprod.pipeline.dsl import Component, Pipeline, PipelineError, RunContext, params_json
from tfprod.pipeline.store import Artifact, MetadataStore, by_ids


@dataclasses.dataclass
class StepResult:
    component: str
    state: str  # COMPLETE | CACHED | FAILED | STOPPED
    execution: int
    outputs: dict[str, Artifact]
    seconds: float
    message: str = ""


@dataclasses.dataclass
class RunResult:
    run_id: str
    steps: list[StepResult]
    stopped: str = ""  # why the run stopped early ("" when it ran to the end)
    report: str = ""  # the run's report.md

    def output(self, component: str, key: str) -> Artifact:
        return next(s.outputs[key] for s in self.steps if s.component == component)


def cache_key(component: Component, params: dict[str, Any], code_version: str, inputs: dict[str, list[Artifact]],
              pipeline: str = "", context: dict[str, object] | None = None) -> str:
    digest = hashlib.sha256()
    digest.update(pipeline.encode() + b"\0")
    digest.update(params_json(context or {}).encode())
    digest.update(type(component).__name__.encode())
    digest.update(code_version.encode())
    digest.update(params_json(params).encode())
    for name in sorted(inputs):
        digest.update(f"{name}={by_ids(inputs[name])}".encode())
    return digest.hexdigest()


def run(pipeline: Pipeline, *, use_cache: bool = True, progress: Callable[[str, str], None] | None = None
        ) -> RunResult:
    """Run `pipeline` once. `progress(component, message)` is told what happens."""
    say = progress or (lambda _c, _m: None)
    os.makedirs(pipeline.root, exist_ok=True)
    store = MetadataStore(pipeline.store_url())
    try:
        result = _run(pipeline, store, use_cache, say)
        from tfprod.pipeline import report

        result.report = report.write(result, pipeline.root, store)
        return result
    finally:
        store.close()


def _run(pipeline: Pipeline, store: MetadataStore, use_cache: bool, say: Callable[[str, str], None]) -> RunResult:
    started = datetime.datetime.now(datetime.UTC)
    run_id = f"{pipeline.name}-{started:%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:6]}"
    pipeline_ctx = store.context("pipeline", pipeline.name)
    run_ctx = store.context("pipeline_run", run_id, {"pipeline": pipeline.name, "started_at": started.isoformat()})
    contexts = [pipeline_ctx, run_ctx]
    produced: dict[tuple[int, str], Artifact] = {}
    result = RunResult(run_id, [])
    for component in pipeline.ordered():
        inputs = {name: [produced[(id(ch.producer), ch.key)]] for name, ch in component.inputs.items()}
        try:  # once per step: ExampleGen's parameters hash its input files, the code version hashes code
            params, code_version = component.describe_params(), component.code_version()
            key = cache_key(component, params, code_version, inputs, pipeline.name,
                            component.cache_context(store, pipeline_ctx, inputs))
        except Exception as e:  # its inputs cannot even be found (no files for the pattern, no module file...)
            if not isinstance(e, PipelineError):
                e = PipelineError(f"{type(e).__name__}: {e}")
            result.steps.append(StepResult(component.id, "FAILED", 0, {}, 0.0, str(e)))
            say(component.id, f"failed: {e}")
            raise PipelineError(f"{component.id} failed: {e}") from None
        clock = datetime.datetime.now(datetime.UTC)
        hit = store.cached(key) if use_cache else None
        if hit is not None and all(os.path.exists(a.uri) for arts in hit[1].values() for a in arts):
            execution = store.start_execution(type(component).__name__, component.id, key, contexts, inputs,
                                              {"params": params, "run_id": run_id, "cached_from": hit[0].id})
            store.finish_execution(execution, "CACHED", hit[1], contexts)
            outputs = {k: v[0] for k, v in hit[1].items()}
            _remember(produced, component, outputs)
            result.steps.append(StepResult(component.id, "CACHED", execution, outputs, 0.0))
            say(component.id, f"cached (execution {hit[0].id})")
            if hit[0].properties.get("stop_reason"):  # it stopped the run then: it does now
                result.stopped = f"{component.id}: {hit[0].properties['stop_reason']}"
                return result
            continue
        execution = store.start_execution(type(component).__name__, component.id, key, contexts, inputs,
                                          {"params": params, "run_id": run_id, "code_version": code_version})
        staging = os.path.join(pipeline.root, ".staging", str(execution))
        os.makedirs(staging, exist_ok=True)
        ctx = RunContext(component, inputs, store, pipeline_ctx, run_id, staging,
                         functools.partial(say, component.id), pipeline.name)
        say(component.id, "running")
        published: list[str] = []
        try:
            component.run(ctx)
            outputs = _publish(pipeline.root, component, execution, ctx, published)
            store.finish_execution(execution, "COMPLETE", {k: [a] for k, a in outputs.items()}, contexts,
                                   {"stop_reason": ctx.stop_reason} if ctx.stop_reason else None)
        except Exception as e:
            shutil.rmtree(staging, ignore_errors=True)
            for path in published:  # what was renamed in before the failure goes too: nothing half-published
                shutil.rmtree(path, ignore_errors=True)
            message = str(e) if isinstance(e, PipelineError) else f"{type(e).__name__}: {e}"
            try:
                store.finish_execution(execution, "FAILED", {}, contexts, {"error": message})
            except Exception:  # the store itself failed: the run's outcome is the original error
                pass
            seconds = (datetime.datetime.now(datetime.UTC) - clock).total_seconds()
            result.steps.append(StepResult(component.id, "FAILED", execution, {}, seconds, message))
            say(component.id, f"failed: {message}")
            raise PipelineError(f"{component.id} failed: {message}") from (None if isinstance(e, PipelineError) else e)
        shutil.rmtree(staging, ignore_errors=True)
        _remember(produced, component, outputs)
        seconds = (datetime.datetime.now(datetime.UTC) - clock).total_seconds()
        state = "STOPPED" if ctx.stop_reason else "COMPLETE"
        result.steps.append(StepResult(component.id, state, execution, outputs, seconds, ctx.stop_reason))
        say(component.id, f"done in {seconds:.1f} s" + (f"; stops the run: {ctx.stop_reason}" if ctx.stop_reason
                                                         else ""))
        if ctx.stop_reason:
            result.stopped = f"{component.id}: {ctx.stop_reason}"
            return result
    return result


def _publish(root: str, component: Component, execution: int, ctx: RunContext, done: list[str]
             ) -> dict[str, Artifact]:
    missing = [k for k in component.OUTPUTS if k not in ctx.outputs]
    if missing:
        raise PipelineError(f"{component.id} returned without writing its output(s) {missing}")
    published = {}
    for key, artifact in ctx.outputs.items():
        final = os.path.join(os.path.abspath(root), component.id, key, str(execution))
        if os.path.exists(final):  # a root whose store was replaced: execution ids start again
            final = f"{final}-{uuid.uuid4().hex[:8]}"
        os.makedirs(os.path.dirname(final), exist_ok=True)
        os.rename(artifact.uri, final)  # whole, or not at all
        done.append(final)
        published[key] = dataclasses.replace(artifact, uri=final)
    return published


def _remember(produced: dict[tuple[int, str], Artifact], component: Component, outputs: dict[str, Artifact]) -> None:
    for key, artifact in outputs.items():
        produced[(id(component), key)] = artifact

