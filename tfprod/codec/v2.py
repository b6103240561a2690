"""The KServe V2 / Open Inference Protocol wire formats <-> numpy arrays.

Pure functions, no TensorFlow: each raises `ServingError` (INVALID_ARGUMENT unless noted) with a
message that names the input or output and says what was expected and what arrived.

`DATATYPES` maps TF dtype enums to V2 datatype names and `NP_DTYPES` those names to numpy dtypes;
`datatype(info)` and `tensor_metadata(info)` describe a signature tensor for model metadata.

Requests go through one transport-neutral form, `V2Request`:

- `parse_rest(body, header_length)`: the REST JSON request. `data` is flat (row-major) or nested
  exactly as `shape`; BOOL is true/false, BYTES elements are JSON strings (their UTF-8 bytes, as
  Triton reads them). With the binary tensor data extension, `header_length` (the
  `Inference-Header-Content-Length` header) bytes of JSON come first, then each input that sets
  `parameters.binary_data_size` takes that many bytes, in input order; they must add up to the rest
  of the body.
- `parse_grpc(request)`: a `ModelInferRequest`, from the typed `contents` fields or from
  `raw_input_contents` (then one entry per input, in order, and no input may use `contents`).
  INT8/INT16 ride in `int_contents`, UINT8/UINT16 in `uint_contents`; FP16 and BF16 travel raw only.
- `to_inputs(request, sig)`: the arrays the model gets, keyed and ordered as `sig.inputs`.
- `requested_outputs(request, sig)`: the output names to compute (all of `sig.outputs` when none
  are requested); call it before running the model to reject a bad request early.
- `format_rest(...) -> (body, header_length)`: the REST response. An output is binary when its
  requested `parameters.binary_data` says so, else when the request's
  `parameters.binary_data_output` does, else per `binary_default`; binary outputs carry
  `parameters.binary_data_size` and their bytes follow the JSON, whose length is returned for the
  `Inference-Header-Content-Length` header (None when no output is binary).
- `format_grpc(...)`: a `ModelInferResponse` with `raw_output_contents`, which is what
  tritonclient's `InferResult.as_numpy` reads.

Raw and binary tensor bytes are little-endian, row-major, unpadded; a BYTES element is a 4-byte
little-endian length followed by its bytes (Triton's encoding). Arrays parsed from bytes may be
read-only views of the request.

Choices where the protocol is silent:
- NaN and +/-Infinity are read and written as the bare tokens NaN, Infinity and -Infinity, as
  Triton does (its JSON reader and writer allow them, and so does tritonclient's rapidjson).
- A tensor of unknown rank is described with shape [-1], the closest the protocol can say; a
  request of any shape is accepted for it.
- BF16 is carried as `ml_dtypes.bfloat16` (what tritonclient uses): raw bytes in binary and gRPC;
  in JSON as numbers, which tritonclient itself never sends but reads back fine.
- BYTES outputs that are not valid UTF-8 cannot be JSON strings: formatting them as JSON is refused
  with a message that says to request binary data.
- Shared memory and Triton's classification extension are refused with UNIMPLEMENTED.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
import struct
from collections.abc import Mapping, Sequence
from typing import Any

import ml_dtypes
import numpy as np
import orjson

from tfprod.codec.json_tensor import loads
from tfprod.errors import Code, ServingError, invalid
from tfprod.protos import grpc_predict_v2_pb2 as pb
from tfprod.signature import Signature, TensorInfo

# TF DataType enum -> V2 datatype name.
DATATYPES: dict[int, str] = {
    1: "FP32", 2: "FP64", 3: "INT32", 4: "UINT8", 5: "INT16", 6: "INT8", 7: "BYTES", 9: "INT64",
    10: "BOOL", 14: "BF16", 17: "UINT16", 19: "FP16", 22: "UINT32", 23: "UINT64",
}

# V2 datatype name -> numpy dtype of the arrays this module produces and accepts.
NP_DTYPES: dict[str, np.dtype] = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype(np.uint8), "UINT16": np.dtype(np.uint16),
    "UINT32": np.dtype(np.uint32), "UINT64": np.dtype(np.uint64),
    "INT8": np.dtype(np.int8), "INT16": np.dtype(np.int16),
    "INT32": np.dtype(np.int32), "INT64": np.dtype(np.int64),
    "FP16": np.dtype(np.float16), "FP32": np.dtype(np.float32), "FP64": np.dtype(np.float64),
    "BF16": np.dtype(ml_dtypes.bfloat16),
    "BYTES": np.dtype(object),
}

_WIRE = {name: dt.newbyteorder("<") for name, dt in NP_DTYPES.items() if name != "BYTES"}
_TF_NAMES = {8: "DT_COMPLEX64", 18: "DT_COMPLEX128", 20: "DT_RESOURCE", 21: "DT_VARIANT"}
_LENGTH = struct.Struct("<I")
_MAX_RANK = 64  # numpy's limit
_MAX_DIM = 2**63 - 1  # the protocol's shapes are int64
_MAX_SHOWN = 200  # characters of a client's value quoted back in an error message

# JSON: the Python types a value of each datatype may have, and how to say it in an error.
_JSON_TYPES: dict[str, tuple[frozenset[type], str]] = {
    "BOOL": (frozenset({bool}), "true or false"),
    "BYTES": (frozenset({str}), "a string"),
    **{n: (frozenset({int}), "an integer") for n in NP_DTYPES if n[0] in "IU"},
    **{n: (frozenset({int, float}), "a number") for n in ("FP16", "FP32", "FP64", "BF16")},
}

# gRPC: the InferTensorContents field of each datatype, and that field's numpy dtype.
_CONTENTS: dict[str, tuple[str, np.dtype]] = {
    "BOOL": ("bool_contents", np.dtype(np.bool_)),
    "INT8": ("int_contents", np.dtype(np.int32)),
    "INT16": ("int_contents", np.dtype(np.int32)),
    "INT32": ("int_contents", np.dtype(np.int32)),
    "INT64": ("int64_contents", np.dtype(np.int64)),
    "UINT8": ("uint_contents", np.dtype(np.uint32)),
    "UINT16": ("uint_contents", np.dtype(np.uint32)),
    "UINT32": ("uint_contents", np.dtype(np.uint32)),
    "UINT64": ("uint64_contents", np.dtype(np.uint64)),
    "FP32": ("fp32_contents", np.dtype(np.float32)),
    "FP64": ("fp64_contents", np.dtype(np.float64)),
    "BYTES": ("bytes_contents", np.dtype(object)),
}

# Parameters that ask for extensions this server does not implement.
_UNSUPPORTED = {
    "shared_memory_region": "shared memory, which this server does not support; send the data in the request",
    "classification": "the classification extension, which this server does not support",
}


@dataclasses.dataclass(frozen=True)
class V2Input:
    name: str
    datatype: str  # a key of NP_DTYPES
    shape: tuple[int, ...]
    array: np.ndarray  # of NP_DTYPES[datatype], already in `shape`
    parameters: dict[str, Any]


@dataclasses.dataclass(frozen=True)
class V2Output:
    name: str
    binary_data: bool | None  # REST: this output's `parameters.binary_data`; None when not given
    parameters: dict[str, Any]


@dataclasses.dataclass(frozen=True)
class V2Request:
    id: str | None
    parameters: dict[str, Any]
    inputs: list[V2Input]
    outputs: list[V2Output]  # empty: every output of the signature


# -- signature metadata ---------------------------------------------------------------------

def datatype(info: TensorInfo) -> str:
    """The V2 datatype of a signature tensor; UNIMPLEMENTED when the protocol has none."""
    name = DATATYPES.get(info.dtype_enum)
    if name is None:
        tf_name = _TF_NAMES.get(info.dtype_enum, info.dtype_name)
        raise ServingError(Code.UNIMPLEMENTED, f"tensor '{_clip(info.name)}' has dtype {tf_name}, which cannot be "
                           f"expressed in the V2 protocol (its datatypes are {', '.join(NP_DTYPES)})")
    return name


def tensor_metadata(info: TensorInfo) -> dict[str, Any]:
    """`{"name", "datatype", "shape"}` for model metadata; -1 marks an unknown dimension."""
    shape = [-1] if info.shape is None else list(info.shape)
    return {"name": info.name, "datatype": datatype(info), "shape": shape}


# -- REST requests --------------------------------------------------------------------------

def parse_rest(body: bytes, header_length: int | None = None) -> V2Request:
    """A V2 REST inference request; `header_length` is the Inference-Header-Content-Length."""
    if header_length is None:
        try:
            doc = loads(body)
        except ServingError as e:
            raise invalid(f"{e.message} (a body with binary tensor data needs the Inference-Header-Content-"
                          "Length header: the byte length of its JSON part)") from None
        binary = _Binary(None)
    else:
        if not 0 < header_length <= len(body):
            raise invalid(f"Inference-Header-Content-Length is {header_length}, but it must be between 1 and "
                          f"the body's length ({len(body)} bytes)")
        doc, binary = loads(body[:header_length]), _Binary(memoryview(body)[header_length:])
    if not isinstance(doc, dict):
        raise invalid(f"the request must be a JSON object, got {_show(doc)}")
    request_id = doc.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise invalid(f"the request's 'id' must be a string, got {_show(request_id)}")
    parameters = _json_params(doc.get("parameters"), "the request")
    _check_bool(parameters, "binary_data_output", "the request")
    entries = doc.get("inputs")
    if not isinstance(entries, list):
        raise invalid("the request needs an 'inputs' array of {\"name\", \"shape\", \"datatype\", \"data\"} objects")
    inputs = [_rest_input(entry, i, binary) for i, entry in enumerate(entries)]
    binary.finish()
    return V2Request(request_id, parameters, inputs, _rest_outputs(doc.get("outputs")))


class _Binary:
    """The bytes after the JSON header, handed out to the inputs in order."""

    def __init__(self, data: memoryview | None) -> None:
        self.data = data
        self.used = 0

    def take(self, size: int, name: str) -> memoryview:
        if self.data is None:
            raise invalid(f"input '{_clip(name)}' sets 'binary_data_size', but the request has no "
                          "Inference-Header-Content-Length header to say where the JSON ends")
        left = len(self.data) - self.used
        if size > left:
            raise invalid(f"input '{_clip(name)}' has binary_data_size {size}, but only {left} bytes of binary "
                          "data are left in the body")
        self.used += size
        return self.data[self.used - size:self.used]

    def finish(self) -> None:
        if self.data is not None and self.used != len(self.data):
            raise invalid(f"the body has {len(self.data)} bytes after the JSON header, but the inputs' "
                          f"binary_data_size values add up to {self.used}")


def _rest_input(entry: Any, index: int, binary: _Binary) -> V2Input:
    if not isinstance(entry, dict):
        raise invalid(f"inputs[{index}] must be an object with 'name', 'shape', 'datatype' and 'data', "
                      f"got {_show(entry)}")
    name = entry.get("name")
    if not isinstance(name, str):
        raise invalid(f"inputs[{index}] needs a 'name' string")
    dtype = _datatype(entry.get("datatype"), name)
    shape_value = entry.get("shape")
    if not isinstance(shape_value, list) or any(type(d) is not int for d in shape_value):
        raise invalid(f"input '{_clip(name)}' needs a 'shape' array of integers, got {_show(shape_value)}")
    shape = _shape(shape_value, name)
    parameters = _json_params(entry.get("parameters"), f"input '{_clip(name)}'")
    _refuse_unsupported(parameters, f"input '{_clip(name)}'")
    size = parameters.get("binary_data_size")
    if size is None:
        if "data" not in entry:
            raise invalid(f"input '{_clip(name)}' has neither 'data' nor 'parameters.binary_data_size'")
        array = _from_json(entry["data"], name, dtype, shape)
    else:
        if "data" in entry:
            raise invalid(f"input '{_clip(name)}' has both 'data' and 'parameters.binary_data_size'; send one")
        if type(size) is not int or size < 0:
            raise invalid(f"input '{_clip(name)}' has binary_data_size {_show(size)}; it must be a byte count >= 0")
        array = _from_bytes(binary.take(size, name), name, dtype, shape)
    return V2Input(name, dtype, shape, array, parameters)


def _rest_outputs(entries: Any) -> list[V2Output]:
    if entries is None:
        return []
    if not isinstance(entries, list):
        raise invalid(f"'outputs' must be an array of {{\"name\": ...}} objects, got {_show(entries)}")
    outputs = []
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
            raise invalid(f"outputs[{i}] must be an object with a 'name' string, got {_show(entry)}")
        what = f"requested output '{_clip(entry['name'])}'"
        parameters = _json_params(entry.get("parameters"), what)
        _refuse_unsupported(parameters, what)
        _check_bool(parameters, "binary_data", what)
        outputs.append(V2Output(entry["name"], parameters.get("binary_data"), parameters))
    return outputs


def _json_params(value: Any, what: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise invalid(f"'parameters' of {what} must be a JSON object, got {_show(value)}")
    return value


def _check_bool(parameters: Mapping[str, Any], key: str, what: str) -> None:
    if key in parameters and not isinstance(parameters[key], bool):
        raise invalid(f"parameter '{key}' of {what} must be true or false, got {_show(parameters[key])}")


def _from_json(data: Any, name: str, dtype: str, shape: tuple[int, ...]) -> np.ndarray:
    if not isinstance(data, list):
        raise invalid(f"input '{_clip(name)}': 'data' must be an array, flat or nested as the shape, "
                      f"got {_show(data)}")
    flat = _flatten(data, name, shape) if data and type(data[0]) is list else data
    count = math.prod(shape)
    if len(flat) != count:
        raise invalid(f"input '{_clip(name)}' has {len(flat)} values but shape {_dims(shape)} needs {count}")
    allowed, expected = _JSON_TYPES[dtype]
    if not set(map(type, flat)) <= allowed:
        bad = next(v for v in flat if type(v) not in allowed)
        if isinstance(bad, list):
            raise invalid(f"input '{_clip(name)}': 'data' is nested deeper than shape {_dims(shape)}")
        raise invalid(f"input '{_clip(name)}' ({dtype}) has the value {_show(bad)}; expected {expected}")
    return _reshape(_json_array(flat, name, dtype), name, shape)


def _flatten(data: list[Any], name: str, shape: tuple[int, ...]) -> list[Any]:
    """Nested lists that match `shape` exactly -> their leaves in row-major order."""
    level: list[Any] = [data]
    for depth, dim in enumerate(shape):
        if any(type(v) is not list or len(v) != dim for v in level):
            raise invalid(f"input '{_clip(name)}': nested 'data' does not match shape {_dims(shape)} at depth "
                          f"{depth} (every list there must have {dim} elements); send it flat or nested as the shape")
        level = list(itertools.chain.from_iterable(level))
    return level


def _json_array(flat: list[Any], name: str, dtype: str) -> np.ndarray:
    """Type-checked JSON values -> a 1-D array of `dtype`."""
    target = NP_DTYPES[dtype]
    if dtype == "BYTES":
        try:
            return _object_array([s.encode("utf-8") for s in flat])
        except UnicodeEncodeError:
            raise invalid(f"input '{_clip(name)}' has a string that is not valid Unicode (a lone surrogate)") from None
    if target.kind in "iu":
        try:
            return np.array(flat, dtype=target)
        except OverflowError:
            raise invalid(f"input '{_clip(name)}' has a value out of range for {dtype} "
                          f"[{np.iinfo(target).min}, {np.iinfo(target).max}]") from None
    if target.kind == "b":
        return np.array(flat, dtype=target)
    try:
        wide = np.array(flat, dtype=np.float64)
    except OverflowError:  # an integer beyond double's range
        raise invalid(f"input '{_clip(name)}' has a value out of range for {dtype}") from None
    with np.errstate(over="ignore"):
        narrow = wide.astype(target)
    if np.any(np.isinf(narrow) & np.isfinite(wide)):
        raise invalid(f"input '{_clip(name)}' has a value out of range for {dtype}")
    return narrow


# -- gRPC requests --------------------------------------------------------------------------

def parse_grpc(request: pb.ModelInferRequest) -> V2Request:
    """A gRPC ModelInferRequest (any message with its fields, e.g. tritonclient's, works too)."""
    raw = request.raw_input_contents
    if raw and len(raw) != len(request.inputs):
        raise invalid(f"the request has {len(raw)} raw_input_contents for {len(request.inputs)} inputs; with raw "
                      "contents, every input needs one entry, in the order of 'inputs'")
    inputs = []
    for i, tensor in enumerate(request.inputs):
        name = tensor.name
        dtype = _datatype(tensor.datatype, name)
        shape = _shape(list(tensor.shape), name)
        parameters = _grpc_params(tensor.parameters)
        _refuse_unsupported(parameters, f"input '{_clip(name)}'")
        if raw:
            if tensor.contents.ListFields():
                raise invalid(f"input '{_clip(name)}' sets 'contents' but the request uses raw_input_contents; "
                              "with raw contents, every input must use them")
            array = _from_bytes(raw[i], name, dtype, shape)
        else:
            array = _from_contents(tensor.contents, name, dtype, shape)
        inputs.append(V2Input(name, dtype, shape, array, parameters))
    outputs = []
    for out in request.outputs:
        parameters = _grpc_params(out.parameters)
        _refuse_unsupported(parameters, f"requested output '{_clip(out.name)}'")
        outputs.append(V2Output(out.name, None, parameters))
    return V2Request(request.id or None, _grpc_params(request.parameters), inputs, outputs)


def _grpc_params(parameters: Mapping[str, pb.InferParameter]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in parameters.items():
        choice = value.WhichOneof("parameter_choice")
        out[key] = getattr(value, choice) if choice else None
    return out


def _from_contents(contents: pb.InferTensorContents, name: str, dtype: str, shape: tuple[int, ...]) -> np.ndarray:
    count = math.prod(shape)
    present = [field.name for field, _ in contents.ListFields()]
    if dtype not in _CONTENTS:
        if present or count:
            raise invalid(f"input '{_clip(name)}' ({dtype}) has no typed contents field in the V2 protocol; "
                          "send it in raw_input_contents")
        return np.empty(shape, dtype=NP_DTYPES[dtype])
    field, field_dtype = _CONTENTS[dtype]
    stray = [p for p in present if p != field]
    if stray:
        raise invalid(f"input '{_clip(name)}' ({dtype}) must carry its values in contents.{field}, "
                      f"not contents.{stray[0]}")
    values = getattr(contents, field)
    if len(values) != count:
        raise invalid(f"input '{_clip(name)}' has {len(values)} values in contents.{field} but shape "
                      f"{_dims(shape)} needs {count}")
    if dtype == "BYTES":
        return _reshape(_object_array(list(values)), name, shape)
    array = np.array(values, dtype=field_dtype)
    target = NP_DTYPES[dtype]
    if target != field_dtype:
        info = np.iinfo(target)
        if array.size and (array.min() < info.min or array.max() > info.max):
            raise invalid(f"input '{_clip(name)}' has a value out of range for {dtype} [{info.min}, {info.max}]")
        array = array.astype(target)
    return _reshape(array, name, shape)


# -- shared request pieces ------------------------------------------------------------------

def _datatype(value: Any, name: str) -> str:
    if not isinstance(value, str) or value not in NP_DTYPES:
        raise invalid(f"input '{_clip(name)}' has datatype {_show(value)}; the V2 datatypes are "
                      f"{', '.join(NP_DTYPES)}")
    return value


def _shape(dims: list[int], name: str) -> tuple[int, ...]:
    if len(dims) > _MAX_RANK:
        raise invalid(f"input '{_clip(name)}' has rank {len(dims)}; at most {_MAX_RANK} dimensions are supported")
    if any(d < 0 or d > _MAX_DIM for d in dims):
        raise invalid(f"input '{_clip(name)}' has shape {_dims(dims)}; every dimension must be between 0 and "
                      f"{_MAX_DIM}")
    return tuple(dims)


def _refuse_unsupported(parameters: Mapping[str, Any], what: str) -> None:
    for key, reason in _UNSUPPORTED.items():
        if key in parameters:
            raise ServingError(Code.UNIMPLEMENTED, f"{what} sets '{key}', which asks for {reason}")


def _from_bytes(data: bytes | memoryview, name: str, dtype: str, shape: tuple[int, ...]) -> np.ndarray:
    """Raw little-endian tensor bytes (Triton's length-prefixed elements for BYTES) -> an array."""
    count = math.prod(shape)
    if dtype == "BYTES":
        return _reshape(_object_array(_split_bytes(data, name, count)), name, shape)
    wire = _WIRE[dtype]
    if len(data) != count * wire.itemsize:
        raise invalid(f"input '{_clip(name)}' has {len(data)} bytes of data, but {dtype} shape {_dims(shape)} "
                      f"needs {count * wire.itemsize} ({count} x {wire.itemsize})")
    array = np.frombuffer(data, dtype=wire)
    if dtype == "BOOL" and np.any(array.view(np.uint8) > 1):
        raise invalid(f"input '{_clip(name)}' (BOOL) has a byte other than 0 or 1")
    return _reshape(array, name, shape)


def _split_bytes(data: bytes | memoryview, name: str, count: int) -> list[bytes]:
    items: list[bytes] = []
    at, end = 0, len(data)
    while at < end:
        if len(items) == count:
            raise invalid(f"input '{_clip(name)}' (BYTES) has more than the {count} elements its shape needs")
        if end - at < 4:
            raise invalid(f"input '{_clip(name)}' (BYTES) ends with {end - at} stray bytes; every element needs "
                          "a 4-byte little-endian length first")
        (size,) = _LENGTH.unpack_from(data, at)
        at += 4
        if size > end - at:
            raise invalid(f"input '{_clip(name)}' (BYTES) element {len(items)} has length {size}, but only "
                          f"{end - at} bytes are left")
        items.append(bytes(data[at:at + size]))
        at += size
    if len(items) != count:
        raise invalid(f"input '{_clip(name)}' (BYTES) has {len(items)} elements but its shape needs {count}")
    return items


def _object_array(items: Sequence[bytes]) -> np.ndarray:
    array = np.empty(len(items), dtype=object)
    array[:] = items
    return array


def _reshape(array: np.ndarray, name: str, shape: tuple[int, ...]) -> np.ndarray:
    try:
        return array.reshape(shape)
    except ValueError:  # an empty tensor whose other dimensions overflow numpy's size limit
        raise invalid(f"input '{_clip(name)}' has shape {_dims(shape)}, which is too large") from None


# -- requests -> model inputs ---------------------------------------------------------------

def to_inputs(request: V2Request, sig: Signature) -> dict[str, np.ndarray]:
    """The request's arrays keyed and ordered as `sig.inputs`, after checking names, datatypes, shapes."""
    arrays: dict[str, np.ndarray] = {}
    for given in request.inputs:
        info = sig.inputs.get(given.name)
        if info is None:
            raise invalid(f"unknown input '{_clip(given.name)}'; the model's inputs are {_names(sig.inputs)}")
        if given.name in arrays:
            raise invalid(f"input '{_clip(given.name)}' appears more than once in the request")
        expected = datatype(info)
        if given.datatype != expected:
            raise invalid(f"input '{_clip(given.name)}' has datatype {given.datatype} but the model expects {expected}")
        if info.shape is not None and not _fits(given.shape, info.shape):
            raise invalid(f"input '{_clip(given.name)}' has shape {_dims(given.shape)} but the model expects "
                          f"{_dims(info.shape)} (-1: any size)")
        arrays[given.name] = given.array
    missing = [name for name in sig.inputs if name not in arrays]
    if missing:
        raise invalid(f"missing input {_names(missing)}; the model's inputs are {_names(sig.inputs)}")
    return {name: arrays[name] for name in sig.inputs}


def _fits(shape: tuple[int, ...], expected: tuple[int, ...]) -> bool:
    return len(shape) == len(expected) and all(e == -1 or e == d for d, e in zip(shape, expected, strict=True))


def requested_outputs(request: V2Request, sig: Signature) -> list[str]:
    """The outputs to compute and return: those requested, else every output of `sig`, in its order."""
    if not request.outputs:
        return list(sig.outputs)
    names: list[str] = []
    for out in request.outputs:
        if out.name not in sig.outputs:
            raise invalid(f"unknown output '{_clip(out.name)}' requested; the model's outputs are "
                          f"{_names(sig.outputs)}")
        if out.name in names:
            raise invalid(f"output '{_clip(out.name)}' is requested more than once")
        names.append(out.name)
    return names


# -- responses ------------------------------------------------------------------------------

def format_rest(model_name: str, model_version: str, request: V2Request, outputs: Mapping[str, np.ndarray],
                sig: Signature, binary_default: bool = False) -> tuple[bytes, int | None]:
    """The REST response body and its JSON length (None when no output is binary)."""
    choices = {out.name: out.binary_data for out in request.outputs}
    request_choice = request.parameters.get("binary_data_output")
    entries: list[dict[str, Any]] = []
    blobs: list[bytes] = []
    for name in requested_outputs(request, sig):
        dtype = datatype(sig.outputs[name])
        array = _output(outputs, name, dtype)
        entry: dict[str, Any] = {"name": name, "datatype": dtype, "shape": list(array.shape)}
        binary = choices.get(name)
        if binary is None:
            binary = binary_default if request_choice is None else request_choice
        if binary:
            blobs.append(_to_bytes(array, dtype))
            entry["parameters"] = {"binary_data_size": len(blobs[-1])}
        else:
            entry["data"] = _json_data(array, name, dtype)
        entries.append(entry)
    doc: dict[str, Any] = {"model_name": model_name, "model_version": model_version}
    if request.id is not None:
        doc["id"] = request.id
    doc["outputs"] = entries
    header = _dumps(doc)
    if not blobs:
        return header, None
    return b"".join([header, *blobs]), len(header)


def format_grpc(model_name: str, model_version: str, request: V2Request, outputs: Mapping[str, np.ndarray],
                sig: Signature) -> pb.ModelInferResponse:
    """A ModelInferResponse carrying every output in raw_output_contents."""
    response = pb.ModelInferResponse(model_name=model_name, model_version=model_version, id=request.id or "")
    for name in requested_outputs(request, sig):
        dtype = datatype(sig.outputs[name])
        array = _output(outputs, name, dtype)
        response.outputs.add(name=name, datatype=dtype, shape=array.shape)
        response.raw_output_contents.append(_to_bytes(array, dtype))
    return response


def _output(outputs: Mapping[str, np.ndarray], name: str, dtype: str) -> np.ndarray:
    if name not in outputs:
        raise ServingError(Code.INTERNAL, f"the model returned no output '{_clip(name)}'")
    array = np.asarray(outputs[name])
    return array if dtype == "BYTES" else array.astype(NP_DTYPES[dtype], copy=False)


def _element(value: Any) -> bytes:
    return value if isinstance(value, bytes) else str(value).encode("utf-8")


def _to_bytes(array: np.ndarray, dtype: str) -> bytes:
    if dtype == "BYTES":
        pieces: list[bytes] = []
        for value in array.reshape(-1):
            element = _element(value)
            pieces += (_LENGTH.pack(len(element)), element)
        return b"".join(pieces)
    return np.ascontiguousarray(array, dtype=_WIRE[dtype]).tobytes()


def _json_data(array: np.ndarray, name: str, dtype: str) -> Any:
    flat = array.reshape(-1)
    if dtype == "BYTES":
        try:
            return [_element(v).decode("utf-8") for v in flat]
        except UnicodeDecodeError:
            raise invalid(f"output '{_clip(name)}' holds bytes that are not UTF-8 text, which JSON cannot carry; "
                          "request it as binary data (\"parameters\": {\"binary_data\": true})") from None
    return np.ascontiguousarray(flat.astype(np.float32) if dtype == "BF16" else flat)


def _dumps(doc: dict[str, Any]) -> bytes:
    """orjson, unless a float is NaN or infinite: orjson would write null, so use the NaN tokens."""
    data = [out["data"] for out in doc["outputs"] if "data" in out]
    if not any(isinstance(d, np.ndarray) and d.dtype.kind == "f" and not np.isfinite(d).all() for d in data):
        return orjson.dumps(doc, option=orjson.OPT_SERIALIZE_NUMPY)
    plain = dict(doc, outputs=[dict(out, data=_plain(out["data"])) if "data" in out else out
                               for out in doc["outputs"]])
    return json.dumps(plain, separators=(",", ":")).encode("utf-8")


def _plain(data: Any) -> Any:
    if isinstance(data, np.ndarray) and data.dtype.kind == "f" and data.dtype.itemsize < 8:
        return data.astype(str).astype(np.float64).tolist()  # keep float16/32's shortest repr
    return data.tolist() if isinstance(data, np.ndarray) else data


# -- messages -------------------------------------------------------------------------------

def _clip(text: str) -> str:
    return text if len(text) <= _MAX_SHOWN else text[:_MAX_SHOWN] + "..."


def _show(value: Any) -> str:
    return _clip(json.dumps(value, default=str))


def _dims(shape: Sequence[int]) -> str:
    return "[" + ",".join(str(d) for d in shape) + "]"


def _names(names: Mapping[str, Any] | Sequence[str]) -> str:
    return ", ".join(f"'{_clip(n)}'" for n in names)
