"""One component of a run, in a process of its own: what an orchestrator's task runs.

    tfprod pipeline step PIPELINE.py COMPONENT --run_id RUN [--upstream HANDOFF ...]

Every task of one orchestrated run passes the same RUN (Airflow's `run_id`, the KFP job's name):
the steps meet in the metadata store under that run's context, as the in-process runner's do.
A step finds its inputs in the handoffs of the tasks upstream (KFP passes them as parameters) or,
without them, as the outputs its producers published in RUN (Airflow). It prints its own handoff,
a JSON line naming the artifacts it published (id, type, URI), as its last line of output.

When a step stops the run (anomalies, a model not blessed), its handoff says so and the steps
after it do nothing but pass that on (`--stop_exit_code` lets an orchestrator skip them instead:
Airflow skips a task that exits 99). The caching, the staging and the all-or-nothing publishing
are the in-process runner's own (`runner.step`).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from tfprod.pipeline import runner
from tfprod.pipeline.dsl import Component, Pipeline, PipelineError
from tfprod.pipeline.store import Artifact, MetadataStore


def run_step(pipeline: Pipeline, component_id: str, run_id: str, upstream: Sequence[str] = (), *,
             use_cache: bool = True, progress: Callable[[str, str], None] | None = None) -> dict[str, Any]:
    """Run `component_id` of `pipeline` as a step of `run_id`; its handoff (a JSON-able dict)."""
    component = next((c for c in pipeline.components if c.id == component_id), None)
    if component is None:
        raise PipelineError(f"the pipeline {pipeline.name} has no component {component_id!r} "
                            f"(it has {[c.id for c in pipeline.components]})")
    if not run_id:
        raise PipelineError("--run_id is empty: every task of one run must pass the same run id")
    handoffs = []
    for text in upstream:
        try:
            handoff = json.loads(text)
            if not isinstance(handoff, dict) or "outputs" not in handoff:
                raise ValueError("not a handoff")
        except ValueError:
            raise PipelineError(f"--upstream {text[:200]!r} is not the handoff of a tfprod pipeline step") from None
        handoffs.append(handoff)
    if "://" not in pipeline.root:
        os.makedirs(pipeline.root, exist_ok=True)
    store = MetadataStore(pipeline.store_url())
    try:
        current = runner.open_run(pipeline, store, run_id, runner.Engine(), use_cache, progress)
        stopped = next((h["stopped"] for h in handoffs if h.get("stopped")), "") or _stopped(store, current)
        if stopped:
            (progress or (lambda _c, _m: None))(component.id, f"skipped: the run was stopped by {stopped}")
            return _handoff(pipeline, run_id, component.id, "SKIPPED", {}, stopped)
        inputs = {name: [_input(store, current, component, name, ch.producer.id, ch.key, handoffs)]
                  for name, ch in component.inputs.items()}
        result = runner.step(current, component, inputs)
        stop = f"{component.id}: {result.message}" if result.stops else ""
        return _handoff(pipeline, run_id, component.id, result.state, result.outputs, stop)
    finally:
        store.close()


def _stopped(store: MetadataStore, run: runner.Run) -> str:
    for e in store.executions(run.contexts[1]):
        if e.properties.get("stop_reason"):
            return f"{e.component}: {e.properties['stop_reason']}"
    return ""


def _input(store: MetadataStore, run: runner.Run, component: Component, name: str, producer: str, key: str,
           handoffs: Sequence[Mapping[str, Any]]) -> Artifact:
    for h in handoffs:
        if h.get("component") == producer and key in h["outputs"]:
            found = store.artifact(int(h["outputs"][key]["id"]))
            if found is None:
                raise PipelineError(f"{component.id}.{name}: artifact {h['outputs'][key]['id']} of {producer} is not "
                                    f"in the metadata store at {store.public_url}")
            return found
    done = [e for e in store.executions(run.contexts[1])
            if e.component == producer and e.state in ("COMPLETE", "CACHED")]
    if done:
        outputs = store.outputs_of(done[-1].id).get(key)
        if outputs:
            return outputs[0]
    raise PipelineError(f"{component.id}.{name} reads {producer}.{key}, which run {run.run_id} has not produced: "
                        f"run {producer} first (or pass its handoff with --upstream)")


def _handoff(pipeline: Pipeline, run_id: str, component: str, state: str, outputs: Mapping[str, Artifact],
             stopped: str) -> dict[str, Any]:
    return {"pipeline": pipeline.name, "run_id": run_id, "component": component, "state": state,
            "outputs": {k: {"id": a.id, "type": a.type, "uri": a.uri} for k, a in outputs.items()},
            "stopped": stopped}
