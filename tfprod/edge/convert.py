"""`tfprod convert SAVED_MODEL_DIR --to tflite|tfjs --quantize MODE`.

TF.js (`--to tfjs`, quantize none|float16|uint16|uint8) is our own exporter: tfprod/edge/tfjs.py.

TensorFlow's own converter (`tf.lite.TFLiteConverter.from_saved_model`) does the work, keeping
the SavedModel's signature names and aliases, so the server answers the same requests from the
converted file. int8 needs a representative dataset: `.npy` (one input), `.npz` (arrays named as
the inputs), `.csv` (one input, one row per example; a header row is skipped) or a TFRecord of
tf.Examples (`.tfrecord`, features named as the inputs). The output goes to
`SAVED_MODEL_DIR/model.tflite`, the layout TF Serving's `--prefer_tflite_model` reads.
"""

from __future__ import annotations

import argparse
import csv
import os
import re
import sys
import warnings
from collections.abc import Iterator, Mapping, Sequence

import numpy as np

from tfprod.edge import tfjs
from tfprod.format.saved_model import read_meta_graph, signatures_of
from tfprod.servables.tflite import TFLITE_FILE
from tfprod.signature import DEFAULT_SIGNATURE, Signature, default_signature_key

MODES = ("none", "dynamic", "float16", "int8")
MAX_CALIBRATION_ROWS = 1000


class ConversionError(Exception):
    pass


def representative_rows(path: str, sig: Signature, limit: int = MAX_CALIBRATION_ROWS) -> list[dict[str, np.ndarray]]:
    """Calibration examples for `sig`, one row each (with a batch dimension of 1)."""
    names = list(sig.inputs)
    lower = path.lower()
    if lower.endswith(".npy"):
        if len(names) != 1:
            raise ConversionError(f"a .npy file holds one array, but signature '{sig.name}' has inputs {names}: "
                                  "use a .npz with one array per input")
        arrays = {names[0]: np.load(path, allow_pickle=False)}
    elif lower.endswith(".npz"):
        with np.load(path, allow_pickle=False) as npz:
            missing = [n for n in names if n not in npz.files]
            if missing:
                raise ConversionError(f"{path} lacks arrays for inputs {missing} (it has {npz.files})")
            arrays = {n: npz[n] for n in names}
    elif lower.endswith(".csv"):
        if len(names) != 1:
            raise ConversionError(f"a CSV file feeds one input, but signature '{sig.name}' has inputs {names}")
        arrays = {names[0]: _read_csv(path)}
    elif lower.endswith((".tfrecord", ".tfrecords")):
        arrays = _read_examples(path, sig, limit)
    else:
        raise ConversionError(f"{path}: representative data must be .npy, .npz, .csv or .tfrecord")
    rows = {len(a) for a in arrays.values()}
    if len(rows) != 1 or 0 in rows:
        raise ConversionError(f"{path}: every input needs the same, non-zero number of rows (got {sorted(rows)})")
    out = []
    for i in range(min(rows.pop(), limit)):
        row = {}
        for name, arr in arrays.items():
            info = sig.inputs[name]
            value = np.asarray(arr[i : i + 1], dtype=info.np_dtype)
            if info.shape is not None and (len(info.shape) != value.ndim or any(
                    e not in (-1, a) for e, a in zip(info.shape[1:], value.shape[1:], strict=True))):
                raise ConversionError(f"{path}: input '{name}' rows have shape {list(value.shape[1:])}, the "
                                      f"signature expects {list(info.shape[1:])}")
            row[name] = value
        out.append(row)
    return out


def _read_csv(path: str) -> np.ndarray:
    with open(path, newline="") as f:
        rows = [r for r in csv.reader(f) if r]
    try:
        float(rows[0][0])
    except (ValueError, IndexError):
        rows = rows[1:]  # a header
    try:
        return np.array([[float(v) for v in r] for r in rows], np.float32)
    except ValueError as e:
        raise ConversionError(f"{path}: {e}") from None


def _read_examples(path: str, sig: Signature, limit: int) -> dict[str, np.ndarray]:
    import tensorflow as tf

    features = {}
    for name, info in sig.inputs.items():
        shape = [d for d in (info.shape or ())[1:]]
        if any(d < 0 for d in shape):
            raise ConversionError(f"input '{name}' has a variable dimension: tf.Example calibration needs fixed "
                                  "shapes; use .npy/.npz")
        dtype = tf.float32 if info.np_dtype.kind == "f" else tf.int64 if info.np_dtype.kind in "iu" else tf.string
        features[name] = tf.io.FixedLenFeature(shape, dtype)
    columns: dict[str, list[np.ndarray]] = {n: [] for n in features}
    try:
        for record in tf.data.TFRecordDataset(path).take(limit):
            parsed = tf.io.parse_single_example(record, features)
            for n, v in parsed.items():
                columns[n].append(v.numpy())
    except tf.errors.OpError as e:
        raise ConversionError(f"{path}: cannot read tf.Examples with features {sorted(features)}: {e.message}") \
            from None
    return {n: np.stack(v) if v else np.empty((0,)) for n, v in columns.items()}


def convert(saved_model_dir: str, mode: str = "none", *, representative: str | None = None,
            io_type: str | None = None, signature_keys: Sequence[str] | None = None) -> bytes:
    """The .tflite flatbuffer of `saved_model_dir` in quantization `mode`."""
    import tensorflow as tf

    if mode not in MODES:
        raise ConversionError(f"--quantize must be one of {', '.join(MODES)}, got {mode!r}")
    signatures = signatures_of(read_meta_graph(saved_model_dir, frozenset({"serve"})))
    keys = list(signature_keys or [k for k in signatures if not k.startswith("__")])
    if mode == "int8" and not signature_keys and len(keys) > 1 and DEFAULT_SIGNATURE in keys:
        keys = [DEFAULT_SIGNATURE]  # calibration data feeds one signature (Keras exports two names for it)
    unknown = [k for k in keys if k not in signatures]
    if unknown:
        raise ConversionError(f"no signature {unknown} in {saved_model_dir} (it has {sorted(signatures)})")
    if mode == "int8" and not representative:
        raise ConversionError("int8 needs --representative FILE (.npy, .npz, .csv or .tfrecord of tf.Examples): "
                              "calibration examples of the inputs")
    if io_type and mode != "int8":
        raise ConversionError("--io_type (int8/uint8 model inputs and outputs) needs --quantize int8")
    converter = tf.lite.TFLiteConverter.from_saved_model(saved_model_dir, signature_keys=keys)
    if mode != "none":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if mode == "float16":
        converter.target_spec.supported_types = [tf.float16]
    if mode == "int8":
        assert representative is not None
        if len(keys) != 1:
            raise ConversionError(f"int8 calibrates one signature; pick it with --signature (found {keys})")
        rows = representative_rows(representative, signatures[keys[0]])

        def dataset() -> Iterator[Mapping[str, np.ndarray]]:
            yield from rows
        converter.representative_dataset = dataset
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        if io_type:
            converter.inference_input_type = converter.inference_output_type = \
                {"int8": tf.int8, "uint8": tf.uint8}[io_type]
    try:
        with warnings.catch_warnings():  # the calibrator runs TF's own (deprecated) interpreter: not ours to fix
            warnings.filterwarnings("ignore", message=".*tf.lite.Interpreter is deprecated")
            flatbuffer = bytes(converter.convert())
    except Exception as e:  # the converter raises ConverterError, RuntimeError, ValueError...
        raise ConversionError(_explain(str(e), mode)) from None
    if mode == "int8":
        floats = float_ops(flatbuffer)
        if floats:
            raise ConversionError(f"int8 conversion failed: op(s) {', '.join(floats)} have no int8 kernel in TFLite "
                                  "(the converter left them in float32, so the model is not fully integer). Try "
                                  "--quantize dynamic or --quantize float16, which keep those ops in float.")
    return flatbuffer


def float_ops(flatbuffer: bytes) -> list[str]:
    """The ops of a converted model that compute in float32 (QUANTIZE/DEQUANTIZE at the edges aside)."""
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_content=flatbuffer)
    dtypes = {t["index"]: np.dtype(t["dtype"]) for t in interpreter.get_tensor_details()}
    found = set()
    for op in interpreter._get_ops_details():  # no public API lists a model's ops
        if op["op_name"] in ("QUANTIZE", "DEQUANTIZE"):
            continue
        tensors = [i for i in (*op["inputs"], *op["outputs"]) if i >= 0]
        if any(dtypes.get(i) == np.float32 for i in tensors):
            found.add(op["op_name"])
    return sorted(found)


def _explain(message: str, mode: str) -> str:
    ops = sorted(set(re.findall(r"'(?:tf|tfl)\.(\w+)' op", message)))
    first = next((line.strip() for line in message.splitlines() if "error" in line.lower()), message.strip())
    if mode == "int8" and ops:
        return (f"int8 conversion failed: op(s) {', '.join(ops)} have no int8 kernel in TFLite. Try "
                "--quantize dynamic or --quantize float16, which keep those ops in float. "
                f"(converter: {first[:300]})")
    return f"conversion failed: {first[:500]}"


def main(argv: Sequence[str]) -> int:
    p = argparse.ArgumentParser(prog="tfprod convert", description=__doc__.split("\n\n")[0])
    p.add_argument("saved_model_dir", help="a SavedModel version directory")
    p.add_argument("--to", choices=["tflite", "tfjs"], default="tflite",
                   help="tflite: VERSION_DIR/model.tflite; tfjs: a TF.js graph model in VERSION_DIR/tfjs/")
    p.add_argument("--quantize", default="none", help=f"tflite: one of {', '.join(MODES)} (with --report, several "
                   f"separated by commas); tfjs: one of {', '.join(tfjs.MODES)}")
    p.add_argument("--representative", help="calibration data for int8: .npy, .npz, .csv or .tfrecord")
    p.add_argument("--io_type", choices=["int8", "uint8"], help="int8 only: quantized model inputs and outputs "
                   "(the server still takes and answers float32)")
    p.add_argument("--signature", action="append", help="signature(s) to convert (default: all; int8 and tfjs: "
                   f"{DEFAULT_SIGNATURE} when there are several)")
    p.add_argument("--output", help=f"where to write (default: SAVED_MODEL_DIR/{TFLITE_FILE} or "
                   f"SAVED_MODEL_DIR/{tfjs.TFJS_DIR}/)")
    p.add_argument("--private_key", help="re-sign a signed version with this key (PEM) once the file is written "
                   "into it; without it a signed version no longer verifies (see docs/edge.md)")
    p.add_argument("--report", metavar="DIR", help="tflite: measure size, LiteRT vs TensorFlow latency and "
                   "agreement per mode; write DIR/report.md, DIR/report.png and the converted files")
    p.add_argument("--eval", help="evaluation inputs for --report (formats as --representative; default: the "
                   "representative data)")
    p.add_argument("--labels", help="labels of the evaluation rows (.npy of class ids) for accuracy")
    args = p.parse_args(argv)
    modes = [m.strip() for m in args.quantize.split(",") if m.strip()]
    allowed = tfjs.MODES if args.to == "tfjs" else MODES
    bad = [m for m in modes if m not in allowed]
    problem = (f"{args.saved_model_dir} is not a directory" if not os.path.isdir(args.saved_model_dir) else
               f"--quantize must name modes among {', '.join(allowed)}" if bad or not modes else
               "several --quantize modes need --report DIR (each file goes there)" if len(modes) > 1 and
               not args.report else
               "--to tfjs takes one --signature" if args.to == "tfjs" and len(args.signature or []) > 1 else
               "--report is for tflite; `tfprod parity VERSION_DIR` compares TF.js with TensorFlow"
               if args.to == "tfjs" and args.report else "")
    if problem:
        print(f"tfprod convert: error: {problem}", file=sys.stderr)
        return 1
    target = args.output or os.path.join(args.saved_model_dir, tfjs.TFJS_DIR if args.to == "tfjs" else TFLITE_FILE)
    if args.private_key and (problem := _resigning_problem(args.saved_model_dir, target, args.private_key)):
        print(f"tfprod convert: error: {problem}", file=sys.stderr)
        return 1
    try:
        if args.to == "tfjs":
            output = tfjs.export(args.saved_model_dir, args.output, modes[0], (args.signature or [""])[0])
            size = sum(os.path.getsize(os.path.join(output, f)) for f in os.listdir(output))
            print(f"wrote {output}/ ({size:,} bytes, {modes[0]})")
            return _after_writing(args, output)
        files = {}
        for mode in dict.fromkeys(["none", *modes] if args.report else modes):
            files[mode] = convert(args.saved_model_dir, mode, representative=args.representative,
                                  io_type=args.io_type if mode == "int8" else None, signature_keys=args.signature)
        if args.report:
            return _report(args, files)
    except (ConversionError, tfjs.ConversionError, OSError) as e:
        print(f"tfprod convert: error: {e}", file=sys.stderr)
        return 1
    flatbuffer = files[modes[0]]
    output = args.output or os.path.join(args.saved_model_dir, TFLITE_FILE)
    _write(output, flatbuffer)
    print(f"wrote {output} ({len(flatbuffer):,} bytes, {modes[0]})")
    return _after_writing(args, output)


def _resigning_problem(version_dir: str, output: str, private_key: str) -> str:
    """Why `version_dir` must not be re-signed with `private_key` once `output` is written: it is
    not signed, or something other than `output` differs from what the key signed (re-signing
    would bless it)."""
    import tempfile

    from tfprod.security import signing

    rel = os.path.relpath(os.path.abspath(output), os.path.abspath(version_dir))
    if rel.startswith(".."):
        return f"--private_key re-signs the version, but --output {output} is outside it"
    if not os.path.isfile(os.path.join(version_dir, signing.SIGNATURE_FILE)):
        return (f"--private_key re-signs a signed version, and {version_dir} is not signed: sign it first "
                f"(tfprod sign {version_dir} --private_key KEY), then convert")
    with tempfile.TemporaryDirectory() as tmp:
        try:
            signing.verify(version_dir, [signing.public_key_file(private_key, tmp)], ignore=[rel])
        except signing.VerificationError as e:
            return f"{version_dir} does not verify with this key, so it is not re-signed: {e}"
        except (OSError, ValueError, TypeError) as e:
            return f"cannot use --private_key {private_key}: {e}"
    return ""


def _after_writing(args: argparse.Namespace, output: str) -> int:
    """A signed version that just got a file: re-sign it with --private_key, or say what changed."""
    from tfprod.security import signing

    version_dir = os.path.abspath(args.saved_model_dir)
    inside = os.path.commonpath([version_dir, os.path.abspath(output)]) == version_dir
    if not inside or not os.path.isfile(os.path.join(version_dir, signing.SIGNATURE_FILE)):
        return 0
    if args.private_key:
        try:
            signing.sign(args.saved_model_dir, args.private_key)
        except (OSError, ValueError, TypeError) as e:
            print(f"tfprod convert: error: wrote {output} but could not re-sign {args.saved_model_dir}: {e}",
                  file=sys.stderr)
            return 1
        print(f"re-signed {args.saved_model_dir} ({signing.SIGNATURE_FILE} now covers {os.path.basename(output)})")
        return 0
    print(f"tfprod convert: warning: {args.saved_model_dir} is signed and its signature does not cover "
          f"{os.path.basename(output)}. A server under require_signature keeps serving the loaded version but "
          "hands no TF.js files to browsers, and refuses the version at its next load. Re-sign it: "
          f"tfprod sign {args.saved_model_dir} --private_key KEY (or convert with --private_key KEY)",
          file=sys.stderr)
    return 0


def _write(path: str, data: bytes) -> None:
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)  # a server polling the directory never sees half a file


def _report(args: argparse.Namespace, files: dict[str, bytes]) -> int:
    from rich.console import Console

    from tfprod.edge import report as tflite_report

    console = Console(stderr=True)
    signatures = signatures_of(read_meta_graph(args.saved_model_dir, frozenset({"serve"})))
    key = (args.signature or [default_signature_key(signatures)])[0]
    if key not in signatures:
        raise ConversionError(f"choose the signature to report on with --signature (found {sorted(signatures)})"
                              if not key else f"no signature {key!r} (it has {sorted(signatures)})")
    source = args.eval or args.representative
    if not source:
        raise ConversionError("--report needs evaluation inputs: --eval FILE (or --representative FILE)")
    rows = representative_rows(source, signatures[key])
    x = {name: np.concatenate([r[name] for r in rows]) for name in rows[0]}
    labels = np.load(args.labels, allow_pickle=False) if args.labels else None
    os.makedirs(args.report, exist_ok=True)
    for mode, flatbuffer in files.items():
        _write(os.path.join(args.report, f"model_{mode}.tflite"), flatbuffer)
    with console.status("measuring") as status:
        baseline, results = tflite_report.measure(args.saved_model_dir, signatures[key], files, x, labels,
                                                  lambda what: status.update(f"measuring {what}"))
    tflite_report.write(args.report, args.saved_model_dir, baseline, results)
    for line in tflite_report.verdicts(baseline, results):
        print(line.replace("**", ""))
    print(f"wrote {args.report}/report.md, {args.report}/report.png and model_<mode>.tflite files")
    return 0
