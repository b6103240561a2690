"""The LiteRT loader: a version directory's `model.tflite`, served through the same APIs.

Signatures, as TF Serving finds them (tflite_session.cc, `TfLiteSession::Create`): the SignatureDefs that TF's
signature_def_util stores in the model's `signature_defs_metadata` entry when there are any; else the flatbuffer's
own signature runners (`tfprod convert` keeps the SavedModel's signature names and aliases there; TF Serving ignores
them); else a `serving_default` predict signature over the model's input and output tensors. Inputs whose shape
differs from the model's are resized, as TF Serving does, so only what LiteRT cannot run is refused.

Interpreters are not thread-safe, so each version keeps a small pool of them, created as concurrent calls need
them. Quantized int8/uint8 inputs and outputs are shown to clients as float32 and (de)quantized here, so JSON
clients send and receive real numbers.
"""

from __future__ import annotations

import contextlib
import dataclasses
import mmap
import os
import queue
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

import numpy as np
import tensorflow as tf
from tensorflow.core.protobuf import meta_graph_pb2

from tfprod.batching import BatchingOptions, BatchStats
from tfprod.core.manager import ServableId
from tfprod.errors import Code, ServingError, invalid
from tfprod.servables.base import Servable, SignatureRunner, audit
from tfprod.signature import DEFAULT_SIGNATURE, PREDICT_METHOD, Signature, TensorInfo

TFLITE_FILE = "model.tflite"
SIGNATURE_DEFS_METADATA = "signature_defs_metadata"  # TF's kSignatureDefsMetadataName

Details = dict[str, dict[str, Any]]  # alias -> LiteRT's details of the tensor (index, name, dtype, quantization...)


def has_tflite(path: str) -> bool:
    return os.path.isfile(os.path.join(path, TFLITE_FILE))


class _Pool:
    """Interpreters for one model file: one per concurrent call, at most `size`, reused."""

    def __init__(self, make: Callable[[], Any], first: Any, size: int) -> None:
        self._make, self._size = make, size
        self._idle: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._idle.put(first)
        self._made = 1
        self._lock = threading.Lock()

    @contextlib.contextmanager
    def take(self) -> Iterator[Any]:
        try:
            interpreter = self._idle.get_nowait()
        except queue.Empty:
            with self._lock:
                grow = self._made < self._size
                self._made += grow
            interpreter = self._make() if grow else self._idle.get()
        try:
            yield interpreter
        finally:
            self._idle.put(interpreter)


def _quantization(detail: Mapping[str, Any]) -> tuple[float, int] | None:
    scale, zero_point = detail.get("quantization", (0.0, 0))
    if np.dtype(detail["dtype"]) in (np.int8, np.uint8, np.int16) and scale:
        return float(scale), int(zero_point)
    return None


def quantize(value: np.ndarray, detail: Mapping[str, Any]) -> np.ndarray:
    """Real numbers -> what a LiteRT input tensor (`detail`) takes: its integer codes when it is
    quantized, else its dtype."""
    dtype = np.dtype(detail["dtype"])
    q = _quantization(detail)
    if q is None:
        return np.ascontiguousarray(value, dtype=dtype)
    info = np.iinfo(dtype)
    return np.clip(np.round(value / q[0] + q[1]), info.min, info.max).astype(dtype)


def dequantize(value: np.ndarray, detail: Mapping[str, Any]) -> np.ndarray:
    """A LiteRT output tensor's values as real numbers (a copy: interpreters reuse their buffers)."""
    q = _quantization(detail)
    return (value.astype(np.float32) - q[1]) * q[0] if q is not None else np.array(value)


def _info(alias: str, detail: Mapping[str, Any]) -> TensorInfo:
    dtype = np.float32 if _quantization(detail) else np.dtype(detail["dtype"])
    shape = tuple(int(d) for d in detail.get("shape_signature", detail["shape"]))
    return TensorInfo(alias, tf.as_dtype(dtype).as_datatype_enum, shape)


def _declared(alias: str, stored: meta_graph_pb2.TensorInfo, detail: Mapping[str, Any]) -> TensorInfo:
    """A stored SignatureDef's dtype and shape, which TF Serving shows as they are (a shape of [-1, k] over a
    [1, k] tensor is honest: inputs are resized); float32 for a quantized tensor, since clients send real numbers."""
    actual = _info(alias, detail)
    dtype = stored.dtype if stored.dtype and not _quantization(detail) else actual.dtype_enum
    if not stored.HasField("tensor_shape"):
        return TensorInfo(alias, dtype, actual.shape)
    shape = None if stored.tensor_shape.unknown_rank else tuple(d.size for d in stored.tensor_shape.dim)
    return TensorInfo(alias, dtype, shape)


@dataclasses.dataclass(frozen=True)
class _Plan:
    """One signature and how LiteRT runs it: through the flatbuffer's signature runner (`native`), or by
    feeding and reading the primary subgraph's tensors by index, as TF Serving does."""

    signature: Signature
    inputs: Details
    outputs: Details
    native: bool = False


def _legacy_name(name: str) -> str:
    # TF tensor names end in ':N'; early TFLite converters dropped it (TfToTfLiteLegacyTensorName).
    return name.split(":", 1)[0]


def _native_plans(interpreter: Any) -> dict[str, _Plan]:
    plans = {}
    for key in interpreter.get_signature_list():
        runner = interpreter.get_signature_runner(key)
        inputs, outputs = runner.get_input_details(), runner.get_output_details()
        sig = Signature(key, PREDICT_METHOD, {a: _info(a, d) for a, d in sorted(inputs.items())},
                        {a: _info(a, d) for a, d in sorted(outputs.items())})
        plans[key] = _Plan(sig, inputs, outputs, native=True)
    return plans


def _tensor_plans(interpreter: Any) -> dict[str, _Plan]:
    """TF Serving's signature for a model without SignatureDefs: `serving_default`, predict, each input and
    output under its tensor name less any ':N' suffix."""
    details = {}
    for kind, tensors in (("input", interpreter.get_input_details()), ("output", interpreter.get_output_details())):
        details[kind] = {_legacy_name(d["name"]): d for d in tensors}
        if len(details[kind]) < len(tensors):  # TF Serving would silently drop all but one of them
            raise ServingError(Code.FAILED_PRECONDITION, f"{kind} tensor names {sorted(d['name'] for d in tensors)} "
                               "collide once their ':N' suffixes are dropped: give the model signatures")
    sig = Signature(DEFAULT_SIGNATURE, PREDICT_METHOD, {a: _info(a, d) for a, d in sorted(details["input"].items())},
                    {a: _info(a, d) for a, d in sorted(details["output"].items())})
    return {DEFAULT_SIGNATURE: _Plan(sig, details["input"], details["output"])}


def _stored_signature_defs(file: str) -> dict[str, meta_graph_pb2.SignatureDef]:
    """The SignatureDefs in the model's `signature_defs_metadata` entry ({} without one). TF's signature_def_util
    format: that entry's buffer holds a flexbuffers map of signature key -> serialized SignatureDef."""
    from ai_edge_litert import schema_py_generated as schema
    from flatbuffers import flexbuffers

    with open(file, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as data:  # models can be large
        model = schema.Model.GetRootAs(data, 0)
        entries = (model.Metadata(i) for i in range(model.MetadataLength()))
        buffer = next((e.Buffer() for e in entries if e.Name() == SIGNATURE_DEFS_METADATA.encode()), None)
        if buffer is None:
            return {}
        data_buffer = model.Buffers(buffer)
        blob = data_buffer.DataAsNumpy().tobytes() if data_buffer.DataLength() else b""  # a copy: data closes here
    stored = flexbuffers.GetRoot(blob).AsMap
    # TF's reader takes each value's bytes up to the first NUL (`AsString().c_str()`), which cuts any SignatureDef
    # holding a zero byte (a scalar's empty shape): the whole string is read here.
    return {key.AsKey: meta_graph_pb2.SignatureDef.FromString(value.AsStringBytes)
            for key, value in zip(stored.Keys, stored.Values, strict=True)}


def _bind(kind: str, stored: Mapping[str, meta_graph_pb2.TensorInfo], tensors: Iterable[dict[str, Any]]) -> Details:
    """A stored signature's aliases -> the tensors they name: by exact name, else by the name less its ':N'
    (TF Serving's FixTfLiteTensorName), among the primary subgraph's inputs or outputs."""
    by_name = {d["name"]: d for d in tensors}
    bound = {}
    for alias, info in stored.items():
        detail = by_name.get(info.name) or by_name.get(_legacy_name(info.name))
        if detail is None:
            raise ServingError(Code.INVALID_ARGUMENT, f"Signature {kind} {alias} references an unknown tensor "
                               f"'{info.name}' (the model's {kind}s: {sorted(by_name)})")
        bound[alias] = detail
    return bound


def _metadata_plans(interpreter: Any, stored: Mapping[str, meta_graph_pb2.SignatureDef]) -> dict[str, _Plan]:
    plans = {}
    for key, sig_def in stored.items():
        inputs = _bind("input", sig_def.inputs, interpreter.get_input_details())
        outputs = _bind("output", sig_def.outputs, interpreter.get_output_details())
        sig = Signature(key, sig_def.method_name,
                        {a: _declared(a, sig_def.inputs[a], d) for a, d in sorted(inputs.items())},
                        {a: _declared(a, sig_def.outputs[a], d) for a, d in sorted(outputs.items())})
        plans[key] = _Plan(sig, inputs, outputs)
    return plans


def _plans(interpreter: Any, file: str) -> dict[str, _Plan]:
    try:
        stored = _stored_signature_defs(file)
    except Exception as e:  # a malformed flatbuffer or flexbuffer: their parsers raise anything
        raise ServingError(Code.INVALID_ARGUMENT, f"Invalid SignatureDefs found in TfLite model: {e!r}") from None
    if stored:
        return _metadata_plans(interpreter, stored)
    return _native_plans(interpreter) or _tensor_plans(interpreter)


def _meta_graph(plans: Mapping[str, _Plan]) -> meta_graph_pb2.MetaGraphDef:
    """A MetaGraphDef holding only signature_defs, for the metadata APIs: each TensorInfo names its TFLite
    tensor, as TF Serving's do."""
    meta_graph = meta_graph_pb2.MetaGraphDef()
    meta_graph.meta_info_def.tags.append("serve")
    for name, plan in plans.items():
        sig_def = meta_graph.signature_def[name]
        sig_def.method_name = plan.signature.method_name
        for kind, infos, details in (("inputs", plan.signature.inputs, plan.inputs),
                                     ("outputs", plan.signature.outputs, plan.outputs)):
            for alias, info in infos.items():
                tensor = getattr(sig_def, kind)[alias]
                tensor.name = details[alias]["name"]
                tensor.dtype = info.dtype_enum
                if info.shape is None:
                    tensor.tensor_shape.unknown_rank = True
                for d in info.shape or ():
                    tensor.tensor_shape.dim.add(size=d)
    return meta_graph


def _invoke(interpreter: Any, feeds: Mapping[int, np.ndarray]) -> None:
    """Runs the primary subgraph on `feeds` (input tensor index -> value). Each input is resized to what is fed,
    as TF Serving's SetInputAndInvokeMiniBatch does; LiteRT makes that a no-op when the shape is already the
    same, and since every call sets its own shapes, whatever the previous call left does not matter."""
    for index, value in feeds.items():
        interpreter.resize_tensor_input(index, value.shape)
    interpreter.allocate_tensors()
    for index, value in feeds.items():
        interpreter.set_tensor(index, value)
    interpreter.invoke()


def _runner(pool: _Pool, key: str, plan: _Plan) -> SignatureRunner:
    def run(values: Mapping[str, np.ndarray], wanted: tuple[str, ...]) -> dict[str, np.ndarray]:
        with pool.take() as interpreter:
            try:
                feeds = {alias: quantize(v, plan.inputs[alias]) for alias, v in values.items()}
                if plan.native:  # LiteRT's SignatureRunner resizes its inputs to what is fed on each call
                    result = interpreter.get_signature_runner(key)(**feeds)
                else:
                    _invoke(interpreter, {plan.inputs[alias]["index"]: v for alias, v in feeds.items()})
                    result = {alias: interpreter.get_tensor(plan.outputs[alias]["index"]) for alias in wanted}
            except (ValueError, RuntimeError, TypeError) as e:  # LiteRT's words rarely name the input at fault
                fed = ", ".join(f"{alias} {list(v.shape)}" for alias, v in values.items())
                raise invalid(f"LiteRT: {e} (inputs fed: {fed})") from None
            return {alias: dequantize(result[alias], plan.outputs[alias]) for alias in wanted}
    return run


def read_meta_graph(path: str) -> meta_graph_pb2.MetaGraphDef:
    """The signatures of a version's model.tflite, as the metadata APIs and `tfprod inspect` show them."""
    from ai_edge_litert.interpreter import Interpreter

    file = os.path.join(path, TFLITE_FILE)
    return _meta_graph(_plans(Interpreter(model_path=file), file))


def load(sid: ServableId, path: str, num_threads: int = 1, batching: BatchingOptions | None = None,
         batch_stats: BatchStats | None = None, pool_size: int | None = None) -> Servable:
    from ai_edge_litert.interpreter import Interpreter

    file = os.path.join(path, TFLITE_FILE)

    def make() -> Any:
        return Interpreter(model_path=file, num_threads=num_threads)

    try:
        first = make()
    except (ValueError, RuntimeError) as e:
        raise ServingError(Code.UNKNOWN, f"Failed to load TFLite model {file}: {e}") from None
    plans = _plans(first, file)
    pool = _Pool(make, first, pool_size or max(2, os.cpu_count() or 2))
    runners = {key: _runner(pool, key, plan) for key, plan in plans.items()}
    signatures = {key: plan.signature for key, plan in plans.items()}
    servable = Servable(sid, path, _meta_graph(plans), signatures, runners, audit=audit(path))
    servable.batch_with(batching, batch_stats)
    return servable
