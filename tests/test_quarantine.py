"""The quarantine lifecycle: list, show, revalidate after a fix, release, discard (audited)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import identity_support
import pytest
from policy_support import change_policy
from sqlmodel import col, select

from geomesh.config import ProductConfig, load_config
from geomesh.errors import InvalidTransition, NotFound, PermissionDenied, QuarantineBlocked
from geomesh.models import AuditEvent, Item, ItemState, Role
from geomesh.services import pipeline
from geomesh.services import quarantine as q
from geomesh.services.pipeline import ingest_rasters
from geomesh.workspace import Workspace

SYSTEM = "system"
ANALYST = "ana"
DATED = {"TIFFTAG_DATETIME": "2024:06:12 19:03:21"}


@pytest.fixture
def quarantined(
    workspace: Workspace, config: ProductConfig, make_raster: Callable[..., Path]
) -> str:
    """An item quarantined by routing because its raster has no CRS (P2)."""
    src = make_raster("nocrs.tif", width=64, height=64, count=1, crs=None, tags=DATED)
    (res,) = ingest_rasters(workspace, config, [src], actor=SYSTEM).results
    assert res.state == "quarantined" and res.item_id
    return res.item_id


def state(ws: Workspace, item_id: str) -> ItemState:
    with ws.read() as s:
        item = s.get(Item, item_id)
        assert item is not None
        return ItemState(item.state)


def trail(ws: Workspace, item_id: str) -> list[tuple[str, Any]]:
    with ws.read() as s:
        rows = s.exec(
            select(AuditEvent).where(AuditEvent.target == item_id).order_by(col(AuditEvent.seq))
        ).all()
        return [(e.action, e.state_after) for e in rows]


def relaxed(write_config: Callable[..., Path]) -> ProductConfig:
    """The steward's fix: accept rasters without a CRS (and their missing proj fields)."""
    return load_config(
        write_config(
            {"validation": {"severity_overrides": {"GM-CRS-001": "P3", "GM-CONTRACT-001": "P3"}}},
            name="relaxed.yaml",
        )
    )


def test_list_and_show(workspace: Workspace, quarantined: str) -> None:
    (row,) = q.list_quarantined(workspace)
    assert row["id"] == quarantined and row["worst_severity"] == "P2"
    assert row["findings"]["P2"] > 0 and "GM-CRS-001" in row["quarantine_reason"]
    assert q.list_quarantined(workspace, product_id="another-product") == []
    shown = q.show_quarantined(workspace, quarantined)
    assert {f["rule_id"] for f in shown["open_findings"]} >= {"GM-CRS-001"}
    assert [h["action"] for h in shown["history"]] == ["ingest", "validate", "quarantine"]
    with pytest.raises(NotFound):
        q.show_quarantined(workspace, "nope")


def test_release_is_blocked_until_revalidated_clean(
    workspace: Workspace,
    config: ProductConfig,
    quarantined: str,
    write_config: Callable[..., Path],
) -> None:
    identity_support.add_users(workspace, {ANALYST: "analyst"})  # releasing is a person's call
    with pytest.raises(QuarantineBlocked, match="GM-CRS-001"):
        q.release(workspace, config, quarantined, actor=ANALYST)
    still = q.revalidate(workspace, config, quarantined, actor=SYSTEM)
    assert not still.releasable and still.route == "quarantine"
    fixed = relaxed(write_config)
    change_policy(workspace, fixed)  # the registered policy changes (audited, four eyes)
    # the config changed but the item was not re-validated yet: still blocked
    with pytest.raises(QuarantineBlocked):
        q.release(workspace, fixed, quarantined, actor=ANALYST)
    result = q.revalidate(workspace, fixed, quarantined, actor=SYSTEM)
    assert result.releasable and result.route == "warn"
    assert state(workspace, quarantined) is ItemState.quarantined  # revalidate never moves it
    again = q.revalidate(workspace, fixed, quarantined, actor=SYSTEM)  # idempotent
    assert again.findings == result.findings
    assert (
        q.release(workspace, fixed, quarantined, actor=ANALYST, note="CRS-less is fine")
        == "staging"
    )
    assert q.release(workspace, fixed, quarantined, actor=ANALYST) == "staging"  # no-op
    with workspace.read() as s:
        item = s.get(Item, quarantined)
        assert item is not None
        assert item.quarantine_reason is None and item.quarantine_key is None
    actions = [a for a, _ in trail(workspace, quarantined)]
    # the unchanged re-validations recorded nothing; the one after the fix did
    assert actions == ["ingest", "validate", "quarantine", "validate", "quarantine.release"]
    with workspace.read() as s:
        ev = s.exec(select(AuditEvent).where(AuditEvent.action == "quarantine.release")).one()
    assert (
        ev.details["note"] == "CRS-less is fine" and "GM-CRS-001" in ev.details["quarantine_reason"]
    )
    # released items continue through routing like fresh ones
    out = pipeline.validate_and_route(workspace, fixed, quarantined, actor=SYSTEM)
    assert (out.action, out.state) == ("warn", "validation")


def test_discard_needs_a_reason_and_is_final(workspace: Workspace, quarantined: str) -> None:
    with pytest.raises(QuarantineBlocked, match="reason"):
        q.discard(workspace, quarantined, actor=SYSTEM, reason="  ")
    assert q.discard(workspace, quarantined, actor=SYSTEM, reason="sensor fault") == "discarded"
    assert q.discard(workspace, quarantined, actor=SYSTEM, reason="again") == "discarded"
    assert trail(workspace, quarantined)[-1] == ("quarantine.discard", "discarded")
    with workspace.read() as s:
        events = s.exec(select(AuditEvent).where(AuditEvent.action == "quarantine.discard")).all()
    assert len(events) == 1 and events[0].details["reason"] == "sensor fault"
    assert q.list_quarantined(workspace) == []


def test_actions_need_a_quarantined_item_and_a_role(
    workspace: Workspace,
    config: ProductConfig,
    quarantined: str,
) -> None:
    from geomesh.auth import create_user

    with workspace.transaction() as s:
        create_user(s, name="vic", role=Role.viewer)
    with pytest.raises(PermissionDenied):
        q.discard(workspace, quarantined, actor="vic", reason="x")
    with pytest.raises(PermissionDenied):
        q.revalidate(workspace, config, quarantined, actor="vic")
    q.discard(workspace, quarantined, actor=SYSTEM, reason="bad")
    with workspace.transaction() as s:
        create_user(s, name=ANALYST, role=Role.analyst)
    with pytest.raises(InvalidTransition):
        q.release(workspace, config, quarantined, actor=ANALYST)
    with pytest.raises(InvalidTransition):
        q.revalidate(workspace, config, quarantined, actor=SYSTEM)
