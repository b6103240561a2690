"""Applies a model config to the source and manager, and answers readiness.

A config is applied whole: its models become the source's watches (a removed model gets an
empty aspired list and unloads), its labels go to the manager. The V2 repository API can unload
a configured model and load it again; an unloaded model stays unloaded across config polls
until it is loaded again or leaves the config. With
--model_config_file_poll_wait_seconds the file is re-read; a file that fails to parse is
logged and the running config stays.

In a pool of workers (`tfprod.workers`) status and readiness are the pool's, and a reload, load
or unload asked of one worker is applied by all before it is answered.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from tfprod.config.model_config import ConfigError, ModelConfig, read_model_config_file
from tfprod.core.manager import Manager, VersionStatus
from tfprod.core.source import FileSystemSource, Watch
from tfprod.core.states import State
from tfprod.errors import Code, ServingError
from tfprod.servables.base import Servable
from tfprod.workers.pool import Pool, merge_statuses

log = logging.getLogger("tfprod.server")


class ServerCore:
    def __init__(
        self,
        manager: Manager[Servable],
        source: FileSystemSource,
        allow_labels_for_unavailable: bool,
        strict_readiness: bool = True,
    ) -> None:
        self._manager = manager
        self._strict = strict_readiness  # --strict_readiness
        self._source = source
        self._allow_unavailable = allow_labels_for_unavailable
        self._lock = threading.RLock()
        self._config: tuple[ModelConfig, ...] = ()
        self._unloaded: set[str] = set()  # configured models unloaded through the repository API
        self._models: tuple[ModelConfig, ...] = ()  # what is served: the config less the unloaded
        self._label_overrides: dict[str, dict[str, int]] = {}  # a promoted rollout's labels, over the config's
        self._stop = threading.Event()
        self._poller: threading.Thread | None = None
        self._pool: Pool | None = None

    @property
    def models(self) -> tuple[ModelConfig, ...]:
        return self._models

    def apply(self, models: Sequence[ModelConfig]) -> None:
        with self._lock:
            self._config = tuple(models)
            self._unloaded &= {m.name for m in models}
            self._serve_locked()
        log.info("model config applied: %s", ", ".join(m.name for m in models) or "(no models)")

    def _serve_locked(self) -> None:
        served = tuple(m for m in self._config if m.name not in self._unloaded)
        removed = {m.name for m in self._models} - {m.name for m in served}
        self._models = served
        self._source.set_watches([Watch(m.name, m.base_path, m.policy) for m in served])
        for m in served:
            self._manager.set_labels(m.name, self._labels_of(m), self._allow_unavailable)
        for name in removed:
            self._manager.forget_model(name)
        if self._pool is not None:  # what a worker restarted later comes back with
            self._pool.save_config((self._config, frozenset(self._unloaded)))

    def override_labels(self, model: str, labels: Mapping[str, int]) -> None:
        """Labels a promoted rollout moved (`tfprod.rollout`): they win over the model config's until
        the rollout leaves the rollout config. Empty: the config's labels again."""
        with self._lock:
            if labels:
                self._label_overrides[model] = dict(labels)
            else:
                self._label_overrides.pop(model, None)
            for m in self._models:
                if m.name == model:
                    self._manager.set_labels(m.name, self._labels_of(m), self._allow_unavailable)

    def _labels_of(self, m: ModelConfig) -> dict[str, int]:
        return {**m.labels, **self._label_overrides.get(m.name, {})}

    # -- a pool of workers ----------------------------------------------------------------

    def start_in_pool(self, pool: Pool, initial: Sequence[ModelConfig]) -> None:
        """Serve the pool's latest config (a restarted worker's peers may have moved on from the
        command line's), and answer the pool's changes from now on."""
        with self._lock:
            self._pool = pool
            if not self._restore():
                self.apply(initial)

    def join_pool(self) -> None:
        """Called once this worker accepts connections: catch up with a change the pool made while
        it was loading (it was not asked yet), then take questions. Under the pool's change lock,
        so no change slips in between."""
        assert self._pool is not None
        with self._pool.exclusive():
            with self._lock:
                before = {m.name for m in self._models}
                if self._restore():
                    log.info("caught up with the pool's model config")
                added = [m.name for m in self._models if m.name not in before]
            with contextlib.suppress(ServingError):  # its status tells, as after a reload
                self._wait_available(added, 300.0)
            self._pool.open()

    def _restore(self) -> bool:
        """Apply the pool's saved config if it differs from this worker's; whether it did."""
        assert self._pool is not None
        saved = self._pool.saved_config()
        if saved is None or (saved[0], frozenset(saved[1])) == (self._config, frozenset(self._unloaded)):
            return False
        self._unloaded = set(saved[1])
        self.apply(saved[0])
        return True

    def pool_handlers(self) -> dict[str, Callable[..., Any]]:
        """What the other workers may ask of this one."""
        return {"statuses": self._statuses_here, "not_ready": self._not_ready_here,
                "reload": self._reload_here, "load": self._load_here, "unload": self._unload_here}

    def _statuses_here(self, names: Sequence[str]) -> dict[str, tuple[list[VersionStatus], bool]]:
        served = {m.name for m in self._models}
        return {n: (self._manager.status(n), n in served) for n in names}

    def statuses_of(self, names: Sequence[str]) -> dict[str, list[VersionStatus]]:
        """Models' version statuses, newest first: this process's, or the pool's (asked once)."""
        here = self._statuses_here(names)
        if self._pool is None:
            return {n: statuses for n, (statuses, _) in here.items()}
        everyone = [here, *self._pool.gather("statuses", list(names))]
        return {n: merge_statuses([w[n][0] for w in everyone if n in w and (w[n][0] or w[n][1])]) for n in names}

    def _everywhere(self, op: str, here: Callable[..., None], *args: Any, timeout_s: float) -> None:
        if self._pool is None:
            here(*args)
            return
        errors: list[BaseException] = []

        def apply_here() -> None:
            try:
                here(*args)
            except Exception as e:  # reported below, as a peer's would be
                errors.append(e)

        with self._pool.exclusive():  # this worker and the others at once: one load time, not two
            local = threading.Thread(target=apply_here, name="tfprod-change")
            local.start()
            theirs = self._pool.ask(op, *args, timeout_s=timeout_s + 10)
            local.join()
        errors += [a for a in theirs if isinstance(a, BaseException)]
        if errors:
            raise errors[0] if isinstance(errors[0], ServingError) else ServingError(
                Code.UNAVAILABLE, f"a worker did not apply the change: {errors[0]!r}")

    def reload(self, models: Sequence[ModelConfig], timeout_s: float) -> None:
        """Apply a config pushed over gRPC, as TF Serving's HandleReloadConfigRequest does: answer once
        every newly added model has a version AVAILABLE, or fail with the ones that could not load."""
        self._everywhere("reload", self._reload_here, tuple(models), timeout_s, timeout_s=timeout_s)

    def _reload_here(self, models: Sequence[ModelConfig], timeout_s: float) -> None:
        with self._lock:
            before = {m.name for m in self._models}
            self.apply(models)
            self._wait_available([m.name for m in self._models if m.name not in before], timeout_s)

    # -- the V2 repository extension: explicit load and unload of configured models ------

    def index(self) -> list[tuple[str, str, str]]:
        """(model, state, reason) for every configured model; state as Triton's index reports it."""
        out = []
        every = self.statuses_of([m.name for m in self._config])
        for m in self._config:
            statuses = every[m.name]
            if m.name in self._unloaded:
                state, reason = "UNAVAILABLE", "unloaded"
            elif any(s.state is State.AVAILABLE for s in statuses):
                state, reason = "READY", ""
            elif any(s.state in (State.START, State.LOADING) for s in statuses) or not statuses:
                state, reason = "LOADING", ""
            else:
                failed = next((s.error for s in statuses if s.error), None)
                state, reason = "UNAVAILABLE", failed.message if failed else ""
            out.append((m.name, state, reason))
        return out

    def load(self, name: str, timeout_s: float) -> None:
        self._everywhere("load", self._load_here, name, timeout_s, timeout_s=timeout_s)

    def unload(self, name: str, timeout_s: float = 30.0) -> None:
        """Stop serving a configured model; answer once no version of it takes new requests."""
        self._everywhere("unload", self._unload_here, name, timeout_s, timeout_s=timeout_s)

    def _load_here(self, name: str, timeout_s: float) -> None:
        with self._lock:
            self._configured(name)
            self._unloaded.discard(name)
            self._serve_locked()
            self._wait_available([name], timeout_s)

    def _unload_here(self, name: str, timeout_s: float) -> None:
        with self._lock:
            self._configured(name)
            self._unloaded.add(name)
            self._serve_locked()
        self._manager.wait_for(lambda: not self._manager.available_versions(name), timeout_s)
        log.info("model %s unloaded on request", name)

    def _configured(self, name: str) -> None:
        if all(m.name != name for m in self._config):
            raise ServingError(Code.NOT_FOUND, f"model '{name}' is not in the model config; add it with "
                               "--model_config_file or HandleReloadConfigRequest first")

    def _wait_available(self, names: list[str], timeout_s: float) -> None:
        outcome: dict[str, ServingError | None] = {}

        def settled() -> bool:
            for name in names:
                statuses = self._manager.status(name)
                if any(s.state is State.AVAILABLE for s in statuses):
                    outcome[name] = None
                elif statuses and all(s.state is State.END and s.error for s in statuses):
                    outcome[name] = statuses[0].error
            return len(outcome) == len(names)

        if not self._manager.wait_for(settled, timeout_s):
            waiting = [n for n in names if n not in outcome]
            raise ServingError(Code.DEADLINE_EXCEEDED, f"{len(waiting)} model(s) did not become available in "
                               f"{timeout_s:.0f} s: {', '.join(waiting)}")
        failed = {n: e for n, e in outcome.items() if e is not None}
        if failed:
            detail = "".join(f"{{{{{n}}} due to error: {e.message}}}, " for n, e in failed.items())
            raise ServingError(Code.UNKNOWN, f"{len(failed)} model(s) did not become available: {{{detail}}}")

    def initial_load_settled(self) -> bool:
        """Every served model has an AVAILABLE version, or all its versions ended (in error), or the
        source found none to offer: the moment TF Serving opens its ports (it blocks on a model with
        no versions and exits on a failed one; tfprod opens them and reports both in /readyz)."""
        for m in self._models:
            statuses = self._manager.status(m.name)
            if any(s.state is State.AVAILABLE for s in statuses):
                continue
            if statuses and all(s.state is State.END for s in statuses):
                continue
            if not statuses and self._source.nothing_to_offer(m.name):
                continue
            return False
        return True

    def not_ready(self) -> list[str]:
        """Configured models with no AVAILABLE version yet (in some worker of a pool); none when
        readiness is not strict (the ports open only once the startup config was loaded, so a
        server that answers is ready)."""
        if not self._strict:
            return []
        waiting = self._not_ready_here()
        if self._pool is not None:
            for theirs in self._pool.gather("not_ready"):
                waiting += [name for name in theirs if name not in waiting]
        return waiting

    def _not_ready_here(self) -> list[str]:
        return [m.name for m in self._models if not self._manager.available_versions(m.name)]

    def poll_config_file(self, path: str, every_s: float, read_at_start: Sequence[ModelConfig]) -> None:
        """Re-read the file every `every_s` and apply it when it changed since the last read (the
        first read being the command line's, `read_at_start`)."""
        def run() -> None:
            last = tuple(read_at_start)
            while not self._stop.wait(every_s):
                try:
                    models = read_model_config_file(path)
                except ConfigError as e:
                    log.error("keeping the running model config: %s", e)
                    continue
                if tuple(models) != last:
                    self.apply(models)
                    last = tuple(models)

        self._poller = threading.Thread(target=run, name="tfprod-config", daemon=True)
        self._poller.start()

    def stop(self) -> None:
        self._stop.set()
