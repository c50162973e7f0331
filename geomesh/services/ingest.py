"""Staging: a prepared tile's object and item JSON stored, then its row in one transaction.

:func:`store_tile` stores the object and the item JSON (both immutable, content-addressed);
:func:`insert_item` then inserts the Item row with its audit event in the caller's
transaction: :func:`stage_tile`'s own, or the admission's (``services.admission``), which
validates and routes the tile in the same one. The row is the visibility point: a crash
before it leaves only unreferenced complete objects that a re-run reuses and `geomesh
doctor` can collect. The file work before it is ``geomesh.tiles``; the whole batch
(prepare → admit) is ``services.pipeline``.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from sqlalchemy import literal, union_all
from sqlmodel import Session, select

from geomesh import audit, auth, db, faults, lifecycle
from geomesh.config import ProductConfig
from geomesh.errors import StorageError
from geomesh.models import Item, ItemState
from geomesh.redact import redact
from geomesh.services.lookup import get_item
from geomesh.services.products import check_config, register_product
from geomesh.stac import build_stac, is_safe_item_id, item_id_for
from geomesh.storage import object_key
from geomesh.tiles import PreparedTile, object_href, stac_key_for
from geomesh.workspace import Workspace

Status = Literal["staged", "exists", "would-stage", "failed"]


@dataclass
class TileResult:
    source: str
    status: Status
    item_id: str | None = None
    digest: str | None = None
    size: int | None = None
    object_key: str | None = None
    stac_key: str | None = None
    state: str | None = None
    route: str | None = None
    findings: dict[str, int] = field(default_factory=dict)
    cog_warnings: list[str] = field(default_factory=list)
    cog_errors: list[str] = field(default_factory=list)
    error: str | None = None
    item: dict[str, Any] | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self.error:
            self.error = redact(self.error)

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("item")
        if d["error"]:
            d["error"] = redact(d["error"])
        return d

    @classmethod
    def existing(cls, item: Item) -> TileResult:
        """The result for a source whose item the product already holds."""
        return cls(
            source=item.source,
            status="exists",
            item_id=item.id,
            digest=item.content_digest,
            size=item.size,
            object_key=item.object_key,
            stac_key=item.stac_key,
            state=item.state.value,
            item=item.stac,
        )


@dataclass
class IngestReport:
    product_id: str
    run_id: str
    dry_run: bool
    results: list[TileResult] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(r.status != "failed" for r in self.results)

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for r in self.results:
            out[r.status] = out.get(r.status, 0) + 1
        return out

    def to_json(self) -> dict[str, Any]:
        return {
            "product_id": self.product_id,
            "run_id": self.run_id,
            "dry_run": self.dry_run,
            "ok": self.ok,
            "counts": self.counts(),
            "results": [r.to_json() for r in self.results],
        }


def _prior(
    session: Session, product_id: str, source_key: str, item_id: str
) -> tuple[Item | None, int, str | None]:
    """What the product holds of this content or this source, in one round trip: the item
    of this content if it exists; else the version number a new item of this source gets
    and the item it supersedes (the latest not discarded; None for the first version)."""
    cols = (Item.id, Item.state, Item.created_at)
    rows = session.execute(
        union_all(  # two index searches (an OR would scan the product's items)
            select(*cols, literal(True)).where(
                Item.product_id == product_id, Item.source_key == source_key
            ),
            select(*cols, literal(False)).where(Item.id == item_id),
        )
    ).all()
    if any(i == item_id for i, _, _, _ in rows):
        return session.get(Item, item_id), 0, None
    versions = sorted(
        ((created, i, state) for i, state, created, of_source in rows if of_source), reverse=True
    )
    previous = next((i for _, i, state in versions if state != ItemState.discarded), None)
    return None, len(versions) + 1, previous


@dataclass
class StoredTile:
    """A prepared tile whose object and item JSON are in the staging area, its row not yet
    written (:func:`store_tile`)."""

    result: TileResult
    stac: dict[str, Any]
    #: the id of the item of the same source this one supersedes (None: the first version)
    previous_id: str | None


def store_tile(
    ws: Workspace, config: ProductConfig, prepared: PreparedTile
) -> StoredTile | TileResult:
    """Store a prepared tile's object and item JSON (immutable, content-addressed), before
    the transaction that inserts its row. Returns the final ``exists`` result instead when
    the product already holds this content."""
    product_id = config.product_id
    item_id = item_id_for(product_id, prepared.hexdigest)
    if not is_safe_item_id(item_id):
        raise StorageError(f"product id {product_id!r} makes an unsafe item id {item_id!r}")
    okey = object_key(prepared.hexdigest)
    skey = stac_key_for(product_id, item_id)
    result = TileResult(
        source=prepared.source_name,
        status="staged",
        item_id=item_id,
        digest=prepared.hexdigest,
        size=prepared.size,
        object_key=okey,
        stac_key=skey,
        cog_warnings=prepared.cog_warnings,
        cog_errors=prepared.cog_errors,
    )
    with ws.read() as session:
        existing, version, previous_id = _prior(session, product_id, prepared.source_key, item_id)
    if existing is not None:
        result.status, result.state, result.item = "exists", existing.state.value, existing.stac
        return result
    predecessor = (
        object_href(ws.store, "staging", stac_key_for(product_id, previous_id))
        if previous_id is not None
        else None
    )
    stac = build_stac(
        config,
        prepared,
        asset_href=object_href(ws.store, "staging", okey),
        item_version=version,
        predecessor_href=predecessor,
    )
    ws.store.put_file("staging", okey, prepared.cog_path)
    payload = json.dumps(stac, indent=2, sort_keys=True).encode()
    ws.store.put_bytes("staging", skey, payload)
    faults.point("ingest.files_stored")
    return StoredTile(result, stac, previous_id)


def stage_tile(
    ws: Workspace, config: ProductConfig, prepared: PreparedTile, *, actor: str
) -> TileResult:
    """Store object + item JSON, then insert the row and its audit event in one transaction."""
    stored = store_tile(ws, config, prepared)
    if isinstance(stored, TileResult):
        return stored

    def insert(retry: bool) -> bool:
        """The row, its audit event and the superseding, in ONE transaction (False: a
        concurrent run staged the same content first)."""
        with ws.transaction() as session:
            return (
                insert_item(session, config, prepared, stored, actor=actor, retry=retry) is not None
            )

    result = stored.result
    if not db.retry_on_conflict(insert):
        result.status = "exists"
        return result
    result.state = ItemState.staging.value
    result.item = stored.stac
    return result


def new_item(
    config: ProductConfig, prepared: PreparedTile, stored: StoredTile, *, actor: str
) -> Item:
    """The staging row of a stored tile (not added to any session)."""
    meta = prepared.source_meta
    result = stored.result
    assert result.item_id is not None and result.object_key and result.stac_key
    return Item(
        id=result.item_id,
        product_id=config.product_id,
        source=prepared.source_name,
        source_key=prepared.source_key,
        source_digest=prepared.source_digest,
        content_digest=prepared.hexdigest,
        size=prepared.size,
        object_key=result.object_key,
        stac_key=result.stac_key,
        stac=stored.stac,
        state=ItemState.staging,
        submitted_by=actor,
        supersedes=stored.previous_id,
        source_item_id=meta.source_item_id if meta else None,
        source_etag=meta.source_etag if meta else None,
    )


def insert_item(
    session: Session,
    config: ProductConfig,
    prepared: PreparedTile,
    stored: StoredTile,
    *,
    actor: str,
    retry: bool,
) -> Item | None:
    """Insert a stored tile's row with its ``ingest`` audit event, superseding the earlier
    version, in the caller's transaction. None: a concurrent run staged it first.

    :func:`store_tile` found no row of this content. A concurrent run that inserts one
    after that makes this INSERT fail (``IntegrityError``), and the caller's
    :func:`~geomesh.db.retry_on_conflict` calls again with ``retry``, which reads it.

    Locks the superseded version before any audit event (the chain's head is the last lock
    a transaction takes), so a caller may go on to change it (a rollback restores it).
    """
    product_id = config.product_id
    auth.require(session, actor, "ingest")
    previous_id = stored.previous_id
    prev = get_item(session, previous_id, lock=True) if previous_id is not None else None
    register_product(session, config, actor=actor)
    item = new_item(config, prepared, stored, actor=actor)
    if retry and session.get(Item, item.id) is not None:  # a concurrent run staged it
        return None
    session.add(item)
    session.flush()
    audit.append(
        session,
        actor=actor,
        action="ingest",
        target=item.id,
        product_id=product_id,
        state_after=ItemState.staging.value,
        digest=prepared.hexdigest,
        details={
            "source": prepared.source_name,
            "size": prepared.size,
            "supersedes": item.supersedes,
            "clipped": prepared.clipped,
        },
    )
    if prev is not None and prev.state in (ItemState.staging, ItemState.validation):
        lifecycle.transition(
            session,
            prev,
            ItemState.superseded,
            actor=actor,
            action="supersede",
            details={"by": item.id},
        )
    return item


def ingest_policy(session: Session, config: ProductConfig, *, actor: str) -> ProductConfig:
    """Before any file work: refuse an ``actor`` who may not ingest, and return the policy
    to ingest under, the product's registered config (a differing ``config`` is refused;
    a product's first ingest registers ``config``)."""
    auth.require(session, actor, "ingest")
    return check_config(session, config, unregistered_ok=True)


def find_by_source_digest(ws: Workspace, product_id: str, digest: str | None) -> Item | None:
    if digest is None:
        return None
    with ws.read() as session:
        return session.exec(
            select(Item).where(Item.product_id == product_id, Item.source_digest == digest)
        ).first()
