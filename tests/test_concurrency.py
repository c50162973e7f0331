"""Real processes racing on one database: each race ends as a serial run could have ended.

Run on PostgreSQL (READ COMMITTED, where two transactions can both find a row missing and
both insert it, or both pass the same check) and, where a race exists there too, on SQLite
(writers serialised by BEGIN IMMEDIATE, but plans made outside the transaction still go
stale). Each test lines up spawned processes on a barrier (``_concurrency.hammer``) and
then checks what a serial run would leave: no duplicate item, approval, validation run,
release, admin or task run, none lost, the audit chain verifies. Two outbox workers (one
SIGKILLed) are in ``test_worker.py``.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import governance_support as gs
import pytest
from _concurrency import hammer
from sqlmodel import col, func, select

from geomesh.auth import SYSTEM
from geomesh.config import ProductConfig, load_config
from geomesh.errors import PermissionDenied
from geomesh.models import (
    Approval,
    AuditEvent,
    Item,
    OutboxMessage,
    Release,
    Task,
    TaskStatus,
    User,
    ValidationRun,
)
from geomesh.services import history, pipeline, promotion, rollback, signoff, tasks, users, worker
from geomesh.services.pipeline import ingest_rasters
from geomesh.services.products import register_product
from geomesh.settings import Settings
from geomesh.workspace import Workspace

from conftest import SHARED

WORKERS = 3
TILES = 6
#: races that exist only where two writers run at once: SQLite's BEGIN IMMEDIATE serialises
#: these by construction, so they run on PostgreSQL (READ COMMITTED) only
POSTGRES_ONLY = pytest.mark.parametrize(
    "shared_settings", [pytest.param("postgres", marks=pytest.mark.postgres)], indirect=True
)


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def shared_settings(request: pytest.FixtureRequest, tmp_path: Path) -> Settings:
    """One storage root and one database that every worker process opens."""
    url = None
    if request.param == "postgres":
        url = request.getfixturevalue("migrated_postgres_env")["GEOMESH_DATABASE_URL"]
    schemas = SHARED / "stac-schemas"
    return Settings(
        storage_root=tmp_path / "root",
        database_url=url,
        schema_dir=schemas if schemas.is_dir() else None,
    )


def ingest_worker(
    index: int, settings: dict[str, Any], config_path: str, tiles: list[str]
) -> list[tuple[str, str | None, str | None]]:
    """Hammer worker: ingest every tile, each worker in another order (maximal overlap)."""
    ws = Workspace.open(Settings(**settings), migrate=False)
    try:
        order = tiles[index:] + tiles[:index]
        report = ingest_rasters(ws, load_config(config_path), order, actor="system")
        return [(r.status, r.item_id, r.error) for r in report.results]
    finally:
        ws.close()


def test_ingest_workers_on_overlapping_content_stage_each_tile_once(
    shared_settings: Settings, config_path: Path, make_raster: Callable[..., Path]
) -> None:
    tile = gs.tile_factory(make_raster)
    tiles = [str(tile(f"t{n}", n)) for n in range(TILES)]
    ws = Workspace.open(shared_settings)  # migrated once, audit key created once
    try:
        results = hammer(
            ingest_worker,
            WORKERS,
            shared_settings.model_dump(mode="python"),
            str(config_path),
            tiles,
        )
        flat = [r for per_worker in results for r in per_worker]
        assert [r for r in flat if r[0] not in ("staged", "exists")] == []
        staged = Counter(item_id for status, item_id, _ in flat if status == "staged")
        with ws.read() as s:
            items = s.exec(select(Item.id)).all()
            ingests = s.exec(
                select(AuditEvent.target).where(col(AuditEvent.action) == "ingest")
            ).all()
        assert len(items) == TILES  # no duplicate, none lost
        assert set(staged) == set(items) and set(staged.values()) == {1}  # staged once each
        assert sorted(ingests) == sorted(items)  # one ingest event per item
        assert history.verify_audit(ws) == []
    finally:
        ws.close()


# ------------------------------------------------------------------ shared helpers


#: the worker process's workspace, opened by ``warm_up`` before the barrier
_WS: list[Workspace] = []


def warm_up(index: int, settings: dict[str, Any], *_: Any) -> None:
    """Hammer setup: open the workspace and its first connection before the barrier, so
    that the racing calls start at the same instant in every process."""
    del index
    ws = Workspace.open(Settings(**settings), migrate=False)
    with ws.read() as s:
        s.exec(select(func.count()).select_from(User)).one()
    _WS.append(ws)


def _ws() -> Workspace:
    return _WS[0]


def _dump(settings: Settings) -> dict[str, Any]:
    return settings.model_dump(mode="python")


def _events(ws: Workspace, action: str) -> Counter[str]:
    """How many audit events of ``action`` each target has."""
    with ws.read() as s:
        return Counter(
            s.exec(select(AuditEvent.target).where(col(AuditEvent.action) == action)).all()
        )


def _count(ws: Workspace, model: Any, *where: Any) -> int:
    with ws.read() as s:
        return int(s.exec(select(func.count()).select_from(model).where(*where)).one())


@pytest.fixture
def governed(
    shared_settings: Settings, write_config: Callable[..., Path]
) -> tuple[Workspace, Path]:
    """The shared workspace with every user of ``governance_support`` and a product config
    that needs two approvals and queues its governance webhooks (never delivered here)."""
    cfg_path = write_config(
        {
            "governance": {
                "approvals_required": 2,
                "escalation": [{"name": "ops", "url": "http://127.0.0.1:9/hook"}],
            }
        }
    )
    ws = Workspace.open(shared_settings)
    gs.add_users(ws)
    return ws, cfg_path


# ------------------------------------------------------------------ sign-off


def signoff_worker(
    index: int, settings: dict[str, Any], config_path: str, item_ids: list[str]
) -> list[int]:
    """Workers 0 and 2 are alice, worker 1 is bob: two stewards at once, and one twice."""
    ws = _ws()
    actor = gs.STEWARDS[index % 2]
    cfg = load_config(config_path)
    return [
        len(signoff.sign_off(ws, cfg, i, actor=actor, approve=True).approved_by) for i in item_ids
    ]


@POSTGRES_ONLY
def test_stewards_signing_the_same_items_at_once_record_each_decision_once(
    governed: tuple[Workspace, Path], shared_settings: Settings, make_raster: Callable[..., Path]
) -> None:
    ws, cfg_path = governed
    cfg = load_config(cfg_path)
    tile = gs.tile_factory(make_raster)
    items = gs.ingest(ws, cfg, [tile(f"s{n}", n) for n in range(3)])
    try:
        hammer(signoff_worker, 3, _dump(shared_settings), str(cfg_path), items, setup=warm_up)
        with ws.read() as s:
            rows = s.exec(select(Approval.item_id, Approval.actor)).all()
            decided = s.exec(
                select(OutboxMessage.payload).where(col(OutboxMessage.event) == "signoff_decided")
            ).all()
        # one approval per (item, steward): a repeat is a no-op, as in a serial run
        assert sorted(rows) == sorted((i, a) for i in items for a in gs.STEWARDS)
        assert _events(ws, "signoff.approve") == Counter({i: 2 for i in items})
        # each decision saw the ones committed before it: the first says 1 of 2, the
        # second 2 of 2 (signed off): never two "1 of 2" or two "signed off"
        for item_id in items:
            seen = sorted(
                (p["approvals"], p["signed_off"]) for p in decided if p["item_id"] == item_id
            )
            assert seen == [(1, False), (2, True)], (item_id, seen)
            assert signoff.signoff_status(ws, cfg, item_id).ok
        assert history.verify_audit(ws) == []
    finally:
        ws.close()


# ------------------------------------------------------------------ promotion and rollback


def _released(
    ws: Workspace, cfg: ProductConfig, n: int, make_raster: Callable[..., Path]
) -> list[str]:
    """``n`` tiles ingested, validated and approved (one approval needed)."""
    tile = gs.tile_factory(make_raster)
    items = gs.ingest(ws, cfg, [tile(f"p{k}", 10 + k) for k in range(n)])
    gs.approve(ws, cfg, items)
    return items


def promote_worker(index: int, settings: dict[str, Any], config_path: str) -> tuple[bool, str]:
    ws = _ws()
    res = promotion.promote(ws, load_config(config_path), actor=gs.STEWARDS[index % 2])
    return res.already, res.message


def test_two_promotes_at_once_publish_one_release(
    shared_settings: Settings, config_path: Path, make_raster: Callable[..., Path]
) -> None:
    ws = Workspace.open(shared_settings)
    try:
        gs.add_users(ws)
        cfg = load_config(config_path)
        items = _released(ws, cfg, 3, make_raster)
        outcomes = hammer(
            promote_worker, 2, _dump(shared_settings), str(config_path), setup=warm_up
        )
        # serial: the first releases every item, the second finds nothing left to promote
        assert sorted(already for already, _ in outcomes) == [False, True], outcomes
        with ws.read() as s:
            assert len(s.exec(select(Release)).all()) == 1
        assert gs.production_ids(ws, cfg.product_id) == set(items)
        assert gs.manifest_ids(ws, cfg.product_id) == set(items)
        assert _events(ws, "promote") == Counter({i: 1 for i in items})
        assert sum(_events(ws, "release.publish").values()) == 1
        assert history.verify_audit(ws) == []
    finally:
        ws.close()


def promote_or_roll_back(
    index: int, settings: dict[str, Any], config_path: str, victim: str
) -> str:
    ws = _ws()
    cfg = load_config(config_path)
    if index == 0:
        return promotion.promote(ws, cfg, actor="alice").message
    return rollback.rollback_item(ws, cfg, victim, actor="bob").message


def test_a_promote_racing_an_item_rollback_both_take_effect(
    shared_settings: Settings, config_path: Path, make_raster: Callable[..., Path]
) -> None:
    ws = Workspace.open(shared_settings)
    try:
        gs.add_users(ws)
        cfg = load_config(config_path)
        first, kept = _released(ws, cfg, 2, make_raster)
        promotion.promote(ws, cfg, actor="alice")
        tile = gs.tile_factory(make_raster)
        [new] = gs.ingest(ws, cfg, [tile("late", 99)])
        gs.approve(ws, cfg, [new])
        hammer(
            promote_or_roll_back, 2, _dump(shared_settings), str(config_path), first, setup=warm_up
        )
        # whichever went first, the other re-planned on top of it (as a serial run would)
        assert gs.manifest_ids(ws, cfg.product_id) == {kept, new}
        assert gs.states(ws, cfg.product_id) == {
            first: "withdrawn",
            kept: "production",
            new: "production",
        }
        with ws.read() as s:
            versions = sorted(r.version for r in s.exec(select(Release)).all())
        assert len(versions) == 3 and len(set(versions)) == 3, versions
        assert sum(_events(ws, "release.publish").values()) == 3
        assert history.verify_audit(ws) == []
    finally:
        ws.close()


# ------------------------------------------------------------------ validation and routing


def validate_worker(
    index: int, settings: dict[str, Any], config_path: str, items: list[str]
) -> list[str]:
    ws = _ws()
    cfg = load_config(config_path)
    return [pipeline.validate_and_route(ws, cfg, i, actor=gs.SUBMITTER).action for i in items]


@POSTGRES_ONLY
def test_validating_the_same_staged_items_from_two_processes_records_one_run_each(
    shared_settings: Settings, config_path: Path, make_raster: Callable[..., Path]
) -> None:
    ws = Workspace.open(shared_settings)
    try:
        gs.add_users(ws)
        cfg = load_config(config_path)
        tile = gs.tile_factory(make_raster)
        items = gs.ingest(
            ws, cfg, [tile(f"v{n}", 20 + n) for n in range(3)], post_stage=gs.stay_in_staging
        )
        hammer(validate_worker, 2, _dump(shared_settings), str(config_path), items, setup=warm_up)
        with ws.read() as s:
            runs = Counter(s.exec(select(ValidationRun.item_id)).all())
        assert runs == Counter({i: 1 for i in items})  # no duplicate run
        assert _events(ws, "validate") == Counter({i: 1 for i in items})
        assert _events(ws, "route.proceed") == Counter({i: 1 for i in items})
        assert set(gs.states(ws, cfg.product_id).values()) == {"validation"}
        assert history.verify_audit(ws) == []
    finally:
        ws.close()


# ------------------------------------------------------------------ the first admin


def bootstrap_worker(index: int, settings: dict[str, Any]) -> str:
    """Workers 0 and 2 claim the same name, worker 1 another: only one may bootstrap."""
    try:
        users.add_user(_ws(), actor=SYSTEM, name=f"root{index % 2}", role="admin")
    except PermissionDenied:
        return "refused"
    return "added"


@POSTGRES_ONLY
def test_first_admin_bootstraps_racing_on_an_empty_user_table_add_one_admin(
    shared_settings: Settings,
) -> None:
    ws = Workspace.open(shared_settings)
    try:
        outcomes = hammer(bootstrap_worker, 3, _dump(shared_settings), setup=warm_up)
        assert sorted(outcomes) == ["added", "refused", "refused"], outcomes
        assert _count(ws, User) == 1
        assert sum(_events(ws, "user.add").values()) == 1
        assert history.verify_audit(ws) == []
    finally:
        ws.close()


def disable_worker(index: int, settings: dict[str, Any]) -> str:
    """Two admins disable each other at once: worker 0 is root, worker 1 is ada."""
    actor, other = ("root", "ada") if index == 0 else ("ada", "root")
    try:
        users.set_disabled(_ws(), actor=actor, name=other, disabled=True)
    except PermissionDenied:
        return "refused"
    return "disabled"


@POSTGRES_ONLY
def test_two_admins_disabling_each_other_at_once_leave_one_enabled_admin(
    shared_settings: Settings,
) -> None:
    ws = Workspace.open(shared_settings)
    try:
        users.add_user(ws, actor=SYSTEM, name="root", role="admin")
        users.add_user(ws, actor="root", name="ada", role="admin")
        outcomes = hammer(disable_worker, 2, _dump(shared_settings), setup=warm_up)
        # serial: the first disables the other, who may then no longer act
        assert sorted(outcomes) == ["disabled", "refused"], outcomes
        assert _count(ws, User, col(User.disabled).is_(False)) == 1
        assert sum(_events(ws, "user.disable").values()) == 1
        assert history.verify_audit(ws) == []
    finally:
        ws.close()


# ------------------------------------------------------------------ task leases

LEASE_S = 1.0
#: the task outlives its lease 2.5 times over: only renewals keep it with one worker
TASK_S = 2.5


def _slow_task(ws: Workspace, task: tasks.Claimed, actor: str) -> dict[str, Any]:
    time.sleep(TASK_S)
    return {"ran": task.id}


def lease_worker(index: int, settings: dict[str, Any], task_id: int) -> int:
    """Run passes of the worker until the task is done; how many times this one ran it."""
    ws = _ws()
    ran = 0
    deadline = time.monotonic() + TASK_S * 4
    while time.monotonic() < deadline:
        report = worker.run_once(
            ws, owner=f"w{index}", handlers={"snapshot": _slow_task}, lease_s=LEASE_S
        )
        ran += len(report.done) + len(report.lost)
        with ws.read() as s:
            task = s.get(Task, task_id)
            if task is not None and task.status == TaskStatus.done.value:
                break
        time.sleep(0.05)
    return ran


def test_a_task_longer_than_its_lease_runs_once_while_its_worker_lives(
    shared_settings: Settings, config: ProductConfig
) -> None:
    ws = Workspace.open(shared_settings)
    try:
        with ws.transaction() as session:
            register_product(session, config, actor=SYSTEM)
        task_id = tasks.enqueue_task(ws, "snapshot", config.product_id, actor=SYSTEM)
        runs = hammer(lease_worker, 2, _dump(shared_settings), task_id, setup=warm_up)
        assert sum(runs) == 1, runs  # the other worker never took it over
        assert _events(ws, "task.start") == Counter({f"task:{task_id}": 1})
        assert _events(ws, "task.done") == Counter({f"task:{task_id}": 1})
        assert history.verify_audit(ws) == []
    finally:
        ws.close()
