"""`make pipeline-demo`: the credit pipeline three times against a running server.

Run 1 (span 1) pushes version 1 into the base path a `tfprod serve` watches; run 2 (span 2, its
`mean_radius` drifted) is stopped by the validator and pushes nothing; run 3 (span 3) is blessed
against version 1 and pushed as version 2, which the server loads without a restart; a cached
re-run of span 3 does nothing new; `tfprod lineage` shows both versions. Timings are printed.
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--workdir", default="credit-demo", help="where data, artifacts and models go (recreated)")
    args = p.parse_args()
    import httpx
    from data import write_spans
    from rich.console import Console

    from tfprod.pipeline import runner
    from tfprod.pipeline.cli import load

    console = Console()
    work = os.path.abspath(args.workdir)
    shutil.rmtree(work, ignore_errors=True)
    data, root, serving = (os.path.join(work, d) for d in ("data", "pipeline", "models/credit"))
    write_spans(data)
    os.makedirs(serving)
    port = _free_port()
    server = subprocess.Popen([sys.executable, "-m", "tfprod", "serve", "--host=127.0.0.1", f"--rest_api_port={port}",
                               f"--port={_free_port()}", "--model_name=credit", f"--model_base_path={serving}",
                               "--file_system_poll_wait_seconds=1"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    timings = {}

    def run(span: str) -> runner.RunResult:
        pipeline = load(os.path.join(HERE, "pipeline.py"), {"span": span, "data": data, "root": root,
                                                             "serving": serving})
        started = time.perf_counter()
        result = runner.run(pipeline, progress=lambda c, m: console.print(f"  [bold]{c}[/bold] {m}", highlight=False))
        timings[f"span {span}" + (" (cached)" if f"span {span}" in timings else "")] = time.perf_counter() - started
        console.print(f"[bold]span {span}[/bold]: " + (f"[yellow]stopped[/yellow] by {result.stopped}" if result.stopped
                                                         else "[green]complete[/green]"), highlight=False)
        return result

    def served() -> list[int]:
        try:
            doc = httpx.get(f"http://127.0.0.1:{port}/v1/models/credit", timeout=5).json()
        except (httpx.HTTPError, ValueError):
            return []
        return sorted(int(v["version"]) for v in doc.get("model_version_status", []) if v["state"] == "AVAILABLE")

    def wait_for(version: int) -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and version not in served():
            time.sleep(0.3)
        console.print(f"the server serves version(s) {served()}")

    try:
        total = time.perf_counter()
        run("1")
        wait_for(1)
        drifted = run("2")
        assert drifted.stopped, "span 2 should have been stopped by the validator"
        run("3")
        wait_for(2)
        timings["whole demo (3 runs)"] = time.perf_counter() - total
        run("3")
        for version in ("1", "2"):
            subprocess.run([sys.executable, "-m", "tfprod", "lineage", serving, version], check=True)
        console.print("timings: " + ", ".join(f"{k} {v:.1f} s" for k, v in timings.items()))
        console.print(f"\nartifacts and the metadata store: {root}\nserving base path: {serving}")
    finally:
        server.terminate()
        server.wait(timeout=30)
    return 0


if __name__ == "__main__":
    sys.exit(main())
