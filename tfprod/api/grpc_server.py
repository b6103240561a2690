"""The gRPC port: a grpc.aio server carrying TF Serving's services, the V2 inference service and
grpc.health.v1, with TF Serving's socket, TLS, thread and channel-argument flags.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Callable, Sequence
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from tfprod.config.model_config import SslOptions

log = logging.getLogger("tfprod.grpc")

# TF Serving lifts gRPC's 4 MB message limit to INT_MAX; --grpc_channel_arguments can lower it.
_INT_MAX = 2**31 - 1


@dataclasses.dataclass(frozen=True)
class GrpcOptions:
    port: int = 8500
    host: str = "0.0.0.0"
    socket_path: str = ""
    max_threads: int = 8
    channel_arguments: tuple[tuple[str, int | str], ...] = ()
    ssl: SslOptions | None = None


def parse_channel_arguments(text: str) -> tuple[tuple[str, int | str], ...]:
    """`key=value,key=value` as TF Serving reads --grpc_channel_arguments: integer values become ints."""
    args: list[tuple[str, int | str]] = []
    for item in filter(None, (part.strip() for part in text.split(","))):
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"--grpc_channel_arguments: expected key=value, got {item!r}")
        value = value.strip()
        try:
            args.append((key.strip(), int(value)))
        except ValueError:
            args.append((key.strip(), value))
    return tuple(args)


Registrar = Callable[[grpc.aio.Server], None]


class GrpcServer:
    """Start, keep the health status current, and stop gracefully. Runs on the caller's loop."""

    def __init__(self, options: GrpcOptions, services: Sequence[tuple[str, Registrar]],
                 ready: Callable[[], bool], interceptors: Sequence[grpc.aio.ServerInterceptor] = ()) -> None:
        self._options = options
        self._interceptors = list(interceptors)
        self._services = services
        self._ready = ready
        self._server: grpc.aio.Server | None = None
        self._health = health.aio.HealthServicer()
        self._watcher: asyncio.Task[None] | None = None

    @property
    def addresses(self) -> list[str]:
        out = [f"{self._options.host}:{self._options.port}"] if self._options.port else []
        return out + ([f"unix:{self._options.socket_path}"] if self._options.socket_path else [])

    async def start(self) -> None:
        options: dict[str, Any] = {"grpc.max_receive_message_length": _INT_MAX,
                                   "grpc.max_send_message_length": _INT_MAX}
        options.update(self._options.channel_arguments)  # gRPC keeps the first of repeated keys: merge instead
        server = grpc.aio.server(options=list(options.items()), interceptors=self._interceptors)
        for _, register in self._services:
            register(server)
        health_pb2_grpc.add_HealthServicer_to_server(self._health, server)
        for address in self.addresses:
            self._bind(server, address)
        await server.start()
        self._server = server
        self._watcher = asyncio.create_task(self._watch_readiness())
        log.info("gRPC serving on %s", ", ".join(self.addresses))

    def _bind(self, server: grpc.aio.Server, address: str) -> None:
        ssl = self._options.ssl
        try:
            if ssl is None:
                server.add_insecure_port(address)
            else:
                credentials = grpc.ssl_server_credentials(
                    [(ssl.server_key.encode(), ssl.server_cert.encode())],
                    root_certificates=ssl.custom_ca.encode() or None,
                    require_client_auth=ssl.client_verify,
                )
                server.add_secure_port(address, credentials)
        except RuntimeError as e:
            raise OSError(f"cannot listen for gRPC on {address}: {e}") from None

    async def _watch_readiness(self) -> None:
        serving = None
        while True:
            now = self._ready()
            if now != serving:
                status = health_pb2.HealthCheckResponse.SERVING if now else health_pb2.HealthCheckResponse.NOT_SERVING
                for name, _ in (("", None), *self._services):
                    await self._health.set(name, status)
                serving = now
            await asyncio.sleep(0.5)

    async def stop(self, grace_s: float) -> None:
        """Refuse new calls, let calls in flight finish (up to grace_s), then close."""
        if self._server is None:
            return
        if self._watcher is not None:
            self._watcher.cancel()
        await self._health.enter_graceful_shutdown()
        await self._server.stop(grace_s)
