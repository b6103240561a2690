"""`tfprod serve` takes tensorflow_model_server's flags, spellings and defaults."""

from __future__ import annotations

import os
import subprocess
import sys
from typing import Any

import pytest
from conftest import ServerProcess

from tfprod.cli import serve_parser

TF_SERVING_FLAGS = [
    "port", "rest_api_port", "model_name", "model_base_path", "model_config_file",
    "model_config_file_poll_wait_seconds", "file_system_poll_wait_seconds", "rest_api_timeout_in_ms",
    "rest_api_enable_cors_support", "allow_version_labels_for_unavailable_models", "monitoring_config_file",
    "max_num_load_retries", "load_retry_interval_micros", "saved_model_tags", "rest_api_num_threads",
]


def tfprod(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "tfprod", *args], capture_output=True, text=True, timeout=timeout)


def test_help_documents_every_flag() -> None:
    result = tfprod("serve", "--help", timeout=20)
    assert result.returncode == 0
    for flag in TF_SERVING_FLAGS:
        assert f"--{flag}" in result.stdout, flag


def test_defaults_are_tf_servings() -> None:
    args = serve_parser().parse_args([])
    assert (args.port, args.rest_api_port, args.model_name, args.rest_api_timeout_in_ms) == (8500, 0, "default", 30000)
    assert (args.max_num_load_retries, args.load_retry_interval_micros) == (5, 60_000_000)
    # not given: TF Serving's 1 s for local base paths, 30 s for object storage (docs/kubernetes.md)
    assert (args.file_system_poll_wait_seconds, args.model_config_file_poll_wait_seconds) == (None, 0)
    assert args.saved_model_tags == "serve"
    assert args.rest_api_enable_cors_support is False


@pytest.mark.parametrize("argv", [
    pytest.param(["--rest_api_port=9001", "--model_name=m", "--rest_api_enable_cors_support=true"], id="equals"),
    pytest.param(["--rest_api_port", "9001", "--model_name", "m", "--rest_api_enable_cors_support"], id="space"),
    pytest.param(["--rest_api_port", "9001", "--model_name=m", "--rest_api_enable_cors_support", "1"], id="mixed"),
])
def test_both_flag_spellings(argv: list[str]) -> None:
    args = serve_parser().parse_args(argv)
    assert (args.rest_api_port, args.model_name, args.rest_api_enable_cors_support) == (9001, "m", True)


def test_absl_negative_booleans() -> None:
    args = serve_parser().parse_args(["--rest_api_enable_cors_support", "--norest_api_enable_cors_support"])
    assert args.rest_api_enable_cors_support is False


@pytest.mark.parametrize(("args", "message"), [
    pytest.param(["--rest_api_port=8501"], "give --model_base_path", id="no-model"),
    pytest.param(["--port=0", "--model_base_path=/tmp/x"], "nothing to serve on", id="no-port"),
    pytest.param(["--rest_api_port=8501", "--model_base_path=/tmp/x", "--grpc_channel_arguments=novalue"],
                 "expected key=value", id="bad-channel-arguments"),
    pytest.param(["--rest_api_port=8501", "--model_base_path=/tmp/x", "--ssl_config_file=/does/not/exist"],
                 "cannot read --ssl_config_file", id="missing-ssl-config"),
    pytest.param(["--rest_api_port=8500", "--model_base_path=/tmp/x"], "both 8500", id="same-ports"),
    pytest.param(["--rest_api_port=8501", "--model_config_file=/does/not/exist"], "cannot read --model_config_file",
                 id="missing-config"),
    pytest.param(["--rest_api_port=8501", "--rest_api_timeout_in_ms=soon"], "invalid int value", id="bad-int"),
    pytest.param(["--rest_api_port=8501", "--model_base_path=/tmp/x", "--tensorflow_session_parallelism=2",
                  "--tensorflow_intra_op_parallelism=2", "--tensorflow_inter_op_parallelism=2"],
                 "You cannot configure all.", id="all-three-parallelisms"),
])
def test_startup_errors_are_clear(args: list[str], message: str) -> None:
    result = tfprod("serve", *args)
    assert result.returncode != 0
    assert message in result.stderr
    assert "Traceback" not in result.stderr


def test_bad_monitoring_config_is_refused(tmp_path: Any) -> None:
    cfg = tmp_path / "monitoring.config"
    cfg.write_text("prometheus_config { enabled: true }")
    result = tfprod("serve", "--rest_api_port=8501", "--model_base_path=/tmp/x", f"--monitoring_config_file={cfg}")
    assert result.returncode != 0
    assert "Error parsing text-format tensorflow.serving.MonitoringConfig" in result.stderr


def test_space_separated_flags_serve(model_dir: str, start_server: Any) -> None:
    server: ServerProcess = start_server(["--model_name", "hp", "--model_base_path",
                                          os.path.join(model_dir, "half_plus_two"), "--saved_model_tags", "serve"])
    r = server.client.post("/v1/models/hp:predict", json={"instances": [0.0]})
    assert r.json() == {"predictions": [2.0]}
    assert server.stop() == 0
