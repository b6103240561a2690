"""What a model version must pass before it is loaded: a trusted signature and a graph scan.

Both read files only (TensorFlow runs nothing of the model here); a refusal is a
`ModelRefused` that the manager records as the version's END status, without retries.
"""

from __future__ import annotations

import logging

from tfprod.core.logs import about
from tfprod.errors import Code, ServingError
from tfprod.format.saved_model import read_meta_graph
from tfprod.security import graph_scan, signing
from tfprod.security.config import ModelRules

log = logging.getLogger("tfprod.security")


class ModelRefused(ServingError):
    def __init__(self, message: str, reason: str) -> None:
        super().__init__(Code.PERMISSION_DENIED, message)
        self.reason = reason  # the metric's label: "signature" or "graph_scan"


def check_version(rules: ModelRules, name: str, version: int, path: str, tags: frozenset[str],
                  scan: bool = True) -> dict[str, str]:
    """Raise ModelRefused, or say what was checked: {"signature": ..., "graph_scan": ...} (the
    console shows it per version). `scan=False` for versions served from model.tflite: the graph
    scan reads SavedModel graphs."""
    checked = {"signature": "not required", "graph_scan": "off"}
    if rules.require_signature:
        try:
            key = signing.verify(path, rules.trusted_keys)
        except signing.VerificationError as e:
            raise ModelRefused(f"version {version} of model '{name}' is refused: {e}", "signature") from None
        log.info("%s version %d: signature verified with %s", name, version, key, extra=about(name, version))
        checked["signature"] = f"verified with {key}"
    if rules.graph_scan == "off" or not scan:
        checked["graph_scan"] = "off" if scan else "not scanned (served from model.tflite)"
        return checked
    findings = graph_scan.scan(read_meta_graph(path, tags), rules.allowed_ops(name))
    if not findings:
        checked["graph_scan"] = "passed"
        return checked
    text = graph_scan.describe(findings)
    if rules.graph_scan == "enforce":
        raise ModelRefused(f"version {version} of model '{name}' is refused: its graph uses {text}. If the model "
                           f"needs them, allow them in the security config: [models.allow_ops] "
                           f"{name} = [{', '.join(sorted({repr(f.op) for f in findings}))}]", "graph_scan")
    log.warning("%s version %d: its graph uses %s (graph_scan = 'warn': loading it anyway)", name, version, text,
                extra=about(name, version))
    checked["graph_scan"] = f"warned: its graph uses {text}"
    return checked
