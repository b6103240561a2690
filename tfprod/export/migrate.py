"""`tfprod migrate MODEL.h5|MODEL.keras BASE_PATH [--metadata audit.json] [--warmup request.json]`:
a Keras file becomes a servable SavedModel version, with audit metadata and warmup records.

`.h5` and `.keras` files carry weights and an architecture but no serving signatures; TF Serving
cannot serve them, and neither will tfprod. Loading uses Keras's safe mode: a Lambda layer (or any
object whose loading would run code stored in the file) is refused with a clear error instead of
being executed. The version is written by `tfprod.export.save` (atomic, with audit metadata).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from typing import Any

from tfprod.format.saved_model import is_complete

KERAS_SUFFIXES = (".h5", ".hdf5", ".keras")


class MigrateError(ValueError):
    pass


def _lambda_layers(config: Any) -> list[str]:
    """Names of Lambda layers anywhere in a Keras model config."""
    found: list[str] = []
    if isinstance(config, dict):
        if config.get("class_name") == "Lambda":
            found.append(str(config.get("config", {}).get("name", "lambda")))
        for value in config.values():
            found += _lambda_layers(value)
    elif isinstance(config, list):
        for value in config:
            found += _lambda_layers(value)
    return found


def _h5_config(path: str) -> Any:
    import h5py

    with h5py.File(path, "r") as f:
        raw = f.attrs.get("model_config")
    if raw is None:
        raise MigrateError(f"{path} holds weights only (no model_config): rebuild the model in code, load the "
                           "weights, and export it with tfprod.export.save")
    return json.loads(raw.decode() if isinstance(raw, bytes) else raw)


def migrate(source: str, base_path: str, version: int | None = None,
            metadata: dict[str, Any] | None = None, warmup: Sequence[dict[str, Any]] = ()) -> str:
    import keras

    from tfprod.export import save

    if not source.endswith(KERAS_SUFFIXES):
        raise MigrateError(f"{source}: expected a Keras file ({', '.join(KERAS_SUFFIXES)})")
    if not os.path.isfile(source):
        raise MigrateError(f"{source}: no such file")
    if source.endswith((".h5", ".hdf5")):
        lambdas = _lambda_layers(_h5_config(source))
        if lambdas:  # legacy H5 deserializes Lambda layers from marshalled bytecode: never load them
            raise MigrateError(f"{source} has Lambda layers ({', '.join(lambdas)}), whose code would run on load; "
                               "replace them with real layers in code, load the weights, and export with "
                               "tfprod.export.save")
    try:
        model = keras.models.load_model(source, compile=False, safe_mode=True)
    except ValueError as e:
        raise MigrateError(f"{source} cannot be loaded safely: {e}") from None
    return save(model, base_path, version=version, warmup=warmup,
                metadata={"description": f"migrated from {os.path.basename(source)}", **(metadata or {})})


def keras_files_without_saved_model(base_path: str) -> list[str]:
    """Keras files in a base path (or its version directories) that hold no SavedModel: what a user
    who points the server at .h5 files has; `[base_path]` when it is such a file itself."""
    if os.path.isfile(base_path) and base_path.endswith(KERAS_SUFFIXES):
        return [base_path]
    if not os.path.isdir(base_path):
        return []
    found = []
    for entry in sorted(os.listdir(base_path)):
        full = os.path.join(base_path, entry)
        if entry.endswith(KERAS_SUFFIXES):
            found.append(full)
        elif entry.isdigit() and os.path.isdir(full) and not is_complete(full):
            found += [os.path.join(full, f) for f in sorted(os.listdir(full)) if f.endswith(KERAS_SUFFIXES)]
    return found


def _json(path: str) -> dict[str, Any]:
    with open(path, encoding="utf-8") as f:
        doc = json.load(f)
    if not isinstance(doc, dict):
        raise MigrateError(f"{path}: expected a JSON object")
    return doc


def main(argv: Sequence[str]) -> int:
    p = argparse.ArgumentParser(prog="tfprod migrate", description=__doc__)
    p.add_argument("source", help="a .h5 or .keras model file")
    p.add_argument("base_path", help="the model's base path; the version goes to BASE_PATH/<version>")
    p.add_argument("--version", type=int, help="version number (default: the next free one)")
    p.add_argument("--metadata", help="a JSON file of audit metadata (owner, approval_id, metrics, ...)")
    p.add_argument("--warmup", action="append", default=[],
                   help="a predict request in TF Serving's JSON form, replayed as warmup (repeatable)")
    args = p.parse_args(argv)
    try:
        metadata = _json(args.metadata) if args.metadata else None
        warmup = [_json(f) for f in args.warmup]
        path = migrate(args.source, args.base_path, args.version, metadata, warmup)
    except (MigrateError, OSError, ValueError) as e:
        print(f"tfprod migrate: error: {e}", file=sys.stderr)
        return 1
    print(f"wrote {path}; serve it with: tfprod serve --model_base_path={os.path.abspath(args.base_path)}")
    return 0
