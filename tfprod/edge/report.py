"""`tfprod convert ... --report DIR`: does TFLite hold its promise for *this* model?

For each quantization mode: file size against the float32 TFLite file and the SavedModel's
variables; latency per call at batch 1 and 32 with LiteRT (XNNPACK, one thread) against the
SavedModel's signature in TensorFlow, on the same inputs; agreement with the SavedModel on an
evaluation set (largest absolute difference, top-1 agreement) and accuracy when labels are given.
Writes report.md and report.png, and a verdict per claim: size -60-75%, speed 2-3x, accuracy loss
under 1 point.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from tfprod.servables.tflite import dequantize, quantize
from tfprod.signature import Signature

LATENCY_RUNS = 50


@dataclasses.dataclass
class ModeResult:
    mode: str
    size: int
    latency_ms: dict[int, float]  # batch size -> median ms per call
    max_abs_diff: float
    top1_agreement: float
    accuracy: float | None


def _median_ms(call: Callable[[], Any], runs: int = LATENCY_RUNS) -> float:
    call()  # warm up (allocation, tracing)
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        call()
        times.append(time.perf_counter() - started)
    return statistics.median(times) * 1e3


def _litert(flatbuffer: bytes, key: str) -> Callable[[dict[str, np.ndarray]], np.ndarray]:
    from ai_edge_litert.interpreter import Interpreter

    runner = Interpreter(model_content=flatbuffer, num_threads=1).get_signature_runner(key)
    inputs, outputs = runner.get_input_details(), runner.get_output_details()
    first_out = sorted(outputs)[0]

    def run(feed: dict[str, np.ndarray]) -> np.ndarray:
        out = runner(**{name: quantize(value, inputs[name]) for name, value in feed.items()})[first_out]
        return dequantize(out, outputs[first_out])
    return run


def variables_size(saved_model_dir: str) -> int:
    folder = os.path.join(saved_model_dir, "variables")
    return sum(os.path.getsize(os.path.join(folder, f)) for f in os.listdir(folder)) if os.path.isdir(folder) else 0


def measure(saved_model_dir: str, sig: Signature, files: dict[str, bytes], x: dict[str, np.ndarray],
            labels: np.ndarray | None, progress: Callable[[str], None] = lambda _: None
            ) -> tuple[dict[str, Any], list[ModeResult]]:
    """Run the SavedModel and every converted file on the evaluation inputs `x` (rows first)."""
    from tfprod.core.manager import ServableId
    from tfprod.servables import saved_model

    served = saved_model.load(ServableId("report", 0), saved_model_dir)  # TensorFlow as the server runs it
    served_sig = served.signature(sig.name)
    first_out = sorted(sig.outputs)[0]

    def reference(feed: dict[str, np.ndarray]) -> np.ndarray:
        return served.run(served_sig, feed, (first_out,))[first_out]

    rows = len(next(iter(x.values())))

    def batch(n: int) -> dict[str, np.ndarray]:
        picks = np.arange(n) % rows
        return {k: v[picks] for k, v in x.items()}

    progress("SavedModel in TensorFlow")
    expected = np.concatenate([reference({k: v[i:i + 1] for k, v in x.items()}) for i in range(rows)])
    baseline = {"latency_ms": {b: _median_ms(functools.partial(reference, batch(b))) for b in (1, 32)},
                "variables": variables_size(saved_model_dir),
                "accuracy": _accuracy(expected, labels)}
    served.unload()
    results = []
    for mode, flatbuffer in files.items():
        progress(f"LiteRT, {mode}")
        run = _litert(flatbuffer, sig.name)
        got = np.concatenate([run({k: v[i:i + 1] for k, v in x.items()}) for i in range(rows)])
        agree = float((got.argmax(-1) == expected.argmax(-1)).mean()) if expected.ndim > 1 else float("nan")
        results.append(ModeResult(mode, len(flatbuffer), {b: _median_ms(functools.partial(run, batch(b)))
                                                           for b in (1, 32)},
                                  float(np.abs(got - expected).max()), agree, _accuracy(got, labels)))
    return baseline, results


def _accuracy(outputs: np.ndarray, labels: np.ndarray | None) -> float | None:
    if labels is None or outputs.ndim < 2:
        return None
    return float((outputs.argmax(-1) == labels.reshape(-1)[: len(outputs)]).mean())


def verdicts(baseline: dict[str, Any], results: Sequence[ModeResult]) -> list[str]:
    float32 = next((r for r in results if r.mode == "none"), None)
    lines = []
    for r in results:
        if r.mode == "none":
            continue
        claims = []
        if float32 is not None:
            smaller = 1 - r.size / float32.size
            claims.append(f"size -60-75%: {'holds' if smaller >= 0.60 else 'does not hold'} ({smaller:.0%} smaller "
                          f"than the float32 TFLite file: {r.size:,} B)")
        versus_tf = baseline["latency_ms"][1] / r.latency_ms[1]
        if float32 is not None:  # what quantization buys: the same runtime, float32 file against this one
            speedup = float32.latency_ms[32] / r.latency_ms[32]
            claims.append(f"speed 2-3x: {'holds' if speedup >= 2 else 'does not hold'} ({speedup:.1f}x the float32 "
                          f"TFLite file at batch 32; {versus_tf:.0f}x TensorFlow's signature call at batch 1, "
                          "mostly TensorFlow's per-call overhead)")
        if r.accuracy is not None and baseline["accuracy"] is not None:
            loss = (baseline["accuracy"] - r.accuracy) * 100
            change = "no change" if abs(loss) < 0.005 else f"lost {loss:.2f} points" if loss > 0 else \
                f"gained {-loss:.2f} points"
            claims.append(f"accuracy loss < 1 point: {'holds' if loss < 1 else 'does not hold'} ({change})")
        else:
            disagree = (1 - r.top1_agreement) * 100
            claims.append(f"accuracy loss < 1%: {'holds' if disagree < 1 else 'does not hold'} "
                          f"(top-1 disagrees on {disagree:.2f}% of rows; no labels given)")
        lines.append(f"**{r.mode}**: " + "; ".join(claims))
    return lines


def write(out_dir: str, saved_model_dir: str, baseline: dict[str, Any], results: Sequence[ModeResult]) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    os.makedirs(out_dir, exist_ok=True)
    float32 = next((r for r in results if r.mode == "none"), None)
    rows = ["| mode | bytes | vs float32 TFLite | µs @1 | µs @32 | speed-up @1 vs TF | max abs diff | top-1 "
            "agreement | accuracy |", "|---|---|---|---|---|---|---|---|---|"]
    acc = baseline["accuracy"]
    tf_us = [baseline["latency_ms"][b] * 1e3 for b in (1, 32)]
    rows.append(f"| SavedModel (TF) | {baseline['variables']:,} (variables) | | {tf_us[0]:.1f} | {tf_us[1]:.1f} | "
                f"1.0x | 0 | 100% | {'' if acc is None else f'{acc:.2%}'} |")
    for r in results:
        ratio = f"{r.size / float32.size:.0%}" if float32 else ""
        accuracy = "" if r.accuracy is None else f"{r.accuracy:.2%}"
        rows.append(f"| {r.mode} | {r.size:,} | {ratio} | {r.latency_ms[1] * 1e3:.1f} | {r.latency_ms[32] * 1e3:.1f} | "
                    f"{baseline['latency_ms'][1] / r.latency_ms[1]:.1f}x | {r.max_abs_diff:.2g} | "
                    f"{r.top1_agreement:.2%} | {accuracy} |")
    lines = verdicts(baseline, results)
    small = float32 is not None and float32.size < 100_000
    note = ("\nThis model is small: a flatbuffer's fixed overhead (operators, metadata, tensor tables) is a "
            "large share of its bytes, so quantized files shrink less than the weights do.\n" if small else "")
    text = (f"# TFLite conversion report: {os.path.abspath(saved_model_dir)}\n\n"
            "LiteRT with XNNPACK, one thread; TensorFlow's signature call for the SavedModel, as tfprod serve "
            f"makes it (a Session callable); medians of "
            f"{LATENCY_RUNS} calls, one machine, one run.\n\n" + "\n".join(rows) + "\n\n## Verdicts\n\n"
            + "\n".join(f"- {line}" for line in lines) + "\n" + note + "\n![report](report.png)\n")
    with open(os.path.join(out_dir, "report.md"), "w") as f:
        f.write(text)
    names = ["SavedModel"] + [r.mode for r in results]
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    axes[0].bar([r.mode for r in results], [r.size / 1024 for r in results], color="#4c72b0")
    axes[0].set_title("file size (KiB)")
    for b, color in ((1, "#55a868"), (32, "#c44e52")):
        values = [baseline["latency_ms"][b]] + [r.latency_ms[b] for r in results]
        offset = -0.2 if b == 1 else 0.2
        axes[1].bar(np.arange(len(names)) + offset, values, width=0.4, label=f"batch {b}", color=color)
    axes[1].set_xticks(range(len(names)), names, rotation=20)
    axes[1].set_yscale("log")
    axes[1].set_title("ms per call (log)")
    axes[1].legend()
    axes[2].bar([r.mode for r in results], [r.top1_agreement * 100 for r in results], color="#8172b2")
    axes[2].set_ylim(min([90.0] + [r.top1_agreement * 100 - 1 for r in results]), 100.5)
    axes[2].set_title("top-1 agreement with the SavedModel (%)")
    fig.tight_layout()
    fig.savefig(os.path.join(out_dir, "report.png"), dpi=110)
    plt.close(fig)
    return text
