"""The file-system source: polls base paths for version directories and aspires them.

Like TF Serving's FileSystemStoragePathSource it keeps no serving state: after every scan it
sends the manager the complete list of versions it wants for each model. Unlike TF Serving it
never offers a version that is still being written: a version directory is offered only when
it holds a model file (`is_complete`) and its files (names, sizes, mtimes) did not change for
`settle_s`, seen by two scans at least that far apart. While a wanted version settles, scans run
every `settle_s`, so a finished version is picked up quickly while a half-copied one is not.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import threading
import time
from collections.abc import Callable, Sequence

from tfprod.core.manager import AspiredVersion
from tfprod.core.version_policy import VersionPolicy, select

log = logging.getLogger("tfprod.source")

Fingerprint = tuple[tuple[str, int, int], ...]


@dataclasses.dataclass(frozen=True)
class Watch:
    name: str
    base_path: str
    policy: VersionPolicy


@dataclasses.dataclass(frozen=True)
class SourceOptions:
    poll_wait_s: float = 1.0  # 0: scan until every version settled, then stop
    settle_s: float = 0.5


AspiredCallback = Callable[[str, Sequence[AspiredVersion]], None]


def fingerprint(path: str) -> Fingerprint:
    """Names, sizes and mtimes of every file under `path`: equal twice means nobody writes."""
    entries: list[tuple[str, int, int]] = []
    for root, _dirs, files in os.walk(path):
        for f in files:
            full = os.path.join(root, f)
            try:
                st = os.stat(full)
            except FileNotFoundError:
                continue
            entries.append((os.path.relpath(full, path), st.st_size, st.st_mtime_ns))
    return tuple(sorted(entries))


def version_dirs(base_path: str) -> dict[int, str]:
    """Integer-named subdirectories of `base_path` (TF Serving parses names as int64)."""
    try:
        names = os.listdir(base_path)
    except (FileNotFoundError, NotADirectoryError, PermissionError):
        return {}
    found: dict[int, str] = {}
    for name in names:
        full = os.path.join(base_path, name)
        if name.isdigit() and os.path.isdir(full):
            found[int(name)] = full
    return found


class FileSystemSource:
    def __init__(
        self,
        callback: AspiredCallback,
        is_complete: Callable[[str], bool],
        options: SourceOptions,
    ) -> None:
        self._callback = callback
        self._is_complete = is_complete
        self._options = options
        self._lock = threading.Lock()
        self._watches: dict[str, Watch] = {}
        self._seen: dict[str, tuple[Fingerprint, float]] = {}  # version dir -> (fingerprint, since when)
        self._sent: dict[str, list[AspiredVersion]] = {}  # model -> the last aspired list sent
        self._missing_logged: set[str] = set()
        self._scanned: set[str] = set()  # models scanned at least once since they were watched
        self._settling: set[str] = set()  # models whose chosen versions are still being written
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def set_watches(self, watches: Sequence[Watch]) -> None:
        """Replace the models to watch; dropped models get an empty aspired list (unload)."""
        with self._lock:  # serialized with poll(): a scan in progress cannot revive a dropped model
            dropped = [name for name in self._watches if name not in {w.name for w in watches}]
            self._watches = {w.name: w for w in watches}
            self._scanned &= set(self._watches)
            for name in dropped:
                self._sent.pop(name, None)
                self._callback(name, [])
        self._wake.set()

    def nothing_to_offer(self, name: str) -> bool:
        """True once a scan of `name` found no version to offer: none there, none complete, or none
        the version policy chose; False while a chosen version is still being written."""
        with self._lock:
            return name in self._scanned and name not in self._settling and not self._sent.get(name)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="tfprod-source", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def _run(self) -> None:
        while not self._stop.is_set():
            unsettled = self.poll()
            if unsettled:
                wait: float | None = self._options.settle_s
            elif self._options.poll_wait_s > 0:
                wait = self._options.poll_wait_s
            else:
                wait = None  # poll once: wait only for a config change
            self._wake.wait(timeout=wait)
            self._wake.clear()

    def poll(self) -> bool:
        """Scan every watched base path once; True if some wanted version is still settling.

        The version policy chooses among complete versions, settled or not. If its choice
        includes one still settling, the model's previous list is sent again, so the versions
        serving now keep serving (even if their directories were just deleted) until the new
        one has settled and loaded.
        """
        with self._lock:
            clock = time.monotonic()
            now: dict[str, tuple[Fingerprint, float]] = {}  # one fingerprint per directory per scan
            unsettled = False
            for watch in self._watches.values():
                complete: dict[int, str] = {}
                settling: set[int] = set()
                dirs = version_dirs(watch.base_path)
                if not dirs and watch.base_path not in self._missing_logged:
                    log.warning("No versions of servable %s found under base path %s", watch.name, watch.base_path)
                    self._missing_logged.add(watch.base_path)
                elif dirs:
                    self._missing_logged.discard(watch.base_path)
                for version, path in dirs.items():
                    if not self._is_complete(path):
                        continue
                    if path not in now:
                        files = fingerprint(path)
                        before = self._seen.get(path)
                        now[path] = before if before is not None and before[0] == files else (files, clock)
                    complete[version] = path
                    since = now[path][1]
                    if since == clock or clock - since < self._options.settle_s:  # changed: this scan or lately
                        settling.add(version)
                chosen = select(watch.policy, complete)
                self._scanned.add(watch.name)
                self._settling.discard(watch.name)
                if settling.intersection(chosen):
                    unsettled = True
                    self._settling.add(watch.name)
                    aspired = self._sent.get(watch.name, [])
                else:
                    aspired = [AspiredVersion(v, complete[v]) for v in chosen]
                self._sent[watch.name] = aspired
                self._callback(watch.name, aspired)
            self._seen = now
            return unsettled
