"""TF Serving config messages that `tensorflow-serving-api` does not ship.

The PyPI package carries ModelServerConfig but not monitoring_config.proto or ssl_config.proto.
Rather than invent another format, the messages are declared here with TF Serving's package,
names and field numbers, so the same text-proto files parse and error messages name
`tensorflow.serving.*` as TF Serving's do. If a later tensorflow-serving-api ships them, those
are used.
"""

from __future__ import annotations

from typing import Any

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory, wrappers_pb2  # noqa: F401

_F = descriptor_pb2.FieldDescriptorProto


def _declare(full_name: str, file: descriptor_pb2.FileDescriptorProto) -> Any:
    pool = descriptor_pool.Default()
    try:
        return message_factory.GetMessageClass(pool.FindMessageTypeByName(full_name))
    except KeyError:
        pool.Add(file)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName(full_name))


def _file(name: str) -> descriptor_pb2.FileDescriptorProto:
    return descriptor_pb2.FileDescriptorProto(name=f"tensorflow_serving/config/{name}",
                                              package="tensorflow.serving", syntax="proto3")


def _field(message: descriptor_pb2.DescriptorProto, name: str, number: int, kind: int, type_name: str = "") -> None:
    field = message.field.add(name=name, number=number, type=kind, label=_F.LABEL_OPTIONAL)
    if type_name:
        field.type_name = type_name


_monitoring = _file("monitoring_config.proto")
_prometheus = _monitoring.message_type.add(name="PrometheusConfig")
_field(_prometheus, "enable", 1, _F.TYPE_BOOL)
_field(_prometheus, "path", 2, _F.TYPE_STRING)
_field(_monitoring.message_type.add(name="MonitoringConfig"), "prometheus_config", 1, _F.TYPE_MESSAGE,
       ".tensorflow.serving.PrometheusConfig")
MonitoringConfig = _declare("tensorflow.serving.MonitoringConfig", _monitoring)

_ssl = _file("ssl_config.proto")
_ssl_config = _ssl.message_type.add(name="SSLConfig")
_field(_ssl_config, "server_key", 1, _F.TYPE_STRING)
_field(_ssl_config, "server_cert", 2, _F.TYPE_STRING)
_field(_ssl_config, "custom_ca", 3, _F.TYPE_STRING)
_field(_ssl_config, "client_verify", 4, _F.TYPE_BOOL)
SSLConfig = _declare("tensorflow.serving.SSLConfig", _ssl)

# session_bundle_config.proto's BatchingParameters: the scalar settings are wrapper messages
# (`max_batch_size { value: 128 }`), as in TF Serving's files.
_batching = _file("session_bundle_config.proto")
_batching.dependency.append("google/protobuf/wrappers.proto")
_params = _batching.message_type.add(name="BatchingParameters")
for _name, _number, _wrapper in (("max_batch_size", 1, "Int64Value"), ("batch_timeout_micros", 2, "Int64Value"),
                                 ("max_enqueued_batches", 3, "Int64Value"), ("num_batch_threads", 4, "Int64Value"),
                                 ("thread_pool_name", 5, "StringValue"),
                                 ("enable_large_batch_splitting", 8, "BoolValue"),
                                 ("max_execution_batch_size", 9, "Int64Value")):
    _field(_params, _name, _number, _F.TYPE_MESSAGE, f".google.protobuf.{_wrapper}")
_params.field.add(name="allowed_batch_sizes", number=6, type=_F.TYPE_INT64, label=_F.LABEL_REPEATED)
_field(_params, "pad_variable_length_inputs", 7, _F.TYPE_BOOL)
BatchingParameters = _declare("tensorflow.serving.BatchingParameters", _batching)
