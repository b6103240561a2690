"""The composition root: builds every part from frozen options and runs the ports.

Nothing else wires parts together, registers collectors or installs signal handlers.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import dataclasses
import logging
import os
import signal
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from typing import Any

import uvicorn
import uvloop
from prometheus_client import generate_latest
from prometheus_client.registry import CollectorRegistry
from tensorflow.core.protobuf import config_pb2
from tensorflow_serving.apis import model_service_pb2_grpc, prediction_service_pb2_grpc

from tfprod.api import grpc_api
from tfprod.api.grpc_server import GrpcOptions, GrpcServer
from tfprod.api.rest import RestApi, RestOptions
from tfprod.api.v2 import V2Models, V2Servicer
from tfprod.batching import BatchingOptions
from tfprod.config.model_config import ConfigError, ModelConfig, SslOptions
from tfprod.console.routes import Console
from tfprod.core.manager import Manager, ManagerOptions, ServableId
from tfprod.core.source import FileSystemSource, SourceOptions
from tfprod.core.states import State
from tfprod.errors import Code, ServingError
from tfprod.export import warmup
from tfprod.format.saved_model import is_complete
from tfprod.metrics import ServingMetrics
from tfprod.protos import grpc_predict_v2_pb2_grpc
from tfprod.rollout.config import Rollout
from tfprod.rollout.controller import Rollouts
from tfprod.security.admission import ModelRefused, check_version
from tfprod.security.config import SecurityConfig, TlsOptions
from tfprod.security.guard import Guard
from tfprod.servables import saved_model, tflite
from tfprod.servables.base import Servable, freeze_heap
from tfprod.server_core import ServerCore
from tfprod.service import InputBounds, Service
from tfprod.workers.pool import Pool, Slot

log = logging.getLogger("tfprod.server")


@dataclasses.dataclass(frozen=True)
class ServerOptions:
    models: tuple[ModelConfig, ...]
    rest_api_port: int = 8501
    host: str = "0.0.0.0"
    model_config_file: str = ""
    model_config_file_poll_wait_seconds: int = 0
    file_system_poll_wait_seconds: int = 1
    remote_poll_wait_seconds: int = 30  # object storage base paths
    model_cache_dir: str = os.path.join(os.path.expanduser("~"), ".cache", "tfprod", "models")
    max_num_load_retries: int = 5
    load_retry_interval_micros: int = 60_000_000
    saved_model_tags: frozenset[str] = frozenset({"serve"})
    allow_version_labels_for_unavailable_models: bool = False
    strict_readiness: bool = True  # ready only while every configured model has an AVAILABLE version
    enable_console: bool = True  # the web console at /ui/ on the REST port
    enable_signature_method_name_check: bool = False
    batching: BatchingOptions | None = None
    per_model_batching: bool = False
    enable_model_warmup: bool = True
    required_metadata_fields: tuple[str, ...] = ()
    num_request_iterations_for_warmup: int = 1
    prefer_tflite_model: bool = False
    tflite_num_threads: int = 1
    session_threads: tuple[int, int] = (0, 0)  # a Session's (intra-op, inter-op) threads; 0: TensorFlow's choice
    rest: RestOptions = RestOptions()
    grpc: GrpcOptions = GrpcOptions()
    security: SecurityConfig = SecurityConfig()
    grace_s: float = 30.0  # how long a stop waits for the calls in flight (--drain_seconds)
    worker: Slot | None = None  # this process's place in a pool of workers (tfprod.workers), if any
    rollout_config_file: str = ""
    rollout_state_file: str = ""  # where rollout decisions are kept across restarts ("": nowhere)
    rollouts: tuple[Rollout, ...] = ()  # the rollout config file as read at start


class _Uvicorn(uvicorn.Server):
    """Signals belong to `_serve`, which stops REST and gRPC together; uvicorn's own handlers
    would re-raise SIGTERM and kill the process before models unload."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def _shared_socket(host: str, port: int) -> socket.socket:
    """A listening socket other workers of the pool bind too: the kernel spreads connections over
    them (SO_REUSEPORT). uvicorn cannot set the option itself, so it is handed the socket."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    sock.listen(2048)
    sock.setblocking(False)
    return sock


async def _serve(options: ServerOptions, app: RestApi | None, grpc_server: GrpcServer | None,
                 core: ServerCore, pool: Pool | None, rollouts: Rollouts | None) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    # TF Serving builds its ServerCore, loading the initial config's models, before it opens a port:
    # a client never hears NOT_FOUND for a model that is in the config and about to load.
    if not core.initial_load_settled():
        log.info("loading the configured models before opening the ports")
    while not core.initial_load_settled():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), 0.02)
        if stop.is_set():
            log.info("stopped before the configured models loaded")
            return
    if rollouts is not None:  # before the ports open: no unversioned request reaches a canary unrouted
        names = [r.model for r in options.rollouts]  # and every arm's version has loaded (or failed)
        while any(st.state in (State.START, State.LOADING) for st in sum(core.statuses_of(names).values(), [])):
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 0.02)
            if stop.is_set():
                return
        try:
            rollouts.apply({r.model: r for r in options.rollouts})
        except ConfigError as e:
            raise ConfigError(f"--rollout_config_file {options.rollout_config_file}: {e}") from None
        rollouts.start()
        if options.model_config_file_poll_wait_seconds > 0:  # from the config just applied on
            rollouts.poll_file(options.rollout_config_file, options.model_config_file_poll_wait_seconds,
                               lambda: core.models, options.rollouts)
    waits: list[asyncio.Task[Any]] = [asyncio.create_task(stop.wait())]
    rest = None
    if grpc_server is not None:
        await grpc_server.start()
    if app is not None:
        tls = options.security.tls
        config = uvicorn.Config(app, host=options.host, port=options.rest_api_port, log_config=None,
                                access_log=False, lifespan="on", timeout_keep_alive=30,
                                timeout_graceful_shutdown=int(options.grace_s) or None,
                                ssl_certfile=tls.cert_file if tls else None, ssl_keyfile=tls.key_file if tls else None,
                                ssl_ca_certs=tls.client_ca_file or None if tls else None,
                                ssl_cert_reqs=ssl.CERT_REQUIRED if tls and tls.require_client_cert else
                                ssl.CERT_OPTIONAL if tls and tls.client_ca_file else ssl.CERT_NONE)
        rest = _Uvicorn(config)
        sockets = [_shared_socket(options.host, options.rest_api_port)] if pool is not None else None
        waits.append(asyncio.create_task(rest.serve(sockets)))
        while not rest.started and not waits[-1].done():
            await asyncio.sleep(0.01)
    if pool is not None and not any(w.done() for w in waits):
        await loop.run_in_executor(None, core.join_pool)  # may wait for a model the pool added meanwhile
        log.info("worker %d serving", pool.slot.index)
    done, _ = await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
    if waits[0] not in done:  # REST stopped on its own: it could not start
        raise OSError(f"cannot serve REST on {options.host}:{options.rest_api_port} (see the log above)")
    log.info("stopping: refusing new requests, finishing the ones in flight")
    if pool is not None:
        pool.close()
    if rest is not None:
        rest.should_exit = True
    await asyncio.gather(*waits[1:], grpc_server.stop(options.grace_s) if grpc_server else asyncio.sleep(0))


def _secured(options: ServerOptions) -> ServerOptions:
    """Fold the security config's limits and TLS into the front ends' options."""
    security = options.security
    limits, rest, grpc_options = security.limits, options.rest, options.grpc
    if limits.max_body_bytes is not None:
        rest = dataclasses.replace(rest, max_body_bytes=min(rest.max_body_bytes, limits.max_body_bytes))
        args: dict[str, int | str] = dict(grpc_options.channel_arguments)
        given = args.get("grpc.max_receive_message_length")
        args["grpc.max_receive_message_length"] = min(given, limits.max_body_bytes) if isinstance(given, int) \
            else limits.max_body_bytes
        grpc_options = dataclasses.replace(grpc_options, channel_arguments=tuple(args.items()))
    if limits.max_json_depth is not None:
        rest = dataclasses.replace(rest, max_json_depth=limits.max_json_depth)
    if limits.request_timeout_s is not None:
        rest = dataclasses.replace(rest, timeout_s=min(rest.timeout_s, limits.request_timeout_s))
    if security.tls is not None and grpc_options.ssl is None:  # --ssl_config_file, if given, wins on gRPC
        grpc_options = dataclasses.replace(grpc_options, ssl=ssl_options(security.tls))
    return dataclasses.replace(options, rest=rest, grpc=grpc_options)


def ssl_options(tls: TlsOptions) -> SslOptions:
    def read(path: str) -> str:
        with open(path) as f:
            return f.read()
    return SslOptions(read(tls.key_file), read(tls.cert_file), read(tls.client_ca_file) if tls.client_ca_file else "",
                      tls.require_client_cert)


def _warn_if_open(options: ServerOptions) -> None:
    if options.security.auth:
        return
    hosts = [options.host] if options.rest_api_port or options.grpc.port else []
    exposed = [h for h in hosts if h not in ("127.0.0.1", "::1", "localhost")]
    if exposed:
        log.warning("authentication is off and the server listens on %s: anyone who can reach it may call "
                    "every model and reload the config. Turn it on with --security_config_file "
                    "(docs/security.md), or listen on --host=127.0.0.1", exposed[0])


def run(options: ServerOptions) -> None:
    options = _secured(options)
    _warn_if_open(options)
    registry = CollectorRegistry(auto_describe=True)
    metrics = ServingMetrics()
    registry.register(metrics)
    guard = Guard(options.security, metrics)
    intra, inter = options.session_threads
    session_config = config_pb2.ConfigProto(intra_op_parallelism_threads=intra, inter_op_parallelism_threads=inter)

    def lite(path: str) -> bool:
        """model.tflite when it is all there is, or with --prefer_tflite_model (TF Serving's rule)."""
        return tflite.has_tflite(path) and (options.prefer_tflite_model or not is_complete(path))

    def load(sid: ServableId, path: str) -> Servable:
        if lite(path):
            log.info("%s version %d: serving %s with LiteRT", sid.name, sid.version, tflite.TFLITE_FILE)
            return tflite.load(sid, path, options.tflite_num_threads,
                               saved_model.batching_for(path, options.batching, options.per_model_batching), metrics)
        return saved_model.load(sid, path, options.saved_model_tags, options.batching, options.per_model_batching,
                                metrics, session_config)

    checked: dict[tuple[str, int], dict[str, str]] = {}  # what admission checked of each version (the console's)

    def load_and_warm(sid: ServableId, path: str) -> Servable:
        try:
            checked[(sid.name, sid.version)] = check_version(guard.config.models, sid.name, sid.version, path,
                                                             options.saved_model_tags, scan=not lite(path))
        except ModelRefused as e:
            metrics.record_refusal(sid.name, e.reason)
            raise
        servable = load(sid, path)
        missing = [f for f in options.required_metadata_fields if not (servable.audit or {}).get(f)]
        if missing:
            servable.unload()
            raise ServingError(Code.FAILED_PRECONDITION, f"version {sid.version} lacks required audit metadata: "
                               f"{', '.join(missing)} (export it with tfprod.export.save(..., metadata=...))")
        if options.enable_model_warmup:
            try:
                done = warmup.replay(path, servable, options.num_request_iterations_for_warmup)
            except BaseException:
                servable.unload()
                raise
            if done is not None:
                metrics.record_warmup(sid.name, done[1])
                log.info("warmed up %s version %d: %d records in %.2fs", sid.name, sid.version, *done)
        return servable

    manager = Manager[Servable](
        load_and_warm,
        ManagerOptions(
            max_num_load_retries=options.max_num_load_retries,
            load_retry_interval_s=options.load_retry_interval_micros / 1e6,
            on_state_change=metrics.record_state,
        ),
    )
    source = FileSystemSource(manager.set_aspired_versions,
                              lambda path: is_complete(path) or tflite.has_tflite(path),
                              SourceOptions(poll_wait_s=options.file_system_poll_wait_seconds,
                                            remote_poll_wait_s=options.remote_poll_wait_seconds,
                                            cache_dir=options.model_cache_dir))
    core = ServerCore(manager, source, options.allow_version_labels_for_unavailable_models, options.strict_readiness)
    limits = options.security.limits
    # Unbatched model calls hold one of these threads while TensorFlow runs; batched ones hold none
    # (their callers await the batch on the loop, and the batcher has its own threads).
    model_pool = concurrent.futures.ThreadPoolExecutor(max(options.rest.num_threads, options.grpc.max_threads),
                                                       thread_name_prefix="tfprod-model")
    rollouts = None
    if options.rollout_config_file:
        rollouts = Rollouts(manager, core, options.rollout_state_file or None)
        registry.register(rollouts)
    service = Service(manager, options.enable_signature_method_name_check,
                      InputBounds(limits.max_tensor_elements, limits.max_batch_rows), model_pool, core.statuses_of,
                      rollouts, metrics.record_version)
    v2models = V2Models(service, core)
    pool = Pool(options.worker, core.pool_handlers()) if options.worker is not None else None

    def reported() -> tuple[int, dict[str, Any]]:
        """This worker's metrics for a scrape, kept on disk as they were last reported."""
        snapshot = metrics.snapshot()
        if pool is not None:
            pool.save_metrics(snapshot)
        return os.getpid(), snapshot

    if pool is not None:
        pool.handlers["metrics"] = reported

    def pool_metrics() -> ServingMetrics:
        assert pool is not None
        live = [reported(), *pool.gather("metrics")]
        gone = pool.saved_metrics({pid for pid, _ in live})  # replaced workers keep counting: no counter drops
        return ServingMetrics.merged([s for _, s in live] + [{**s, "_states": {}} for s in gone])

    def exposition() -> bytes:
        if pool is None:
            return generate_latest(registry)
        merged = CollectorRegistry(auto_describe=True)
        merged.register(pool_metrics())
        return generate_latest(merged)

    merged_for_console: list[Any] = [-1.0, {}]  # (when, what): every open console page polls
    console_lock = threading.Lock()

    def console_metrics() -> dict[str, Any]:
        """The console's numbers; a pool's gathered at most once a second, however many pages read them."""
        if pool is None:
            return metrics.console()
        with console_lock:
            if time.monotonic() - merged_for_console[0] >= 1.0:
                merged_for_console[:] = [time.monotonic(), pool_metrics().console()]
            return dict(merged_for_console[1])

    console = Console(service, core, guard, console_metrics, lambda name, version: checked.get((name, version))) \
        if options.enable_console else None
    app = RestApi(service, core, v2models, metrics, exposition, options.rest, guard, rollouts, console) \
        if options.rest_api_port else None
    grpc_pool = concurrent.futures.ThreadPoolExecutor(options.grpc.max_threads, thread_name_prefix="tfprod-grpc")
    grpc_server = None
    if options.grpc.port or options.grpc.socket_path:
        run_rpc = grpc_api.Runner(grpc_pool, metrics, guard, limits.request_timeout_s)
        prediction = grpc_api.PredictionServicer(service, run_rpc)
        model = grpc_api.ModelServicer(service, core, run_rpc)
        inference = V2Servicer(v2models, run_rpc, load_timeout_s=options.rest.timeout_s)
        grpc_server = GrpcServer(options.grpc, [
            ("tensorflow.serving.PredictionService",
             lambda s: prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(prediction, s)),
            ("tensorflow.serving.ModelService",
             lambda s: model_service_pb2_grpc.add_ModelServiceServicer_to_server(model, s)),
            ("inference.GRPCInferenceService",
             lambda s: grpc_predict_v2_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(inference, s)),
        ], ready=lambda: not core.not_ready(), interceptors=[grpc_api.CredentialsFirst(guard)])

    freeze_heap()  # before the first load: see freeze_heap
    guard.watch()
    manager.start()
    if pool is not None:
        core.start_in_pool(pool, options.models)
    else:
        core.apply(options.models)
    source.start()
    if options.model_config_file and options.model_config_file_poll_wait_seconds > 0:
        core.poll_config_file(options.model_config_file, options.model_config_file_poll_wait_seconds, options.models)
    try:
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:  # uvloop: REST's fast path
            runner.run(_serve(options, app, grpc_server, core, pool, rollouts))
    finally:
        if pool is not None:
            pool.close()
        log.info("shutting down: unloading models")
        guard.stop()
        if rollouts is not None:
            rollouts.stop()
        core.stop()
        source.stop()
        if app is not None:
            app.close()
        grpc_pool.shutdown(wait=True)
        model_pool.shutdown(wait=True)
        manager.stop()
        log.info("bye")
