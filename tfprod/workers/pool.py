"""One worker's place in a pool of serving processes: it answers the other workers' questions and
asks them theirs, so that any worker can answer for the whole pool.

Every worker serves the same ports (SO_REUSEPORT: the kernel spreads connections over them) with
its own models, batcher and event loop. What must not depend on which worker a connection reached
goes through here: model status and readiness are merged over the workers, Prometheus metrics are
summed, and a config reload or a V2 repository load/unload is applied by every worker before it
is answered. The latest such change is kept in the pool's directory, so a worker the supervisor
restarts comes back with it rather than with the command line's config.

The channel is `multiprocessing.connection` over one unix socket per worker, in a directory only
the pool's user can enter, with an HMAC key handshake: stdlib, no port, no HTTP routing to keep
apart from the public API. A worker's socket exists only while it accepts connections on the
ports, so a worker that is (re)starting is not asked and does not hold the pool's answers back.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import glob
import logging
import os
import pickle
import threading
from collections.abc import Callable, Iterator, Sequence
from multiprocessing.connection import Client, Connection, Listener
from typing import Any

from tfprod.core.manager import VersionStatus
from tfprod.core.states import State

log = logging.getLogger("tfprod.workers")

ENV_INDEX, ENV_DIR, ENV_KEY = "TFPROD_WORKER_INDEX", "TFPROD_WORKER_DIR", "TFPROD_WORKER_KEY"
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

    @classmethod
    def from_env(cls) -> Slot | None:
        if ENV_DIR not in os.environ:
            return None
        return cls(int(os.environ[ENV_INDEX]), os.environ[ENV_DIR], bytes.fromhex(os.environ[ENV_KEY]))

    def env(self) -> dict[str, str]:
        return {ENV_INDEX: str(self.index), ENV_DIR: self.directory, ENV_KEY: self.key.hex()}


class PeerError(Exception):
    """A worker could not answer (it died or timed out); the others' answers still count."""


class Pool:
    """`handlers` answer the other workers: op name -> function of the op's arguments."""

    def __init__(self, slot: Slot, handlers: dict[str, Callable[..., Any]]) -> None:
        self.slot = slot
        self._handlers = handlers
        self._listener: Listener | None = None
        self._parent = os.getppid()

    def open(self) -> None:
        """Join the pool: called once this worker accepts connections on the ports."""
        path = socket_path(self.slot.directory, self.slot.index)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)  # a predecessor's, if it died before the supervisor removed it
        self._listener = Listener(path, "AF_UNIX", authkey=self.slot.key)
        threading.Thread(target=self._accept, name="tfprod-pool", daemon=True).start()
        threading.Thread(target=self._watch_parent, name="tfprod-pool-parent", daemon=True).start()

    def close(self) -> None:
        """Leave the pool (the socket goes first, so no worker asks a stopping one)."""
        listener, self._listener = self._listener, None
        if listener is not None:
            with contextlib.suppress(OSError):  # the supervisor may have removed the file already
                listener.close()  # closes the socket, then unlinks its file

    def ask(self, op: str, *args: Any, timeout_s: float = 5.0) -> list[Any]:
        """Every other serving worker's answer to `op`, asked all at once. An exception stands in
        for an answer: the handler's own, or a PeerError for a worker that could not answer."""
        paths = self._peer_sockets()
        if len(paths) <= 1:
            return [_call(p, self.slot.key, op, args, timeout_s) for p in paths]
        answers: list[Any] = [None] * len(paths)

        def one(i: int) -> None:
            answers[i] = _call(paths[i], self.slot.key, op, args, timeout_s)

        threads = [threading.Thread(target=one, args=(i,), daemon=True) for i in range(len(paths))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        return answers

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
        path = os.path.join(self.slot.directory, _STATE)
        part = f"{path}.{os.getpid()}"  # workers may write at once (the same config, at start)
        with open(part, "wb") as f:
            pickle.dump(state, f)
        os.replace(part, path)

    def saved_config(self) -> Any | None:
        try:
            with open(os.path.join(self.slot.directory, _STATE), "rb") as f:
                return pickle.load(f)
        except FileNotFoundError:
            return None

    def _peer_sockets(self) -> list[str]:
        mine = socket_path(self.slot.directory, self.slot.index)
        return sorted(p for p in glob.glob(os.path.join(self.slot.directory, _SOCKET.format("*"))) if p != mine)

    def _accept(self) -> None:
        while (listener := self._listener) is not None:
            try:
                conn = listener.accept()
            except OSError:  # closed, or a caller without the key
                if self._listener is None:
                    return
                continue
            threading.Thread(target=self._answer, args=(conn,), name="tfprod-pool-call", daemon=True).start()

    def _answer(self, conn: Connection) -> None:
        with conn:
            try:
                op, args = conn.recv()
                conn.send((True, self._handlers[op](*args)))
            except BaseException as e:  # noqa: BLE001 - the asking worker re-raises it
                with contextlib.suppress(OSError):
                    conn.send((False, e))

    def gather(self, op: str, *args: Any) -> list[Any]:
        """The other workers' answers to a question; one that cannot answer is left out (it is
        stopping or stuck, and the supervisor deals with it)."""
        out = []
        for answer in self.ask(op, *args):
            if isinstance(answer, BaseException):
                log.warning("a worker did not answer %s: %s", op, answer)
            else:
                out.append(answer)
        return out

    def _watch_parent(self) -> None:
        """A worker whose supervisor was killed (SIGKILL, OOM) stops as if told to, instead of
        serving on unsupervised."""
        stop = threading.Event()
        while not stop.wait(1.0):
            if os.getppid() != self._parent:
                log.warning("the supervisor is gone: stopping")
                os.kill(os.getpid(), 15)
                return


def _call(path: str, key: bytes, op: str, args: tuple[Any, ...], timeout_s: float) -> Any:
    try:
        with Client(path, "AF_UNIX", authkey=key) as conn:
            conn.send((op, args))
            if not conn.poll(timeout_s):
                return PeerError(f"{os.path.basename(path)} did not answer {op} in {timeout_s:.0f} s")
            _, value = conn.recv()
    except (OSError, EOFError) as e:  # it stopped between the listing and the call
        return PeerError(f"{os.path.basename(path)}: {e}")
    return value


def merge_statuses(per_worker: Sequence[Sequence[VersionStatus]]) -> list[VersionStatus]:
    """One model's version statuses for the pool, newest first.

    A version is AVAILABLE only when every worker serves it; while some worker still loads it, it
    reads as that worker's state (START, LOADING); while some worker serves it and another has let
    it go, it reads UNLOADING. A worker that does not know a version yet counts as START when the
    version is newer than every version it knows, and as END otherwise (a restarted worker never
    saw the versions that were unloaded before it started).
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
        if len(values) == 1:
            state = states[0].state
        elif min(s.value for s in values) < State.AVAILABLE.value:
            state = min(values, key=lambda s: s.value)
        else:
            state = State.UNLOADING
        error = next((s.error for s in states if s.state is state and s.error is not None), None)
        out.append(VersionStatus(v, state, error))
    return out
