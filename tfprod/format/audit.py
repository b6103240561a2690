"""The audit metadata a version carries: `assets.extra/tfprod_metadata.json` (TF Serving keeps
its own extras in assets.extra too). `tfprod.export` writes and validates it; servers and
`tfprod inspect` read it."""

from __future__ import annotations

import json
import os
from typing import Any

METADATA_FILE = os.path.join("assets.extra", "tfprod_metadata.json")


def read_metadata(version_dir: str) -> dict[str, Any] | None:
    path = os.path.join(version_dir, METADATA_FILE)
    if not os.path.isfile(path):
        return None
    with open(path, encoding="utf-8") as f:
        doc: dict[str, Any] = json.load(f)
    return doc
