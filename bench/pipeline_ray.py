"""Statistics with `--runner ray` on a 2-worker loopback cluster against in-process, one run:

    .venv/bin/python bench/pipeline_ray.py [--rows 10000000] [--columns 30] [--sizes 1000000,3000000]

The data is one split in ExampleGen's layout (Parquet row groups of 262,144 rows; every fifth
column a string). Both engines run the same function, `stats.compute_units`, over the same row
groups, and their protos are checked equal. Reported: the seconds of each engine at each size,
the fixed costs of Ray (starting the cluster, connecting, the workers' first task), a linear fit
seconds = fixed + rows x per-row for each engine, and the crossover: the size from which Ray is
faster once its workers run, for a run that connects to a running cluster (each run's driver
gets new workers), and for a run that must also start the cluster.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RAY_ENV = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}


def write_split(path: str, rows: int, columns: int) -> None:
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    from tfprod.pipeline import examples

    rng = np.random.default_rng(0)
    writer = None
    done = 0
    while done < rows:
        n = min(examples.ROW_GROUP_ROWS, rows - done)
        table = pa.table({f"c{i}": (rng.choice(["a", "b", "c", "d", "e"], n) if i % 5 == 4 else rng.normal(size=n))
                          for i in range(columns)})
        writer = writer or pq.ParquetWriter(path, table.schema)
        writer.write_table(table, row_group_size=examples.ROW_GROUP_ROWS)
        done += n
    assert writer is not None
    writer.close()


def fit(points: list[tuple[int, float]]) -> tuple[float, float]:
    """Least squares seconds = fixed + rows * per_row."""
    import numpy as np

    rows, seconds = np.array([p[0] for p in points], float), np.array([p[1] for p in points])
    per_row, fixed = np.polyfit(rows, seconds, 1)
    return float(fixed), float(per_row)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rows", type=int, default=10_000_000)
    p.add_argument("--columns", type=int, default=30)
    p.add_argument("--sizes", default="1000000,3000000", help="smaller sizes (a prefix of the row groups)")
    args = p.parse_args()
    os.environ.update(RAY_ENV)
    from rich.console import Console
    from rich.table import Table

    from tfprod.pipeline import examples, stats
    from tfprod.pipeline.engines.ray import RayEngine
    from tfprod.pipeline.runner import Engine

    console = Console()
    work = tempfile.mkdtemp(prefix="bench-ray-")
    split = os.path.join(work, "Split-train")
    os.makedirs(split)
    with console.status(f"writing {args.rows:,} rows x {args.columns} columns"):
        write_split(os.path.join(split, "data-00000-of-00001.parquet"), args.rows, args.columns)
    units = examples.units(work, "train")
    sizes = sorted({*(int(s) for s in args.sizes.split(",") if s), args.rows})
    chosen = {n: units[:max(1, -(-n // examples.ROW_GROUP_ROWS))] for n in sizes}

    local: dict[int, tuple[float, bytes]] = {}
    stats.compute_units(units[:1], "train", Engine().map)  # imports and first calls, as Ray's first task below
    for n, us in chosen.items():
        with console.status(f"in-process: {n:,} rows"):
            started = time.perf_counter()
            proto = stats.compute_units(us, "train", Engine().map)
            local[n] = (time.perf_counter() - started, proto.SerializeToString())

    ray_bin = os.path.join(os.path.dirname(sys.executable), "ray")
    port = 6390
    started = time.perf_counter()
    subprocess.run([ray_bin, "start", "--head", "--node-ip-address=127.0.0.1", f"--port={port}", "--num-cpus=2",
                    "--include-dashboard=false", "--disable-usage-stats"], check=True, capture_output=True)
    cluster_start = time.perf_counter() - started
    try:
        started = time.perf_counter()
        engine = RayEngine(f"127.0.0.1:{port}")
        connect = time.perf_counter() - started
        started = time.perf_counter()
        engine.map(stats.unit_first_pass, units[:2])  # both workers start and import what the task needs
        first_task = time.perf_counter() - started
        remote: dict[int, tuple[float, bytes]] = {}
        for n, us in chosen.items():
            with console.status(f"Ray: {n:,} rows"):
                started = time.perf_counter()
                proto = stats.compute_units(us, "train", engine.map)
                remote[n] = (time.perf_counter() - started, proto.SerializeToString())
        engine.close()
    finally:
        subprocess.run([ray_bin, "stop", "--force"], capture_output=True)
        import shutil

        shutil.rmtree(work, ignore_errors=True)

    table = Table(title=f"statistics, {args.columns} columns, 2 cores: in-process vs Ray (2 workers, loopback)")
    for column in ("rows", "in-process s", "Ray s", "Ray / in-process", "same proto"):
        table.add_column(column, justify="right")
    for n in sizes:
        rows = min(n, sum(1 for _ in chosen[n]) * examples.ROW_GROUP_ROWS)
        table.add_row(f"{rows:,}", f"{local[n][0]:.2f}", f"{remote[n][0]:.2f}", f"{remote[n][0] / local[n][0]:.2f}",
                      "yes" if local[n][1] == remote[n][1] else "NO")
    console.print(table)
    console.print(f"Ray fixed costs: cluster start {cluster_start:.1f} s, connect {connect:.1f} s, workers' first task "
                  f"{first_task:.1f} s; in-process: none")
    lf, lp = fit([(n, local[n][0]) for n in sizes])
    rf, rp = fit([(n, remote[n][0]) for n in sizes])
    console.print(f"fit, in-process: {lf:.2f} s + {lp * 1e6:.3f} s per 1M rows; Ray: {rf:.2f} s + {rp * 1e6:.3f} s "
                  "per 1M rows")
    if lp > rp:
        warm = max(0.0, (rf - lf) / (lp - rp))
        running = max(0.0, (rf + connect + first_task - lf) / (lp - rp))
        cold = max(0.0, (rf + cluster_start + connect + first_task - lf) / (lp - rp))
        console.print(f"crossover: Ray is faster from ~{warm / 1e6:.1f}M rows once its workers run, from "
                      f"~{running / 1e6:.1f}M rows for a run that connects to a running cluster (its workers start), "
                      f"from ~{cold / 1e6:.1f}M rows when the run also starts the cluster")
    else:
        console.print("crossover: none on this machine (Ray's per-row cost is not below in-process)")
    same = all(local[n][1] == remote[n][1] for n in sizes)
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
