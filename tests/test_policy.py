"""Pure tables: version states, the availability-preserving policy, version policies."""

from __future__ import annotations

import pytest

from tfprod.core.policy import Action, Kind, Snapshot, next_action
from tfprod.core.states import IllegalTransition, State, check_transition
from tfprod.core.version_policy import All, Latest, Specific, select

S, L, A, U, E = State.START, State.LOADING, State.AVAILABLE, State.UNLOADING, State.END


@pytest.mark.parametrize(("current", "new", "ok"), [
    pytest.param(S, L, True, id="start-loading"),
    pytest.param(S, E, True, id="start-end-never-loaded"),
    pytest.param(L, A, True, id="loading-available"),
    pytest.param(L, E, True, id="loading-failed"),
    pytest.param(A, U, True, id="available-unloading"),
    pytest.param(U, E, True, id="unloading-end"),
    pytest.param(A, E, False, id="available-must-unload-first"),
    pytest.param(S, A, False, id="start-skips-loading"),
    pytest.param(E, L, False, id="end-is-final"),
    pytest.param(U, A, False, id="no-resurrection"),
])
def test_transitions(current: State, new: State, ok: bool) -> None:
    if ok:
        assert check_transition(current, new) is new
    else:
        with pytest.raises(IllegalTransition):
            check_transition(current, new)


def snaps(*rows: tuple[int, State, bool]) -> list[Snapshot]:
    return [Snapshot(v, s, a) for v, s, a in rows]


@pytest.mark.parametrize(("snapshots", "expected"), [
    pytest.param(snaps(), None, id="nothing"),
    pytest.param(snaps((1, S, True)), Action(Kind.LOAD, 1), id="load-first"),
    pytest.param(snaps((1, S, True), (2, S, True)), Action(Kind.LOAD, 2), id="load-newest-first"),
    pytest.param(snaps((1, A, False), (2, S, True)), Action(Kind.LOAD, 2), id="keep-old-load-new"),
    pytest.param(snaps((1, A, False), (2, L, True)), None, id="wait-while-loading"),
    pytest.param(snaps((1, A, False), (2, A, True)), Action(Kind.UNLOAD, 1), id="unload-old-once-new-serves"),
    pytest.param(snaps((1, A, False), (2, E, True)), None, id="failed-new-keeps-old"),
    pytest.param(snaps((1, A, False)), Action(Kind.UNLOAD, 1), id="nothing-aspired-unload"),
    pytest.param(snaps((1, A, False), (2, A, False), (3, S, True)), Action(Kind.UNLOAD, 1),
                 id="two-old-unload-oldest"),
    pytest.param(snaps((1, U, False), (2, S, True)), None, id="wait-while-unloading"),
    pytest.param(snaps((1, A, True), (2, A, True)), None, id="steady"),
    pytest.param(snaps((1, E, False), (2, A, True)), None, id="ended-is-ignored"),
])
def test_availability_preserving(snapshots: list[Snapshot], expected: Action | None) -> None:
    assert next_action(snapshots) == expected


@pytest.mark.parametrize(("policy", "found", "expected"), [
    pytest.param(Latest(), [1, 3, 2], [3], id="latest-default-1"),
    pytest.param(Latest(2), [1, 3, 2], [2, 3], id="latest-2"),
    pytest.param(Latest(5), [7], [7], id="latest-more-than-found"),
    pytest.param(Latest(), [], [], id="latest-none"),
    pytest.param(All(), [3, 1], [1, 3], id="all"),
    pytest.param(Specific(frozenset({1, 4})), [1, 2, 3], [1], id="specific-present-only"),
    pytest.param(Specific(frozenset({9})), [1, 2], [], id="specific-missing"),
])
def test_version_policy(policy: Latest | All | Specific, found: list[int], expected: list[int]) -> None:
    assert select(policy, found) == expected
