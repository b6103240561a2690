"""The SavedModel loader and servable: the only place that runs TensorFlow for a request."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from typing import Any

import numpy as np
import tensorflow as tf
from google.protobuf import text_format
from tensorflow.core.protobuf import meta_graph_pb2, saved_model_pb2

from tfprod.batching import BatchingOptions, BatchStats
from tfprod.config.model_config import ConfigError, read_batching_parameters
from tfprod.core.manager import ServableId
from tfprod.errors import Code, ServingError, invalid
from tfprod.servables.base import Servable, SignatureRunner, audit, freeze
from tfprod.signature import Signature, TensorInfo

MODEL_FILES = ("saved_model.pb", "saved_model.pbtxt")


def is_complete(path: str) -> bool:
    """A version directory is worth loading once its graph file is there (written last)."""
    return any(os.path.isfile(os.path.join(path, f)) for f in MODEL_FILES)


def read_meta_graph(path: str, tags: frozenset[str]) -> meta_graph_pb2.MetaGraphDef:
    saved = saved_model_pb2.SavedModel()
    pb = os.path.join(path, "saved_model.pb")
    if os.path.isfile(pb):
        with open(pb, "rb") as f:
            saved.ParseFromString(f.read())
    else:
        with open(os.path.join(path, "saved_model.pbtxt")) as f:
            text_format.Parse(f.read(), saved)
    for meta_graph in saved.meta_graphs:
        if set(meta_graph.meta_info_def.tags) == tags:
            return meta_graph
    found = [sorted(m.meta_info_def.tags) for m in saved.meta_graphs]
    raise ServingError(Code.NOT_FOUND, f"Could not find meta graph def matching supplied tags: "
                       f"{{ {' '.join(sorted(tags))} }}. Tag sets in the SavedModel: {found}")


def _tensor_info(alias: str, info: meta_graph_pb2.TensorInfo) -> TensorInfo:
    shape = None if info.tensor_shape.unknown_rank else tuple(d.size for d in info.tensor_shape.dim)
    return TensorInfo(alias, info.dtype, shape)


def signatures_of(meta_graph: meta_graph_pb2.MetaGraphDef) -> dict[str, Signature]:
    return {
        name: Signature(
            name,
            sig.method_name,
            {k: _tensor_info(k, v) for k, v in sorted(sig.inputs.items())},
            {k: _tensor_info(k, v) for k, v in sorted(sig.outputs.items())},
        )
        for name, sig in meta_graph.signature_def.items()
    }


_NOISE = re.compile(r"^(Graph execution error:|Detected at node|<stack traces unavailable>|\s+File |\s*\[\[)")


def _tf_message(e: Exception) -> str:
    """TF's error text without the graph-execution boilerplate and node/stack decorations."""
    message = getattr(e, "message", None) or str(e)
    lines = [re.sub(r"\s*\[\[\{\{node .*$", "", line).strip() for line in message.splitlines()
             if line.strip() and not _NOISE.match(line)]
    return " ".join(line for line in lines if line) or type(e).__name__


BATCHING_PARAMS_FILE = "batching_params.pbtxt"


def load(sid: ServableId, path: str, tags: frozenset[str] = frozenset({"serve"}),
         batching: BatchingOptions | None = None, per_model_batching: bool = False,
         batch_stats: BatchStats | None = None) -> Servable:
    """Load a version; with `batching`, its calls go through a Batcher (per-model parameters from
    the version's batching_params.pbtxt replace `batching` when `per_model_batching` is set)."""
    if not is_complete(path):
        raise ServingError(Code.NOT_FOUND, f"No SavedModel (saved_model.pb) in {path}")
    meta_graph = read_meta_graph(path, tags)
    try:
        loaded = tf.saved_model.load(path, tags=sorted(tags))
    except Exception as e:  # TF raises many types for corrupt or incompatible models
        raise ServingError(Code.UNKNOWN, f"Failed to load SavedModel at {path}: {_tf_message(e)}") from None
    functions = dict(getattr(loaded, "signatures", {}))
    signatures = {k: v for k, v in signatures_of(meta_graph).items() if k in functions}
    runners = {name: _runner(fn) for name, fn in functions.items()}
    servable = Servable(sid, path, meta_graph, signatures, runners, audit=audit(path), _model=loaded)
    servable.batch_with(batching_for(path, batching, per_model_batching), batch_stats)
    freeze()
    return servable


def _runner(fn: Any) -> SignatureRunner:
    def run(inputs: Mapping[str, np.ndarray], outputs: tuple[str, ...]) -> dict[str, np.ndarray]:
        try:
            result = fn(**{k: tf.constant(v) for k, v in inputs.items()})
        except (tf.errors.InvalidArgumentError, ValueError, TypeError) as e:
            raise invalid(_tf_message(e)) from None
        except tf.errors.OpError as e:
            raise ServingError(Code(e.error_code), _tf_message(e)) from None
        return {k: result[k].numpy() for k in outputs}
    return run


def batching_for(path: str, batching: BatchingOptions | None, per_model: bool) -> BatchingOptions | None:
    """The batching a version gets: with --enable_per_model_batching_parameters, the version's own
    batching_params.pbtxt, or none (TF Serving's rule)."""
    if batching is None or not per_model:
        return batching
    own = os.path.join(path, BATCHING_PARAMS_FILE)
    try:
        return read_batching_parameters(own) if os.path.isfile(own) else None
    except ConfigError as e:
        raise ServingError(Code.INVALID_ARGUMENT, str(e)) from None
