"""Export a model as a servable version with its contract: signatures and audit metadata.

    version_dir = tfprod.export.save(model, "models/credit", metadata={
        "owner": "risk-team", "approval_id": "CR-2026-114", "source_revision": "9f1c2e7",
        "training_params": {"epochs": 30}, "training_data_sha256": data_fingerprint(x_train, y_train),
        "metrics": {"accuracy": 0.97}})

Keras 3 models go through Keras's own export (`ExportArchive`), whose SavedModels convert to
TFLite in every quantization mode; `tf.Module`s through `tf.saved_model.save`. The audit metadata
is validated against `METADATA_SCHEMA` and stored in `assets.extra/tfprod_metadata.json` (TF
Serving also keeps its extras there), with the creation time and the tfprod and TF versions added.
A version is written beside its final place and renamed into it, so a polling server never sees
half of it.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jsonschema
import numpy as np

from tfprod import __version__

METADATA_FILE = os.path.join("assets.extra", "tfprod_metadata.json")

METADATA_SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "type": "object",
    "properties": {
        "owner": {"type": "string", "minLength": 1},
        "approval_id": {"type": "string", "minLength": 1},
        "source_revision": {"type": "string", "minLength": 1},
        "description": {"type": "string"},
        "training_params": {"type": "object"},
        "training_data_sha256": {"type": "string", "pattern": "^[0-9a-f]{64}$"},
        "metrics": {"type": "object", "additionalProperties": {"type": "number"}},
        "created_at": {"type": "string", "format": "date-time"},
        "tfprod_version": {"type": "string"},
        "tensorflow_version": {"type": "string"},
    },
    "required": ["created_at", "tfprod_version", "tensorflow_version"],
    "additionalProperties": {"type": ["string", "number", "boolean", "object", "array", "null"]},
}


class ExportError(ValueError):
    pass


def data_fingerprint(*arrays: Any) -> str:
    """sha256 of the training data: each array's dtype, shape and bytes, in order."""
    digest = hashlib.sha256()
    for value in arrays:
        arr = np.ascontiguousarray(value)
        digest.update(f"{arr.dtype.str}{arr.shape}".encode())
        digest.update(arr.tobytes() if arr.dtype != object else repr(arr.tolist()).encode())
    return digest.hexdigest()


def validate_metadata(metadata: Mapping[str, Any]) -> None:
    try:
        jsonschema.validate(dict(metadata), METADATA_SCHEMA, format_checker=jsonschema.FormatChecker())
    except jsonschema.ValidationError as e:
        where = "/".join(str(p) for p in e.absolute_path) or "(top level)"
        raise ExportError(f"audit metadata is invalid at {where}: {e.message}") from None


def read_metadata(version_dir: str) -> dict[str, Any] | None:
    path = os.path.join(version_dir, METADATA_FILE)
    if not os.path.isfile(path):
        return None
    with open(path, encoding="utf-8") as f:
        doc: dict[str, Any] = json.load(f)
    return doc


Endpoint = tuple[Callable[..., Any], Sequence[Any]]  # (function, input_signature of tf.TensorSpec)


def save(model: Any, base_path: str, *, version: int | None = None,
         signatures: Mapping[str, Endpoint] | None = None,
         metadata: Mapping[str, Any] | None = None) -> str:
    """Write `model` as `base_path/<version>` (the next free number by default); return that path.

    `signatures` maps signature names to (function, input_signature); without it a Keras model gets
    its call as `serving_default`, and a tf.Module must already define its signatures in this
    argument. Fails before writing anything if the metadata does not validate."""
    import tensorflow as tf

    doc = {**(metadata or {}),
           "created_at": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
           "tfprod_version": __version__, "tensorflow_version": tf.__version__}
    validate_metadata(doc)
    os.makedirs(base_path, exist_ok=True)
    if version is None:
        numbers = [int(d) for d in os.listdir(base_path) if d.isdigit()]
        version = max(numbers, default=0) + 1
    final = os.path.join(base_path, str(version))
    if os.path.exists(final):
        raise ExportError(f"{final} exists: versions are immutable; export a new version number")
    staging = tempfile.mkdtemp(prefix=".export-", dir=base_path)  # not a number: no server loads it
    try:
        target = os.path.join(staging, "model")
        if isinstance(model, tf.keras.Model):
            _export_keras(model, target, signatures)
        else:
            if not signatures:
                raise ExportError("a tf.Module needs `signatures`: {name: (function, input_signature)}")
            tf.saved_model.save(model, target, signatures={
                name: tf.function(fn).get_concrete_function(*spec) for name, (fn, spec) in signatures.items()})
        os.makedirs(os.path.join(target, "assets.extra"), exist_ok=True)
        with open(os.path.join(target, METADATA_FILE), "w", encoding="utf-8") as f:
            json.dump(doc, f, indent=2, sort_keys=True)
        os.rename(target, final)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return final


def _export_keras(model: Any, path: str, signatures: Mapping[str, Endpoint] | None) -> None:
    import keras

    if not signatures:
        model.export(path, format="tf_saved_model", verbose=False)
        return
    if "serving_default" not in signatures:
        raise ExportError("signatures must include 'serving_default', the signature TF Serving clients call "
                          "by default")
    archive = keras.export.ExportArchive()
    archive.track(model)
    for name, (fn, spec) in signatures.items():
        archive.add_endpoint(name, fn, list(spec))
    archive.write_out(path, verbose=False)
