"""Shared fixtures: real `tfprod serve` processes on loopback ports, real SavedModels."""

from __future__ import annotations

import os
import signal
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence

import httpx
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(__file__))

import saved_models  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ServerProcess:
    """A `tfprod serve` subprocess. Its output goes to a log file the tests can read."""

    def __init__(self, args: Sequence[str], log_path: str, tls: ssl.SSLContext | None = None) -> None:
        """`tls`: the client side of a server whose REST port speaks TLS (CA, client certificate)."""
        self.port = free_port()
        self.grpc_port = free_port()
        self.url = f"{'https' if tls else 'http'}://127.0.0.1:{self.port}"
        self.grpc_target = f"127.0.0.1:{self.grpc_port}"
        self.log_path = log_path
        self._log = open(log_path, "wb")
        cmd = [sys.executable, "-m", "tfprod", "serve", "--host=127.0.0.1", f"--rest_api_port={self.port}",
               f"--port={self.grpc_port}", *args]
        self.proc = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT)
        self.client = httpx.Client(base_url=self.url, timeout=30, verify=tls or True)

    def log(self) -> str:
        with open(self.log_path, errors="replace") as f:
            return f.read()

    def wait_ready(self, timeout: float = 90) -> None:
        self.wait_until(lambda: self.client.get("/readyz").status_code == 200, timeout, "ready")

    def wait_until(self, predicate, timeout: float = 30, what: str = "condition") -> None:  # type: ignore[no-untyped-def]
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"server exited with {self.proc.returncode}:\n{self.log()[-4000:]}")
            try:
                if predicate():
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        raise AssertionError(f"timed out waiting for {what}:\n{self.log()[-4000:]}")

    def stop(self) -> int:
        self.client.close()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        return self.proc.returncode


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    """Every test model, built once per session: half_plus_two (a=0.5,b=2 and a=2,b=1), multi_io,
    slow (busy-waits max(x) seconds), digits."""
    root = tmp_path_factory.mktemp("models")
    saved_models.half_plus_two(str(root / "half_plus_two" / "1"))
    saved_models.half_plus_two(str(root / "plus_one_x2"), a=2.0, b=1.0)
    saved_models.multi_io(str(root / "multi_io" / "1"))
    saved_models.slow(str(root / "slow" / "1"))
    saved_models.digits_classifier(str(root / "digits" / "1"))
    return str(root)


@pytest.fixture(scope="session")
def chromium() -> Iterator:  # type: ignore[type-arg]
    """Debian's headless Chromium under Playwright (its own browser download needs the internet)."""
    from playwright.sync_api import sync_playwright

    from tfprod.edge.parity import chromium_path

    path = chromium_path()  # $TFPROD_CHROMIUM, else chromium / chromium-browser / google-chrome on the PATH
    if path is None:
        pytest.fail("Chromium is not installed: `make test` installs it (apt-get install chromium)")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=path, args=["--no-sandbox"])
        yield browser
        browser.close()


TOOLS = os.path.join(os.path.dirname(__file__), "..", "build", "tools")  # downloaded once, kept across runs


def npm_package(spec: str, name: str) -> str:
    """The npm prefix (build/tools/npm) holding package `name`, installed from `spec` (e.g.
    "axe-core@4.14.1") on first use: tests use npm's packages, never copies of them."""
    import shutil

    assert shutil.which("npm"), "make test installs nodejs and npm"
    prefix = os.path.join(TOOLS, "npm")
    package = os.path.join(prefix, "node_modules", *name.split("/"))
    if not os.path.isdir(package):
        subprocess.run(["npm", "install", "--silent", "--no-audit", "--no-fund", "--prefix", prefix, spec],
                       check=True, timeout=600)
    return prefix


def artifact_path(name: str) -> str:
    """Where a test leaves what a person should look at (screenshots): $TFPROD_TEST_ARTIFACTS or
    build/test-artifacts."""
    root = os.environ.get("TFPROD_TEST_ARTIFACTS") or os.path.join(os.path.dirname(__file__), "..", "build",
                                                                   "test-artifacts")
    os.makedirs(root, exist_ok=True)
    return os.path.join(root, name)


@pytest.fixture(scope="session")
def start_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator:  # type: ignore[type-arg]
    """Factory: start_server([...flags]) -> a ServerProcess, stopped at the end of the session."""
    servers: list[ServerProcess] = []
    logs = tmp_path_factory.mktemp("logs")

    def start(args: Sequence[str], wait: bool = True, tls: ssl.SSLContext | None = None) -> ServerProcess:
        server = ServerProcess(args, str(logs / f"server-{len(servers)}.log"), tls)
        servers.append(server)
        if wait:
            server.wait_ready()
        return server

    yield start
    for server in servers:
        server.stop()
