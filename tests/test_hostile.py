"""Hostile input never crashes or hangs the server: each gets a clear 4xx, the next is served."""

from __future__ import annotations

import gzip
import json
import os
import socket
import time
from typing import Any

import pytest
from conftest import ServerProcess

LIMIT = 256 * 1024


@pytest.fixture(scope="module")
def server(model_dir: str, start_server: Any, tmp_path_factory: pytest.TempPathFactory) -> ServerProcess:
    config = tmp_path_factory.mktemp("hostile") / "models.config"
    config.write_text("model_config_list { " + " ".join(
        f'config {{ name: "{name}" base_path: "{os.path.join(model_dir, name)}" }}'
        for name in ("half_plus_two", "slow")) + " }")
    return start_server([f"--model_config_file={config}", f"--rest_api_max_body_bytes={LIMIT}",
                         "--rest_api_enable_cors_support=true", "--rest_api_timeout_in_ms=1000"])


def assert_still_serving(server: ServerProcess) -> None:
    r = server.client.post("/v1/models/half_plus_two:predict", content=b'{"instances": [1.0]}')
    assert (r.status_code, r.json()) == (200, {"predictions": [2.5]})


@pytest.mark.parametrize(("body", "headers", "status", "message"), [
    pytest.param(b"{not json", {}, 400, "JSON Parse error", id="malformed"),
    pytest.param(b"", {}, 400, "The document is empty", id="empty"),
    pytest.param(b'{"instances": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", {}, 400, "JSON Parse error",
                 id="100k-deep-nesting"),
    pytest.param(b'{"instances": [NaN, ' + b"[" * 50_000 + b"]" * 50_000 + b"]}", {}, 400,
                 "nested too deeply", id="deep-nesting-slow-path"),
    pytest.param(b'{"instances": [[1, 2], [3]]}', {}, 400, "Expecting shape [2] but got: [1]", id="ragged"),
    pytest.param(b'{"instances": [{"x": 1.0}, 2.0]}', {}, 400, "Expecting object but got value/list at item 1",
                 id="mixed"),
    pytest.param(b'{"instances": ["1.0"]}', {}, 400, "is not of expected type: DT_FLOAT", id="string-for-float"),
    pytest.param(b'{"instances": [1e400]}', {}, 400, "JSON Parse error", id="number-overflow"),
    pytest.param(b'{"signature_name": 5, "instances": [1.0]}', {}, 400, "'signature_name' key must be a string",
                 id="signature-not-string"),
    pytest.param(b'{"instances": [' + b"1.0," * (LIMIT // 4) + b"1.0]}", {}, 413, "larger than the limit",
                 id="oversized-body"),
    pytest.param(gzip.compress(b'{"instances": [' + b"0," * (LIMIT * 4) + b"0]}"), {"Content-Encoding": "gzip"},
                 413, "larger than the limit", id="gzip-bomb"),
    pytest.param(b"\x1f\x8bnot really gzip", {"Content-Encoding": "gzip"}, 400, "not valid gzip", id="bad-gzip"),
])
def test_hostile_bodies(server: ServerProcess, body: bytes, headers: dict[str, str], status: int,
                        message: str) -> None:
    r = server.client.post("/v1/models/half_plus_two:predict", content=body, headers=headers)
    assert r.status_code == status, r.text[:500]
    assert message in r.json()["error"]
    assert len(r.text) < 2000  # errors quote the client's input briefly, never the whole body
    assert_still_serving(server)


def test_oversized_body_is_refused_before_it_is_read(server: ServerProcess) -> None:
    """A client that claims a huge body is answered at once, without the server reading it."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as s:
        s.sendall(b"POST /v1/models/half_plus_two:predict HTTP/1.1\r\nHost: x\r\n"
                  b"Content-Length: 10000000000\r\n\r\n{")
        reply = s.recv(4096)
    assert reply.startswith(b"HTTP/1.1 413")
    assert_still_serving(server)


def test_garbage_on_the_socket(server: ServerProcess) -> None:
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as s:
        s.sendall(b"\x00\x01\x02 NOT HTTP AT ALL\r\n\r\n")
        reply = s.recv(4096)
    assert reply == b"" or reply.startswith(b"HTTP/1.1 400")
    assert_still_serving(server)


def test_cors_headers_and_preflight(server: ServerProcess) -> None:
    r = server.client.post("/v1/models/half_plus_two:predict", content=b'{"instances": [1.0]}')
    assert r.headers["access-control-allow-origin"] == "*"
    assert r.headers["access-control-allow-methods"] == "POST, GET"
    r = server.client.post("/v1/models/nope:predict", content=b'{"instances": [1.0]}')
    assert r.status_code == 404 and r.headers["access-control-allow-origin"] == "*"  # errors too
    r = server.client.options("/v1/models/half_plus_two:predict", headers={"Origin": "https://app.example"})
    allowed = r.headers["access-control-allow-headers"]
    assert r.status_code == 200 and allowed == "Content-Type, Authorization, X-API-Key"  # credentials too
    assert server.client.options("/v1/models/half_plus_two:predict").status_code == 400


def test_many_bad_requests_then_good(server: ServerProcess) -> None:
    for i in range(50):
        ragged = [[i] * (i % 3 + 1), [i] * (i % 3 + 2)]  # rows of unequal length: no tensor at all
        r = server.client.post("/v1/models/half_plus_two:predict", content=json.dumps({"instances": ragged}))
        assert r.status_code == 400
    assert_still_serving(server)


def test_request_past_the_timeout_gets_504(server: ServerProcess) -> None:
    started = time.monotonic()
    r = server.client.post("/v1/models/slow:predict", content=b'{"instances": [2.5]}')
    assert r.status_code == 504
    assert "timed out after 1000 ms" in r.json()["error"]
    assert time.monotonic() - started < 2.4  # answered at the deadline, not when the model finished
    assert_still_serving(server)
    r = server.client.post("/v1/models/slow:predict", content=b'{"instances": [0.1]}')
    assert (r.status_code, r.json()) == (200, {"predictions": [0.1]})
