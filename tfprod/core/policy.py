"""The availability-preserving version policy: a pure function of one model's versions.

Mirrors TF Serving's `AvailabilityPreservingPolicy`: a version that is no longer aspired is
unloaded only once an aspired version is AVAILABLE (or nothing is aspired any more, or more
than one old version is still serving); otherwise the newest aspired version still in START
is loaded. A new version that fails to load therefore never takes the old one down.
"""

from __future__ import annotations

import dataclasses
import enum

from tfprod.core.states import State


@dataclasses.dataclass(frozen=True)
class Snapshot:
    version: int
    state: State
    aspired: bool


class Kind(enum.Enum):
    LOAD = "load"
    UNLOAD = "unload"


@dataclasses.dataclass(frozen=True)
class Action:
    kind: Kind
    version: int


def next_action(snapshots: list[Snapshot]) -> Action | None:
    """What to do next for one model, or None. One step at a time: the caller re-asks."""
    if any(s.state in (State.LOADING, State.UNLOADING) for s in snapshots):
        return None  # one transition per model at a time keeps the serving set predictable
    unaspired_available = [s for s in snapshots if not s.aspired and s.state is State.AVAILABLE]
    if unaspired_available:
        has_aspired = any(s.aspired for s in snapshots)
        has_aspired_available = any(s.aspired and s.state is State.AVAILABLE for s in snapshots)
        if not has_aspired or has_aspired_available or len(unaspired_available) > 1:
            return Action(Kind.UNLOAD, min(s.version for s in unaspired_available))
    startable = [s.version for s in snapshots if s.aspired and s.state is State.START]
    if startable:
        return Action(Kind.LOAD, max(startable))
    return None
