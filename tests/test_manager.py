"""The framework-free manager with plain-Python servables: ordering, pinning, retries, labels."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator

import pytest

from tfprod.core.manager import AspiredVersion, Manager, ManagerOptions, ServableId
from tfprod.core.states import State
from tfprod.errors import Code, ServingError


class Counter:
    """A servable that records its own unload."""

    def __init__(self, version: int) -> None:
        self.version = version
        self.unloaded = threading.Event()

    def unload(self) -> None:
        self.unloaded.set()


class Loader:
    def __init__(self, failing: set[int] | None = None) -> None:
        self.failing = failing or set()
        self.attempts: dict[int, int] = {}
        self.gate = threading.Event()
        self.gate.set()

    def __call__(self, sid: ServableId, path: str) -> Counter:
        self.attempts[sid.version] = self.attempts.get(sid.version, 0) + 1
        assert self.gate.wait(10)
        if sid.version in self.failing:
            raise ServingError(Code.DATA_LOSS, f"version {sid.version} is corrupt")
        return Counter(sid.version)


Events = list[tuple[int, State]]


def make(loader: Loader, retries: int = 0) -> tuple[Manager[Counter], Events]:
    events: Events = []
    manager = Manager[Counter](loader, ManagerOptions(
        max_num_load_retries=retries, load_retry_interval_s=0.05,
        on_state_change=lambda sid, state, error: events.append((sid.version, state)),
    ))
    manager.start()
    return manager, events


@pytest.fixture
def loader() -> Loader:
    return Loader()


@pytest.fixture
def managed(loader: Loader) -> Iterator[tuple[Manager[Counter], Events]]:
    manager, events = make(loader)
    yield manager, events
    manager.stop()


def eventually(predicate: Callable[[], bool], timeout: float = 10) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.01)
    return predicate()


def state(manager: Manager[Counter], version: int) -> State | None:
    return next((s.state for s in manager.status("m") if s.version == version), None)


def wait_state(manager: Manager[Counter], version: int, want: State) -> None:
    assert manager.wait_for(lambda: any(s.version == version and s.state is want
                                        for s in manager._monitor.get("m", {}).values()), timeout=10), \
        f"version {version} never reached {want}: {manager.status('m')}"


def aspire(manager: Manager[Counter], *versions: int) -> None:
    manager.set_aspired_versions("m", [AspiredVersion(v, f"/models/m/{v}") for v in versions])


def test_new_version_loads_before_old_unloads(managed: tuple[Manager[Counter], Events]) -> None:
    manager, events = managed
    aspire(manager, 1)
    wait_state(manager, 1, State.AVAILABLE)
    aspire(manager, 2)
    wait_state(manager, 1, State.END)
    order = [e for e in events if e[1] in (State.AVAILABLE, State.UNLOADING)]
    assert order == [(1, State.AVAILABLE), (2, State.AVAILABLE), (1, State.UNLOADING)]
    with manager.handle("m") as (version, servable):
        assert version == servable.version == 2


def test_handle_keeps_version_alive_until_released(managed: tuple[Manager[Counter], Events]) -> None:
    manager, _ = managed
    aspire(manager, 1)
    wait_state(manager, 1, State.AVAILABLE)
    with manager.handle("m", version=1) as (_, old):
        aspire(manager, 2)
        wait_state(manager, 1, State.UNLOADING)
        assert not old.unloaded.wait(0.3)  # still in use: not unloaded
        with pytest.raises(ServingError) as e:
            with manager.handle("m", version=1):
                pass
        assert e.value.code is Code.NOT_FOUND  # but no new request gets it
    assert old.unloaded.wait(5)
    wait_state(manager, 1, State.END)


def test_failed_load_is_retried_then_ends_and_old_keeps_serving() -> None:
    loader = Loader(failing={2})
    manager, _ = make(loader, retries=2)
    try:
        aspire(manager, 1)
        wait_state(manager, 1, State.AVAILABLE)
        aspire(manager, 2)
        wait_state(manager, 2, State.END)
        assert loader.attempts[2] == 3  # the first try and two retries
        status = {s.version: s for s in manager.status("m")}
        assert status[2].error is not None and status[2].error.code is Code.DATA_LOSS
        assert status[1].state is State.AVAILABLE
        with manager.handle("m") as (version, _):
            assert version == 1
        aspire(manager, 2)  # the source keeps offering it: it is not retried on every poll
        assert not eventually(lambda: loader.attempts[2] > 3, timeout=0.3)
    finally:
        manager.stop()


def test_retries_stop_when_version_is_no_longer_wanted() -> None:
    loader = Loader(failing={1})
    manager, _ = make(loader, retries=1000)
    try:
        aspire(manager, 1)
        assert eventually(lambda: loader.attempts.get(1, 0) >= 2)
        aspire(manager)
        wait_state(manager, 1, State.END)
        assert loader.attempts[1] < 50
    finally:
        manager.stop()


def test_labels_wait_for_their_version(managed: tuple[Manager[Counter], Events], loader: Loader) -> None:
    manager, _ = managed
    aspire(manager, 1)
    wait_state(manager, 1, State.AVAILABLE)
    manager.set_labels("m", {"stable": 1}, allow_unavailable=False)
    loader.gate.clear()  # version 2 stays LOADING until the gate opens
    manager.set_aspired_versions("m", [AspiredVersion(1, "/1"), AspiredVersion(2, "/2")])
    wait_state(manager, 2, State.LOADING)
    manager.set_labels("m", {"stable": 2, "canary": 2}, allow_unavailable=False)
    with manager.handle("m", label="stable") as (version, _):
        assert version == 1  # pending: the old assignment keeps serving
    with pytest.raises(ServingError, match="Unrecognized servable version label: canary"):
        with manager.handle("m", label="canary"):
            pass
    loader.gate.set()
    wait_state(manager, 2, State.AVAILABLE)
    assert manager.labels("m") == {"stable": 2, "canary": 2}


def test_new_label_for_unavailable_version_when_allowed(managed: tuple[Manager[Counter], Events]) -> None:
    manager, _ = managed
    manager.set_labels("m", {"canary": 7}, allow_unavailable=True)
    assert manager.labels("m") == {"canary": 7}
    with pytest.raises(ServingError, match=r"Specific\(m, 7\)"):
        with manager.handle("m", label="canary"):
            pass


def test_not_found_messages(managed: tuple[Manager[Counter], Events]) -> None:
    manager, _ = managed
    with pytest.raises(ServingError, match=r"Servable not found for request: Latest\(nope\)"):
        with manager.handle("nope"):
            pass
    assert manager.status("nope") == []


def test_stop_unloads_everything(loader: Loader) -> None:
    manager, _ = make(loader)
    aspire(manager, 1)
    wait_state(manager, 1, State.AVAILABLE)
    with manager.handle("m") as (_, servable):
        pass
    manager.stop()
    assert servable.unloaded.is_set()
    assert state(manager, 1) is State.END


def test_version_dropped_then_offered_again_is_reloaded(managed: tuple[Manager[Counter], Events],
                                                        loader: Loader) -> None:
    manager, _ = managed
    aspire(manager, 1)
    wait_state(manager, 1, State.AVAILABLE)
    with manager.handle("m"):  # pins version 1 in UNLOADING
        aspire(manager)
        wait_state(manager, 1, State.UNLOADING)
        aspire(manager, 1)  # offered again before the unload finished
    assert eventually(lambda: loader.attempts[1] == 2 and manager.available_versions("m") == [1])
    with manager.handle("m") as (version, servable):
        assert version == 1 and not servable.unloaded.is_set()
