"""What the server holds for one loaded model version, whatever its format.

A `Servable` knows its signatures and runs one of them on numpy arrays, through its batcher when
it has one. The formats differ only in the runners they give it: TensorFlow's concrete functions
(`saved_model.py`) or LiteRT interpreters (`tflite.py`).
"""

from __future__ import annotations

import dataclasses
import gc
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
from tensorflow.core.protobuf import meta_graph_pb2

from tfprod.batching import Batcher, BatchingOptions, BatchStats
from tfprod.core.manager import ServableId
from tfprod.errors import Code, ServingError, invalid
from tfprod.export import read_metadata
from tfprod.signature import Signature, TensorInfo

# A signature's runner: inputs by alias -> the requested outputs by alias.
SignatureRunner = Callable[[Mapping[str, np.ndarray], tuple[str, ...]], dict[str, np.ndarray]]


def _check_shape(info: TensorInfo, arr: np.ndarray) -> None:
    if info.shape is None:
        return
    expected = info.shape
    if len(expected) != arr.ndim or any(e not in (-1, a) for e, a in zip(expected, arr.shape, strict=True)):
        raise invalid(f"input '{info.name}' has shape {list(arr.shape)} but the signature expects "
                      f"{list(expected)} (-1: any size)")


@dataclasses.dataclass
class Servable:
    id: ServableId
    path: str
    meta_graph: meta_graph_pb2.MetaGraphDef
    signatures: dict[str, Signature]
    _runners: dict[str, SignatureRunner]
    batcher: Batcher | None = None
    audit: dict[str, Any] | None = None  # assets.extra/tfprod_metadata.json, when the export wrote one
    _model: object = None  # what keeps the model alive (TF's loaded object, interpreters) until unload

    def signature(self, name: str) -> Signature:
        sig = self.signatures.get(name)
        if sig is None or name not in self._runners:
            raise invalid(f'Serving signature name: "{name}" not found in signature def')
        return sig

    def run(self, sig: Signature, inputs: Mapping[str, np.ndarray],
            output_filter: tuple[str, ...] = ()) -> dict[str, np.ndarray]:
        sig.check_input_names(list(inputs))
        for name, arr in inputs.items():
            _check_shape(sig.inputs[name], arr)
        outputs = output_filter or tuple(sig.outputs)
        if self.batcher is not None:
            return self.batcher.run(sig, inputs, outputs)
        return self._call(sig, inputs, outputs)

    def _call(self, sig: Signature, inputs: Mapping[str, np.ndarray],
              outputs: tuple[str, ...]) -> dict[str, np.ndarray]:
        return self._runners[sig.name](inputs, outputs)

    def batch_with(self, options: BatchingOptions | None, stats: BatchStats | None) -> None:
        if options is not None:
            self.batcher = Batcher(self.id.name, self._call, options, stats)

    def unload(self) -> None:
        if self.batcher is not None:
            self.batcher.close()
        self._runners.clear()
        self._model = None
        gc.unfreeze()  # the model's objects were frozen at load (see freeze): free them now
        freeze()


def audit(path: str) -> dict[str, Any] | None:
    """The version's audit metadata (assets.extra/tfprod_metadata.json), whatever its format."""
    try:
        return read_metadata(path)
    except (OSError, ValueError) as e:
        raise ServingError(Code.INVALID_ARGUMENT, f"unreadable audit metadata in {path}: {e}") from None


def freeze() -> None:
    """Move every object alive now out of the collector's reach. A loaded TF model is a graph of
    millions of Python objects that lives as long as the version; left in the oldest generation,
    each full collection walks all of it and stalls every request for 100+ ms (the P99 tail)."""
    gc.collect()
    gc.freeze()
