"""Applies a model config to the source and manager, and answers readiness.

A config is applied whole: its models become the source's watches (a removed model gets an
empty aspired list and unloads), its labels go to the manager. With
--model_config_file_poll_wait_seconds the file is re-read; a file that fails to parse is
logged and the running config stays.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence

from tfprod.config.model_config import ConfigError, ModelConfig, read_model_config_file
from tfprod.core.manager import Manager
from tfprod.core.source import FileSystemSource, Watch
from tfprod.core.states import State
from tfprod.errors import Code, ServingError
from tfprod.servables.saved_model import SavedModelServable

log = logging.getLogger("tfprod.server")


class ServerCore:
    def __init__(
        self,
        manager: Manager[SavedModelServable],
        source: FileSystemSource,
        allow_labels_for_unavailable: bool,
    ) -> None:
        self._manager = manager
        self._source = source
        self._allow_unavailable = allow_labels_for_unavailable
        self._lock = threading.Lock()
        self._reload_lock = threading.Lock()
        self._models: tuple[ModelConfig, ...] = ()
        self._stop = threading.Event()
        self._poller: threading.Thread | None = None

    @property
    def models(self) -> tuple[ModelConfig, ...]:
        return self._models

    def apply(self, models: Sequence[ModelConfig]) -> None:
        with self._lock:
            removed = {m.name for m in self._models} - {m.name for m in models}
            self._models = tuple(models)
            self._source.set_watches([Watch(m.name, m.base_path, m.policy) for m in models])
            for m in models:
                self._manager.set_labels(m.name, m.labels, self._allow_unavailable)
            for name in removed:
                self._manager.forget_model(name)
        log.info("model config applied: %s", ", ".join(m.name for m in models) or "(no models)")

    def reload(self, models: Sequence[ModelConfig], timeout_s: float) -> None:
        """Apply a config pushed over gRPC, as TF Serving's HandleReloadConfigRequest does: answer once
        every newly added model has a version AVAILABLE, or fail with the ones that could not load."""
        with self._reload_lock:
            before = {m.name for m in self._models}
            self.apply(models)
            new = [m.name for m in models if m.name not in before]
            outcome: dict[str, ServingError | None] = {}

            def settled() -> bool:
                for name in new:
                    statuses = self._manager.status(name)
                    if any(s.state is State.AVAILABLE for s in statuses):
                        outcome[name] = None
                    elif statuses and all(s.state is State.END and s.error for s in statuses):
                        outcome[name] = statuses[0].error
                return len(outcome) == len(new)

            if not self._manager.wait_for(settled, timeout_s):
                waiting = [n for n in new if n not in outcome]
                raise ServingError(Code.DEADLINE_EXCEEDED, f"{len(waiting)} model(s) did not become available in "
                                   f"{timeout_s:.0f} s: {', '.join(waiting)}")
            failed = {n: e for n, e in outcome.items() if e is not None}
            if failed:
                detail = "".join(f"{{{{{n}}} due to error: {e.message}}}, " for n, e in failed.items())
                raise ServingError(Code.UNKNOWN, f"{len(failed)} model(s) did not become available: {{{detail}}}")

    def not_ready(self) -> list[str]:
        """Configured models with no AVAILABLE version yet."""
        return [m.name for m in self._models if not self._manager.available_versions(m.name)]

    def poll_config_file(self, path: str, every_s: float) -> None:
        def run() -> None:
            last = self._models
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
