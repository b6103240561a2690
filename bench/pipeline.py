"""The pipeline's speed targets, one run each on this machine:

    .venv/bin/python bench/pipeline.py [--rows 1000000] [--columns 30]

1. statistics over ROWS x COLUMNS (numeric; every fifth column a string) on one core: target
   under 10 s for 1M x 30;
2. the credit demo (examples/credit: three runs, the middle one stopped by drift): target under
   60 s on 2 cores;
3. a cached re-run of its last span: target under 5 s.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "examples", "credit"))


def statistics(rows: int, columns: int) -> float:
    import numpy as np
    import pyarrow as pa

    from tfprod.pipeline import stats

    rng = np.random.default_rng(0)
    data = {f"c{i}": (rng.choice(["a", "b", "c", "d", "e"], rows) if i % 5 == 4 else rng.normal(size=rows))
            for i in range(columns)}
    table = pa.table(data)
    started = time.perf_counter()
    stats.compute(table)
    return time.perf_counter() - started


def demo() -> tuple[float, float]:
    from data import write_spans

    from tfprod.pipeline import runner
    from tfprod.pipeline.cli import load

    with tempfile.TemporaryDirectory() as work:
        write_spans(os.path.join(work, "data"))

        def run(span: str) -> runner.RunResult:
            return runner.run(load(os.path.join(ROOT, "examples", "credit", "pipeline.py"), {
                "span": span, "data": os.path.join(work, "data"), "root": os.path.join(work, "pipeline"),
                "serving": os.path.join(work, "models")}))
        started = time.perf_counter()
        results = [run(span) for span in ("1", "2", "3")]
        whole = time.perf_counter() - started
        assert [bool(r.stopped) for r in results] == [False, True, False], [r.stopped for r in results]
        started = time.perf_counter()
        run("3")
        return whole, time.perf_counter() - started


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rows", type=int, default=1_000_000)
    p.add_argument("--columns", type=int, default=30)
    args = p.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    seconds = statistics(args.rows, args.columns)
    print(f"statistics, {args.rows:,} rows x {args.columns} columns: {seconds:.1f} s (target < 10 s)")
    whole, cached = demo()
    print(f"credit demo, three runs: {whole:.1f} s (target < 60 s); cached re-run: {cached:.1f} s (target < 5 s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
