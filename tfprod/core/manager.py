"""The aspired-versions manager: owns every loaded version and hands out scoped handles.

Sources call `set_aspired_versions(model, [...])` with the *complete* list of versions they want
for one model; a version left out is unloaded. One manager thread asks the pure policy
(`core.policy.next_action`) what to do per model, and load/unload work runs on a small pool so a
slow load of one model never blocks another. A request pins its version with
`with manager.handle(...) as servable:`; an UNLOADING version is only unloaded once its last
handle is released, so requests in flight finish on the version they started on.

Framework-free: loading is whatever `load(ServableId, path)` does (see `tfprod.servables`).
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import logging
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Generic, Protocol, TypeVar

from tfprod.core.logs import about
from tfprod.core.policy import Kind, Snapshot, next_action
from tfprod.core.states import State, check_transition
from tfprod.errors import Code, ServingError

log = logging.getLogger("tfprod.manager")

# A loader's verdict on the files themselves (a policy or security refusal): retrying the same
# files cannot change it, so the version goes to END at once instead of after every retry.
_FINAL = (Code.PERMISSION_DENIED, Code.FAILED_PRECONDITION)


class Servable(Protocol):
    def unload(self) -> None: ...


S = TypeVar("S", bound=Servable)


@dataclasses.dataclass(frozen=True)
class ServableId:
    name: str
    version: int


@dataclasses.dataclass(frozen=True)
class AspiredVersion:
    version: int
    path: str


@dataclasses.dataclass(frozen=True)
class VersionStatus:
    version: int
    state: State
    error: ServingError | None = None


@dataclasses.dataclass(frozen=True)
class ManagerOptions:
    max_num_load_retries: int = 5
    load_retry_interval_s: float = 60.0
    num_load_threads: int = 4
    # Hook for observers (metrics, logs): called with (id, new state, error) on every change.
    on_state_change: Callable[[ServableId, State, ServingError | None], None] | None = None


class _Harness(Generic[S]):
    """One version's life. Only the manager touches it, always under the manager's lock."""

    def __init__(self, sid: ServableId, path: str) -> None:
        self.id = sid
        self.path = path
        self.state = State.START
        self.aspired = True
        self.servable: S | None = None
        self.error: ServingError | None = None
        self.refs = 0


class Manager(Generic[S]):
    def __init__(self, load: Callable[[ServableId, str], S], options: ManagerOptions) -> None:
        self._load = load
        self._options = options
        self._cond = threading.Condition()
        self._harnesses: dict[str, dict[int, _Harness[S]]] = {}
        # Last known state of every version ever managed, kept after END for status queries.
        self._monitor: dict[str, dict[int, VersionStatus]] = {}
        self._labels: dict[str, dict[str, int]] = {}
        self._pending_labels: dict[str, dict[str, int]] = {}
        self._stopping = False
        self._thread: threading.Thread | None = None
        self._pool = concurrent.futures.ThreadPoolExecutor(
            max_workers=max(options.num_load_threads, 1), thread_name_prefix="tfprod-load"
        )

    # -- lifecycle of the manager itself -------------------------------------------------

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="tfprod-manager", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Unload everything (waiting for handles to be released), then stop the threads."""
        with self._cond:
            for model in list(self._harnesses):
                self._set_aspired_locked(model, [])
            self._cond.notify_all()
            self._cond.wait_for(self._all_ended_locked, timeout=30)
            self._stopping = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._pool.shutdown(wait=False, cancel_futures=True)

    def _all_ended_locked(self) -> bool:
        return not any(self._harnesses.values())

    # -- what sources and config call ----------------------------------------------------

    def set_aspired_versions(self, model: str, versions: Sequence[AspiredVersion]) -> None:
        with self._cond:
            self._set_aspired_locked(model, versions)
            self._cond.notify_all()

    def _set_aspired_locked(self, model: str, versions: Sequence[AspiredVersion]) -> None:
        harnesses = self._harnesses.setdefault(model, {})
        wanted = {v.version: v.path for v in versions}
        for version, harness in harnesses.items():
            harness.aspired = version in wanted
            if not harness.aspired and harness.state is State.START:
                self._transition_locked(harness, State.END)  # never loaded: nothing to undo
            # A failed version stays (in END) while aspired, so it is not retried on every
            # poll; once the source drops it, it is forgotten and may be tried again later.
        for version, path in wanted.items():
            if version not in harnesses:
                harness = _Harness[S](ServableId(model, version), path)
                harnesses[version] = harness
                self._record_locked(harness)

    def set_labels(self, model: str, labels: Mapping[str, int], allow_unavailable: bool) -> None:
        """Assign version labels. A label may only point at an AVAILABLE version, unless
        `allow_unavailable` and the label is new; otherwise it waits (pending) until its
        version becomes AVAILABLE, while the label's previous assignment keeps serving."""
        with self._cond:
            current = self._labels.setdefault(model, {})
            for label in list(current):
                if label not in labels:
                    del current[label]
            pending: dict[str, int] = {}
            for label, version in labels.items():
                available = self._state_locked(model, version) is State.AVAILABLE
                if available or (allow_unavailable and label not in current):
                    current[label] = version
                elif current.get(label) != version:
                    pending[label] = version
                    log.warning(
                        "label %r of model %r waits for version %d to become available",
                        label, model, version,
                    )
            self._pending_labels[model] = pending

    def forget_model(self, model: str) -> None:
        """Drop the labels of a model removed from the config; its version history stays
        visible (END), as in TF Serving's state monitor."""
        with self._cond:
            self._labels.pop(model, None)
            self._pending_labels.pop(model, None)

    # -- what requests call -------------------------------------------------------------

    @contextmanager
    def handle(self, model: str, version: int | None = None, label: str | None = None) -> Iterator[tuple[int, S]]:
        """Pin one AVAILABLE version for the duration of the `with` block; hold it briefly."""
        with self._cond:
            harness = self._resolve_locked(model, version, label)
            harness.refs += 1
        try:
            assert harness.servable is not None
            yield harness.id.version, harness.servable
        finally:
            with self._cond:
                harness.refs -= 1
                if harness.refs == 0 and harness.state is State.UNLOADING:
                    self._cond.notify_all()

    def _resolve_locked(self, model: str, version: int | None, label: str | None) -> _Harness[S]:
        harnesses = self._harnesses.get(model, {})
        if label is not None:
            labelled = self._labels.get(model, {}).get(label)
            if labelled is None:
                raise ServingError(Code.INVALID_ARGUMENT, f"Unrecognized servable version label: {label}")
            version = labelled
        if version is None:
            available = [v for v, h in harnesses.items() if h.state is State.AVAILABLE]
            if not available:
                raise ServingError(Code.NOT_FOUND, f"Servable not found for request: Latest({model})")
            return harnesses[max(available)]
        harness = harnesses.get(version)
        if harness is None or harness.state is not State.AVAILABLE:
            raise ServingError(Code.NOT_FOUND, f"Servable not found for request: Specific({model}, {version})")
        return harness

    # -- what status endpoints call -----------------------------------------------------

    def models(self) -> list[str]:
        with self._cond:
            return sorted(self._monitor)

    def status(self, model: str) -> list[VersionStatus]:
        """Every version of `model` the manager has known, newest first."""
        with self._cond:
            return sorted(self._monitor.get(model, {}).values(), key=lambda s: -s.version)

    def labels(self, model: str) -> dict[str, int]:
        with self._cond:
            return dict(self._labels.get(model, {}))

    def available_versions(self, model: str) -> list[int]:
        with self._cond:
            return sorted(v for v, h in self._harnesses.get(model, {}).items() if h.state is State.AVAILABLE)

    def wait_for(self, predicate: Callable[[], bool], timeout: float) -> bool:
        """Block until `predicate()` (evaluated under the manager's lock) holds."""
        with self._cond:
            return self._cond.wait_for(predicate, timeout=timeout)

    def _state_locked(self, model: str, version: int) -> State | None:
        harness = self._harnesses.get(model, {}).get(version)
        return None if harness is None else harness.state

    # -- the manager thread ----------------------------------------------------------------

    def _run(self) -> None:
        while True:
            with self._cond:
                if self._stopping:
                    return
                acted = self._step_locked()
                if not acted:
                    self._cond.wait(timeout=1.0)

    def _step_locked(self) -> bool:
        acted = False
        for harnesses in self._harnesses.values():
            for version, h in list(harnesses.items()):
                if h.state is not State.END or (h.aspired and h.error is not None):
                    continue  # a failed version still offered is not retried on every poll
                if h.aspired:  # unloaded, and wanted again: start afresh
                    harnesses[version] = _Harness[S](h.id, h.path)
                    self._record_locked(harnesses[version])
                else:
                    del harnesses[version]  # history stays in the monitor
                self._cond.notify_all()  # stop() waits for this
            snapshots = [Snapshot(v, h.state, h.aspired) for v, h in harnesses.items()]
            action = next_action(snapshots)
            if action is None:
                continue
            harness = harnesses[action.version]
            if action.kind is Kind.LOAD:
                self._transition_locked(harness, State.LOADING)
                self._pool.submit(self._do_load, harness)
            else:
                self._transition_locked(harness, State.UNLOADING)
                self._pool.submit(self._do_unload, harness)
            acted = True
        return acted

    def _transition_locked(self, harness: _Harness[S], new: State, error: ServingError | None = None) -> None:
        harness.state = check_transition(harness.state, new)
        harness.error = error
        self._record_locked(harness)
        if new is State.AVAILABLE:
            self._apply_pending_labels_locked(harness.id)
        self._cond.notify_all()

    def _record_locked(self, harness: _Harness[S]) -> None:
        self._monitor.setdefault(harness.id.name, {})[harness.id.version] = VersionStatus(
            harness.id.version, harness.state, harness.error
        )
        if self._options.on_state_change is not None:
            self._options.on_state_change(harness.id, harness.state, harness.error)

    def _apply_pending_labels_locked(self, sid: ServableId) -> None:
        pending = self._pending_labels.get(sid.name, {})
        for label, version in list(pending.items()):
            if version == sid.version:
                self._labels.setdefault(sid.name, {})[label] = version
                del pending[label]
                log.info("label %r of model %r now points at version %d", label, sid.name, version,
                         extra=about(sid.name, version))

    def _do_load(self, harness: _Harness[S]) -> None:
        attempts = self._options.max_num_load_retries + 1
        error: ServingError | None = None
        for attempt in range(attempts):
            if attempt:
                with self._cond:
                    # Stop retrying once the version is no longer wanted (TF Serving does too).
                    self._cond.wait_for(lambda: self._stopping or not harness.aspired,
                                        timeout=self._options.load_retry_interval_s)
                    if self._stopping or not harness.aspired:
                        break
            started = time.monotonic()
            try:
                servable = self._load(harness.id, harness.path)
            except ServingError as e:
                error = _detached(e)
                if e.code in _FINAL:
                    log.error("loading %s version %d refused: %s", harness.id.name, harness.id.version, e.message,
                              extra=about(harness.id.name, harness.id.version))
                    break
            except Exception as e:  # a loader may fail in any way; the server must not
                error = ServingError(Code.UNKNOWN, f"{type(e).__name__}: {e}")
            else:
                log.info("loaded %s version %d in %.2fs", harness.id.name, harness.id.version,
                         time.monotonic() - started, extra=about(harness.id.name, harness.id.version))
                with self._cond:
                    harness.servable = servable
                    self._transition_locked(harness, State.AVAILABLE)
                return
            log.error("loading %s version %d failed (attempt %d of %d): %s", harness.id.name,
                      harness.id.version, attempt + 1, attempts, error.message,
                      extra=about(harness.id.name, harness.id.version))
        with self._cond:
            self._transition_locked(harness, State.END, error)

    def _do_unload(self, harness: _Harness[S]) -> None:
        with self._cond:
            self._cond.wait_for(lambda: harness.refs == 0)
            servable, harness.servable = harness.servable, None
        try:
            if servable is not None:
                servable.unload()
        except Exception:
            log.exception("unloading %s version %d failed", harness.id.name, harness.id.version,
                          extra=about(harness.id.name, harness.id.version))
        with self._cond:
            self._transition_locked(harness, State.END)
        log.info("unloaded %s version %d", harness.id.name, harness.id.version,
                 extra=about(harness.id.name, harness.id.version))


def _detached(e: ServingError) -> ServingError:
    """The error without its traceback and chained errors: kept as an END version's status for as
    long as the server runs, they would keep the failed load's frames, and with them its half-loaded
    model (a Session, its graph and variables), alive."""
    e.__traceback__ = e.__context__ = e.__cause__ = None
    return e
