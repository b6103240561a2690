"""Version states, as TF Serving reports them, and the one table of legal moves."""

from __future__ import annotations

import enum


class State(enum.Enum):
    """The states of `ModelVersionStatus.State` in TF Serving's get_model_status.proto."""

    START = 10
    LOADING = 20
    AVAILABLE = 30
    UNLOADING = 40
    END = 50


_LEGAL: dict[State, frozenset[State]] = {
    State.START: frozenset({State.LOADING, State.END}),  # END: dropped before loading
    State.LOADING: frozenset({State.AVAILABLE, State.END}),  # END: load failed for good
    State.AVAILABLE: frozenset({State.UNLOADING}),
    State.UNLOADING: frozenset({State.END}),
    State.END: frozenset(),
}


class IllegalTransition(RuntimeError):
    pass


def check_transition(current: State, new: State) -> State:
    """Return `new` if moving from `current` to it is legal, else raise IllegalTransition."""
    if new not in _LEGAL[current]:
        raise IllegalTransition(f"illegal version state transition {current.name} -> {new.name}")
    return new
