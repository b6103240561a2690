"""A SavedModel signature as a TF.js graph model: `tfprod convert VERSION_DIR --to tfjs`.

The official converter (`tensorflowjs`) cannot be installed beside current TensorFlow, so this is
our own exporter of the same format: `model.json` (`format: graph-model`, the frozen GraphDef as
protobuf JSON in `modelTopology`, the signature under the SavedModel's own input/output keys,
`userDefinedMetadata` carrying the version's audit metadata, `weightsManifest`) plus binary
weight shards of 4 MiB, as TF.js's `tf.loadGraphModel` reads them.

The steps: freeze the signature's variables into constants; let Grappler prune, fold and fuse;
split back the fusions TF.js cannot run (`_FusedMatMul` with tanh, a residual add or a
non-constant bias, every depthwise fusion); check every op against the op list of the shipped
TF.js runtime (web/tfjs/ops.json) and the WASM backend's known failures; move constants into the
weight shards, quantized when asked (float16; uint8/uint16 affine with zero exactly
representable).
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import tempfile
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

from tfprod.format.audit import read_metadata
from tfprod.signature import default_signature_key

TFJS_DIR = "tfjs"
MODEL_JSON = "model.json"
MODES = ("none", "float16", "uint16", "uint8")
SHARD_BYTES = 4 * 1024 * 1024  # the official converter's default shard size
RUNTIME_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "web", "tfjs")

# Ops refused although TF.js maps them: its WASM backend (the one the browser page runs) gets them
# wrong or cannot run them (measured with TF.js 4.22); each with what to do instead.
_LOOP = ("a while loop (a Keras RNN/LSTM/GRU layer, or tf.while_loop): the WASM backend cannot run it; "
         "build the layer with unroll=True (fixed sequence length)")
REFUSED = {
    "Einsum": "the WASM backend has no Einsum kernel (Keras MultiHeadAttention, EinsumDense): express the "
              "product with MatMul/BatchMatMul (reshape + tf.matmul)",
    "MaxPool3D": "the WASM backend gives wrong answers for all-negative windows: pool after a ReLU, or use "
                 "MaxPool2D over reshaped frames",
    **{op: _LOOP for op in ("While", "StatelessWhile", "Enter", "Exit", "NextIteration", "LoopCond",
                            "TensorListReserve", "TensorListFromTensor", "TensorListStack")},
    # TF.js has these ops, but a frozen graph carries no table initialisation: every lookup would
    # answer the default value
    **{op: "lookup tables are not converted (their initialisation from assets is not part of the frozen graph): "
           "map strings to ids before the model" for op in ("HashTable", "HashTableV2", "LookupTableFind",
                                                              "LookupTableFindV2", "MutableHashTableV2")},
}
# Ops TF.js does not have that users meet often, with what to do instead.
HINTS = {
    "Erfc": "exact GELU: use gelu(approximate=True) (tf.nn.gelu(x, approximate=True))",
    "ParseExample": "the signature parses serialized tf.Examples: export a signature over the feature tensors",
    "ParseExampleV2": "the signature parses serialized tf.Examples: export a signature over the feature tensors",
}
# Fused ops TF.js runs as they are: (op, fused_ops) with a constant bias.
_TFJS_ACTIVATIONS = {"Relu", "Relu6", "Elu", "LeakyRelu", "Sigmoid"}
_WEIGHT_DTYPES = {"f": "float32", "i": "int32", "u": "int32", "b": "bool"}


class ConversionError(Exception):
    pass


@functools.cache
def supported_ops() -> frozenset[str]:
    with open(os.path.join(RUNTIME_DIR, "ops.json")) as f:
        return frozenset(json.load(f)["ops"])


@functools.cache
def runtime_manifest() -> dict[str, Any]:
    """The shipped TF.js runtime's manifest: its version and each file's sha256 and size."""
    with open(os.path.join(RUNTIME_DIR, "manifest.json")) as f:
        return dict(json.load(f))


def runtime_version() -> str:
    return str(runtime_manifest()["version"])


def export(version_dir: str, output: str | None = None, mode: str = "none", signature_key: str = "") -> str:
    """Write `version_dir`'s signature as a TF.js graph model into `output` (default
    `version_dir/tfjs`), replacing what was there in one rename. Returns the directory."""
    model, shards = convert(version_dir, mode, signature_key)
    output = output or os.path.join(version_dir, TFJS_DIR)
    parent = os.path.dirname(os.path.abspath(output))
    os.makedirs(parent, exist_ok=True)
    _remove_stale_staging(parent)
    staging = tempfile.mkdtemp(prefix=".tfjs-", dir=parent)
    try:
        for name, data in shards.items():
            with open(os.path.join(staging, name), "wb") as f:
                f.write(data)
        with open(os.path.join(staging, MODEL_JSON), "w") as f:
            json.dump(model, f, separators=(",", ":"))
        os.chmod(staging, 0o755)
        if os.path.isdir(output):  # the old files go aside first: a reader sees old or new, never a mix
            old = tempfile.mkdtemp(prefix=".tfjs-old-", dir=parent)
            os.rename(output, os.path.join(old, "x"))
            os.rename(staging, output)
            shutil.rmtree(old)
        else:
            os.rename(staging, output)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return output


def _remove_stale_staging(parent: str, age_s: float = 600.0) -> None:
    """A conversion killed halfway leaves its `.tfjs-*` folder in the version (and a signed version
    then no longer verifies): remove those older than `age_s`."""
    import time

    for name in os.listdir(parent):
        path = os.path.join(parent, name)
        if name.startswith(".tfjs-") and os.path.isdir(path) and time.time() - os.path.getmtime(path) > age_s:
            shutil.rmtree(path, ignore_errors=True)


def convert(version_dir: str, mode: str = "none", signature_key: str = "") -> tuple[dict[str, Any], dict[str, bytes]]:
    """(model.json as a dict, {shard file name: bytes})."""
    if mode not in MODES:
        raise ConversionError(f"--quantize for tfjs must be one of {', '.join(MODES)}, got {mode!r}")
    import tensorflow as tf
    from google.protobuf import json_format
    from tensorflow.core.protobuf import meta_graph_pb2

    try:
        audit = read_metadata(version_dir)
    except ValueError as e:  # a malformed JSON file
        raise ConversionError(f"the audit metadata of {version_dir} cannot be read: {e}") from None
    graph_def, inputs, outputs, key = _frozen(version_dir, signature_key)
    optimized, left = _unfuse(_optimize(graph_def, inputs, outputs, remap=True))
    if left or _private_ops(optimized):  # a fusion we cannot split (oneDNN's GELU...): no fusions at all then
        optimized = _optimize(graph_def, inputs, outputs, remap=False)
    check_ops(optimized)
    weights, shard_bytes = _extract_weights(optimized, mode)

    signature = meta_graph_pb2.SignatureDef()
    for alias, tensor in inputs.items():
        _tensor_info(signature.inputs[alias], tensor)
    for alias, tensor in outputs.items():
        _tensor_info(signature.outputs[alias], tensor)
    shards = _shards(shard_bytes)
    import tfprod

    model = {
        "format": "graph-model",
        "generatedBy": tf.__version__,
        "convertedBy": f"tfprod {tfprod.__version__}",
        "signature": json_format.MessageToDict(signature),
        "userDefinedMetadata": {"signatureKey": key, "quantization": mode, "audit": audit},
        "modelTopology": json_format.MessageToDict(optimized),
        "weightsManifest": [{"paths": list(shards), "weights": weights}],
    }
    return model, shards


def _frozen(version_dir: str, key: str) -> tuple[Any, dict[str, Any], dict[str, Any], str]:
    """(GraphDef with variables as constants, {input alias: placeholder tensor}, {output alias:
    tensor}, signature key). TF 2 SavedModels through their concrete functions; TF 1 graphs (no
    object graph: `saved_model.Builder`) in a Session, as the server loads them."""
    import tensorflow as tf

    from tfprod.format.saved_model import read_meta_graph, signatures_of

    try:
        meta_graph = read_meta_graph(version_dir, frozenset({"serve"}))
    except Exception as e:  # a missing or corrupt saved_model.pb, no 'serve' meta graph: all say the same
        raise ConversionError(f"cannot read {version_dir} as a SavedModel: {str(e)[:300]}") from None
    keys = sorted(signatures_of(meta_graph))
    key = key or default_signature_key(keys)
    if key not in keys:
        raise ConversionError(f"choose the signature to convert with --signature (found {keys})" if not key
                              else f"no signature {key!r} in {version_dir} (it has {keys})")
    logger, level = tf.get_logger(), tf.get_logger().level
    logger.setLevel("ERROR")  # TF 1 graphs: TensorFlow warns that it cannot re-serialize their collections
    try:
        if meta_graph.object_graph_def.nodes:
            return (*_frozen_function(version_dir, key), key)
        return (*_frozen_session(version_dir, key), key)
    except (OSError, ValueError, RuntimeError, tf.errors.OpError) as e:
        raise ConversionError(f"cannot freeze signature {key!r} of {version_dir}: {str(e)[:300]}") from None
    finally:
        logger.setLevel(level)


def _frozen_function(version_dir: str, key: str) -> tuple[Any, dict[str, Any], dict[str, Any]]:
    import tensorflow as tf
    from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2

    loaded = tf.saved_model.load(version_dir, tags=["serve"])  # holds the variables while they are frozen
    function = loaded.signatures[key]
    frozen = convert_variables_to_constants_v2(function)
    # the frozen function keeps the original's input and output order (tf.nest's: sorted keys)
    aliases = sorted(function.structured_input_signature[1])
    if len(aliases) != len(frozen.inputs):
        raise ConversionError(f"signature {key!r} takes {len(aliases)} inputs but its frozen graph has "
                              f"{len(frozen.inputs)} placeholders")
    inputs = dict(zip(aliases, frozen.inputs, strict=True))
    outputs = dict(zip(sorted(function.structured_outputs), frozen.outputs, strict=True))
    return frozen.graph.as_graph_def(), inputs, outputs


def _frozen_session(version_dir: str, key: str) -> tuple[Any, dict[str, Any], dict[str, Any]]:
    import tensorflow as tf

    tf1 = tf.compat.v1
    with tf.Graph().as_default() as graph, tf1.Session(graph=graph) as session:
        signature = tf1.saved_model.loader.load(session, ["serve"], version_dir).signature_def[key]
        inputs = {alias: graph.get_tensor_by_name(info.name) for alias, info in sorted(signature.inputs.items())}
        outputs = {alias: graph.get_tensor_by_name(info.name) for alias, info in sorted(signature.outputs.items())}
        frozen = tf1.graph_util.convert_variables_to_constants(
            session, graph.as_graph_def(), sorted({t.op.name for t in outputs.values()}))
    return frozen, inputs, outputs


def _optimize(graph_def: Any, inputs: Mapping[str, Any], outputs: Mapping[str, Any], remap: bool) -> Any:
    """Grappler over the frozen graph: prune what the outputs do not need, fold constants, simplify
    arithmetic, and (with `remap`) fuse MatMul/Conv2D with bias and activation."""
    from tensorflow.core.protobuf import config_pb2, meta_graph_pb2
    from tensorflow.python.grappler import tf_optimizer

    meta_graph = meta_graph_pb2.MetaGraphDef(graph_def=graph_def)
    for node in meta_graph.graph_def.node:  # the remapper fuses only nodes placed on a CPU
        node.device = "/job:localhost/replica:0/task:0/device:CPU:0"
    fetch = meta_graph_pb2.CollectionDef()
    fetch.node_list.value.extend(t.name for t in outputs.values())
    meta_graph.collection_def["train_op"].CopyFrom(fetch)
    signature = meta_graph.signature_def["tfjs"]  # its inputs are Grappler's feeds: kept, never folded
    for alias, tensor in inputs.items():
        _tensor_info(signature.inputs[alias], tensor)
    for alias, tensor in outputs.items():
        _tensor_info(signature.outputs[alias], tensor)
    config = config_pb2.ConfigProto()
    rewrite = config.graph_options.rewrite_options
    passes = ["pruning", "constfold", "arithmetic", "dependency", "function", "pruning"]
    rewrite.optimizers.extend([*passes, *(["remap", "constfold", "arithmetic"] if remap else [])])
    rewrite.meta_optimizer_iterations = 2
    optimized = tf_optimizer.OptimizeGraph(config, meta_graph)
    for node in optimized.node:
        node.device = ""  # TF.js places nothing
    return optimized


def _tensor_info(info: Any, tensor: Any) -> None:
    info.name = tensor.name
    info.dtype = tensor.dtype.as_datatype_enum
    info.tensor_shape.CopyFrom(tensor.shape.as_proto())


def _private_ops(graph_def: Any) -> set[str]:
    return {n.op for n in graph_def.node if n.op.startswith("_") and n.op not in supported_ops()}


def _unfuse(graph_def: Any) -> tuple[Any, list[str]]:
    """Split the fused nodes TF.js cannot run back into their ops (the last takes the fused node's
    name, so its consumers stay wired). Returns the graph and the fused nodes TF.js cannot run that
    could not be split (fusions of ops we do not know), for the caller to avoid."""
    from tensorflow.core.framework import graph_pb2

    consts = {n.name for n in graph_def.node if n.op == "Const"}
    left: list[str] = []
    out = graph_pb2.GraphDef()
    out.versions.CopyFrom(graph_def.versions)
    out.library.CopyFrom(graph_def.library)
    for node in graph_def.node:
        if node.op not in ("_FusedMatMul", "_FusedConv2D", "_FusedDepthwiseConv2dNative"):
            out.node.add().CopyFrom(node)
            continue
        fused = [s.decode() for s in node.attr["fused_ops"].list.s]
        args = [i for i in node.input[2:] if not i.startswith("^")]
        runs_as_is = (node.op != "_FusedDepthwiseConv2dNative" and fused[:1] == ["BiasAdd"]
                      and all(a in _TFJS_ACTIVATIONS for a in fused[1:]) and len(fused) <= 2
                      and args[:1] and args[0].split(":")[0] in consts)
        split = None if runs_as_is else _split(node, fused, args)
        if split is None:
            out.node.add().CopyFrom(node)
            if not runs_as_is:
                left.append(node.name)
        else:
            out.node.extend(split)
    return out, left


def _split(node: Any, fused: list[str], args: list[str]) -> list[Any] | None:
    from tensorflow.core.framework import node_def_pb2

    base_op = {"_FusedMatMul": "MatMul", "_FusedConv2D": "Conv2D",
               "_FusedDepthwiseConv2dNative": "DepthwiseConv2dNative"}[node.op]
    keep = {"MatMul": ("T", "transpose_a", "transpose_b"),
            "Conv2D": ("T", "strides", "padding", "explicit_paddings", "data_format", "dilations",
                       "use_cudnn_on_gpu"),
            "DepthwiseConv2dNative": ("T", "strides", "padding", "explicit_paddings", "data_format", "dilations")}
    controls = [i for i in node.input if i.startswith("^")]
    nodes: list[Any] = []

    def add(op: str, name: str, inputs: Iterable[str], attrs: Mapping[str, Any]) -> str:
        n = node_def_pb2.NodeDef(name=name, op=op, input=list(inputs), device=node.device)
        for k, v in attrs.items():
            n.attr[k].CopyFrom(v)
        nodes.append(n)
        return name

    t = {"T": node.attr["T"]}
    fmt = {"data_format": node.attr["data_format"]} if "data_format" in node.attr else {}
    x = add(base_op, f"{node.name}/{base_op}", [*node.input[:2], *controls],
            {k: node.attr[k] for k in keep[base_op] if k in node.attr})
    rest = list(args)
    for i, op in enumerate(fused):
        name = node.name if i == len(fused) - 1 else f"{node.name}/{op}"
        if op == "BiasAdd" and rest:
            x = add("BiasAdd", name, [x, rest.pop(0)], {**t, **fmt})
        elif op in ("Add", "AddV2") and rest:
            x = add("AddV2", name, [x, rest.pop(0)], t)
        elif op == "FusedBatchNorm" and len(rest) >= 4:
            from tensorflow.core.framework import attr_value_pb2

            attrs = {**t, **fmt, "U": node.attr["T"], "epsilon": node.attr["epsilon"],
                     "is_training": attr_value_pb2.AttrValue(b=False)}
            x = add("FusedBatchNormV3", name, [x, *rest[:4]], attrs)
            rest = rest[4:]
        elif op in ("Relu", "Relu6", "Elu", "Selu", "Sigmoid", "Tanh", "Softplus"):
            x = add(op, name, [x], t)
        elif op == "LeakyRelu":
            x = add(op, name, [x], {**t, "alpha": node.attr["leakyrelu_alpha"]})
        else:
            return None
    if not fused:
        nodes[-1].name = node.name
    return nodes


def graph_ops(graph_def: Any) -> dict[str, list[str]]:
    """{op: names of the nodes running it}, the function library included."""
    found: dict[str, list[str]] = {}
    for node in graph_def.node:
        found.setdefault(node.op, []).append(node.name)
    for function in graph_def.library.function:
        for node in function.node_def:
            found.setdefault(node.op, []).append(f"{function.signature.name}/{node.name}")
    return found


def check_ops(graph_def: Any) -> None:
    """Refuse a graph with ops the TF.js runtime lacks or its WASM backend gets wrong, naming them."""
    reasons: dict[str, list[tuple[str, list[str]]]] = {}  # reason -> its ops and their nodes
    for op, nodes in sorted(graph_ops(graph_def).items()):
        if op in REFUSED:
            reasons.setdefault(REFUSED[op], []).append((op, nodes))
        elif op not in supported_ops() and op not in ("Placeholder", "NoOp"):
            reason = f"not in TF.js {runtime_version()}'s op list" + (f"; {HINTS[op]}" if op in HINTS else "")
            reasons.setdefault(reason, []).append((op, nodes))
    if reasons:
        problems = [f"{', '.join(op for op, _ in found)} (e.g. node '{found[0][1][0]}'): {reason}"
                    for reason, found in reasons.items()]
        raise ConversionError("the model cannot run in TF.js on the WASM backend:\n  " + "\n  ".join(problems))


def _extract_weights(graph_def: Any, mode: str) -> tuple[list[dict[str, Any]], bytes]:
    """Move every Const's value into the weights (the node keeps its dtype and shape)."""
    import tensorflow as tf

    entries, chunks = [], []
    for node in graph_def.node:
        if node.op != "Const":
            continue
        value = tf.make_ndarray(node.attr["value"].tensor)
        entry, data = _weight(node.name, value, mode)
        entries.append(entry)
        chunks.append(data)
        tensor = node.attr["value"].tensor
        shape = tensor.tensor_shape.SerializeToString()
        tensor.Clear()
        tensor.dtype = node.attr["dtype"].type
        tensor.tensor_shape.ParseFromString(shape)
    return entries, b"".join(chunks)


def _weight(name: str, value: np.ndarray, mode: str) -> tuple[dict[str, Any], bytes]:
    entry: dict[str, Any] = {"name": name, "shape": list(value.shape)}
    if value.dtype.kind in ("S", "O", "U"):
        entry["dtype"] = "string"  # TF.js: each string as its uint32 length then its bytes
        items = [v if isinstance(v, bytes) else str(v).encode() for v in value.reshape(-1)]
        return entry, b"".join(np.uint32(len(v)).tobytes() + v for v in items)
    kind = value.dtype.kind
    if kind not in _WEIGHT_DTYPES:
        raise ConversionError(f"constant {name!r} has dtype {value.dtype}, which TF.js weights cannot hold")
    entry["dtype"] = _WEIGHT_DTYPES[kind]
    if entry["dtype"] == "int32":
        if value.size and (value.min() < np.iinfo(np.int32).min or value.max() > np.iinfo(np.int32).max):
            raise ConversionError(f"constant {name!r} ({value.dtype}) holds values outside int32, TF.js's only "
                                  "integer type")
        return entry, value.astype("<i4").tobytes()
    if entry["dtype"] == "bool":
        return entry, value.astype(np.uint8).tobytes()
    floats = value.astype("<f4")
    if mode == "none" or not floats.size or not np.isfinite(floats).all() or (
            mode == "float16" and float(np.abs(floats).max()) > float(np.finfo(np.float16).max)):
        return entry, floats.tobytes()  # infinities (masks), NaN, or beyond float16: kept in float32
    if mode == "float16":
        entry["quantization"] = {"dtype": "float16", "original_dtype": "float32"}
        return entry, floats.astype("<f2").tobytes()
    bits = 8 if mode == "uint8" else 16
    low, high = min(float(floats.min()), 0.0), max(float(floats.max()), 0.0)  # zero stays exact
    levels = 2 ** bits - 1
    scale = (high - low) / levels or 1.0
    zero = round(-low / scale)
    low = -zero * scale
    q = np.clip(np.round((floats.astype(np.float64) - low) / scale), 0, levels)
    entry["quantization"] = {"dtype": mode, "min": low, "scale": scale, "original_dtype": "float32"}
    return entry, q.astype("<u1" if bits == 8 else "<u2").tobytes()


def _shards(data: bytes) -> dict[str, bytes]:
    count = max(1, -(-len(data) // SHARD_BYTES))
    return {f"group1-shard{i + 1}of{count}.bin": data[i * SHARD_BYTES:(i + 1) * SHARD_BYTES] for i in range(count)}
