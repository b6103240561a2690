"""Warmup records, TF Serving's format: `assets.extra/tf_serving_warmup_requests`, a TFRecord file
of `PredictionLog`s (tensorflow-serving-api's protos).

`write` makes the file from sample inputs; `replay` runs its requests against a freshly loaded
version before the version becomes AVAILABLE, so the first real request does not pay for TF's
lazy initialisation. A file that cannot be read or replayed fails the load, and the version
already serving keeps serving.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Mapping, Sequence

import numpy as np
from tensorflow_serving.apis import predict_pb2, prediction_log_pb2

from tfprod.codec import example, tensor_proto
from tfprod.errors import Code, ServingError
from tfprod.servables.base import Servable
from tfprod.service import classify_on, regress_on
from tfprod.signature import DEFAULT_SIGNATURE

WARMUP_FILE = os.path.join("assets.extra", "tf_serving_warmup_requests")
MAX_RECORDS = 1000  # TF Serving's limit


def write(version_dir: str, requests: Sequence[tuple[str, Mapping[str, np.ndarray]]], model_name: str = "") -> str:
    """One PredictionLog(predict_log) per (signature_name, inputs); returns the file's path."""
    import tensorflow as tf

    if not 0 < len(requests) <= MAX_RECORDS:
        raise ValueError(f"a warmup file holds 1 to {MAX_RECORDS} requests, got {len(requests)}")
    path = os.path.join(version_dir, WARMUP_FILE)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with tf.io.TFRecordWriter(path) as writer:
        for signature_name, inputs in requests:
            request = predict_pb2.PredictRequest()
            request.model_spec.name = model_name
            request.model_spec.signature_name = signature_name
            for name, value in inputs.items():
                request.inputs[name].CopyFrom(tensor_proto.to_proto(np.asarray(value)))
            log = prediction_log_pb2.PredictionLog()
            log.predict_log.request.CopyFrom(request)
            writer.write(log.SerializeToString())
    return path


def replay(version_dir: str, servable: Servable, iterations: int) -> tuple[int, float] | None:
    """Replay the version's warmup file `iterations` times; (records, seconds), or None without one."""
    import tensorflow as tf

    path = os.path.join(version_dir, WARMUP_FILE)
    if not os.path.isfile(path):
        return None
    started = time.perf_counter()
    try:
        records = [r.numpy() for r in tf.data.TFRecordDataset(path)]
    except tf.errors.OpError as e:
        raise ServingError(Code.DATA_LOSS, f"warmup file {path} is unreadable: {e.message}") from None
    if len(records) > MAX_RECORDS:
        raise ServingError(Code.INVALID_ARGUMENT, f"Number of warmup records exceeds the maximum ({MAX_RECORDS}) "
                           f"at {path}")
    logs = []
    for i, raw in enumerate(records):
        log = prediction_log_pb2.PredictionLog()
        try:
            log.ParseFromString(raw)
        except Exception:  # protobuf raises DecodeError, a private subclass
            raise ServingError(Code.DATA_LOSS, f"warmup record {i} in {path} is not a PredictionLog") from None
        logs.append(log)

    async def replay_all() -> None:  # the load thread has no event loop; the APIs' code paths want one
        for i, log in enumerate(logs):
            for _ in range(max(iterations, 1)):
                await _run(servable, log, i, path)
    asyncio.run(replay_all())
    return len(records), time.perf_counter() - started


async def _run(servable: Servable, log: prediction_log_pb2.PredictionLog, index: int, path: str) -> None:
    kind = log.WhichOneof("log_type")
    try:
        if kind == "predict_log":
            request = log.predict_log.request
            sig = servable.signature(request.model_spec.signature_name or DEFAULT_SIGNATURE)
            await servable.run_async(sig, tensor_proto.to_inputs(request.inputs, sig), tuple(request.output_filter))
        elif kind in ("classify_log", "regress_log"):
            request = getattr(log, kind).request
            run = classify_on if kind == "classify_log" else regress_on
            await run(servable, request.model_spec.signature_name or DEFAULT_SIGNATURE,
                      example.examples_from_input(request.input))
        else:
            raise ServingError(Code.UNIMPLEMENTED, f"unsupported log type {kind!r}")
    except ServingError as e:
        raise ServingError(e.code, f"warmup record {index} in {path} failed: {e.message}") from None


def main(argv: Sequence[str]) -> int:
    """`tfprod warmup VERSION_DIR REQUEST.json...`: each file a TF Serving predict request
    (`instances` or `inputs`, optional `signature_name`), checked against the SavedModel."""
    import argparse
    import sys

    from tfprod.codec import json_tensor
    from tfprod.format.saved_model import read_meta_graph, signatures_of

    p = argparse.ArgumentParser(prog="tfprod warmup", description=main.__doc__)
    p.add_argument("version_dir", help="the SavedModel version directory to warm up")
    p.add_argument("requests", nargs="+", help="JSON files in TF Serving's predict format")
    p.add_argument("--tags", default="serve", help="meta graph tags (default: serve)")
    args = p.parse_args(argv)
    try:
        signatures = signatures_of(read_meta_graph(args.version_dir, frozenset(args.tags.split(","))))
        requests = []
        for file in args.requests:
            with open(file, "rb") as f:
                doc = json_tensor.parse_object(f.read())
            name = json_tensor.signature_name(doc, DEFAULT_SIGNATURE)
            if name not in signatures:
                raise ServingError(Code.INVALID_ARGUMENT, f"{file}: signature '{name}' is not in the SavedModel "
                                   f"(it has {', '.join(sorted(signatures))})")
            requests.append((name, json_tensor.parse_predict(doc, signatures[name])[0]))
        path = write(args.version_dir, requests)
    except (ServingError, OSError, ValueError) as e:
        print(f"tfprod warmup: error: {getattr(e, 'message', e)}", file=sys.stderr)
        return 1
    print(f"wrote {len(requests)} warmup request(s) to {path}")
    return 0
