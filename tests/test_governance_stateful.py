"""Property-based test of governance: random ingest / validate / sign-off / promote / rollback.

After every step:

* production holds only items that passed all three gates when they were promoted (the
  gates are re-derived here from the database and the stored bytes, independently of
  ``plan_promotion``);
* the items in state ``production`` are exactly the current release's manifest;
* rolling back twice equals rolling back once (checked inside the rollback rules);
* the audit chain verifies.
"""

from __future__ import annotations

import hashlib
import shutil
import tempfile
from functools import cache
from pathlib import Path

import governance_support as gs
import numpy as np
from hypothesis import HealthCheck, event, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)
from rasterio.crs import CRS
from rasterio.io import MemoryFile
from rasterio.transform import from_origin
from sqlmodel import col, select

from geomesh import lifecycle
from geomesh.config import ProductConfig, loads_config
from geomesh.errors import NotFound, NothingToRollBack, PermissionDenied, PromotionBlocked
from geomesh.models import (
    Approval,
    AuditEvent,
    Decision,
    FindingRecord,
    Item,
    ItemState,
    Product,
    Release,
    Severity,
    ValidationRun,
)
from geomesh.services import history, pipeline, promotion, rollback, signoff
from geomesh.settings import Settings
from geomesh.workspace import Workspace

from conftest import EXAMPLE_CONFIG

SOURCES = ("a", "b", "c")
PID = "sentinel2-msi-l2a-v2.1"


@cache
def raster_bytes(source: str, variant: int) -> bytes:
    """A small GeoTIFF per (source tile, content variant), made once per session."""
    seed = SOURCES.index(source) * 10 + variant
    data = np.random.default_rng(seed).integers(1, 10000, (4, 128, 128)).astype("uint16")
    profile = {
        "driver": "GTiff",
        "width": 128,
        "height": 128,
        "count": 4,
        "dtype": "uint16",
        "crs": CRS.from_epsg(32610),
        "transform": from_origin(545000.0, 4185000.0, 10.0, 10.0),
        "nodata": 0,
    }
    with MemoryFile() as mem:
        with mem.open(**profile) as dst:
            dst.write(data)
            dst.update_tags(TIFFTAG_DATETIME="2024:06:12 19:03:21")
        return bytes(mem.read())


def with_open_p2(
    ws: Workspace, config: ProductConfig, item_id: str, actor: str
) -> tuple[str | None, str | None, dict[str, int]]:
    """Post-stage for a tile that passes routing, then fails a later re-validation (P2)."""
    out = pipeline.validate_and_route_staged(ws, config, item_id, actor)
    gs.add_finding(ws, item_id, "P2")
    return out


class Governance(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.dir = Path(tempfile.mkdtemp(prefix="geomesh-stateful-"))
        self.ws = Workspace.open(
            Settings(
                storage_root=self.dir / "data",
                database_url=f"sqlite:///{self.dir / 'geomesh.db'}",  # type: ignore[arg-type]
                object_store="local",
            )
        )
        gs.add_users(self.ws)
        self.config = loads_config(EXAMPLE_CONFIG)
        self.corrupted: set[str] = set()
        #: items that met every gate (per the oracle below) when they were promoted
        self.gated: set[str] = set()

    def teardown(self) -> None:
        self.ws.close()
        shutil.rmtree(self.dir, ignore_errors=True)

    # ------------------------------------------------------------ observation helpers

    def items(self, *states: ItemState) -> list[Item]:
        with self.ws.read() as s:
            stmt = select(Item).where(Item.product_id == PID)
            if states:
                stmt = stmt.where(col(Item.state).in_(states))
            return sorted(s.exec(stmt).all(), key=lambda i: i.id)

    def snapshot(self) -> tuple[dict[str, str], str | None, int, int]:
        with self.ws.read() as s:
            product = s.get(Product, PID)
            events = len(s.exec(select(AuditEvent.seq)).all())
        return (
            gs.states(self.ws, PID),
            product.current_release_id if product else None,
            product.version_counter if product else 0,
            events,
        )

    def oracle_eligible(self) -> set[str]:
        """The three gates, re-derived from the database and the bytes."""
        out = set()
        with self.ws.read() as s:
            for item in s.exec(
                select(Item).where(Item.product_id == PID, Item.state == ItemState.validation)
            ).all():
                runs = s.exec(
                    select(ValidationRun)
                    .where(
                        ValidationRun.item_id == item.id,
                        ValidationRun.content_digest == item.content_digest,
                    )
                    .order_by(col(ValidationRun.id).desc())
                ).all()
                blocking = s.exec(
                    select(FindingRecord).where(
                        FindingRecord.item_id == item.id,
                        col(FindingRecord.open).is_(True),
                        col(FindingRecord.severity).in_([Severity.P1, Severity.P2]),
                    )
                ).all()
                decisions = s.exec(
                    select(Approval).where(
                        Approval.item_id == item.id,
                        Approval.content_digest == item.content_digest,
                    )
                ).all()
                approvers = {
                    d.actor
                    for d in decisions
                    if d.decision == Decision.approve and d.actor != item.submitted_by
                }
                rejected = any(d.decision == Decision.reject for d in decisions)
                path = self.ws.store.path("staging", item.object_key)  # type: ignore[attr-defined]
                intact = hashlib.sha256(path.read_bytes()).hexdigest() == item.content_digest
                if (
                    runs
                    and runs[0].passed
                    and not blocking
                    and len(approvers) >= self.config.governance.approvals_required
                    and not rejected
                    and intact
                ):
                    out.add(item.id)
        return out

    def has(self, *states: ItemState) -> bool:
        return bool(self.items(*states))

    def current_has_parent(self) -> bool:
        with self.ws.read() as s:
            product = s.get(Product, PID)
            if product is None or product.current_release_id is None:
                return False
            row = s.get(Release, product.current_release_id)
            return row is not None and row.parent_id is not None

    # ------------------------------------------------------------ rules

    @initialize()
    def first_release(self) -> None:
        """Every run starts from a released 1.0.0 (a, b) so rollbacks are reachable."""
        for source in SOURCES[:2]:
            self.ingest(source, 0, True)
        self.approve_everything_waiting("alice")
        self.promote()

    @rule(
        source=st.sampled_from(SOURCES),
        variant=st.integers(0, 2),
        clean=st.sampled_from([True, True, True, False]),
    )
    def ingest(self, source: str, variant: int, clean: bool) -> None:
        path = self.dir / "src" / f"{source}.tif"
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(raster_bytes(source, variant))
        gs.ingest(
            self.ws,
            self.config,
            [path],
            post_stage=pipeline.validate_and_route_staged if clean else with_open_p2,
        )

    @precondition(lambda self: self.has(ItemState.staging, ItemState.validation))
    @rule(
        data=st.data(),
        steward=st.sampled_from(gs.STEWARDS),
        approve=st.sampled_from([True, True, True, False]),
    )
    def sign_off(self, data: st.DataObject, steward: str, approve: bool) -> None:
        ids = [i.id for i in self.items(ItemState.staging, ItemState.validation)]
        if not ids:
            return
        iid = data.draw(st.sampled_from(ids))
        signoff.sign_off(
            self.ws,
            self.config,
            iid,
            actor=steward,
            approve=approve,
            comment=None if approve else "not good enough",
        )

    def approve_everything_waiting(self, steward: str) -> None:
        for item in self.items(ItemState.validation):
            signoff.sign_off(self.ws, self.config, item.id, actor=steward, approve=True)

    @precondition(lambda self: self.has(ItemState.staging, ItemState.validation))
    @rule(data=st.data())
    def self_approval_is_refused(self, data: st.DataObject) -> None:
        ids = [i.id for i in self.items(ItemState.staging, ItemState.validation)]
        if not ids:
            return
        iid = data.draw(st.sampled_from(ids))
        before = self.snapshot()
        try:
            signoff.sign_off(self.ws, self.config, iid, actor=gs.SUBMITTER, approve=True)
        except PermissionDenied:
            pass
        else:
            raise AssertionError("the submitter approved its own item")
        assert self.snapshot() == before

    @precondition(lambda self: self.has(ItemState.validation))
    @rule(data=st.data())
    def corrupt_object(self, data: st.DataObject) -> None:
        candidates = [i for i in self.items(ItemState.validation) if i.id not in self.corrupted]
        if not candidates:
            return
        item = data.draw(st.sampled_from(candidates))
        path = self.ws.store.path("staging", item.object_key)  # type: ignore[attr-defined]
        raw = bytearray(path.read_bytes())
        raw[len(raw) // 2] ^= 0xFF
        path.write_bytes(bytes(raw))
        self.corrupted.add(item.id)

    @rule(approve_first=st.booleans(), steward=st.sampled_from(gs.STEWARDS))
    def review_and_promote(self, approve_first: bool, steward: str) -> None:
        if approve_first:
            self.approve_everything_waiting(steward)
        self.promote()

    def promote(self) -> None:
        expected = self.oracle_eligible()
        waiting = self.items(ItemState.validation)
        try:
            result = promotion.promote(self.ws, self.config, actor="alice")
        except NotFound:
            assert not self.items(), "the product is registered by its first ingest"
            return
        except PromotionBlocked:
            assert waiting and not expected, "promotion blocked although items were eligible"
            return
        if not waiting:
            assert result.already and result.release is None
            return
        assert set(result.promoted) == expected
        self.gated |= expected
        event(f"promote: released {result.release.version if result.release else '-'}")

    @precondition(lambda self: self.current_has_parent())
    @rule()
    def rollback_release(self) -> None:
        current = self.snapshot()[1]
        if current is None:
            return
        try:
            first = rollback.rollback_release(self.ws, self.config, actor="bob", release_id=current)
        except NothingToRollBack:
            return
        assert not first.already
        event("rollback: release")
        once = self.snapshot()
        second = rollback.rollback_release(self.ws, self.config, actor="bob", release_id=current)
        assert second.already
        assert self.snapshot() == once

    @precondition(lambda self: self.has(ItemState.production))
    @rule(data=st.data())
    def rollback_item(self, data: st.DataObject) -> None:
        released = [i.id for i in self.items(ItemState.production)]
        if not released:
            return
        iid = data.draw(st.sampled_from(released))
        first = rollback.rollback_item(self.ws, self.config, iid, actor="bob")
        assert not first.already
        event("rollback: item")
        once = self.snapshot()
        second = rollback.rollback_item(self.ws, self.config, iid, actor="bob")
        assert second.already
        assert self.snapshot() == once

    # ------------------------------------------------------------ invariants

    @invariant()
    def production_equals_the_current_manifest(self) -> None:
        production = {i.id for i in self.items(ItemState.production)}
        current = self.snapshot()[1]
        if current is None:
            assert production == set()
            return
        with self.ws.read() as s:
            assert s.get(Release, current) is not None
        assert production == gs.manifest_ids(self.ws, PID, current)

    @invariant()
    def production_only_holds_gated_items(self) -> None:
        for item in self.items(ItemState.production):
            assert item.id in self.gated, f"{item.id} reached production without its gates"
            assert item.id not in self.corrupted
            released = self.ws.store.path("production", item.object_key)  # type: ignore[attr-defined]
            assert hashlib.sha256(released.read_bytes()).hexdigest() == item.content_digest

    @invariant()
    def audit_chain_verifies(self) -> None:
        assert history.verify_audit(self.ws) == []

    @invariant()
    def only_legal_states(self) -> None:
        assert set(lifecycle.TRANSITIONS) >= {
            ItemState(s) for s in gs.states(self.ws, PID).values()
        }


Governance.TestCase.settings = settings(
    max_examples=20,
    stateful_step_count=20,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestGovernance = Governance.TestCase
