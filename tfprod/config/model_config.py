"""TF Serving's text-proto config files -> frozen options.

Parsed with `google.protobuf.text_format` against TF Serving's own messages, so a file that
works with `tensorflow_model_server` works here, and a bad one fails with the same words.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from typing import Any

from google.protobuf import text_format
from tensorflow_serving.config import model_server_config_pb2

from tfprod.batching import BatchingOptions
from tfprod.config.protos import BatchingParameters, MonitoringConfig, SSLConfig
from tfprod.core.remote import is_remote
from tfprod.core.version_policy import All, Latest, Specific, VersionPolicy

DEFAULT_METRICS_PATH = "/monitoring/prometheus/metrics"
PLATFORMS = ("", "tensorflow")


class ConfigError(ValueError):
    pass


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    name: str
    base_path: str
    policy: VersionPolicy = Latest()
    labels: Mapping[str, int] = dataclasses.field(default_factory=dict)


def _policy(config: model_server_config_pb2.ModelConfig) -> VersionPolicy:
    policy = config.model_version_policy
    which = policy.WhichOneof("policy_choice")
    if which == "all":
        return All()
    if which == "specific":
        if not policy.specific.versions:
            raise ConfigError(f"model {config.name!r}: 'specific' version policy lists no versions")
        return Specific(frozenset(policy.specific.versions))
    if which == "latest" and policy.latest.num_versions:
        return Latest(policy.latest.num_versions)
    return Latest()


def parse_model_server_config(text: str) -> list[ModelConfig]:
    config = model_server_config_pb2.ModelServerConfig()
    try:
        text_format.Parse(text, config)
    except text_format.ParseError as e:
        raise ConfigError(f"Error parsing text-format tensorflow.serving.ModelServerConfig: {e}") from None
    return models_of(config)


def models_of(config: model_server_config_pb2.ModelServerConfig) -> list[ModelConfig]:
    """A ModelServerConfig message (from a file or a gRPC ReloadConfigRequest) -> model options."""
    if config.WhichOneof("config") == "custom_model_config":
        raise ConfigError("custom_model_config is not supported; use model_config_list")
    models: list[ModelConfig] = []
    for m in config.model_config_list.config:
        if not m.name:
            raise ConfigError("a model in model_config_list has no name")
        if not m.base_path:
            raise ConfigError(f"model {m.name!r} has no base_path")
        if m.model_platform not in PLATFORMS:
            raise ConfigError(f"model {m.name!r}: model_platform {m.model_platform!r} is not supported "
                              f"(supported: {', '.join(repr(p) for p in PLATFORMS if p)})")
        if any(x.name == m.name for x in models):
            raise ConfigError(f"model name {m.name!r} appears twice in model_config_list")
        base_path = m.base_path if is_remote(m.base_path) else os.path.abspath(m.base_path)
        models.append(ModelConfig(m.name, base_path, _policy(m), dict(m.version_labels)))
    return models


def read_model_config_file(path: str) -> list[ModelConfig]:
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as e:
        raise ConfigError(f"cannot read --model_config_file {path}: {e.strerror}") from None
    return parse_model_server_config(text)


def _read_text_proto(path: str, message: Any, flag: str) -> Any:
    try:
        with open(path, encoding="utf-8") as f:
            text_format.Parse(f.read(), message)
    except OSError as e:
        raise ConfigError(f"cannot read --{flag} {path}: {e.strerror}") from None
    except text_format.ParseError as e:
        raise ConfigError(f"Error parsing text-format {message.DESCRIPTOR.full_name}: {e}") from None
    return message


def read_monitoring_config(path: str) -> str | None:
    """The Prometheus endpoint's path, or None when Prometheus is off."""
    config = _read_text_proto(path, MonitoringConfig(), "monitoring_config_file")
    prometheus = config.prometheus_config
    if not prometheus.enable:
        return None
    metrics_path = prometheus.path or DEFAULT_METRICS_PATH
    if not metrics_path.startswith("/"):
        raise ConfigError(f"prometheus_config.path must start with '/': {metrics_path!r}")
    return metrics_path


@dataclasses.dataclass(frozen=True)
class SslOptions:
    server_key: str
    server_cert: str
    custom_ca: str = ""
    client_verify: bool = False


def read_ssl_config(path: str) -> SslOptions:
    """TF Serving's SSLConfig: PEM texts inline, as TF Serving reads them."""
    config = _read_text_proto(path, SSLConfig(), "ssl_config_file")
    if not config.server_key or not config.server_cert:
        raise ConfigError(f"--ssl_config_file {path}: server_key and server_cert must both be set (PEM text)")
    if config.client_verify and not config.custom_ca:
        raise ConfigError(f"--ssl_config_file {path}: client_verify needs custom_ca, the PEM of the CA that "
                          "signs client certificates")
    return SslOptions(config.server_key, config.server_cert, config.custom_ca, config.client_verify)


def read_batching_parameters(path: str) -> BatchingOptions:
    """TF Serving's BatchingParameters text proto -> checked options; unset fields take TF Serving's
    defaults."""
    params = _read_text_proto(path, BatchingParameters(), "batching_parameters_file")
    defaults = BatchingOptions()

    def value(name: str) -> Any:
        return getattr(params, name).value if params.HasField(name) else getattr(defaults, name)

    options = BatchingOptions(
        max_batch_size=value("max_batch_size"),
        batch_timeout_micros=value("batch_timeout_micros"),
        max_enqueued_batches=value("max_enqueued_batches"),
        num_batch_threads=value("num_batch_threads"),
        allowed_batch_sizes=tuple(params.allowed_batch_sizes),
        pad_variable_length_inputs=params.pad_variable_length_inputs,
        enable_large_batch_splitting=value("enable_large_batch_splitting"),
        max_execution_batch_size=value("max_execution_batch_size"),
    )
    try:
        options.validate()
    except ValueError as e:
        raise ConfigError(f"{path}: {e}") from None
    return options
