"""The batch scheduler on its own, with a numpy model: splitting, padding, shape grouping, errors,
and the BatchingParameters checks. The server-level behaviour is in test_batching.py."""

from __future__ import annotations

import threading
from collections.abc import Mapping

import numpy as np
import pytest

from tfprod.batching import Batcher, BatchingOptions
from tfprod.errors import Code, ServingError
from tfprod.signature import Signature, TensorInfo

SIG = Signature("serving_default", "tensorflow/serving/predict",
                {"x": TensorInfo("x", 1, (-1, -1))}, {"y": TensorInfo("y", 1, (-1, -1)),
                                                      "rows": TensorInfo("rows", 3, (-1,))})


class Model:
    """y = 2x; `rows` tells each row the size of the batch it ran in. Records every batch."""

    def __init__(self) -> None:
        self.batches: list[int] = []

    def __call__(self, sig: Signature, inputs: Mapping[str, np.ndarray], outputs: tuple[str, ...]) -> dict:
        x = inputs["x"]
        self.batches.append(x.shape[0])
        return {"y": 2 * x, "rows": np.full(x.shape[0], x.shape[0], np.int32)}


def run_together(batcher: Batcher, inputs: list[np.ndarray]) -> list[dict]:
    barrier = threading.Barrier(len(inputs))
    out: list[dict] = [{}] * len(inputs)

    def call(i: int) -> None:
        barrier.wait()
        out[i] = batcher.run(SIG, {"x": inputs[i]}, ("y", "rows"))

    threads = [threading.Thread(target=call, args=(i,)) for i in range(len(inputs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    return out


def test_large_tasks_are_split_and_reassembled() -> None:
    model = Model()
    batcher = Batcher("m", model, BatchingOptions(max_batch_size=8, enable_large_batch_splitting=True,
                                                  max_execution_batch_size=3, num_batch_threads=1))
    x = np.arange(8, dtype=np.float32).reshape(8, 1)
    got = batcher.run(SIG, {"x": x}, ("y", "rows"))
    batcher.close()
    np.testing.assert_array_equal(got["y"], 2 * x)
    assert sorted(model.batches) == [2, 3, 3]


def test_padding_rows_are_dropped_and_shapes_wait_for_their_own_batch() -> None:
    model = Model()
    batcher = Batcher("m", model, BatchingOptions(max_batch_size=8, batch_timeout_micros=300_000,
                                                  num_batch_threads=1, allowed_batch_sizes=(4, 8)))
    inputs = [np.ones((1, 2), np.float32), np.ones((2, 2), np.float32), np.ones((1, 3), np.float32)]
    got = run_together(batcher, inputs)
    batcher.close()
    for x, out in zip(inputs, got, strict=True):
        np.testing.assert_array_equal(out["y"], 2 * x)  # exactly the caller's rows
    assert got[0]["rows"].tolist() == [4] and got[1]["rows"].tolist() == [4, 4]  # 3 rows padded to 4
    assert got[2]["rows"].tolist() == [4]  # the [1, 3] row ran alone, padded, instead of failing the others


def test_with_padding_only_equal_ranks_share_a_batch() -> None:
    """Since shapes are the model's to judge, a caller may send any rank: with
    pad_variable_length_inputs, rows of other ranks run in a batch of their own, so one odd
    request cannot fail the callers it would have been padded with."""
    model = Model()
    batcher = Batcher("m", model, BatchingOptions(max_batch_size=8, batch_timeout_micros=300_000,
                                                  num_batch_threads=1, pad_variable_length_inputs=True))
    inputs = [np.ones((1, 2), np.float32), np.ones((1, 3), np.float32), np.ones((1, 2, 2), np.float32)]
    got = run_together(batcher, inputs)
    batcher.close()
    np.testing.assert_array_equal(got[0]["y"], [[2.0, 2.0, 2.0]])  # padded with its first element, as TF Serving
    assert got[0]["rows"].tolist() == [2] and got[1]["rows"].tolist() == [2]  # [1, 2] padded beside [1, 3]
    np.testing.assert_array_equal(got[1]["y"], 2 * inputs[1])
    assert got[2]["rows"].tolist() == [1]  # rank 3 ran alone
    np.testing.assert_array_equal(got[2]["y"], 2 * inputs[2])
    assert sorted(model.batches) == [1, 2]


def test_too_large_without_splitting_and_a_full_queue_are_refused() -> None:
    release = threading.Event()

    def slow(sig: Signature, inputs: Mapping[str, np.ndarray], outputs: tuple[str, ...]) -> dict:
        release.wait(10)
        return {"y": inputs["x"], "rows": np.zeros(len(inputs["x"]), np.int32)}

    batcher = Batcher("m", slow, BatchingOptions(max_batch_size=2, max_enqueued_batches=1, num_batch_threads=1))
    with pytest.raises(ServingError) as e:
        batcher.run(SIG, {"x": np.ones((3, 1), np.float32)}, ("y",))
    assert e.value.code is Code.INVALID_ARGUMENT
    assert "Task size 3 is larger than maximum input batch size 2" in str(e.value)
    running = threading.Thread(target=batcher.run, args=(SIG, {"x": np.ones((2, 1), np.float32)}, ("y",)))
    running.start()
    while not batcher._queues or any(q.tasks for q in batcher._queues.values()):  # wait until it runs
        threading.Event().wait(0.01)
    queued = threading.Thread(target=batcher.run, args=(SIG, {"x": np.ones((2, 1), np.float32)}, ("y",)))
    queued.start()
    while not any(q.tasks for q in batcher._queues.values()):
        threading.Event().wait(0.01)
    with pytest.raises(ServingError) as e:
        batcher.run(SIG, {"x": np.ones((1, 1), np.float32)}, ("y",))
    assert e.value.code is Code.UNAVAILABLE and "is full" in str(e.value)
    release.set()
    running.join(10)
    queued.join(10)
    batcher.close()


def test_a_failing_batch_fails_its_callers_and_the_batcher_goes_on() -> None:
    calls = []

    def flaky(sig: Signature, inputs: Mapping[str, np.ndarray], outputs: tuple[str, ...]) -> dict:
        calls.append(1)
        if len(calls) == 1:
            raise ServingError(Code.INVALID_ARGUMENT, "bad batch")
        return {"y": inputs["x"]}

    batcher = Batcher("m", flaky, BatchingOptions(num_batch_threads=1))
    with pytest.raises(ServingError, match="bad batch"):
        batcher.run(SIG, {"x": np.ones((1, 1), np.float32)}, ("y",))
    assert batcher.run(SIG, {"x": np.ones((1, 1), np.float32)}, ("y",))["y"].tolist() == [[1.0]]
    batcher.close()


@pytest.mark.parametrize(("options", "message"), [
    (BatchingOptions(max_batch_size=0), "max_batch_size must be positive"),
    (BatchingOptions(max_batch_size=8, allowed_batch_sizes=(4, 2, 8)), "increasing order"),
    (BatchingOptions(max_batch_size=8, allowed_batch_sizes=(2, 4)),
     "Last entry in allowed_batch_sizes must match max_batch_size; last entry was 4; expected 8"),
    (BatchingOptions(max_batch_size=8, enable_large_batch_splitting=True, max_execution_batch_size=4,
                     allowed_batch_sizes=(2, 8)), "must match max_execution_batch_size; last entry was 8; expected 4"),
    (BatchingOptions(max_batch_size=4, enable_large_batch_splitting=True, max_execution_batch_size=8),
     "max_execution_batch_size must not exceed max_batch_size"),
])
def test_inconsistent_parameters_are_refused(options: BatchingOptions, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        options.validate()


class Blocking(Model):
    """Model whose first batch waits for `release`: the one batch thread stays busy meanwhile."""

    def __init__(self) -> None:
        super().__init__()
        self.release, self.started = threading.Event(), threading.Event()

    def __call__(self, sig: Signature, inputs: Mapping[str, np.ndarray], outputs: tuple[str, ...]) -> dict:
        if not self.started.is_set():
            self.started.set()
            self.release.wait(10)
        return super().__call__(sig, inputs, outputs)


def _busy(options: BatchingOptions) -> tuple[Blocking, Batcher, threading.Thread]:
    model = Blocking()
    batcher = Batcher("m", model, options)
    blocker = threading.Thread(target=batcher.run, args=(SIG, {"x": np.ones((1, 1), np.float32)}, ("y", "rows")))
    blocker.start()
    assert model.started.wait(10)
    return model, batcher, blocker


def test_cancelled_callers_free_their_place_in_the_queue() -> None:
    import asyncio

    model, batcher, blocker = _busy(BatchingOptions(max_batch_size=4, max_enqueued_batches=1, num_batch_threads=1))

    async def scenario() -> dict:
        gone = [asyncio.ensure_future(batcher.run_async(SIG, {"x": np.ones((1, 1), np.float32)}, ("y", "rows")))
                for _ in range(4)]  # the queue's one batch is full of them
        await asyncio.sleep(0.05)
        for task in gone:
            task.cancel()
        await asyncio.gather(*gone, return_exceptions=True)
        live = asyncio.ensure_future(batcher.run_async(SIG, {"x": np.full((1, 1), 3.0, np.float32)}, ("y", "rows")))
        await asyncio.sleep(0.05)
        model.release.set()
        return await live

    got = asyncio.run(scenario())
    blocker.join(10)
    batcher.close()
    np.testing.assert_array_equal(got["y"], [[6.0]])
    assert model.batches == [1, 1]  # the blocker, then the live caller alone: the cancelled never ran


def test_a_refused_split_task_leaves_no_rows_behind() -> None:
    model, batcher, blocker = _busy(BatchingOptions(max_batch_size=8, enable_large_batch_splitting=True,
                                                    max_execution_batch_size=2, max_enqueued_batches=2,
                                                    num_batch_threads=1))
    with pytest.raises(ServingError) as e:
        batcher.run(SIG, {"x": np.ones((6, 1), np.float32)}, ("y", "rows"))  # 3 chunks, room for 2
    assert e.value.code == Code.UNAVAILABLE
    model.release.set()
    blocker.join(10)
    batcher.close()
    assert model.batches == [1]  # none of the refused task's chunks ran
