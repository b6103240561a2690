"""What the server holds for one loaded model version, whatever its format.

A `Servable` knows its signatures and runs one of them on numpy arrays, through its batcher when
it has one. The formats differ only in the runners they give it: a TensorFlow Session
(`saved_model.py`) or LiteRT interpreters (`tflite.py`).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import gc
import threading
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
from tensorflow.core.protobuf import meta_graph_pb2

from tfprod.batching import Batcher, BatchingOptions, BatchStats
from tfprod.core.manager import ServableId
from tfprod.errors import Code, ServingError, invalid
from tfprod.format.audit import read_metadata
from tfprod.signature import Signature

# A signature's runner: inputs by alias -> the requested outputs by alias.
SignatureRunner = Callable[[Mapping[str, np.ndarray], tuple[str, ...]], dict[str, np.ndarray]]


@dataclasses.dataclass
class Servable:
    id: ServableId
    path: str
    meta_graph: meta_graph_pb2.MetaGraphDef
    signatures: dict[str, Signature]
    _runners: dict[str, SignatureRunner]
    batcher: Batcher | None = None
    audit: dict[str, Any] | None = None  # assets.extra/tfprod_metadata.json, when the export wrote one
    _close: Callable[[], None] | None = None  # releases what the runners hold outside Python (a Session)
    _in_flight: threading.Condition = dataclasses.field(default_factory=threading.Condition, repr=False)
    _running: int = 0  # unbatched calls on an executor thread now

    def signature(self, name: str) -> Signature:
        sig = self.signatures.get(name)
        if sig is None or name not in self._runners:
            raise invalid(f'Serving signature name: "{name}" not found in signature def')
        return sig

    def run(self, sig: Signature, inputs: Mapping[str, np.ndarray],
            output_filter: tuple[str, ...] = ()) -> dict[str, np.ndarray]:
        outputs = _checked(sig, inputs, output_filter)
        if self.batcher is not None:
            return self.batcher.run(sig, inputs, outputs)
        return self._call(sig, inputs, outputs)

    async def run_async(self, sig: Signature, inputs: Mapping[str, np.ndarray], output_filter: tuple[str, ...] = (),
                        executor: concurrent.futures.Executor | None = None) -> dict[str, np.ndarray]:
        """`run` for callers on the event loop: a batched call awaits its batch without a thread;
        an unbatched one holds an `executor` thread for the model call only."""
        outputs = _checked(sig, inputs, output_filter)
        if self.batcher is not None:
            return await self.batcher.run_async(sig, inputs, outputs)
        return await asyncio.get_running_loop().run_in_executor(executor, self._call_tracked, sig, inputs, outputs)

    def _call_tracked(self, sig: Signature, inputs: Mapping[str, np.ndarray],
                      outputs: tuple[str, ...]) -> dict[str, np.ndarray]:
        """A caller that gives up (deadline, hang-up) releases its handle while its call runs on:
        `unload` waits for such calls, as the batcher's close waits for its batches."""
        with self._in_flight:
            self._running += 1
        try:
            return self._call(sig, inputs, outputs)
        finally:
            with self._in_flight:
                self._running -= 1
                self._in_flight.notify_all()

    def _call(self, sig: Signature, inputs: Mapping[str, np.ndarray],
              outputs: tuple[str, ...]) -> dict[str, np.ndarray]:
        return self._runners[sig.name](inputs, outputs)

    def batch_with(self, options: BatchingOptions | None, stats: BatchStats | None) -> None:
        if options is not None:
            self.batcher = Batcher(self.id.name, self._call, options, stats)

    def unload(self) -> None:
        """Drop every reference to the model (the batcher's to `_call` is a cycle through self), so
        that what it holds goes now, not at some later full collection."""
        batcher, self.batcher = self.batcher, None
        if batcher is not None:
            batcher.close()
        with self._in_flight:
            self._in_flight.wait_for(lambda: not self._running)
        self._runners.clear()
        close, self._close = self._close, None
        if close is not None:
            close()
        gc.collect()  # a graph's Python objects form cycles; cheap while the rest is frozen (freeze_heap)


def _checked(sig: Signature, inputs: Mapping[str, np.ndarray], output_filter: tuple[str, ...]) -> tuple[str, ...]:
    """The names TF Serving checks, for every format and caller (warmup too); shapes are the
    runtime's to judge, as in TF Serving. The outputs to fetch: all when none are named."""
    sig.check_input_names(list(inputs))
    sig.check_output_names(output_filter)
    return output_filter or tuple(sig.outputs)


def audit(path: str) -> dict[str, Any] | None:
    """The version's audit metadata (assets.extra/tfprod_metadata.json), whatever its format."""
    try:
        return read_metadata(path)
    except (OSError, ValueError) as e:
        raise ServingError(Code.INVALID_ARGUMENT, f"unreadable audit metadata in {path}: {e}") from None


def freeze_heap() -> None:
    """Move every object alive now (TensorFlow's and the server's own: ~360k after `import
    tensorflow`) out of the collector's reach, once, before any model loads. Left in the oldest
    generation, each full collection would walk all of them while holding the GIL and stall every
    request for 100+ ms. A version loaded as a Session adds only a few hundred Python objects, so
    what stays collectable stays cheap to collect, at load, at unload and in between."""
    gc.collect()
    gc.freeze()

