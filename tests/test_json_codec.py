"""Tables for TF Serving's JSON codec: requests, responses, examples, and hostile input."""

from __future__ import annotations

import base64
import copy
import json
from typing import Any

import numpy as np
import pytest
from tensorflow.core.example import example_pb2

from tfprod.codec import example, json_tensor
from tfprod.errors import Code, ServingError
from tfprod.signature import Signature, TensorInfo

FLOAT, DOUBLE, INT32, UINT8, STRING, INT64, BOOL, INT8 = 1, 2, 3, 4, 7, 9, 10, 6


def sig(**inputs: tuple[int, tuple[int, ...] | None]) -> Signature:
    return Signature("s", "tensorflow/serving/predict",
                     {k: TensorInfo(k, d, s) for k, (d, s) in inputs.items()}, {})


ONE = sig(x=(FLOAT, (-1,)))
TWO = sig(a=(FLOAT, (-1, 2)), b=(INT64, (-1,)))
TEXT = sig(t=(STRING, (-1,)))


@pytest.mark.parametrize(("doc", "signature", "expected", "row"), [
    pytest.param({"instances": [1.0, 2, 5.5]}, ONE, {"x": np.array([1, 2, 5.5], np.float32)}, True, id="rows-scalar"),
    pytest.param({"instances": [{"x": 1.0}, {"x": 2.0}]}, ONE, {"x": np.array([1, 2], np.float32)}, True,
                 id="rows-named-single"),
    pytest.param({"inputs": [1.0, 2.0]}, ONE, {"x": np.array([1, 2], np.float32)}, False, id="columns-plain"),
    pytest.param({"inputs": {"x": [3.0]}}, ONE, {"x": np.array([3], np.float32)}, False, id="columns-named"),
    pytest.param({"instances": [{"a": [1, 2], "b": 3}, {"a": [4, 5], "b": -6}]}, TWO,
                 {"a": np.array([[1, 2], [4, 5]], np.float32), "b": np.array([3, -6], np.int64)}, True,
                 id="rows-two-inputs"),
    pytest.param({"inputs": {"a": [[1, 2]], "b": [9007199254740993]}}, TWO,
                 {"a": np.array([[1, 2]], np.float32), "b": np.array([9007199254740993], np.int64)}, False,
                 id="int64-exact-beyond-2^53"),
    pytest.param({"instances": ["hi", {"b64": base64.b64encode(b"\x00\xff").decode()}]}, TEXT,
                 {"t": np.array([b"hi", b"\x00\xff"], object)}, True, id="strings-and-b64"),
    pytest.param({"inputs": {"b64": base64.b64encode(b"raw").decode()}}, TEXT,
                 {"t": np.array(b"raw", object)}, False, id="b64-scalar-columns"),
    pytest.param({"inputs": []}, ONE, {"x": np.zeros((0,), np.float32)}, False, id="empty-list"),
])
def test_parse_predict(doc: dict[str, Any], signature: Signature, expected: dict[str, np.ndarray], row: bool) -> None:
    before = copy.deepcopy(doc)
    got, row_format = json_tensor.parse_predict(doc, signature)
    assert row_format is row
    assert doc == before  # codecs never mutate their input
    assert set(got) == set(expected)
    for name, arr in expected.items():
        assert got[name].dtype == arr.dtype
        assert got[name].shape == arr.shape
        assert got[name].tolist() == arr.tolist()


@pytest.mark.parametrize(("doc", "signature", "message"), [
    pytest.param({}, ONE, "Missing 'inputs' or 'instances' key", id="neither"),
    pytest.param({"inputs": [1], "instances": [1]}, ONE, "only one of 'inputs' or 'instances'", id="both"),
    pytest.param({"instances": 3}, ONE, "Expecting 'instances' to be an list/array", id="instances-not-list"),
    pytest.param({"instances": []}, ONE, "No values in 'instances' array", id="instances-empty"),
    pytest.param({"instances": [[1, 2], [3]]}, ONE, "Expecting shape [2] but got: [1]", id="ragged-rows"),
    pytest.param({"inputs": [[1, 2], [3]]}, ONE, "ragged", id="ragged-columns"),
    pytest.param({"instances": [1.0, "a"]}, ONE, 'JSON Value: "a" Type: String is not of expected type: DT_FLOAT',
                 id="string-in-float"),
    pytest.param({"instances": [True]}, ONE, "Type: True is not of expected type: DT_FLOAT", id="bool-in-float"),
    pytest.param({"instances": [None]}, ONE, "Type: Null", id="null"),
    pytest.param({"instances": [{"a": [1, 2], "b": 1.5}]}, TWO, "1.5 Type: Number is not of expected type: DT_INT64",
                 id="float-in-int"),
    pytest.param({"instances": [{"a": [1, 2], "b": 2**63}]}, TWO, "out of range", id="int64-overflow"),
    pytest.param({"instances": [1, 2]}, TWO, "expecting list of objects", id="plain-list-multi-input"),
    pytest.param({"instances": [{"a": [1, 2]}]}, TWO, "must only have keys: a,b", id="missing-key"),
    pytest.param({"instances": [{"a": [1, 2], "b": 1, "c": 2}]}, TWO, "must only have keys: a,b", id="extra-key"),
    pytest.param({"instances": [{"a": [1, 2], "b": 1}, [1]]}, TWO, "Expecting object but got value/list at item 1",
                 id="mixed-rows"),
    pytest.param({"inputs": {"a": [[1, 2]]}}, TWO, "Missing named input: b", id="columns-missing"),
    pytest.param({"inputs": [1]}, TWO, "expecting an object as multiple input tensors", id="columns-plain-multi"),
    pytest.param({"inputs": {"x": {"y": 1}}}, ONE, "Type: Object", id="object-in-float"),
    pytest.param({"instances": [{"b64": "!!!"}]}, TEXT, "Unable to base64 decode", id="bad-b64"),
    pytest.param({"instances": [{"b64": 5}]}, TEXT, "not formatted correctly for base64", id="b64-not-string"),
    pytest.param({"instances": [7]}, TEXT, "Type: Number is not of expected type: string", id="number-in-string"),
    pytest.param({"instances": [{"b64": "aGk=", "x": 1}]}, TEXT, "must only have keys: t", id="b64-with-extra-key"),
    pytest.param({"instances": [[300]]}, sig(u=(UINT8, (-1, 1))), "out of range for DT_UINT8", id="uint8-range"),
])
def test_parse_predict_rejects(doc: dict[str, Any], signature: Signature, message: str) -> None:
    with pytest.raises(ServingError) as e:
        json_tensor.parse_predict(doc, signature)
    assert e.value.code is Code.INVALID_ARGUMENT
    assert message in e.value.message


@pytest.mark.parametrize(("body", "message"), [
    pytest.param(b"", "The document is empty", id="empty"),
    pytest.param(b"{", "JSON Parse error", id="truncated"),
    pytest.param(b"[1]", "Is not object", id="not-object"),
    pytest.param(b"[" * 10_000 + b"]" * 10_000, "JSON Parse error", id="10k-deep-array"),
    pytest.param(b'{"a":' * 5000 + b"1" + b"}" * 5000, "JSON Parse error", id="5k-deep-object"),
    pytest.param(b'{"inputs": [NaN, ' + b"[" * 5000 + b"]" * 5000 + b"]}", "nested too deeply",
                 id="deep-with-nan-fallback"),
    pytest.param(b"\xff\xfe{}", "JSON Parse error", id="not-utf8"),
])
def test_parse_body_rejects(body: bytes, message: str) -> None:
    with pytest.raises(ServingError) as e:
        json_tensor.parse_object(body)
    assert e.value.code is Code.INVALID_ARGUMENT
    assert message in e.value.message


def test_non_finite_tokens_are_accepted() -> None:
    doc = json_tensor.parse_object(b'{"inputs": [NaN, Infinity, -Infinity, 1.5]}')
    got, _ = json_tensor.parse_predict(doc, ONE)
    x = got["x"]
    assert np.isnan(x[0]) and x[1] == np.inf and x[2] == -np.inf and x[3] == 1.5


@pytest.mark.parametrize(("outputs", "row", "expected"), [
    pytest.param({"y": np.array([2.5, 3.0], np.float32)}, True, '{"predictions":[2.5,3.0]}', id="single-rows"),
    pytest.param({"y": np.array([0.1], np.float32)}, False, '{"outputs":[0.1]}', id="float32-short-repr"),
    pytest.param({"a": np.array([1, 2], np.int64), "b": np.array([[1.5], [2.5]], np.float32)}, True,
                 '{"predictions":[{"a":1,"b":[1.5]},{"a":2,"b":[2.5]}]}', id="multi-rows"),
    pytest.param({"a": np.array([1], np.int64), "b": np.array([True])}, False,
                 '{"outputs":{"a":[1],"b":[true]}}', id="multi-columns"),
    pytest.param({"s": np.array([b"hi"], object)}, True, '{"predictions":["hi"]}', id="string-text"),
    pytest.param({"s_bytes": np.array([b"\x00"], object)}, True, '{"predictions":[{"b64":"AA=="}]}',
                 id="bytes-suffix-b64"),
    pytest.param({"y": np.array([np.nan, np.inf, -np.inf, 0.1], np.float32)}, True,
                 '{"predictions":[NaN,Infinity,-Infinity,0.1]}', id="non-finite"),
    pytest.param({"n": np.array([2**62], np.int64)}, True, '{"predictions":[4611686018427387904]}', id="int64-exact"),
])
def test_format_predict(outputs: dict[str, np.ndarray], row: bool, expected: str) -> None:
    assert json_tensor.format_predict(outputs, row).decode() == expected


def test_format_predict_inconsistent_batch() -> None:
    with pytest.raises(ServingError, match="inconsistent batch size: 3 expecting: 2"):
        json_tensor.format_predict({"a": np.zeros(2), "b": np.zeros(3)}, True)


def _features(serialized: bytes) -> dict[str, Any]:
    ex = example_pb2.Example.FromString(serialized)
    out: dict[str, Any] = {}
    for name, f in ex.features.feature.items():
        kind = f.WhichOneof("kind")
        out[name] = (kind, list(getattr(f, kind).value)) if kind else (None, [])
    return out


@pytest.mark.parametrize(("doc", "expected"), [
    pytest.param({"examples": [{"x": 1.5}]}, [{"x": ("float_list", [1.5])}], id="float"),
    pytest.param({"examples": [{"n": 3, "ok": True}]}, [{"n": ("int64_list", [3]), "ok": ("int64_list", [1])}],
                 id="int-and-bool"),
    pytest.param({"examples": [{"s": ["a", {"b64": "AA=="}]}]}, [{"s": ("bytes_list", [b"a", b"\x00"])}],
                 id="bytes"),
    pytest.param({"context": {"c": 1.0}, "examples": [{"x": 2.0}, {"x": 3.0, "c": 9.0}]},
                 [{"c": ("float_list", [1.0]), "x": ("float_list", [2.0])},
                  {"c": ("float_list", [9.0]), "x": ("float_list", [3.0])}], id="context-merged-example-wins"),
])
def test_parse_examples(doc: dict[str, Any], expected: list[dict[str, Any]]) -> None:
    assert [_features(s) for s in example.parse_examples(doc, "classify")] == expected


@pytest.mark.parametrize(("doc", "message"), [
    pytest.param({}, "key 'examples' is expected", id="missing"),
    pytest.param({"examples": {}}, "to be an list/array", id="not-list"),
    pytest.param({"examples": []}, "empty array", id="empty"),
    pytest.param({"examples": [1]}, "Example must be JSON object", id="not-object"),
    pytest.param({"examples": [{"x": [1, "a"]}]}, "Unexpected element type in feature: x", id="mixed"),
    pytest.param({"examples": [{"x": None}]}, "unexpected JSON type: Null", id="null"),
    pytest.param({"examples": [{"x": 2**64}]}, "Only int64 is supported", id="uint64"),
])
def test_parse_examples_rejects(doc: dict[str, Any], message: str) -> None:
    with pytest.raises(ServingError) as e:
        example.parse_examples(doc, "classify")
    assert message in e.value.message


def test_format_classify_and_regress() -> None:
    body = example.format_classify(np.array([[b"a", b"b"]], object), np.array([[0.25, 0.75]], np.float32), 1)
    assert json.loads(body) == {"results": [[["a", 0.25], ["b", 0.75]]]}
    assert json.loads(example.format_classify(None, np.array([[0.5]], np.float32), 1)) == {"results": [[["", 0.5]]]}
    assert json.loads(example.format_regress(np.array([[1.5], [2.5]], np.float32))) == {"results": [1.5, 2.5]}


@pytest.mark.parametrize(("body", "depth"), [
    (b"", 0), (b"1.5", 0), (b"[]", 1), (b'{"a": [[1, 2], [3]]}', 3),
    (b'{"s": "[[[[", "t": "}}}"}', 1),  # brackets inside strings do not count
    (rb'{"s": "a\"[[[\\", "x": [[1]]}', 3),  # escaped quotes and backslashes end strings correctly
    (b"[" * 10_000 + b"]" * 10_000, 10_000),
    (b'{"a": "' + b'\\"' * 100_000, 1),  # unterminated, full of escaped quotes: linear time, not quadratic
])
def test_nesting_depth(body: bytes, depth: int) -> None:
    assert json_tensor.nesting_depth(body) == depth
