"""The rollouts a server runs: routing state, per-arm windows, the analysis loop, the admin
actions, the state file and the Prometheus series.

Requests ask `choose` (lock-free reads of an immutable state) which arm answers; `Service` then
reports each outcome with `record` and each shadow comparison with `compared`. One thread judges
every model's window once per interval (`analysis.judge`) and moves its state:

    progressing --pass--> next step ... --pass at the last step--> promoted
         |  \\--fail x failure_limit--> rolled_back (weight 0)
         '--admin: pause/resume/promote/abort/set_weight--

Promotion moves the stable arm's label to the canary version through the manager's label
semantics (a label moves only onto an AVAILABLE version, in one step: `labels/stable` never
misses). Every change is written to the state file, so a restart resumes at the same step.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import json
import logging
import os
import random
import tempfile
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, Protocol

import numpy as np
from prometheus_client.core import HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from tfprod.config.model_config import ConfigError, ModelConfig
from tfprod.core.manager import Manager
from tfprod.errors import Code, ServingError
from tfprod.metrics import Histogram
from tfprod.rollout import analysis
from tfprod.rollout.analysis import ArmWindow, ShadowWindow
from tfprod.rollout.config import Arm, Rollout, read_rollout_config

log = logging.getLogger("tfprod.rollout")

PROGRESSING, PAUSED, PROMOTED, ROLLED_BACK, ABORTED = "progressing", "paused", "promoted", "rolled_back", "aborted"
STATES = (PROGRESSING, PAUSED, PROMOTED, ROLLED_BACK, ABORTED)
ACTIONS = ("pause", "resume", "promote", "abort", "set_weight")
STABLE, CANARY = "stable", "canary"
_SAMPLE = 10_000  # latencies and drift values kept per arm and interval (a uniform sample beyond)
_HISTORY = 20

PREFIX = ":tfprod:rollout:"


class Labels(Protocol):
    """Where promotion moves a label: `ServerCore.override_labels`."""

    def override_labels(self, model: str, labels: Mapping[str, int]) -> None: ...


@dataclasses.dataclass(frozen=True)
class Choice:
    model: str
    arm: str  # STABLE or CANARY
    version: int
    shadow_version: int | None = None  # run this version too, after the answer, and compare


@dataclasses.dataclass(frozen=True)
class State:
    """What a rollout has decided so far: replaced whole on every change, read without a lock."""

    state: str = PROGRESSING
    step: int = 0
    weight: float = 0.0
    failures: int = 0  # consecutive failed intervals
    canary_version: int | None = None  # what the canary arm named when the rollout started
    promoted: int | None = None  # where a promotion moved the stable label (kept by the next rollout)
    reason: str = ""
    last_analysis: dict[str, Any] | None = None
    history: tuple[dict[str, Any], ...] = ()

    def event(self, what: str, **changes: Any) -> State:
        entry = {"time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "event": what}
        return dataclasses.replace(self, history=(*self.history, entry)[-_HISTORY:], **changes)


def _identity(rollout: Rollout) -> dict[str, Any]:
    return {"stable": str(rollout.stable), "canary": str(rollout.canary), "steps": list(rollout.steps)}


class _Live:
    def __init__(self, rollout: Rollout, state: State, now: float) -> None:
        self.rollout = rollout
        self.state = state
        self.windows = {STABLE: ArmWindow(), CANARY: ArmWindow()}
        self.seen = {STABLE: [0, 0], CANARY: [0, 0]}  # (latencies, drift values) offered to the sample
        self.shadow = ShadowWindow()
        self.due = now + rollout.analysis.interval_s


class Rollouts(Collector):
    def __init__(self, manager: Manager[Any], labels: Labels, state_path: str | None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._manager = manager
        self._labels = labels
        self._state_path = state_path
        self._clock = clock
        self._lock = threading.RLock()
        self._live: dict[str, _Live] = {}
        self._in_flight: dict[str, int] = defaultdict(int)  # shadows running per model, across config changes
        # Label moves decided under the lock, made outside it (`_move_labels`): ServerCore's lock can
        # be held for a whole reload, and requests take this lock on the event loop.
        self._moves: list[tuple[str, dict[str, int]]] = []
        self._moving = threading.Lock()
        self._writing = threading.Lock()  # the state file's one writer
        self._saved = self._read_state()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._save_warned = False
        # Prometheus series, kept for the life of the server
        self._requests: dict[tuple[str, str, str, str], int] = defaultdict(int)
        self._latency: dict[tuple[str, str], Histogram] = defaultdict(Histogram)
        self._shadow: dict[tuple[str, str], int] = defaultdict(int)  # (model, compared|error|dropped)
        self._shadow_rows: dict[tuple[str, str], int] = defaultdict(int)  # (model, compared|disagreeing)
        self._analyses: dict[tuple[str, str], int] = defaultdict(int)
        self._rollbacks: dict[str, int] = defaultdict(int)
        self._psi: dict[str, float] = {}

    # -- the config ------------------------------------------------------------------------

    def apply(self, rollouts: Mapping[str, Rollout]) -> None:
        """Take a rollout config. Refused whole (ConfigError) when an arm names a version the model
        does not have; then the running rollouts stay as they were. A rollout whose arms and steps
        did not change keeps its state; a new one resumes from the state file when that file
        recorded the same rollout, else starts at its first step."""
        for rollout in rollouts.values():
            known = {s.version for s in self._manager.status(rollout.model)}
            arms = [("stable", rollout.stable), ("canary", rollout.canary)]
            if rollout.shadow is not None:
                arms.append(("shadow", rollout.shadow.arm))
            for what, arm in arms:
                if arm.version is not None and arm.version not in known:
                    have = ", ".join(map(str, sorted(known))) or "none"
                    raise ConfigError(f"[models.{rollout.model}].{what}: model '{rollout.model}' has no version "
                                      f"{arm.version} (its versions: {have})")
        with self._lock:
            now = self._clock()
            for name in list(self._live):
                if name not in rollouts:
                    del self._live[name]
                    self._moves.append((name, {}))
                    log.info("rollout of %s removed: its labels are the model config's again", name)
            for name, rollout in rollouts.items():
                live = self._live.get(name)
                if live is not None and live.rollout.identity() == rollout.identity():
                    live.rollout = rollout  # thresholds may change; the state stays
                    live.due = min(live.due, now + rollout.analysis.interval_s)  # a shorter interval counts now
                    continue
                saved = self._saved.get(name)
                state = _state_of(saved, rollout.steps) if saved is not None and \
                    saved.get("identity") == _identity(rollout) else None
                if state is not None:
                    log.info("rollout of %s resumed from the state file: %s at %g%%", name, state.state, state.weight)
                else:
                    state = State(weight=rollout.steps[0], canary_version=self._resolve(name, rollout.canary),
                                  promoted=self._promoted_before(rollout, live, saved)) \
                        .event(f"started at {rollout.steps[0]:g}%")
                    log.info("rollout of %s started: %s -> %s at %g%%", name, rollout.stable, rollout.canary,
                             rollout.steps[0])
                self._live[name] = _Live(rollout, state, now)
                if state.promoted is not None:
                    self._move_stable_label(self._live[name])
                else:
                    self._moves.append((name, {}))  # an earlier rollout's move (of another stable arm) ends
        self._save()
        self._move_labels()

    @staticmethod
    def _promoted_before(rollout: Rollout, live: _Live | None, saved: Mapping[str, Any] | None) -> int | None:
        """The version an earlier rollout of the same stable arm promoted: a changed rollout keeps it."""
        if live is not None:
            return live.state.promoted if live.rollout.stable == rollout.stable else None
        identity = saved.get("identity") if saved is not None else None
        if saved is not None and isinstance(identity, dict) and identity.get("stable") == str(rollout.stable):
            promoted = saved.get("promoted")
            return promoted if isinstance(promoted, int) and not isinstance(promoted, bool) else None
        return None

    def poll_file(self, path: str, every_s: float, models: Callable[[], Sequence[ModelConfig]],
                  read_at_start: Sequence[Rollout]) -> None:
        """Re-read the rollout config every `every_s` (the model config's poll interval) and apply it
        when it changed; a file that does not parse, or names versions the server lacks, is logged
        and the running rollouts stay."""
        def run() -> None:
            last = {r.model: r for r in read_at_start}
            while not self._stop.wait(every_s):
                try:
                    rollouts = read_rollout_config(path, models())
                    if rollouts != last:
                        self.apply(rollouts)
                        last = rollouts
                        log.info("rollout config applied: %s", ", ".join(sorted(rollouts)) or "(no rollouts)")
                except ConfigError as e:
                    log.error("keeping the running rollouts: %s", e)

        threading.Thread(target=run, name="tfprod-rollout-config", daemon=True).start()

    # -- what requests ask -------------------------------------------------------------------

    def choose(self, model: str, key_of: Callable[[str], str | None]) -> Choice | None:
        """The arm for a request naming `model` without a version or label (None: no rollout)."""
        live = self._live.get(model)
        if live is None:
            return None
        rollout, state = live.rollout, live.state
        stable = self._stable_version(live)
        if stable is None:  # its version is not AVAILABLE: TF Serving's rule (latest), a canary only as the canary
            available = self._manager.available_versions(model)
            canaries = {state.canary_version, self._resolve(model, rollout.canary)}
            others = [v for v in available if v not in canaries]
            if others:
                return Choice(model, STABLE, max(others))
            return Choice(model, CANARY, max(available)) if available else None
        if state.state not in (PROGRESSING, PAUSED):
            return Choice(model, STABLE, stable)
        if state.weight > 0:
            key = key_of(rollout.sticky_key) if rollout.sticky_key else None
            drawn = analysis.bucket(model, key) if key else random.randrange(analysis.BUCKETS)
            if analysis.on_canary(state.weight, drawn):
                canary = self._available(model, state.canary_version)  # the version analysed, not the label's now
                if canary is not None:
                    return Choice(model, CANARY, canary)
        shadow = rollout.shadow
        if shadow is not None and random.random() * 100 < shadow.sample_percent:
            version = self._available(model, self._shadow_version(live))
            if version is not None and version != stable:
                return Choice(model, STABLE, stable, version)
        return Choice(model, STABLE, stable)

    def stable_version(self, model: str) -> int | None:
        """What an unversioned metadata or status call means while `model` rolls out."""
        live = self._live.get(model)
        return None if live is None else self._stable_version(live)

    def record(self, choice: Choice, status: str, seconds: float, outputs: Mapping[str, np.ndarray] | None) -> None:
        """One routed request's outcome (`status`: OK or the error code's name)."""
        with self._lock:
            self._requests[(choice.model, choice.arm, str(choice.version), status)] += 1
            if status == "OK":
                self._latency[(choice.model, choice.arm)].observe(seconds * 1e6)
            live = self._live.get(choice.model)
            if live is None:
                return
            window, seen = live.windows[choice.arm], live.seen[choice.arm]
            window.requests += 1
            if status != "OK":
                window.errors += 1
                return
            seen[0] += 1
            _sample(window.latencies_s, seen[0], seconds)
            rules = live.rollout.analysis  # drift values are read by max_psi only
            drift = _drift_output(outputs, rules.drift_output) if rules.max_psi is not None else None
            if drift is not None:
                values, categorical = drift
                window.categorical |= categorical
                for value in values[:256]:  # a big batch does not crowd out the other requests
                    seen[1] += 1
                    _sample(window.drift, seen[1], float(value))

    def compared(self, model: str, live_outputs: Mapping[str, np.ndarray] | None,
                 shadow_outputs: Mapping[str, np.ndarray] | None) -> None:
        """A shadow run finished (None for the shadow's outputs when it failed). Frees its slot."""
        with self._lock:
            live = self._live.get(model)
            shadow_rules = live.rollout.shadow if live is not None else None
            self._in_flight[model] = max(self._in_flight[model] - 1, 0)
            if shadow_outputs is None or live_outputs is None or shadow_rules is None:
                self._shadow[(model, "error")] += 1
                if live is not None:
                    live.shadow.errors += 1
                    live.shadow.requests += 1
                return
            rows, disagreeing = analysis.disagreeing_rows(live_outputs, shadow_outputs, shadow_rules)
            self._shadow[(model, "compared")] += 1
            self._shadow_rows[(model, "compared")] += rows
            self._shadow_rows[(model, "disagreeing")] += disagreeing
            if live is not None:
                live.shadow.requests += 1
                live.shadow.rows += rows
                live.shadow.disagreeing += disagreeing

    def shadow_slot(self, model: str) -> bool:
        """Whether a shadow may start now; False (and counted as dropped) at max_in_flight."""
        with self._lock:
            live = self._live.get(model)
            if live is None or live.rollout.shadow is None:
                return False
            if self._in_flight[model] >= live.rollout.shadow.max_in_flight:
                live.shadow.dropped += 1
                self._shadow[(live.rollout.model, "dropped")] += 1
                return False
            self._in_flight[model] += 1
            return True

    # -- arms --------------------------------------------------------------------------------

    def _resolve(self, model: str, arm: Arm) -> int | None:
        if arm.version is not None:
            return arm.version
        assert arm.label is not None
        return self._manager.labels(model).get(arm.label)

    def _available(self, model: str, version: int | None) -> int | None:
        return version if version is not None and version in self._manager.available_versions(model) else None

    def _shadow_version(self, live: _Live) -> int | None:
        """The shadow's version; a shadow of the canary arm shadows the version analysed."""
        rollout = live.rollout
        assert rollout.shadow is not None
        if rollout.shadow.arm == rollout.canary:
            return live.state.canary_version
        return self._resolve(rollout.model, rollout.shadow.arm)

    def _stable_version(self, live: _Live) -> int | None:
        rollout, state = live.rollout, live.state
        if state.promoted is not None:  # at once, before the stable label has moved (`_move_labels`)
            return self._available(rollout.model, state.promoted)
        return self._available(rollout.model, self._resolve(rollout.model, rollout.stable))

    def _move_stable_label(self, live: _Live) -> None:
        label, version = live.rollout.stable.label, live.state.promoted
        if label is not None and version is not None:
            self._moves.append((live.rollout.model, {label: version}))

    def _move_labels(self) -> None:
        """Make the label moves decided so far, in order, outside `self._lock`."""
        if not self._moves:  # nothing to wait for (a move in progress may hold `_moving` through a reload)
            return
        with self._moving:
            with self._lock:
                moves, self._moves = self._moves, []
            for model, labels in moves:
                self._labels.override_labels(model, labels)

    # -- the analysis loop -------------------------------------------------------------------

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="tfprod-rollout", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def _run(self) -> None:
        while not self._stop.wait(0.1):
            try:
                self.tick()
            except Exception:  # the loop must outlive a bug in one analysis
                log.exception("rollout analysis failed")

    def tick(self) -> None:
        """Judge every rollout whose interval has ended."""
        with self._lock:
            now = self._clock()
            changed = False
            for live in self._live.values():
                if now < live.due:
                    continue
                live.due = now + live.rollout.analysis.interval_s
                changed |= self._judge_locked(live)
        if changed:
            self._save()
        self._move_labels()

    def _judge_locked(self, live: _Live) -> bool:
        rollout, state = live.rollout, live.state
        model = rollout.model
        stable, canary, shadow = live.windows[STABLE], live.windows[CANARY], live.shadow
        live.windows = {STABLE: ArmWindow(), CANARY: ArmWindow()}
        live.seen = {STABLE: [0, 0], CANARY: [0, 0]}
        live.shadow = ShadowWindow()
        now_canary = self._resolve(model, rollout.canary)
        if state.state != PAUSED and now_canary is not None and now_canary != state.canary_version:
            # the canary label moved; until now requests kept the version analysed
            if now_canary == self._stable_version(live):  # moved back onto the stable version
                if state.state != PROGRESSING:
                    return False
                self._psi.pop(model, None)
                why = f"the canary label now names the stable version {now_canary}: nothing to roll out"
                live.state = state.event(f"stopped: {why}", state=ABORTED, weight=0.0, reason=why)
                log.warning("rollout of %s stopped: %s", model, why)
                return True
            # a new version to roll out (after a promotion, a rollback or an abort too): a new rollout
            self._psi.pop(model, None)
            live.state = State(weight=rollout.steps[0], canary_version=now_canary, promoted=state.promoted,
                               history=state.history).event(
                f"the canary is now version {now_canary}: started again at {rollout.steps[0]:g}%")
            log.info("rollout of %s: the canary is now version %d; starting again at %g%%", model, now_canary,
                     rollout.steps[0])
            return True
        if state.state not in (PROGRESSING, PAUSED):
            return False
        verdict = analysis.judge(rollout.analysis, state.weight, stable, canary, shadow)
        numbers = {**verdict.numbers, "result": verdict.result, "reasons": list(verdict.reasons),
                   "weight": state.weight, "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        self._analyses[(model, verdict.result)] += 1
        if verdict.numbers.get("psi") is not None:
            self._psi[model] = verdict.numbers["psi"]
        else:  # no drift measured this interval: an old value must not keep an alert firing
            self._psi.pop(model, None)
        state = dataclasses.replace(state, last_analysis=numbers)
        if state.state == PAUSED or verdict.result == "inconclusive":
            live.state = state
            return True
        if verdict.result == "fail":
            failures = state.failures + 1
            reason = "; ".join(verdict.reasons)
            if failures >= rollout.analysis.failure_limit:
                self._rollbacks[model] += 1
                log.error("rollout of %s rolled back after %d failed intervals: %s", model, failures, reason)
                live.state = state.event(f"rolled back: {reason}", state=ROLLED_BACK, weight=0.0, failures=failures,
                                         reason=reason)
            else:
                log.warning("rollout of %s: interval failed (%d of %d): %s", model, failures,
                            rollout.analysis.failure_limit, reason)
                live.state = dataclasses.replace(state, failures=failures, reason=reason)
            return True
        if state.step + 1 < len(rollout.steps):
            step = state.step + 1
            log.info("rollout of %s: analysis passed, canary weight %g%% -> %g%%", model, state.weight,
                     rollout.steps[step])
            live.state = state.event(f"passed: {rollout.steps[step]:g}%", step=step, weight=rollout.steps[step],
                                     failures=0, reason="")
        else:
            try:
                self._promote_locked(live, state, "analysis passed at the last step")
            except ServingError as e:  # the canary went away: hold at the last step, and say why
                live.state = dataclasses.replace(state, reason=e.message)
                log.error("rollout of %s: %s", model, e.message)
        return True

    def _promote_locked(self, live: _Live, state: State, why: str) -> None:
        rollout = live.rollout
        version = self._available(rollout.model, state.canary_version)
        if version is None:
            raise ServingError(Code.FAILED_PRECONDITION, f"cannot promote {rollout.model}: its canary "
                               f"(version {state.canary_version}) is not AVAILABLE")
        live.state = state.event(f"promoted version {version}: {why}", state=PROMOTED, weight=0.0, failures=0,
                                 canary_version=version, promoted=version, reason=why)
        self._move_stable_label(live)
        log.info("rollout of %s: promoted version %d (%s)", rollout.model, version, why)

    # -- the admin API -----------------------------------------------------------------------

    def describe(self, model: str | None = None) -> list[dict[str, Any]]:
        with self._lock:
            names = sorted(self._live) if model is None else [model]
            if model is not None and model not in self._live:
                raise ServingError(Code.NOT_FOUND, f"no rollout of model '{model}' (rollouts: "
                                   f"{', '.join(sorted(self._live)) or 'none'})")
            return [self._describe_locked(self._live[n]) for n in names]

    def _describe_locked(self, live: _Live) -> dict[str, Any]:
        rollout, state = live.rollout, live.state
        return {
            "model": rollout.model, "state": state.state, "step": state.step, "steps": list(rollout.steps),
            "weight": state.weight, "stable": {"arm": str(rollout.stable), "version": self._stable_version(live)},
            "canary": {"arm": str(rollout.canary), "version": state.canary_version},
            "shadow": None if rollout.shadow is None else {
                "arm": str(rollout.shadow.arm), "version": self._shadow_version(live),
                "sample_percent": rollout.shadow.sample_percent},
            "sticky_key": rollout.sticky_key, "failures": state.failures, "reason": state.reason,
            "interval_s": rollout.analysis.interval_s, "last_analysis": copy.deepcopy(state.last_analysis),
            "history": list(state.history),
        }

    def act(self, model: str, action: str, weight: float | None = None) -> dict[str, Any]:
        if action not in ACTIONS:
            raise ServingError(Code.INVALID_ARGUMENT, f"unknown rollout action '{action}': one of {', '.join(ACTIONS)}")
        with self._lock:
            self.describe(model)  # NOT_FOUND for a model without a rollout
            live = self._live[model]
            state, steps = live.state, live.rollout.steps
            if state.state == PROMOTED and action != "promote":
                raise ServingError(Code.FAILED_PRECONDITION, f"the rollout of {model} is promoted already: point "
                                   "its canary label at a new version (models.config) to start the next one")
            if action == "pause":
                live.state = state.event("paused by an admin", state=PAUSED)
            elif action == "resume":
                if state.state in (ROLLED_BACK, ABORTED):
                    live.state = state.event(f"restarted by an admin at {steps[0]:g}%", state=PROGRESSING, step=0,
                                             weight=steps[0], failures=0, reason="")
                else:
                    step = _step_at(steps, state.weight)
                    live.state = state.event(f"resumed by an admin at {steps[step]:g}%", state=PROGRESSING, step=step,
                                             weight=steps[step], failures=0)
                live.due = self._clock() + live.rollout.analysis.interval_s
            elif action == "promote":
                if state.state != PROMOTED:
                    self._promote_locked(live, state, "promoted by an admin")
            elif action == "abort":
                live.state = state.event("aborted by an admin", state=ABORTED, weight=0.0, reason="aborted by an admin")
            else:
                if weight is None or isinstance(weight, bool) or not isinstance(weight, int | float) \
                        or not 0 <= weight <= 100:
                    raise ServingError(Code.INVALID_ARGUMENT, f"set_weight needs a weight in percent between 0 and "
                                       f"100, got {weight!r}")
                live.state = state.event(f"weight set to {weight:g}% by an admin (paused)", state=PAUSED,
                                         weight=float(weight), step=_step_at(steps, weight))
            log.info("rollout of %s: %s%s by an admin", model, action, f" {weight:g}%" if weight is not None else "")
        self._save()
        self._move_labels()
        return self.describe(model)[0]

    # -- the state file ----------------------------------------------------------------------

    def _read_state(self) -> dict[str, dict[str, Any]]:
        if not self._state_path or not os.path.exists(self._state_path):
            return {}
        try:
            with open(self._state_path) as f:
                doc = json.load(f)
            return {k: v for k, v in doc.get("rollouts", {}).items() if isinstance(v, dict)}
        except (OSError, ValueError, AttributeError) as e:
            log.error("ignoring the rollout state file %s (rollouts start at their first step): %s",
                      self._state_path, e)
            return {}

    def _save(self) -> None:
        """Write the state file from the state now: outside `self._lock` (a slow volume must not
        stall the requests that take it), one writer at a time, each writing the latest state."""
        with self._writing:
            with self._lock:
                doc = {"rollouts": {name: {"identity": _identity(live.rollout), **dataclasses.asdict(live.state)}
                                    for name, live in self._live.items()}}
                self._saved = doc["rollouts"]
            if self._state_path:
                self._write_state(doc)

    def _write_state(self, doc: Mapping[str, Any]) -> None:
        assert self._state_path is not None
        try:
            directory = os.path.dirname(os.path.abspath(self._state_path))
            fd, tmp = tempfile.mkstemp(prefix=".rollout-state-", dir=directory)
            with os.fdopen(fd, "w") as f:
                json.dump(doc, f, indent=1)
            os.replace(tmp, self._state_path)
        except OSError as e:
            with contextlib.suppress(OSError, UnboundLocalError):
                os.unlink(tmp)
            if not self._save_warned:
                log.error("cannot write the rollout state file %s (a restart will not resume): %s", self._state_path, e)
                self._save_warned = True

    # -- Prometheus ----------------------------------------------------------------------------

    def collect(self) -> Iterator[Metric]:
        with self._lock:
            requests = dict(self._requests)
            latency = {k: copy.deepcopy(h) for k, h in self._latency.items()}
            shadow, rows = dict(self._shadow), dict(self._shadow_rows)
            analyses, rollbacks, psi = dict(self._analyses), dict(self._rollbacks), dict(self._psi)
            states = {name: live.state for name, live in self._live.items()}
        count = Metric(PREFIX + "request_count", "Requests routed by a rollout, by arm and version.", "unknown")
        for (model, arm, version, status), n in requests.items():
            count.add_sample(PREFIX + "request_count", {"model_name": model, "arm": arm, "version": version,
                                                        "status": status}, n)
        yield count
        hist = HistogramMetricFamily(PREFIX + "request_latency", "Model time (in microseconds) of successful routed "
                                     "requests, by arm.", labels=["model_name", "arm"])
        for labels, h in latency.items():
            h.add_to(hist, list(labels))
        yield hist
        weight = Metric(PREFIX + "canary_weight", "The canary's share of unversioned requests, in percent.", "gauge")
        step = Metric(PREFIX + "step", "The index of the rollout's current step.", "gauge")
        state_family = Metric(PREFIX + "state", "1 for the rollout's current state (progressing, paused, promoted, "
                              "rolled_back, aborted), 0 for the others.", "gauge")
        for model, state in states.items():
            weight.add_sample(PREFIX + "canary_weight", {"model_name": model}, state.weight)
            step.add_sample(PREFIX + "step", {"model_name": model}, state.step)
            for name in STATES:
                state_family.add_sample(PREFIX + "state", {"model_name": model, "state": name},
                                        1.0 if state.state == name else 0.0)
        yield weight
        yield step
        yield state_family
        shadowed = Metric(PREFIX + "shadow_request_count", "Shadow runs: compared, error (the shadow failed) or "
                          "dropped (max_in_flight reached).", "unknown")
        for (model, outcome), n in shadow.items():
            shadowed.add_sample(PREFIX + "shadow_request_count", {"model_name": model, "outcome": outcome}, n)
        yield shadowed
        for kind, help_text in (("compared", "Rows compared between the stable and the shadow answer."),
                                ("disagreeing", "Rows where the shadow's answer differed from the stable one.")):
            family = Metric(f"{PREFIX}shadow_{kind}_rows", help_text, "unknown")
            for (model, k), n in rows.items():
                if k == kind:
                    family.add_sample(f"{PREFIX}shadow_{kind}_rows", {"model_name": model}, n)
            yield family
        judged = Metric(PREFIX + "analysis_count", "Analysis intervals, by result (pass, fail, inconclusive).",
                        "unknown")
        for (model, result), n in analyses.items():
            judged.add_sample(PREFIX + "analysis_count", {"model_name": model, "result": result}, n)
        yield judged
        rolled = Metric(PREFIX + "rollback_count", "Automatic rollbacks.", "unknown")
        for model, n in rollbacks.items():
            rolled.add_sample(PREFIX + "rollback_count", {"model_name": model}, n)
        yield rolled
        drift = Metric(PREFIX + "output_psi", "The last analysis' output drift (PSI) of canary against stable.",
                       "gauge")
        for model, value in psi.items():
            if model not in states or states[model].state not in (PROGRESSING, PAUSED):
                continue  # a finished rollout's last drift would keep an alert firing
            drift.add_sample(PREFIX + "output_psi", {"model_name": model}, value)
        yield drift


def _step_at(steps: Sequence[float], weight: float) -> int:
    """The first step at or above `weight` (the last one above every step)."""
    return next((i for i, w in enumerate(steps) if w >= weight), len(steps) - 1)


_SAVED_TYPES: dict[str, type | tuple[type, ...]] = {
    "state": str, "step": int, "weight": (int, float), "failures": int, "canary_version": (int, type(None)),
    "promoted": (int, type(None)),
    "reason": str, "last_analysis": (dict, type(None)), "history": list}


def _state_of(saved: Mapping[str, Any], steps: Sequence[float]) -> State | None:
    """A state from the state file, or None when it was edited into something else."""
    values = {k: saved[k] for k in _SAVED_TYPES if k in saved}
    if any(not isinstance(v, _SAVED_TYPES[k]) or isinstance(v, bool) for k, v in values.items()) \
            or values.get("state", PROGRESSING) not in STATES or not 0 <= values.get("step", 0) < len(steps) \
            or not 0 <= values.get("weight", 0) <= 100:
        return None
    values["history"] = tuple(h for h in values.get("history", ()) if isinstance(h, dict))
    if values.get("state") == PROMOTED and "promoted" not in values:  # written before `promoted` was kept
        values["promoted"] = values.get("canary_version")
    return State(**values)


def _sample(values: list[float], seen: int, value: float) -> None:
    """Reservoir sampling: every value offered so far is kept with the same chance."""
    if len(values) < _SAMPLE:
        values.append(value)
    elif (j := random.randrange(seen)) < _SAMPLE:
        values[j] = value


def _drift_output(outputs: Mapping[str, np.ndarray] | None, name: str | None) -> tuple[np.ndarray, bool] | None:
    if not outputs:
        return None
    chosen = outputs.get(name) if name is not None else outputs[min(outputs)]
    return None if chosen is None else analysis.row_values(chosen)
