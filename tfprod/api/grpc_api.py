"""TF Serving's gRPC API: PredictionService and ModelService, on the generated servicer bases
from `tensorflow-serving-api`.

Like the REST adapter, this one only translates: messages to `Service` calls (on a worker
thread, within the call's deadline) and `ServingError`s to gRPC status codes.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import inspect
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import grpc
from tensorflow_serving.apis import (
    classification_pb2,
    get_model_metadata_pb2,
    get_model_status_pb2,
    inference_pb2,
    model_management_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
    regression_pb2,
)

from tfprod.codec import example, messages, tensor_proto
from tfprod.config.model_config import ConfigError, models_of
from tfprod.core import logs
from tfprod.errors import Code, ServingError, invalid
from tfprod.metrics import ServingMetrics
from tfprod.security.guard import Guard, client_address
from tfprod.server_core import ServerCore
from tfprod.service import ModelSpec, Routed, Service
from tfprod.signature import DEFAULT_SIGNATURE

log = logging.getLogger("tfprod.grpc")

T = TypeVar("T")

# TF Serving cuts gRPC error details to this many bytes and says so (grpc_status_util.cc).
MAX_ERROR_BYTES = 1024
_TRUNCATED = "...TRUNCATED"


def cut(message: str) -> str:
    data = message.encode("utf-8")
    if len(data) <= MAX_ERROR_BYTES:
        return message
    return data[:MAX_ERROR_BYTES].decode("utf-8", "ignore") + _TRUNCATED


# How long a reload without a deadline waits for new models (TF Serving would wait forever).
RELOAD_TIMEOUT_S = 300.0


def _first_repeated(names: tuple[str, ...]) -> str:
    return next(n for i, n in enumerate(names) if n in names[:i])


OFFLOAD_BYTES = 256 * 1024  # messages from this size are decoded on a worker thread, not on the event loop


class Runner:
    """Runs one RPC's work on the worker pool within its deadline; records metrics; answers
    errors with their gRPC codes. Shared by every gRPC service of the server."""

    def __init__(self, executor: concurrent.futures.Executor, metrics: ServingMetrics, guard: Guard,
                 max_timeout_s: float | None = None) -> None:
        self._executor = executor
        self._metrics = metrics
        self._guard = guard
        self._max_timeout_s = max_timeout_s

    async def __call__(self, context: grpc.aio.ServicerContext, model: str, api: str,
                       work: Callable[[], T] | Callable[[], Awaitable[T]]) -> T:
        started = time.perf_counter()
        status = Code.OK
        try:
            metadata = dict(context.invocation_metadata() or ())
            self._guard.admit(metadata.get("authorization"), metadata.get("x-api-key"),
                              client_address(context.peer()), model, api)
            timeout = context.time_remaining()
            if self._max_timeout_s is not None and (timeout is None or timeout > self._max_timeout_s):
                timeout = self._max_timeout_s
            with self._guard.slot():
                # The model APIs are coroutines (they await their batch on the loop); the rest runs on a thread.
                running = work() if inspect.iscoroutinefunction(work) else \
                    asyncio.get_running_loop().run_in_executor(self._executor, work)
                try:
                    return await asyncio.wait_for(running, timeout=timeout)  # type: ignore[arg-type]
                except TimeoutError:
                    raise ServingError(Code.DEADLINE_EXCEEDED, "Deadline exceeded") from None
        except ServingError as e:
            status = e.code
            if e.code == Code.UNAUTHENTICATED:
                model = ""  # a stranger's model names must not become metric series
            await context.abort(grpc.StatusCode[e.code.name], cut(e.message),
                                trailing_metadata=tuple(e.headers.items()))
        except asyncio.CancelledError:  # gRPC cancels the handler when the deadline passes or the client leaves
            remaining = context.time_remaining()  # the client's cancel can arrive just before our clock runs out
            status = Code.DEADLINE_EXCEEDED if remaining is not None and remaining < 0.1 else Code.CANCELLED
            raise
        except Exception as e:  # a bug answers INTERNAL and leaves the server serving
            log.exception("internal error in %s", api)
            status = Code.INTERNAL
            await context.abort(grpc.StatusCode.INTERNAL, cut(f"{type(e).__name__}: {e}"))
        finally:
            seconds = time.perf_counter() - started
            self._metrics.record_request(model, status.name, api, "GRPC", seconds)
            if logs.ACCESS.isEnabledFor(logging.INFO):
                metadata = dict(context.invocation_metadata() or ())
                logs.access("GRPC", api, model, status.name, seconds, client_address(context.peer()),
                            _text(metadata.get("x-request-id")))
        raise AssertionError("unreachable: context.abort raises")


class CredentialsFirst(grpc.aio.ServerInterceptor):
    """Refuse calls without valid credentials before their message is deserialized: a stranger's
    message is never parsed. The Runner then checks the caller's scope for the model."""

    def __init__(self, guard: Guard) -> None:
        self._guard = guard

    async def intercept_service(self, continuation: Any, details: grpc.HandlerCallDetails) -> Any:
        metadata = dict(details.invocation_metadata or ())  # type: ignore[attr-defined]
        api = details.method.rsplit("/", 1)[-1]  # type: ignore[attr-defined]
        try:
            self._guard.check_credentials(_text(metadata.get("authorization")), _text(metadata.get("x-api-key")), api)
        except ServingError as e:
            message = cut(e.message)

            async def refuse(request: bytes, context: grpc.aio.ServicerContext) -> None:
                await context.abort(grpc.StatusCode.UNAUTHENTICATED, message)
            return grpc.unary_unary_rpc_method_handler(refuse)  # no deserializer: the bytes stay bytes
        return await continuation(details)


def _text(value: str | bytes | None) -> str | None:
    return value.decode("latin-1") if isinstance(value, bytes) else value


def model_spec_of(request: Any, *, signature: bool = True) -> ModelSpec:
    if not request.HasField("model_spec"):
        raise invalid("Missing ModelSpec")
    spec = request.model_spec
    if not spec.name:
        raise invalid("ModelSpec has no name specified.")
    choice = spec.WhichOneof("version_choice")
    return ModelSpec(
        spec.name,
        spec.version.value if choice == "version" else None,
        spec.version_label if choice == "version_label" else None,
        (spec.signature_name or DEFAULT_SIGNATURE) if signature else DEFAULT_SIGNATURE,
    )


R = TypeVar("R")


async def routed_call(run: Runner, context: grpc.aio.ServicerContext, model: str, api: str,
                      work: Callable[[Any, Routed], Awaitable[R]], request: Any) -> R:
    """A model API call a rollout may route: the sticky key is read from the call's metadata, the
    arm that answered goes back as trailing metadata, and the shadow starts once the handler returns."""
    metadata = dict(context.invocation_metadata() or ())
    routed = Routed(lambda key: _text(metadata.get(key)))
    try:
        bound: Callable[[], Awaitable[R]] = functools.partial(work, request, routed)
        response: R = await run(context, model, api, bound)
        if routed.arm is not None:
            context.set_trailing_metadata(tuple(routed.headers().items()))
        return response
    finally:
        routed.start_shadow()


class PredictionServicer(prediction_service_pb2_grpc.PredictionServiceServicer):
    def __init__(self, service: Service, run: Runner) -> None:
        self._service = service
        self._run = run

    async def Predict(self, request: predict_pb2.PredictRequest, context: Any) -> predict_pb2.PredictResponse:
        return await routed_call(self._run, context, request.model_spec.name, "Predict", self._predict, request)

    async def Classify(self, request: classification_pb2.ClassificationRequest,
                       context: Any) -> classification_pb2.ClassificationResponse:
        return await routed_call(self._run, context, request.model_spec.name, "Classify", self._classify, request)

    async def Regress(self, request: regression_pb2.RegressionRequest,
                      context: Any) -> regression_pb2.RegressionResponse:
        return await routed_call(self._run, context, request.model_spec.name, "Regress", self._regress, request)

    async def MultiInference(self, request: inference_pb2.MultiInferenceRequest,
                             context: Any) -> inference_pb2.MultiInferenceResponse:
        model = request.tasks[0].model_spec.name if request.tasks else ""
        return await routed_call(self._run, context, model, "MultiInference", self._multi_inference, request)

    async def GetModelMetadata(self, request: get_model_metadata_pb2.GetModelMetadataRequest,
                               context: Any) -> get_model_metadata_pb2.GetModelMetadataResponse:
        return await self._run(context, request.model_spec.name, "GetModelMetadata",
                               lambda: self._metadata(request))

    # -- the model APIs run on the event loop (they await their batch), metadata on worker threads ----

    async def _predict(self, request: predict_pb2.PredictRequest, routed: Routed) -> predict_pb2.PredictResponse:
        spec = model_spec_of(request)
        output_filter = tuple(request.output_filter)
        if len(set(output_filter)) != len(output_filter):
            raise invalid(f"duplicate output tensor alias: {_first_repeated(output_filter)}")
        pred = await self._service.predict(spec, lambda sig: tensor_proto.to_inputs(request.inputs, sig),
                                           output_filter, offload=request.ByteSize() >= OFFLOAD_BYTES, routed=routed)
        response = predict_pb2.PredictResponse(
            model_spec=messages.model_spec(spec.name, pred.version, spec.signature_name))
        for name, arr in pred.outputs.items():
            response.outputs[name].CopyFrom(tensor_proto.to_response_proto(arr))
        return response

    async def _classify(self, request: classification_pb2.ClassificationRequest, routed: Routed
                        ) -> classification_pb2.ClassificationResponse:
        spec = model_spec_of(request)
        examples = example.examples_from_input(request.input)
        version, (classes, scores) = await self._service.classify(spec, examples, routed)
        return classification_pb2.ClassificationResponse(
            model_spec=messages.model_spec(spec.name, version, spec.signature_name),
            result=example.classification_result(classes, scores, len(examples)))

    async def _regress(self, request: regression_pb2.RegressionRequest,
                       routed: Routed) -> regression_pb2.RegressionResponse:
        spec = model_spec_of(request)
        examples = example.examples_from_input(request.input)
        version, values = await self._service.regress(spec, examples, routed)
        return regression_pb2.RegressionResponse(
            model_spec=messages.model_spec(spec.name, version, spec.signature_name),
            result=example.regression_result(values))

    async def _multi_inference(self, request: inference_pb2.MultiInferenceRequest, routed: Routed
                               ) -> inference_pb2.MultiInferenceResponse:
        if not request.tasks or not request.tasks[0].model_spec.name:
            raise invalid("ModelSpec has no name specified.")
        specs = [model_spec_of(task) for task in request.tasks]
        first = specs[0]
        signatures: set[str] = set()
        for spec in specs:
            if spec.name != first.name:
                raise invalid("All ModelSpecs in a MultiInferenceRequest must access the same model name.")
            if spec.signature_name in signatures:
                raise invalid(f"Duplicate evaluation of signature: {spec.signature_name}")
            signatures.add(spec.signature_name)
        examples = example.examples_from_input(request.input)
        tasks = [(spec.signature_name, task.method_name) for spec, task in zip(specs, request.tasks, strict=True)]
        version, results = await self._service.multi_inference(first, tasks, examples, routed)
        response = inference_pb2.MultiInferenceResponse()
        for spec, result in zip(specs, results, strict=True):
            entry = response.results.add(model_spec=messages.model_spec(spec.name, version, spec.signature_name))
            if isinstance(result, tuple):
                entry.classification_result.CopyFrom(example.classification_result(*result, len(examples)))
            else:
                entry.regression_result.CopyFrom(example.regression_result(result))
        return response

    def _metadata(self, request: get_model_metadata_pb2.GetModelMetadataRequest
                  ) -> get_model_metadata_pb2.GetModelMetadataResponse:
        if not request.metadata_field:
            raise invalid("GetModelMetadataRequest must specify at least one metadata_field")
        for field in request.metadata_field:
            if field != "signature_def":
                raise invalid(f"Metadata field {field} is not supported")  # TF Serving's text, its %s filled
        spec = model_spec_of(request, signature=False)
        version, meta_graph, _ = self._service.metadata(spec)
        response = get_model_metadata_pb2.GetModelMetadataResponse(model_spec=messages.model_spec(spec.name, version))
        response.metadata["signature_def"].Pack(messages.signature_def_map(meta_graph))
        return response


class ModelServicer(model_service_pb2_grpc.ModelServiceServicer):
    def __init__(self, service: Service, core: ServerCore, run: Runner) -> None:
        self._service = service
        self._core = core
        self._run = run

    async def GetModelStatus(self, request: get_model_status_pb2.GetModelStatusRequest,
                             context: Any) -> get_model_status_pb2.GetModelStatusResponse:
        return await self._run(context, request.model_spec.name, "GetModelStatus", lambda: self._status(request))

    async def HandleReloadConfigRequest(self, request: model_management_pb2.ReloadConfigRequest,
                                        context: Any) -> model_management_pb2.ReloadConfigResponse:
        timeout_s = context.time_remaining() or RELOAD_TIMEOUT_S
        return await self._run(context, "", "HandleReloadConfigRequest", lambda: self._reload(request, timeout_s))

    def _status(self, request: get_model_status_pb2.GetModelStatusRequest
                ) -> get_model_status_pb2.GetModelStatusResponse:
        spec = model_spec_of(request, signature=False)
        return messages.status_response(self._service.status(spec.name, spec.version, spec.label))

    def _reload(self, request: model_management_pb2.ReloadConfigRequest,
                timeout_s: float) -> model_management_pb2.ReloadConfigResponse:
        if request.config.WhichOneof("config") != "model_config_list":
            raise invalid("ServerModelConfig type not supported by HandleReloadConfigRequest. Only ModelConfigList "
                          "is currently supported")
        try:
            models = models_of(request.config)
        except ConfigError as e:
            raise invalid(str(e)) from None
        self._core.reload(models, timeout_s)
        return model_management_pb2.ReloadConfigResponse()  # status: error_code 0
