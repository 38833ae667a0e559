"""Plan persistence and the versioned, idempotent plan gate."""

from __future__ import annotations

import dataclasses
import os
import stat
from collections.abc import Callable
from pathlib import Path

import pytest

from limpet.affinity.plan.model import Backend, CookieKey, Plan
from limpet.proxy.process.state import PLAN_FILE, PlanGate, PlanStore, StalePlanError


def plan(version: int, *, port: int = 8080) -> Plan:
    return Plan(
        version=version,
        backends=(Backend(id="b1", address="127.0.0.1", port=port),),  # type: ignore[arg-type]
        cookie_keys=(CookieKey(id="k1", secret=b"s" * 32),),
    )


def test_absent_state_is_not_a_problem(tmp_path: Path) -> None:
    loaded = PlanStore(tmp_path / "nowhere").load()
    assert loaded.plan is None
    assert loaded.problem is None


def test_save_load_round_trip(tmp_path: Path) -> None:
    store = PlanStore(tmp_path / "state")
    store.save(plan(3))
    loaded = PlanStore(tmp_path / "state").load()
    assert loaded.plan == plan(3)
    assert loaded.problem is None
    # The file holds signing keys: owner-only.
    mode = stat.S_IMODE(os.stat(store.path).st_mode)
    assert mode & 0o077 == 0
    # No temporary files are left behind.
    assert sorted(p.name for p in store.directory.iterdir()) == [PLAN_FILE]


def test_save_replaces(tmp_path: Path) -> None:
    store = PlanStore(tmp_path)
    store.save(plan(1))
    store.save(plan(2, port=9000))
    loaded = store.load().plan
    assert loaded is not None
    assert loaded.version == 2
    assert loaded.backends[0].port == 9000


@pytest.mark.parametrize(
    "content",
    [b"", b"{", b"\x00\xff garbage", b'{"schemaVersion": 1}', b'{"schemaVersion": 99}', b"[]"],
)
def test_corrupt_state_is_reported_and_moved_aside(tmp_path: Path, content: bytes) -> None:
    (tmp_path / PLAN_FILE).write_bytes(content)
    store = PlanStore(tmp_path)
    loaded = store.load()
    assert loaded.plan is None
    assert loaded.problem is not None
    assert "corrupt saved plan" in loaded.problem
    assert str(store.path) in loaded.problem
    assert not store.path.exists()
    aside = [p for p in tmp_path.iterdir() if p.name.startswith(PLAN_FILE + ".corrupt-")]
    assert len(aside) == 1
    assert aside[0].read_bytes() == content
    # The next save works and the one after that loads.
    store.save(plan(5))
    assert store.load().plan == plan(5)


def test_unreadable_state_is_reported(tmp_path: Path) -> None:
    (tmp_path / PLAN_FILE).mkdir()  # a directory where the file should be
    loaded = PlanStore(tmp_path).load()
    assert loaded.plan is None
    assert loaded.problem is not None
    assert "cannot read saved plan" in loaded.problem


async def test_gate_versions_and_idempotency(tmp_path: Path) -> None:
    applied: list[int] = []
    store = PlanStore(tmp_path)
    gate = PlanGate(apply=lambda p: applied.append(p.version), store=store)
    assert gate.current is None
    assert await gate.accept(plan(2))
    assert store.load().plan == plan(2)
    assert not await gate.accept(plan(2))  # same plan: no-op
    with pytest.raises(StalePlanError, match="lower"):
        await gate.accept(plan(1))
    with pytest.raises(StalePlanError, match="different content"):
        await gate.accept(plan(2, port=9999))
    assert await gate.accept(plan(7))
    assert applied == [2, 7]
    assert gate.version == 7
    assert store.load().plan == plan(7)


async def test_gate_starts_from_loaded_plan(tmp_path: Path) -> None:
    applied: list[int] = []
    gate = PlanGate(apply=lambda p: applied.append(p.version), store=None, initial=plan(4))
    with pytest.raises(StalePlanError):
        await gate.accept(plan(3))
    assert not await gate.accept(plan(4))
    assert applied == []


async def test_gate_survives_persist_failure(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    store = PlanStore(blocker / "sub")  # cannot create a directory under a file
    applied: list[Plan] = []
    gate = PlanGate(apply=applied.append, store=store)
    assert await gate.accept(plan(1))
    assert applied == [plan(1)]
    assert gate.persist_errors == 1


def test_plan_equality_is_by_content() -> None:
    # The gate's idempotency relies on value equality of frozen dataclasses.
    assert plan(1) == dataclasses.replace(plan(1))
    assert plan(1) != plan(1, port=1)


async def test_gate_stage_compiles_off_the_loop(tmp_path: Path) -> None:
    import threading

    from limpet.proxy.session.routing import RouterSettings, SessionRouter

    router = SessionRouter(settings=RouterSettings())
    threads: list[str] = []

    def stage(p: Plan) -> Callable[[], None]:
        threads.append(threading.current_thread().name)
        return router.stage(p)

    gate = PlanGate(stage=stage, store=PlanStore(tmp_path))
    assert await gate.accept(plan(1))
    assert router.plan_version == 1
    assert threads
    assert threads[0] != threading.main_thread().name
    assert not await gate.accept(plan(1))
    assert len(threads) == 1


def test_gate_needs_one_consumer() -> None:
    with pytest.raises(ValueError, match="exactly one"):
        PlanGate(store=None)
    with pytest.raises(ValueError, match="exactly one"):
        PlanGate(apply=print, stage=lambda p: print, store=None)
