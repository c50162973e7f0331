"""Release history and the audit trail (read-only).

Listing and showing releases, diffing two of them, the static catalog as published at a
version, and verifying or exporting the hash-chained audit trail.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from sqlalchemy import func
from sqlalchemy import select as sa_select
from sqlalchemy.orm import defer
from sqlalchemy.sql.elements import ColumnElement
from sqlmodel import Session, col, select

from geomesh import audit, releases
from geomesh.errors import NotFound
from geomesh.models import Release
from geomesh.services.lookup import get_product
from geomesh.services.publication import ensure_catalog
from geomesh.storage import LocalStore
from geomesh.workspace import Workspace


@dataclass(frozen=True)
class ReleaseInfo:
    id: str
    product_id: str
    version: str
    parent_id: str | None
    kind: str
    actor: str
    item_count: int
    #: how many item versions the release added, removed and changed against its parent
    #: (counted in SQL: a first release's delta lists every item; ``show_release`` loads it)
    added: int
    removed: int
    changed: int
    deprecated: bool
    current: bool
    created_at: str
    manifest_key: str
    #: production key of the stac-geoparquet snapshot (None until one is written)
    snapshot_key: str | None = None

    @classmethod
    def of(cls, row: Release, current_id: str | None) -> ReleaseInfo:
        """From a loaded row (its delta in memory: the one release just written or opened)."""
        delta = row.delta or {}
        return cls(
            id=row.id,
            product_id=row.product_id,
            version=row.version,
            parent_id=row.parent_id,
            kind=row.kind,
            actor=row.actor,
            item_count=row.item_count,
            added=len(delta.get("added", ())),
            removed=len(delta.get("removed", ())),
            changed=len(delta.get("changed", ())),
            deprecated=row.deprecated,
            current=row.id == current_id,
            created_at=row.created_at.isoformat(),
            manifest_key=row.manifest_key,
            snapshot_key=row.snapshot_key,
        )

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


#: the release columns a listing reads (not the delta: its sizes are counted in SQL)
_LISTED = (
    "id",
    "product_id",
    "version",
    "parent_id",
    "kind",
    "actor",
    "item_count",
    "deprecated",
    "created_at",
    "manifest_key",
    "snapshot_key",
)
DELTA_PARTS: Final = ("added", "removed", "changed")
#: load a release row without its delta (loaded on first access, in the same session)
_NO_DELTA: Final = defer(Release.delta)  # type: ignore[arg-type]


def release_infos(
    session: Session, product_id: str, *, ids: Sequence[str] | None = None
) -> list[ReleaseInfo]:
    """The product's releases (or those of ``ids``) in one query, unordered: the listed
    columns and the sizes of each delta, counted in the database
    (``json_array_length``), so no delta list is loaded."""
    sizes = [
        func.coalesce(func.json_array_length(col(Release.delta)[part]), 0) for part in DELTA_PARTS
    ]
    stmt = sa_select(*(getattr(Release, c) for c in _LISTED), *sizes).where(
        col(Release.product_id) == product_id
    )
    if ids is not None:
        stmt = stmt.where(col(Release.id).in_(list(ids)))
    current = get_product(session, product_id).current_release_id
    out = []
    for row in session.execute(stmt).all():
        r = dict(zip(_LISTED, row, strict=False))
        added, removed, changed = (int(n) for n in row[len(_LISTED) :])
        out.append(
            ReleaseInfo(
                id=r["id"],
                product_id=r["product_id"],
                version=r["version"],
                parent_id=r["parent_id"],
                kind=r["kind"],
                actor=r["actor"],
                item_count=r["item_count"],
                added=added,
                removed=removed,
                changed=changed,
                deprecated=bool(r["deprecated"]),
                current=r["id"] == current,
                created_at=r["created_at"].isoformat(),
                manifest_key=r["manifest_key"],
                snapshot_key=r["snapshot_key"],
            )
        )
    return out


def _highest_version(session: Session, product_id: str) -> str | None:
    versions = session.exec(select(Release.version).where(Release.product_id == product_id)).all()
    return releases.highest_version(versions)


def _resolve_release(session: Session, product_id: str, ref: str) -> Release:
    """A release by id, unique id prefix (>= 8 hex), version, or 'current' (its delta is
    read only if used: a first release's lists every item)."""
    if ref in ("current", "latest"):
        product = get_product(session, product_id)
        if product.current_release_id is None:
            raise NotFound(f"product {product_id!r} has no current release")
        ref = product.current_release_id
    cond: ColumnElement[bool] = col(Release.id) == ref
    row = session.exec(
        select(Release)
        .options(_NO_DELTA)
        .where(Release.product_id == product_id)
        .where(cond | (col(Release.version) == ref.removeprefix("v")))
    ).first()
    if row is None and len(ref) >= 8:
        rows = session.exec(
            select(Release)
            .options(_NO_DELTA)
            .where(Release.product_id == product_id, col(Release.id).startswith(ref))
        ).all()
        if len(rows) == 1:
            row = rows[0]
    if row is None:
        raise NotFound(
            f"release {ref!r} of product {product_id!r} does not exist",
            hint="list releases with `geomesh releases list CONFIG`",
        )
    return row


def list_releases(ws: Workspace, product_id: str) -> list[ReleaseInfo]:
    """Every release of the product, oldest version first (delta sizes, not lists)."""
    with ws.read() as session:
        infos = release_infos(session, product_id)
    return sorted(infos, key=lambda r: releases.parse_version(r.version))


def show_release(ws: Workspace, product_id: str, ref: str = "current") -> dict[str, Any]:
    """One release: its row (version, delta, current, deprecated) and its manifest (the
    stored root, plus ``items``: every item of every partition, an O(items) export)."""
    with ws.read() as session:
        row = _resolve_release(session, product_id, ref)
        [info] = release_infos(session, product_id, ids=[row.id])
        delta = dict(row.delta)  # the one release shown: its delta lists are loaded
    manifest = releases.load_manifest(ws.store, product_id, row.id)
    items = [m.to_dict() for m in releases.iter_items(ws.store, manifest)]
    return info.to_json() | {"delta": delta, "manifest": manifest.to_dict() | {"items": items}}


@dataclass(frozen=True)
class ItemChange:
    source_key: str
    from_id: str
    to_id: str
    fields: dict[str, dict[str, Any]]

    def to_json(self) -> dict[str, Any]:
        return {
            "source_key": self.source_key,
            "from": self.from_id,
            "to": self.to_id,
            "fields": self.fields,
        }


@dataclass(frozen=True)
class ReleaseDiff:
    product_id: str
    from_version: str
    to_version: str
    added: tuple[str, ...]
    removed: tuple[str, ...]
    changed: tuple[ItemChange, ...]
    spatial_contract_changed: bool

    def to_json(self) -> dict[str, Any]:
        return {
            "product_id": self.product_id,
            "from": self.from_version,
            "to": self.to_version,
            "added": list(self.added),
            "removed": list(self.removed),
            "changed": [c.to_json() for c in self.changed],
            "spatial_contract_changed": self.spatial_contract_changed,
        }


def diff_releases(ws: Workspace, product_id: str, a: str, b: str) -> ReleaseDiff:
    """Items added, removed and changed (with the changed item-JSON fields) from a to b."""
    with ws.read() as session:
        ra = _resolve_release(session, product_id, a)
        rb = _resolve_release(session, product_id, b)
    ma = releases.load_manifest(ws.store, product_id, ra.id)
    mb = releases.load_manifest(ws.store, product_id, rb.id)
    # partitions with the same content address are equal: only the others are read
    differ = sorted(
        b for b in ma.parts.keys() | mb.parts.keys() if ma.parts.get(b) != mb.parts.get(b)
    )
    old_items: dict[str, releases.ManifestItem] = {}
    new_items: dict[str, releases.ManifestItem] = {}
    for b in differ:
        old_items.update(releases.load_part(ws.store, ma, b).by_id)
        new_items.update(releases.load_part(ws.store, mb, b).by_id)
    delta = releases.compute_delta(old_items.values(), new_items.values())
    changed = []
    for c in delta.changed:
        old = releases.load_item_json(ws.store, old_items[c.from_id])
        new = releases.load_item_json(ws.store, new_items[c.to_id])
        changed.append(ItemChange(c.source_key, c.from_id, c.to_id, releases.diff_json(old, new)))
    return ReleaseDiff(
        product_id=product_id,
        from_version=ma.version,
        to_version=mb.version,
        added=delta.added,
        removed=delta.removed,
        changed=tuple(changed),
        spatial_contract_changed=ma.spatial_contract != mb.spatial_contract,
    )


@dataclass(frozen=True)
class CatalogAt:
    product_id: str
    version: str
    release_id: str
    key: str
    #: local path of catalog.json (LocalStore only; None for S3)
    path: Path | None
    catalog: dict[str, Any]


def catalog_at(ws: Workspace, product_id: str, version: str = "current") -> CatalogAt:
    """The static catalog as it was published at ``version`` (or release id / 'current')."""
    with ws.read() as session:
        row = _resolve_release(session, product_id, version)
    key = ensure_catalog(ws, product_id, row.id)
    path = ws.store.path("production", key) if isinstance(ws.store, LocalStore) else None
    return CatalogAt(
        product_id=product_id,
        version=row.version,
        release_id=row.id,
        key=key,
        path=path,
        catalog=json.loads(ws.store.get_bytes("production", key)),
    )


# ------------------------------------------------------------------ audit trail


def verify_audit(ws: Workspace) -> list[audit.ChainProblem]:
    """Recompute the audit hash chain; the problems name each edited/inserted/deleted event."""
    with ws.read() as session:
        return audit.verify_stored(session, ws.audit_key, ws.store)


def export_audit(ws: Workspace, *, product_id: str | None = None) -> Iterator[dict[str, Any]]:
    """Every audit event as a JSON-ready dict, oldest first (streamed in batches)."""
    with ws.read() as session:
        for ev in audit.iter_events(session):
            if product_id is None or ev.product_id == product_id:
                yield audit.to_json(ev)
