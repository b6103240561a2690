#!/usr/bin/env bash
# Regenerates the Python modules for grpc_predict_v2.proto (run from anywhere; needs grpcio-tools).
#
# Two edits follow protoc:
#  - the message module builds its descriptors in a private DescriptorPool, not the default one:
#    tritonclient registers the same `inference.*` names in the default pool, and a second
#    registration of a name fails ("duplicate symbol"), so the two could not share a process;
#  - the service module imports the message module by its package path.
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
python="${PYTHON:-$root/.venv/bin/python}"

"$python" -m grpc_tools.protoc -I "$here" \
  --python_out="$here" --grpc_python_out="$here" --pyi_out="$here" \
  "$here/grpc_predict_v2.proto"

pb2="$here/grpc_predict_v2_pb2.py"
grpc="$here/grpc_predict_v2_pb2_grpc.py"

sed -i 's/^DESCRIPTOR = _descriptor_pool\.Default()\.AddSerializedFile(/POOL = _descriptor_pool.DescriptorPool()  # private: see generate.sh\nDESCRIPTOR = POOL.AddSerializedFile(/' "$pb2"
sed -i 's/^import grpc_predict_v2_pb2 as /from tfprod.protos import grpc_predict_v2_pb2 as /' "$grpc"

grep -q '^DESCRIPTOR = POOL\.AddSerializedFile(' "$pb2" || { echo "generate.sh: private-pool edit failed" >&2; exit 1; }
grep -q '^from tfprod.protos import grpc_predict_v2_pb2 as ' "$grpc" || { echo "generate.sh: import edit failed" >&2; exit 1; }
if grep -q '_descriptor_pool\.Default()' "$pb2"; then echo "generate.sh: default pool still used" >&2; exit 1; fi
