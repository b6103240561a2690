"""TF Serving's REST API (v1), plus a model list, health endpoints and Prometheus metrics.

A thin adapter: it routes with TF Serving's path grammar (http_rest_api_handler.cc), reads the
body within bounds, and hands the rest to `Service` on a worker thread (JSON decoding and the
model call are CPU work that must not stall the event loop). Status codes are chosen here only.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import functools
import inspect
import logging
import re
import time
import zlib
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, TypeVar, cast
from urllib.parse import unquote

import numpy as np
from google.protobuf import json_format
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from tfprod.api.ui import UiRoutes
from tfprod.api.v2 import V2Models, refuse_overrides
from tfprod.codec import example, json_tensor, messages, v2
from tfprod.console.routes import Console
from tfprod.core import logs
from tfprod.core.manager import VersionStatus
from tfprod.errors import Code, ServingError, invalid
from tfprod.metrics import ServingMetrics
from tfprod.rollout.controller import Rollouts
from tfprod.security.guard import Guard
from tfprod.server_core import ServerCore
from tfprod.service import ModelSpec, Routed, Service
from tfprod.signature import DEFAULT_SIGNATURE

log = logging.getLogger("tfprod.rest")

HTTP_STATUS = {
    Code.OK: 200, Code.CANCELLED: 499, Code.UNKNOWN: 500, Code.INVALID_ARGUMENT: 400,
    Code.DEADLINE_EXCEEDED: 504, Code.NOT_FOUND: 404, Code.ALREADY_EXISTS: 409,
    Code.PERMISSION_DENIED: 403, Code.RESOURCE_EXHAUSTED: 429, Code.FAILED_PRECONDITION: 400,
    Code.ABORTED: 409, Code.OUT_OF_RANGE: 400, Code.UNIMPLEMENTED: 501, Code.INTERNAL: 500,
    Code.UNAVAILABLE: 503, Code.DATA_LOSS: 500, Code.UNAUTHENTICATED: 401,
}

_NAME = r"([^/:]+)"
_VERSION = rf"(?:/versions/(\d+)|/labels/{_NAME})?"
_POST = re.compile(rf"/v1/models/{_NAME}{_VERSION}:(classify|regress|predict)", re.IGNORECASE)
_GET = re.compile(rf"/v1/models(?:/{_NAME}{_VERSION}(/metadata)?)?/?", re.IGNORECASE)
_V1 = re.compile(r"/v1/", re.IGNORECASE)
_ROLLOUTS_PREFIX = re.compile(r"/v1/rollouts(?:/|$)")
_ROLLOUTS = re.compile(rf"/v1/rollouts(?:/{_NAME}(?::(\w+))?)?/?")
_V2_MODEL = re.compile(rf"/v2/models/{_NAME}(?:/versions/(\d+))?(?:/(ready|infer))?/?")
_V2_REPOSITORY = re.compile(rf"/v2/repository/models/{_NAME}/(load|unload)")
_CORS = {
    "Access-Control-Allow-Origin": "*",
    "Access-Control-Allow-Methods": "POST, GET",
    "Access-Control-Allow-Headers": "Content-Type, Authorization, X-API-Key",
}
_JSON = "application/json"


@dataclasses.dataclass(frozen=True)
class RestOptions:
    timeout_s: float = 30.0
    enable_cors: bool = False
    metrics_path: str | None = None
    max_body_bytes: int = 64 * 1024 * 1024
    num_threads: int = 8
    max_json_depth: int | None = None


class _TooLarge(Exception):
    pass


class _ClientGone(Exception):
    pass


_WATCH_AFTER_S = 0.05


async def _disconnected(receive: Receive) -> None:
    """Returns once the client has hung up (the body was read already: the next message is that)."""
    while (await receive())["type"] != "http.disconnect":
        pass


# A route's work, given the request body: a coroutine function (the model APIs, on the event loop)
# or a plain function (run on a worker thread).
Handler = Callable[[bytes], Response] | Callable[[bytes], Awaitable[Response]]
# (model, API label, work). Routing reads only the method, path and headers: callers are checked
# before a body is read.
Route = tuple[str, str, Handler]
T = TypeVar("T")
_OFFLOAD_BYTES = 256 * 1024  # bodies from this size are parsed on a worker thread, not on the loop
_OFFLOAD_ELEMENTS = 64 * 1024  # outputs from this many elements are encoded on a worker thread


class RestApi:
    """The ASGI application serving the REST port."""

    def __init__(
        self,
        service: Service,
        core: ServerCore,
        v2models: V2Models,
        metrics: ServingMetrics,
        exposition: Callable[[], bytes],
        options: RestOptions,
        guard: Guard,
        rollouts: Rollouts | None = None,
        console: Console | None = None,
    ) -> None:
        self._service = service
        self._console = console  # None: --enable_console=false
        self._rollouts = rollouts
        self._core = core
        self._v2 = v2models
        self._metrics = metrics
        self._exposition = exposition  # Prometheus text: this process's metrics, or a pool's
        self._options = options
        self._guard = guard
        self._ui = UiRoutes(service, guard)
        self._executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=options.num_threads, thread_name_prefix="tfprod-rest"
        )

    def close(self) -> None:
        self._executor.shutdown(wait=True)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await _lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        request = Request(scope, receive)
        path = scope["path"]
        if _ROLLOUTS_PREFIX.match(path):
            response = await self._answer(request, self._route_rollouts)
        elif _V1.match(path):
            response = await self._v1(request)
            if self._options.enable_cors:
                response.headers.update(_CORS)
        elif path == "/v2" or path.startswith("/v2/"):
            response = await self._answer(request, self._route_v2)
            if self._options.enable_cors:
                response.headers.update(_CORS)
        elif path.startswith("/ui/") or path == "/ui":
            response = await self._answer(request, self._route_ui)
        elif path == "/healthz":
            response = _json_response(200, {"status": "alive"})
        elif path == "/readyz":
            # off the loop: in a pool of workers the answer is gathered from every worker
            waiting = await asyncio.get_running_loop().run_in_executor(self._executor, self._core.not_ready)
            ready = {"status": "not ready", "waiting_for": waiting} if waiting else {"status": "ready"}
            response = _json_response(503 if waiting else 200, ready)
        elif self._options.metrics_path and path == self._options.metrics_path:
            content = await asyncio.get_running_loop().run_in_executor(self._executor, self._exposition)
            response = Response(content, media_type=CONTENT_TYPE_LATEST)
        else:
            response = _error_response(ServingError(Code.NOT_FOUND, f"Malformed request: {request.method} {path}"))
        await response(scope, receive, send)

    async def _v1(self, request: Request) -> Response:
        if request.method == "OPTIONS":
            origin = request.headers.get("origin", "")
            return Response(status_code=200 if re.match(r"https?://", origin) else 400)
        return await self._answer(request, self._route_v1)

    def _route_v1(self, request: Request, path: str) -> Route:
        method = request.method
        if method == "POST" and (m := _POST.fullmatch(path)):
            spec, api = _spec(m), m.group(4).lower()
            return spec.name, api.capitalize(), functools.partial(self._post, api, spec, Routed(request.headers.get))
        if method == "GET" and (m := _GET.fullmatch(path)):
            if m.group(1) is None:
                return "", "ListModels", lambda _: _json_ok(self._list_models())
            spec = _spec(m)
            if m.group(4):
                return spec.name, "GetModelMetadata", lambda _: _json_ok(self._metadata(spec))
            return spec.name, "GetModelStatus", lambda _: _json_ok(self._status(spec))
        raise invalid(f"Malformed request: {method} {path}")

    def _route_ui(self, request: Request, path: str) -> Route:
        if self._console is not None and (route := self._console.route(
                request.method, path, request.headers.get("if-none-match"))) is not None:
            return route
        return self._ui.route(request.method, path, request.headers.get("if-none-match"))

    def _route_v2(self, request: Request, path: str) -> Route:
        method, v2models = request.method, self._v2
        if method == "GET" and path in ("/v2", "/v2/"):
            return "", "ServerMetadata", lambda _: _json_ok(json_tensor.dumps(v2models.server_metadata()))
        if method == "GET" and path == "/v2/health/live":
            return "", "ServerLive", lambda _: _json_ok(b"{}")
        if method == "GET" and path == "/v2/health/ready":
            return "", "ServerReady", lambda _: _ready_response(v2models.server_ready(), "the server")
        if m := _V2_MODEL.fullmatch(path):
            name, version, action = unquote(m.group(1)), m.group(2) or "", m.group(3)
            if method == "GET" and action is None:
                signature_name = request.query_params.get("signature_name", DEFAULT_SIGNATURE)
                return name, "ModelMetadata", lambda _: _json_ok(json_tensor.dumps(
                    v2models.model_metadata(name, version, signature_name)))
            if method == "GET" and action == "ready":
                return name, "ModelReady", lambda _: _ready_response(v2models.model_ready(name, version),
                                                                     f"model '{name}'")
            if method == "POST" and action == "infer":
                header_length = _header_length(request)
                return name, "ModelInfer", functools.partial(self._infer, name, version, header_length=header_length,
                                                             routed=Routed(request.headers.get))
        if method == "POST" and path == "/v2/repository/index":
            return "", "RepositoryIndex", lambda body: _json_ok(json_tensor.dumps(
                v2models.index(_ready_only(body))))
        if method == "POST" and (m := _V2_REPOSITORY.fullmatch(path)):
            name, action = unquote(m.group(1)), m.group(2)
            if action == "load":
                return name, "RepositoryModelLoad", lambda body: self._load(name, body)
            return name, "RepositoryModelUnload", lambda body: self._unload(name, body)
        raise ServingError(Code.NOT_FOUND, f"Malformed request: {method} {path}")

    async def _answer(self, request: Request, route: Callable[[Request, str], Route]) -> Response:
        """Check the caller, route, read the body, run the work on a worker thread within the
        timeout, map errors, record metrics."""
        raw_path = request.scope.get("raw_path") or request.scope["path"].encode()
        path = raw_path.decode("latin-1").split("?", 1)[0]
        started = time.perf_counter()
        model, api, status = "", "", "OK"
        guard, headers = self._guard, request.headers
        try:
            model, api, work = route(request, path)
            client = request.scope.get("client") or ("", 0)
            guard.admit(headers.get("authorization"), headers.get("x-api-key"), client[0], model, api)
            body = await self._read_within_timeout(request) if request.method == "POST" else b""
            with guard.slot():
                if self._options.max_json_depth is not None and body:  # linear in the body: large ones off the loop
                    body = self._shallow(body, api, request) if len(body) < _OFFLOAD_BYTES else \
                        await self._parsed(functools.partial(self._shallow, api=api, request=request), body)
                return await self._run(work, body, request.receive)
        except ServingError as e:
            status = e.code.name
            if e.code == Code.UNAUTHENTICATED:
                model = ""  # a stranger's model names must not become metric series
            return _error_response(e)
        except _ClientGone:
            status = Code.CANCELLED.name
            return _json_response(499, {"error": "the client closed the connection"})  # nobody reads it
        except _TooLarge:
            status = Code.RESOURCE_EXHAUSTED.name
            return _json_response(413, {"error": f"Request body is larger than the limit of "
                                                 f"{self._options.max_body_bytes} bytes"})
        except Exception as e:  # a bug must answer 500 and leave the server serving
            log.exception("internal error on %s %s", request.method, path)
            status = Code.INTERNAL.name
            return _error_response(ServingError(Code.INTERNAL, f"{type(e).__name__}: {e}"))
        finally:
            seconds = time.perf_counter() - started
            self._metrics.record_request(model, status, api, "REST", seconds)
            logs.access("REST", api or f"{request.method} {path}", model, status, seconds,
                        (request.scope.get("client") or ("-",))[0], headers.get("x-request-id"))

    async def _run(self, work: Handler, body: bytes, receive: Receive) -> Response:
        """A model API's coroutine on the loop (it awaits its batch there); anything else on a worker
        thread. Within the timeout; and a model call still
        waiting after `_WATCH_AFTER_S` is cancelled when its client hangs up (so a batch that has not
        started drops it), watched only from then on, so that quick answers pay nothing for it."""
        if inspect.iscoroutinefunction(work):
            running: Awaitable[Response] = work(body)
        else:
            on_thread = cast(Callable[[bytes], Response], work)
            running = asyncio.get_running_loop().run_in_executor(self._executor, on_thread, body)
        timeout = self._options.timeout_s
        task = asyncio.ensure_future(running)
        try:
            done, _ = await asyncio.wait({task}, timeout=min(_WATCH_AFTER_S, timeout))
            if not done:
                gone = asyncio.ensure_future(_disconnected(receive))
                either: set[asyncio.Future[Any]] = {task, gone}
                finished, _ = await asyncio.wait(either, timeout=timeout - _WATCH_AFTER_S,
                                                 return_when=asyncio.FIRST_COMPLETED)
                gone.cancel()
                if gone in finished and task not in finished:
                    raise _ClientGone
                done = {task} if task in finished else set()
        finally:
            if not task.done():
                task.cancel()
        if task not in done:
            raise ServingError(Code.DEADLINE_EXCEEDED,
                               f"Request timed out after {timeout * 1000:.0f} ms (--rest_api_timeout_in_ms)")
        return task.result()

    async def _read_within_timeout(self, request: Request) -> bytes:
        """A body that trickles in slower than the request timeout is refused (a slow client must
        not hold a worker or a concurrency slot)."""
        try:
            return await asyncio.wait_for(self._body(request), timeout=self._options.timeout_s)
        except TimeoutError:
            raise ServingError(Code.DEADLINE_EXCEEDED, f"Request body not received within "
                               f"{self._options.timeout_s * 1000:.0f} ms") from None

    def _shallow(self, body: bytes, api: str, request: Request) -> bytes:
        """Refuse JSON nested deeper than the configured limit, before parsing it."""
        limit = self._options.max_json_depth
        if limit is None or not body:
            return body
        json_part = body
        if api == "ModelInfer" and (length := request.headers.get("inference-header-content-length", "")).isdigit():
            json_part = body[:int(length)]  # the rest is binary tensor data
        if json_part.count(b"[") + json_part.count(b"{") <= limit:  # no deeper than its openers: C-speed count first
            return body
        depth = json_tensor.nesting_depth(json_part)
        if depth > limit:
            raise invalid(f"JSON nesting depth {depth} exceeds this server's limit of {limit} (max_json_depth)")
        return body

    async def _body(self, request: Request) -> bytes:
        limit = self._options.max_body_bytes
        declared = request.headers.get("content-length")
        if declared is not None and declared.isascii() and declared.isdigit() and int(declared) > limit:
            raise _TooLarge
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise _TooLarge
            chunks.append(chunk)
        body = b"".join(chunks)
        if request.headers.get("content-encoding", "").lower() == "gzip":
            decompressor = zlib.decompressobj(16 + zlib.MAX_WBITS)
            try:
                body = decompressor.decompress(body, limit + 1)
            except zlib.error as e:
                raise invalid(f"Request body is not valid gzip: {e}") from None
            if len(body) > limit or decompressor.unconsumed_tail:
                raise _TooLarge
        return body

    # -- handlers: the model APIs are coroutines on the loop, the rest run on worker threads ----

    async def _off_loop_if(self, large: bool, work: Callable[[], T]) -> T:
        """On the loop, or on a worker thread when the payload is large enough to hold the loop up
        (parsing a body of `_OFFLOAD_BYTES`, writing `_OFFLOAD_ELEMENTS` values: a million floats
        take ~90 ms to write as JSON)."""
        if not large:
            return work()
        return await asyncio.get_running_loop().run_in_executor(self._executor, work)

    async def _parsed(self, parse: Callable[[bytes], T], body: bytes) -> T:
        return await self._off_loop_if(len(body) >= _OFFLOAD_BYTES, functools.partial(parse, body))

    async def _encoded(self, outputs: Mapping[str, np.ndarray], encode: Callable[[], T]) -> T:
        return await self._off_loop_if(sum(arr.size for arr in outputs.values()) >= _OFFLOAD_ELEMENTS, encode)

    async def _post(self, api: str, spec: ModelSpec, routed: Routed, body: bytes) -> Response:
        doc = await self._parsed(json_tensor.parse_object, body)
        spec = dataclasses.replace(spec, signature_name=json_tensor.signature_name(doc, DEFAULT_SIGNATURE))
        if api == "predict":
            row_format = "instances" in doc
            pred = await self._service.predict(spec, lambda sig: json_tensor.parse_predict(doc, sig)[0],
                                               offload=len(body) >= _OFFLOAD_BYTES, routed=routed)
            content = await self._encoded(pred.outputs, functools.partial(
                json_tensor.format_predict, pred.outputs, row_format))
        else:
            examples = await self._off_loop_if(len(body) >= _OFFLOAD_BYTES,
                                               functools.partial(example.parse_examples, doc, api))
            if api == "classify":
                _, (classes, scores) = await self._service.classify(spec, examples, routed)
                content = example.format_classify(classes, scores, len(examples))
            else:
                _, outputs = await self._service.regress(spec, examples, routed)
                content = example.format_regress(outputs)
        return _routed(Response(content, media_type=_JSON), routed)

    async def _infer(self, name: str, version: str, body: bytes, header_length: int | None,
                     routed: Routed) -> Response:
        request = await self._parsed(functools.partial(v2.parse_rest, header_length=header_length), body)
        result = await self._v2.infer(name, version, request, offload=len(body) >= _OFFLOAD_BYTES, routed=routed)
        content, json_length = await self._encoded(result.outputs, functools.partial(
            v2.format_rest, name, str(result.version), request, result.outputs, result.signature))
        if json_length is None:
            return _routed(Response(content, media_type=_JSON), routed)
        return _routed(Response(content, media_type="application/octet-stream",
                                headers={"Inference-Header-Content-Length": str(json_length)}), routed)

    # -- the rollout admin API (docs/rollout.md) --------------------------------------------

    def _route_rollouts(self, request: Request, path: str) -> Route:
        method, rollouts = request.method, self._rollouts
        m = _ROLLOUTS.fullmatch(path)
        if m is None:
            raise ServingError(Code.NOT_FOUND, f"Malformed request: {method} {path}")
        name, action = unquote(m.group(1)) if m.group(1) else None, m.group(2)

        def running() -> Rollouts:  # asked once the caller is admitted: strangers learn nothing
            if rollouts is None:
                raise ServingError(Code.FAILED_PRECONDITION, "this server runs no rollouts: start it with "
                                   "--rollout_config_file (docs/rollout.md)")
            return rollouts

        if method == "GET" and action is None:
            if name is None:
                return "", "ListRollouts", lambda _: _json_ok(json_tensor.dumps({"rollouts": running().describe()}))
            return name, "GetRollout", lambda _: _json_ok(json_tensor.dumps(running().describe(name)[0]))
        if method == "POST" and name is not None and action is not None:
            return name, "UpdateRollout", lambda body: _json_ok(json_tensor.dumps(
                running().act(name, action.lower(), _weight(body) if action.lower() == "set_weight" else None)))
        raise ServingError(Code.NOT_FOUND, f"Malformed request: {method} {path}: GET /v1/rollouts[/MODEL] or POST "
                           "/v1/rollouts/MODEL:pause|resume|promote|abort|set_weight")

    def _load(self, name: str, body: bytes) -> Response:
        refuse_overrides(_parameters(body))
        self._v2.load(name, self._options.timeout_s)
        return _json_ok(b"{}")

    def _unload(self, name: str, body: bytes) -> Response:
        _parameters(body)
        self._v2.unload(name)
        return _json_ok(b"{}")

    def _status(self, spec: ModelSpec) -> bytes:
        return json_tensor.dumps(_status_doc(self._service.status(spec.name, spec.version, spec.label)))

    def _metadata(self, spec: ModelSpec) -> bytes:
        version, meta_graph, audit = self._service.metadata(spec)
        metadata: dict[str, Any] = {"signature_def": _to_dict(messages.signature_def_map(meta_graph))}
        if audit is not None:  # a key TF Serving clients do not read: they are unaffected
            metadata["audit"] = audit
            pipeline = audit.get("pipeline")
            if isinstance(pipeline, dict) and pipeline.get("run_id"):  # pushed by a tfprod pipeline: its lineage
                _, path = self._service.version_dir(ModelSpec(spec.name, version))
                metadata["lineage"] = {"run_id": pipeline["run_id"], "metadata_url": pipeline.get("metadata_url"),
                                       "command": f"tfprod lineage {path}"}
        return json_tensor.dumps({"model_spec": _to_dict(messages.model_spec(spec.name, version)),
                                  "metadata": metadata})

    def _list_models(self) -> bytes:
        return json_tensor.dumps({"models": [
            {"name": name, **_status_doc(statuses), "version_labels": {k: str(v) for k, v in labels.items()}}
            for name, (statuses, labels) in self._service.models().items()
        ]})


def _json_ok(content: bytes) -> Response:
    return Response(content, media_type=_JSON)


def _routed(response: Response, routed: Routed) -> Response:
    """Say which arm answered, and run the shadow once the answer is sent."""
    response.headers.update(routed.headers())
    if routed.shadow is not None:
        response.background = BackgroundTask(routed.run_shadow)
    return response


def _weight(body: bytes) -> float:
    doc = json_tensor.parse_object(body) if body.strip() else {}
    weight = doc.get("weight")
    if isinstance(weight, bool) or not isinstance(weight, int | float):
        raise invalid('set_weight needs a body such as {"weight": 5} (percent, 0 to 100)')
    return float(weight)


def _ready_response(ready: bool, what: str) -> Response:
    return _json_ok(b"{}") if ready else _json_response(400, {"error": f"{what} is not ready"})


def _header_length(request: Request) -> int | None:
    value = request.headers.get("inference-header-content-length")
    if value is None:
        return None
    if not (value.strip().isascii() and value.strip().isdigit()):
        raise invalid(f"Inference-Header-Content-Length must be a byte count, got '{value[:32]}'")
    return int(value)


def _ready_only(body: bytes) -> bool:
    if not body.strip():
        return False
    doc = json_tensor.parse_object(body)
    ready = doc.get("ready", False)
    if not isinstance(ready, bool):
        raise invalid("'ready' must be true or false")
    return ready


def _parameters(body: bytes) -> dict[str, Any]:
    parameters = json_tensor.parse_object(body).get("parameters") if body.strip() else None
    if parameters is not None and not isinstance(parameters, dict):
        raise invalid("'parameters' must be an object")
    return parameters or {}


def _spec(m: re.Match[str]) -> ModelSpec:
    name = unquote(m.group(1))
    version = m.group(2)
    if version is not None and int(version) > 2**63 - 1:
        raise invalid(f"Failed to convert version: {version} to numeric.")
    label = unquote(m.group(3)) if m.group(3) else None
    return ModelSpec(name, int(version) if version is not None else None, label)


def _status_doc(statuses: list[VersionStatus]) -> dict[str, Any]:
    return json_format.MessageToDict(messages.status_response(statuses), always_print_fields_with_no_presence=True)


def _to_dict(message: Any) -> dict[str, Any]:
    return json_format.MessageToDict(message, always_print_fields_with_no_presence=True,
                                      preserving_proto_field_name=True)


def _json_response(status: int, doc: Any) -> Response:
    return Response(json_tensor.dumps(doc), status_code=status, media_type=_JSON)


def _error_response(error: ServingError) -> Response:
    return Response(json_tensor.format_error(error.message), status_code=HTTP_STATUS.get(error.code, 500),
                    media_type=_JSON, headers=error.headers)


async def _lifespan(receive: Receive, send: Send) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return
