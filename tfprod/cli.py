"""The `tfprod` command. `tfprod serve` takes tensorflow_model_server's flags and defaults.

Flags are accepted as `--flag=value` or `--flag value`; booleans also as `--flag` and
`--noflag` (absl's spelling). TensorFlow is imported only once a command needs it, so `--help`
and flag errors answer at once.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence

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
    ports.add_argument("--port", type=int, default=8500, help="gRPC port (default: 8500; gRPC is served "
                       "from the gRPC release on: accepted now so existing command lines work)")
    ports.add_argument("--rest_api_port", type=int, default=0,
                       help="REST/HTTP port; 0 turns REST off (default: 0, as TF Serving)")
    ports.add_argument("--host", default="0.0.0.0", help="address to bind (tfprod; default: 0.0.0.0)")
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
    models.add_argument("--file_system_poll_wait_seconds", type=int, default=1,
                        help="look for new model versions every N seconds; 0 looks once (default: 1)")
    models.add_argument("--max_num_load_retries", type=int, default=5,
                        help="retries of a failed version load before it is given up (default: 5)")
    models.add_argument("--load_retry_interval_micros", type=int, default=60_000_000,
                        help="wait between load retries, in microseconds (default: 60000000)")
    models.add_argument("--saved_model_tags", default="serve",
                        help="comma-separated MetaGraphDef tags to load (default: serve)")
    _add_bool(models, "allow_version_labels_for_unavailable_models", False,
              "let a new label point at a version that is not yet AVAILABLE")

    observe = p.add_argument_group("monitoring")
    observe.add_argument("--monitoring_config_file", default="",
                         help="MonitoringConfig text proto; prometheus_config { enable: true } "
                              "serves metrics on the REST port")
    return p


def _serve(argv: Sequence[str]) -> int:
    args = serve_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", force=True)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if not (args.model_config_file or args.model_base_path):
        return _fail("give --model_base_path (with --model_name) or --model_config_file")
    if args.rest_api_port <= 0:
        return _fail("--rest_api_port is 0, so REST is off, and this release serves REST only: "
                     "pass --rest_api_port=8501")
    if args.rest_api_port == args.port:
        return _fail(f"--rest_api_port and --port are both {args.port}: give them different ports")
    from tfprod.api.rest import RestOptions
    from tfprod.config.model_config import ConfigError, ModelConfig, read_model_config_file, read_monitoring_config
    from tfprod.server import ServerOptions, run

    try:
        if args.model_config_file:
            models = read_model_config_file(args.model_config_file)
        else:
            models = [ModelConfig(args.model_name, os.path.abspath(args.model_base_path))]
        metrics_path = read_monitoring_config(args.monitoring_config_file) if args.monitoring_config_file else None
    except ConfigError as e:
        return _fail(str(e))
    tags = frozenset(t.strip() for t in args.saved_model_tags.split(",") if t.strip())
    run(ServerOptions(
        models=tuple(models),
        rest_api_port=args.rest_api_port,
        host=args.host,
        model_config_file=args.model_config_file,
        model_config_file_poll_wait_seconds=args.model_config_file_poll_wait_seconds,
        file_system_poll_wait_seconds=args.file_system_poll_wait_seconds,
        max_num_load_retries=args.max_num_load_retries,
        load_retry_interval_micros=args.load_retry_interval_micros,
        saved_model_tags=tags,
        allow_version_labels_for_unavailable_models=args.allow_version_labels_for_unavailable_models,
        rest=RestOptions(
            timeout_s=args.rest_api_timeout_in_ms / 1000,
            enable_cors=args.rest_api_enable_cors_support,
            metrics_path=metrics_path,
            max_body_bytes=args.rest_api_max_body_bytes,
            num_threads=max(args.rest_api_num_threads, 1),
        ),
    ))
    return 0


def _fail(message: str) -> int:
    print(f"tfprod serve: error: {message}", file=sys.stderr)
    return 1


def _demo(argv: Sequence[str]) -> int:
    from tfprod.demo import main

    return main(argv)


COMMANDS = {"serve": _serve, "demo": _demo}


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        print("usage: tfprod {serve,demo} [flags]\n\n"
              "  serve   serve SavedModels with TF Serving's flags, REST API and config files\n"
              "  demo    train a digits classifier, export it under ./models/digits and serve it\n\n"
              "Run `tfprod COMMAND --help` for a command's flags.", file=sys.stderr if argv else sys.stdout)
        if argv and argv[0] not in ("-h", "--help"):
            print(f"\ntfprod: unknown command {argv[0]!r}", file=sys.stderr)
            return 2
        return 0
    return COMMANDS[argv[0]](argv[1:])


if __name__ == "__main__":
    sys.exit(main())
