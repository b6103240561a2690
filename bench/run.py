"""tfprod's benchmark: one command, every server in its own process, one load generator, ratios.

    make bench                 # or: .venv/bin/python bench/run.py [--duration 6] [--connections 1,16,64]

Compares, on the digits MLP (and a small CNN for tfprod), at several concurrencies:
tfprod REST and gRPC with batching off and on, with one worker and a worker per core, tfprod V2
REST, tfprod with every security check on (API key, rate rule, bounds; then also TLS), tfprod at a
fixed arrival rate (open loop), the same HTTP stack's no-op endpoint (this machine's ceiling),
Flask + TensorFlow under gunicorn with a worker per core (the usual first server, as deployed),
MLServer with adaptive batching and a worker per core, and Ray Serve with @serve.batch and a
replica per core (peers from PyPI, each run from its own virtualenv; `--no-peer` skips them).
HTTP load comes from `wrk` (`h2load --h1 --rps` for the open-loop row); gRPC load from `h2load`
(nghttp2's C HTTP/2 load generator). Then the model call alone per
signature-call path (bench/calls.py) and latency through version swaps (bench/swap.py). Prints a table
with ratios to tfprod (REST, batching on), checks the targets, and writes docs/performance_results.md and
docs/bench.png. Numbers from one run are comparable with each other only.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
PY = sys.executable
PEER_VENV = os.path.join(HERE, ".venv-peer")
BATCHING = "max_batch_size { value: 16 }\nbatch_timeout_micros { value: 0 }\nnum_batch_threads { value: 1 }\n" \
           "max_enqueued_batches { value: 64 }\n"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# -- models --------------------------------------------------------------------------------

def build_models(root: str) -> dict[str, Any]:
    import numpy as np
    import tensorflow as tf
    from sklearn.datasets import load_digits

    sys.path.insert(0, ROOT)
    from tfprod.demo import train_and_export

    train_and_export(os.path.join(root, "digits"))
    x, y = load_digits(return_X_y=True)
    x = (x / 16.0).astype(np.float32)
    tf.keras.utils.set_random_seed(0)
    cnn = tf.keras.Sequential([
        tf.keras.Input((64,), name="pixels"),
        tf.keras.layers.Reshape((8, 8, 1)),
        tf.keras.layers.Conv2D(16, 3, activation="relu", padding="same"),
        tf.keras.layers.Conv2D(16, 3, activation="relu", padding="same"),
        tf.keras.layers.Flatten(),
        tf.keras.layers.Dense(10, activation="softmax"),
    ])
    cnn.compile("adam", "sparse_categorical_crossentropy")
    cnn.fit(x, y, epochs=2, batch_size=64, verbose=0)
    cnn.export(os.path.join(root, "cnn", "1"), verbose=False)
    row = x[:1].round(4).tolist()
    return {"row": row[0]}


# -- servers -------------------------------------------------------------------------------

class Server:
    def __init__(self, name: str, cmd: list[str], port: int, ready_path: str, env: dict[str, str] | None = None,
                 https: bool = False):
        self.name, self.port = name, port
        scheme, context = "http", None
        if https:
            import ssl
            scheme, context = "https", ssl._create_unverified_context()  # the bench's own self-signed cert
        self.log = tempfile.NamedTemporaryFile(prefix=f"bench-{name}-", suffix=".log", delete=False)
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT, cwd=ROOT,
                                     env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", **(env or {})},
                                     start_new_session=True)
        deadline = time.monotonic() + 180
        import urllib.request
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{name} exited: see {self.log.name}")
            try:
                with urllib.request.urlopen(f"{scheme}://127.0.0.1:{port}{ready_path}", timeout=1,
                                            context=context) as r:
                    if r.status == 200:
                        return
            except OSError:
                time.sleep(0.3)
        raise RuntimeError(f"{name} did not become ready: see {self.log.name}")

    def rss_mb(self) -> float:
        """Resident memory of the server and its children."""
        total = 0
        for pid in [self.proc.pid, *_children(self.proc.pid)]:
            try:
                with open(f"/proc/{pid}/status") as f:
                    total += next(int(line.split()[1]) for line in f if line.startswith("VmRSS"))
            except (OSError, StopIteration):
                pass
        return total / 1024

    def stop(self) -> None:
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(timeout=30)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            os.killpg(self.proc.pid, signal.SIGKILL)


def _children(pid: int) -> list[int]:
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout.split()
    kids = [int(p) for p in out]
    return kids + [g for k in kids for g in _children(k)]


def tfprod_server(name: str, models: str, batching: str | None, security: str | None = None,
                  https: bool = False, workers: int = 1) -> tuple[Server, int]:
    rest, grpc_port = free_port(), free_port()
    config = os.path.join(models, "models.config")
    cmd = [PY, "-m", "tfprod", "serve", f"--rest_api_port={rest}", f"--port={grpc_port}",
           f"--model_config_file={config}", "--host=127.0.0.1", f"--num_workers={workers}"]
    if batching:
        cmd += ["--enable_batching", f"--batching_parameters_file={batching}"]
    if security:
        cmd += [f"--security_config_file={security}"]
    return Server(name, cmd, rest, "/readyz", https=https), grpc_port


API_KEY = "tfp_bench_" + "k" * 32
# Every check on, none refusing: an API key, a rate rule no caller reaches, every bound.
SECURITY = f"""[auth]
[[auth.api_keys]]
name = "bench"
sha256 = "{hashlib.sha256(API_KEY.encode()).hexdigest()}"
scopes = ["predict:*"]
[limits]
max_concurrent_requests = 4096
max_body_bytes = 1048576
max_tensor_elements = 1000000
max_batch_rows = 1024
max_json_depth = 16
[[limits.rate]]
caller = "*"
per_second = 1000000
burst = 1000000
[models]
graph_scan = "enforce"
"""


def write_security(work: str) -> tuple[str, str]:
    """The security config of the two secured rows: without and with TLS (a self-signed cert)."""
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now)
            .not_valid_after(now + datetime.timedelta(days=1)).sign(key, hashes.SHA256()))
    with open(os.path.join(work, "server.key"), "wb") as f:
        f.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                  serialization.NoEncryption()))
    with open(os.path.join(work, "server.pem"), "wb") as f:
        f.write(cert.public_bytes(serialization.Encoding.PEM))
    plain, tls = os.path.join(work, "security.toml"), os.path.join(work, "security-tls.toml")
    with open(plain, "w") as f:
        f.write(SECURITY)
    with open(tls, "w") as f:
        f.write(SECURITY + '[tls]\ncert_file = "server.pem"\nkey_file = "server.key"\n')
    return plain, tls


# -- the helper servers: the no-op endpoint (`run.py _noop PORT`) and Flask (`flask_app`, under gunicorn) ----

def serve_noop(port: int) -> None:
    import uvicorn
    from starlette.responses import Response

    async def app(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        while (await receive()).get("more_body"):
            pass
        await Response(b'{"ok":true}', media_type="application/json")(scope, receive, send)

    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)


def flask_app(model: str) -> Any:
    """The usual first server: Flask + a TF signature call per request. Served by gunicorn with a
    worker process per core and 4 threads each, as production Flask runs (`gunicorn 'run:flask_app(M)'`)."""
    import numpy as np
    import tensorflow as tf
    from flask import Flask, jsonify, request

    fn = tf.saved_model.load(model).signatures["serving_default"]
    app = Flask("baseline")

    @app.post("/v1/models/digits:predict")
    def predict() -> Any:
        x = np.asarray(request.get_json()["instances"], np.float32)
        out = next(iter(fn(tf.constant(x)).values())).numpy()
        return jsonify({"predictions": out.tolist()})

    @app.get("/ready")
    def ready() -> Any:
        return "ok"

    return app


MLSERVER_RUNTIME = '''
import numpy as np, tensorflow as tf
from mlserver import MLModel
from mlserver.codecs import NumpyCodec
from mlserver.types import InferenceRequest, InferenceResponse

class SavedModel(MLModel):
    async def load(self):
        self._fn = tf.saved_model.load(self.settings.parameters.uri).signatures["serving_default"]
        return True

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        x = NumpyCodec.decode_input(payload.inputs[0]).astype(np.float32)
        out = next(iter(self._fn(tf.constant(x)).values())).numpy()
        return InferenceResponse(model_name=self.name, outputs=[NumpyCodec.encode_output("output_0", out)])
'''


# uvloop 0.22+ raises in asyncio.get_event_loop() without a running loop, which MLServer 1.7's
# parallel workers call at start: they crash in a loop.
PEER_PACKAGES = ("mlserver", "uvloop<0.22", "tensorflow==2.21.*")


def peer_venv(venv: str, packages: Sequence[str], what: str) -> None:
    """A peer's own virtualenv (its pins clash with tfprod's), installed once per package list."""
    marker = os.path.join(venv, ".installed")
    if not os.path.exists(marker) or open(marker).read() != " ".join(packages):
        print(f"installing {what} into bench/{os.path.basename(venv)} (once) ...", flush=True)
        subprocess.run([PY, "-m", "venv", venv], check=True)
        subprocess.run([os.path.join(venv, "bin", "pip"), "install", "-q", *packages], check=True)
        with open(marker, "w") as f:
            f.write(" ".join(packages))


def mlserver_server(models: str) -> Server:
    peer_venv(PEER_VENV, PEER_PACKAGES, "MLServer")
    folder = tempfile.mkdtemp(prefix="mlserver-")
    with open(os.path.join(folder, "runtime.py"), "w") as f:
        f.write(MLSERVER_RUNTIME)
    port = free_port()
    with open(os.path.join(folder, "settings.json"), "w") as f:
        json.dump({"http_port": port, "grpc_port": free_port(), "metrics_port": free_port(), "host": "127.0.0.1",
                   "parallel_workers": os.cpu_count() or 1,  # at its best: a worker per core
                   "metrics_dir": os.path.join(folder, ".metrics")}, f)  # not the checkout's working directory
    with open(os.path.join(folder, "model-settings.json"), "w") as f:
        json.dump({"name": "digits", "implementation": "runtime.SavedModel", "max_batch_size": 16,
                   "max_batch_time": 0.002,  # adaptive batching, as tfprod's rows batch
                   "parameters": {"uri": os.path.join(models, "digits", "1")}}, f)
    return Server("mlserver", [os.path.join(PEER_VENV, "bin", "mlserver"), "start", folder], port,
                  "/v2/health/ready", env={"PYTHONPATH": folder})


RAY_VENV = os.path.join(HERE, ".venv-ray")
RAY_PACKAGES = ("ray[serve]", "tensorflow==2.21.*")
RAY_APP = '''
import os, sys, time
import numpy as np, ray, tensorflow as tf
from ray import serve
from starlette.responses import JSONResponse, PlainTextResponse

path, port, replicas = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])


@serve.deployment(num_replicas=replicas, max_ongoing_requests=64, ray_actor_options={"num_cpus": 0})
class Digits:
    def __init__(self, path):
        self._fn = tf.saved_model.load(path).signatures["serving_default"]

    @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.002)  # as MLServer's rows batch
    async def rows(self, rows):
        out = next(iter(self._fn(tf.constant(np.asarray(rows, np.float32))).values())).numpy()
        return out.tolist()

    async def __call__(self, request):
        if request.method == "GET":
            return PlainTextResponse("ok")
        body = await request.json()
        return JSONResponse({"predictions": [await self.rows(body["instances"][0])]})


ray.init(num_cpus=os.cpu_count(), include_dashboard=False, _node_ip_address="127.0.0.1")
serve.start(http_options={"host": "127.0.0.1", "port": port})
serve.run(Digits.bind(path), route_prefix="/")
while True:
    time.sleep(3600)
'''


def ray_server(models: str) -> Server:
    """Ray Serve at its best for this model: a replica per core behind its HTTP proxy, rows merged
    by @serve.batch (16 rows / 2 ms), run from its own virtualenv (bench/.venv-ray)."""
    peer_venv(RAY_VENV, RAY_PACKAGES, "Ray Serve")
    folder = tempfile.mkdtemp(prefix="ray-")
    with open(os.path.join(folder, "app.py"), "w") as f:
        f.write(RAY_APP)
    port = free_port()
    return Server("ray", [os.path.join(RAY_VENV, "bin", "python"), os.path.join(folder, "app.py"),
                          os.path.join(models, "digits", "1"), str(port), str(os.cpu_count() or 1)], port, "/",
                  env={"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_AUTH_MODE": "disabled",
                       "RAY_USAGE_STATS_ENABLED": "0"})


# -- load ----------------------------------------------------------------------------------

LUA = 'wrk.method = "POST"\nwrk.headers["Content-Type"] = "application/json"\nwrk.body = [==[{body}]==]\n'


def wrk(url: str, body: str, connections: int, duration: int, headers: dict[str, str] | None = None
        ) -> dict[str, float]:
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as f:
        f.write(LUA.format(body=body) + "".join(f'wrk.headers["{k}"] = "{v}"\n' for k, v in (headers or {}).items()))
    out = subprocess.run(["wrk", f"-t{min(2, connections)}", f"-c{connections}", f"-d{duration}s", "--latency",
                          "-s", f.name, url], capture_output=True, text=True, timeout=duration + 60).stdout
    os.unlink(f.name)
    def ms(label: str) -> float:
        m = re.search(rf"^\s*{label}%\s+([\d.]+)(us|ms|s)\s*$", out, re.M)
        if not m:
            return float("nan")
        return float(m.group(1)) * {"us": 1e-3, "ms": 1.0, "s": 1e3}[m.group(2)]
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    non_2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    sockets = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    errors = (int(non_2xx.group(1)) if non_2xx else 0) + (sum(map(int, sockets.groups())) if sockets else 0)
    return {"rps": rps, "p50": ms("50"), "p99": ms("99"), "errors": errors}


def open_loop(url: str, body: str, rate: float, connections: int, duration: int) -> dict[str, float]:
    """P50/P99 at a fixed arrival rate, not wrk's next-request-on-answer (closed loop): h2load --h1
    --rps sends each connection's requests on its own schedule whatever the answers' latency, and
    opening the connections 1 ms apart (-r1 --rate-period=1ms) spreads their schedules, so arrivals
    are even rather than in bursts of `connections` (open loop while an answer takes less than the
    gap between two requests of one connection, connections / rate)."""
    total = int(rate * duration)
    with tempfile.TemporaryDirectory() as work:
        path, log = os.path.join(work, "body"), os.path.join(work, "log")
        with open(path, "w") as f:
            f.write(body)
        subprocess.run(["h2load", "--h1", f"-n{total}", f"-c{connections}", "-t1", "-r1", "--rate-period=1ms",
                        f"--rps={rate / connections:.2f}", f"-d{path}", "-H", "content-type: application/json",
                        f"--log-file={log}", url], capture_output=True, text=True, timeout=duration * 3 + 60,
                       check=True)
        with open(log) as f:
            rows = [line.split("\t") for line in f if line.strip()]
    latencies = sorted(int(r[2]) / 1000 for r in rows if r[1] == "200")
    if not latencies:
        return {"rps": 0.0, "p50": float("nan"), "p99": float("nan"), "errors": len(rows)}
    starts = sorted(int(r[0]) for r in rows)
    return {"rps": len(latencies) / max((starts[-1] - starts[0]) / 1e6, 1e-9), "p50": statistics.median(latencies),
            "p99": latencies[int(0.99 * (len(latencies) - 1))], "errors": len(rows) - len(latencies)}


def grpc_load(target: str, row: list[float], connections: int, duration: int) -> dict[str, float]:
    """Unary gRPC Predicts from h2load (nghttp2's C load generator: a Python client saturates a
    core before the server does). A gRPC call is an HTTP/2 POST of a length-prefixed message; h2load
    cannot read gRPC's trailers, so one real stub call checks the answer first, and per-request
    times come from its log file."""
    import struct

    import grpc
    import numpy as np
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

    request = predict_pb2.PredictRequest()
    request.model_spec.name = "digits"
    request.inputs["pixels"].CopyFrom(tf.make_tensor_proto(np.asarray([row], np.float32)))
    with grpc.insecure_channel(target) as channel:
        reply = prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict(request, timeout=10)
    assert reply.outputs, "the gRPC Predict used for the load answered no outputs"
    message = request.SerializeToString()
    with tempfile.TemporaryDirectory() as work:
        body, log = os.path.join(work, "body"), os.path.join(work, "log")
        with open(body, "wb") as f:
            f.write(b"\x00" + struct.pack(">I", len(message)) + message)
        out = subprocess.run(["h2load", f"-D{duration}", f"-c{connections}", "-m1", f"-t{min(2, connections)}",
                              f"-d{body}", "-H", "content-type: application/grpc", "-H", "te: trailers",
                              f"--log-file={log}", f"http://{target}/tensorflow.serving.PredictionService/Predict"],
                             capture_output=True, text=True, timeout=duration + 60).stdout
        with open(log) as f:
            rows = [line.split("\t") for line in f if line.strip()]
    latencies = sorted(int(r[2]) / 1000 for r in rows if r[1] == "200")
    failed = re.search(r"(\d+) failed, (\d+) errored, (\d+) timeout", out)
    errors = (len(rows) - len(latencies)) + (sum(map(int, failed.groups())) if failed else 0)
    if not latencies:
        return {"rps": 0.0, "p50": float("nan"), "p99": float("nan"), "errors": errors}
    return {"rps": len(latencies) / duration, "p50": statistics.median(latencies),
            "p99": latencies[int(0.99 * (len(latencies) - 1))], "errors": errors}


OPEN_LOOP = "tfprod REST batching, open loop at ½ the closed-loop rate"


# -- the run -------------------------------------------------------------------------------

def main(argv: Sequence[str]) -> int:
    p = argparse.ArgumentParser(prog="bench/run.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--duration", type=int, default=6, help="seconds per measurement (default 6)")
    p.add_argument("--connections", default="1,16,64", help="concurrencies (default 1,16,64)")
    p.add_argument("--no-peer", action="store_true",
                   help="skip MLServer and Ray Serve (they install into bench/.venv-peer, bench/.venv-ray)")
    p.add_argument("--out", default=os.path.join(ROOT, "docs"), help="where the results and plot go")
    args = p.parse_args(argv)
    for tool, package in (("wrk", "wrk"), ("h2load", "nghttp2-client")):
        if shutil.which(tool) is None:
            print(f"bench: {tool} is not installed: apt-get install {package} (the Makefile's bench target does it)")
            return 2
    from rich.console import Console
    from rich.progress import Progress
    from rich.table import Table

    console = Console()
    connections = [int(c) for c in args.connections.split(",")]
    work = tempfile.mkdtemp(prefix="tfprod-bench-")
    models = os.path.join(work, "models")
    facts = build_models(models)
    with open(os.path.join(models, "models.config"), "w") as f:
        f.write("model_config_list {\n" + "".join(
            f'  config {{ name: "{m}" base_path: "{models}/{m}" model_platform: "tensorflow" }}\n'
            for m in ("digits", "cnn")) + "}\n")
    batching = os.path.join(work, "batching.config")
    with open(batching, "w") as f:
        f.write(BATCHING)
    security = write_security(work)
    v1 = json.dumps({"instances": [facts["row"]]})
    v2 = json.dumps({"inputs": [{"name": "pixels", "datatype": "FP32", "shape": [1, 64], "data": facts["row"]}]})

    # (system, server key, kind, path, body)
    cores = os.cpu_count() or 1
    pool = f"{cores} workers"
    plan = [
        ("tfprod REST batching", "on", "http", "/v1/models/digits:predict", v1),
        (OPEN_LOOP, "on", "open", "/v1/models/digits:predict", v1),
        ("tfprod REST batching, API key + limits", "secure", "http", "/v1/models/digits:predict", v1),
        ("tfprod REST batching, API key + limits + TLS", "tls", "https", "/v1/models/digits:predict", v1),
        ("tfprod REST", "off", "http", "/v1/models/digits:predict", v1),
        ("tfprod gRPC batching", "on", "grpc", "", ""),
        ("tfprod gRPC", "off", "grpc", "", ""),
        (f"tfprod REST batching, {pool}", "pool", "http", "/v1/models/digits:predict", v1),
        (f"tfprod gRPC batching, {pool}", "pool", "grpc", "", ""),
        ("tfprod V2 REST batching", "on", "http", "/v2/models/digits/infer", v2),
        ("tfprod REST batching, CNN", "on", "http", "/v1/models/cnn:predict", v1),
        ("tfprod REST, CNN", "off", "http", "/v1/models/cnn:predict", v1),
        ("no-op endpoint (ceiling)", "noop", "http", "/", v1),
        ("Flask + TF (gunicorn, a worker per core)", "flask", "http", "/v1/models/digits:predict", v1),
    ]
    if not args.no_peer:
        plan.append(("MLServer (V2)", "mlserver", "http", "/v2/models/digits/infer", v2))
        plan.append(("Ray Serve (@serve.batch)", "ray", "http", "/", v1))

    results: dict[str, dict[int, dict[str, float]]] = {}
    with Progress(console=console) as progress:
        task = progress.add_task("benchmark", total=len(plan) * len(connections))
        for key in dict.fromkeys(k for _, k, *_ in plan):
            progress.update(task, description=f"starting {key}")
            if key in ("on", "off"):
                server, grpc_port = tfprod_server(f"tfprod-{key}", models, batching if key == "on" else None)
            elif key == "pool":
                server, grpc_port = tfprod_server("tfprod-pool", models, batching, workers=cores)
            elif key in ("secure", "tls"):
                server, grpc_port = tfprod_server(f"tfprod-{key}", models, batching,
                                                  security[0] if key == "secure" else security[1], key == "tls")
            elif key == "noop":
                port = free_port()
                server, grpc_port = Server("noop", [PY, __file__, "_noop", str(port)], port, "/"), 0
            elif key == "flask":
                port = free_port()
                gunicorn = os.path.join(os.path.dirname(PY), "gunicorn")
                server, grpc_port = Server("flask", [gunicorn, "--chdir", HERE, "-w", str(os.cpu_count() or 1),
                                                     "--threads", "4", "-b", f"127.0.0.1:{port}", "--log-level",
                                                     "warning", f"run:flask_app({f'{models}/digits/1'!r})"],
                                           port, "/ready"), 0
            elif key == "ray":
                server, grpc_port = ray_server(models), 0
            else:
                server, grpc_port = mlserver_server(models), 0
            try:
                for name, k, kind, path, body in plan:
                    if k != key:
                        continue
                    for c in connections:
                        progress.update(task, description=f"{name} @ {c}")
                        if kind == "open":
                            if c == max(connections):  # half the closed-loop rate of the same server
                                rate = 0.5 * results["tfprod REST batching"][c]["rps"]
                                r = open_loop(f"http://127.0.0.1:{server.port}{path}", body, rate, c, args.duration)
                                r["rss_mb"] = server.rss_mb()
                                results.setdefault(name, {})[c] = r
                            progress.advance(task)
                            continue
                        if kind in ("http", "https"):
                            headers = {"X-API-Key": API_KEY} if key in ("secure", "tls") else None
                            r = wrk(f"{kind}://127.0.0.1:{server.port}{path}", body, c, args.duration, headers)
                        else:
                            r = grpc_load(f"127.0.0.1:{grpc_port}", facts["row"], c, args.duration)
                        r["rss_mb"] = server.rss_mb()
                        results.setdefault(name, {})[c] = r
                        progress.advance(task)
            finally:
                server.stop()
    progress_note = console.status("model calls per signature-call path; latency through version swaps")
    with progress_note:
        sys.path.insert(0, HERE)
        import calls
        import swap

        extra = {"calls": {m: calls.measure(f"{models}/{m}/1", "pixels", 64) for m in ("digits", "cnn")},
                 "swap": swap.measure(f"{models}/digits/1")}
    shutil.rmtree(work, ignore_errors=True)
    report(console, Table, results, connections, args, extra)
    return 0


def report(console: Any, table_cls: Any, results: dict[str, dict[int, dict[str, float]]],
           connections: list[int], args: argparse.Namespace, extra: dict[str, Any]) -> None:
    ref = results["tfprod REST batching"]
    table = table_cls(title="digits MLP unless noted; ratios to tfprod REST batching at the same concurrency")
    for col in ("system", "conc", "req/s", "× tfprod", "P50 ms", "P99 ms", "errors", "RSS MB"):
        table.add_column(col, justify="left" if col == "system" else "right")
    lines = ["| system | conc | req/s | × tfprod | P50 ms | P99 ms | errors | RSS MB |",
             "|---|---|---|---|---|---|---|---|"]
    for name, by_c in results.items():
        for c, r in by_c.items():
            ratio = r["rps"] / ref[c]["rps"] if ref.get(c) and ref[c]["rps"] else float("nan")
            cells = [name, str(c), f"{r['rps']:.0f}", f"{ratio:.2f}", f"{r['p50']:.1f}", f"{r['p99']:.1f}",
                     str(int(r["errors"])), f"{r['rss_mb']:.0f}"]
            table.add_row(*cells)
            lines.append("| " + " | ".join(cells) + " |")
    console.print(table)

    c = max(connections)
    def at(name: str, key: str) -> float:
        return results.get(name, {}).get(c, {}).get(key, float("nan"))
    peers = [n for n in results if n.startswith(("MLServer", "Flask", "Ray"))]
    cores = os.cpu_count() or 1
    best_peer = max((at(n, "rps") for n in peers), default=float("nan"))
    ours = at("tfprod REST batching", "rps")
    ceiling = at("no-op endpoint (ceiling)", "rps")
    targets = [
        ("batching on ≥ 5× batching off (REST)", ours / at("tfprod REST", "rps"), 5.0),
        ("tfprod ≥ 2× each peer at its best", ours / best_peer, 2.0),
        ("tfprod ≥ 50% of the no-op ceiling", ours / ceiling, 0.5),
        ("… ≥ 25% where wrk shares 2 cores", ours / ceiling, 0.25),
        ("tfprod P99 ≤ 3× its P50", 3.0 * at("tfprod REST batching", "p50") / at("tfprod REST batching", "p99"), 1.0),
        ("gRPC ≥ REST throughput (batching)", at("tfprod gRPC batching", "rps") / ours, 1.0),
        (f"{cores} workers ≥ 0.8 × {cores} × 1 worker (REST)",
         at(f"tfprod REST batching, {cores} workers", "rps") / (cores * ours), 0.8),
        ("open loop at half the closed-loop rate: P99 ≤ 3× P50",
         3.0 * at(OPEN_LOOP, "p50") / at(OPEN_LOOP, "p99"), 1.0),
    ]
    lines += ["", f"Targets at {c} connections:", "", "| target | measured | needed | |", "|---|---|---|---|"]
    for label, value, need in targets:
        ok = "met" if value >= need else ("n/a" if value != value else "MISSED")
        console.print(f"  {label}: {value:.2f} (need ≥ {need}) [{'green' if ok == 'met' else 'red'}]{ok}")
        lines.append(f"| {label} | {value:.2f} | ≥ {need} | {ok} |")
    lines += ["", "Model call alone, per signature-call path (bench/calls.py; median µs per call, in-process):", "",
              "| model | path | batch 1 | batch 32 | batch 256 |", "|---|---|---|---|---|"]
    for model, rows in extra["calls"].items():
        for path in dict.fromkeys(p for p, _, _ in rows):
            cells = [f"{us:.0f}" for p, _, us in rows if p == path]
            lines.append(f"| {model} | {path} | " + " | ".join(cells) + " |")
            console.print(f"  {model} {path}: " + " / ".join(cells) + " µs at batch 1 / 32 / 256")
    sw = extra["swap"]
    lines += ["", f"Latency through {sw['versions']} version swaps (bench/swap.py; 2 clients, one-row REST predicts):",
              "", "| phase | requests | P50 ms | P99 ms | P99.9 ms | max ms | failed |",
              "|---|---|---|---|---|---|---|"]
    for phase in ("steady", "swaps"):
        r = sw[phase]
        lines.append(f"| {phase} | {r['requests']} | {r['p50']:.1f} | {r['p99']:.1f} | {r['p999']:.1f} | "
                     f"{r['max']:.1f} | {r['failed']} |")
    ok = "met" if sw["p99_ratio"] <= 2 and not sw["swaps"]["failed"] else "MISSED"
    lines.append(f"\nP99 during swaps / steady P99: {sw['p99_ratio']:.2f} (target ≤ 2, 0 failed): {ok}")
    console.print(f"  P99 during swaps / steady: {sw['p99_ratio']:.2f} (need ≤ 2, 0 failed) {ok}")
    os.makedirs(args.out, exist_ok=True)
    command = "make bench" if not args.no_peer else "make bench BENCH_ARGS=--no-peer"
    with open(os.path.join(args.out, "performance_results.md"), "w") as f:
        f.write(f"# Latest benchmark run\n\nProduced by `{command}` (`bench/run.py --duration {args.duration} "
                f"--connections {args.connections}`) on {time.strftime('%Y-%m-%d')}, 2 cores shared with the "
                "load generator. Compare rows of this run only.\n\n" + "\n".join(lines) + "\n\n![plot](bench.png)\n")
    plot(results, connections, os.path.join(args.out, "bench.png"))
    console.print(f"wrote {args.out}/performance_results.md and {args.out}/bench.png")


def plot(results: dict[str, dict[int, dict[str, float]]], connections: list[int], path: str) -> None:
    """Throughput and P99 of every row at the highest concurrency, as sorted bars: tfprod blue,
    peers orange, the no-op ceiling grey (a line per row over 16 rows was unreadable)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    c = max(connections)
    rows = sorted(((n, by_c[c]) for n, by_c in results.items() if c in by_c), key=lambda r: r[1]["rps"])
    colors = ["#9e9e9e" if n.startswith("no-op") else "#1f77b4" if n.startswith("tfprod") else "#ff7f0e"
              for n, _ in rows]
    fig, (a, b) = plt.subplots(1, 2, figsize=(13, 0.38 * len(rows) + 1.5), sharey=True)
    names = [n for n, _ in rows]
    a.barh(names, [r["rps"] for _, r in rows], color=colors)
    a.set(xlabel="requests/s", title=f"Throughput at {c} connections", xscale="log")
    for i, (_, r) in enumerate(rows):
        a.text(r["rps"], i, f" {r['rps']:.0f}", va="center", fontsize=7)
    b.barh(names, [r["p99"] for _, r in rows], color=colors)
    b.set(xlabel="P99 ms", title=f"P99 latency at {c} connections", xscale="log")
    for i, (_, r) in enumerate(rows):
        b.text(r["p99"], i, f" {r['p99']:.1f}", va="center", fontsize=7)
    a.tick_params(axis="y", labelsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "_noop":
        serve_noop(int(sys.argv[2]))
    else:
        sys.exit(main(sys.argv[1:]))
