"""`tfprod inspect DIR`: what `saved_model_cli show --all` tells, plus the audit metadata, the graph scan and the
files, for people (rich tables) or machines (`--json`). DIR is a version directory, or a model's
base path (its newest version is shown)."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from collections.abc import Sequence
from typing import Any

from tensorflow.core.protobuf import saved_model_pb2

from tfprod.format.audit import read_metadata
from tfprod.format.saved_model import is_complete, read_saved_model
from tfprod.security import graph_scan
from tfprod.security.signing import SIGNATURE_FILE
from tfprod.servables import tflite
from tfprod.servables.tflite import TFLITE_FILE
from tfprod.signature import DTYPES


def _has_model(path: str) -> bool:
    return is_complete(path) or os.path.isfile(os.path.join(path, TFLITE_FILE))


def _version_dir(path: str) -> str:
    if _has_model(path):
        return path
    versions = sorted((int(d) for d in os.listdir(path) if d.isdigit() and _has_model(os.path.join(path, d))),
                      reverse=True)
    if not versions:
        raise FileNotFoundError(f"{path} holds no saved_model.pb(txt) or {TFLITE_FILE}, and no numbered version "
                                "directory with one")
    return os.path.join(path, str(versions[0]))


def _tensor(info: Any) -> dict[str, Any]:
    shape = None if info.tensor_shape.unknown_rank else [d.size for d in info.tensor_shape.dim]
    dtype = DTYPES.get(info.dtype, (f"DataType({info.dtype})",))[0]
    return {"dtype": dtype, "shape": shape}


def describe(path: str) -> dict[str, Any]:
    version_dir = _version_dir(path)
    if is_complete(version_dir):
        saved = read_saved_model(version_dir)
    else:  # only model.tflite: its signatures (the graph scan reads SavedModel graphs only)
        saved = saved_model_pb2.SavedModel()
        saved.meta_graphs.add().CopyFrom(tflite.read_meta_graph(version_dir))
    meta_graphs = []
    for mg in saved.meta_graphs:
        meta_graphs.append({
            "tags": sorted(mg.meta_info_def.tags),
            "signatures": {
                name: {"method_name": sig.method_name,
                       "inputs": {k: _tensor(v) for k, v in sorted(sig.inputs.items())},
                       "outputs": {k: _tensor(v) for k, v in sorted(sig.outputs.items())}}
                for name, sig in sorted(mg.signature_def.items()) if not name.startswith("__")},
            # what the server's graph scan would say (docs/security.md): ops outside the allowlist
            "graph_scan": [dataclasses.asdict(f) for f in graph_scan.scan(mg)] if mg.graph_def.node or
            mg.graph_def.library.function else None,
        })
    files = []
    for root, _, names in os.walk(version_dir):
        for name in sorted(names):
            full = os.path.join(root, name)
            files.append({"path": os.path.relpath(full, version_dir), "bytes": os.path.getsize(full)})
    lite = os.path.join(version_dir, TFLITE_FILE)
    return {"path": os.path.abspath(version_dir), "meta_graphs": meta_graphs, "audit": read_metadata(version_dir),
            "tflite_bytes": os.path.getsize(lite) if os.path.isfile(lite) else None,
            "signed": os.path.isfile(os.path.join(version_dir, SIGNATURE_FILE)),
            "files": sorted(files, key=lambda f: f["path"])}


def _show(doc: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    console.print(f"[bold]{doc['path']}[/bold]")
    for mg in doc["meta_graphs"]:
        for name, sig in mg["signatures"].items():
            table = Table(title=f"signature '{name}' ({sig['method_name']}), tags {mg['tags']}", title_justify="left")
            for col in ("", "name", "dtype", "shape"):
                table.add_column(col)
            for kind in ("inputs", "outputs"):
                for tname, t in sig[kind].items():
                    shape = "unknown rank" if t["shape"] is None else str(t["shape"])
                    table.add_row(kind[:-1], tname, t["dtype"], shape)
            console.print(table)
        if mg["graph_scan"] is None:
            console.print(f"graph scan: n/a ({TFLITE_FILE} only)")
        elif mg["graph_scan"]:
            table = Table(title=f"graph scan, tags {mg['tags']}: ops outside the allowlist", title_justify="left")
            for col in ("op", "reachable from", "why"):
                table.add_column(col)
            for f in mg["graph_scan"]:
                table.add_row(f["op"], f["root"], f["reason"])
            console.print(table)
        else:
            console.print(f"graph scan, tags {mg['tags']}: [green]clean[/green] (every reachable op is allowed)")
    if doc["tflite_bytes"] is not None:
        console.print(f"{TFLITE_FILE}: {doc['tflite_bytes']:,} bytes (LiteRT; `tfprod serve --prefer_tflite_model` "
                      "serves it when a SavedModel is there too)")
    console.print("signature: " + (f"{SIGNATURE_FILE} present (check it with `tfprod verify`)" if doc["signed"]
                                   else "[yellow]unsigned[/yellow] (`tfprod sign` signs it)"))
    if doc["audit"] is None:
        console.print("audit metadata: [yellow]none[/yellow] (not exported with tfprod.export)")
    else:
        table = Table(title="audit metadata", title_justify="left")
        table.add_column("field")
        table.add_column("value")
        for key, value in sorted(doc["audit"].items()):
            table.add_row(key, value if isinstance(value, str) else json.dumps(value))
        console.print(table)
    table = Table(title="files", title_justify="left")
    table.add_column("path")
    table.add_column("bytes", justify="right")
    for f in doc["files"]:
        table.add_row(f["path"], f"{f['bytes']:,}")
    console.print(table)


def main(argv: Sequence[str]) -> int:
    p = argparse.ArgumentParser(prog="tfprod inspect", description=__doc__)
    p.add_argument("dir", help="a SavedModel version directory, or a base path of numbered versions")
    p.add_argument("--json", action="store_true", help="print JSON instead of tables")
    args = p.parse_args(argv)
    try:
        doc = describe(args.dir)
    except (OSError, ValueError) as e:
        print(f"tfprod inspect: error: {e}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(doc, indent=2))
    else:
        _show(doc)
    return 0
