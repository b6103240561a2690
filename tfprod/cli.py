"""The `tfprod` command. `tfprod serve` takes tensorflow_model_server's flags and defaults.

Flags are accepted as `--flag=value` or `--flag value`; booleans also as `--flag` and
`--noflag` (absl's spelling). TensorFlow is imported only once a command needs it, so `--help`
and flag errors answer at once.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Callable, Sequence

_TRUE = {"true", "1", "yes", "t", "y"}
_FALSE = {"false", "0", "no", "f", "n"}


def _bool(text: str) -> bool:
    value = text.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def _add_bool(group: argparse._ArgumentGroup, name: str, default: bool, help: str) -> None:
    group.add_argument(f"--{name}", type=_bool, nargs="?", const=True, default=default, metavar="BOOL",
                       help=f"{help} (default: {str(default).lower()})")
    group.add_argument(f"--no{name}", dest=name, action="store_false", help=argparse.SUPPRESS)


def serve_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="tfprod serve",
        description="Serve TensorFlow SavedModels. Flags and defaults follow tensorflow_model_server.",
        allow_abbrev=False,
    )
    ports = p.add_argument_group("ports")
    ports.add_argument("--port", type=int, default=8500,
                       help="gRPC port: TF Serving's and the V2 inference services; 0 turns the TCP port off "
                            "(default: 8500)")
    ports.add_argument("--grpc_socket_path", default="",
                       help="also serve gRPC on this Unix socket path (default: none)")
    ports.add_argument("--grpc_max_threads", type=int, default=4 * (os.cpu_count() or 1),
                       help="worker threads running gRPC calls (default: 4 x CPUs)")
    ports.add_argument("--grpc_channel_arguments", default="",
                       help="gRPC server arguments, key=value,key=value; integer values are passed as ints "
                            "(e.g. grpc.max_receive_message_length=67108864)")
    ports.add_argument("--ssl_config_file", default="",
                       help="SSLConfig text proto (server_key, server_cert, custom_ca, client_verify): TLS, or "
                            "mutual TLS with client_verify, on the gRPC port")
    ports.add_argument("--rest_api_port", type=int, default=0,
                       help="REST/HTTP port; 0 turns REST off (default: 0, as TF Serving)")
    ports.add_argument("--host", default="0.0.0.0", help="address to bind (tfprod; default: 0.0.0.0)")
    ports.add_argument("--num_workers", type=int, default=1,
                       help="serving processes sharing the REST and gRPC ports, each with its own copy of every "
                            "model, under one supervisor that restarts a worker that dies (tfprod; default: 1; "
                            "docs/serving.md#workers)")
    ports.add_argument("--rest_api_num_threads", type=int, default=4 * (os.cpu_count() or 1),
                       help="worker threads running REST requests (default: 4 x CPUs)")
    ports.add_argument("--rest_api_timeout_in_ms", type=int, default=30000,
                       help="timeout for a REST request; 504 after it (default: 30000)")
    _add_bool(ports, "rest_api_enable_cors_support", False,
              "add CORS headers (Access-Control-Allow-Origin: *) to REST responses")
    ports.add_argument("--rest_api_max_body_bytes", type=int, default=64 * 1024 * 1024,
                       help="largest REST request body, after gzip decoding; 413 above it "
                            "(tfprod; default: 67108864)")

    models = p.add_argument_group("models")
    models.add_argument("--model_name", default="default", help="name of the model (default: default)")
    models.add_argument("--model_base_path", default="",
                        help="directory holding the model's numbered version directories")
    models.add_argument("--model_config_file", default="",
                        help="ModelServerConfig text proto; when set, --model_name/--model_base_path are ignored")
    models.add_argument("--model_config_file_poll_wait_seconds", type=int, default=0,
                        help="re-read --model_config_file every N seconds; 0 reads it once (default: 0)")
    models.add_argument("--file_system_poll_wait_seconds", type=int, default=None,
                        help="look for new model versions every N seconds; 0 looks once (default: 1; 30 for "
                             "s3:// and gs:// base paths, where each look is a paid listing)")
    models.add_argument("--model_cache_dir", default=os.environ.get("TFPROD_MODEL_CACHE") or os.path.join(
                            os.path.expanduser("~"), ".cache", "tfprod", "models"),
                        help="where versions from s3:// and gs:// base paths are downloaded to (tfprod; default: "
                             "$TFPROD_MODEL_CACHE or ~/.cache/tfprod/models)")
    models.add_argument("--max_num_load_retries", type=int, default=5,
                        help="retries of a failed version load before it is given up (default: 5)")
    models.add_argument("--load_retry_interval_micros", type=int, default=60_000_000,
                        help="wait between load retries, in microseconds (default: 60000000)")
    models.add_argument("--saved_model_tags", default="serve",
                        help="comma-separated MetaGraphDef tags to load (default: serve)")
    _add_bool(models, "allow_version_labels_for_unavailable_models", False,
              "let a new label point at a version that is not yet AVAILABLE")
    _add_bool(models, "enable_model_warmup", True,
              "replay assets.extra/tf_serving_warmup_requests before a version takes traffic")
    models.add_argument("--required_metadata_fields", default="",
                        help="comma-separated audit metadata fields a version must carry to be served, e.g. "
                             "owner,approval_id (tfprod; a version without them ends in END with the reason)")
    models.add_argument("--num_request_iterations_for_warmup", type=int, default=1,
                        help="times each warmup record is replayed (default: 1)")
    _add_bool(models, "prefer_tflite_model", False,
              "serve a version's model.tflite (LiteRT) when it also holds a SavedModel; a version holding only "
              "model.tflite is served from it either way")
    models.add_argument("--tflite_num_threads", type=int, default=1,
                        help="threads each LiteRT interpreter uses (default: 1)")
    models.add_argument("--tensorflow_session_parallelism", type=int, default=0,
                        help="threads a SavedModel's Session runs ops on, intra- and inter-op alike, unless one of "
                             "the two flags below is set (default: 0, TensorFlow's choice)")
    models.add_argument("--tensorflow_intra_op_parallelism", type=int, default=0,
                        help="threads one op may use (default: 0, TensorFlow's choice)")
    models.add_argument("--tensorflow_inter_op_parallelism", type=int, default=0,
                        help="ops a Session runs at once (default: 0, TensorFlow's choice)")
    _add_bool(models, "enable_signature_method_name_check", False,
              "classify/regress only on signatures whose method_name says so, as TF 1 servers did")

    batching = p.add_argument_group("batching")
    _add_bool(batching, "enable_batching", False, "merge concurrent requests to a model version into batches")
    batching.add_argument("--batching_parameters_file", default="",
                          help="BatchingParameters text proto (max_batch_size, batch_timeout_micros, ...); "
                               "needs --enable_batching")
    _add_bool(batching, "enable_per_model_batching_parameters", False,
              "read batching_params.pbtxt from each version directory when it has one")

    rollout = p.add_argument_group("gray release")
    rollout.add_argument("--rollout_config_file", default="",
                         help="TOML file of canary rollouts keyed by model: stable and canary arms, weight steps, "
                              "a sticky key, a shadow, analysis rules (tfprod; docs/rollout.md). Re-read on "
                              "--model_config_file_poll_wait_seconds")
    rollout.add_argument("--rollout_state_file", default="",
                         help="where rollout decisions are kept so a restart resumes at the same step "
                              "(tfprod; default: beside --rollout_config_file, with .state.json)")

    security = p.add_argument_group("security")
    security.add_argument("--security_config_file", default="",
                          help="TOML file turning on authentication (API keys, JWT), per-model scopes, rate "
                               "limits, request bounds, signed models, the graph scan and TLS on both ports "
                               "(tfprod; docs/security.md). Re-read when it changes, except [tls]")

    _add_bool(p.add_argument_group("readiness"), "strict_readiness", True,
              "/readyz, V2 and gRPC readiness answer ready only while every configured model has an AVAILABLE "
              "version; false: ready once the startup config is loaded, so a model added later that fails "
              "to load does not take every replica out of a Service (tfprod, as Triton's --strict-readiness)")
    server_group = p.add_argument_group("shutdown")
    server_group.add_argument("--drain_seconds", type=float, default=30.0,
                              help="after SIGTERM, how long requests in flight may take to finish, on both ports "
                                   "(tfprod; default: 30)")

    observe = p.add_argument_group("monitoring")
    observe.add_argument("--log_format", choices=("text", "json"), default="text",
                         help="json: one JSON object per line (time, level, logger, message, model, version, "
                              "request_id) for a cluster's log collector (tfprod; default: text)")
    _add_bool(observe, "enable_console", True, "the web console at /ui/ on the REST port: models, versions, "
              "rollouts, live metrics, lineage (tfprod; docs/console.md)")
    _add_bool(observe, "access_log", False, "log one line per request, REST and gRPC (tfprod)")
    observe.add_argument("--monitoring_config_file", default="",
                         help="MonitoringConfig text proto; prometheus_config { enable: true } "
                              "serves metrics on the REST port")
    return p


def _serve(argv: Sequence[str]) -> int:
    args = serve_parser().parse_args(argv)
    from tfprod.core import logs
    from tfprod.workers.pool import Slot

    worker = Slot.from_env()
    logs.setup(args.log_format, worker.index if worker else None, args.access_log)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if not (args.model_config_file or args.model_base_path):
        return _fail("give --model_base_path (with --model_name) or --model_config_file")
    if args.port <= 0 and args.rest_api_port <= 0 and not args.grpc_socket_path:
        return _fail("--port and --rest_api_port are both 0 and there is no --grpc_socket_path: nothing to serve on")
    if args.rest_api_port > 0 and args.rest_api_port == args.port:
        return _fail(f"--rest_api_port and --port are both {args.port}: give them different ports")
    if min(args.tensorflow_session_parallelism, args.tensorflow_intra_op_parallelism,
           args.tensorflow_inter_op_parallelism) > 0:  # tensorflow_model_server's own refusal
        return _fail("Either configure --tensorflow_session_parallelism or (--tensorflow_intra_op_parallelism, "
                     "--tensorflow_inter_op_parallelism). You cannot configure all.")
    if args.batching_parameters_file and not args.enable_batching:
        return _fail("--batching_parameters_file is set but --enable_batching is not: add --enable_batching")
    from tfprod.api.grpc_server import GrpcOptions, parse_channel_arguments
    from tfprod.batching import BatchingOptions
    from tfprod.config.model_config import (
        ConfigError,
        ModelConfig,
        read_batching_parameters,
        read_model_config_file,
        read_monitoring_config,
        read_ssl_config,
    )
    from tfprod.core.remote import filesystem, is_remote
    from tfprod.errors import ServingError
    from tfprod.rollout.config import read_rollout_config
    from tfprod.security.config import SecurityConfig, read_security_config

    try:
        if args.model_config_file:
            models = read_model_config_file(args.model_config_file)
        else:
            base = args.model_base_path
            models = [ModelConfig(args.model_name, base if is_remote(base) else os.path.abspath(base))]
        metrics_path = read_monitoring_config(args.monitoring_config_file) if args.monitoring_config_file else None
        ssl = read_ssl_config(args.ssl_config_file) if args.ssl_config_file else None
        security = read_security_config(args.security_config_file) if args.security_config_file else None
        rollouts = read_rollout_config(args.rollout_config_file, models) if args.rollout_config_file else {}
        channel_arguments = parse_channel_arguments(args.grpc_channel_arguments)
        batching = None
        if args.enable_batching:
            batching = (read_batching_parameters(args.batching_parameters_file) if args.batching_parameters_file
                        else BatchingOptions())
        for m in models:  # an object store's file system must be installed before anything starts
            if is_remote(m.base_path):
                filesystem(m.base_path.split("://", 1)[0])
    except (ConfigError, ValueError) as e:
        return _fail(str(e))
    except ServingError as e:
        return _fail(e.message)
    if args.num_workers > 1 and args.rollout_config_file:
        return _fail("--rollout_config_file needs --num_workers=1: a rollout's analysis runs in one process (scale "
                     "out with replicas, each with its own rollout, docs/rollout.md)")
    if args.num_workers > 1 and worker is None:
        if args.grpc_socket_path:
            return _fail("--grpc_socket_path cannot be shared by --num_workers processes: use --port")
        from tfprod.workers import supervisor

        busy = supervisor.check_ports_free(args.host, [p for p in (args.port, args.rest_api_port) if p > 0])
        if busy:
            return _fail(busy)
        return supervisor.supervise(argv, args.num_workers)
    # TensorFlow is imported from here on (a supervisor gets this far without it)
    from tfprod.api.rest import RestOptions
    from tfprod.export.migrate import keras_files_without_saved_model
    from tfprod.server import ServerOptions, run

    for m in models:
        keras = keras_files_without_saved_model(m.base_path)
        if keras == [m.base_path]:
            target = os.path.splitext(m.base_path)[0]
            return _fail(f"model '{m.name}': {m.base_path} is a Keras file, not a directory of SavedModel versions, "
                         f"and it carries no serving signatures: convert it with `tfprod migrate {m.base_path} "
                         f"{target}`, then serve --model_base_path={target}")
        if keras:
            return _fail(f"model '{m.name}': {m.base_path} holds Keras files ({', '.join(keras[:3])}), not "
                         f"SavedModels, and they carry no serving signatures: convert with `tfprod migrate "
                         f"{keras[0]} {m.base_path}`")
    tags = frozenset(t.strip() for t in args.saved_model_tags.split(",") if t.strip())
    try:
        run(ServerOptions(
            models=tuple(models),
            rest_api_port=args.rest_api_port,
            host=args.host,
            model_config_file=args.model_config_file,
            model_config_file_poll_wait_seconds=args.model_config_file_poll_wait_seconds,
            file_system_poll_wait_seconds=1 if args.file_system_poll_wait_seconds is None
            else args.file_system_poll_wait_seconds,
            remote_poll_wait_seconds=30 if args.file_system_poll_wait_seconds is None
            else args.file_system_poll_wait_seconds,
            model_cache_dir=args.model_cache_dir,
            grace_s=max(args.drain_seconds, 0.0),
            max_num_load_retries=args.max_num_load_retries,
            load_retry_interval_micros=args.load_retry_interval_micros,
            saved_model_tags=tags,
            allow_version_labels_for_unavailable_models=args.allow_version_labels_for_unavailable_models,
            strict_readiness=args.strict_readiness,
            enable_console=args.enable_console,
            enable_signature_method_name_check=args.enable_signature_method_name_check,
            batching=batching,
            enable_model_warmup=args.enable_model_warmup,
            required_metadata_fields=tuple(f.strip() for f in args.required_metadata_fields.split(",") if f.strip()),
            num_request_iterations_for_warmup=args.num_request_iterations_for_warmup,
            per_model_batching=args.enable_per_model_batching_parameters,
            prefer_tflite_model=args.prefer_tflite_model,
            tflite_num_threads=max(1, args.tflite_num_threads),
            session_threads=_session_threads(args),
            rest=RestOptions(
                timeout_s=args.rest_api_timeout_in_ms / 1000,
                enable_cors=args.rest_api_enable_cors_support,
                metrics_path=metrics_path,
                max_body_bytes=args.rest_api_max_body_bytes,
                num_threads=max(args.rest_api_num_threads, 1),
            ),
            grpc=GrpcOptions(
                port=max(args.port, 0),
                host=args.host,
                socket_path=args.grpc_socket_path,
                max_threads=max(args.grpc_max_threads, 1),
                channel_arguments=channel_arguments,
                ssl=ssl,
            ),
            security=security or SecurityConfig(),
            worker=worker,
            rollout_config_file=args.rollout_config_file,
            rollout_state_file=args.rollout_state_file or (args.rollout_config_file + ".state.json"
                                                           if args.rollout_config_file else ""),
            rollouts=tuple(rollouts.values()),
        ))
    except (OSError, ConfigError) as e:
        return _fail(str(e))
    return 0


def _session_threads(args: argparse.Namespace) -> tuple[int, int]:
    """(intra, inter) as tensorflow_model_server derives them: the two specific flags win over
    --tensorflow_session_parallelism when either is set."""
    intra, inter = max(args.tensorflow_intra_op_parallelism, 0), max(args.tensorflow_inter_op_parallelism, 0)
    if intra or inter:
        return intra, inter
    both = max(args.tensorflow_session_parallelism, 0)
    return both, both


def _fail(message: str) -> int:
    print(f"tfprod serve: error: {message}", file=sys.stderr)
    return 1


# The other commands: (module, function), imported only when the command runs.
_LAZY = {
    "demo": ("tfprod.demo", "main"), "inspect": ("tfprod.export.inspect", "main"),
    "migrate": ("tfprod.export.migrate", "main"), "warmup": ("tfprod.export.warmup", "main"),
    "convert": ("tfprod.edge.convert", "main"), "parity": ("tfprod.edge.parity", "main"),
    "pipeline": ("tfprod.pipeline.cli", "main"), "lineage": ("tfprod.pipeline.lineage", "main"),
    "sign": ("tfprod.security.tools", "sign"), "verify": ("tfprod.security.tools", "verify"),
    "apikey": ("tfprod.security.tools", "apikey"),
}


def _lazy(command: str) -> Callable[[Sequence[str]], int]:
    def run(argv: Sequence[str]) -> int:
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        module, function = _LAZY[command]
        return int(getattr(importlib.import_module(module), function)(argv))
    return run


COMMANDS: dict[str, Callable[[Sequence[str]], int]] = {"serve": _serve, **{c: _lazy(c) for c in _LAZY}}


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        print("usage: tfprod {serve,demo,inspect,migrate,warmup,convert,parity,pipeline,lineage,sign,verify,apikey} "
              "[flags]\n\n"
              "  serve   serve SavedModels with TF Serving's flags, REST API and config files\n"
              "  demo    train a digits classifier, export it under ./models/digits and serve it\n"
              "  inspect show a SavedModel's signatures, audit metadata and files (--json for machines)\n"
              "  migrate turn a .h5/.keras file into a SavedModel version (Keras safe mode)\n"
              "  warmup  write a version's warmup requests (TF Serving's format) from JSON requests\n"
              "  convert convert a SavedModel version to TFLite or TF.js\n"
              "  parity  compare a version's answers in TensorFlow, LiteRT and TF.js (exit 1 when off)\n"
              "  pipeline run a training pipeline (examples, statistics, validation...) with lineage\n"
              "  lineage show where a served version came from: data, validation, training, blessing, push\n"
              "  sign    sign a version directory (OpenSSF model-signing format, EC key)\n"
              "  verify  check a version directory's signature against public keys\n"
              "  apikey  make an API key and print its hashed entry for the security config\n\n"
              "Run `tfprod COMMAND --help` for a command's flags.", file=sys.stderr if argv else sys.stdout)
        if argv and argv[0] not in ("-h", "--help"):
            print(f"\ntfprod: unknown command {argv[0]!r}", file=sys.stderr)
            return 2
        return 0
    return COMMANDS[argv[0]](argv[1:])


if __name__ == "__main__":
    sys.exit(main())
