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
from tensorflow_serving.apis import classification_pb2, input_pb2, regression_pb2

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


def examples_from_input(message: input_pb2.Input) -> list[bytes]:
    """A gRPC `Input` -> serialized tf.Examples. With a context, context and example are serialized
    back to back, which protobuf parses as a merge: the example wins where both set a feature."""
    kind = message.WhichOneof("kind")
    if kind == "example_list":
        examples, context = list(message.example_list.examples), b""
    elif kind == "example_list_with_context":
        examples = list(message.example_list_with_context.examples)
        context = message.example_list_with_context.context.SerializeToString()
    else:
        examples, context = [], b""
    if not examples:
        raise invalid("Input is empty.")
    return [context + e.SerializeToString() for e in examples]


def _class_pairs(classes: np.ndarray | None, scores: np.ndarray | None, n: int) -> list[list[tuple[str, Any]]]:
    """Per example, its (label, score) pairs; a missing classes/scores output gives "" / 0."""
    if classes is not None and classes.ndim == 1:
        classes = classes[:, None]
    if scores is not None and scores.ndim == 1:
        scores = scores[:, None]
    width = (classes if classes is not None else scores).shape[1]  # type: ignore[union-attr]
    for name, arr in (("classes", classes), ("scores", scores)):
        if arr is not None and (arr.ndim != 2 or arr.shape[0] != n):
            raise invalid(f"Expected {name} Tensor of shape [batch_size, num_classes] with batch_size {n}, "
                          f"got {list(arr.shape)}")
    results = []
    for i in range(n):
        pairs = []
        for j in range(width):
            label = classes[i, j] if classes is not None else b""
            label = label.decode("utf-8", "replace") if isinstance(label, bytes) else str(label)
            pairs.append((label, scores[i, j] if scores is not None else 0.0))  # float32 kept for JSON
        results.append(pairs)
    return results


def format_classify(classes: np.ndarray | None, scores: np.ndarray | None, n: int) -> bytes:
    """Results as TF Serving writes them: per example a list of [label, score] pairs."""
    return dumps({"results": [[list(p) for p in pairs] for pairs in _class_pairs(classes, scores, n)]})


def classification_result(classes: np.ndarray | None, scores: np.ndarray | None,
                          n: int) -> classification_pb2.ClassificationResult:
    result = classification_pb2.ClassificationResult()
    for pairs in _class_pairs(classes, scores, n):
        result.classifications.add().classes.extend(
            classification_pb2.Class(label=label, score=float(score)) for label, score in pairs)
    return result


def _regress_values(outputs: np.ndarray) -> np.ndarray:
    values = outputs.reshape(outputs.shape[0], -1) if outputs.ndim else outputs.reshape(1, -1)
    if values.shape[1] != 1:
        raise invalid(f"Expected output Tensor shape to be either [batch_size] or [batch_size, 1] "
                      f"but got {list(outputs.shape)}")
    return np.ascontiguousarray(values[:, 0])


def format_regress(outputs: np.ndarray) -> bytes:
    return dumps({"results": _regress_values(outputs)})


def regression_result(outputs: np.ndarray) -> regression_pb2.RegressionResult:
    result = regression_pb2.RegressionResult()
    result.regressions.extend(regression_pb2.Regression(value=float(v)) for v in _regress_values(outputs))
    return result
