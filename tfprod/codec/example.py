"""TF Serving's classify/regress JSON <-> serialized tf.Example and result JSON.

Typing follows TF Serving's json_tensor.cc: strings and {"b64": ...} are bytes_list, integers and
booleans int64_list, other numbers float_list. With `context`, its features are merged into every
example, as TF Serving does for an ExampleListWithContext.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np
from tensorflow.core.example import example_pb2, feature_pb2

from tfprod.codec.json_tensor import _decode_b64, _is_b64, _type_name, dumps
from tfprod.errors import invalid

_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1
_FLOAT_MAX = float(np.finfo(np.float32).max)


def _kind(name: str, value: Any) -> str:
    if isinstance(value, str) or _is_b64(value):
        return "bytes"
    if isinstance(value, bool):
        return "int64"
    if isinstance(value, int):
        if not _INT64_MIN <= value <= _INT64_MAX:
            raise invalid(f"Feature: {name} has uint64 element. Only int64 is supported.")
        return "int64"
    if isinstance(value, float):
        if math.isfinite(value) and abs(value) > _FLOAT_MAX:
            raise invalid(f"Feature: {name} has a value out of float range: {value}")
        return "float"
    raise invalid(f"Feature: {name} has element with unexpected JSON type: {_type_name(value)}")


def _feature(name: str, value: Any) -> feature_pb2.Feature:
    values = value if isinstance(value, list) else [value]
    feature = feature_pb2.Feature()
    if not values:
        return feature
    kind = _kind(name, values[0])
    for v in values[1:]:
        if _kind(name, v) != kind:
            raise invalid(f"Unexpected element type in feature: {name} expecting type: {kind}")
    if kind == "bytes":
        feature.bytes_list.value.extend(_decode_b64(v) if _is_b64(v) else v.encode("utf-8") for v in values)
    elif kind == "int64":
        feature.int64_list.value.extend(int(v) for v in values)
    else:
        feature.float_list.value.extend(values)
    return feature


def _example(value: Any) -> example_pb2.Example:
    if not isinstance(value, dict):
        raise invalid(f"Example must be JSON object but got JSON {_type_name(value)}")
    example = example_pb2.Example()
    for name, v in value.items():
        example.features.feature[name].CopyFrom(_feature(name, v))
    return example


def parse_examples(doc: Mapping[str, Any], method: str) -> list[bytes]:
    """A classify/regress request -> one serialized tf.Example per example (context merged)."""
    if "examples" not in doc:
        raise invalid(f"When method is {method}, key 'examples' is expected and was not found")
    examples = doc["examples"]
    if not isinstance(examples, list):
        raise invalid("Expecting 'examples' value to be an list/array")
    if not examples:
        raise invalid("'examples' value is an empty array")
    context = _example(doc["context"]) if "context" in doc else None
    out: list[bytes] = []
    for value in examples:
        example = _example(value)
        if context is not None:
            merged = example_pb2.Example()
            merged.CopyFrom(context)
            merged.MergeFrom(example)
            example = merged
        out.append(example.SerializeToString())
    return out


def format_classify(classes: np.ndarray | None, scores: np.ndarray | None, n: int) -> bytes:
    """Results as TF Serving writes them: per example a list of [label, score] pairs."""
    if classes is not None and classes.ndim == 1:
        classes = classes[:, None]
    if scores is not None and scores.ndim == 1:
        scores = scores[:, None]
    width = (classes if classes is not None else scores).shape[1]  # type: ignore[union-attr]
    results = []
    for i in range(n):
        pairs = []
        for j in range(width):
            label = classes[i, j] if classes is not None else b""
            label = label.decode("utf-8", "replace") if isinstance(label, bytes) else str(label)
            score = scores[i, j] if scores is not None else 0.0
            pairs.append([label, score])
        results.append(pairs)
    return dumps({"results": results})


def format_regress(outputs: np.ndarray) -> bytes:
    values = outputs.reshape(outputs.shape[0], -1)
    if values.shape[1] != 1:
        raise invalid(f"Expected output Tensor shape to be either [batch_size] or [batch_size, 1] "
                      f"but got {list(outputs.shape)}")
    return dumps({"results": np.ascontiguousarray(values[:, 0])})
