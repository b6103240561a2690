"""What a codec needs to know about a signature: names, dtypes, shapes. Built once per load."""

from __future__ import annotations

import dataclasses
from collections.abc import Collection, Iterable

import ml_dtypes
import numpy as np

from tfprod.errors import invalid

PREDICT_METHOD = "tensorflow/serving/predict"
CLASSIFY_METHOD = "tensorflow/serving/classify"
REGRESS_METHOD = "tensorflow/serving/regress"
DEFAULT_SIGNATURE = "serving_default"

# TF DataType enum value -> (TF name, numpy dtype). numpy `object` holds DT_STRING as bytes.
DTYPES: dict[int, tuple[str, np.dtype]] = {
    1: ("DT_FLOAT", np.dtype(np.float32)),
    2: ("DT_DOUBLE", np.dtype(np.float64)),
    3: ("DT_INT32", np.dtype(np.int32)),
    4: ("DT_UINT8", np.dtype(np.uint8)),
    5: ("DT_INT16", np.dtype(np.int16)),
    6: ("DT_INT8", np.dtype(np.int8)),
    7: ("DT_STRING", np.dtype(object)),
    9: ("DT_INT64", np.dtype(np.int64)),
    10: ("DT_BOOL", np.dtype(np.bool_)),
    17: ("DT_UINT16", np.dtype(np.uint16)),
    14: ("DT_BFLOAT16", np.dtype(ml_dtypes.bfloat16)),
    19: ("DT_HALF", np.dtype(np.float16)),
    22: ("DT_UINT32", np.dtype(np.uint32)),
    23: ("DT_UINT64", np.dtype(np.uint64)),
}


@dataclasses.dataclass(frozen=True)
class TensorInfo:
    name: str  # the signature's alias for the tensor (the JSON key)
    dtype_enum: int
    shape: tuple[int, ...] | None  # None: unknown rank; -1: unknown dimension

    @property
    def dtype_name(self) -> str:
        entry = DTYPES.get(self.dtype_enum)
        return entry[0] if entry else f"DataType({self.dtype_enum})"

    @property
    def np_dtype(self) -> np.dtype:
        entry = DTYPES.get(self.dtype_enum)
        if entry is None:
            raise TypeError(f"tensor {self.name!r} has dtype {self.dtype_name}, which tfprod cannot carry")
        return entry[1]

    @property
    def is_string(self) -> bool:
        return self.dtype_enum == 7


@dataclasses.dataclass(frozen=True)
class Signature:
    name: str
    method_name: str
    inputs: dict[str, TensorInfo]
    outputs: dict[str, TensorInfo]

    def check_input_names(self, names: Collection[str]) -> None:
        """TF Serving's checks, in its order: the count first, then each alias."""
        if len(names) != len(self.inputs):
            extra = sorted(set(names) - set(self.inputs))
            missing = sorted(set(self.inputs) - set(names))
            raise invalid(f"input size does not match signature: {len(names)}!={len(self.inputs)} "
                          f"len({{{','.join(sorted(names))}}}) != len({{{','.join(sorted(self.inputs))}}}). "
                          f"Sent extra: {{{','.join(extra)}}}. Missing but required: {{{','.join(missing)}}}.")
        for name in names:
            if name not in self.inputs:
                raise invalid(f"input tensor alias not found in signature: {name}. Inputs expected to be in "
                              f"the set {{{','.join(sorted(self.inputs))}}}.")

    def check_output_names(self, names: Collection[str]) -> None:
        for name in names:
            if name not in self.outputs:
                raise invalid(f"output tensor alias not found in signature: {name} Outputs expected "
                              f"to be in the set {{{','.join(sorted(self.outputs))}}}.")


def default_signature_key(keys: Iterable[str]) -> str:
    """The signature a tool uses when none is named: serving_default if present, else the only
    one; "" when there are several (the caller asks which)."""
    found = sorted(keys)
    return DEFAULT_SIGNATURE if DEFAULT_SIGNATURE in found else found[0] if len(found) == 1 else ""
