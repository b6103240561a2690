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

import dataclasses
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
from tfprod.format.audit import METADATA_FILE

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



Endpoint = tuple[Callable[..., Any], Sequence[Any]]  # (function, input_signature of tf.TensorSpec)


@dataclasses.dataclass(frozen=True)
class ExampleSignature:
    """A classify or regress signature over serialized tf.Examples, as TF Serving's :classify and
    :regress APIs call them: the examples are parsed with `features` (a tf.io feature spec) and
    passed to `fn`, which returns {"classes", "scores"} (classify) or {"outputs"} (regress)."""

    method: str  # "classify" or "regress"
    features: Mapping[str, Any]
    fn: Callable[[dict[str, Any]], dict[str, Any]]

    def endpoint(self) -> Endpoint:
        import tensorflow as tf

        def run(examples: Any) -> dict[str, Any]:
            return self.fn(tf.io.parse_example(examples, dict(self.features)))
        return run, [tf.TensorSpec([None], tf.string, name="inputs")]


def save(model: Any, base_path: str, *, version: int | None = None,
         signatures: Mapping[str, Endpoint | ExampleSignature] | None = None,
         metadata: Mapping[str, Any] | None = None,
         warmup: Sequence[Mapping[str, Any]] = ()) -> str:
    """Write `model` as `base_path/<version>` (the next free number by default); return that path.

    `signatures` maps signature names to (function, input_signature); without it a Keras model gets
    its call as `serving_default`, and a tf.Module must already define its signatures in this
    argument. An `ExampleSignature` value adds a classify/regress signature over tf.Examples.
    `warmup` holds predict requests in TF Serving's JSON form (`instances` or `inputs`, optional
    `signature_name`), written as the version's warmup records. Fails before publishing anything if
    the metadata or a warmup request does not fit."""
    import tensorflow as tf

    methods = {name: f"tensorflow/serving/{sig.method}" for name, sig in (signatures or {}).items()
               if isinstance(sig, ExampleSignature)}
    if any(m not in (CLASSIFY, REGRESS) for m in methods.values()):
        raise ExportError("ExampleSignature.method must be 'classify' or 'regress'")
    endpoints = {name: sig.endpoint() if isinstance(sig, ExampleSignature) else sig
                 for name, sig in (signatures or {}).items()}
    if signatures and isinstance(model, tf.keras.Model) and "serving_default" not in endpoints:
        endpoints = {"serving_default": (model, [_keras_input_spec(model)]), **endpoints}

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
            _export_keras(model, target, endpoints)
        else:
            if not endpoints:
                raise ExportError("a tf.Module needs `signatures`: {name: (function, input_signature)}")
            tf.saved_model.save(model, target, signatures={
                name: tf.function(fn).get_concrete_function(*spec) for name, (fn, spec) in endpoints.items()})
        if methods:
            set_method_names(target, methods)
        if warmup:
            _write_warmup(target, warmup)
        os.makedirs(os.path.join(target, "assets.extra"), exist_ok=True)
        with open(os.path.join(target, METADATA_FILE), "w", encoding="utf-8") as f:
            json.dump(doc, f, indent=2, sort_keys=True)
        os.rename(target, final)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return final


CLASSIFY, REGRESS = "tensorflow/serving/classify", "tensorflow/serving/regress"


def _keras_input_spec(model: Any) -> Any:
    import tensorflow as tf

    if len(model.inputs) != 1:
        raise ExportError("a multi-input Keras model with extra signatures needs an explicit 'serving_default'")
    tensor = model.inputs[0]
    return tf.TensorSpec(tensor.shape, tensor.dtype, name=tensor.name.split(":")[0])


def _write_warmup(path: str, docs: Sequence[Mapping[str, Any]]) -> None:
    from tfprod.codec import json_tensor
    from tfprod.errors import ServingError
    from tfprod.export import warmup
    from tfprod.format.saved_model import read_meta_graph, signatures_of

    signatures = signatures_of(read_meta_graph(path, frozenset({"serve"})))
    requests = []
    for i, doc in enumerate(docs):
        try:
            name = json_tensor.signature_name(doc, "serving_default")
            if name not in signatures:
                raise ExportError(f"warmup request {i}: no signature '{name}' (have {', '.join(sorted(signatures))})")
            requests.append((name, json_tensor.parse_predict(doc, signatures[name])[0]))
        except ServingError as e:
            raise ExportError(f"warmup request {i}: {e.message}") from None
    warmup.write(path, requests)


def set_method_names(path: str, methods: Mapping[str, str]) -> None:
    """Exports mark every signature 'predict'; TF Serving's classify/regress APIs look for theirs."""
    from tensorflow.core.protobuf import saved_model_pb2

    pb = os.path.join(path, "saved_model.pb")
    saved = saved_model_pb2.SavedModel()
    with open(pb, "rb") as f:
        saved.ParseFromString(f.read())
    for meta_graph in saved.meta_graphs:
        for name, method in methods.items():
            meta_graph.signature_def[name].method_name = method
    with open(pb, "wb") as f:
        f.write(saved.SerializeToString())


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
