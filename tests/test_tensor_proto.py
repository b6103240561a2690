"""TensorProto codec (TF Serving's gRPC tensors): round trips per dtype and every refusal."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf
from tensorflow.core.framework import tensor_pb2, types_pb2

from tfprod.codec import tensor_proto
from tfprod.errors import Code, ServingError
from tfprod.signature import DTYPES, TensorInfo

ROUND_TRIPS = [
    (np.array([[1.5, -2.0], [np.nan, np.inf]], np.float32), types_pb2.DT_FLOAT),
    (np.array([1e300, -1e-300], np.float64), types_pb2.DT_DOUBLE),
    (np.array([0.5, 65504], np.float16), types_pb2.DT_HALF),
    (np.array([-(2**31), 2**31 - 1], np.int32), types_pb2.DT_INT32),
    (np.array([-(2**63), 2**63 - 1], np.int64), types_pb2.DT_INT64),
    (np.array([0, 255], np.uint8), types_pb2.DT_UINT8),
    (np.array([-128, 127], np.int8), types_pb2.DT_INT8),
    (np.array([2**64 - 1], np.uint64), types_pb2.DT_UINT64),
    (np.array([True, False]), types_pb2.DT_BOOL),
    (np.array([[b"a", b"\xff\x00"]], dtype=object), types_pb2.DT_STRING),
    (np.array(3.0, np.float32), types_pb2.DT_FLOAT),
    (np.zeros((0, 3), np.float32), types_pb2.DT_FLOAT),
]


@pytest.mark.parametrize(("array", "dtype"), ROUND_TRIPS, ids=lambda v: str(getattr(v, "dtype", v)))
def test_round_trip(array: np.ndarray, dtype: int) -> None:
    proto = tensor_proto.to_proto(array)
    assert proto.dtype == dtype
    back = tensor_proto.to_array(proto, TensorInfo("x", dtype, None))
    assert back.shape == array.shape
    assert back.dtype == DTYPES[dtype][1]
    np.testing.assert_array_equal(back, array)


_VALUE_FIELD = {types_pb2.DT_FLOAT: "float_val", types_pb2.DT_DOUBLE: "double_val", types_pb2.DT_HALF: "half_val",
                types_pb2.DT_INT32: "int_val", types_pb2.DT_INT64: "int64_val", types_pb2.DT_UINT8: "int_val",
                types_pb2.DT_INT8: "int_val", types_pb2.DT_UINT64: "uint64_val", types_pb2.DT_BOOL: "bool_val",
                types_pb2.DT_STRING: "string_val"}


@pytest.mark.parametrize(("array", "dtype"), ROUND_TRIPS, ids=lambda v: str(getattr(v, "dtype", v)))
def test_answers_use_the_typed_value_field_as_tf_serving_does(array: np.ndarray, dtype: int) -> None:
    """TF Serving writes Predict outputs with Tensor::AsProtoField: `float_val` etc., no tensor_content."""
    proto = tensor_proto.to_response_proto(array)
    assert proto.dtype == dtype and not proto.tensor_content
    assert [d.size for d in proto.tensor_shape.dim] == list(array.shape)
    field = getattr(proto, _VALUE_FIELD[dtype])
    assert len(field) == array.size
    if dtype == types_pb2.DT_HALF:
        assert list(field) == array.ravel().view(np.uint16).tolist()  # the bit patterns, as TensorFlow stores them
    elif dtype != types_pb2.DT_STRING:
        np.testing.assert_array_equal(np.array(list(field), array.dtype), array.ravel())
    back = tf.make_ndarray(proto)
    assert back.shape == array.shape
    np.testing.assert_array_equal(back, array)


def test_bfloat16_and_complex_answers_use_half_val_and_complex_fields() -> None:
    import ml_dtypes

    halves = np.array([1.5, -3.0], ml_dtypes.bfloat16)
    proto = tensor_proto.to_response_proto(halves)
    assert proto.dtype == types_pb2.DT_BFLOAT16 and list(proto.half_val) == halves.view(np.uint16).tolist()
    pairs = np.array([1 + 2j, -3.5j], np.complex64)
    proto = tensor_proto.to_response_proto(pairs)
    assert list(proto.scomplex_val) == [1.0, 2.0, 0.0, -3.5]
    np.testing.assert_array_equal(tf.make_ndarray(proto), pairs)


def test_one_value_fills_its_shape_as_tensorflow_does() -> None:
    proto = tensor_pb2.TensorProto(dtype=types_pb2.DT_FLOAT, float_val=[7.0])
    proto.tensor_shape.dim.add(size=2)
    proto.tensor_shape.dim.add(size=3)
    np.testing.assert_array_equal(tensor_proto.to_array(proto, TensorInfo("x", types_pb2.DT_FLOAT, (-1, 3))),
                                  np.full((2, 3), 7.0, np.float32))


def _proto(dims: list[int], dtype: int = types_pb2.DT_FLOAT, **values: object) -> tensor_pb2.TensorProto:
    proto = tensor_pb2.TensorProto(dtype=dtype, **values)  # type: ignore[arg-type]
    for d in dims:
        proto.tensor_shape.dim.add(size=d)
    return proto


REFUSED = [
    ("dtype", tf.make_tensor_proto(np.array([1], np.int64)), "is DT_INT64 but the signature expects DT_FLOAT"),
    ("content-short", _proto([4], tensor_content=b"\0" * 12), "tensor_content holds 12 bytes"),
    ("content-long", _proto([1], tensor_content=b"\0" * 8), "needs 4"),
    ("values-vs-shape", _proto([3], float_val=[1.0, 2.0]), "has 2 values but its shape [3] holds 3"),
    ("negative-dim", _proto([-2], float_val=[1.0]), "negative dimension"),
    ("huge-fill", _proto([1 << 20, 1 << 20], float_val=[1.0]), "has 1 values but its shape"),
    ("no-values", _proto([2]), "has 0 values"),
]


@pytest.mark.parametrize(("proto", "message"), [r[1:] for r in REFUSED], ids=[r[0] for r in REFUSED])
def test_refusals_name_the_input(proto: tensor_pb2.TensorProto, message: str) -> None:
    with pytest.raises(ServingError) as e:
        tensor_proto.to_array(proto, TensorInfo("x", types_pb2.DT_FLOAT, None))
    assert e.value.code is Code.INVALID_ARGUMENT
    assert message in e.value.message
    assert "'x'" in e.value.message
