"""`tfprod demo`: train a digits classifier, export it as version 1, serve it, print a curl line."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from collections.abc import Sequence


def train_and_export(base_path: str, version: int = 1, hidden: int = 32, seed: int = 0,
                     shuffle_labels: bool = False) -> tuple[str, float]:
    """Train a 64-`hidden`-10 MLP on scikit-learn's digits; export it atomically as
    `base_path/version`. `shuffle_labels` trains on labels in random order: a broken retrain."""
    import numpy as np
    import tensorflow as tf
    from rich.progress import Progress
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    x, y = load_digits(return_X_y=True)
    x = (x / 16.0).astype(np.float32)
    x_train, x_test, y_train, y_test = train_test_split(x, y, test_size=0.2, random_state=0, stratify=y)
    tf.keras.utils.set_random_seed(seed)
    if shuffle_labels:
        y_train = np.random.default_rng(seed).permutation(y_train)
    model = tf.keras.Sequential([
        tf.keras.Input((64,), name="pixels"),
        tf.keras.layers.Dense(hidden, activation="relu"),
        tf.keras.layers.Dense(10, activation="softmax"),
    ])
    model.compile("adam", "sparse_categorical_crossentropy", metrics=["accuracy"])
    epochs = 30
    with Progress() as progress:
        task = progress.add_task(f"training version {version} on digits", total=epochs)
        model.fit(x_train, y_train, epochs=epochs, batch_size=32, verbose=0,
                  callbacks=[tf.keras.callbacks.LambdaCallback(on_epoch_end=lambda *_: progress.advance(task))])
    accuracy = float(model.evaluate(x_test, y_test, verbose=0)[1])

    os.makedirs(base_path, exist_ok=True)
    version_dir = os.path.join(base_path, str(version))
    staging = tempfile.mkdtemp(prefix=".export-", dir=base_path)
    model.export(os.path.join(staging, "1"), verbose=False)
    if os.path.exists(version_dir):
        shutil.rmtree(version_dir)
    os.rename(os.path.join(staging, "1"), version_dir)  # a polling server never sees half a version
    shutil.rmtree(staging)

    request = os.path.join(base_path, "request.json")
    with open(request, "w") as f:
        json.dump({"instances": x_test[:2].round(4).tolist()}, f)
    # for `tfprod convert ... --report`: calibration rows, held-out rows and their labels
    np.save(os.path.join(base_path, "calibration.npy"), x_train[:300])
    np.save(os.path.join(base_path, "test_x.npy"), x_test)
    np.save(os.path.join(base_path, "test_y.npy"), y_test)
    return request, accuracy


def main(argv: Sequence[str]) -> int:
    p = argparse.ArgumentParser(prog="tfprod demo", description=__doc__)
    p.add_argument("--base_path", default="models/digits", help="where to export (default: models/digits)")
    p.add_argument("--rest_api_port", type=int, default=8501)
    p.add_argument("--port", type=int, default=8500, help="the gRPC port (default: 8500)")
    p.add_argument("--no_serve", action="store_true", help="export only, do not start the server")
    args = p.parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

    request, accuracy = train_and_export(args.base_path)
    print(f"\nExported {args.base_path}/1 (test accuracy {accuracy:.3f}). Once the server says it is running, "
          "open the console at\n")
    print(f"  http://localhost:{args.rest_api_port}/ui/   # models, versions, live metrics\n\nand try:\n")
    print(f"  curl -s -d @{request} http://localhost:{args.rest_api_port}/v1/models/digits:predict\n")
    print(f"  curl -s http://localhost:{args.rest_api_port}/v1/models/digits/metadata\n")
    print(f"  curl -s http://localhost:{args.rest_api_port}/v2/models/digits      # the same model over KServe V2\n")
    print(f"gRPC (TF Serving's PredictionService and V2's GRPCInferenceService) listens on localhost:{args.port}.\n")
    print("What TFLite quantization does to this model (sizes, speed, accuracy, verdicts):\n")
    print(f"  tfprod convert {args.base_path}/1 --quantize dynamic,float16,int8 --representative "
          f"{args.base_path}/calibration.npy --eval {args.base_path}/test_x.npy --labels {args.base_path}/test_y.npy "
          "--report tflite-report\n")
    print("The same model in the browser (TF.js on WebAssembly), beside the server's answer, and the parity gate:\n")
    print(f"  tfprod convert {args.base_path}/1 --to tfjs")
    print(f"  open http://localhost:{args.rest_api_port}/ui/models/digits/browser   # draw a digit, press Run")
    print(f"  tfprod parity {args.base_path}/1\n", flush=True)
    if args.no_serve:
        return 0
    from tfprod.cli import main as cli

    return cli(["serve", "--model_name=digits", f"--model_base_path={args.base_path}",
                f"--rest_api_port={args.rest_api_port}", f"--port={args.port}",
                "--host=127.0.0.1"])  # this machine only


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
