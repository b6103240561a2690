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
    return tf.make_tensor_proto(arr)
