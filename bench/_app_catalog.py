"""The catalog the app benchmark reads (``bench/app_responsiveness.py``), built in bulk.

One real ingested tile (it registers the product, is the object every queued or
quarantined item points at, and gives the STAC shape; in a baseline catalog of that tile
alone, it is queued and also the one item of ``releases`` = 1), then, in bulk SQL: ``n_items``
items (the first ``queued`` awaiting sign-off, 1 % quarantined, the rest in production;
footprints on a grid over the San Francisco domain; small STAC documents), one validation
run and ``findings_per_item`` open findings each, one steward approval per production
item, ``releases`` releases (1.0.0 holds the production items but the last ``releases - 1``,
each later release adds one of those: real content-addressed manifest trees, no published
catalogs) and ``events`` audit events continuing the keyed hash chain (HMAC under the
workspace's key). Then the app's first-sight work is done once, as in a running
deployment: the audit chain is verified (the verified head is remembered) and the queue's
stored object is hashed (the checksum cache).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from bench import SCHEMA_DIR, make_tile, open_workspace, product_config

USER = "bench-admin"
STEWARD = "bench-steward"
RULES = (
    ("GM-CONTRACT-002", "P3"),
    ("GM-BOUNDARY-002", "P3"),
    ("GM-CRS-003", "P3"),
    ("GM-COG-002", "P3"),
    ("GM-CONTRACT-001", "P2"),
    ("GM-SCHEMA-002", "P2"),
    ("GM-DRIFT-001", "P2"),
    ("GM-COG-003", "P3"),
    ("GM-BOUNDARY-001", "P1"),
    ("GM-CHECKSUM-003", "P1"),
)


def catalog_env(root: Path) -> dict[str, str]:
    """The GEOMESH_* variables that point the app (and the CLI) at ``root``."""
    env = {
        "GEOMESH_STORAGE_ROOT": str(root),
        "GEOMESH_DATABASE_URL": f"sqlite:///{root / 'geomesh.db'}",
        "GEOMESH_OBJECT_STORE": "local",
    }
    if SCHEMA_DIR.is_dir():
        env["GEOMESH_SCHEMA_DIR"] = str(SCHEMA_DIR)
    return env


@contextmanager
def environment(values: dict[str, str]) -> Iterator[None]:
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def build_catalog(
    base: Path,
    n_items: int,
    findings_per_item: int,
    *,
    queued: int = 0,
    events: int = 0,
    releases: int = 0,
) -> Path:
    """The catalog described in the module docstring, under ``base / "root"``."""
    from geomesh.models import Item
    from geomesh.services import queries, users
    from geomesh.services.pipeline import ingest_rasters

    root = base / "root"
    config = product_config(base)
    ws = open_workspace(root)
    try:
        users.add_user(ws, actor="system", name=USER, role="admin")
        users.add_user(ws, actor=USER, name=STEWARD, role="steward")
        tile = make_tile(
            base / "tile.tif", width=128, height=128, count=1, origin=(545000.0, 4185000.0)
        )
        report = ingest_rasters(ws, config, [str(tile)], actor="system")
        if not report.ok:
            raise RuntimeError(f"fixture ingest failed: {report.to_json()}")
        real: dict[str, Any] = report.results[0].item or {}
        with ws.read() as session:
            real_row = session.get(Item, real["id"])
            assert real_row is not None
            real_object = (real_row.object_key, real_row.content_digest)
            released = [_manifest_item(real_row.model_dump())]  # the baseline's one release
        items: list[dict[str, Any]] = []
        if n_items:
            items = _item_rows(config.product_id, n_items, queued, real_object)
            _insert_rows(ws, config.product_id, items, findings_per_item, queued)
            released = [_manifest_item(it) for it in items if it["state"] == "production"]
        if releases:
            _add_releases(ws, config, released, releases)
        if events:
            targets = [it["id"] for it in items] or [real["id"]]
            _append_events(ws, config.product_id, targets, events)
        # first-sight work of a running app: the chain verified once, the queue's object hashed
        queries.audit_chain_status(ws)
        queries.review_queue(ws, config.product_id)
    finally:
        ws.close()
    return root


def _item_rows(
    pid: str, n_items: int, queued: int, real_object: tuple[str, str]
) -> list[dict[str, Any]]:
    from geomesh.models import ItemState, Severity
    from geomesh.stac import item_id_for
    from geomesh.tiles import stac_key_for

    now = datetime.now(UTC)
    side = int(n_items**0.5) + 1
    step = 0.2 / side  # the grid covers the 0.2° × 0.2° domain
    severities = (None, Severity.P3, Severity.P2, Severity.P1)
    items: list[dict[str, Any]] = []
    for i in range(n_items):
        state = (
            ItemState.validation
            if i < queued
            else ItemState.quarantined
            if i % 100 == 1
            else ItemState.production
        )
        if state != ItemState.production:  # pages open these: the real tile's object
            okey, digest = real_object
        else:
            digest = hashlib.sha256(f"bench-app-item-{i}".encode()).hexdigest()
            okey = f"sha256/{digest[:2]}/{digest[2:]}.tif"
        iid = item_id_for(pid, hashlib.sha256(f"bench-app-id-{i}".encode()).hexdigest())
        x0 = -122.5 + (i % side) * step
        y0 = 37.7 + (i // side) * step
        x1, y1 = x0 + step * 1.3, y0 + step * 1.3  # a little overlap, like real tiles
        stac = {
            "type": "Feature",
            "stac_version": "1.1.0",
            "id": iid,
            "bbox": [x0, y0, x1, y1],
            "geometry": {
                "type": "Polygon",
                "coordinates": [[[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]]],
            },
            "properties": {"datetime": "2024-09-01T19:00:00Z", "proj:code": "EPSG:32610"},
            "assets": {"data": {"href": okey, "file:checksum": "1220" + digest}},
        }
        items.append(
            {
                "id": iid,
                "product_id": pid,
                "source": f"/data/tiles/S2_bench_{i:06d}.tif",
                "source_key": hashlib.sha256(f"tile-{i}".encode()).hexdigest()[:32],
                "source_digest": None,
                "content_digest": digest,
                "size": 1_000_000 + i,
                "object_key": okey,
                "stac_key": stac_key_for(pid, iid),
                "stac": stac,
                "state": state,
                "worst_severity": severities[(i // 4) % len(severities)],
                "submitted_by": USER,
                "created_at": now - timedelta(minutes=n_items - i),
                "updated_at": now - timedelta(minutes=n_items - i),
            }
        )
    return items


def _insert_rows(
    ws: Any, pid: str, items: list[dict[str, Any]], findings_per_item: int, queued: int
) -> None:
    """Items, a validation run and findings per item, an approval per production item."""
    from sqlalchemy import insert, select

    from geomesh.models import (
        Approval,
        Decision,
        FindingRecord,
        Item,
        ItemState,
        Severity,
        SignoffTime,
        ValidationRun,
    )
    from geomesh.services import approval_times
    from geomesh.validation.registry import RULES as RULE_TABLE

    now = datetime.now(UTC)
    with ws.transaction() as session:
        for c in range(0, len(items), 5000):
            session.execute(insert(Item), items[c : c + 5000])
        runs = [
            {
                "item_id": it["id"],
                "content_digest": it["content_digest"],
                "passed": True,
                "worst_severity": Severity.P3,
                "strict": False,
                "actor": "system",
                "created_at": now,
            }
            for it in items
        ]
        for c in range(0, len(runs), 5000):
            session.execute(insert(ValidationRun), runs[c : c + 5000])
        approvals = [
            {
                "item_id": it["id"],
                "content_digest": it["content_digest"],
                "actor": STEWARD,
                "decision": Decision.approve,
                "comment": None,
                "created_at": it["created_at"] + timedelta(minutes=5 + n % 600),
            }
            for n, it in enumerate(items)
            if it["state"] == ItemState.production
        ]
        for c in range(0, len(approvals), 5000):
            session.execute(insert(Approval), approvals[c : c + 5000])
        # what each sign-off keeps in its transaction (signoff.sign_off), for the bulk rows
        times = approval_times.recompute(session, pid)
        rows = [{"item_id": i, "product_id": pid, "seconds": s} for i, s in times.items()]
        for c in range(0, len(rows), 5000):
            session.execute(insert(SignoffTime), rows[c : c + 5000])
        run_ids = {
            iid: rid
            for rid, iid in session.execute(select(ValidationRun.id, ValidationRun.item_id)).all()
        }
        batch: list[dict[str, Any]] = []
        for n, it in enumerate(items):
            for k in range(findings_per_item):
                rule_id, sev = RULES[(n + k) % len(RULES)]
                if n < queued and sev != "P3":
                    rule_id, sev = "GM-COG-002", "P3"  # queued items stay promotable
                batch.append(
                    {
                        "run_id": run_ids[it["id"]],
                        "item_id": it["id"],
                        "product_id": pid,
                        "rule_id": rule_id,
                        "severity": Severity(sev),
                        "path": f"properties.field_{k}",
                        "message": f"{rule_id}: finding {k} of item {n} (bench)",
                        "remediation": RULE_TABLE[rule_id].remediation,
                        "context": {"k": k},
                        "open": True,
                        "created_at": now,
                    }
                )
            if len(batch) >= 10000:
                session.execute(insert(FindingRecord), batch)
                batch = []
        if batch:
            session.execute(insert(FindingRecord), batch)


def _manifest_item(row: dict[str, Any]) -> Any:
    from geomesh.releases import ManifestItem

    return ManifestItem(
        id=row["id"],
        digest=row["content_digest"],
        stac_key=row["stac_key"],
        object_key=row["object_key"],
        source_key=row["source_key"],
    )


def _add_releases(ws: Any, config: Any, released: list[Any], n: int) -> None:
    """``n`` releases: 1.0.0 with every item of ``released`` but the last ``n - 1``, then
    one MINOR release per remaining item (``releases.derive``: one partition each)."""
    from geomesh import releases
    from geomesh.models import Product
    from geomesh.releases import Delta, Manifest, ReleaseKind
    from geomesh.services import promotion, publication

    first, later = released[: len(released) - (n - 1)], released[len(released) - (n - 1) :]
    head = {
        "product_id": config.product_id,
        "actor": USER,
        "kind": ReleaseKind.promote.value,
        "spatial_contract": config.spatial_contract(),
        "product_metadata": promotion._product_metadata(config),
    }
    manifest = Manifest.build(
        version=releases.FIRST_VERSION,
        parent_id=None,
        created_at=releases.now_iso(),
        items=first,
        **head,
    )
    releases.store_manifest(ws.store, manifest)
    with ws.transaction() as session:
        publication._add_release(
            session, manifest, Delta(added=tuple(m.id for m in first)), kind=ReleaseKind.promote
        )
    for k, m in enumerate(later, start=1):
        derived = releases.derive(ws.store, manifest, put=[m])
        manifest = Manifest(
            version=f"1.{k}.0",
            parent_id=manifest.id,
            created_at=releases.now_iso(),
            parts=derived.parts,
            inline=derived.inline,
            **head,
        )
        releases.store_manifest(ws.store, manifest)
        with ws.transaction() as session:
            publication._add_release(session, manifest, derived.delta, kind=ReleaseKind.promote)
    with ws.transaction() as session:
        product = session.get(Product, config.product_id)
        assert product is not None
        product.current_release_id = manifest.id
        product.version_counter += 1
        session.add(product)


def _append_events(ws: Any, pid: str, targets: list[str], n: int) -> None:
    """``n`` audit events continuing the chain (keyed hashes), inserted in bulk."""
    from types import SimpleNamespace

    from sqlalchemy import insert, update

    from geomesh import audit, audit_info
    from geomesh.models import AuditEvent, AuditHead

    with ws.transaction() as session:
        head = session.get(AuditHead, 1)
        seq, prev = head.last_seq, head.last_hash
        start = datetime.now(UTC).replace(tzinfo=None)
        rows: list[dict[str, Any]] = []
        actions = ("validate", "signoff", "promote", "route", "ingest")
        for k in range(n):
            seq += 1
            ev = SimpleNamespace(
                seq=seq,
                event_id=f"00000000-0000-4000-8000-{seq:012d}",
                timestamp=start + timedelta(microseconds=k),
                actor=("steward", "analyst", "system")[k % 3],
                action=actions[k % len(actions)],
                product_id=pid,
                target=targets[k % len(targets)],
                state_before=None,
                state_after=None,
                digest=None,
                details={"bench": k},
                prev_hash=prev,
                hash="",
            )
            ev.hash = audit.event_hash(ev, ws.audit_key)  # type: ignore[arg-type]
            prev = ev.hash
            rows.append(vars(ev))
            if len(rows) >= 20000:
                session.execute(insert(AuditEvent), rows)
                rows = []
        if rows:
            session.execute(insert(AuditEvent), rows)
        session.execute(
            update(AuditHead).where(AuditHead.id == 1).values(last_seq=seq, last_hash=prev)
        )
    audit_info.write_checkpoint(ws.store, ws.audit_key, seq, prev)
