"""Dynamic batching with TF Serving's BatchingParameters.

One `Batcher` per loaded model version; one queue per (signature, outputs) inside it, so versions
and signatures never share a batch, while REST, gRPC and V2 callers of the same version and
signature do.

Scheduling is TF Serving's basic batch scheduler: a batch is processed when it is full, or when its
oldest task has waited `batch_timeout_micros` and a batch thread is free. With a timeout of 0 (the
default) a free thread takes whatever is queued at once, so batches grow only while every thread is
busy: batching costs no latency when the server is idle and tracks the load when it is not.

A batch is padded up to the next `allowed_batch_sizes` entry with copies of a real row; padding
and other callers' rows never reach a caller. Without `pad_variable_length_inputs`, only tasks
whose inputs have the same shapes share a batch (TF Serving fails the whole batch instead). Tasks
larger than `max_batch_size` are split when `enable_large_batch_splitting` is on, refused
otherwise. A full queue refuses at once. Callers on the event loop await their rows (`run_async`)
without holding a thread; a caller cancelled before its batch starts is dropped from it.
"""

from __future__ import annotations

import asyncio
import bisect
import collections
import dataclasses
import functools
import os
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future
from typing import Any, Protocol

import numpy as np

from tfprod.errors import Code, ServingError, invalid
from tfprod.signature import Signature

Run = Callable[[Signature, Mapping[str, np.ndarray], tuple[str, ...]], dict[str, np.ndarray]]


@dataclasses.dataclass(frozen=True)
class BatchingOptions:
    max_batch_size: int = 1000
    batch_timeout_micros: int = 0
    max_enqueued_batches: int = 10
    num_batch_threads: int = dataclasses.field(default_factory=lambda: os.cpu_count() or 1)  # TF Serving's
    allowed_batch_sizes: tuple[int, ...] = ()
    pad_variable_length_inputs: bool = False
    enable_large_batch_splitting: bool = False
    max_execution_batch_size: int = 0  # 0: max_batch_size

    @property
    def execution_size(self) -> int:
        if self.enable_large_batch_splitting and self.max_execution_batch_size:
            return self.max_execution_batch_size
        return self.max_batch_size

    def validate(self) -> None:
        """TF Serving's startup checks; ValueError with a message naming the field."""
        for name in ("max_batch_size", "max_enqueued_batches", "num_batch_threads"):
            if getattr(self, name) <= 0:
                raise ValueError(f"BatchingParameters.{name} must be positive, got {getattr(self, name)}")
        if self.batch_timeout_micros < 0:
            raise ValueError("BatchingParameters.batch_timeout_micros must be non-negative")
        if self.enable_large_batch_splitting and self.max_execution_batch_size > self.max_batch_size:
            raise ValueError("BatchingParameters.max_execution_batch_size must not exceed max_batch_size")
        sizes = self.allowed_batch_sizes
        if sizes:
            if any(b <= a for a, b in zip(sizes, sizes[1:], strict=False)) or sizes[0] <= 0:
                raise ValueError("The entries in allowed_batch_sizes must be positive and in increasing order.")
            if sizes[-1] != self.execution_size:
                which = "max_execution_batch_size" if self.execution_size != self.max_batch_size else "max_batch_size"
                raise ValueError(f"Last entry in allowed_batch_sizes must match {which}; last entry was "
                                 f"{sizes[-1]}; expected {self.execution_size}")


class BatchStats(Protocol):
    """What a batcher reports to metrics: one call per processed batch."""

    def record_batch(self, model: str, queuing_s: Sequence[float], input_size: int, processed_size: int) -> None: ...


@dataclasses.dataclass(eq=False)  # identity: a queue removes exactly this task
class _Task:
    inputs: dict[str, np.ndarray]
    rows: int
    enqueued: float
    future: Future[dict[str, np.ndarray]]


class _Queue:
    def __init__(self, sig: Signature, outputs: tuple[str, ...]) -> None:
        self.sig = sig
        self.outputs = outputs
        self.tasks: collections.deque[_Task] = collections.deque()
        self.rows = 0


class Batcher:
    def __init__(self, model: str, run: Run, options: BatchingOptions, stats: BatchStats | None = None) -> None:
        self._model = model
        self._run = run
        self._options = options
        self._stats = stats
        self._cond = threading.Condition()
        self._queues: dict[tuple[str, tuple[str, ...]], _Queue] = {}
        self._closed = False
        self._threads = [threading.Thread(target=self._work, name=f"tfprod-batch-{model}-{i}", daemon=True)
                         for i in range(options.num_batch_threads)]
        for t in self._threads:
            t.start()

    # -- callers ----------------------------------------------------------------------------

    def run(self, sig: Signature, inputs: Mapping[str, np.ndarray], outputs: tuple[str, ...]) -> dict[str, np.ndarray]:
        """Block the calling thread until the rows come back (warmup, in-process callers)."""
        return _joined([f.result() for f in self._submit(sig, inputs, outputs)])

    async def run_async(self, sig: Signature, inputs: Mapping[str, np.ndarray],
                        outputs: tuple[str, ...]) -> dict[str, np.ndarray]:
        """Await the rows on the event loop: no thread waits for the batch. Cancelling the caller
        (its deadline passed, its client left) drops its tasks unless their batch already runs."""
        futures = [asyncio.wrap_future(f) for f in self._submit(sig, inputs, outputs)]
        try:
            return _joined(list(await asyncio.gather(*futures)))
        except BaseException:
            for f in futures:
                f.cancel()
            raise

    def _submit(self, sig: Signature, inputs: Mapping[str, np.ndarray], outputs: tuple[str, ...]) -> list[Future[Any]]:
        """Queue a task's chunks all at once or not at all (a refused task leaves no rows behind)."""
        rows = _rows(inputs)
        opts = self._options
        if rows > opts.max_batch_size and not opts.enable_large_batch_splitting:
            raise invalid(f"Task size {rows} is larger than maximum input batch size {opts.max_batch_size}")
        size = opts.execution_size
        now = time.monotonic()
        tasks = [_Task(chunk, _rows(chunk), now, Future()) for chunk in
                 ({k: v[i:i + size] for k, v in inputs.items()} for i in range(0, max(rows, 1), size))]
        key = (sig.name, outputs)
        with self._cond:
            if self._closed:
                raise ServingError(Code.UNAVAILABLE, "the model version is unloading")
            queue = self._queues.get(key)
            if queue is None:
                queue = self._queues[key] = _Queue(sig, outputs)
            enqueued = -(-queue.rows // size)
            if -(-(queue.rows + rows) // size) > opts.max_enqueued_batches:
                raise ServingError(Code.UNAVAILABLE, "The batch scheduling queue to which this task was submitted "
                                   f"is full; currently {enqueued} batches enqueued and max_enqueued_batches is "
                                   f"{opts.max_enqueued_batches}")
            queue.tasks.extend(tasks)
            queue.rows += rows
            self._cond.notify()
        for task in tasks:  # a caller that gives up frees its place in the queue at once
            task.future.add_done_callback(functools.partial(self._forget, queue, task))
        return [t.future for t in tasks]

    def _forget(self, queue: _Queue, task: _Task, future: Future[Any]) -> None:
        """A cancelled task leaves its queue (unless a batch thread took it already: it drops it)."""
        if not future.cancelled():
            return
        with self._cond:
            try:
                queue.tasks.remove(task)
            except ValueError:
                return
            queue.rows -= task.rows

    def close(self) -> None:
        """Finish what is queued, then stop the threads."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        for t in self._threads:
            t.join()

    # -- batch threads ----------------------------------------------------------------------

    def _work(self) -> None:
        while True:
            with self._cond:
                batch = self._next_locked()
                while batch is None:
                    if self._closed and not any(q.tasks for q in self._queues.values()):
                        return
                    self._cond.wait(timeout=self._wait_locked())
                    batch = self._next_locked()
            self._process(*batch)

    def _next_locked(self) -> tuple[_Queue, list[_Task]] | None:
        """The batch to process now, its callers marked running; callers cancelled meanwhile are dropped."""
        while (batch := self._take_locked()) is not None:
            queue, tasks = batch
            live = [t for t in tasks if t.future.set_running_or_notify_cancel()]
            if live:
                return queue, live
        return None

    def _take_locked(self) -> tuple[_Queue, list[_Task]] | None:
        """A full queue first, else the one whose oldest task waited longest once its timeout has
        passed (at once with timeout 0, or when closing)."""
        size = self._options.execution_size
        timeout = self._options.batch_timeout_micros / 1e6
        now = time.monotonic()
        ready = [q for q in self._queues.values() if q.tasks and (
            q.rows >= size or self._closed or now - q.tasks[0].enqueued >= timeout)]
        if not ready:
            return None
        queue = min(ready, key=lambda q: (q.rows < size, q.tasks[0].enqueued))
        head = _shapes(queue.tasks[0])
        tasks, rows, kept = [], 0, collections.deque[_Task]()
        while queue.tasks:
            task = queue.tasks.popleft()
            fits = rows + task.rows <= size
            # Only rows of the same shapes can be stacked (with padding: of the same ranks): others
            # wait for their own batch instead of failing this one.
            shapes = _shapes(task)
            if self._options.pad_variable_length_inputs:
                stacks = [len(s) for s in shapes] == [len(s) for s in head]
            else:
                stacks = shapes == head
            if fits and stacks:
                rows += task.rows
                tasks.append(task)
            else:
                kept.append(task)
                if not fits:
                    break
        kept.extend(queue.tasks)
        queue.tasks = kept
        queue.rows -= rows
        if queue.tasks:
            self._cond.notify()  # more work for another thread
        return queue, tasks

    def _wait_locked(self) -> float | None:
        timeout = self._options.batch_timeout_micros / 1e6
        oldest = [q.tasks[0].enqueued for q in self._queues.values() if q.tasks]
        if not oldest:
            return None
        return max(min(oldest) + timeout - time.monotonic(), 0.0005)

    def _process(self, queue: _Queue, tasks: list[_Task]) -> None:
        started = time.monotonic()
        try:
            merged, rows, padded = _merge(tasks, self._options)
            if self._stats is not None:  # recorded as the batch starts, as TF Serving records queuing
                self._stats.record_batch(self._model, [started - t.enqueued for t in tasks], rows, padded)
            outputs = self._run(queue.sig, merged, queue.outputs)
            offset = 0
            results = []
            for task in tasks:
                results.append({k: _rows_of(k, v, padded)[offset:offset + task.rows] for k, v in outputs.items()})
                offset += task.rows
        except ServingError as e:
            for task in tasks:
                task.future.set_exception(e)
            return
        except Exception as e:  # a bug fails this batch's callers, never the thread
            error = ServingError(Code.INTERNAL, f"{type(e).__name__}: {e}")
            for task in tasks:
                task.future.set_exception(error)
            return
        for task, result in zip(tasks, results, strict=True):
            task.future.set_result(result)


def _joined(results: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    if len(results) == 1:
        return results[0]
    return {k: np.concatenate([r[k] for r in results]) for k in results[0]}


def _shapes(task: _Task) -> tuple[tuple[int, ...], ...]:
    return tuple(arr.shape[1:] for arr in task.inputs.values())


def _rows(inputs: Mapping[str, np.ndarray]) -> int:
    if not inputs:
        raise invalid("Batching Run() must have at least one input tensor")
    sizes = set()
    for name, arr in inputs.items():
        if arr.ndim == 0:
            raise invalid(f"Batching Run() input tensors must have at least one dimension (input '{name}' is "
                          "a scalar)")
        sizes.add(arr.shape[0])
    if len(sizes) > 1:
        raise invalid(f"Batching Run() input tensors must have equal 0th-dimension size (got {sorted(sizes)})")
    return sizes.pop()


def _rows_of(name: str, arr: np.ndarray, padded: int) -> np.ndarray:
    if arr.ndim == 0 or arr.shape[0] != padded:
        raise ServingError(Code.INTERNAL, f"output '{name}' has shape {list(arr.shape)}: with batching on, every "
                           f"output must have the batch ({padded} rows) as its first dimension")
    return arr


def _merge(tasks: list[_Task], options: BatchingOptions) -> tuple[dict[str, np.ndarray], int, int]:
    """Concatenate the tasks' rows; pad to the next allowed batch size with copies of the first row."""
    rows = sum(t.rows for t in tasks)
    sizes = options.allowed_batch_sizes
    padded = sizes[bisect.bisect_left(sizes, rows)] if sizes else rows
    merged = {}
    for name in tasks[0].inputs:
        parts = [t.inputs[name] for t in tasks]
        if len({p.shape[1:] for p in parts}) > 1:  # only with pad_variable_length_inputs: see _next_locked
            parts = _pad_to_common(parts)
        if padded > rows:  # copies of the last task's first row, as TF Serving pads
            parts.append(np.repeat(parts[-1][:1], padded - rows, axis=0))
        merged[name] = parts[0] if len(parts) == 1 else np.concatenate(parts)
    return merged, rows, padded


def _pad_to_common(parts: list[np.ndarray]) -> list[np.ndarray]:
    """Pad every dimension after the first to the largest in the batch, with each part's first
    element as the fill value (as TF Serving does)."""
    target = tuple(max(p.shape[d] for p in parts) for d in range(1, parts[0].ndim))
    out = []
    for p in parts:
        widths = [(0, 0)] + [(0, t - s) for s, t in zip(p.shape[1:], target, strict=True)]
        fill = p.reshape(-1)[0] if p.size else 0
        out.append(np.pad(p, widths, constant_values=fill) if p.dtype != object else _pad_object(p, widths, fill))
    return out


def _pad_object(p: np.ndarray, widths: list[tuple[int, int]], fill: Any) -> np.ndarray:
    out = np.full(tuple(s + w[1] for s, w in zip(p.shape, widths, strict=True)), fill, dtype=object)
    out[tuple(slice(0, s) for s in p.shape)] = p
    return out
