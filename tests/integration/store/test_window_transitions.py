"""A window and the risk transition it causes: one transaction, one chain, one transition per
window (hardening item 19), on SQLite and on PostgreSQL.

Failures and slow writes are injected with a real SQLAlchemy event hook on the repository's
engine (``before_cursor_execute``), never by replacing the code under test."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta
from typing import Any, Literal

import pytest
from sqlalchemy import Engine, event

from monitor.errors import StorageError
from monitor.records import RiskLevel, TermValues, WindowKey, WindowResult
from monitor.store import migrate
from monitor.store.repository import Repository
from monitor.store.types import RiskTransitionEntry
from tests.integration.store.conftest import T0

FIVE = timedelta(minutes=5)


def window(
    index: int,
    level: RiskLevel,
    *,
    status: Literal["ok", "insufficient"] = "ok",
    at: datetime | None = None,
) -> WindowResult:
    start = T0 + index * FIVE
    return WindowResult(
        key=WindowKey("default", start, start + FIVE),
        n=100,
        n_images=0,
        n_references=0,
        status=status,
        risk_level=level,
        estimator_version="test",
        computed_at=at or start + FIVE + timedelta(seconds=30),
        jsd=TermValues(visual=None, text=0.1, output_id=None, output_live=None),
    )


@contextmanager
def hook(engine: Engine, before: Callable[[str], None]) -> Iterator[None]:
    """Call ``before(statement)`` ahead of every statement the engine sends."""

    def listener(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        before(statement)

    event.listen(engine, "before_cursor_execute", listener)
    try:
        yield
    finally:
        event.remove(engine, "before_cursor_execute", listener)


def writes_transition(statement: str) -> bool:
    return (
        statement.lstrip()
        .upper()
        .startswith(("INSERT INTO RISK_TRANSITIONS", "UPDATE RISK_TRANSITIONS"))
    )


def chain(history: list[RiskTransitionEntry]) -> list[tuple[int, int]]:
    return [(int(t.from_level), int(t.to_level)) for t in history]


def assert_one_chain(repo: Repository) -> None:
    """Each transition starts where the one before ended (the first from OK), no window has
    two, and the current level is where the chain ends."""
    history = repo.risk_transitions("default")
    level = RiskLevel.OK
    for entry in history:
        assert entry.from_level == level, chain(history)
        assert entry.to_level != entry.from_level, chain(history)
        level = entry.to_level
    windows = [t.window_id for t in history if t.window_id is not None]
    assert len(windows) == len(set(windows)), history
    assert repo.current_risk("default") is level


def test_a_failed_transition_write_stores_neither_and_a_rerun_stores_both(
    repo: Repository,
) -> None:
    def fail(statement: str) -> None:
        if writes_transition(statement):
            raise RuntimeError("injected: the disk filled up")

    with hook(repo.engine, fail), pytest.raises(RuntimeError, match="injected"):
        repo.windows.store_window(window(0, RiskLevel.WARNING), reason="text p=0.001")
    assert repo.get_windows("default") == []
    assert repo.risk_transitions("default") == []

    stored = repo.windows.store_window(window(0, RiskLevel.WARNING), reason="text p=0.001")
    assert (stored.level_before, stored.level_after) == (RiskLevel.OK, RiskLevel.WARNING)
    (entry,) = repo.risk_transitions("default")
    assert chain([entry]) == [(0, 1)]
    assert entry.window_id == stored.id and entry.reason == "text p=0.001"
    stored = repo.windows.store_window(window(1, RiskLevel.CRITICAL))
    assert chain(repo.risk_transitions("default")) == [(0, 1), (1, 2)]  # never 0 -> 2


def test_one_transition_per_window_is_a_unique_key(repo: Repository) -> None:
    window_id = repo.upsert_window(window(0, RiskLevel.WARNING))
    repo.record_risk_transition("default", T0, RiskLevel.OK, RiskLevel.WARNING, window_id=window_id)
    with pytest.raises(StorageError, match="recording a risk transition"):
        repo.record_risk_transition(
            "default", T0, RiskLevel.WARNING, RiskLevel.CRITICAL, window_id=window_id
        )
    # Transitions with no window (from before windows were linked) do not collide.
    repo.record_risk_transition("default", T0, RiskLevel.WARNING, RiskLevel.OK)
    repo.record_risk_transition("default", T0, RiskLevel.OK, RiskLevel.WARNING)
    assert len(repo.risk_transitions("default")) == 3


def test_a_recomputed_window_updates_its_own_transition(repo: Repository) -> None:
    store = repo.windows.store_window
    assert not store(window(0, RiskLevel.OK)).changed
    first = store(window(1, RiskLevel.WARNING), reason="first")
    assert store(window(1, RiskLevel.WARNING), reason="again").id == first.id  # idempotent
    assert chain(repo.risk_transitions("default")) == [(0, 1)]
    # Late data made it critical: the same transition, now 0 -> 2, with the new reason.
    again = store(window(1, RiskLevel.CRITICAL), reason="bound")
    assert (again.level_before, again.level_after) == (RiskLevel.WARNING, RiskLevel.CRITICAL)
    (entry,) = repo.risk_transitions("default")
    assert chain([entry]) == [(0, 2)] and entry.reason == "bound"
    # And back to what it was before the window: the window changes nothing any more.
    back = store(window(1, RiskLevel.OK))
    assert (back.level_before, back.level_after) == (RiskLevel.CRITICAL, RiskLevel.OK)
    assert repo.risk_transitions("default") == []
    assert repo.current_risk("default") is RiskLevel.OK


def test_only_the_newest_sufficient_window_moves_the_level(repo: Repository) -> None:
    store = repo.windows.store_window
    store(window(3, RiskLevel.WARNING))
    # An older window (a backfill, a stale recomputation) is stored, the history untouched.
    older = store(window(1, RiskLevel.CRITICAL))
    assert not older.changed and older.level_after is RiskLevel.WARNING
    assert repo.get_window(older.id) is not None
    # An insufficient newer window neither.
    assert not store(window(4, RiskLevel.OK, status="insufficient")).changed
    assert chain(repo.risk_transitions("default")) == [(0, 1)]
    assert store(window(5, RiskLevel.OK)).changed
    assert_one_chain(repo)


def test_a_transition_is_never_ordered_before_the_one_it_follows(repo: Repository) -> None:
    store = repo.windows.store_window
    store(window(0, RiskLevel.WARNING, at=T0 + timedelta(hours=1)))
    # A writer whose clock is behind (another replica): its transition still comes second.
    store(window(1, RiskLevel.CRITICAL, at=T0))
    history = repo.risk_transitions("default")
    assert chain(history) == [(0, 1), (1, 2)] and history[0].at <= history[1].at
    assert_one_chain(repo)


def test_concurrent_writers_with_a_slow_transition_write_keep_one_chain(
    repo: Repository,
) -> None:
    """Two writers (the scheduler and a backfill, say) store windows of one stream at once;
    each transition write is slowed down, so on a store that read the level outside the write
    the two would start from the same level."""

    def slow(statement: str) -> None:
        if writes_transition(statement):
            time.sleep(0.05)

    levels = [RiskLevel.WARNING, RiskLevel.CRITICAL, RiskLevel.OK, RiskLevel.CRITICAL]
    errors: list[BaseException] = []

    def writer(offset: int) -> None:
        try:
            for index in range(offset, 24, 2):
                # Each writer's windows come in order (as a pass computes them), both interleaved.
                repo.windows.store_window(window(index, levels[index % 4]))
        except BaseException as exc:  # re-raised in the test's thread
            errors.append(exc)

    with hook(repo.engine, slow):
        threads = [threading.Thread(target=writer, args=(k,)) for k in (0, 1)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=120)
    assert not errors, errors
    assert len(repo.get_windows("default")) == 24
    assert repo.risk_transitions("default"), "the levels change: some transition is expected"
    assert_one_chain(repo)


def test_the_level_is_read_inside_the_window_transaction(repo: Repository) -> None:
    """A writer that read the stream's level before another writer's transition committed
    would start its transition from a stale level: a second writer, started while the first
    is inside its transition write, waits for it."""
    first_inside = threading.Event()
    release = threading.Event()
    done: list[Any] = []

    def block(statement: str) -> None:
        if writes_transition(statement) and threading.current_thread().name == "first":
            first_inside.set()
            release.wait(timeout=2)  # the second writer cannot get past the stream's lock

    def first() -> None:
        done.append(repo.windows.store_window(window(0, RiskLevel.WARNING)))

    def second() -> None:
        first_inside.wait(timeout=10)
        done.append(repo.windows.store_window(window(1, RiskLevel.CRITICAL)))

    with hook(repo.engine, block):
        threads = [
            threading.Thread(target=first, name="first"),
            threading.Thread(target=second, name="second"),
        ]
        for thread in threads:
            thread.start()
        first_inside.wait(timeout=10)
        time.sleep(0.3)  # the second writer is now waiting (or, on a broken store, done)
        release.set()
        for thread in threads:
            thread.join(timeout=30)
    assert len(done) == 2
    assert chain(repo.risk_transitions("default")) == [(0, 1), (1, 2)]


def _old_window(engine: Engine, repo: Repository, result: WindowResult) -> str:
    """Store ``result`` as an older version did: only the columns its schema has (the
    repository writes those of the head revision)."""
    from sqlalchemy import MetaData, Table, insert

    from monitor.store._windows import _window_values

    table = Table("windows", MetaData(), autoload_with=engine)
    stream_id = repo.windows._streams.ensure(result.key.stream)
    values = {k: v for k, v in _window_values(result, stream_id).items() if k in table.c}
    with engine.begin() as conn:
        return str(conn.execute(insert(table).values(**values).returning(table.c.id)).scalar_one())


def test_upgrading_keeps_the_newest_transition_of_a_window_linked(engine: Engine) -> None:
    """A database of an earlier version may hold several transitions of one window (each
    recomputation that changed its level added one): migration 0005 keeps them all in the
    history and links only the newest to the window."""
    migrate.upgrade(engine, "0004")
    old = Repository(engine)
    window_id = _old_window(engine, old, window(0, RiskLevel.WARNING))
    old.record_risk_transition("default", T0, RiskLevel.OK, RiskLevel.WARNING, window_id=window_id)
    old.record_risk_transition(
        "default", T0 + FIVE, RiskLevel.WARNING, RiskLevel.CRITICAL, window_id=window_id
    )
    migrate.upgrade(engine)
    repo = Repository(engine)
    history = repo.risk_transitions("default")
    assert chain(history) == [(0, 1), (1, 2)]
    assert [t.window_id for t in history] == [None, window_id]
    # A recomputation now updates the window's one transition (from where the one before ended).
    repo.windows.store_window(window(0, RiskLevel.OK))
    assert chain(repo.risk_transitions("default")) == [(0, 1), (1, 0)]
    migrate.downgrade(engine, "0004")
    assert len(Repository(engine).risk_transitions("default")) == 2
