"""What a rollout costs a request: the same server, the same model, four paths, ratios from one run.

    .venv/bin/python bench/rollout.py [--duration 6] [--connections 16]

One `tfprod serve` with two models, each with versions 1 and 2 (the same digits MLP):
`digits` in a rollout at 50% without a shadow, `shadowed` in a rollout at 0% whose shadow (version
2) runs on every request. wrk measures, one after the other:
- `versions/1` — a request naming its version: never routed (the baseline);
- `routed 50%` — unversioned, a coin per request;
- `routed 50%, sticky` — unversioned with an `x-user-id` header (one hash per request);
- `shadow 100%` — unversioned, every answer followed by a shadow run and a comparison (twice the
  model work; shadows beyond `max_in_flight` are dropped and counted).
The paths take turns, `--rounds` times, each turn starting at the next path (this machine is
shared and noisy: one long run per path would compare different minutes); each row is the
median of its rounds: requests/s, P50/P99 and the ratio to the baseline. Then how many shadows
ran and how many were dropped.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import sys
import tempfile
import urllib.request
from collections.abc import Sequence

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from run import Server, free_port, wrk  # noqa: E402 (bench/run.py's server and load generator)

ROLLOUT = """[models.digits]
stable = 1
canary = 2
steps = [50]
[models.digits.analysis]
interval_s = 3600

[models.shadowed]
stable = 1
canary = 2
steps = [0]
[models.shadowed.shadow]
version = 2
sample_percent = 100
max_in_flight = 16
[models.shadowed.analysis]
interval_s = 3600
max_disagreement = 0.5
"""


def main(argv: Sequence[str]) -> int:
    p = argparse.ArgumentParser(prog="bench/rollout.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--duration", type=int, default=4, help="seconds per measurement (default 4)")
    p.add_argument("--rounds", type=int, default=5, help="turns each path takes (default 5)")
    p.add_argument("--connections", type=int, default=16)
    args = p.parse_args(argv)
    if shutil.which("wrk") is None:
        print("bench/rollout.py: wrk is not installed: apt-get install wrk")
        return 2
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import json

    from rich.console import Console
    from rich.progress import Progress
    from rich.table import Table

    sys.path.insert(0, os.path.dirname(HERE))
    from tfprod.demo import train_and_export

    console = Console()
    work = tempfile.mkdtemp(prefix="tfprod-bench-rollout-")
    try:
        request, _ = train_and_export(os.path.join(work, "digits"))
        for model in ("digits", "shadowed"):
            for version in ("1", "2"):
                if not os.path.exists(os.path.join(work, model, version)):
                    shutil.copytree(os.path.join(work, "digits", "1"), os.path.join(work, model, version))
        with open(os.path.join(work, "models.config"), "w") as f:
            f.write("model_config_list {\n" + "".join(
                f'  config {{ name: "{m}" base_path: "{work}/{m}" model_platform: "tensorflow" '
                "model_version_policy { all {} } }\n" for m in ("digits", "shadowed")) + "}\n")
        with open(os.path.join(work, "rollout.toml"), "w") as f:
            f.write(ROLLOUT)
        with open(os.path.join(work, "monitoring.config"), "w") as f:
            f.write('prometheus_config { enable: true path: "/metrics" }\n')
        with open(request) as f:
            body = json.dumps({"instances": json.load(f)["instances"][:1]})
        port = free_port()
        server = Server("tfprod-rollout", [
            sys.executable, "-m", "tfprod", "serve", "--host=127.0.0.1", f"--rest_api_port={port}",
            f"--port={free_port()}", f"--model_config_file={work}/models.config",
            f"--rollout_config_file={work}/rollout.toml", f"--monitoring_config_file={work}/monitoring.config"],
            port, "/readyz")
        rows = [("versions/1 (not routed)", "/v1/models/digits/versions/1:predict", None),
                ("routed 50%", "/v1/models/digits:predict", None),
                ("routed 50%, sticky", "/v1/models/digits:predict", {"x-user-id": "user-42"}),
                ("shadow 100%", "/v1/models/shadowed:predict", None)]
        runs: dict[str, list[dict[str, float]]] = {name: [] for name, _, _ in rows}
        try:
            with Progress(console=console) as progress:
                task = progress.add_task("measuring", total=args.rounds * len(rows))
                for turn in range(args.rounds):
                    for name, path, headers in rows[turn % len(rows):] + rows[:turn % len(rows)]:  # each first in turn
                        progress.update(task, description=f"{name} @ {args.connections} connections")
                        runs[name].append(wrk(f"http://127.0.0.1:{port}{path}", body, args.connections, args.duration,
                                              headers))
                        progress.advance(task)
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics") as r:
                metrics = r.read().decode()
        finally:
            server.stop()
        shadows = {m.group(1): float(m.group(2)) for m in re.finditer(
            r'^:tfprod:rollout:shadow_request_count\{model_name="shadowed",outcome="(\w+)"\} ([\d.e+]+)$',
            metrics, re.M)}
        results = {name: {k: statistics.median(r[k] for r in rs) for k in rs[0]} for name, rs in runs.items()}
        base = results[rows[0][0]]["rps"]
        table = Table("path", "requests/s", "ratio", "P50 ms", "P99 ms", "errors",
                      title=f"rollout routing cost, {args.connections} connections, median of {args.rounds} "
                      f"turns of {args.duration} s")
        for name, r in results.items():
            table.add_row(name, f"{r['rps']:.0f}", f"{r['rps'] / base:.2f}", f"{r['p50']:.2f}", f"{r['p99']:.2f}",
                          str(int(sum(run["errors"] for run in runs[name]))))
        console.print(table)
        console.print("shadow runs: " + ", ".join(f"{k} {v:.0f}" for k, v in sorted(shadows.items())), highlight=False)
        return 0
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
