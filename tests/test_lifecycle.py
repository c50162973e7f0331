"""The item lifecycle state machine: one table, illegal moves refused, one audited transaction."""

from __future__ import annotations

from collections.abc import Callable
from itertools import product
from pathlib import Path

import governance_support as gs
import pytest
from sqlmodel import select

from geomesh import lifecycle
from geomesh.config import ProductConfig
from geomesh.errors import InvalidTransition
from geomesh.models import AuditEvent, Item, ItemState
from geomesh.services import history, promotion, rollback
from geomesh.workspace import Workspace

PID = "sentinel2-msi-l2a-v2.1"
S = ItemState


@pytest.fixture
def ws(workspace: Workspace) -> Workspace:
    gs.add_users(workspace)
    return workspace


@pytest.fixture
def tile(make_raster: Callable[..., Path]) -> Callable[..., Path]:
    return gs.tile_factory(make_raster)


def item_events(ws: Workspace, item_id: str) -> list[tuple[str, str | None, str | None]]:
    with ws.read() as s:
        rows = s.exec(
            select(AuditEvent).where(AuditEvent.target == item_id).order_by(AuditEvent.seq)  # type: ignore[arg-type]
        ).all()
        return [
            (e.action, e.state_before, e.state_after)
            for e in rows
            if e.state_after and e.state_before != e.state_after
        ]


def test_table_covers_every_state() -> None:
    assert set(lifecycle.TRANSITIONS) == set(ItemState)
    for targets in lifecycle.TRANSITIONS.values():
        assert targets <= set(ItemState)
    # the main line and its exits
    assert lifecycle.can_transition(S.staging, S.validation)
    assert lifecycle.can_transition(S.validation, S.production)
    for end in (S.withdrawn, S.superseded, S.deprecated):
        assert lifecycle.can_transition(S.production, end)
    # rollback restores: withdrawn / superseded → production
    assert lifecycle.can_transition(S.withdrawn, S.production)
    # each state means one thing: a P1-routed tile was never released, so never returns there
    assert not lifecycle.can_transition(S.rolled_back, S.production)
    assert not lifecycle.can_transition(S.production, S.rolled_back)
    assert lifecycle.can_transition(S.superseded, S.production)
    # never straight from staging to production
    assert not lifecycle.can_transition(S.staging, S.production)


def test_every_illegal_transition_raises_and_changes_nothing(
    ws: Workspace, config: ProductConfig, tile: Callable[..., Path]
) -> None:
    [iid] = gs.ingest(ws, config, [tile("a", 1)], post_stage=gs.stay_in_staging)
    before = item_events(ws, iid)
    illegal = [
        (a, b) for a, b in product(ItemState, ItemState) if not lifecycle.can_transition(a, b)
    ]
    assert len(illegal) > 40
    for a, b in illegal:
        with pytest.raises(InvalidTransition) as info, ws.transaction() as s:
            item = s.get(Item, iid)
            assert item is not None
            item.state = a
            lifecycle.transition(s, item, b, actor="alice", action="test")
        assert (info.value.current, info.value.target, info.value.item_id) == (
            a.value,
            b.value,
            iid,
        )
        assert iid in str(info.value)
    assert gs.states(ws, PID)[iid] == "staging"
    assert item_events(ws, iid) == before


def test_transition_and_its_event_commit_or_roll_back_together(
    ws: Workspace, config: ProductConfig, tile: Callable[..., Path]
) -> None:
    [iid] = gs.ingest(ws, config, [tile("a", 1)], post_stage=gs.stay_in_staging)
    with pytest.raises(RuntimeError), ws.transaction() as s:
        item = s.get(Item, iid)
        assert item is not None
        lifecycle.transition(s, item, S.validation, actor="alice", action="route")
        raise RuntimeError("crash after the transition, before commit")
    assert gs.states(ws, PID)[iid] == "staging"
    assert item_events(ws, iid) == [("ingest", None, "staging")]


def test_governance_drives_items_through_the_lifecycle(
    ws: Workspace, config: ProductConfig, tile: Callable[..., Path]
) -> None:
    [a1] = gs.ingest(ws, config, [tile("a", 1)])
    gs.approve(ws, config, [a1])
    promotion.promote(ws, config, actor="alice")
    [a2] = gs.ingest(ws, config, [tile("a", 2)])
    gs.approve(ws, config, [a2])
    promotion.promote(ws, config, actor="alice")  # a2 replaces a1
    rollback.rollback_release(ws, config, actor="bob")  # a1 back, a2 rolled back
    rollback.rollback_item(ws, config, a1, actor="bob")  # a1 out: empty 1.0.2
    assert item_events(ws, a1) == [
        ("ingest", None, "staging"),
        ("route.proceed", "staging", "validation"),
        ("promote", "validation", "production"),
        ("supersede", "production", "superseded"),
        ("rollback.release", "superseded", "production"),
        ("rollback.item", "production", "withdrawn"),
    ]
    assert item_events(ws, a2) == [
        ("ingest", None, "staging"),
        ("route.proceed", "staging", "validation"),
        ("promote", "validation", "production"),
        ("rollback.release", "production", "withdrawn"),
    ]
    assert [r.version for r in history.list_releases(ws, PID)] == ["1.0.0", "1.0.1", "1.0.2"]
    assert gs.production_ids(ws, PID) == set() == gs.manifest_ids(ws, PID)
