"""The file-system source: polls base paths for version directories and aspires them.

Like TF Serving's FileSystemStoragePathSource it keeps no serving state: after every scan it
sends the manager the complete list of versions it wants for each model. Unlike TF Serving it
never offers a version that is still being written: a version directory is offered only when
it holds a model file (`is_complete`) and its files (names, sizes, mtimes) did not change for
`settle_s`, seen by two scans at least that far apart. While a wanted version settles, scans run
every `settle_s`, so a finished version is picked up quickly while a half-copied one is not.

A base path in object storage (`tfprod.core.remote`) is scanned every `remote_poll_wait_s` with
one listing; its settled versions are downloaded to `cache_dir` and offered from there. A store
that does not answer keeps the versions serving and is asked again at the next poll.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import threading
import time
from collections.abc import Callable, Sequence

from tfprod.core import remote
from tfprod.core.manager import AspiredVersion
from tfprod.core.version_policy import VersionPolicy, select

log = logging.getLogger("tfprod.source")

Fingerprint = remote.Fingerprint


@dataclasses.dataclass(frozen=True)
class Watch:
    name: str
    base_path: str
    policy: VersionPolicy


@dataclasses.dataclass(frozen=True)
class SourceOptions:
    poll_wait_s: float = 1.0  # 0: scan until every version settled, then stop
    settle_s: float = 0.5
    remote_poll_wait_s: float = 30.0  # object storage: a listing costs money (docs/kubernetes.md)
    remote_settle_s: float = 5.0  # an object shows in a listing only once it is whole: wait longer
    cache_dir: str = os.path.join(os.path.expanduser("~"), ".cache", "tfprod", "models")


AspiredCallback = Callable[[str, Sequence[AspiredVersion]], None]
_RETRY_S = 30.0  # a store that failed is asked again after this, even when polling once


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
        self._due: dict[str, float] = {}  # remote base path -> when to list it next
        self._unreachable: dict[str, str] = {}  # remote base path -> why its last listing failed
        self._settling: set[str] = set()  # models whose chosen versions are still being written
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def set_watches(self, watches: Sequence[Watch]) -> None:
        """Replace the models to watch; dropped models get an empty aspired list (unload)."""
        with self._lock:  # serialized with poll(): a scan in progress cannot revive a dropped model
            dropped = [name for name in self._watches if name not in {w.name for w in watches}]
            for base in {w.base_path for w in self._watches.values()} - {w.base_path for w in watches}:
                if remote.is_remote(base):  # its copies go with it
                    remote.prune(self._options.cache_dir, base, set(), min_age_s=0.0)
            self._watches = {w.name: w for w in watches}
            self._scanned &= set(self._watches)
            self._due = {}  # a new config is listed at once
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
            waits = [self._options.settle_s] if unsettled else []
            if self._options.poll_wait_s > 0:
                waits.append(self._options.poll_wait_s)
            with self._lock:
                waits += [max(due - time.monotonic(), 0.0) for due in self._due.values() if due != float("inf")]
            self._wake.wait(timeout=min(waits) if waits else None)  # none: wait only for a config change
            self._wake.clear()

    def poll(self) -> bool:
        """Scan every watched base path once; True if some wanted version is still settling.

        The version policy chooses among complete versions, settled or not. If its choice
        includes one still settling, the model's previous list is sent again, so the versions
        serving now keep serving (even if their directories were just deleted) until the new
        one has settled and loaded. Remote versions are downloaded after the scan, outside the
        lock (a large download must not hold up the other models or a config change).
        """
        fetches: list[tuple[Watch, list[int], dict[int, tuple[str, Fingerprint]]]] = []
        with self._lock:
            clock = time.monotonic()
            now: dict[str, tuple[Fingerprint, float]] = {}  # one fingerprint per directory per scan
            listings: dict[str, dict[int, tuple[str, Fingerprint]] | None] = {}  # one listing per base path
            unsettled = False
            for watch in self._watches.values():
                base, is_remote = watch.base_path, remote.is_remote(watch.base_path)
                if base not in listings:
                    listings[base] = self._list(watch, clock)
                listed = listings[base]
                if listed is None:  # not due, or the store did not answer: what serves stays
                    prefix = base.rstrip("/") + "/"
                    now.update({p: seen for p, seen in self._seen.items() if p.startswith(prefix)})
                    if base in self._unreachable:
                        self._settling.discard(watch.name)  # nothing to wait for until it answers
                    if watch.name not in self._scanned:
                        self._scanned.add(watch.name)
                        self._callback(watch.name, self._sent.get(watch.name, []))
                    continue
                complete: dict[int, str] = {}
                settling: set[int] = set()
                settle_s = self._options.remote_settle_s if is_remote else self._options.settle_s
                if not listed and base not in self._missing_logged:
                    log.warning("No versions of servable %s found under base path %s", watch.name, base)
                    self._missing_logged.add(base)
                elif listed:
                    self._missing_logged.discard(base)
                for version, (path, files) in listed.items():
                    if path not in now:
                        before = self._seen.get(path)
                        now[path] = before if before is not None and before[0] == files else (files, clock)
                    complete[version] = path
                    since = now[path][1]
                    if since == clock or clock - since < settle_s:  # changed: this scan or lately
                        settling.add(version)
                chosen = select(watch.policy, complete)
                self._scanned.add(watch.name)
                self._settling.discard(watch.name)
                if settling.intersection(chosen):
                    unsettled = True
                    self._settling.add(watch.name)
                    if is_remote:  # listed again once the window has passed, not at every poll
                        self._due[base] = min(self._due.get(base, float("inf")), clock + settle_s)
                    aspired = self._sent.get(watch.name, [])
                elif is_remote:
                    self._settling.add(watch.name)  # until its versions are downloaded
                    fetches.append((watch, list(chosen), listed))
                    continue
                else:
                    aspired = [AspiredVersion(v, complete[v]) for v in chosen]
                self._sent[watch.name] = aspired
                self._callback(watch.name, aspired)
            self._seen = now
        for watch, chosen, listed in fetches:
            self._offer_remote(watch, chosen, listed)
        return unsettled

    def _list(self, watch: Watch, clock: float) -> dict[int, tuple[str, Fingerprint]] | None:
        """The complete versions under a base path and their files; None for a remote one that is
        not due yet or did not answer."""
        base = watch.base_path
        if not remote.is_remote(base):
            return {v: (path, fingerprint(path)) for v, path in version_dirs(base).items() if self._is_complete(path)}
        if clock < self._due.get(base, 0.0):
            return None
        retry_s = self._options.remote_poll_wait_s or _RETRY_S
        self._due[base] = clock + self._options.remote_poll_wait_s if self._options.remote_poll_wait_s > 0 \
            else float("inf")
        try:
            versions = remote.scan(base)
        except remote.Unreachable as e:
            self._due[base] = clock + retry_s  # retried, in poll-once mode too
            if self._unreachable.get(base) != str(e):
                log.error("%s; the versions of %s serving now stay, and the listing is retried every %g s",
                          e, watch.name, retry_s)
                self._unreachable[base] = str(e)
            return None
        if self._unreachable.pop(base, None) is not None:
            log.info("%s answers again", base)
        return {v: (f"{base.rstrip('/')}/{v}", files) for v, files in versions.items() if remote.is_complete(files)}

    def _offer_remote(self, watch: Watch, chosen: list[int], listed: dict[int, tuple[str, Fingerprint]]) -> None:
        """Download the chosen versions (outside the lock), then offer those that came down; a
        version that did not is tried again at the next poll, and what serves keeps serving."""
        cache, base = self._options.cache_dir, watch.base_path
        done: dict[int, str] = {}
        for v in chosen:
            try:
                done[v] = remote.fetch(base, v, listed[v][1], cache)
            except remote.Unreachable as e:
                log.error("%s; retried in %g s", e, self._options.remote_poll_wait_s or _RETRY_S)
        with self._lock:
            if self._watches.get(watch.name) != watch:
                return  # dropped or changed while it downloaded: the next poll decides
            self._settling.discard(watch.name)
            before = self._sent.get(watch.name, [])
            if len(done) < len(chosen):
                self._due[base] = time.monotonic() + (self._options.remote_poll_wait_s or _RETRY_S)
                kept = [a for a in before if a.version in listed and a.version not in done]
                aspired = sorted(kept + [AspiredVersion(v, p) for v, p in done.items()], key=lambda a: a.version)
            else:
                aspired = [AspiredVersion(v, done[v]) for v in chosen]
            self._sent[watch.name] = aspired
            self._callback(watch.name, aspired)
        # the copies neither offered now nor serving until now go (once other workers are done with them)
        remote.prune(cache, base, {a.version for a in aspired} | {a.version for a in before})
