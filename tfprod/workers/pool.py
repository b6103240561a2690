"""One worker's place in a pool of serving processes: it answers the other workers' questions and
asks them theirs, so that any worker can answer for the whole pool.

Every worker serves the same ports (SO_REUSEPORT: the kernel spreads connections over them) with
its own models, batcher and event loop. What must not depend on which worker a connection reached
goes through here: model status and readiness are merged over the workers, Prometheus metrics are
summed, and a config reload or a V2 repository load/unload is applied by every worker before it
is answered. The latest such change is kept in the pool's directory, so a worker the supervisor
restarts comes back with it rather than with the command line's config.

The channel is `multiprocessing.connection` (pickled messages, its HMAC key handshake) over one
unix socket per worker, in a directory only the pool's user can enter: stdlib, no port, no HTTP
routing to keep apart from the public API. Every step has a timeout, on both sides, so a worker
that hangs or dies mid-call costs the others one timeout, never a stuck thread. A worker's socket
exists only while it accepts connections on the ports, so a worker that is (re)starting is not
asked and does not hold the pool's answers back.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import fcntl
import glob
import logging
import os
import pickle
import signal
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from multiprocessing.connection import Connection, answer_challenge, deliver_challenge
from typing import Any

from tfprod.core.manager import VersionStatus
from tfprod.core.states import State

log = logging.getLogger("tfprod.workers")

ENV_INDEX, ENV_DIR, ENV_KEY, ENV_PARENT = ("TFPROD_WORKER_INDEX", "TFPROD_WORKER_DIR", "TFPROD_WORKER_KEY",
                                           "TFPROD_WORKER_SUPERVISOR")
_HANDSHAKE_S = 5.0  # the key handshake and the request, on either side
_SOCKET = "worker-{}.sock"
_STATE = "config.pickle"  # the pool's config after the latest API change: (models, unloaded names)


def socket_path(directory: str, index: int) -> str:
    return os.path.join(directory, _SOCKET.format(index))


@dataclasses.dataclass(frozen=True)
class Slot:
    """What the supervisor tells a worker through its environment."""

    index: int
    directory: str
    key: bytes
    supervisor: int  # its pid

    @classmethod
    def from_env(cls) -> Slot | None:
        if ENV_DIR not in os.environ:
            return None
        return cls(int(os.environ[ENV_INDEX]), os.environ[ENV_DIR], bytes.fromhex(os.environ[ENV_KEY]),
                   int(os.environ[ENV_PARENT]))

    def env(self) -> dict[str, str]:
        return {ENV_INDEX: str(self.index), ENV_DIR: self.directory, ENV_KEY: self.key.hex(),
                ENV_PARENT: str(self.supervisor)}


class PeerError(Exception):
    """A worker could not answer (it died or timed out); the others' answers still count."""


class Pool:
    """`handlers` answer the other workers: op name -> function of the op's arguments."""

    def __init__(self, slot: Slot, handlers: dict[str, Callable[..., Any]]) -> None:
        self.slot = slot
        self.handlers = handlers
        self._listener: socket.socket | None = None
        threading.Thread(target=self._watch_parent, name="tfprod-pool-parent", daemon=True).start()

    def open(self) -> None:
        """Join the pool: called once this worker accepts connections on the ports."""
        path = socket_path(self.slot.directory, self.slot.index)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)  # a predecessor's, if it died before the supervisor removed it
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(path)
        listener.listen(64)
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), name="tfprod-pool", daemon=True).start()

    def close(self) -> None:
        """Leave the pool (the socket file goes first, so no worker asks a stopping one)."""
        listener, self._listener = self._listener, None
        if listener is not None:
            with contextlib.suppress(OSError):  # the supervisor may have removed the file already
                os.unlink(socket_path(self.slot.directory, self.slot.index))
            listener.close()

    def ask(self, op: str, *args: Any, timeout_s: float = 5.0) -> list[Any]:
        """Every other serving worker's answer to `op`, asked all at once. An exception stands in
        for an answer: the handler's own, or a PeerError for a worker that could not answer."""
        paths = self._peer_sockets()
        if not paths:
            return []
        with concurrent.futures.ThreadPoolExecutor(len(paths), thread_name_prefix="tfprod-pool-ask") as ask:
            return list(ask.map(lambda path: _call(path, self.slot.key, op, args, timeout_s), paths))

    @contextlib.contextmanager
    def exclusive(self) -> Iterator[None]:
        """Held by the worker applying a pool-wide change, so two concurrent changes arrive at every
        worker in the same order (a worker answering a peer never takes it: no deadlock)."""
        with open(os.path.join(self.slot.directory, "change.lock"), "w") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)

    def save_config(self, state: Any) -> None:
        self._write(_STATE, state)

    def save_metrics(self, snapshot: Any) -> None:
        """This process's metrics as last reported: they keep counting for the pool after it dies,
        so a pool's counters never go down when a worker is replaced."""
        self._write(f"metrics-{os.getpid()}.pickle", snapshot)

    def saved_metrics(self, live: set[int]) -> list[Any]:
        """The last reported metrics of the processes not in `live` (dead, or not answering)."""
        names = (os.path.basename(p) for p in glob.glob(os.path.join(self.slot.directory, "metrics-*.pickle")))
        saved = (self._read(n) for n in names if int(n.split("-")[1].split(".")[0]) not in live)
        return [s for s in saved if s is not None]

    def _write(self, name: str, value: Any) -> None:
        path = os.path.join(self.slot.directory, name)
        part = f"{path}.{os.getpid()}.{threading.get_ident()}"  # several writers at once: each its own file
        with open(part, "wb") as f:
            pickle.dump(value, f)
        os.replace(part, path)

    def saved_config(self) -> Any | None:
        return self._read(_STATE)

    def _read(self, name: str) -> Any | None:
        try:
            with open(os.path.join(self.slot.directory, name), "rb") as f:
                return pickle.load(f)
        except (OSError, EOFError, pickle.UnpicklingError):  # not written yet (a file is replaced whole)
            return None

    def _peer_sockets(self) -> list[str]:
        mine = socket_path(self.slot.directory, self.slot.index)
        return sorted(p for p in glob.glob(os.path.join(self.slot.directory, _SOCKET.format("*"))) if p != mine)

    def _accept(self, listener: socket.socket) -> None:
        while self._listener is listener:
            try:
                sock, _ = listener.accept()
            except OSError:  # closed
                return
            threading.Thread(target=self._answer, args=(sock,), name="tfprod-pool-call", daemon=True).start()

    def _answer(self, sock: socket.socket) -> None:
        """One call: the key handshake (as multiprocessing's Listener does it, but here, on this
        call's thread, within a timeout), the request, the handler's answer or its exception."""
        _timeouts(sock, _HANDSHAKE_S)
        try:
            with Connection(sock.detach()) as conn:
                deliver_challenge(conn, self.slot.key)
                answer_challenge(conn, self.slot.key)
                op, args = conn.recv()
                try:
                    answer = self.handlers[op](*args)
                except Exception as e:  # the asking worker gets it in the answer's place
                    answer = e
                conn.send(answer)
        except Exception as e:  # a caller without the key, one that hung up or stalled: only this call ends
            log.debug("a pool call failed: %s", e)

    def gather(self, op: str, *args: Any) -> list[Any]:
        """The other workers' answers to a question; one that cannot answer is left out (it is
        stopping, or stuck: then it costs each question one timeout)."""
        out = []
        for answer in self.ask(op, *args):
            if isinstance(answer, BaseException):
                log.warning("a worker did not answer %s: %s", op, answer)
            else:
                out.append(answer)
        return out

    def _watch_parent(self) -> None:
        """A worker whose supervisor was killed (SIGKILL, OOM) stops as if told to, instead of
        loading and serving on unsupervised (watched from the start, loading included)."""
        while True:
            if os.getppid() != self.slot.supervisor:
                log.warning("the supervisor is gone: stopping")
                os.kill(os.getpid(), signal.SIGTERM)
                return
            time.sleep(1.0)


def _timeouts(sock: socket.socket, seconds: float) -> None:
    """Kernel-level send/receive timeouts: they hold for the raw reads multiprocessing's
    Connection does on the descriptor, which a Python socket timeout would not."""
    value = struct.pack("ll", int(seconds), int(seconds % 1 * 1e6))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, value)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, value)


def _call(path: str, key: bytes, op: str, args: tuple[Any, ...], timeout_s: float) -> Any:
    name = os.path.basename(path)
    try:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(_HANDSHAKE_S)
        try:
            sock.connect(path)
            sock.settimeout(None)
            _timeouts(sock, _HANDSHAKE_S)
        except BaseException:
            sock.close()
            raise
        with Connection(sock.detach()) as conn:
            answer_challenge(conn, key)
            deliver_challenge(conn, key)
            conn.send((op, args))
            if not conn.poll(timeout_s):
                return PeerError(f"{name} did not answer {op} in {timeout_s:.0f} s")
            return conn.recv()
    except Exception as e:  # it stopped, hung or answered garbage: it does not count, the others do
        return PeerError(f"{name}: {type(e).__name__}: {e}")


def merge_statuses(per_worker: Sequence[Sequence[VersionStatus]]) -> list[VersionStatus]:
    """One model's version statuses for the pool, newest first.

    A version is AVAILABLE only when every worker serves it; while some worker still loads it, it
    reads as that worker's state (START, LOADING); one that failed to load in some worker reads END
    with that error; while some worker serves it and another has let it go, it reads UNLOADING. A
    worker that does not know a version yet counts as START when the version is newer than every
    version it knows, and as END otherwise (a restarted worker never saw the versions that were
    unloaded before it started). Leave out the workers that do not serve the model and know
    nothing of it.
    """
    known = [{s.version: s for s in statuses} for statuses in per_worker]
    versions = sorted({v for k in known for v in k}, reverse=True)
    out = []
    for v in versions:
        states = []
        for k in known:
            if v in k:
                states.append(k[v])
            else:
                states.append(VersionStatus(v, State.START if not k or v > max(k) else State.END))
        values = {s.state for s in states}
        failed = next((s for s in states if s.state is State.END and s.error is not None), None)
        if failed is not None:
            out.append(failed)
            continue
        if len(values) == 1:
            state = states[0].state
        elif min(s.value for s in values) < State.AVAILABLE.value:
            state = min(values, key=lambda s: s.value)
        else:
            state = State.UNLOADING
        error = next((s.error for s in states if s.state is state and s.error is not None), None)
        out.append(VersionStatus(v, state, error))
    return out
