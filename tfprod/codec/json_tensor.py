"""TF Serving's REST JSON <-> numpy arrays (the spec is TF Serving's util/json_tensor.cc).

Pure functions: they never mutate their input. Each raises `ServingError(INVALID_ARGUMENT)` with
a message a client can act on. Request documents are parsed with orjson (which refuses nesting
deeper than 1024, the CVE-2025-0649 class of crash); documents with the NaN/Infinity tokens TF
Serving accepts fall back to the standard library, whose recursion limit bounds nesting too.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Mapping, Sequence
from typing import Any

import ml_dtypes
import numpy as np
import orjson

from tfprod.errors import Code, ServingError, invalid
from tfprod.signature import Signature, TensorInfo

_NON_FINITE = re.compile(rb"\b(NaN|-?Infinity|-?Inf)\b")
_MAX_SHOWN = 200  # characters of a client's value quoted back in an error message


def _show(value: Any) -> str:
    text = json.dumps(value, default=str)
    return text if len(text) <= _MAX_SHOWN else text[:_MAX_SHOWN] + "..."


def _type_name(value: Any) -> str:
    if value is None:
        return "Null"
    if isinstance(value, bool):
        return "True" if value else "False"
    if isinstance(value, (int, float)):
        return "Number"
    if isinstance(value, str):
        return "String"
    if isinstance(value, list):
        return "Array"
    return "Object"


def loads(body: bytes) -> Any:
    """Parse a request body; NaN, Infinity and -Infinity are accepted as TF Serving does."""
    if not body.strip():
        raise invalid("JSON Parse error: The document is empty")
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as e:
        if "depth limit" in str(e) or not _NON_FINITE.search(body):
            raise invalid(f"JSON Parse error: {e}") from None
    try:
        return json.loads(body.replace(b"-Inf,", b"-Infinity,").decode("utf-8"))
    except RecursionError:
        raise invalid("JSON Parse error: document nested too deeply") from None
    except (ValueError, UnicodeDecodeError) as e:
        raise invalid(f"JSON Parse error: {e}") from None


# Possessive, and an unterminated string runs to the end: linear time on any input.
_STRING = re.compile(rb'"[^"\\]*+(?:\\.[^"\\]*+)*+(?:"|\Z)')
_NOT_BRACKETS = bytes(c for c in range(256) if c not in b"[]{}")
_STEP = np.zeros(256, np.int8)
_STEP[[ord("["), ord("{")]] = 1
_STEP[[ord("]"), ord("}")]] = -1


def nesting_depth(body: bytes) -> int:
    """How deep a JSON document's arrays and objects nest, from its bytes, without parsing it:
    strings dropped, everything but brackets dropped, then a running sum."""
    brackets = _STRING.sub(b"", body).translate(None, _NOT_BRACKETS)
    return int(np.cumsum(_STEP[np.frombuffer(brackets, np.uint8)], dtype=np.int32).max(initial=0))


def parse_object(body: bytes) -> dict[str, Any]:
    doc = loads(body)
    if not isinstance(doc, dict):
        raise invalid(f"JSON Value: {_show(doc)} Is not object")
    return doc


def signature_name(doc: Mapping[str, Any], default: str) -> str:
    name = doc.get("signature_name", default)
    if not isinstance(name, str):
        raise invalid("'signature_name' key must be a string value.")
    return name


# -- JSON value -> numpy --------------------------------------------------------------------

def _is_b64(value: Any) -> bool:
    return isinstance(value, dict) and len(value) == 1 and "b64" in value


def _decode_b64(value: dict[str, Any]) -> bytes:
    data = value["b64"]
    if not isinstance(data, str):
        raise invalid(f"JSON Value: {_show(value)} not formatted correctly for base64 data")
    try:
        return base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise invalid(f"Unable to base64 decode: {_show(data)}") from None


def _strings(value: Any) -> Any:
    """Nested lists of str / {"b64": ...} -> the same nesting of bytes."""
    if isinstance(value, list):
        return [_strings(v) for v in value]
    if isinstance(value, str):
        return value.encode("utf-8")
    if _is_b64(value):
        return _decode_b64(value)
    if isinstance(value, dict):
        raise invalid(f"JSON Value: {_show(value)} not formatted correctly for base64 data")
    raise invalid(f"JSON Value: {_show(value)} Type: {_type_name(value)} is not of expected type: string")


def _shape_of(value: Any) -> tuple[int, ...]:
    shape: list[int] = []
    while isinstance(value, list):
        shape.append(len(value))
        if not value:
            break
        value = value[0]
    return tuple(shape)


def _string_array(value: Any, name: str) -> np.ndarray:
    decoded = _strings(value)
    shape = _shape_of(decoded)
    out = np.empty(shape, dtype=object)
    try:
        flat = np.array(decoded, dtype=object).reshape(-1) if shape else [decoded]
        if len(flat) != out.size or any(isinstance(x, list) for x in flat):
            raise ValueError
    except ValueError:
        raise invalid(f"Input '{name}': lists of unequal length (a ragged tensor); "
                      "every list at the same depth must have the same length") from None
    out.reshape(-1)[:] = flat
    return out


_KIND_OK = {"f": "fiu", "i": "iu", "u": "iu", "b": "b"}
_BFLOAT16 = np.dtype(ml_dtypes.bfloat16)  # numpy calls its kind "V"; JSON sends it as numbers


def to_array(value: Any, info: TensorInfo) -> np.ndarray:
    """One input's JSON value (scalar or nested lists) -> an array of the input's dtype."""
    if info.is_string:
        return _string_array(value, info.name)
    target = info.np_dtype
    if isinstance(value, dict):
        raise invalid(f"JSON Value: {_show(value)} Type: Object is not of expected type: {info.dtype_name}")
    try:
        arr = np.asarray(value)
    except (ValueError, OverflowError):
        raise invalid(f"Input '{info.name}': lists of unequal length (a ragged tensor), or a value that "
                      f"is not a {info.dtype_name} number") from None
    kind = "f" if target == _BFLOAT16 else target.kind
    if arr.size and arr.dtype.kind not in _KIND_OK[kind]:
        bad = _first_bad(value, kind)
        raise invalid(f"JSON Value: {_show(bad)} Type: {_type_name(bad)} is not of expected type: "
                      f"{info.dtype_name} (input '{info.name}')")
    if target.kind in "iu" and arr.size:
        lo, hi = np.iinfo(target).min, np.iinfo(target).max
        if arr.min() < lo or arr.max() > hi:
            raise invalid(f"Input '{info.name}': value out of range for {info.dtype_name} [{lo}, {hi}]")
    return arr.astype(target, copy=False)


def _first_bad(value: Any, kind: str) -> Any:
    """The first leaf that does not fit `kind`, to quote in the error."""
    if isinstance(value, list):
        for v in value:
            bad = _first_bad(v, kind)
            if bad is not _OK:
                return bad
        return _OK
    if kind == "b":
        return _OK if isinstance(value, bool) else value
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return value
    if kind in "iu" and isinstance(value, float):
        return value
    return _OK


_OK = object()


# -- predict requests -----------------------------------------------------------------------

def parse_predict(doc: Mapping[str, Any], sig: Signature) -> tuple[dict[str, np.ndarray], bool]:
    """A predict request -> (named input arrays, row_format)."""
    if "instances" in doc and "inputs" in doc:
        raise invalid("Not formatted correctly expecting only one of 'inputs' or 'instances' keys to exist")
    if "instances" in doc:
        return _parse_instances(doc["instances"], sig), True
    if "inputs" in doc:
        return _parse_inputs(doc["inputs"], sig), False
    raise invalid("Missing 'inputs' or 'instances' key")


def _parse_instances(instances: Any, sig: Signature) -> dict[str, np.ndarray]:
    if not isinstance(instances, list):
        raise invalid("Expecting 'instances' to be an list/array")
    if not instances:
        raise invalid("No values in 'instances' array")
    names = list(sig.inputs)
    named = isinstance(instances[0], dict) and not _is_b64(instances[0])
    if not named:
        if len(names) != 1:
            raise invalid("instances is a plain list, but expecting list of objects as multiple input "
                          f"tensors required as per tensorinfo_map: {_names(names)}")
        for i, inst in enumerate(instances):
            if isinstance(inst, dict) and not _is_b64(inst):
                raise invalid(f"Expecting value/list but got object at item {i} of input list")
        return {names[0]: _stack(instances, sig.inputs[names[0]])}
    columns: dict[str, list[Any]] = {n: [] for n in names}
    for i, inst in enumerate(instances):
        if not isinstance(inst, dict) or _is_b64(inst):
            raise invalid(f"Expecting object but got value/list at item {i} of input list")
        if set(inst) != set(names):
            raise invalid(f"Failed to process element: {i} of 'instances' list. JSON object: "
                          f"{_show(inst)} must only have keys: {_names(names)}")
        for n in names:
            columns[n].append(inst[n])
    return {n: _stack(columns[n], sig.inputs[n]) for n in names}


def _stack(rows: list[Any], info: TensorInfo) -> np.ndarray:
    first = _shape_of(rows[0])
    for i, row in enumerate(rows):
        if _shape_of(row) != first:
            raise invalid(f"Failed to process element: {i} of 'instances' list. Error: Expecting shape "
                          f"{_dims(first)} but got: {_dims(_shape_of(row))} (input '{info.name}')")
    return to_array(rows, info)


def _parse_inputs(inputs: Any, sig: Signature) -> dict[str, np.ndarray]:
    names = list(sig.inputs)
    if isinstance(inputs, dict) and not _is_b64(inputs):
        missing = [n for n in names if n not in inputs]
        if missing:
            raise invalid(f"Missing named input: {missing[0]} in 'inputs' object. "
                          f"Inputs expected: {_names(names)}")
        return {n: to_array(inputs[n], sig.inputs[n]) for n in names}
    if len(names) != 1:
        raise invalid("inputs is a plain value/list, but expecting an object as multiple input tensors "
                      f"required as per tensorinfo_map: {_names(names)}")
    return {names[0]: to_array(inputs, sig.inputs[names[0]])}


def _names(names: Sequence[str]) -> str:
    return ",".join(sorted(names))


def _dims(shape: tuple[int, ...]) -> str:
    return "[" + ",".join(str(d) for d in shape) + "]"


# -- numpy -> JSON --------------------------------------------------------------------------

def _jsonable(arr: np.ndarray, name: str) -> Any:
    """An output array in a form orjson writes as TF Serving would."""
    if arr.dtype == object or arr.dtype.kind in "SU":
        as_b64 = name.endswith("_bytes")
        def conv(x: Any) -> Any:
            b = x if isinstance(x, bytes) else str(x).encode("utf-8")
            if as_b64:
                return {"b64": base64.b64encode(b).decode("ascii")}
            try:
                return b.decode("utf-8")
            except UnicodeDecodeError:  # not text: say so losslessly instead of failing
                return {"b64": base64.b64encode(b).decode("ascii")}
        return np.frompyfunc(conv, 1, 1)(arr).tolist() if arr.ndim else conv(arr.item())
    if arr.dtype.kind not in "fiub":
        arr = arr.astype(np.float32)  # bfloat16 and friends
    return np.ascontiguousarray(arr) if arr.ndim else arr[()]  # a scalar stays one (ascontiguousarray makes it [x])


def _has_non_finite(value: Any) -> bool:
    return isinstance(value, np.ndarray) and value.dtype.kind == "f" and not bool(np.isfinite(value).all())


def _plain(value: Any) -> Any:
    """numpy -> Python for the standard library's writer, keeping float32's short repr."""
    if isinstance(value, np.generic):
        value = np.asarray(value)
    if isinstance(value, np.ndarray):
        if value.dtype.kind == "f":
            return value.astype(str).astype(np.float64).tolist()  # float32's shortest repr, as doubles
        return value.tolist()
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def dumps(doc: Any) -> bytes:
    """Write a response; non-finite floats as NaN/Infinity/-Infinity, as TF Serving writes them."""
    try:
        return orjson.dumps(doc, option=orjson.OPT_SERIALIZE_NUMPY)
    except orjson.JSONEncodeError as e:
        raise ServingError(Code.INTERNAL, f"Failed to write JSON response: {e}") from None


def _dumps_outputs(doc: dict[str, Any], arrays: list[Any]) -> bytes:
    if any(_has_non_finite(a) for a in arrays):
        return json.dumps(_plain(doc), separators=(",", ":")).encode("utf-8")
    return dumps(doc)


def format_predict(outputs: Mapping[str, np.ndarray], row_format: bool) -> bytes:
    if not outputs:
        raise ServingError(Code.INTERNAL, "Cannot convert empty tensor map to JSON")
    values = {name: _jsonable(arr, name) for name, arr in outputs.items()}
    if not row_format:
        body: Any = next(iter(values.values())) if len(values) == 1 else values
        return _dumps_outputs({"outputs": body}, list(values.values()))
    batch: int | None = None
    for name, arr in outputs.items():
        if arr.ndim == 0:
            raise invalid(f"Tensor name: {name} has no shape information ")
        if batch is None:
            batch = arr.shape[0]
        elif arr.shape[0] != batch:
            raise invalid(f"Tensor name: {name} has inconsistent batch size: {arr.shape[0]} expecting: {batch}")
    if len(values) == 1:
        return _dumps_outputs({"predictions": next(iter(values.values()))}, list(values.values()))
    rows = [{name: v[i] for name, v in values.items()} for i in range(batch or 0)]
    return _dumps_outputs({"predictions": rows}, list(values.values()))


def format_error(message: str) -> bytes:
    return orjson.dumps({"error": message})
