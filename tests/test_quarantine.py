"""The quarantine lifecycle: list, show, revalidate after a fix, release, discard (audited)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from sqlmodel import col, select

from geomesh.catalog import Catalog
from geomesh.config import ProductConfig, load_config
from geomesh.errors import InvalidTransition, NotFound, PermissionDenied, QuarantineBlocked
from geomesh.models import AuditEvent, Item, ItemState, Role
from geomesh.services import quarantine as q
from geomesh.services import routing
from geomesh.services.ingest import ingest_rasters

SYSTEM = "system"
DATED = {"TIFFTAG_DATETIME": "2024:06:12 19:03:21"}


@pytest.fixture
def quarantined(catalog: Catalog, config: ProductConfig, make_raster: Callable[..., Path]) -> str:
    """An item quarantined by routing because its raster has no CRS (P2)."""
    src = make_raster("nocrs.tif", width=64, height=64, count=1, crs=None, tags=DATED)
    (res,) = ingest_rasters(
        catalog, config, [src], actor=SYSTEM, post_stage=routing.post_stage
    ).results
    assert res.state == "quarantined" and res.item_id
    return res.item_id


def state(cat: Catalog, item_id: str) -> ItemState:
    with cat.read() as s:
        item = s.get(Item, item_id)
        assert item is not None
        return ItemState(item.state)


def trail(cat: Catalog, item_id: str) -> list[tuple[str, Any]]:
    with cat.read() as s:
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


def test_list_and_show(catalog: Catalog, quarantined: str) -> None:
    (row,) = q.list_quarantined(catalog)
    assert row["id"] == quarantined and row["worst_severity"] == "P2"
    assert row["findings"]["P2"] > 0 and "GM-CRS-001" in row["quarantine_reason"]
    assert q.list_quarantined(catalog, product_id="another-product") == []
    shown = q.show_quarantined(catalog, quarantined)
    assert {f["rule_id"] for f in shown["open_findings"]} >= {"GM-CRS-001"}
    assert [h["action"] for h in shown["history"]] == ["ingest", "validate", "quarantine"]
    with pytest.raises(NotFound):
        q.show_quarantined(catalog, "nope")


def test_release_is_blocked_until_revalidated_clean(
    catalog: Catalog,
    config: ProductConfig,
    quarantined: str,
    write_config: Callable[..., Path],
) -> None:
    with pytest.raises(QuarantineBlocked, match="GM-CRS-001"):
        q.release(catalog, config, quarantined, actor=SYSTEM)
    still = q.revalidate(catalog, config, quarantined, actor=SYSTEM)
    assert not still.releasable and still.route == "quarantine"
    fixed = relaxed(write_config)
    # the config changed but the item was not re-validated yet: still blocked
    with pytest.raises(QuarantineBlocked):
        q.release(catalog, fixed, quarantined, actor=SYSTEM)
    result = q.revalidate(catalog, fixed, quarantined, actor=SYSTEM)
    assert result.releasable and result.route == "warn"
    assert state(catalog, quarantined) is ItemState.quarantined  # revalidate never moves it
    again = q.revalidate(catalog, fixed, quarantined, actor=SYSTEM)  # idempotent
    assert again.findings == result.findings
    assert (
        q.release(catalog, fixed, quarantined, actor=SYSTEM, note="CRS-less is fine") == "staging"
    )
    assert q.release(catalog, fixed, quarantined, actor=SYSTEM) == "staging"  # no-op
    with catalog.read() as s:
        item = s.get(Item, quarantined)
        assert item is not None
        assert item.quarantine_reason is None and item.quarantine_key is None
    actions = [a for a, _ in trail(catalog, quarantined)]
    # the unchanged re-validations recorded nothing; the one after the fix did
    assert actions == ["ingest", "validate", "quarantine", "validate", "quarantine.release"]
    with catalog.read() as s:
        ev = s.exec(select(AuditEvent).where(AuditEvent.action == "quarantine.release")).one()
    assert (
        ev.details["note"] == "CRS-less is fine" and "GM-CRS-001" in ev.details["quarantine_reason"]
    )
    # released items continue through routing like fresh ones
    out = routing.validate_and_route(catalog, fixed, quarantined, actor=SYSTEM)
    assert (out.action, out.state) == ("warn", "validation")


def test_discard_needs_a_reason_and_is_final(catalog: Catalog, quarantined: str) -> None:
    with pytest.raises(QuarantineBlocked, match="reason"):
        q.discard(catalog, quarantined, actor=SYSTEM, reason="  ")
    assert q.discard(catalog, quarantined, actor=SYSTEM, reason="sensor fault") == "discarded"
    assert q.discard(catalog, quarantined, actor=SYSTEM, reason="again") == "discarded"
    assert trail(catalog, quarantined)[-1] == ("quarantine.discard", "discarded")
    with catalog.read() as s:
        events = s.exec(select(AuditEvent).where(AuditEvent.action == "quarantine.discard")).all()
    assert len(events) == 1 and events[0].details["reason"] == "sensor fault"
    assert q.list_quarantined(catalog) == []


def test_actions_need_a_quarantined_item_and_a_role(
    catalog: Catalog,
    config: ProductConfig,
    quarantined: str,
) -> None:
    from geomesh.auth import create_user

    with catalog.transaction() as s:
        create_user(s, name="vic", role=Role.viewer)
    with pytest.raises(PermissionDenied):
        q.discard(catalog, quarantined, actor="vic", reason="x")
    with pytest.raises(PermissionDenied):
        q.revalidate(catalog, config, quarantined, actor="vic")
    q.discard(catalog, quarantined, actor=SYSTEM, reason="bad")
    with pytest.raises(InvalidTransition):
        q.release(catalog, config, quarantined, actor=SYSTEM)
    with pytest.raises(InvalidTransition):
        q.revalidate(catalog, config, quarantined, actor=SYSTEM)
