"""Warmup records: written by `tfprod warmup` in TF Serving's format, replayed before a version takes
traffic (visible in the metric and the log); a corrupt file fails that version, not the one serving."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from typing import Any

import numpy as np
import saved_models
import tensorflow as tf
from conftest import ServerProcess
from tensorflow_serving.apis import prediction_log_pb2

from tfprod.export.warmup import WARMUP_FILE


def test_warmup_is_written_replayed_and_a_corrupt_file_refused(tmp_path: Any, start_server: Any) -> None:
    base = tmp_path / "w"
    saved_models.half_plus_two(str(base / "1"))
    request = tmp_path / "request.json"
    request.write_text(json.dumps({"instances": [1.0, 2.0]}))
    classify = tmp_path / "bad_signature.json"
    classify.write_text(json.dumps({"signature_name": "nope", "instances": [1.0]}))
    bad = subprocess.run([sys.executable, "-m", "tfprod", "warmup", str(base / "1"), str(classify)],
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode != 0 and "signature 'nope' is not in the SavedModel" in bad.stderr
    done = subprocess.run([sys.executable, "-m", "tfprod", "warmup", str(base / "1"), str(request), str(request)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr

    records = [r.numpy() for r in tf.data.TFRecordDataset(str(base / "1" / WARMUP_FILE))]
    assert len(records) == 2
    log = prediction_log_pb2.PredictionLog.FromString(records[0])
    np.testing.assert_array_equal(tf.make_ndarray(log.predict_log.request.inputs["x"]), [1.0, 2.0])

    monitoring = tmp_path / "monitoring.config"
    monitoring.write_text("prometheus_config { enable: true }")
    server: ServerProcess = start_server([f"--model_base_path={base}", "--model_name=w",
                                          "--num_request_iterations_for_warmup=3", "--max_num_load_retries=0",
                                          f"--monitoring_config_file={monitoring}"])
    assert "warmed up w version 1: 2 records" in server.log()
    metrics = server.client.get("/monitoring/prometheus/metrics").text
    assert ':tensorflow:serving:model_warmup_latency_count{model_name="w"} 1.0' in metrics

    staged = tmp_path / "staged"  # version 2 with a corrupt warmup file
    shutil.copytree(base / "1", staged)
    (staged / WARMUP_FILE).write_bytes(b"\x00garbage, not a TFRecord" * 10)
    os.rename(staged, base / "2")
    server.wait_until(lambda: any(s["version"] == "2" and s["state"] == "END" for s in
                                  server.client.get("/v1/models/w").json()["model_version_status"]), 60,
                      "version 2 to fail")
    status = {s["version"]: s for s in server.client.get("/v1/models/w").json()["model_version_status"]}
    assert "warmup" in status["2"]["status"]["error_message"]
    assert status["1"]["state"] == "AVAILABLE"
    assert server.client.post("/v1/models/w:predict", json={"instances": [4.0]}).json() == {"predictions": [4.0]}
