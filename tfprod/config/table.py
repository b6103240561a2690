"""One TOML table of a tfprod config file (security, rollout), read strictly: a value of the wrong
type or a key nobody asked for is a `ConfigError` (a typo must not silently turn a setting off)."""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from typing import Any

from tfprod.config.model_config import ConfigError


class Table:
    """Reads one TOML table, refusing keys nobody asked for."""

    def __init__(self, doc: Mapping[str, Any], where: str, docs: str = "docs/security.md") -> None:
        if not isinstance(doc, Mapping):
            raise ConfigError(f"{where} must be a table")
        self._doc, self._where, self._docs, self._seen = doc, where, docs, set[str]()

    def get(self, key: str, kind: type | tuple[type, ...], default: Any = None) -> Any:
        self._seen.add(key)
        value = self._doc.get(key, default)
        if value is default:
            return value
        numeric = kind in (int, float, (int, float))
        if not isinstance(value, kind) or numeric and isinstance(value, bool):
            name = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
            raise ConfigError(f"{self._where}.{key} must be a {name}, got {value!r}")
        return value

    def done(self) -> None:
        unknown = sorted(set(self._doc) - self._seen)
        if unknown:
            raise ConfigError(f"{self._where}: unknown setting(s) {', '.join(unknown)} (see {self._docs})")


def read_toml(path: str, flag: str) -> dict[str, Any]:
    """The file behind `flag` (e.g. --security_config_file), or a ConfigError saying what is wrong with it."""
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except OSError as e:
        raise ConfigError(f"{flag}: cannot read {path}: {e.strerror}") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{flag} {path}: not valid TOML: {e}") from None
