"""TLS and mutual TLS on the gRPC port, from TF Serving's SSLConfig (PEM text inline).

A CA, a server certificate (SAN: IP 127.0.0.1, DNS localhost) and a client certificate are made
at test time. Two servers start together: `tls` (server_key, server_cert) and `mtls` (also
custom_ca and client_verify). REST stays plain HTTP, which is how the fixtures see them ready.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import grpc
import numpy as np
import pytest
import tensorflow as tf
from conftest import ServerProcess
from pki import make_pki
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

TIMEOUT = 30
XS = np.array([1.0, 2.0, -3.25], np.float32)


@pytest.fixture(scope="module")
def pki() -> dict[str, bytes]:
    return make_pki()


def ssl_config(pki: dict[str, bytes], client_verify: bool) -> str:
    """An SSLConfig text proto as one writes it for TF Serving: PEM inline, newlines as \\n escapes."""
    def quoted(pem: bytes) -> str:
        return '"' + pem.decode().replace("\n", "\\n") + '"'

    text = f"server_key: {quoted(pki['server_key'])}\nserver_cert: {quoted(pki['server_cert'])}\n"
    if client_verify:
        text += f"custom_ca: {quoted(pki['ca'])}\nclient_verify: true\n"
    return text


@pytest.fixture(scope="module")
def servers(model_dir: str, start_server: Any, pki: dict[str, bytes], tmp_path_factory: pytest.TempPathFactory
            ) -> dict[str, ServerProcess]:
    cfg = tmp_path_factory.mktemp("tls")
    started = {}
    for name, client_verify in (("tls", False), ("mtls", True)):
        (cfg / f"{name}.config").write_text(ssl_config(pki, client_verify))
        started[name] = start_server([f"--model_base_path={os.path.join(model_dir, 'half_plus_two')}",
                                      "--model_name=half_plus_two", f"--ssl_config_file={cfg / f'{name}.config'}"],
                                     wait=False)
    return started


@pytest.fixture(scope="module")
def tls(servers: dict[str, ServerProcess]) -> ServerProcess:
    servers["tls"].wait_ready()
    return servers["tls"]


@pytest.fixture(scope="module")
def mtls(servers: dict[str, ServerProcess]) -> ServerProcess:
    servers["mtls"].wait_ready()
    return servers["mtls"]


@pytest.fixture(scope="module")
def expected(model_dir: str) -> list[float]:
    model = tf.saved_model.load(os.path.join(model_dir, "half_plus_two", "1"))
    return model.signatures["serving_default"](x=tf.constant(XS))["y"].numpy().tolist()


def predict(channel: grpc.Channel, timeout: float = TIMEOUT) -> predict_pb2.PredictResponse:
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "half_plus_two"
    request.inputs["x"].CopyFrom(tf.make_tensor_proto(XS))
    return prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict(request, timeout=timeout)


def y_of(response: predict_pb2.PredictResponse) -> list[float]:
    return tf.make_ndarray(response.outputs["y"]).tolist()


@pytest.fixture
def secure_channel() -> Iterator[Any]:
    """secure_channel(server, credentials, target_host): a TLS channel, closed after the test."""
    channels: list[grpc.Channel] = []

    def make(server: ServerProcess, credentials: grpc.ChannelCredentials, host: str = "127.0.0.1") -> grpc.Channel:
        channel = grpc.secure_channel(f"{host}:{server.grpc_port}", credentials)
        channels.append(channel)
        return channel

    yield make
    for channel in channels:
        channel.close()


def failure(call: Any) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        call()
    return info.value


def test_tls_client_gets_answers(tls: ServerProcess, pki: dict[str, bytes], secure_channel: Any,
                                 expected: list[float]) -> None:
    credentials = grpc.ssl_channel_credentials(root_certificates=pki["ca"])
    assert y_of(predict(secure_channel(tls, credentials))) == expected  # verified by IP SAN
    by_name = grpc.secure_channel(tls.grpc_target, credentials, options=[("grpc.ssl_target_name_override",
                                                                          "localhost")])
    with by_name:
        assert y_of(predict(by_name)) == expected  # and by DNS SAN


def test_plaintext_client_is_refused_by_the_tls_port(tls: ServerProcess, expected: list[float]) -> None:
    with grpc.insecure_channel(tls.grpc_target) as channel:
        err = failure(lambda: predict(channel, timeout=5))
    assert err.code() == grpc.StatusCode.UNAVAILABLE, err.details()
    assert tls.proc.poll() is None


def test_client_that_does_not_trust_the_server_is_refused(tls: ServerProcess, secure_channel: Any) -> None:
    err = failure(lambda: predict(secure_channel(tls, grpc.ssl_channel_credentials()), timeout=5))
    assert err.code() == grpc.StatusCode.UNAVAILABLE, err.details()


def test_mutual_tls_client_with_its_certificate_gets_answers(mtls: ServerProcess, pki: dict[str, bytes],
                                                             secure_channel: Any, expected: list[float]) -> None:
    credentials = grpc.ssl_channel_credentials(root_certificates=pki["ca"], private_key=pki["client_key"],
                                               certificate_chain=pki["client_cert"])
    assert y_of(predict(secure_channel(mtls, credentials))) == expected


@pytest.mark.parametrize("client", ["no-certificate", "certificate-from-another-ca"])
def test_mutual_tls_refuses_clients_without_a_trusted_certificate(
        mtls: ServerProcess, pki: dict[str, bytes], secure_channel: Any, expected: list[float], client: str) -> None:
    if client == "no-certificate":
        credentials = grpc.ssl_channel_credentials(root_certificates=pki["ca"])
    else:
        credentials = grpc.ssl_channel_credentials(root_certificates=pki["ca"], private_key=pki["client_key"],
                                                   certificate_chain=pki["stranger_cert"])
    err = failure(lambda: predict(secure_channel(mtls, credentials), timeout=5))
    assert err.code() == grpc.StatusCode.UNAVAILABLE, err.details()
    # the server goes on serving clients that present their certificate
    good = grpc.ssl_channel_credentials(root_certificates=pki["ca"], private_key=pki["client_key"],
                                        certificate_chain=pki["client_cert"])
    assert y_of(predict(secure_channel(mtls, good))) == expected


def test_plaintext_client_is_refused_by_the_mtls_port(mtls: ServerProcess) -> None:
    with grpc.insecure_channel(mtls.grpc_target) as channel:
        err = failure(lambda: predict(channel, timeout=5))
    assert err.code() == grpc.StatusCode.UNAVAILABLE, err.details()

