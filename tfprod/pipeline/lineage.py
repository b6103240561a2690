"""`tfprod lineage BASE_PATH VERSION [--json]`: where a served version came from.

The version's audit metadata names the pipeline's metadata store; from the push there, the chain
is walked back through the store's events: the Pusher's inputs (model, blessing, infra
validation), the Trainer's (transformed examples, transform graph), the Transform's (examples),
the ExampleGen that wrote them (span, fingerprint, files), and the statistics, anomalies and
schema computed on those examples.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from typing import Any

from tfprod.format.audit import read_metadata
from tfprod.pipeline.components import evaluator as evaluator_component
from tfprod.pipeline.store import Artifact, Execution, MetadataStore


class LineageError(Exception):
    pass


def _one(found: dict[str, list[Artifact]], role: str) -> Artifact | None:
    artifacts = found.get(role) or []
    return artifacts[0] if artifacts else None


def _produced_by(store: MetadataStore, artifact: Artifact | None) -> Execution | None:
    return store.producer(artifact.id) if artifact is not None and artifact.id is not None else None


def _consumer_output(store: MetadataStore, artifact: Artifact | None, component_type: str, role: str
                     ) -> tuple[Execution | None, Artifact | None]:
    if artifact is None or artifact.id is None:
        return None, None
    for execution in reversed(store.consumers(artifact.id)):
        if execution.type == component_type and execution.state in ("COMPLETE", "CACHED"):
            return execution, _one(store.outputs_of(execution.id), role)
    return None, None


def chain(version_dir: str, metadata_url: str = "") -> dict[str, Any]:
    version_dir = os.path.abspath(version_dir)
    audit = read_metadata(version_dir)
    if not audit or "pipeline" not in audit:
        raise LineageError(f"{version_dir} has no pipeline audit metadata: it was not pushed by a tfprod pipeline")
    url = metadata_url or audit["pipeline"].get("metadata_url")
    if not url:
        raise LineageError("the audit metadata names no metadata store: pass --metadata URL")
    if url.startswith("sqlite:///") and not os.path.isfile(url[len("sqlite:///"):]):
        raise LineageError(f"the metadata store {url} does not exist (moved? pass --metadata URL)")
    try:
        store = MetadataStore(url, create=False)
    except Exception as e:  # a URL SQLAlchemy cannot open
        raise LineageError(f"cannot open the metadata store {url}: {e}") from None
    try:
        pushes = store.artifacts("PushedModel")
        pushed = next((a for a in pushes if a.properties.get("path") == version_dir), None)
        if pushed is None:  # copied since (a server's cache of object storage, another mount): the same push
            model_id, number = audit["pipeline"].get("model_artifact"), os.path.basename(version_dir)
            pushed = next((a for a in pushes if model_id is not None and a.properties.get("model_id") == model_id
                           and str(a.properties.get("version")) == number), None)
        if pushed is None:
            raise LineageError(f"the store {url} has no push of {version_dir}")
        pusher = _produced_by(store, pushed)
        assert pusher is not None
        inputs = store.inputs_of(pusher.id)
        model, blessing, infra = _one(inputs, "model"), _one(inputs, "blessing"), _one(inputs, "infra_blessing")
        trainer = _produced_by(store, model)
        trainer_in = store.inputs_of(trainer.id) if trainer else {}
        graph = _one(trainer_in, "transform_graph")
        transform = _produced_by(store, graph)
        examples = _one(store.inputs_of(transform.id), "examples") if transform else None
        _, statistics = _consumer_output(store, examples, "StatisticsGen", "statistics")
        validator, anomalies = _consumer_output(store, statistics, "ExampleValidator", "anomalies")
        schema = _one(store.inputs_of(validator.id), "schema") if validator else None
        evaluator = _produced_by(store, blessing)
        evaluation = _one(store.outputs_of(evaluator.id), "evaluation") if evaluator else None
        details = (evaluator_component.load(evaluation) if evaluation is not None else None) or {}
        props = (lambda a: dict(a.properties) if a is not None else None)  # noqa: E731
        return {
            "version": int(os.path.basename(version_dir)) if os.path.basename(version_dir).isdigit() else None,
            "path": version_dir,
            "metadata_url": url,
            "data": {**(props(examples) or {}), "artifact": examples.id if examples else None},
            "statistics": {"uri": statistics.uri if statistics else None},
            "anomalies": props(anomalies),
            "schema": {**(props(schema) or {}), "uri": schema.uri if schema else None},
            "transform": {"analyzers": (props(graph) or {}).get("analyzers"), "uri": graph.uri if graph else None},
            "training": {"run_id": trainer.properties.get("run_id") if trainer else None,
                         "hyperparameters": (audit.get("training_params") or {}),
                         "metrics": (props(model) or {}).get("metrics"),
                         "code_version": audit["pipeline"].get("code_version"),
                         "source_revision": audit.get("source_revision")},
            "evaluation": {"overall": details.get("candidate", {}).get("overall"),
                           "slices": details.get("candidate", {}).get("slices"),
                           "thresholds": details.get("thresholds"),
                           "change_thresholds": details.get("change_thresholds"),
                           "baseline_model": details.get("baseline_model"),
                           "baseline": (details.get("baseline") or {}).get("overall")},
            "blessing": props(blessing),
            "infra_validation": props(infra),
            "push": props(pushed),
        }
    except LineageError:
        raise
    except Exception as e:  # not a tfprod store, or one from another version
        raise LineageError(f"cannot read the metadata store {url}: {str(e)[:300]}") from None
    finally:
        store.close()


def _show(doc: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.tree import Tree

    tree = Tree(f"[bold]version {doc['version']}[/bold]  {doc['path']}")
    push = doc["push"] or {}
    tree.add(f"pushed {push.get('pushed_at')} by {push.get('pushed_by')}"
             + (f", signed ({push.get('signer_key', '')[:23]}…)" if push.get("signed") else ", not signed"))
    blessing = doc["blessing"] or {}
    ev = doc["evaluation"]
    node = tree.add(f"blessed: {blessing.get('blessed')}" + (f" ({'; '.join(blessing['reasons'])})"
                                                             if blessing.get("reasons") else ""))
    node.add(f"metrics {_fmt(ev['overall'])}; thresholds {ev['thresholds']}; change thresholds "
             f"{ev['change_thresholds']} against model {ev['baseline_model']} {_fmt(ev['baseline'])}")
    for name, values in (ev.get("slices") or {}).items():
        node.add(f"slice {name}: {_fmt(values)}")
    infra = doc["infra_validation"] or {}
    tree.add(f"infra validation: {infra.get('requests')} requests over REST and gRPC, answers equal")
    train = doc["training"]
    tree.add(f"trained in run {train['run_id']}: hyper-parameters {train['hyperparameters']}, metrics "
             f"{_fmt(train['metrics'])}, code {train['code_version']} ({train['source_revision']})")
    tree.add(f"transform: {len(doc['transform']['analyzers'] or [])} analyzers  {doc['transform']['uri']}")
    data = doc["data"]
    tree.add(f"data: span {data.get('span')}, fingerprint {str(data.get('fingerprint'))[:16]}…, rows "
             f"{data.get('rows')}, files {data.get('files')}")
    anomalies = doc["anomalies"] or {}
    tree.add(f"validation: {'no anomalies' if anomalies.get('blessed') else anomalies.get('anomalies')}; drift "
             f"against span {anomalies.get('drift_baseline_span')}; schema {doc['schema'].get('source')}")
    tree.add(f"statistics: {doc['statistics']['uri']}")
    Console().print(tree)


def _fmt(values: dict[str, float] | None) -> str:
    if not values:
        return "-"
    return "{" + ", ".join(f"{k}: {v:.4g}" if isinstance(v, float) else f"{k}: {v}" for k, v in values.items()) + "}"


def main(argv: Sequence[str]) -> int:
    p = argparse.ArgumentParser(prog="tfprod lineage", description=__doc__.split("\n\n")[0])
    p.add_argument("base_path", help="the model's base path (or a version directory, without VERSION)")
    p.add_argument("version", nargs="?", help="the version number")
    p.add_argument("--metadata", default="", help="the store's URL (default: the one the audit metadata names)")
    p.add_argument("--json", action="store_true", help="print JSON for machines")
    args = p.parse_args(argv)
    version_dir = os.path.join(args.base_path, args.version) if args.version else args.base_path
    if not os.path.isdir(version_dir):
        print(f"tfprod lineage: error: {version_dir} is not a directory", file=sys.stderr)
        return 1
    try:
        doc = chain(version_dir, args.metadata)
    except LineageError as e:
        print(f"tfprod lineage: error: {e}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(doc, indent=1, default=str))
    else:
        _show(doc)
    return 0
