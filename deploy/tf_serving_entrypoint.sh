#!/bin/sh
# The image's entrypoint, with TF Serving's image conventions, so `tensorflow/serving` users swap
# the image name: `docker run IMAGE [--flag ...]` serves $MODEL_BASE_PATH/$MODEL_NAME with gRPC on
# 8500 and REST on 8501, every flag passed through (a later flag wins; --model_config_file wins
# over the model name and path). A first argument that is not a flag is a tfprod command
# (`docker run IMAGE pipeline run ...`). Installed as `tensorflow_model_server` too, for
# manifests that name TF Serving's binary. `exec`: tfprod is the process that gets SIGTERM and
# drains (TF Serving's own script keeps a shell in front that never passes it on).
set -e
if [ "$(basename "$0")" = tensorflow_model_server ]; then
  exec tfprod serve "$@"
fi
if [ "$(basename "${1:-}")" = tensorflow_model_server ]; then
  shift  # args that name TF Serving's binary first, as KServe's TF Serving runtime does
  exec tfprod serve "$@"
fi
case "${1:-}" in
  "" | -*)
    exec tfprod serve --port=8500 --rest_api_port=8501 \
      --model_name="${MODEL_NAME:-model}" --model_base_path="${MODEL_BASE_PATH:-/models}/${MODEL_NAME:-model}" "$@"
    ;;
  *)
    exec tfprod "$@"
    ;;
esac
