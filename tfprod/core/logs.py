"""The server's log lines: text for a person, or JSON for a cluster's log collector
(`--log_format=json`: one object per line with time, level, logger, message, and `model`,
`version`, `request_id` where a line is about one). Access lines (`--access_log`, off by
default, as in TF Serving) come from the `tfprod.access` logger, one per request on either port."""

from __future__ import annotations

import logging
from typing import Any

ACCESS = logging.getLogger("tfprod.access")


def setup(log_format: str, worker: int | None, access_log: bool) -> None:
    handler = logging.StreamHandler()
    if log_format == "json":
        # python-json-logger: extra= fields become keys of the object
        from pythonjsonlogger.json import JsonFormatter

        handler.setFormatter(JsonFormatter(
            "%(asctime)s %(levelname)s %(name)s %(message)s", datefmt="%Y-%m-%dT%H:%M:%S%z",
            rename_fields={"asctime": "time", "levelname": "level", "name": "logger"},
            static_fields={} if worker is None else {"worker": worker}))
    else:
        where = f" [worker {worker}]" if worker is not None else ""
        handler.setFormatter(logging.Formatter(f"%(asctime)s %(levelname)s %(name)s{where}: %(message)s"))
    logging.basicConfig(level=logging.INFO, handlers=[handler], force=True)
    ACCESS.setLevel(logging.INFO if access_log else logging.WARNING)


def about(model: str, version: int | None = None) -> dict[str, Any]:
    """`extra=` for a line about one model (version): its fields in a JSON line."""
    return {"model": model} if version is None else {"model": model, "version": version}


def access(protocol: str, api: str, model: str, status: str, seconds: float, client: str,
           request_id: str | None) -> None:
    """One request's access line (when `--access_log` is on; checking costs one level test)."""
    if ACCESS.isEnabledFor(logging.INFO):
        ACCESS.info("%s %s %s %s %.1f ms %s", protocol, api, model or "-", status, seconds * 1000, client,
                    extra={"protocol": protocol, "api": api, "model": model or None, "status": status,
                           "duration_ms": round(seconds * 1000, 3), "client": client, "request_id": request_id})
