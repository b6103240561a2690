#!/usr/bin/env python3
"""Maintainers: refresh the TF.js runtime that ships in tfprod/edge/web/tfjs/ from npm.

    python scripts/refresh_tfjs.py [--version 4.22.0]

Needs Node's `npm` (users never do: the files ship inside the Python package). It packs
@tensorflow/tfjs-core, -converter and -backend-wasm at one version, copies their browser bundles
and the three .wasm builds, writes ops.json (the TensorFlow op names the converter's graph
executor maps, read from tf-converter's own bundle: the exporter checks graphs against it) and
manifest.json (sha256 and size of every file; tests/test_tfjs.py checks the files against it).
LICENSE and NOTICE are kept as they are: review NOTICE when the bundled libraries change.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile

TARGET = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tfprod", "edge", "web", "tfjs")
FILES = {  # package -> files taken from its dist/
    "tfjs-core": ["tf-core.min.js"],
    "tfjs-converter": ["tf-converter.min.js"],
    "tfjs-backend-wasm": ["tf-backend-wasm.min.js", "tfjs-backend-wasm.wasm", "tfjs-backend-wasm-simd.wasm",
                          "tfjs-backend-wasm-threaded-simd.wasm"],
}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--version", default="4.22.0")
    args = p.parse_args()
    target = os.path.abspath(TARGET)
    with tempfile.TemporaryDirectory() as tmp:
        specs = [f"@tensorflow/{name}@{args.version}" for name in FILES]
        subprocess.run(["npm", "pack", "--silent", *specs], cwd=tmp, check=True, stdout=subprocess.DEVNULL)
        for name, files in FILES.items():
            with tarfile.open(os.path.join(tmp, f"tensorflow-{name}-{args.version}.tgz")) as tar:
                for file in files:
                    member = tar.extractfile(f"package/dist/{file}")
                    assert member is not None, file
                    with open(os.path.join(target, file), "wb") as out:
                        shutil.copyfileobj(member, out)
    with open(os.path.join(target, "tf-converter.min.js"), encoding="utf-8") as f:
        ops = sorted(set(re.findall(r'tfOpName:"([A-Za-z0-9_]+)"', f.read())))
    if len(ops) < 200:
        sys.exit(f"found only {len(ops)} op names in tf-converter.min.js: has its bundle format changed?")
    with open(os.path.join(target, "ops.json"), "w") as f:
        json.dump({"version": args.version, "ops": ops}, f, indent=0)
        f.write("\n")
    manifest = {"version": args.version, "files": {}}
    for file in sorted(os.listdir(target)):
        if file == "manifest.json":
            continue
        with open(os.path.join(target, file), "rb") as f:
            data = f.read()
        manifest["files"][file] = {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
    with open(os.path.join(target, "manifest.json"), "w") as f:
        json.dump(manifest, f, indent=1)
        f.write("\n")
    print(f"refreshed {target}: TF.js {args.version}, {len(ops)} ops, {len(manifest['files'])} files")
    return 0


if __name__ == "__main__":
    sys.exit(main())
