"""The V2 (Open Inference Protocol) codec, checked against tritonclient's own encoders and decoders.

Requests are built by tritonclient exactly as it sends them and parsed by `tfprod.codec.v2`;
responses are formatted by the codec and read back by tritonclient. gRPC messages cross between
tritonclient's generated classes and ours as bytes, which proves the field numbers agree.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from typing import Any

import ml_dtypes
import numpy as np
import pytest
import tritonclient.grpc as tgrpc
import tritonclient.http as thttp
from google.protobuf import descriptor as gdesc
from tritonclient.grpc import _utils as tgrpc_utils
from tritonclient.grpc import service_pb2 as triton_pb2
from tritonclient.utils import deserialize_bytes_tensor, np_to_triton_dtype, serialize_byte_tensor

from tfprod.codec import v2
from tfprod.errors import Code, ServingError
from tfprod.protos import grpc_predict_v2_pb2 as pb
from tfprod.protos import grpc_predict_v2_pb2_grpc as pb_grpc
from tfprod.signature import PREDICT_METHOD, Signature, TensorInfo

# V2 datatype -> (TF dtype enum, a sample 2x3 array with the type's edge values).
SAMPLES: dict[str, tuple[int, np.ndarray]] = {
    "BOOL": (10, np.array([[True, False, True], [False, False, True]])),
    "UINT8": (4, np.array([[0, 1, 255], [7, 8, 9]], np.uint8)),
    "UINT16": (17, np.array([[0, 1, 65535], [7, 8, 9]], np.uint16)),
    "UINT32": (22, np.array([[0, 1, 2**32 - 1], [7, 8, 9]], np.uint32)),
    "UINT64": (23, np.array([[0, 1, 2**64 - 1], [7, 8, 9]], np.uint64)),
    "INT8": (6, np.array([[-128, 0, 127], [7, -8, 9]], np.int8)),
    "INT16": (5, np.array([[-32768, 0, 32767], [7, -8, 9]], np.int16)),
    "INT32": (3, np.array([[-(2**31), 0, 2**31 - 1], [7, -8, 9]], np.int32)),
    "INT64": (9, np.array([[-(2**63), 0, 2**63 - 1], [7, -8, 9]], np.int64)),
    "FP16": (19, np.array([[0.1, -2.5, 65504], [1e-3, 0, 3]], np.float16)),
    "FP32": (1, np.array([[0.1, -2.5, 3.4e38], [1e-30, 0, 3]], np.float32)),
    "FP64": (2, np.array([[0.1, -2.5, 1.7e308], [5e-324, 0, 3]], np.float64)),
    "BF16": (14, np.array([[0.1, -2.5, 3e38], [1e-3, 0, 3]], ml_dtypes.bfloat16)),
    "BYTES": (7, np.array([[b"a", b"", "h\u00e9".encode()], [b"x" * 300, b"\x00z", b"q"]], dtype=object)),
}
DATATYPES = list(SAMPLES)
JSON_DATATYPES = [d for d in DATATYPES if d != "BF16"]  # tritonclient sends BF16 only as binary
TYPED_DATATYPES = [d for d in DATATYPES if d not in ("FP16", "BF16")]  # FP16/BF16 have no contents field


def signature(inputs: dict[str, tuple[int, tuple[int, ...] | None]],
              outputs: dict[str, tuple[int, tuple[int, ...] | None]] | None = None) -> Signature:
    def infos(spec: dict[str, tuple[int, tuple[int, ...] | None]]) -> dict[str, TensorInfo]:
        return {name: TensorInfo(name, enum, shape) for name, (enum, shape) in spec.items()}
    return Signature("serving_default", PREDICT_METHOD, infos(inputs), infos(outputs or {}))


def sig_for(dtype: str, shape: tuple[int, ...] | None = (-1, 3)) -> Signature:
    enum = SAMPLES[dtype][0]
    return signature({"x": (enum, shape)}, {"y": (enum, shape)})


def assert_same(got: np.ndarray, want: np.ndarray) -> None:
    assert got.shape == want.shape
    if want.dtype == object:
        assert [v if isinstance(v, bytes) else v.encode() for v in got.reshape(-1)] == list(want.reshape(-1))
    else:
        assert got.dtype == want.dtype
        np.testing.assert_array_equal(got, want)


def rest_body(*inputs: thttp.InferInput, outputs: list[thttp.InferRequestedOutput] | None = None,
              **kwargs: Any) -> tuple[bytes, int | None]:
    body, header_length = thttp.InferenceServerClient.generate_request_body(list(inputs), outputs=outputs, **kwargs)
    return (body if isinstance(body, bytes) else body.encode()), header_length


def http_input(name: str, array: np.ndarray, binary: bool) -> thttp.InferInput:
    inp = thttp.InferInput(name, list(array.shape), np_to_triton_dtype(array.dtype))
    return inp.set_data_from_numpy(array, binary_data=binary)


def grpc_request(*inputs: tgrpc.InferInput, outputs: list[tgrpc.InferRequestedOutput] | None = None,
                 request_id: str = "") -> pb.ModelInferRequest:
    theirs = tgrpc_utils._get_inference_request(
        model_name="m", inputs=list(inputs), model_version="", request_id=request_id, outputs=outputs,
        sequence_id=0, sequence_start=False, sequence_end=False, priority=0, timeout=None, parameters=None)
    return pb.ModelInferRequest.FromString(theirs.SerializeToString())


def grpc_input(name: str, array: np.ndarray) -> tgrpc.InferInput:
    return tgrpc.InferInput(name, list(array.shape), np_to_triton_dtype(array.dtype)).set_data_from_numpy(array)


def raises(code: Code, match: str, fn: Callable[[], Any]) -> ServingError:
    with pytest.raises(ServingError, match=match) as info:
        fn()
    assert info.value.code == code, info.value
    return info.value


# -- the proto ------------------------------------------------------------------------------

def _messages(desc: Any) -> list[Any]:
    out = [desc]
    for nested in desc.nested_types:
        out += _messages(nested)
    return out


OUR_MESSAGES = [m for top in pb.DESCRIPTOR.message_types_by_name.values() for m in _messages(top)]


@pytest.mark.parametrize("ours", OUR_MESSAGES, ids=lambda m: m.full_name)
def test_every_message_matches_tritons_field_for_field(ours: Any) -> None:
    theirs = triton_pb2.DESCRIPTOR.pool.FindMessageTypeByName(ours.full_name)
    def fields(d: Any) -> set[tuple[Any, ...]]:
        return {(f.name, f.number, f.type, f.is_repeated, f.message_type.full_name if f.message_type else None,
                 f.containing_oneof.name if f.containing_oneof else None) for f in d.fields}
    assert fields(ours) == fields(theirs)


def test_service_methods_match_tritons() -> None:
    ours = pb.DESCRIPTOR.services_by_name["GRPCInferenceService"]
    theirs = triton_pb2.DESCRIPTOR.services_by_name["GRPCInferenceService"]
    assert ours.full_name == theirs.full_name == "inference.GRPCInferenceService"
    for method in ours.methods:
        other = theirs.methods_by_name[method.name]
        assert (method.input_type.full_name, method.output_type.full_name) == \
            (other.input_type.full_name, other.output_type.full_name)
    assert {m.name for m in ours.methods} >= {
        "ServerLive", "ServerReady", "ModelReady", "ServerMetadata", "ModelMetadata", "ModelInfer",
        "RepositoryIndex", "RepositoryModelLoad", "RepositoryModelUnload"}
    assert hasattr(pb_grpc, "GRPCInferenceServiceStub")
    assert hasattr(pb_grpc, "add_GRPCInferenceServiceServicer_to_server")


def test_our_descriptors_live_in_a_private_pool() -> None:
    assert pb.DESCRIPTOR.pool is not triton_pb2.DESCRIPTOR.pool
    assert isinstance(pb.DESCRIPTOR, gdesc.FileDescriptor)


@pytest.mark.parametrize("first,second", [("tritonclient.grpc", "tfprod.protos.grpc_predict_v2_pb2_grpc"),
                                          ("tfprod.protos.grpc_predict_v2_pb2_grpc", "tritonclient.grpc")])
def test_ours_and_tritonclients_import_in_either_order(first: str, second: str) -> None:
    code = f"import {first}, {second}; print('ok')"
    result = subprocess.run([sys.executable, "-W", "error", "-c", code], capture_output=True, text=True, timeout=60)
    assert result.stdout.strip() == "ok", result.stderr[-2000:]


def test_repository_messages_cross_the_wire() -> None:
    theirs = triton_pb2.RepositoryModelLoadRequest(model_name="m")
    theirs.parameters["config"].string_param = "{}"
    theirs.parameters["file:1/model.savedmodel"].bytes_param = b"\x00\x01"
    ours = pb.RepositoryModelLoadRequest.FromString(theirs.SerializeToString())
    assert ours.model_name == "m" and ours.parameters["config"].string_param == "{}"
    assert ours.parameters["file:1/model.savedmodel"].bytes_param == b"\x00\x01"
    unload = triton_pb2.RepositoryModelUnloadRequest(model_name="m")
    unload.parameters["unload_dependents"].bool_param = True
    assert pb.RepositoryModelUnloadRequest.FromString(unload.SerializeToString()).parameters[
        "unload_dependents"].bool_param
    index = pb.RepositoryIndexResponse()
    index.models.add(name="m", version="1", state="READY", reason="")
    read = triton_pb2.RepositoryIndexResponse.FromString(index.SerializeToString())
    assert (read.models[0].name, read.models[0].version, read.models[0].state) == ("m", "1", "READY")


# -- metadata -------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", DATATYPES)
def test_datatype_names_and_numpy_dtypes(dtype: str) -> None:
    enum, sample = SAMPLES[dtype]
    assert v2.DATATYPES[enum] == dtype
    assert v2.datatype(TensorInfo("x", enum, (2,))) == dtype
    assert v2.NP_DTYPES[dtype] == sample.dtype
    assert np_to_triton_dtype(sample.dtype) == dtype


@pytest.mark.parametrize("enum,tf_name", [(8, "DT_COMPLEX64"), (18, "DT_COMPLEX128"), (20, "DT_RESOURCE"),
                                          (21, "DT_VARIANT")])
def test_dtypes_without_a_v2_datatype_are_unimplemented(enum: int, tf_name: str) -> None:
    info = TensorInfo("c", enum, (1,))
    err = raises(Code.UNIMPLEMENTED, "cannot be expressed in the V2 protocol", lambda: v2.datatype(info))
    assert tf_name in err.message and "'c'" in err.message


@pytest.mark.parametrize("shape,want", [((-1, 3), [-1, 3]), ((), []), (None, [-1])])
def test_tensor_metadata(shape: tuple[int, ...] | None, want: list[int]) -> None:
    assert v2.tensor_metadata(TensorInfo("x", 1, shape)) == {"name": "x", "datatype": "FP32", "shape": want}


# -- REST requests --------------------------------------------------------------------------

@pytest.mark.parametrize("dtype,binary", [(d, b) for d in DATATYPES for b in (True, False) if b or d in JSON_DATATYPES])
def test_rest_request_from_tritonclient(dtype: str, binary: bool) -> None:
    sample = SAMPLES[dtype][1]
    body, header_length = rest_body(http_input("x", sample, binary), request_id="r1")
    assert (header_length is not None) == binary
    request = v2.parse_rest(body, header_length)
    assert request.id == "r1" and request.parameters == {"binary_data_output": True}
    assert [(i.name, i.datatype, i.shape) for i in request.inputs] == [("x", dtype, (2, 3))]
    assert_same(v2.to_inputs(request, sig_for(dtype))["x"], sample)


@pytest.mark.parametrize("dtype", DATATYPES)
def test_rest_nested_data_equals_flat(dtype: str) -> None:
    sample = SAMPLES[dtype][1]
    plain = sample.astype(np.float32) if dtype == "BF16" else sample
    values: list[Any] = [v.decode() if isinstance(v, bytes) else v for v in plain.reshape(-1).tolist()]
    nested = [values[:3], values[3:]]
    for data in (values, nested):
        doc = {"inputs": [{"name": "x", "datatype": dtype, "shape": [2, 3], "data": data}]}
        assert_same(v2.parse_rest(json.dumps(doc).encode()).inputs[0].array, sample)


def test_rest_several_inputs_mixing_json_and_binary() -> None:
    a, b = SAMPLES["FP32"][1], SAMPLES["BYTES"][1]
    c = np.array(7, np.int64)
    body, header_length = rest_body(http_input("a", a, True), http_input("b", b, True), http_input("c", c, False))
    sig = signature({"c": (9, ()), "b": (7, (2, 3)), "a": (1, (2, -1))})
    arrays = v2.to_inputs(v2.parse_rest(body, header_length), sig)
    assert list(arrays) == ["c", "b", "a"]  # the signature's order
    assert_same(arrays["a"], a)
    assert_same(arrays["b"], b)
    assert_same(arrays["c"], c)


def test_rest_nan_and_infinity_tokens_are_read() -> None:
    doc = b'{"inputs":[{"name":"x","datatype":"FP32","shape":[3],"data":[NaN,Infinity,-Infinity]}]}'
    got = v2.parse_rest(doc).inputs[0].array
    assert np.isnan(got[0]) and got[1] == np.inf and got[2] == -np.inf


def test_rest_empty_tensors() -> None:
    cases: list[tuple[list[int], list[Any]]] = [([0], []), ([2, 0], []), ([2, 0], [[], []])]
    for shape, data in cases:
        doc = {"inputs": [{"name": "x", "datatype": "FP32", "shape": shape, "data": data}]}
        assert v2.parse_rest(json.dumps(doc).encode()).inputs[0].array.shape == tuple(shape)
    body, header_length = rest_body(http_input("s", np.empty((0,), dtype=object), True))
    assert v2.parse_rest(body, header_length).inputs[0].array.shape == (0,)


def _input(**fields: Any) -> bytes:
    entry = {"name": "x", "datatype": "FP32", "shape": [2], "data": [1.0, 2.0]}
    entry.update(fields)
    return json.dumps({"inputs": [{k: v for k, v in entry.items() if v is not ...}]}).encode()


def _binary(entry: dict[str, Any], payload: bytes, extra: bytes = b"") -> tuple[bytes, int]:
    header = json.dumps({"inputs": [entry]}).encode()
    return header + payload + extra, len(header)


_F32 = {"name": "x", "datatype": "FP32", "shape": [2], "parameters": {"binary_data_size": 8}}
_STR = {"name": "s", "datatype": "BYTES", "shape": [2], "parameters": {"binary_data_size": 9}}

REST_ERRORS: list[tuple[str, bytes, int | None, str]] = [
    ("empty body", b"", None, "document is empty"),
    ("not json", b"{", None, "JSON Parse error"),
    ("too deep", b"[" * 2000 + b"]" * 2000, None, "JSON Parse error"),
    ("not an object", b"[]", None, "must be a JSON object"),
    ("no inputs", b"{}", None, "needs an 'inputs' array"),
    ("inputs not a list", b'{"inputs": {}}', None, "needs an 'inputs' array"),
    ("input not an object", b'{"inputs": [1]}', None, r"inputs\[0\] must be an object"),
    ("id not a string", b'{"id": 5, "inputs": []}', None, "'id' must be a string"),
    ("parameters not an object", b'{"parameters": [], "inputs": []}', None, "must be a JSON object"),
    ("binary_data_output not bool", b'{"parameters": {"binary_data_output": 1}, "inputs": []}', None,
     "'binary_data_output' of the request must be true or false"),
    ("no name", _input(name=...), None, r"inputs\[0\] needs a 'name' string"),
    ("unknown datatype", _input(datatype="FLOAT32"), None, "has datatype \"FLOAT32\"; the V2 datatypes are BOOL"),
    ("no shape", _input(shape=...), None, "needs a 'shape' array of integers"),
    ("float dim", _input(shape=[2.0]), None, "needs a 'shape' array of integers"),
    ("bool dim", _input(shape=[True]), None, "needs a 'shape' array of integers"),
    ("negative dim", _input(shape=[-1, 2]), None, r"shape \[-1,2\]; every dimension must be between 0"),
    ("huge dim", _input(shape=[2**63]), None, "every dimension must be between 0"),
    ("rank too high", _input(shape=[1] * 65), None, "rank 65; at most 64"),
    ("too large empty", _input(shape=[0, 2**62, 2**62], data=[]), None, "too large"),
    ("no data", _input(data=...), None, "has neither 'data' nor 'parameters.binary_data_size'"),
    ("data not a list", _input(data=1.0, shape=[]), None, "'data' must be an array"),
    ("too few values", _input(data=[1.0]), None, r"has 1 values but shape \[2\] needs 2"),
    ("too many values", _input(data=[1.0, 2.0, 3.0]), None, r"has 3 values but shape \[2\] needs 2"),
    ("nested mismatch", _input(shape=[2, 2], data=[[1, 2], [3]]), None, "does not match shape .2,2. at depth 1"),
    ("nested ragged first", _input(shape=[2, 2], data=[[1, 2, 3], [4]]), None, "at depth 1"),
    ("nested too deep", _input(shape=[2], data=[[1], [2]]), None, "nested deeper than shape"),
    ("flat with a list", _input(shape=[2], data=[1, [2]]), None, "nested deeper than shape"),
    ("string in FP32", _input(data=[1.0, "2"]), None, "\\(FP32\\) has the value \"2\"; expected a number"),
    ("bool in FP32", _input(data=[1.0, True]), None, "has the value true; expected a number"),
    ("null in FP32", _input(data=[1.0, None]), None, "has the value null; expected a number"),
    ("float in INT32", _input(datatype="INT32", data=[1, 2.5]), None, "has the value 2.5; expected an integer"),
    ("bool in INT64", _input(datatype="INT64", data=[1, False]), None, "expected an integer"),
    ("int in BOOL", _input(datatype="BOOL", data=[True, 1]), None, "has the value 1; expected true or false"),
    ("number in BYTES", _input(datatype="BYTES", data=["a", 1]), None, "expected a string"),
    ("object in BYTES", _input(datatype="BYTES", data=["a", {"b64": "AA=="}]), None, "expected a string"),
    ("UINT8 overflow", _input(datatype="UINT8", data=[1, 256]), None, r"out of range for UINT8 \[0, 255\]"),
    ("UINT32 negative", _input(datatype="UINT32", data=[1, -1]), None, "out of range for UINT32"),
    ("INT64 overflow", _input(datatype="INT64", data=[1, 2**63]), None, "out of range for INT64"),
    ("FP16 overflow", _input(datatype="FP16", data=[1, 1e6]), None, "out of range for FP16"),
    ("FP32 overflow", _input(data=[1, 1e39]), None, "out of range for FP32"),
    ("lone surrogate", b'{"id":"NaN","inputs":[{"name":"x","datatype":"BYTES","shape":[1],"data":["\\ud800"]}]}', None,
     "not valid Unicode"),
    ("input parameters not an object", _input(parameters=5), None, "'parameters' of input 'x' must be"),
    ("outputs not a list", b'{"inputs": [], "outputs": {}}', None, "'outputs' must be an array"),
    ("output without name", b'{"inputs": [], "outputs": [{}]}', None, r"outputs\[0\] must be an object"),
    ("binary_data not bool", b'{"inputs": [], "outputs": [{"name": "y", "parameters": {"binary_data": "yes"}}]}',
     None, "'binary_data' of requested output 'y' must be true or false"),
    # the binary extension
    ("header length zero", _input(), 0, "Inference-Header-Content-Length is 0"),
    ("header length past the body", b"{}", 3, "between 1 and the body's length"),
    ("header cuts the json", *_binary(_F32, b"\0" * 8)[:1], 10, "JSON Parse error"),
    ("binary size without header", json.dumps({"inputs": [_F32]}).encode(), None,
     "no Inference-Header-Content-Length header"),
    ("data and binary size", *_binary(dict(_F32, data=[1, 2]), b"\0" * 8), "has both 'data' and"),
    ("negative binary size", *_binary(dict(_F32, parameters={"binary_data_size": -8}), b"\0" * 8),
     "binary_data_size -8; it must be a byte count"),
    ("string binary size", *_binary(dict(_F32, parameters={"binary_data_size": "8"}), b"\0" * 8),
     "binary_data_size \"8\""),
    ("binary size past the body", *_binary(dict(_F32, parameters={"binary_data_size": 2**62}), b"\0" * 8),
     "only 8 bytes of binary data are left"),
    ("bytes left over", *_binary(_F32, b"\0" * 8, b"\0"), "9 bytes after the JSON header, but the inputs' "
     "binary_data_size values add up to 8"),
    ("byte count vs shape", *_binary(dict(_F32, parameters={"binary_data_size": 4}), b"\0" * 4),
     r"has 4 bytes of data, but FP32 shape \[2\] needs 8 \(2 x 4\)"),
    ("bool byte not 0/1", *_binary({"name": "b", "datatype": "BOOL", "shape": [2],
                                    "parameters": {"binary_data_size": 2}}, b"\x01\x02"), "other than 0 or 1"),
    ("BYTES short length", *_binary(dict(_STR, parameters={"binary_data_size": 3}), b"\x01\0\0"),
     "ends with 3 stray bytes"),
    ("BYTES length past the end", *_binary(dict(_STR, parameters={"binary_data_size": 6}), b"\xff\0\0\0ab"),
     "element 0 has length 255, but only 2 bytes are left"),
    ("BYTES too few elements", *_binary(dict(_STR, parameters={"binary_data_size": 5}), b"\x01\0\0\0a"),
     "has 1 elements but its shape needs 2"),
    ("BYTES too many elements", *_binary(dict(_STR, parameters={"binary_data_size": 15}),
                                         b"\x01\0\0\0a" * 3), "more than the 2 elements"),
]


@pytest.mark.parametrize("body,header_length,match", [c[1:] for c in REST_ERRORS], ids=[c[0] for c in REST_ERRORS])
def test_rest_request_errors(body: bytes, header_length: int | None, match: str) -> None:
    raises(Code.INVALID_ARGUMENT, match, lambda: v2.parse_rest(body, header_length))


@pytest.mark.parametrize("doc", [
    {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1], "data": [1],
                 "parameters": {"shared_memory_region": "r"}}]},
    {"inputs": [], "outputs": [{"name": "y", "parameters": {"shared_memory_region": "r"}}]},
    {"inputs": [], "outputs": [{"name": "y", "parameters": {"classification": 3}}]},
], ids=["input shared memory", "output shared memory", "classification"])
def test_rest_unsupported_extensions(doc: dict[str, Any]) -> None:
    raises(Code.UNIMPLEMENTED, "which this server does not support", lambda: v2.parse_rest(json.dumps(doc).encode()))


# -- gRPC requests --------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", DATATYPES)
def test_grpc_raw_request_from_tritonclient(dtype: str) -> None:
    sample = SAMPLES[dtype][1]
    request = v2.parse_grpc(grpc_request(grpc_input("x", sample), request_id="r2"))
    assert request.id == "r2"
    assert [(i.name, i.datatype, i.shape) for i in request.inputs] == [("x", dtype, (2, 3))]
    assert_same(v2.to_inputs(request, sig_for(dtype))["x"], sample)


_FIELDS = {"BOOL": "bool_contents", "INT8": "int_contents", "INT16": "int_contents", "INT32": "int_contents",
           "INT64": "int64_contents", "UINT8": "uint_contents", "UINT16": "uint_contents",
           "UINT32": "uint_contents", "UINT64": "uint64_contents", "FP32": "fp32_contents",
           "FP64": "fp64_contents", "BYTES": "bytes_contents"}


def typed_request(dtype: str, values: list[Any], shape: list[int], field: str | None = None) -> pb.ModelInferRequest:
    theirs = triton_pb2.ModelInferRequest(model_name="m")
    tensor = theirs.inputs.add(name="x", datatype=dtype, shape=shape)
    getattr(tensor.contents, field or _FIELDS[dtype]).extend(values)
    return pb.ModelInferRequest.FromString(theirs.SerializeToString())


@pytest.mark.parametrize("dtype", TYPED_DATATYPES)
def test_grpc_typed_contents(dtype: str) -> None:
    sample = SAMPLES[dtype][1]
    request = v2.parse_grpc(typed_request(dtype, sample.reshape(-1).tolist(), [2, 3]))
    assert request.id is None
    assert_same(request.inputs[0].array, sample)


def test_grpc_parameters_and_requested_outputs() -> None:
    theirs = triton_pb2.ModelInferRequest(model_name="m", id="r")
    theirs.parameters["b"].bool_param = True
    theirs.parameters["i"].int64_param = -3
    theirs.parameters["s"].string_param = "v"
    theirs.parameters["d"].double_param = 0.5
    theirs.parameters["u"].uint64_param = 2**64 - 1
    theirs.outputs.add(name="y").parameters["k"].int64_param = 1
    request = v2.parse_grpc(pb.ModelInferRequest.FromString(theirs.SerializeToString()))
    assert request.parameters == {"b": True, "i": -3, "s": "v", "d": 0.5, "u": 2**64 - 1}
    assert request.outputs == [v2.V2Output("y", None, {"k": 1})]


def _raw_request(n_raw: int, typed: bool = False) -> pb.ModelInferRequest:
    request = pb.ModelInferRequest()
    for name in ("a", "b"):
        tensor = request.inputs.add(name=name, datatype="FP32", shape=[1])
        if typed:
            tensor.contents.fp32_contents.append(1.0)
    request.raw_input_contents.extend([b"\0" * 4] * n_raw)
    return request


GRPC_ERRORS: list[tuple[str, pb.ModelInferRequest, str]] = [
    ("raw count", _raw_request(1), "1 raw_input_contents for 2 inputs"),
    ("raw and typed", _raw_request(2, typed=True), "sets 'contents' but the request uses raw_input_contents"),
    ("wrong field", typed_request("FP32", [1.0, 2.0], [2], field="fp64_contents"),
     r"must carry its values in contents.fp32_contents, not contents.fp64_contents"),
    ("count", typed_request("INT32", [1, 2, 3], [2]), r"has 3 values in contents.int_contents but shape \[2\] needs 2"),
    ("INT8 range", typed_request("INT8", [1, 300], [2]), r"out of range for INT8 \[-128, 127\]"),
    ("UINT16 range", typed_request("UINT16", [1, 70000], [2]), r"out of range for UINT16"),
    ("FP16 typed", typed_request("FP16", [1.0], [1], field="fp32_contents"), "FP16.*send it in raw_input_contents"),
    ("unknown datatype", pb.ModelInferRequest(inputs=[pb.ModelInferRequest.InferInputTensor(
        name="x", datatype="fp32", shape=[1])]), "has datatype \"fp32\""),
    ("negative dim", pb.ModelInferRequest(inputs=[pb.ModelInferRequest.InferInputTensor(
        name="x", datatype="FP32", shape=[-1])]), "every dimension must be between 0"),
    ("raw byte count", pb.ModelInferRequest(inputs=[pb.ModelInferRequest.InferInputTensor(
        name="x", datatype="INT64", shape=[2])], raw_input_contents=[b"\0" * 15]), "has 15 bytes of data"),
    ("raw BYTES", pb.ModelInferRequest(inputs=[pb.ModelInferRequest.InferInputTensor(
        name="x", datatype="BYTES", shape=[1])], raw_input_contents=[b"\x05\0\0\0ab"]), "element 0 has length 5"),
]


@pytest.mark.parametrize("request_,match", [c[1:] for c in GRPC_ERRORS], ids=[c[0] for c in GRPC_ERRORS])
def test_grpc_request_errors(request_: pb.ModelInferRequest, match: str) -> None:
    raises(Code.INVALID_ARGUMENT, match, lambda: v2.parse_grpc(request_))


def test_grpc_empty_fp16_needs_no_contents() -> None:
    request = pb.ModelInferRequest(inputs=[pb.ModelInferRequest.InferInputTensor(name="x", datatype="FP16",
                                                                                  shape=[0, 4])])
    assert v2.parse_grpc(request).inputs[0].array.shape == (0, 4)


def test_grpc_shared_memory_is_unimplemented() -> None:
    inp = grpc_input("x", np.zeros(2, np.float32))
    inp.set_shared_memory("region", 8)
    raises(Code.UNIMPLEMENTED, "shared memory", lambda: v2.parse_grpc(grpc_request(inp)))


# -- matching a signature -------------------------------------------------------------------

SIG = signature({"a": (1, (-1, 2)), "b": (9, None)}, {"y": (1, (-1,)), "z": (7, (-1,))})


def _req(*inputs: tuple[str, str, tuple[int, ...]], outputs: tuple[str, ...] = ()) -> v2.V2Request:
    made = [v2.V2Input(n, d, s, np.zeros(s, v2.NP_DTYPES[d]), {}) for n, d, s in inputs]
    return v2.V2Request(None, {}, made, [v2.V2Output(o, None, {}) for o in outputs])


def test_to_inputs_any_shape_for_unknown_rank() -> None:
    arrays = v2.to_inputs(_req(("b", "INT64", (1, 2, 3)), ("a", "FP32", (5, 2))), SIG)
    assert list(arrays) == ["a", "b"] and arrays["b"].shape == (1, 2, 3)


MATCH_ERRORS = [
    ("unknown", _req(("a", "FP32", (1, 2)), ("c", "FP32", (1,))), "unknown input 'c'; the model's inputs are 'a', 'b'"),
    ("duplicate", _req(("a", "FP32", (1, 2)), ("a", "FP32", (1, 2))), "input 'a' appears more than once"),
    ("missing", _req(("a", "FP32", (1, 2))), "missing input 'b'; the model's inputs are 'a', 'b'"),
    ("datatype", _req(("a", "INT64", (1, 2)), ("b", "INT64", ())),
     "input 'a' has datatype INT64 but the model expects FP32"),
    ("rank", _req(("a", "FP32", (2,)), ("b", "INT64", ())),
     r"input 'a' has shape \[2\] but the model expects \[-1,2\]"),
    ("dim", _req(("a", "FP32", (1, 3)), ("b", "INT64", ())), r"has shape \[1,3\] but the model expects \[-1,2\]"),
]


@pytest.mark.parametrize("request_,match", [c[1:] for c in MATCH_ERRORS], ids=[c[0] for c in MATCH_ERRORS])
def test_to_inputs_errors(request_: v2.V2Request, match: str) -> None:
    raises(Code.INVALID_ARGUMENT, match, lambda: v2.to_inputs(request_, SIG))


@pytest.mark.parametrize("outputs,want", [((), ["y", "z"]), (("z",), ["z"]), (("z", "y"), ["z", "y"])])
def test_requested_outputs(outputs: tuple[str, ...], want: list[str]) -> None:
    assert v2.requested_outputs(_req(outputs=outputs), SIG) == want


@pytest.mark.parametrize("outputs,match", [(("q",), "unknown output 'q' requested; the model's outputs are 'y', 'z'"),
                                           (("y", "y"), "output 'y' is requested more than once")])
def test_requested_output_errors(outputs: tuple[str, ...], match: str) -> None:
    raises(Code.INVALID_ARGUMENT, match, lambda: v2.requested_outputs(_req(outputs=outputs), SIG))


# -- responses ------------------------------------------------------------------------------

@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
@pytest.mark.parametrize("dtype", DATATYPES)
def test_rest_response_read_by_tritonclient(dtype: str, binary: bool) -> None:
    sample = SAMPLES[dtype][1]
    body, header_length = rest_body(http_input("x", sample, True),
                                    outputs=[thttp.InferRequestedOutput("y", binary_data=binary)], request_id="r")
    request = v2.parse_rest(body, header_length)
    out, out_length = v2.format_rest("m", "3", request, {"y": sample}, sig_for(dtype))
    assert (out_length is not None) == binary
    result = thttp.InferResult.from_response_body(out, header_length=out_length)
    response = result.get_response()
    assert (response["model_name"], response["model_version"], response["id"]) == ("m", "3", "r")
    assert_same(result.as_numpy("y"), sample)


@pytest.mark.parametrize("dtype", DATATYPES)
def test_grpc_response_read_by_tritonclient(dtype: str) -> None:
    sample = SAMPLES[dtype][1]
    request = v2.parse_grpc(grpc_request(grpc_input("x", sample), request_id="r"))
    response = v2.format_grpc("m", "3", request, {"y": sample}, sig_for(dtype))
    theirs = triton_pb2.ModelInferResponse.FromString(response.SerializeToString())
    assert (theirs.model_name, theirs.model_version, theirs.id) == ("m", "3", "r")
    assert (theirs.outputs[0].name, theirs.outputs[0].datatype, list(theirs.outputs[0].shape)) == ("y", dtype, [2, 3])
    assert_same(tgrpc.InferResult(theirs).as_numpy("y"), sample)


def test_raw_bytes_are_tritons_encoding() -> None:
    sample = SAMPLES["BYTES"][1]
    response = v2.format_grpc("m", "1", _req(), {"y": sample.reshape(-1)}, signature({}, {"y": (7, (-1,))}))
    assert response.raw_output_contents[0] == serialize_byte_tensor(sample).item()
    assert list(deserialize_bytes_tensor(response.raw_output_contents[0])) == list(sample.reshape(-1))


def _choose(per_output: bool | None, request_level: bool | None, default: bool) -> bool:
    params = {} if request_level is None else {"binary_data_output": request_level}
    request = v2.V2Request(None, params, [], [v2.V2Output("y", per_output, {})])
    _, header_length = v2.format_rest("m", "1", request, {"y": np.zeros(2, np.float32)},
                                      signature({}, {"y": (1, (-1,))}), binary_default=default)
    return header_length is not None


@pytest.mark.parametrize("per_output,request_level,default,want", [
    (True, False, False, True), (False, True, True, False),
    (None, True, False, True), (None, False, True, False),
    (None, None, True, True), (None, None, False, False),
])
def test_binary_output_choice(per_output: bool | None, request_level: bool | None, default: bool, want: bool) -> None:
    assert _choose(per_output, request_level, default) is want


def test_rest_response_all_outputs_in_signature_order_with_mixed_encodings() -> None:
    body, header_length = rest_body(http_input("a", np.zeros((1, 2), np.float32), False),
                                    http_input("b", np.array(1, np.int64), False))
    request = v2.parse_rest(body, header_length)  # no outputs named: tritonclient asks for binary_data_output
    outputs = {"z": np.array([b"p", b"q"], dtype=object), "y": np.array([1.5, -2], np.float32)}
    out, out_length = v2.format_rest("m", "1", request, outputs, SIG)
    assert out_length is not None
    result = thttp.InferResult.from_response_body(out, header_length=out_length)
    assert [o["name"] for o in result.get_response()["outputs"]] == ["y", "z"]
    assert_same(result.as_numpy("y"), outputs["y"])
    assert_same(result.as_numpy("z"), outputs["z"])
    assert "id" not in result.get_response()


def test_rest_response_json_is_flat_row_major() -> None:
    request = v2.V2Request("i", {}, [], [])
    sig = signature({}, {"y": (3, (2, 2))})
    out, header_length = v2.format_rest("m", "1", request, {"y": np.array([[1, 2], [3, 4]], np.int32).T}, sig)
    assert header_length is None
    assert json.loads(out) == {"model_name": "m", "model_version": "1", "id": "i", "outputs": [
        {"name": "y", "datatype": "INT32", "shape": [2, 2], "data": [1, 3, 2, 4]}]}


@pytest.mark.parametrize("dtype", ["FP16", "FP32", "FP64", "BF16"])
def test_non_finite_floats_are_written_as_nan_tokens(dtype: str) -> None:
    values = np.array([np.nan, np.inf, -np.inf, 0.1], v2.NP_DTYPES[dtype])
    sig = signature({}, {"y": (SAMPLES[dtype][0], (-1,))})
    out, _ = v2.format_rest("m", "1", v2.V2Request(None, {}, [], []), {"y": values}, sig)
    assert b"[NaN,Infinity,-Infinity," in out
    got = thttp.InferResult.from_response_body(out).as_numpy("y")
    assert np.isnan(got[0]) and list(got[1:]) == list(values[1:])


def test_non_utf8_bytes_need_binary_output() -> None:
    sig = signature({}, {"y": (7, (-1,))})
    outputs = {"y": np.array([b"\xff"], dtype=object)}
    raises(Code.INVALID_ARGUMENT, "not UTF-8 text.*binary_data", lambda: v2.format_rest(
        "m", "1", _req(outputs=("y",)), outputs, sig))
    out, header_length = v2.format_rest("m", "1", _req(outputs=("y",)), outputs, sig, binary_default=True)
    assert_same(thttp.InferResult.from_response_body(out, header_length=header_length).as_numpy("y"), outputs["y"])


def test_missing_model_output_is_internal() -> None:
    raises(Code.INTERNAL, "no output 'y'", lambda: v2.format_grpc("m", "1", _req(outputs=("y",)), {}, SIG))


def test_unexpressible_output_is_unimplemented() -> None:
    sig = signature({}, {"c": (8, (1,))})
    raises(Code.UNIMPLEMENTED, "DT_COMPLEX64", lambda: v2.format_rest(
        "m", "1", _req(), {"c": np.zeros(1, np.complex64)}, sig))


def test_string_outputs_may_be_str_or_numpy_bytes() -> None:
    sig = signature({}, {"y": (7, (-1,))})
    for values in (np.array(["a", "b"]), np.array([b"a", b"b"])):
        response = v2.format_grpc("m", "1", _req(), {"y": values}, sig)
        assert list(tgrpc.InferResult(response).as_numpy("y")) == [b"a", b"b"]
