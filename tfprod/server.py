"""The composition root: builds every part from frozen options and runs the ports.

Nothing else wires parts together, registers collectors or installs signal handlers.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import logging
import signal
from collections.abc import Iterator

import uvicorn
from prometheus_client.registry import CollectorRegistry

from tfprod.api.rest import RestApi, RestOptions
from tfprod.config.model_config import ModelConfig
from tfprod.core.manager import Manager, ManagerOptions
from tfprod.core.source import FileSystemSource, SourceOptions
from tfprod.metrics import ServingMetrics
from tfprod.servables import saved_model
from tfprod.server_core import ServerCore
from tfprod.service import Service

log = logging.getLogger("tfprod.server")


@dataclasses.dataclass(frozen=True)
class ServerOptions:
    models: tuple[ModelConfig, ...]
    rest_api_port: int = 8501
    host: str = "0.0.0.0"
    model_config_file: str = ""
    model_config_file_poll_wait_seconds: int = 0
    file_system_poll_wait_seconds: int = 1
    max_num_load_retries: int = 5
    load_retry_interval_micros: int = 60_000_000
    saved_model_tags: frozenset[str] = frozenset({"serve"})
    allow_version_labels_for_unavailable_models: bool = False
    rest: RestOptions = RestOptions()


class _Uvicorn(uvicorn.Server):
    """uvicorn re-raises SIGTERM after its graceful stop, which would kill the process before
    models unload and exit with -15; here a signal only starts the graceful stop."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, self.handle_exit, sig, None)
        try:
            yield
        finally:
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(sig)


async def _serve(options: ServerOptions, app: RestApi) -> None:
    config = uvicorn.Config(app, host=options.host, port=options.rest_api_port, log_config=None,
                            access_log=False, lifespan="on", timeout_keep_alive=30)
    await _Uvicorn(config).serve()


def run(options: ServerOptions) -> None:
    registry = CollectorRegistry(auto_describe=True)
    metrics = ServingMetrics()
    registry.register(metrics)
    manager = Manager[saved_model.SavedModelServable](
        functools.partial(saved_model.load, tags=options.saved_model_tags),
        ManagerOptions(
            max_num_load_retries=options.max_num_load_retries,
            load_retry_interval_s=options.load_retry_interval_micros / 1e6,
            on_state_change=metrics.record_state,
        ),
    )
    source = FileSystemSource(manager.set_aspired_versions, saved_model.is_complete,
                              SourceOptions(poll_wait_s=options.file_system_poll_wait_seconds))
    core = ServerCore(manager, source, options.allow_version_labels_for_unavailable_models)
    app = RestApi(Service(manager), core, metrics, registry, options.rest)

    manager.start()
    core.apply(options.models)
    source.start()
    if options.model_config_file and options.model_config_file_poll_wait_seconds > 0:
        core.poll_config_file(options.model_config_file, options.model_config_file_poll_wait_seconds)
    try:
        # uvicorn owns SIGTERM/SIGINT: it stops accepting, lets requests in flight finish, returns.
        asyncio.run(_serve(options, app))
    finally:
        log.info("shutting down: unloading models")
        core.stop()
        source.stop()
        app.close()
        manager.stop()
        log.info("bye")
