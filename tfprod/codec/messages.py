"""TF Serving's status and metadata messages, built once for every front end.

gRPC sends them as they are; REST writes them as JSON with `json_format`, as TF Serving does.
"""

from __future__ import annotations

from tensorflow.core.protobuf import meta_graph_pb2
from tensorflow_serving.apis import get_model_metadata_pb2, get_model_status_pb2, model_pb2

from tfprod.core.manager import VersionStatus


def model_spec(name: str, version: int, signature_name: str = "") -> model_pb2.ModelSpec:
    """The resolved spec a response echoes: the version number, never the label asked for."""
    spec = model_pb2.ModelSpec(name=name, signature_name=signature_name)
    spec.version.value = version
    return spec


def status_response(statuses: list[VersionStatus]) -> get_model_status_pb2.GetModelStatusResponse:
    response = get_model_status_pb2.GetModelStatusResponse()
    for s in statuses:
        entry = response.model_version_status.add(version=s.version, state=s.state.value)
        entry.status.error_code = s.error.code.value if s.error else 0
        entry.status.error_message = s.error.message if s.error else ""
    return response


def signature_def_map(meta_graph: meta_graph_pb2.MetaGraphDef) -> get_model_metadata_pb2.SignatureDefMap:
    sig_map = get_model_metadata_pb2.SignatureDefMap()
    for name, sig in meta_graph.signature_def.items():
        sig_map.signature_def[name].CopyFrom(sig)
    return sig_map
