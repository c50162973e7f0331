"""The three routes end to end: ingest → validate → route (warn / quarantine / rollback)."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from policy_support import change_policy
from sqlmodel import col, select

from geomesh import audit_info, lifecycle
from geomesh.config import ProductConfig, load_config
from geomesh.errors import NotFound, PermissionDenied
from geomesh.models import (
    AuditEvent,
    FindingRecord,
    Item,
    ItemState,
    Role,
    Task,
    ValidationRun,
)
from geomesh.services import pipeline
from geomesh.services.ingest import IngestReport, TileResult
from geomesh.services.pipeline import ingest_rasters, validate_and_route
from geomesh.services.routing import route_item
from geomesh.workspace import Workspace

SYSTEM = "system"
DATED = {"TIFFTAG_DATETIME": "2024:06:12 19:03:21"}


def no_route(*_: Any) -> tuple[str | None, str | None, dict[str, int]]:
    return "staging", None, {}


def ingest(
    ws: Workspace, cfg: ProductConfig, source: Path, *, post_stage: Any = None
) -> TileResult:
    """Ingest one tile: by default admitted (staged, validated and routed in one
    transaction); ``post_stage`` = a hook that runs after staging commits instead."""
    report: IngestReport = ingest_rasters(ws, cfg, [source], actor=SYSTEM, post_stage=post_stage)
    (res,) = report.results
    assert res.status == "staged", res.error
    return res


def get_item(ws: Workspace, item_id: str) -> Item:
    with ws.read() as s:
        item = s.get(Item, item_id)
        assert item is not None
        return item


def actions(ws: Workspace, item_id: str) -> list[str]:
    with ws.read() as s:
        rows = s.exec(
            select(AuditEvent).where(AuditEvent.target == item_id).order_by(col(AuditEvent.seq))
        ).all()
        return [e.action for e in rows]


@pytest.fixture
def inside(make_raster: Callable[..., Path]) -> Path:
    return make_raster("inside.tif", width=256, height=256, count=1, tags=DATED)


@pytest.fixture
def outside(make_raster: Callable[..., Path]) -> Path:
    return make_raster(
        "outside.tif", width=128, height=128, count=1, origin=(245000.0, 4185000.0), tags=DATED
    )


# ------------------------------------------------------------------ P3: warn and proceed


def test_clean_tile_warns_and_proceeds_to_validation(
    workspace: Workspace, config: ProductConfig, inside: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level("WARNING", logger="geomesh.services.routing"):
        res = ingest(workspace, config, inside)
    assert (res.state, res.route) == ("validation", "warn")
    assert res.findings["P3"] > 0 and res.findings["P1"] == res.findings["P2"] == 0
    assert any("proceeds with warnings" in r.message for r in caplog.records)
    assert res.item_id is not None
    item = get_item(workspace, res.item_id)
    assert item.state is ItemState.validation and item.worst_severity == "P3"
    assert actions(workspace, item.id) == ["ingest", "validate", "route.proceed"]
    with workspace.read() as s:
        (run,) = s.exec(select(ValidationRun).where(ValidationRun.item_id == item.id)).all()
        assert run.passed and run.content_digest == item.content_digest
        recs = s.exec(select(FindingRecord).where(FindingRecord.run_id == run.id)).all()
        assert len(recs) == res.findings["P3"] and all(r.open for r in recs)


def test_tile_without_findings_proceeds(
    workspace: Workspace, write_config: Callable[..., Path], inside: Path
) -> None:
    cfg = load_config(
        write_config(
            {
                "product_metadata": {
                    "platform": "sentinel-2b",
                    "instruments": ["msi"],
                    "processing_level": "L2A",
                }
            }
        )
    )
    res = ingest(workspace, cfg, inside)
    assert (res.state, res.route, res.findings) == (
        "validation",
        "proceed",
        {"P1": 0, "P2": 0, "P3": 0},
    )


# ------------------------------------------------------------------ P2: quarantine


def test_tile_without_crs_is_quarantined_with_reason(
    workspace: Workspace,
    config: ProductConfig,
    shared_raster: Callable[[str], Path],
    tmp_path: Path,
) -> None:
    src = tmp_path / "float32.tif"
    shutil.copy(shared_raster("rasterio__float32.tif"), src)  # real raster with no CRS
    res = ingest(workspace, config, src)
    assert (res.state, res.route) == ("quarantined", "quarantine")
    assert res.item_id is not None
    item = get_item(workspace, res.item_id)
    assert item.state is ItemState.quarantined
    assert item.quarantine_reason and "GM-CRS-001" in item.quarantine_reason
    assert item.quarantine_reason.startswith("P2:")
    assert item.quarantine_key == item.object_key
    assert workspace.store.exists("quarantine", item.object_key)
    assert workspace.store.exists("quarantine", item.stac_key)
    assert actions(workspace, item.id)[-1] == "quarantine"


def test_mismatched_projection_is_quarantined(
    workspace: Workspace, config: ProductConfig, inside: Path
) -> None:
    res = ingest(workspace, config, inside, post_stage=no_route)
    assert res.item_id is not None
    # the stored item says another CRS than its COG header (e.g. edited by a broken tool)
    with workspace.transaction() as s:
        item = s.get(Item, res.item_id)
        assert item is not None
        stac = dict(item.stac)
        stac["properties"] = {**stac["properties"], "proj:code": "EPSG:32611"}
        item.stac = stac
        s.add(item)
    out = validate_and_route(workspace, config, res.item_id, actor=SYSTEM)
    assert (out.action, out.state) == ("quarantine", "quarantined")
    assert "mismatched projection" in (get_item(workspace, res.item_id).quarantine_reason or "")


# ------------------------------------------------------------------ P1: rollback


def test_tile_outside_boundary_rolls_back_and_queues_reclip(
    workspace: Workspace, config: ProductConfig, outside: Path
) -> None:
    res = ingest(workspace, config, outside, post_stage=no_route)
    assert res.item_id is not None
    for key in (f"previews/{res.item_id}/thumb.png", f"previews/{res.item_id}.json"):
        workspace.store.put_bytes("meta", key, b"cached")
    workspace.store.put_bytes("meta", f"previews/{res.item_id}-other/keep.png", b"other item")
    out = validate_and_route(workspace, config, res.item_id, actor=SYSTEM)
    assert (out.action, out.state, out.worst_severity) == ("rollback", "rolled_back", "P1")
    assert get_item(workspace, res.item_id).state is ItemState.rolled_back
    assert sorted(out.invalidated) == sorted(
        [f"previews/{res.item_id}/thumb.png", f"previews/{res.item_id}.json"]
    )
    assert list(workspace.store.list("meta", "previews/")) == [
        f"previews/{res.item_id}-other/keep.png"
    ]
    with workspace.read() as s:
        (task,) = s.exec(select(Task).where(Task.item_id == res.item_id)).all()
    assert (task.kind, task.status, task.id) == ("reclip", "queued", out.task_id)
    assert task.details["rules"] == ["GM-BOUNDARY-001"]
    # idempotent: routing again changes nothing and queues nothing
    again = route_item(workspace, config, res.item_id, out.findings, actor=SYSTEM)
    assert (again.action, again.changed) == ("none", False)
    with workspace.read() as s:
        assert len(s.exec(select(Task)).all()) == 1


def test_no_reclip_when_clipping_is_on(
    workspace: Workspace, config: ProductConfig, outside: Path
) -> None:
    res = ingest(workspace, config, outside, post_stage=no_route)
    assert res.item_id is not None
    clip_cfg = config.model_copy(
        update={"ingestion": config.ingestion.model_copy(update={"clip": True})}
    )
    change_policy(workspace, clip_cfg)  # the registered config changes (audited)
    out = validate_and_route(workspace, clip_cfg, res.item_id, actor=SYSTEM)
    assert out.action == "rollback" and out.task_id is None


def _promote_and_supersede(ws: Workspace, item_id: str) -> None:
    """Test set-up: what promote + a newer release would do to an item (audited)."""
    with ws.transaction() as s:
        item = s.get(Item, item_id)
        assert item is not None
        for target in (ItemState.production, ItemState.superseded):
            lifecycle.transition(s, item, target, actor=SYSTEM, action="test.setup")


def test_rollback_restores_the_version_it_superseded(
    workspace: Workspace, config: ProductConfig, inside: Path, outside: Path
) -> None:
    first = ingest(workspace, config, inside)
    assert first.item_id is not None and first.state == "validation"
    _promote_and_supersede(workspace, first.item_id)
    shutil.copy(outside, inside)  # the same source now holds bad bytes
    second = ingest(workspace, config, inside, post_stage=no_route)
    assert second.item_id is not None
    assert get_item(workspace, second.item_id).supersedes == first.item_id
    out = validate_and_route(workspace, config, second.item_id, actor=SYSTEM)
    assert out.action == "rollback" and out.restored_item_id == first.item_id
    assert get_item(workspace, first.item_id).state is ItemState.production
    assert actions(workspace, first.item_id)[-1] == "rollback.restore"


def test_rollback_restores_a_superseded_staged_version(
    workspace: Workspace, config: ProductConfig, inside: Path, outside: Path
) -> None:
    first = ingest(workspace, config, inside)
    assert first.item_id is not None and first.state == "validation"
    shutil.copy(outside, inside)
    second = ingest(workspace, config, inside)
    assert second.state == "rolled_back"
    assert get_item(workspace, first.item_id).state is ItemState.validation


# ------------------------------------------------------------------ admission: one commit


def _checkpoints(ws: Workspace) -> list[str]:
    """The audit chain heads stored so far: one per committed transaction that audited."""
    return sorted(ws.store.list("meta", audit_info.CHECKPOINT_PREFIX))


@pytest.mark.parametrize(
    ("tile", "route"),
    [("inside", "route.proceed"), ("nocrs", "quarantine"), ("outside", "rollback")],
)
def test_a_new_tile_is_staged_validated_and_routed_in_one_transaction(
    workspace: Workspace,
    config: ProductConfig,
    make_raster: Callable[..., Path],
    request: pytest.FixtureRequest,
    tile: str,
    route: str,
) -> None:
    ingest(workspace, config, make_raster("first.tif", width=64, height=64, count=1, tags=DATED))
    src = (
        make_raster("nocrs.tif", width=64, height=64, count=1, crs=None, tags=DATED)
        if tile == "nocrs"
        else request.getfixturevalue(tile)
    )
    before = _checkpoints(workspace)
    res = ingest(workspace, config, src)
    assert res.item_id is not None
    new = [k for k in _checkpoints(workspace) if k not in before]
    assert len(new) == 1, new  # one commit, so one chain head stored
    assert actions(workspace, res.item_id) == ["ingest", "validate", route]
    with workspace.read() as s:
        last = s.exec(select(AuditEvent).order_by(col(AuditEvent.seq).desc())).first()
        (run,) = s.exec(select(ValidationRun).where(ValidationRun.item_id == res.item_id)).all()
        validated = s.exec(
            select(AuditEvent).where(
                AuditEvent.target == res.item_id, AuditEvent.action == "validate"
            )
        ).one()
    assert (
        last is not None and last.action == route and new[0] == audit_info.checkpoint_key(last.seq)
    )
    # the route names the run it came from, as the validation did
    assert run.id is not None and last.details["run_id"] == validated.details["run_id"] == run.id
    if tile == "nocrs":  # its copies were made before the transaction that points at them
        assert workspace.store.exists("quarantine", get_item(workspace, res.item_id).object_key)


def test_a_post_stage_hook_runs_after_staging_commits(
    workspace: Workspace, config: ProductConfig, inside: Path
) -> None:
    """The counterpart: a caller's own hook sees the committed staging row, so the same
    tile routed by ``validate_and_route`` takes three commits (staging, validation, route)."""
    before = _checkpoints(workspace)
    res = ingest(workspace, config, inside, post_stage=pipeline.validate_and_route_staged)
    assert (res.state, res.route) == ("validation", "warn")
    # the product's registration shares the staging transaction
    assert len([k for k in _checkpoints(workspace) if k not in before]) == 3


# ------------------------------------------------------------------ table, permissions


def test_routing_table_is_per_product(
    workspace: Workspace, write_config: Callable[..., Path], make_raster: Callable[..., Path]
) -> None:
    cfg = load_config(write_config({"validation": {"routing": {"P2": "rollback", "P3": "warn"}}}))
    res = ingest(
        workspace, cfg, make_raster("nocrs.tif", width=64, height=64, count=1, crs=None, tags=DATED)
    )
    assert (res.route, res.state) == ("rollback", "rolled_back")


def test_routing_checks_the_actor(
    workspace: Workspace, config: ProductConfig, outside: Path
) -> None:
    from geomesh.auth import create_user

    res = ingest(workspace, config, outside, post_stage=no_route)
    assert res.item_id is not None
    with workspace.transaction() as s:
        create_user(s, name="ana", role=Role.analyst)
    with pytest.raises(PermissionDenied):
        validate_and_route(workspace, config, res.item_id, actor="ana")  # analysts cannot roll back
    assert get_item(workspace, res.item_id).state is ItemState.staging
    with pytest.raises(NotFound):
        validate_and_route(workspace, config, "no-such-item", actor=SYSTEM)


def test_dry_run_reports_the_route_without_writing(
    workspace: Workspace, config: ProductConfig, outside: Path
) -> None:
    report = ingest_rasters(workspace, config, [outside], actor=SYSTEM, dry_run=True)
    (res,) = report.results
    assert res.status == "would-stage"
    with workspace.read() as s:
        assert s.exec(select(Item)).all() == []
    assert res.route == "rollback" and res.findings["P1"] == 1
