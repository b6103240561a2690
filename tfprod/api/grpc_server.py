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


class _Drain(grpc.aio.ServerInterceptor):
    """Tracks the unary calls in progress from the moment their headers arrive (interceptors run
    before a message is read) and, once draining, answers new ones UNAVAILABLE, which clients retry.
    grpc.aio's own stop cancels a call whose message is still arriving; stopping only once no call
    is in progress means a call accepted before SIGTERM completes and one after it is told to go
    elsewhere, never CANCELLED. Counts live on the event loop's thread only."""

    def __init__(self) -> None:
        self.draining = False
        self.last_call = 0.0  # loop time of the latest call seen
        self.arriving = 0  # headers in, handler not started: the message is still coming (or never will)
        self.running = 0  # accepted calls whose handler runs
        self.refusing = 0  # calls answered UNAVAILABLE, their message still coming

    def _arrived(self) -> None:
        self.arriving -= 1

    def _wrap(self, handler: Any, counter: str) -> Any:
        inner, deserialize = handler.unary_unary, handler.request_deserializer
        self.arriving += counter == "running"
        self.refusing += counter == "refusing"

        def deserialized(raw: bytes) -> Any:
            try:
                return deserialize(raw) if deserialize is not None else raw
            except Exception:  # a message that does not parse: its handler never runs
                if counter == "running":
                    self._arrived()
                raise

        async def tracked(request: Any, context: grpc.aio.ServicerContext) -> Any:
            if counter == "running":
                self._arrived()
                self.running += 1
            try:
                return await inner(request, context)
            finally:
                setattr(self, counter, getattr(self, counter) - 1)
        return handler._replace(unary_unary=tracked, request_deserializer=deserialized)

    async def intercept_service(self, continuation: Any, details: grpc.HandlerCallDetails) -> Any:
        self.last_call = asyncio.get_running_loop().time()
        if self.draining:
            async def refuse(request: bytes, context: grpc.aio.ServicerContext) -> None:
                await context.abort(grpc.StatusCode.UNAVAILABLE, "the server is shutting down: retry")
            return self._wrap(grpc.unary_unary_rpc_method_handler(refuse), "refusing")
        handler = await continuation(details)
        if handler is None or handler.unary_unary is None:  # streams (health Watch) may outlive any drain
            return handler
        return self._wrap(handler, "running")

    async def settle(self, grace_s: float, stragglers_s: float = 5.0, quiet_s: float = 0.1) -> bool:
        """Until every accepted call finished (up to `grace_s`), and calls still arriving or being
        refused are done and none came for `quiet_s` (calls queued inside gRPC, not yet handed to
        the application, are then refused here rather than cancelled by the stop). Those last waits
        end after `stragglers_s` all the same: a message that never completes (its client left, it
        was too large) and endless traffic must not hold the stop. False if accepted calls remain."""
        clock = asyncio.get_running_loop().time
        started = clock()
        while clock() - started < grace_s:
            late = clock() - started >= stragglers_s
            quiet = not self.arriving and not self.refusing and clock() - self.last_call >= quiet_s
            if not self.running and (quiet or late):
                return True
            await asyncio.sleep(0.01)
        return not self.running


class GrpcServer:
    """Start, keep the health status current, and stop gracefully. Runs on the caller's loop."""

    def __init__(self, options: GrpcOptions, services: Sequence[tuple[str, Registrar]],
                 ready: Callable[[], bool], interceptors: Sequence[grpc.aio.ServerInterceptor] = ()) -> None:
        self._options = options
        self._drain = _Drain()
        self._interceptors = [self._drain, *interceptors]
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
            now = await asyncio.to_thread(self._ready)  # off the loop: a pool of workers asks every worker
            if now != serving:
                status = health_pb2.HealthCheckResponse.SERVING if now else health_pb2.HealthCheckResponse.NOT_SERVING
                for name, _ in (("", None), *self._services):
                    await self._health.set(name, status)
                serving = now
            await asyncio.sleep(0.5)

    async def stop(self, grace_s: float) -> None:
        """Refuse new calls (UNAVAILABLE), let the accepted ones finish (up to grace_s), then close."""
        if self._server is None:
            return
        if self._watcher is not None:
            self._watcher.cancel()
        self._drain.draining = True
        await self._health.enter_graceful_shutdown()
        started = asyncio.get_running_loop().time()
        if not await self._drain.settle(grace_s):
            log.warning("gRPC calls still running after %.0f s: stopping anyway", grace_s)
        await self._server.stop(max(grace_s - (asyncio.get_running_loop().time() - started), 0.5))
