"""The V2 / Open Inference Protocol over the same models, versions and labels as TF Serving's API.

`V2Models` holds what the protocol means here, once for both transports: the REST routes in
`tfprod.api.rest` and `V2Servicer` (gRPC `inference.GRPCInferenceService`) only move bytes.
V2 runs a model's `serving_default` signature unless the request's `signature_name` parameter
names another. The model repository extension loads and unloads models of the running config.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from tfprod import __version__
from tfprod.api.grpc_api import OFFLOAD_BYTES, Runner, routed_call
from tfprod.codec import v2
from tfprod.errors import Code, ServingError, invalid
from tfprod.protos import grpc_predict_v2_pb2 as pb
from tfprod.protos import grpc_predict_v2_pb2_grpc as pb_grpc
from tfprod.server_core import ServerCore
from tfprod.service import ModelSpec, Prediction, Routed, Service
from tfprod.signature import DEFAULT_SIGNATURE

PLATFORM = "tensorflow_savedmodel"  # Triton's name for the platform
EXTENSIONS = ("binary_tensor_data", "model_repository")


def parse_version(text: str) -> int | None:
    """V2 versions are strings; empty means the latest AVAILABLE one."""
    if not text:
        return None
    if not (text.isascii() and text.isdigit()) or int(text) > 2**63 - 1:
        raise invalid(f"model version must be a non-negative integer, got '{text[:64]}'")
    return int(text)


def refuse_overrides(parameters: Iterable[str]) -> None:
    """Triton's load can carry a model config override and model files; here models come from the model
    config, so such a load is refused rather than silently ignored. Other parameters do not matter."""
    if any(key == "config" or key.startswith("file:") for key in parameters):
        raise ServingError(Code.UNIMPLEMENTED, "loading with a config override or model files is not supported: "
                           "models come from the model config; change it (--model_config_file or "
                           "HandleReloadConfigRequest) instead")


class V2Models:
    def __init__(self, service: Service, core: ServerCore) -> None:
        self._service = service
        self._core = core

    def server_metadata(self) -> dict[str, Any]:
        return {"name": "tfprod", "version": __version__, "extensions": list(EXTENSIONS)}

    def server_ready(self) -> bool:
        return not self._core.not_ready()

    def model_ready(self, name: str, version: str) -> bool:
        number = parse_version(version)
        available = self._service.available_versions(name)
        return bool(available) if number is None else number in available

    def model_metadata(self, name: str, version: str, signature_name: str = DEFAULT_SIGNATURE) -> dict[str, Any]:
        spec = ModelSpec(name, parse_version(version), signature_name=signature_name)
        _, sig = self._service.signature(spec)
        available = self._service.available_versions(name)
        return {
            "name": name,
            "versions": [str(v) for v in available],
            "platform": PLATFORM,
            "inputs": [v2.tensor_metadata(info) for info in sig.inputs.values()],
            "outputs": [v2.tensor_metadata(info) for info in sig.outputs.values()],
        }

    async def infer(self, name: str, version: str, request: v2.V2Request, offload: bool = False,
                    routed: Routed | None = None) -> Prediction:
        signature_name = request.parameters.get("signature_name", DEFAULT_SIGNATURE)
        if not isinstance(signature_name, str):
            raise invalid("parameter 'signature_name' must be a string")
        spec = ModelSpec(name, parse_version(version), signature_name=signature_name)
        return await self._service.predict(spec, lambda sig: v2.to_inputs(request, sig),
                                           lambda sig: tuple(v2.requested_outputs(request, sig)), offload, routed)

    def index(self, ready_only: bool) -> list[dict[str, str]]:
        return [{"name": name, "state": state, "reason": reason} for name, state, reason in self._core.index()
                if state == "READY" or not ready_only]

    def load(self, name: str, timeout_s: float) -> None:
        self._core.load(name, timeout_s)

    def unload(self, name: str) -> None:
        self._core.unload(name)


class V2Servicer(pb_grpc.GRPCInferenceServiceServicer):
    """`inference.GRPCInferenceService`, on the gRPC port beside TF Serving's services."""

    def __init__(self, models: V2Models, run: Runner, load_timeout_s: float) -> None:
        self._models = models
        self._run = run
        self._load_timeout_s = load_timeout_s

    async def ServerLive(self, request: pb.ServerLiveRequest, context: Any) -> pb.ServerLiveResponse:
        return pb.ServerLiveResponse(live=True)

    async def ServerReady(self, request: pb.ServerReadyRequest, context: Any) -> pb.ServerReadyResponse:
        return await self._run(context, "", "ServerReady", lambda: pb.ServerReadyResponse(  # a pool asks every worker
            ready=self._models.server_ready()))

    async def ModelReady(self, request: pb.ModelReadyRequest, context: Any) -> pb.ModelReadyResponse:
        return await self._run(context, request.name, "ModelReady", lambda: pb.ModelReadyResponse(
            ready=self._models.model_ready(request.name, request.version)))

    async def ServerMetadata(self, request: pb.ServerMetadataRequest, context: Any) -> pb.ServerMetadataResponse:
        return pb.ServerMetadataResponse(**self._models.server_metadata())

    async def ModelMetadata(self, request: pb.ModelMetadataRequest, context: Any) -> pb.ModelMetadataResponse:
        def work() -> pb.ModelMetadataResponse:
            doc = self._models.model_metadata(request.name, request.version)
            response = pb.ModelMetadataResponse(name=doc["name"], versions=doc["versions"], platform=doc["platform"])
            for kind in ("inputs", "outputs"):
                getattr(response, kind).extend(pb.ModelMetadataResponse.TensorMetadata(**t) for t in doc[kind])
            return response
        return await self._run(context, request.name, "ModelMetadata", work)

    async def ModelInfer(self, request: pb.ModelInferRequest, context: Any) -> pb.ModelInferResponse:
        return await routed_call(self._run, context, request.model_name, "ModelInfer", self._infer, request)

    async def _infer(self, request: pb.ModelInferRequest, routed: Routed) -> pb.ModelInferResponse:
        parsed = v2.parse_grpc(request)
        result = await self._models.infer(request.model_name, request.model_version, parsed,
                                          offload=request.ByteSize() >= OFFLOAD_BYTES, routed=routed)
        return v2.format_grpc(request.model_name, str(result.version), parsed, result.outputs, result.signature)

    async def RepositoryIndex(self, request: pb.RepositoryIndexRequest, context: Any) -> pb.RepositoryIndexResponse:
        def work() -> pb.RepositoryIndexResponse:
            return pb.RepositoryIndexResponse(models=[pb.RepositoryIndexResponse.ModelIndex(**m)
                                                      for m in self._models.index(request.ready)])
        return await self._run(context, "", "RepositoryIndex", work)

    async def RepositoryModelLoad(self, request: pb.RepositoryModelLoadRequest,
                                  context: Any) -> pb.RepositoryModelLoadResponse:
        timeout_s = context.time_remaining() or self._load_timeout_s

        def work() -> pb.RepositoryModelLoadResponse:
            refuse_overrides(request.parameters)
            self._models.load(request.model_name, timeout_s)
            return pb.RepositoryModelLoadResponse()
        return await self._run(context, request.model_name, "RepositoryModelLoad", work)

    async def RepositoryModelUnload(self, request: pb.RepositoryModelUnloadRequest,
                                    context: Any) -> pb.RepositoryModelUnloadResponse:
        def work() -> pb.RepositoryModelUnloadResponse:
            self._models.unload(request.model_name)
            return pb.RepositoryModelUnloadResponse()
        return await self._run(context, request.model_name, "RepositoryModelUnload", work)

