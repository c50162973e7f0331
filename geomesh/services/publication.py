"""Publication of a release: the release row and pointer move, the static catalog, the index.

:func:`_add_release` and :func:`_move_pointer` run inside the transaction of a promotion
or rollback (they are shared by both). The static STAC catalog of a release and the
release index (``latest.json``) are (re)written after that transaction, idempotently:
:func:`publish_catalog` is safe to re-run after a crash. A catalog shares every unchanged
partition with its parent's (``geomesh.releases.catalog``), so publishing costs what
changed, not what exists.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Final, TypeVar

from sqlalchemy.orm import defer
from sqlmodel import Session, select

from geomesh import audit, faults, releases
from geomesh.errors import ConcurrentUpdate, NotFound
from geomesh.models import Product, Release, utcnow
from geomesh.releases import Delta, Manifest, ReleaseKind
from geomesh.services.lookup import get_product
from geomesh.workspace import Workspace

T = TypeVar("T")

#: how many times a promotion or item rollback plans again when another one moved the
#: product's current release while it was prepared
REPLANS: Final = 3

# ------------------------------------------------------------------ in the release transaction


def replanned(operation: Callable[[], T], *, attempts: int = REPLANS) -> T:
    """Run ``operation`` (a whole promotion or item rollback: plan, objects, the release
    transaction) again when it lost a race: another promote or rollback committed a new
    current release while this one was being prepared (:func:`_move_pointer` raised
    ``ConcurrentUpdate`` and the transaction rolled back).

    The next attempt plans on top of the release that won, so two concurrent operations
    end as the same two would end one after the other. What the lost attempt stored before
    its transaction (object copies, a manifest no row points at) is complete and
    unreferenced: reused by a later attempt or listed by ``geomesh doctor``.
    """
    for attempt in range(1, attempts + 1):
        try:
            return operation()
        except ConcurrentUpdate:
            if attempt == attempts:
                raise
    raise AssertionError("unreachable")  # pragma: no cover


def _move_pointer(
    product: Product, *, expected_current: str | None, expected_counter: int, new_id: str | None
) -> None:
    """Optimistic check + pointer move (the product row is locked by the caller).

    ``new_id=None`` withdraws the product's only remaining release: no release is current.
    """
    if (
        product.current_release_id != expected_current
        or product.version_counter != expected_counter
    ):
        raise ConcurrentUpdate(
            f"the current release of product {product.id!r} changed while this operation was "
            f"prepared (expected {expected_current}, found {product.current_release_id})",
            hint="re-run the command; it re-plans against the new current release",
        )
    product.current_release_id = new_id
    product.version_counter = expected_counter + 1
    product.updated_at = utcnow()


def _add_release(
    session: Session, manifest: Manifest, delta: Delta, *, kind: ReleaseKind
) -> Release:
    row = Release(
        id=manifest.id,
        product_id=manifest.product_id,
        version=manifest.version,
        parent_id=manifest.parent_id,
        manifest_key=releases.manifest_key(manifest.product_id, manifest.id),
        item_count=manifest.item_count,
        delta=delta.to_dict(),
        kind=kind.value,
        actor=manifest.actor,
    )
    session.add(row)
    session.flush()
    audit.append(
        session,
        actor=manifest.actor,
        action="release.publish",
        target=manifest.id,
        product_id=manifest.product_id,
        digest=manifest.id,
        details={
            "version": manifest.version,
            "parent_id": manifest.parent_id,
            "kind": kind.value,
            "item_count": manifest.item_count,
            "added": len(delta.added),
            "removed": len(delta.removed),
            "changed": len(delta.changed),
        },
    )
    return row


# ------------------------------------------------------------------ after the transaction


def publish_catalog(
    ws: Workspace,
    product_id: str,
    release_id: str | None,
    *,
    stats: releases.MaterializeStats | None = None,
) -> str | None:
    """Materialize the release's static catalog (if missing) and rewrite the index.

    Idempotent; called after every promote/rollback and safe to re-run after a crash.
    ``release_id=None`` (no release is current) only rewrites the index.
    """
    key = ensure_catalog(ws, product_id, release_id, stats=stats) if release_id else None
    faults.point("publish.catalog_written")
    refresh_index(ws, product_id)
    return key


def ensure_catalog(
    ws: Workspace,
    product_id: str,
    release_id: str,
    *,
    stats: releases.MaterializeStats | None = None,
    manifest: Manifest | None = None,
) -> str:
    """The key of the release's ``catalog.json``, materializing it from the manifest if it
    is missing (e.g. after a crash between the release transaction and publication).

    Incremental when the parent release is published in layout 2 (its partitions are
    reused); a release whose parent is unpublished or in the old layout is built whole.
    """
    with ws.read() as session:
        row = session.exec(
            select(Release.product_id, Release.version, Release.parent_id).where(
                Release.id == release_id
            )
        ).first()
        if row is None or row[0] != product_id:
            raise NotFound(f"release {release_id} of product {product_id!r} does not exist")
        version, parent_id = row[1], row[2]
        parent_version = (
            session.exec(select(Release.version).where(Release.id == parent_id)).first()
            if parent_id
            else None
        )
    key = releases.catalog_key(product_id, version)
    if not ws.store.exists(releases.AREA, key):
        if manifest is None or manifest.id != release_id:
            manifest = releases.load_manifest(ws.store, product_id, release_id)
        key = releases.materialize_catalog(
            ws.store, manifest, predecessor_version=parent_version, stats=stats
        )
    return key


def refresh_index(ws: Workspace, product_id: str) -> str:
    """Rewrite ``catalogs/<product>/latest.json`` from the release rows (O(releases); the
    rows' deltas, which list every item of a first release, are not read)."""
    with ws.read() as session:
        product = get_product(session, product_id)
        rows = session.exec(
            select(Release).where(Release.product_id == product_id).options(defer(Release.delta))  # type: ignore[arg-type]
        ).all()
        entries = [
            releases.IndexEntry(
                version=r.version,
                release_id=r.id,
                parent_id=r.parent_id,
                kind=r.kind,
                deprecated=r.deprecated,
                created_at=r.created_at.isoformat(),
                snapshot_key=r.snapshot_key,
            )
            for r in rows
        ]
        current = product.current_release_id
    return releases.write_index(ws.store, product_id, entries, current)
