"""Loading the user's module file (preprocessing_fn, run_fn) and feeding it tables."""

from __future__ import annotations

import importlib.util
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import pyarrow as pa

from tfprod.pipeline.dsl import PipelineError


def function(module_file: str, name: str) -> Callable[..., Any]:
    if not os.path.isfile(module_file):
        raise PipelineError(f"module_file {module_file} does not exist")
    spec = importlib.util.spec_from_file_location(f"tfprod_user_{abs(hash(os.path.abspath(module_file)))}",
                                                  module_file)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    here = os.path.dirname(os.path.abspath(module_file))
    sys.path.insert(0, here)  # its own imports from beside it
    try:
        spec.loader.exec_module(module)
    except Exception as e:  # the user's code: any error is theirs to see
        raise PipelineError(f"{module_file} failed to import: {type(e).__name__}: {e}") from None
    finally:
        sys.path.remove(here)
    fn = getattr(module, name, None)
    if not callable(fn):
        raise PipelineError(f"{module_file} defines no function {name}()")
    return fn  # type: ignore[no-any-return]


def dtype_of(t: pa.DataType) -> str:
    if pa.types.is_floating(t):
        return "float32"
    if pa.types.is_integer(t) or pa.types.is_boolean(t):
        return "int64"
    return "string"


def specs(columns: Sequence[str], dtypes: dict[str, str]) -> list[Any]:
    """The `tf.TensorSpec`s of raw feature columns (1-D, any batch), named after them."""
    import tensorflow as tf

    return [tf.TensorSpec([None], tf.string if dtypes[c] == "string" else getattr(tf, dtypes[c]), name=c)
            for c in columns]


def arrays(table: pa.Table, columns: Sequence[str], dtypes: dict[str, str]) -> dict[str, np.ndarray]:
    """Columns as numpy: floats with NaN for missing, integers with 0, strings with ""."""
    out = {}
    for name in columns:
        if name not in table.schema.names:
            raise PipelineError(f"the examples have no column '{name}' (they have {table.schema.names})")
        column = table.column(name)
        kind = dtypes[name]
        if kind == "float32":
            out[name] = np.asarray(column.cast(pa.float64()).to_numpy(zero_copy_only=False), np.float32)
        elif kind == "int64":
            out[name] = np.asarray(column.cast(pa.int64()).fill_null(0).to_numpy(), np.int64)
        else:
            out[name] = np.asarray(column.cast(pa.string()).fill_null("").to_pylist(), object)
    return out

