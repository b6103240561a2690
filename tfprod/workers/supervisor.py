"""The supervisor of `tfprod serve --num_workers N`: starts N serving processes on the same ports,
restarts one that dies, and stops them all on SIGTERM or SIGINT.

It loads no model and imports no TensorFlow: each worker is `tfprod serve` with the same flags,
told its place in the pool through its environment (`pool.Slot`). A worker that fails before it
ever served, on the first start, stops the pool with its exit status (its error is in the log):
the flags or the models are wrong, and restarting would only repeat it. A worker that dies after
serving is restarted at once, then with a growing delay while it keeps dying young.
"""

from __future__ import annotations

import logging
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence

from tfprod.workers.pool import Slot, socket_path

log = logging.getLogger("tfprod.workers")

_POLL_S = 0.1
_YOUNG_S = 10.0  # a worker that dies younger than this is restarted after a growing delay
_MAX_DELAY_S = 30.0


class _Worker:
    def __init__(self, slot: Slot, argv: Sequence[str]) -> None:
        self.slot = slot
        self.argv = list(argv)
        self.process: subprocess.Popen[bytes] | None = None
        self.started_at = 0.0
        self.served = False  # its socket appeared: it accepts connections
        self.ever_served = False
        self.delay_s = 0.0
        self.restart_at: float | None = None

    def start(self) -> None:
        self.process = subprocess.Popen([sys.executable, "-m", "tfprod", "serve", *self.argv],
                                        env={**os.environ, **self.slot.env()})
        self.started_at, self.served, self.restart_at = time.monotonic(), False, None

    @property
    def socket(self) -> str:
        return socket_path(self.slot.directory, self.slot.index)

    def signal(self, sig: int) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(sig)


def check_ports_free(host: str, ports: Sequence[int]) -> str | None:
    """An error when another process already listens on one of the ports (workers bind them with
    SO_REUSEPORT, which would otherwise let them share a port with a stranger of the same user)."""
    for port in ports:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind((host, port))
            except OSError as e:
                return f"cannot listen on {host}:{port}: {e.strerror}"
    return None


def supervise(argv: Sequence[str], num_workers: int, grace_s: float = 45.0) -> int:
    """Run the pool until SIGTERM/SIGINT; `argv` are the serve flags less --num_workers."""
    directory = tempfile.mkdtemp(prefix="tfprod-workers-")  # mode 0700: only this user reaches the sockets
    key = secrets.token_bytes(32)
    workers = [_Worker(Slot(i, directory, key, os.getpid()), argv) for i in range(num_workers)]
    stop: list[int] = []  # a signal arrived (a plain list: a handler must not take a lock)
    previous = {sig: signal.signal(sig, lambda sig, _: stop.append(sig)) for sig in (signal.SIGTERM, signal.SIGINT)}
    log.info("starting %d workers", num_workers)
    status = 0
    try:
        for w in workers:
            w.start()
        status = _watch(workers, stop)
    finally:
        _stop_all(workers, grace_s)  # a second signal meanwhile changes nothing: the drain goes on
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        shutil.rmtree(directory, ignore_errors=True)
    return status


def _watch(workers: list[_Worker], stop: list[int]) -> int:
    announced = False
    while True:
        time.sleep(_POLL_S)
        if stop:  # before looking at exits: Ctrl-C reaches the workers too, they are not to be restarted
            return 0
        now = time.monotonic()
        for w in workers:
            assert w.process is not None
            if w.restart_at is not None:
                if now >= w.restart_at:
                    log.info("restarting worker %d", w.slot.index)
                    w.start()
                continue
            code = w.process.poll()
            if code is None and not w.served and os.path.exists(w.socket):
                w.served = w.ever_served = True
            if code is None:
                continue
            _remove(w.socket)  # the pool stops asking it at once
            if not w.ever_served and not announced:  # the pool's first start: the flags or models are wrong
                log.error("worker %d exited with status %d before it served (its error is above): stopping",
                          w.slot.index, code)
                return code or 1
            young = now - w.started_at < _YOUNG_S
            w.delay_s = min(_MAX_DELAY_S, max(1.0, w.delay_s * 2)) if young else 0.0
            log.warning("worker %d (pid %d) exited with status %d; restarting it%s", w.slot.index,
                        w.process.pid, code, f" in {w.delay_s:.0f} s" if w.delay_s else "")
            w.restart_at = now + w.delay_s
        if not announced and all(w.served for w in workers):
            announced = True
            log.info("all %d workers are serving", len(workers))


def _stop_all(workers: list[_Worker], grace_s: float) -> None:
    """SIGTERM to every worker (each drains: calls in flight finish), SIGKILL after `grace_s`."""
    for w in workers:
        w.signal(signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    for w in workers:
        if w.process is None:
            continue
        try:
            w.process.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            log.warning("worker %d did not stop in %.0f s: killing it", w.slot.index, grace_s)
            w.process.kill()
            w.process.wait()


def _remove(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
