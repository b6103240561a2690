"""TensorProto (TF Serving's gRPC tensors) <-> numpy arrays.

TensorFlow's own `make_ndarray`/`make_tensor_proto` do the conversion; this module adds the
checks a server needs in front of them: the dtype must be the signature's, the element count
must match the shape (a one-value proto may fill a shape, as in TensorFlow, but only up to a
bound, so a 30-byte request cannot ask for gigabytes), and every failure is INVALID_ARGUMENT
naming the input.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import tensorflow as tf
from tensorflow.core.framework import tensor_pb2, types_pb2

from tfprod.errors import invalid
from tfprod.signature import Signature, TensorInfo

MAX_FILLED_ELEMENTS = 1 << 24

_VALUE_FIELDS = ("half_val", "float_val", "double_val", "int_val", "string_val", "int64_val", "bool_val",
                 "uint32_val", "uint64_val")


def _dtype_name(enum: int) -> str:
    try:
        return str(types_pb2.DataType.Name(enum))
    except ValueError:
        return f"DataType({enum})"


def _value_count(proto: tensor_pb2.TensorProto, itemsize: int) -> int:
    if proto.tensor_content:
        return len(proto.tensor_content) // max(itemsize, 1)
    return max((len(getattr(proto, f)) for f in _VALUE_FIELDS), default=0)


def to_array(proto: tensor_pb2.TensorProto, info: TensorInfo) -> np.ndarray:
    if proto.dtype != info.dtype_enum:
        raise invalid(f"input '{info.name}' is {_dtype_name(proto.dtype)} but the signature expects "
                      f"{info.dtype_name}")
    dims = [d.size for d in proto.tensor_shape.dim]
    if any(d < 0 for d in dims):
        raise invalid(f"input '{info.name}' has a negative dimension in its shape {dims}")
    elements = int(np.prod(dims, dtype=np.int64)) if dims else 1
    values = _value_count(proto, info.np_dtype.itemsize if not info.is_string else 1)
    if proto.tensor_content and not info.is_string:
        if len(proto.tensor_content) != elements * info.np_dtype.itemsize:
            raise invalid(f"input '{info.name}': tensor_content holds {len(proto.tensor_content)} bytes, but "
                          f"shape {dims} of {info.dtype_name} needs {elements * info.np_dtype.itemsize}")
    elif values != elements and not (values == 1 and elements <= MAX_FILLED_ELEMENTS):
        raise invalid(f"input '{info.name}' has {values} values but its shape {dims} holds {elements}")
    try:
        return np.asarray(tf.make_ndarray(proto))
    except (TypeError, ValueError) as e:
        raise invalid(f"input '{info.name}' is not a valid TensorProto: {e}") from None


def to_inputs(protos: Mapping[str, tensor_pb2.TensorProto], sig: Signature) -> dict[str, np.ndarray]:
    """A request's named TensorProtos (PredictRequest.inputs) -> arrays, after TF Serving's name checks."""
    sig.check_input_names(list(protos))
    return {alias: to_array(proto, sig.inputs[alias]) for alias, proto in protos.items()}


def to_proto(arr: np.ndarray) -> tensor_pb2.TensorProto:
    """A request tensor, as TensorFlow's Python clients write it (tensor_content for most arrays)."""
    return tf.make_tensor_proto(arr)


# TensorProto's packed repeated fields whose wire form is the values' little-endian bytes.
_RAW_FIELDS = {np.dtype(np.float32): (5, "<f4"), np.dtype(np.float64): (6, "<f8"),
               np.dtype(np.complex64): (9, "<f4"), np.dtype(np.complex128): (12, "<f8"), np.dtype(np.bool_): (11, "u1")}
# The other numbers' fields (varints): filled from a list, as protobuf has no array path for them.
_LIST_FIELDS = {np.dtype(t): f for t, f in ((np.int32, "int_val"), (np.int16, "int_val"), (np.int8, "int_val"),
                                            (np.uint8, "int_val"), (np.uint16, "int_val"), (np.int64, "int64_val"),
                                            (np.uint32, "uint32_val"), (np.uint64, "uint64_val"))}


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def to_response_proto(arr: np.ndarray) -> tensor_pb2.TensorProto:
    """An answer tensor as TF Serving writes it: `Tensor::AsProtoField`, the typed value field
    (`float_val`, `int_val`, ...), never `tensor_content` (predict_util.cc, kAsProtoField;
    clients that read `outputs[...].float_val` depend on it). Floats, complexes and bools go in as
    one packed field parsed from the array's bytes: no Python object per value."""
    arr = np.asarray(arr)
    if not arr.dtype.isnative:
        arr = arr.astype(arr.dtype.newbyteorder("="))
    dtype = tf.as_dtype(arr.dtype)
    proto = tensor_pb2.TensorProto(dtype=dtype.as_datatype_enum)
    for d in arr.shape:
        proto.tensor_shape.dim.add(size=d)
    if arr.size == 0:
        return proto
    if (raw := _RAW_FIELDS.get(arr.dtype)) is not None:
        number, wire = raw
        # complexes as (real, imaginary) pairs, as TensorProto stores them
        data = np.ascontiguousarray(arr).ravel().view(wire).tobytes()
        proto.MergeFromString(_varint(number << 3 | 2) + _varint(len(data)) + data)
    elif (field := _LIST_FIELDS.get(arr.dtype)) is not None:
        getattr(proto, field).extend(arr.ravel().tolist())
    elif dtype in (tf.float16, tf.bfloat16):  # half_val holds their bit patterns
        proto.half_val.extend(arr.ravel().view(np.uint16).tolist())
    else:  # strings (and anything else): TensorFlow's own conversion, which fills string_val
        return tf.make_tensor_proto(arr)
    return proto
