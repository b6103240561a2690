"""The model call alone, per signature-call path, in one process: what a batch costs TensorFlow.

    .venv/bin/python bench/calls.py MODEL_VERSION_DIR [--input pixels] [--width 64]

Two paths over the same SavedModel version and the same inputs, at batch 1, 32 and 256:
- `concrete function`: `tf.saved_model.load(...).signatures[name](**tensors)`, the TF 2 call the
  server used before it ran signatures as TF Serving does;
- `session callable`: tfprod's SavedModel servable (a Session over the MetaGraph, one
  `Session::MakeCallable` per signature and outputs), the path the server takes now.
Median microseconds per call over `--calls` calls, after a warm-up. Returns rows for bench/run.py.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _median_us(call: Callable[[], Any], calls: int) -> float:
    for _ in range(20):
        call()
    samples = []
    for _ in range(calls):
        started = time.perf_counter()
        call()
        samples.append(time.perf_counter() - started)
    return statistics.median(samples) * 1e6


def measure(version_dir: str, input_name: str, width: int, calls: int = 300,
            batches: Sequence[int] = (1, 32, 256)) -> list[tuple[str, int, float]]:
    """[(path, batch, median µs)]."""
    import numpy as np
    import tensorflow as tf

    sys.path.insert(0, ROOT)
    from tfprod.core.manager import ServableId
    from tfprod.servables import saved_model

    function = tf.saved_model.load(version_dir).signatures["serving_default"]
    servable = saved_model.load(ServableId("bench", 1), version_dir)
    sig = servable.signature("serving_default")
    outputs = tuple(sig.outputs)
    rows = []
    for batch in batches:
        x = np.random.default_rng(0).random((batch, width), np.float32)
        expected = next(iter(function(**{input_name: tf.constant(x)}).values())).numpy()
        got = servable.run(sig, {input_name: x})[outputs[0]]
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)  # the same answers, or no timing
        rows.append(("concrete function", batch, _median_us(
            lambda: {k: v.numpy() for k, v in function(**{input_name: tf.constant(x)}).items()}, calls)))  # noqa: B023
        rows.append(("session callable", batch, _median_us(lambda: servable.run(sig, {input_name: x}), calls)))  # noqa: B023
    servable.unload()
    return rows


def main(argv: Sequence[str]) -> int:
    p = argparse.ArgumentParser(prog="bench/calls.py", description=__doc__.split("\n\n")[0])
    p.add_argument("version_dir")
    p.add_argument("--input", default="pixels")
    p.add_argument("--width", type=int, default=64)
    p.add_argument("--calls", type=int, default=300)
    args = p.parse_args(argv)
    for path, batch, us in measure(args.version_dir, args.input, args.width, args.calls):
        print(f"{path:18s} batch {batch:4d}: {us:8.1f} µs")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
