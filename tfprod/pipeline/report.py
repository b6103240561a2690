"""A run's report: `ROOT/reports/RUN_ID/report.md` with `features.png` (each feature's
distribution in this span against the drift baseline, with its drift measure) and
`evaluation.png` (the candidate against the baseline model, overall and per slice)."""

from __future__ import annotations

import math
import os
from typing import Any

from tfprod.pipeline import storage
from tfprod.pipeline.components import evaluator, statisticsgen
from tfprod.pipeline.runner import RunResult
from tfprod.pipeline.store import MetadataStore
from tfprod.pipeline.validate import rebucket, standard_histogram

MAX_FEATURES = 36


def write(result: RunResult, root: str, store: MetadataStore) -> str:
    import matplotlib

    matplotlib.use("Agg")
    # on an object-storage root the report is written here (./tfprod-reports/RUN) and uploaded beside the artifacts
    folder = os.path.join("tfprod-reports", result.run_id) if storage.remote(root) else os.path.join(
        root, "reports", result.run_id)
    os.makedirs(folder, exist_ok=True)
    lines = [f"# Run {result.run_id}", "", "| component | state | seconds | note |", "|---|---|---|---|"]
    for s in result.steps:
        lines.append(f"| {s.component} | {s.state} | {s.seconds:.1f} | {s.message.replace('|', '/')[:300]} |")
    if result.stopped:
        lines += ["", f"**Stopped** by {result.stopped}"]
    examples = next((s.outputs.get("examples") for s in result.steps if "examples" in s.outputs), None)
    if examples is not None:
        p = examples.properties
        lines += ["", "## Data", "", f"Span {p.get('span')}, rows {p.get('rows')}, "
                  f"fingerprint `{p.get('fingerprint')}`"]
    statistics = next((s.outputs["statistics"] for s in result.steps if "statistics" in s.outputs), None)
    anomalies = next((s.outputs["anomalies"] for s in result.steps if "anomalies" in s.outputs), None)
    if statistics is not None:
        baseline = None
        baseline_id = anomalies.properties.get("drift_baseline_statistics_id") if anomalies is not None else None
        if baseline_id is not None:  # the statistics the validator compared with
            baseline = store.artifact(baseline_id)
        measures = (anomalies.properties.get("measurements") or {}).get("train", {}) if anomalies else {}
        _features(statistics, baseline, measures, os.path.join(folder, "features.png"))
        lines += ["", "## Statistics and drift (train split)", "",
                  f"Against span {baseline.properties.get('span')}" if baseline else "No drift baseline (first span).",
                  "", "![features](features.png)"]
        found = (anomalies.properties.get("anomalies") or {}) if anomalies else {}
        lines += ["", "## Anomalies", ""] + ([f"- {split}: {a}" for split, items in found.items() for a in items]
                                              or ["None."])
    evaluation = next((s.outputs["evaluation"] for s in result.steps if "evaluation" in s.outputs), None)
    doc = evaluator.load(evaluation) if evaluation is not None else None
    if doc is not None:
        _evaluation(doc, os.path.join(folder, "evaluation.png"))
        lines += ["", "## Evaluation", "", f"Blessed: **{doc['blessed']}**" + (
            f" ({'; '.join(doc['reasons'])})" if doc["reasons"] else ""), "",
            f"Thresholds {doc['thresholds']}; change thresholds {doc['change_thresholds']} "
            + (f"against model {doc['baseline_model']}" if doc["baseline_model"] else "(no baseline yet: not applied)"),
            "", "| slice | " + " | ".join(doc["candidate"]["overall"]) + " |",
            "|---|" + "---|" * len(doc["candidate"]["overall"])]
        for name, values in {"overall": doc["candidate"]["overall"], **doc["candidate"]["slices"]}.items():
            lines.append(f"| {name} | " + " | ".join(f"{v:.4g}" for v in values.values()) + " |")
        lines += ["", "![evaluation](evaluation.png)"]
    path = os.path.join(folder, "report.md")
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")
    if storage.remote(root):
        storage.upload(folder, storage.join(root, "reports", result.run_id))
    return path


def _features(statistics: Any, baseline: Any, measures: dict[str, dict[str, float]], path: str) -> None:
    import matplotlib.pyplot as plt
    import numpy as np

    current = statisticsgen.load(statistics, "train")
    before = statisticsgen.load(baseline, "train") if baseline is not None else None
    features = list(current.features)[:MAX_FEATURES]
    cols = 6
    rows = max(1, math.ceil(len(features) / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(cols * 2.6, rows * 2.0), squeeze=False)
    for ax in axes.flat:
        ax.set_visible(False)
    for ax, f in zip(axes.flat, features, strict=False):
        ax.set_visible(True)
        name = f.path.step[0]
        other = next((g for g in before.features if list(g.path.step) == [name]), None) if before else None
        drift = measures.get(name, {})
        short = {"drift_JENSEN_SHANNON_DIVERGENCE": "JS divergence", "drift_L_INFTY": "L-inf distance"}
        label = ", ".join(f"{short.get(k, k)} {v:.3f}" for k, v in drift.items() if k.startswith("drift"))
        if f.HasField("string_stats"):
            buckets = list(f.string_stats.rank_histogram.buckets)[:8]
            labels = [b.label for b in buckets]
            total = f.string_stats.common_stats.num_non_missing or 1
            ax.bar(range(len(labels)), [b.sample_count / total for b in buckets], color="tab:blue", alpha=0.7)
            if other is not None:
                shares = {b.label: b.sample_count / (other.string_stats.common_stats.num_non_missing or 1)
                          for b in other.string_stats.rank_histogram.buckets}
                ax.bar(range(len(labels)), [shares.get(v, 0.0) for v in labels], color="tab:orange", alpha=0.5)
            ax.set_xticks(range(len(labels)), labels, fontsize=6, rotation=45)
        else:
            hist = standard_histogram(f)
            if hist is None:
                continue
            edges = sorted({x for b in hist.buckets for x in (b.low_value, b.high_value)})
            theirs_hist = standard_histogram(other) if other is not None else None
            if theirs_hist is not None:
                edges = sorted({*edges, *(x for b in theirs_hist.buckets for x in (b.low_value, b.high_value))})
            if len(edges) < 2:
                continue
            mids = (np.array(edges[:-1]) + np.array(edges[1:])) / 2
            widths = np.diff(edges)
            mine = rebucket(hist, edges)
            ax.bar(mids, mine / max(mine.sum(), 1), width=widths, color="tab:blue", alpha=0.7)
            if theirs_hist is not None:
                theirs = rebucket(theirs_hist, edges)
                ax.bar(mids, theirs / max(theirs.sum(), 1), width=widths, color="tab:orange", alpha=0.5)
            ax.tick_params(labelsize=6)
        ax.set_title(f"{name}" + (f"\n{label}" if label else ""), fontsize=7)
    fig.suptitle("train split: this span (blue) against the drift baseline (orange)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def _evaluation(doc: dict[str, Any], path: str) -> None:
    import matplotlib.pyplot as plt
    import numpy as np

    metric = next(iter(doc["thresholds"] or doc["change_thresholds"]), "accuracy")
    names = ["overall", *doc["candidate"]["slices"]]
    candidate = [doc["candidate"]["overall"].get(metric, np.nan), *(
        v.get(metric, np.nan) for v in doc["candidate"]["slices"].values())]
    fig, ax = plt.subplots(figsize=(max(4, len(names) * 1.2), 3))
    x = np.arange(len(names))
    ax.bar(x - 0.2, candidate, 0.4, label="candidate")
    if doc.get("baseline"):
        base = [doc["baseline"]["overall"].get(metric, np.nan), *(
            doc["baseline"]["slices"].get(n, {}).get(metric, np.nan) for n in names[1:])]
        ax.bar(x + 0.2, base, 0.4, label=f"baseline (model {doc['baseline_model']})")
    bound = (doc["thresholds"].get(metric) or {}).get("lower")
    if bound is not None:
        ax.axhline(bound, linestyle="--", color="grey", linewidth=0.8, label=f"threshold {bound}")
    ax.set_xticks(x, names, fontsize=7)
    ax.set_ylabel(metric)
    ax.set_title(f"{metric}: blessed {doc['blessed']}", fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
