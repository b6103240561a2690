"""A SavedModel's files and MetaGraphs, read as protos (no TensorFlow runtime needed)."""

from __future__ import annotations

import os

from google.protobuf import text_format
from tensorflow.core.protobuf import meta_graph_pb2, saved_model_pb2

from tfprod.errors import Code, ServingError
from tfprod.signature import Signature, TensorInfo

MODEL_FILES = ("saved_model.pb", "saved_model.pbtxt")
INIT_OP_SIGNATURE = "__saved_model_init_op"  # TF 2's init op, stored as a signature; not callable


def is_complete(path: str) -> bool:
    """A version directory is worth loading once its graph file is there (written last)."""
    return any(os.path.isfile(os.path.join(path, f)) for f in MODEL_FILES)


def read_saved_model(path: str) -> saved_model_pb2.SavedModel:
    """saved_model.pb, or saved_model.pbtxt when that is what the version holds (TF's loader order)."""
    saved = saved_model_pb2.SavedModel()
    pb = os.path.join(path, "saved_model.pb")
    if os.path.isfile(pb):
        with open(pb, "rb") as f:
            saved.ParseFromString(f.read())
    else:
        with open(os.path.join(path, "saved_model.pbtxt")) as f:
            text_format.Parse(f.read(), saved)
    return saved


def read_meta_graph(path: str, tags: frozenset[str]) -> meta_graph_pb2.MetaGraphDef:
    """The MetaGraph whose tag set is exactly `tags`, as TF Serving's loader picks it."""
    saved = read_saved_model(path)
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
    """Every callable signature (TF 2's init-op entry is not one)."""
    return {
        name: Signature(
            name,
            sig.method_name,
            {k: _tensor_info(k, v) for k, v in sorted(sig.inputs.items())},
            {k: _tensor_info(k, v) for k, v in sorted(sig.outputs.items())},
        )
        for name, sig in meta_graph.signature_def.items() if name != INIT_OP_SIGNATURE
    }
