"""The in-process runner: components in dependency order, cached, recorded, published atomically.

For each component: its cache key is the component's code, its parameters and the ids of its
input artifacts. When a complete execution with that key exists and its artifacts are still on
disk, the step is not run: a CACHED execution points at the same artifacts. Otherwise the step
runs into `ROOT/.staging/EXECUTION/`, and only when it returns are its outputs renamed to
`ROOT/COMPONENT/OUTPUT/EXECUTION/` and recorded; a step that raises is recorded FAILED, its
staging removed, and the run stops. On an object-storage root (`s3://`) the staging is local and
publishing uploads it; outputs its workers write (`ctx.output(key, shared=True)`) go straight to
their final URI, which counts as published only once the store records it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import functools
import hashlib
import os
import shutil
import uuid
from collections.abc import Callable, Sequence
from typing import Any

from tfprod.pipeline import storage
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

    @property
    def stops(self) -> bool:
        """Whether the run ends here: the step stopped it, now or (CACHED) when it last ran."""
        return bool(self.message) and self.state in ("STOPPED", "CACHED")


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


class Engine:
    """Where a step's data-parallel work runs: `map(fn, items)` calls the module-level `fn` on each
    item and returns the results in order. This one runs them here, one after another."""

    name = "in-process"

    def map(self, fn: Callable[[Any], Any], items: Sequence[Any]) -> list[Any]:
        return [fn(item) for item in items]

    def close(self) -> None:
        pass


@dataclasses.dataclass
class Run:
    """What the steps of one run share: its store, its contexts, its engine."""

    pipeline: Pipeline
    store: MetadataStore
    run_id: str
    pipeline_ctx: int
    contexts: list[int]
    engine: Engine
    use_cache: bool = True
    say: Callable[[str, str], None] = lambda _c, _m: None


def run(pipeline: Pipeline, *, use_cache: bool = True, progress: Callable[[str, str], None] | None = None,
        engine: Engine | None = None) -> RunResult:
    """Run `pipeline` once. `progress(component, message)` is told what happens."""
    if not storage.remote(pipeline.root):
        os.makedirs(pipeline.root, exist_ok=True)
    store = MetadataStore(pipeline.store_url())
    try:
        started = datetime.datetime.now(datetime.UTC)
        current = open_run(pipeline, store, f"{pipeline.name}-{started:%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:6]}",
                           engine or Engine(), use_cache, progress)
        result = RunResult(current.run_id, [])
        produced: dict[tuple[int, str], Artifact] = {}
        for component in pipeline.ordered():
            inputs = {name: [produced[(id(ch.producer), ch.key)]] for name, ch in component.inputs.items()}
            step_result = step(current, component, inputs)
            result.steps.append(step_result)
            for key, artifact in step_result.outputs.items():
                produced[(id(component), key)] = artifact
            if step_result.stops:
                result.stopped = f"{component.id}: {step_result.message}"
                break
        from tfprod.pipeline import report

        result.report = report.write(result, pipeline.root, store)
        return result
    finally:
        store.close()


def open_run(pipeline: Pipeline, store: MetadataStore, run_id: str, engine: Engine, use_cache: bool = True,
             progress: Callable[[str, str], None] | None = None) -> Run:
    """The run `run_id` of `pipeline` (its contexts created by the first step that asks)."""
    pipeline_ctx = store.context("pipeline", pipeline.name)
    run_ctx = store.context("pipeline_run", run_id, {"pipeline": pipeline.name,
                                                     "started_at": datetime.datetime.now(datetime.UTC).isoformat()})
    return Run(pipeline, store, run_id, pipeline_ctx, [pipeline_ctx, run_ctx], engine, use_cache,
               progress or (lambda _c, _m: None))


def step(run: Run, component: Component, inputs: dict[str, list[Artifact]]) -> StepResult:
    """Run (or take from the cache) one component of `run`. A CACHED or STOPPED result with a
    message stops the run; a failure raises PipelineError after the execution is recorded FAILED."""
    store, say, root = run.store, run.say, run.pipeline.root
    try:  # once per step: ExampleGen's parameters hash its input files, the code version hashes code
        params, code_version = component.describe_params(), component.code_version()
        context = component.cache_context(store, run.pipeline_ctx, inputs)
        key = cache_key(component, params, code_version, inputs, run.pipeline.name, context)
    except Exception as e:  # its inputs cannot even be found (no files for the pattern, no module file...)
        if not isinstance(e, PipelineError):
            e = PipelineError(f"{type(e).__name__}: {e}")
        say(component.id, f"failed: {e}")
        raise PipelineError(f"{component.id} failed: {e}") from None
    clock = datetime.datetime.now(datetime.UTC)
    hit = store.cached(key) if run.use_cache else None
    if hit is not None and all(storage.exists(a.uri) for arts in hit[1].values() for a in arts):
        execution = store.start_execution(type(component).__name__, component.id, key, run.contexts, inputs,
                                          {"params": params, "run_id": run.run_id, "cached_from": hit[0].id})
        stop_reason = hit[0].properties.get("stop_reason", "")  # a step that stopped the run then stops it now
        store.finish_execution(execution, "CACHED", hit[1], run.contexts,
                               {"stop_reason": stop_reason} if stop_reason else None)
        say(component.id, f"cached (execution {hit[0].id})")
        return StepResult(component.id, "CACHED", execution, {k: v[0] for k, v in hit[1].items()}, 0.0, stop_reason)
    execution = store.start_execution(type(component).__name__, component.id, key, run.contexts, inputs,
                                      {"params": params, "run_id": run.run_id, "code_version": code_version,
                                       "engine": run.engine.name})
    staging = storage.staging_dir(root, execution)
    finals: dict[str, str] = {}

    def final(key: str) -> str:  # ROOT/COMPONENT/KEY/EXECUTION (a root whose store was replaced: made unique)
        if key not in finals:
            uri = storage.join(root if storage.remote(root) else os.path.abspath(root), component.id, key,
                               str(execution))
            # remote: always made unique, so no URI is ever written twice (a replaced store starts its ids again,
            # and downloads are cached by URI)
            finals[key] = storage.unique(uri) if storage.remote(uri) or storage.exists(uri) else uri
        return finals[key]
    ctx = RunContext(component, inputs, store, run.pipeline_ctx, run.run_id, staging,
                     functools.partial(say, component.id), run.pipeline.name, run.engine.map,
                     shared=final if storage.remote(root) else None, params=params, cache_context=context)
    say(component.id, "running")
    published: list[str] = []
    try:
        component.run(ctx)
        outputs = _publish(root, component, ctx, final, published)
        store.finish_execution(execution, "COMPLETE", {k: [a] for k, a in outputs.items()}, run.contexts,
                               {"stop_reason": ctx.stop_reason} if ctx.stop_reason else None)
    except BaseException as e:  # an interrupt (Ctrl-C, the orchestrator's kill) cleans up too, then goes on
        shutil.rmtree(staging, ignore_errors=True)
        for path in published + [a.uri for a in ctx.outputs.values() if storage.remote(a.uri)]:
            try:  # what was renamed in or uploaded before the failure goes too
                storage.remove(path)
            except Exception:  # the store cannot be reached: the FAILED record says nothing there is published
                pass
        if not isinstance(e, Exception):
            with contextlib.suppress(Exception):
                store.finish_execution(execution, "FAILED", {}, run.contexts,
                                       {"error": f"interrupted ({type(e).__name__})"})
            raise
        message = str(e) if isinstance(e, PipelineError) else f"{type(e).__name__}: {e}"
        try:
            store.finish_execution(execution, "FAILED", {}, run.contexts, {"error": message})
        except Exception:  # the store itself failed: the run's outcome is the original error
            pass
        say(component.id, f"failed: {message}")
        raise PipelineError(f"{component.id} failed: {message}") from (None if isinstance(e, PipelineError) else e)
    shutil.rmtree(staging, ignore_errors=True)
    seconds = (datetime.datetime.now(datetime.UTC) - clock).total_seconds()
    say(component.id, f"done in {seconds:.1f} s" + (f"; stops the run: {ctx.stop_reason}" if ctx.stop_reason else ""))
    return StepResult(component.id, "STOPPED" if ctx.stop_reason else "COMPLETE", execution, outputs, seconds,
                      ctx.stop_reason)


def _publish(root: str, component: Component, ctx: RunContext, final: Callable[[str], str], done: list[str]
             ) -> dict[str, Artifact]:
    missing = [k for k in component.OUTPUTS if k not in ctx.outputs]
    if missing:
        raise PipelineError(f"{component.id} returned without writing its output(s) {missing}")
    published = {}
    for key, artifact in ctx.outputs.items():
        uri = final(key)
        if artifact.uri != uri:  # written where its workers could reach it: already in place
            done.append(uri)  # before the upload: a half-finished one is removed too
            if storage.remote(uri):
                storage.upload(artifact.uri, uri)
            else:
                os.makedirs(os.path.dirname(uri), exist_ok=True)
                os.rename(artifact.uri, uri)  # whole, or not at all
        published[key] = dataclasses.replace(artifact, uri=uri)
    return published
