"""`tfprod parity VERSION_DIR`: do TensorFlow, LiteRT and TF.js give this version's answers?

The same inputs (`--inputs FILE`, or rows generated from the signature) go through TensorFlow
(the SavedModel as the server runs it, the reference), LiteRT (the version's model.tflite, or
fresh conversions in `--modes`) and TF.js on its WASM backend (the version's tfjs/, or fresh
conversions), in headless Chromium through the in-browser page, or in Node where no browser is
installed. Each output is judged against a tolerance of its precision class:

    fp32  (tflite none, tfjs none)            max |diff| <= 1e-5 x the output's range
    fp16  (tflite float16, tfjs float16)      max |diff| <= 2e-3 x range
    16-bit (tfjs uint16)                      max |diff| <= 1e-3 x range
    8-bit (tflite dynamic/int8, tfjs uint8)   top-1 agreement >= 99.5% (outputs of one value per
                                              row: max |diff| <= 5e-2 x range)

The range is the reference output's max - min over the inputs. The exit status is 1 when any
runtime is outside its tolerance (a release pipeline gates on it), 2 when it could not run.
A PNG shows the differences per output.
"""

from __future__ import annotations

import argparse
import dataclasses
import http.server
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np

from tfprod.edge import page, tfjs
from tfprod.edge.convert import ConversionError, convert, representative_rows
from tfprod.errors import ServingError
from tfprod.format.saved_model import read_meta_graph, signatures_of
from tfprod.servables.tflite import TFLITE_FILE
from tfprod.signature import DEFAULT_SIGNATURE, Signature, default_signature_key

RUNTIMES = ("tf", "tflite", "tfjs")
TFLITE_CLASS = {"none": "fp32", "float16": "fp16", "dynamic": "8-bit", "int8": "8-bit"}
TFJS_CLASS = {"none": "fp32", "float16": "fp16", "uint16": "16-bit", "uint8": "8-bit"}
RELATIVE = {"fp32": 1e-5, "fp16": 2e-3, "16-bit": 1e-3, "8-bit": 5e-2}
MIN_TOP1 = 0.995
DEFAULT_ROWS = 256  # from 200 rows one disagreeing row passes the 8-bit rule (99.5%); with fewer it fails


class ParityError(Exception):
    """The gate could not run (as opposed to: it ran and a runtime is off)."""


@dataclasses.dataclass
class Result:
    runtime: str  # "tflite" | "tfjs"
    mode: str  # quantization mode, or the version's own file
    precision: str  # fp32 | fp16 | 16-bit | 8-bit
    output: str
    max_abs_diff: float
    range: float
    top1: float | None  # agreement of the argmax over the last axis; None for one value per row
    diffs: np.ndarray  # |diff| / range per element, for the plot

    @property
    def relative(self) -> float:
        return self.max_abs_diff / self.range

    @property
    def passed(self) -> bool:
        if self.precision == "8-bit" and self.top1 is not None:
            return self.top1 >= MIN_TOP1
        return bool(self.relative <= RELATIVE[self.precision])

    @property
    def tolerance(self) -> str:
        if self.precision == "8-bit" and self.top1 is not None:
            return f"top-1 >= {MIN_TOP1:.1%}"
        return f"<= {RELATIVE[self.precision]:.0e} x range"


def generated_inputs(sig: Signature, rows: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Rows for every input: floats uniform in [0, 1), integers in [0, 10), booleans; unknown
    dimensions (other than the batch) are 8."""
    rng = np.random.default_rng(seed)
    out = {}
    for name, info in sorted(sig.inputs.items()):
        if info.shape is None:
            raise ParityError(f"input '{name}' has an unknown rank: give inputs with --inputs FILE")
        shape = (rows, *(8 if d < 0 else d for d in info.shape[1:]))
        kind = info.np_dtype.kind
        if kind == "f":
            out[name] = rng.random(shape).astype(info.np_dtype)
        elif kind in "iu":
            out[name] = rng.integers(0, 10, shape).astype(info.np_dtype)
        elif kind == "b":
            out[name] = rng.random(shape) < 0.5
        else:
            raise ParityError(f"input '{name}' is {info.np_dtype}: the edge runtimes take numbers; give inputs "
                              "with --inputs FILE or choose a signature over numeric tensors")
    return out


def _served(path: str, lite: bool) -> Any:
    from tfprod.core.manager import ServableId
    from tfprod.servables import saved_model, tflite

    sid = ServableId("parity", 0)
    return tflite.load(sid, path) if lite else saved_model.load(sid, path)


def _run_served(path: str, key: str, x: Mapping[str, np.ndarray], lite: bool) -> dict[str, np.ndarray]:
    """The outputs as the server computes them (TensorFlow's Session callable, or LiteRT)."""
    what = "LiteRT" if lite else "TensorFlow"
    try:
        servable = _served(path, lite)
    except ServingError as e:
        raise ParityError(f"{what} cannot load the model: {e.message}") from None
    try:
        sig = servable.signature(key)
        return {k: np.asarray(v) for k, v in servable.run(sig, dict(x)).items()}
    except ServingError as e:
        raise ParityError(f"{what} refused the inputs: {e.message}") from None
    finally:
        servable.unload()


def tflite_precision(flatbuffer: bytes) -> str:
    """A .tflite file's precision class, from its tensors other than the inputs: quantized (scales)
    is 8-bit, float16 tensors fp16, else fp32 (a uint8 image input alone makes no model 8-bit)."""
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_content=flatbuffer)
    inputs = {d["index"] for d in interpreter.get_input_details()}
    tensors = [t for t in interpreter.get_tensor_details() if t["index"] not in inputs]
    if any(t["quantization_parameters"]["scales"].size for t in tensors):
        return "8-bit"
    return "fp16" if any(np.dtype(t["dtype"]) == np.float16 for t in tensors) else "fp32"


def tfjs_engine() -> str | None:
    """"chromium" when Playwright and a Chromium are installed, else "node", else None."""
    try:
        import playwright  # noqa: F401
    except ImportError:
        pass
    else:
        if chromium_path():
            return "chromium"
    return "node" if shutil.which("node") else None


def chromium_path() -> str | None:
    return os.environ.get("TFPROD_CHROMIUM") or next(
        (p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p), None)


def _js_inputs(x: Mapping[str, np.ndarray]) -> dict[str, Any]:
    def dtype(a: np.ndarray) -> str:
        return "bool" if a.dtype.kind == "b" else "float32" if a.dtype.kind == "f" else "int32"
    return {k: {"dtype": dtype(v), "shape": list(v.shape), "data": v.reshape(-1).tolist()} for k, v in x.items()}


def _from_js(doc: Mapping[str, Any]) -> dict[str, np.ndarray]:
    return {k: np.asarray(v["data"], np.float64).reshape(v["shape"]) for k, v in doc.items()}


class _Site(http.server.ThreadingHTTPServer):
    """A loopback server of the page, the runtime and one model directory at a time."""

    tfjs_dir = ""
    page = b""


class _Handler(http.server.BaseHTTPRequestHandler):
    server: _Site

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        path = self.path.split("?", 1)[0]
        found: page.File | None = None
        if path == "/":
            found = page.File(self.server.page, "text/html", "page")
        elif path.startswith("/static/"):
            found = page.static_file(path[len("/static/"):])
        elif path.startswith("/model/"):
            found = page.model_file(self.server.tfjs_dir, path[len("/model/"):])
        if found is None:
            self.send_error(404)
            return
        self.send_response(200)
        for k, v in {**found.headers(), "Content-Type": found.media_type}.items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(found.content)))
        self.end_headers()
        self.wfile.write(found.content)

    def log_message(self, *args: Any) -> None:
        pass


class BrowserRunner:
    """TF.js (WASM) in headless Chromium, through the in-browser page served from a loopback
    server of its own: one browser, a fresh tab per model."""

    engine = "chromium"

    def __init__(self, timeout_s: float = 60.0, browser: Any = None) -> None:
        """`browser`: a Playwright browser to use (the caller's); default: launch Chromium."""
        self._timeout_s = timeout_s
        self._browser, self._own = browser, browser is None
        self._playwright: Any = None

    def __enter__(self) -> BrowserRunner:
        if self._own:
            try:
                from playwright.sync_api import sync_playwright
            except ImportError:
                raise ParityError("TF.js in Chromium needs Playwright: pip install tfprod[browser] (or "
                                  "--tfjs_engine node)") from None
        self._site = _Site(("127.0.0.1", 0), _Handler)
        threading.Thread(target=self._site.serve_forever, daemon=True).start()
        if self._own:
            self._playwright = sync_playwright().start()
            try:
                self._browser = self._playwright.chromium.launch(executable_path=chromium_path(),
                                                                 args=["--no-sandbox"])
            except Exception as e:  # no browser there, or one that does not start
                self.__exit__()
                raise ParityError(f"Chromium did not start ({str(e).splitlines()[0][:300]}): install it, "
                                  "set TFPROD_CHROMIUM to its path, or use --tfjs_engine node") from None
        return self

    def __exit__(self, *_: Any) -> None:
        if self._own:
            if self._browser is not None:
                self._browser.close()
                self._browser = None
            self._playwright.stop()
        self._site.shutdown()
        self._site.server_close()

    def run(self, tfjs_dir: str, x: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        from playwright.sync_api import Error as PlaywrightError

        self._site.tfjs_dir = tfjs_dir
        self._site.page = page.render(model="parity", version=0, static_url="/static/",
                                      model_url="/model/model.json", predict_url=None,
                                      signature=page.signature_key(tfjs_dir))
        tab = self._browser.new_page()
        try:
            tab.goto(f"http://127.0.0.1:{self._site.server_address[1]}/")
            tab.wait_for_function("window.tfprodPage && (tfprodPage.ready || tfprodPage.error)",
                                  timeout=self._timeout_s * 1000)
            error = tab.evaluate("tfprodPage.error")
            if error:
                raise ParityError(f"TF.js could not load the model in Chromium: {error}")
            return _from_js(tab.evaluate("inputs => tfprodPage.run(inputs)", _js_inputs(x)))
        except PlaywrightError as e:
            raise ParityError(f"TF.js in Chromium failed: {str(e).splitlines()[0]}") from None
        finally:
            tab.close()


class NodeRunner:
    """TF.js (WASM) in Node, from the same shipped runtime files."""

    engine = "node"

    def __init__(self, timeout_s: float = 120.0) -> None:
        self._timeout_s = timeout_s

    def __enter__(self) -> NodeRunner:
        return self

    def __exit__(self, *_: Any) -> None:
        pass

    def run(self, tfjs_dir: str, x: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        script = os.path.join(page.WEB_DIR, "run_node.js")
        try:
            done = subprocess.run(["node", script, tfjs.RUNTIME_DIR, tfjs_dir],
                                  input=json.dumps({"inputs": _js_inputs(x)}), capture_output=True, text=True,
                                  timeout=self._timeout_s)
        except subprocess.TimeoutExpired:
            raise ParityError(f"TF.js in Node did not answer within {self._timeout_s:.0f} s") from None
        except OSError as e:
            raise ParityError(f"cannot run Node: {e}") from None
        try:
            answer = json.loads(done.stdout)
        except ValueError:
            raise ParityError(f"TF.js in Node failed: {(done.stderr or done.stdout).strip()[:500]}") from None
        if "error" in answer:
            raise ParityError(f"TF.js in Node failed: {answer['error']}")
        return _from_js(answer["outputs"])


def compare(runtime: str, mode: str, precision: str, expected: Mapping[str, np.ndarray],
            got: Mapping[str, np.ndarray]) -> list[Result]:
    results = []
    for name, want in sorted(expected.items()):
        want = want.astype(np.float64)
        have = np.asarray(got.get(name), np.float64)
        if have.shape != want.shape:
            raise ParityError(f"{runtime} ({mode}) answered output '{name}' with shape {list(have.shape)}, "
                              f"TensorFlow with {list(want.shape)}")
        spread = float(want.max() - want.min()) if want.size else 0.0
        spread = spread or float(np.abs(want).max()) or 1.0  # a constant output: relative to its size
        diff = np.abs(have - want)
        top1 = (float((have.argmax(-1) == want.argmax(-1)).mean())
                if want.ndim >= 2 and want.shape[-1] > 1 else None)
        results.append(Result(runtime, mode, precision, name, float(diff.max()) if diff.size else 0.0,
                              spread, top1, (diff / spread).reshape(-1)))
    return results


def gate(version_dir: str, x: Mapping[str, np.ndarray], key: str, runtimes: Sequence[str], modes: Sequence[str],
         engine: str | BrowserRunner | NodeRunner | None,
         progress: Callable[[str], None] = lambda _: None) -> list[Result]:
    """`engine`: "chromium", "node", or a runner to use."""
    progress("TensorFlow (the reference)")
    expected = _run_served(version_dir, key, x, lite=False)
    results: list[Result] = []
    if "tflite" in runtimes:
        for mode, flatbuffer in _tflite_files(version_dir, key, modes, x):
            progress(f"LiteRT ({mode})")
            with tempfile.TemporaryDirectory() as tmp:
                with open(os.path.join(tmp, TFLITE_FILE), "wb") as f:
                    f.write(flatbuffer)
                got = _run_served(tmp, key, x, lite=True)
            results += compare("tflite", mode, TFLITE_CLASS.get(mode) or tflite_precision(flatbuffer), expected, got)
    if "tfjs" in runtimes:
        if engine is None:
            raise ParityError("TF.js needs Chromium (with `pip install playwright`) or Node: neither is installed")
        chosen = engine if not isinstance(engine, str) else BrowserRunner() if engine == "chromium" else NodeRunner()
        with chosen as runner:
            for mode, tfjs_dir in _tfjs_dirs(version_dir, key, modes):
                progress(f"TF.js in {runner.engine} ({mode})")
                with tfjs_dir as where:
                    with open(os.path.join(where, tfjs.MODEL_JSON)) as f:
                        quantization = (json.load(f).get("userDefinedMetadata") or {}).get("quantization", "none")
                    results += compare(f"tfjs ({runner.engine})", mode, TFJS_CLASS.get(quantization, "8-bit"), expected,
                                       runner.run(where, x))
    return results


def _tflite_files(version_dir: str, key: str, modes: Sequence[str], x: Mapping[str, np.ndarray]
                  ) -> Iterator[tuple[str, bytes]]:
    own = os.path.join(version_dir, TFLITE_FILE)
    if not modes and os.path.isfile(own):
        with open(own, "rb") as f:
            yield TFLITE_FILE, f.read()
        return
    for mode in modes or ["none"]:
        if mode not in TFLITE_CLASS:
            continue
        representative = None
        if mode == "int8":  # calibrate on the gate's own inputs
            representative = os.path.join(tempfile.mkdtemp(prefix="tfprod-parity-"), "calibration.npz")
            np.savez(representative, **x)  # type: ignore[arg-type]
        try:
            yield mode, convert(version_dir, mode, representative=representative, signature_keys=[key])
        except ConversionError as e:
            raise ParityError(f"LiteRT ({mode}): {e}; leave it out with --runtimes tf,tfjs") from None
        finally:
            if representative:
                shutil.rmtree(os.path.dirname(representative), ignore_errors=True)


class _Dir:
    """A directory to use in a `with`: the version's own, or a temporary one removed afterwards."""

    def __init__(self, path: str, temporary: bool) -> None:
        self.path, self.temporary = path, temporary

    def __enter__(self) -> str:
        return self.path

    def __exit__(self, *_: Any) -> None:
        if self.temporary:
            shutil.rmtree(os.path.dirname(self.path), ignore_errors=True)


def _tfjs_dirs(version_dir: str, key: str, modes: Sequence[str]) -> Iterator[tuple[str, _Dir]]:
    own = os.path.join(version_dir, tfjs.TFJS_DIR)
    if not modes and os.path.isfile(os.path.join(own, tfjs.MODEL_JSON)) and page.signature_key(own) == key:
        yield tfjs.TFJS_DIR + "/", _Dir(own, temporary=False)
        return
    for mode in modes or ["none"]:
        if mode not in TFJS_CLASS:
            continue
        scratch = tempfile.mkdtemp(prefix="tfprod-parity-")
        try:
            out = tfjs.export(version_dir, os.path.join(scratch, "tfjs"), mode, key)
        except BaseException:
            shutil.rmtree(scratch, ignore_errors=True)
            raise
        yield mode, _Dir(out, temporary=True)


def plot(results: Sequence[Result], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    outputs = sorted({r.output for r in results})
    fig, axes = plt.subplots(len(outputs), 1, figsize=(8, 3.2 * len(outputs)), squeeze=False)
    for ax, name in zip(axes[:, 0], outputs, strict=True):
        for r in (r for r in results if r.output == name):
            values = np.sort(np.maximum(r.diffs, 1e-12))
            ax.plot(np.linspace(0, 100, len(values)), values, label=f"{r.runtime} {r.mode}"
                    + ("" if r.passed else " (FAILS)"))
        for precision in sorted({r.precision for r in results if r.output == name and
                                 not (r.precision == "8-bit" and r.top1 is not None)}):
            ax.axhline(RELATIVE[precision], linestyle="--", linewidth=0.8, color="grey")
            ax.annotate(f"{precision} tolerance", (0, RELATIVE[precision]), fontsize=7, color="grey")
        ax.set_yscale("log")
        ax.set_xlabel("percentile of elements")
        ax.set_ylabel("|diff| / output range")
        ax.set_title(f"output '{name}': difference from TensorFlow")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: Sequence[str]) -> int:
    p = argparse.ArgumentParser(prog="tfprod parity", description=__doc__.split("\n\n")[0])
    p.add_argument("version_dir", help="a SavedModel version directory")
    p.add_argument("--inputs", help="inputs: .npy (one input), .npz (arrays named as the inputs), .csv or "
                   ".tfrecord of tf.Examples (default: rows generated from the signature)")
    p.add_argument("--rows", type=int, default=DEFAULT_ROWS, help=f"rows to generate (default {DEFAULT_ROWS})")
    p.add_argument("--runtimes", help="among tf,tflite,tfjs (default: all; tfjs is "
                   "skipped with a note when neither Chromium nor Node is installed, unless named)")
    p.add_argument("--modes", default="", help="quantization modes to convert and check fresh (tflite: none, "
                   "float16, dynamic, int8; tfjs: none, float16, uint16, uint8); default: the version's own "
                   "model.tflite and tfjs/, or a float32 conversion where it has none")
    p.add_argument("--signature", default="", help=f"signature (default {DEFAULT_SIGNATURE})")
    p.add_argument("--plot", default="parity.png", help="where to write the PNG (default parity.png)")
    p.add_argument("--tfjs_engine", choices=["chromium", "node"], help="where TF.js runs (default: Chromium when "
                   "Playwright and a Chromium are installed, else Node)")
    args = p.parse_args(argv)
    runtimes = [r.strip() for r in (args.runtimes or ",".join(RUNTIMES)).split(",") if r.strip()]
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    bad = [r for r in runtimes if r not in RUNTIMES] + [m for m in modes if m not in {*TFLITE_CLASS, *TFJS_CLASS}]
    if not os.path.isdir(args.version_dir) or bad or args.rows < 1:
        print(f"tfprod parity: error: {args.version_dir} is not a directory" if not os.path.isdir(args.version_dir)
              else f"tfprod parity: error: unknown runtimes or modes {bad}" if bad else
              "tfprod parity: error: --rows must be at least 1", file=sys.stderr)
        return 2
    from rich.console import Console

    console = Console(stderr=True)
    engine = args.tfjs_engine or tfjs_engine()
    if engine is None and args.runtimes is None:
        console.print("note: TF.js skipped: install Chromium and `pip install playwright`, or Node")
        runtimes.remove("tfjs")
    try:
        signatures = signatures_of(read_meta_graph(args.version_dir, frozenset({"serve"})))
        key = args.signature or default_signature_key(signatures)
        if key not in signatures:
            raise ParityError(f"choose the signature to check with --signature (found {sorted(signatures)})" if not key
                              else f"no signature {key!r} in {args.version_dir} (it has {sorted(signatures)})")
        sig = signatures[key]
        if args.inputs:
            rows = representative_rows(args.inputs, sig, limit=100_000)
            x = {name: np.concatenate([r[name] for r in rows]) for name in rows[0]}
        else:
            x = generated_inputs(sig, args.rows)
        with console.status("running") as status:
            results = gate(args.version_dir, x, key, runtimes, modes, engine,
                           lambda what: status.update(f"running {what}"))
    except (ParityError, ConversionError, tfjs.ConversionError, OSError) as e:
        print(f"tfprod parity: error: {e}", file=sys.stderr)
        return 2
    except ServingError as e:  # the version's files: no 'serve' meta graph, a corrupt saved_model.pb
        print(f"tfprod parity: error: {args.version_dir}: {e.message}", file=sys.stderr)
        return 2
    _table(results, len(next(iter(x.values()))))
    if results:
        plot(results, args.plot)
        print(f"wrote {args.plot}")
    failed = [r for r in results if not r.passed]
    if failed:
        print(f"FAILED: {len(failed)} of {len(results)} checks outside tolerance: "
              + ", ".join(f"{r.runtime} {r.mode} '{r.output}'" for r in failed))
        return 1
    print(f"passed: {len(results)} checks within tolerance")
    return 0


def _table(results: Sequence[Result], rows: int) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"parity with TensorFlow over {rows} rows")
    for column in ("runtime", "mode", "precision", "output", "max |diff|", "/ range", "top-1", "tolerance", ""):
        table.add_column(column)
    for r in results:
        table.add_row(r.runtime, r.mode, r.precision, r.output, f"{r.max_abs_diff:.2e}", f"{r.relative:.2e}",
                      "-" if r.top1 is None else f"{r.top1:.1%}", r.tolerance,
                      "[green]ok[/green]" if r.passed else "[red]FAIL[/red]")
    Console(width=140).print(table)
