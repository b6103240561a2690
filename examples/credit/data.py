"""Spans of a credit-risk-like table from scikit-learn's bundled breast-cancer data (569 rows, 30
numeric features) plus a categorical `region`, with a fixed seed: span-1.csv, span-2.csv (its
`mean_radius` drifted: x1.8), span-3.csv. `python data.py OUT_DIR`."""

from __future__ import annotations

import os
import sys

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv


def write_spans(out: str, spans: int = 3, drifted: int = 2) -> list[str]:
    from sklearn.datasets import load_breast_cancer

    data = load_breast_cancer()
    rng = np.random.default_rng(0)
    columns = {name.replace(" ", "_"): data.data[:, i] for i, name in enumerate(data.feature_names)}
    columns["region"] = rng.choice(["north", "south", "east"], len(data.target))
    columns["label"] = data.target
    order = rng.permutation(len(data.target))
    os.makedirs(out, exist_ok=True)
    paths = []
    for span, rows in enumerate(np.array_split(order, spans), start=1):
        part = {k: v[rows] for k, v in columns.items()}
        if span == drifted:
            part["mean_radius"] = part["mean_radius"] * 1.8
        path = os.path.join(out, f"span-{span}.csv")
        pacsv.write_csv(pa.table(part), path)
        paths.append(path)
    return paths


if __name__ == "__main__":
    print("\n".join(write_spans(sys.argv[1] if len(sys.argv) > 1 else "data")))
