"""The LiteRT loader: a version directory's `model.tflite`, served through the same APIs.

Signatures come from the flatbuffer's signature runners (`tfprod convert` keeps the SavedModel's
signature names and aliases). Interpreters are not thread-safe, so each version keeps a small pool
of them, created as concurrent calls need them. Quantized int8/uint8 inputs and outputs are shown
to clients as float32 and (de)quantized here, so JSON clients send and receive real numbers.
"""

from __future__ import annotations

import contextlib
import os
import queue
import threading
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import numpy as np
import tensorflow as tf
from tensorflow.core.protobuf import meta_graph_pb2

from tfprod.batching import BatchingOptions, BatchStats
from tfprod.core.manager import ServableId
from tfprod.errors import Code, ServingError, invalid
from tfprod.servables.base import Servable, SignatureRunner, audit, freeze
from tfprod.signature import PREDICT_METHOD, Signature, TensorInfo

TFLITE_FILE = "model.tflite"


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


def _meta_graph(signatures: Mapping[str, Signature]) -> meta_graph_pb2.MetaGraphDef:
    """A MetaGraphDef holding only signature_defs, for the metadata APIs."""
    meta_graph = meta_graph_pb2.MetaGraphDef()
    meta_graph.meta_info_def.tags.append("serve")
    for name, sig in signatures.items():
        sig_def = meta_graph.signature_def[name]
        sig_def.method_name = sig.method_name
        for kind, infos in (("inputs", sig.inputs), ("outputs", sig.outputs)):
            for alias, info in infos.items():
                tensor = getattr(sig_def, kind)[alias]
                tensor.name = alias
                tensor.dtype = info.dtype_enum
                if info.shape is None:
                    tensor.tensor_shape.unknown_rank = True
                for d in info.shape or ():
                    tensor.tensor_shape.dim.add(size=d)
    return meta_graph


def _runner(pool: _Pool, key: str, inputs: Mapping[str, Any], outputs: Mapping[str, Any]) -> SignatureRunner:
    def run(values: Mapping[str, np.ndarray], wanted: tuple[str, ...]) -> dict[str, np.ndarray]:
        with pool.take() as interpreter:
            try:
                result = interpreter.get_signature_runner(key)(
                    **{k: quantize(v, inputs[k]) for k, v in values.items()})
            except (ValueError, RuntimeError) as e:
                raise invalid(f"LiteRT: {e}") from None
            return {alias: dequantize(result[alias], outputs[alias]) for alias in wanted}
    return run


def _signatures(interpreter: Any) -> dict[str, Signature]:
    signatures = {}
    for key in interpreter.get_signature_list():
        runner = interpreter.get_signature_runner(key)
        inputs, outputs = runner.get_input_details(), runner.get_output_details()
        signatures[key] = Signature(key, PREDICT_METHOD, {a: _info(a, d) for a, d in sorted(inputs.items())},
                                    {a: _info(a, d) for a, d in sorted(outputs.items())})
    return signatures


def read_meta_graph(path: str) -> meta_graph_pb2.MetaGraphDef:
    """The signatures of a version's model.tflite, as the metadata APIs and `tfprod inspect` show them."""
    from ai_edge_litert.interpreter import Interpreter

    return _meta_graph(_signatures(Interpreter(model_path=os.path.join(path, TFLITE_FILE))))


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
    keys = first.get_signature_list()
    if not keys:
        raise ServingError(Code.FAILED_PRECONDITION, f"{file} has no signatures: convert it with `tfprod convert`, "
                           "which keeps the SavedModel's signature names")
    pool = _Pool(make, first, pool_size or max(2, os.cpu_count() or 2))
    signatures = _signatures(first)
    runners = {}
    for key in keys:
        runner = first.get_signature_runner(key)
        runners[key] = _runner(pool, key, runner.get_input_details(), runner.get_output_details())
    servable = Servable(sid, path, _meta_graph(signatures), signatures, runners, audit=audit(path), _model=pool)
    servable.batch_with(batching, batch_stats)
    freeze()
    return servable
