"""Latency while versions swap: does a rollout stall the clients?

    .venv/bin/python bench/swap.py MODEL_VERSION_DIR [--clients 2] [--seconds 8] [--swaps 4]

Serves a copy of the version under a fresh base path, runs `--clients` loops of one-row REST
predicts over keep-alive connections, measures `--seconds` of steady traffic, then publishes
`--swaps` new versions (copied aside, then renamed in, as a deploy script would) one every
`--seconds / --swaps` seconds, each one loaded and warmed before the previous unloads, and
measures the same traffic through the swaps. Reports P50/P99/P99.9/max of both phases, their P99
ratio (the target: ≤ 2) and failed requests (the target: 0). A stall holds every client at once, so
a closed loop records it once per client: the max shows it better than the percentiles.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from typing import Any

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _publish(src: str, base: str, version: int) -> None:
    tmp = os.path.join(base, f".tmp-{version}")
    shutil.copytree(src, tmp)
    os.rename(tmp, os.path.join(base, str(version)))


def _summary(samples: list[tuple[float, float, bool]]) -> dict[str, float]:
    latencies = sorted(ms for _, ms, _ in samples)
    return {"requests": len(samples), "p50": statistics.median(latencies),
            "p99": latencies[int(0.99 * (len(latencies) - 1))], "p999": latencies[int(0.999 * (len(latencies) - 1))],
            "max": latencies[-1],
            "failed": sum(1 for *_, ok in samples if not ok)}


def measure(version_dir: str, clients: int = 2, seconds: float = 8.0, swaps: int = 4) -> dict[str, Any]:
    import httpx

    work = tempfile.mkdtemp(prefix="tfprod-swap-")
    base = os.path.join(work, "m")
    os.makedirs(base)
    _publish(version_dir, base, 1)
    port = _free_port()
    log = open(os.path.join(work, "server.log"), "wb")
    server = subprocess.Popen([sys.executable, "-m", "tfprod", "serve", "--host=127.0.0.1", f"--rest_api_port={port}",
                               "--port=0", "--model_name=m", f"--model_base_path={base}"], stdout=log,
                              stderr=subprocess.STDOUT, cwd=ROOT, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
    url = f"http://127.0.0.1:{port}"
    body = json.dumps({"inputs": {"pixels": [[0.5] * 64]}})
    samples: list[tuple[float, float, bool]] = []  # (start, ms, ok)
    stop = threading.Event()
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline or server.poll() is not None:
                raise RuntimeError(f"the server did not start: see {work}/server.log")
            time.sleep(0.1)

        def loop() -> None:
            with httpx.Client(base_url=url, timeout=10) as client:
                while not stop.is_set():
                    started = time.monotonic()
                    try:
                        ok = client.post("/v1/models/m:predict", content=body).status_code == 200
                    except httpx.HTTPError:
                        ok = False
                    samples.append((started, (time.monotonic() - started) * 1e3, ok))

        threads = [threading.Thread(target=loop, daemon=True) for _ in range(clients)]
        for t in threads:
            t.start()
        time.sleep(1.0)  # connections and caches warm
        steady_from = time.monotonic()
        time.sleep(seconds)
        swaps_from = time.monotonic()
        for v in range(2, 2 + swaps):
            _publish(version_dir, base, v)
            time.sleep(seconds / swaps)
        last = 1 + swaps
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:  # until the last version serves and the one before it is gone
            states = {v["version"]: v["state"] for v in httpx.get(f"{url}/v1/models/m").json()["model_version_status"]}
            if states.get(str(last)) == "AVAILABLE" and states.get(str(last - 1)) in ("END", None):
                break
            time.sleep(0.2)
        swaps_to = time.monotonic()
        stop.set()
        for t in threads:
            t.join(timeout=15)
    finally:
        server.terminate()
        server.wait(timeout=60)
        log.close()
    steady = _summary([s for s in samples if steady_from <= s[0] < swaps_from])
    swapping = _summary([s for s in samples if swaps_from <= s[0] < swaps_to])
    shutil.rmtree(work, ignore_errors=True)
    return {"steady": steady, "swaps": swapping, "p99_ratio": swapping["p99"] / steady["p99"], "versions": swaps}


def main(argv: Sequence[str]) -> int:
    p = argparse.ArgumentParser(prog="bench/swap.py", description=__doc__.split("\n\n")[0])
    p.add_argument("version_dir")
    p.add_argument("--clients", type=int, default=2)
    p.add_argument("--seconds", type=float, default=8.0)
    p.add_argument("--swaps", type=int, default=4)
    args = p.parse_args(argv)
    r = measure(args.version_dir, args.clients, args.seconds, args.swaps)
    for phase in ("steady", "swaps"):
        s = r[phase]
        print(f"{phase:7s}: {s['requests']:6d} requests, P50 {s['p50']:.1f} ms, P99 {s['p99']:.1f} ms, "
              f"P99.9 {s['p999']:.1f} ms, max {s['max']:.1f} ms, failed {s['failed']}")
    print(f"P99 during {r['versions']} swaps / steady P99: {r['p99_ratio']:.2f} (target ≤ 2)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
