"""validate_item persistence and idempotency, finding counts, and `remediate` (new version)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from sqlmodel import col, select

from geomesh.config import ProductConfig, load_config
from geomesh.errors import ConfigError, InvalidTransition, PermissionDenied, ValidationError
from geomesh.models import AuditEvent, FindingRecord, Item, ItemState, Role, ValidationRun
from geomesh.services.finding_counts import finding_counts
from geomesh.services.findings import open_findings
from geomesh.services.pipeline import ingest_rasters, validate_and_route
from geomesh.services.remediation import remediate_item
from geomesh.services.validation import validate_item
from geomesh.workspace import Workspace

SYSTEM = "system"
DATED = {"TIFFTAG_DATETIME": "2024:06:12 19:03:21"}


def no_route(*_: Any) -> tuple[str | None, str | None, dict[str, int]]:
    return "staging", None, {}


def staged(ws: Workspace, cfg: ProductConfig, source: Path) -> str:
    (res,) = ingest_rasters(ws, cfg, [source], actor=SYSTEM, post_stage=no_route).results
    assert res.status == "staged" and res.item_id, res.error
    return res.item_id


def edit_stac(ws: Workspace, item_id: str, edit: Callable[[dict[str, Any]], None]) -> None:
    """Test set-up: corrupt the stored item dict the way a broken tool would."""
    with ws.transaction() as s:
        item = s.get(Item, item_id)
        assert item is not None
        stac = {**item.stac, "properties": dict(item.stac["properties"])}
        edit(stac)
        item.stac = stac
        s.add(item)


@pytest.fixture
def tile(make_raster: Callable[..., Path]) -> Path:
    return make_raster("tile.tif", width=256, height=256, count=1, tags=DATED)


def runs(ws: Workspace, item_id: str) -> list[ValidationRun]:
    with ws.read() as s:
        return list(s.exec(select(ValidationRun).where(ValidationRun.item_id == item_id)).all())


def test_validate_item_persists_and_is_idempotent(
    workspace: Workspace, config: ProductConfig, tile: Path
) -> None:
    item_id = staged(workspace, config, tile)
    first = validate_item(workspace, config, item_id, actor=SYSTEM)
    assert first and {f.severity.value for f in first} == {"P3"}
    again = validate_item(workspace, config, item_id, actor=SYSTEM)
    assert again == first
    assert len(runs(workspace, item_id)) == 1  # nothing changed: nothing new recorded
    with workspace.read() as s:
        events = s.exec(
            select(AuditEvent).where(AuditEvent.target == item_id, AuditEvent.action == "validate")
        ).all()
        assert len(events) == 1
        assert events[0].details["counts"] == {"P1": 0, "P2": 0, "P3": len(first)}
        assert [f.key() for f in open_findings(s, item_id)] == [f.key() for f in first]


def test_new_findings_close_the_old_ones(
    workspace: Workspace, config: ProductConfig, tile: Path
) -> None:
    item_id = staged(workspace, config, tile)
    validate_item(workspace, config, item_id, actor=SYSTEM)
    strict = validate_item(workspace, config, item_id, actor=SYSTEM, strict=True)
    assert {f.severity.value for f in strict} == {"P2"}
    assert len(runs(workspace, item_id)) == 2
    with workspace.read() as s:
        rows = s.exec(select(FindingRecord).where(FindingRecord.item_id == item_id)).all()
        assert sum(r.open for r in rows) == len(strict)
        assert {r.severity for r in rows if r.open} == {"P2"}
        counts = finding_counts(s, [item_id, "unknown-item"])
    assert counts == {
        item_id: {"P1": 0, "P2": len(strict), "P3": 0},
        "unknown-item": {"P1": 0, "P2": 0, "P3": 0},
    }


def test_validate_item_checks_actor_and_product(
    workspace: Workspace, config: ProductConfig, tile: Path, write_config: Callable[..., Path]
) -> None:
    from geomesh.auth import create_user

    item_id = staged(workspace, config, tile)
    with workspace.transaction() as s:
        create_user(s, name="vic", role=Role.viewer)
    with pytest.raises(PermissionDenied):
        validate_item(workspace, config, item_id, actor="vic")
    other = load_config(
        write_config({"product_metadata": {"product_id": "other-product"}}, name="other.yaml")
    )
    with pytest.raises(ConfigError, match="belongs to product"):
        validate_item(workspace, other, item_id, actor=SYSTEM)
    assert runs(workspace, item_id) == []


def test_missing_stored_object_is_a_p1_finding(
    workspace: Workspace, config: ProductConfig, tile: Path
) -> None:
    item_id = staged(workspace, config, tile)
    with workspace.read() as s:
        item = s.get(Item, item_id)
        assert item is not None
    workspace.store.delete("staging", item.object_key)
    findings = validate_item(workspace, config, item_id, actor=SYSTEM)
    assert ("GM-CHECKSUM-003", "P1") in {(f.rule_id, f.severity.value) for f in findings}


# ------------------------------------------------------------------ remediation


def test_remediate_derives_missing_geometry_into_a_new_version(
    workspace: Workspace, config: ProductConfig, tile: Path
) -> None:
    item_id = staged(workspace, config, tile)
    edit_stac(workspace, item_id, lambda d: d["properties"].pop("proj:geometry"))
    out = validate_and_route(workspace, config, item_id, actor=SYSTEM)
    assert out.action == "quarantine"
    (missing,) = [f for f in out.findings if f.rule_id == "GM-CONTRACT-001"]
    assert missing.path == "properties.proj:geometry" and missing.context["derivable"] is True

    result = remediate_item(workspace, config, item_id, actor=SYSTEM)
    assert result.created and result.fields == ["proj:geometry"]
    assert result.new_item_id == f"{item_id}-r1"
    with workspace.read() as s:
        old = s.get(Item, item_id)
        new = s.get(Item, result.new_item_id)
        assert old is not None and new is not None
        assert old.state is ItemState.superseded
        assert old.stac.get("properties", {}).get("proj:geometry") is None  # never edited
        assert new.state is ItemState.staging and new.derived_from == item_id
        assert new.content_digest == old.content_digest
        geom = new.stac["properties"]["proj:geometry"]
        assert geom["type"] == "Polygon"
        assert any(link["rel"] == "derived_from" for link in new.stac["links"])
        trail = s.exec(
            select(AuditEvent.action, AuditEvent.target).order_by(col(AuditEvent.seq).desc())
        ).all()[:3]
    assert trail == [
        ("remediate", result.new_item_id),
        ("supersede", item_id),
        ("quarantine.release", item_id),
    ]
    assert workspace.store.exists("staging", f"items/{config.product_id}/{result.new_item_id}.json")
    routed = validate_and_route(workspace, config, result.new_item_id, actor=SYSTEM)
    assert (routed.action, routed.state) == ("warn", "validation")
    # idempotent: remediating the old id again returns the same new version
    again = remediate_item(workspace, config, item_id, actor=SYSTEM)
    assert (again.created, again.new_item_id) == (False, result.new_item_id)


def test_remediate_fixes_drift_and_legacy_epsg(
    workspace: Workspace, config: ProductConfig, tile: Path
) -> None:
    item_id = staged(workspace, config, tile)

    def corrupt(d: dict[str, Any]) -> None:
        d["properties"]["proj:shape"] = [1, 1]
        d["properties"]["proj:epsg"] = 32610
        del d["properties"]["proj:code"]

    edit_stac(workspace, item_id, corrupt)
    result = remediate_item(workspace, config, item_id, actor=SYSTEM)
    assert result.fields == ["proj:code", "proj:shape"]
    with workspace.read() as s:
        new = s.get(Item, result.new_item_id)
        assert new is not None
    props = new.stac["properties"]
    assert props["proj:shape"] == [256, 256] and props["proj:code"] == "EPSG:32610"
    assert "proj:epsg" not in props
    findings = validate_item(workspace, config, result.new_item_id, actor=SYSTEM)
    assert {f.rule_id for f in findings} == {"GM-CONTRACT-002"}


def test_remediate_refuses_when_nothing_is_derivable(
    workspace: Workspace, config: ProductConfig, tile: Path
) -> None:
    item_id = staged(workspace, config, tile)
    with pytest.raises(ValidationError, match="nothing is derivable"):
        remediate_item(workspace, config, item_id, actor=SYSTEM)


def test_remediate_needs_the_permission_and_a_mutable_state(
    workspace: Workspace, config: ProductConfig, tile: Path
) -> None:
    from geomesh.auth import create_user

    item_id = staged(workspace, config, tile)
    edit_stac(workspace, item_id, lambda d: d["properties"].pop("proj:bbox"))
    with workspace.transaction() as s:
        create_user(s, name="ana", role=Role.analyst)
    with pytest.raises(PermissionDenied):
        remediate_item(workspace, config, item_id, actor="ana")
    with workspace.transaction() as s:
        item = s.get(Item, item_id)
        assert item is not None
        item.state = ItemState.production  # test set-up: a published item
        s.add(item)
    with pytest.raises(InvalidTransition):
        remediate_item(workspace, config, item_id, actor=SYSTEM)
