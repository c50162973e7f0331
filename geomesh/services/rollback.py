"""Rollback: take one item out of the current release, or undo a whole release.

An item rollback stores a new PATCH release without the item; a release rollback moves
the product's current pointer back to the parent release (O(1)) and updates the states
of the items in its delta. Both are one transaction with their audit events, then
publish the (now current) release's catalog and the release index; both are idempotent.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlmodel import col, select

from geomesh import audit, auth, faults, lifecycle, releases
from geomesh.config import ProductConfig
from geomesh.errors import NotCurrentRelease, NotFound, NothingToRollBack
from geomesh.models import ItemState, Release
from geomesh.releases import Bump, Delta, Manifest, ReleaseKind
from geomesh.services.history import _highest_version, _resolve_release
from geomesh.services.lookup import get_item, get_product, items_by_id
from geomesh.services.products import check_config
from geomesh.services.publication import (
    _add_release,
    _move_pointer,
    publish_catalog,
    replanned,
)
from geomesh.workspace import Workspace

_ITEMS_HINT = "list items with `geomesh items list CONFIG`"


@dataclass(frozen=True)
class RollbackResult:
    product_id: str
    #: True when the rollback had already happened (a retry): nothing changed
    already: bool
    #: the release that is current now (None: the product has no current release)
    current_release_id: str | None
    current_version: str | None
    #: item rollback: the new PATCH release; release rollback: the release rolled back
    release_id: str | None
    message: str
    items: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__) | {"items": list(self.items)}


def rollback_item(
    ws: Workspace, config: ProductConfig, item_id: str, *, actor: str
) -> RollbackResult:
    """Remove one failed item version from the current release: a new PATCH release.

    Idempotent: when the item is no longer in the current release and is ``withdrawn``,
    the call is a no-op that reports "already rolled back". A promotion or rollback that
    commits a new current release meanwhile makes it plan again on top of that release
    (``publication.replanned``).
    """
    return replanned(lambda: _rollback_item(ws, config, item_id, actor=actor))


def _rollback_item(
    ws: Workspace, config: ProductConfig, item_id: str, *, actor: str
) -> RollbackResult:
    """One attempt of :func:`rollback_item` (``ConcurrentUpdate``: another release won)."""
    pid = config.product_id
    with ws.read() as session:
        auth.require(session, actor, "rollback")
        product = get_product(session, pid)
        check_config(session, config)  # a differing caller config is refused
        item = get_item(session, item_id, product_id=pid, hint=_ITEMS_HINT)
        highest = _highest_version(session, pid)
        current_id, counter = product.current_release_id, product.version_counter
        current_row = session.get(Release, current_id) if current_id else None
        current_version = current_row.version if current_row else None
    current = releases.load_manifest(ws.store, pid, current_id) if current_id else None
    # the item's entry, looked up in its source tile's partition only (O(partition))
    entry = releases.find_item(ws.store, current, item_id, item.source_key) if current else None
    if current is None or entry is None:
        if item.state == ItemState.withdrawn:
            if current_id is not None:  # finish an interrupted publication
                publish_catalog(ws, pid, current_id)
            return RollbackResult(
                product_id=pid,
                already=True,
                current_release_id=current_id,
                current_version=current_version,
                release_id=None,
                message=f"already rolled back: item {item_id} is not in the current release",
                items=(item_id,),
            )
        raise NothingToRollBack(
            f"item {item_id} (state {item.state.value!r}) is not in the current release "
            f"{current_version or '-'} of {pid}",
            hint="only released items can be rolled back; see `geomesh releases show CONFIG`",
        )
    derived = releases.derive(ws.store, current, remove=[entry])
    manifest = Manifest(
        product_id=pid,
        version=releases.next_version(highest, Bump.patch),
        parent_id=current.id,
        actor=actor,
        created_at=releases.now_iso(),
        kind=ReleaseKind.item_rollback.value,
        spatial_contract=dict(current.spatial_contract),
        product_metadata=dict(current.product_metadata),
        parts=derived.parts,
        inline=derived.inline,
    )
    releases.store_manifest(ws.store, manifest)
    faults.point("rollback.manifest_stored")
    with ws.transaction() as session:
        auth.require(session, actor, "rollback")
        product = get_product(session, pid, lock=True)
        _move_pointer(
            product, expected_current=current.id, expected_counter=counter, new_id=manifest.id
        )
        item = get_item(session, item_id, product_id=pid, lock=True, hint=_ITEMS_HINT)
        lifecycle.transition(
            session,
            item,
            ItemState.withdrawn,
            actor=actor,
            action="rollback.item",
            details={"release": manifest.id, "version": manifest.version, "from": current.id},
        )
        _add_release(session, manifest, derived.delta, kind=ReleaseKind.item_rollback)
        session.add(product)
    faults.point("rollback.committed")
    publish_catalog(ws, pid, manifest.id)
    return RollbackResult(
        product_id=pid,
        already=False,
        current_release_id=manifest.id,
        current_version=manifest.version,
        release_id=manifest.id,
        message=f"rolled back item {item_id}: released {pid} {manifest.version} without it",
        items=(item_id,),
    )


def rollback_release(
    ws: Workspace, config: ProductConfig, *, actor: str, release_id: str | None = None
) -> RollbackResult:
    """Move the product's current pointer back to the parent of ``release_id``.

    See :func:`_rollback_release`; a retry also finishes an interrupted publication of the
    restored release (its catalog and the release index).
    """
    result = _rollback_release(ws, config, actor=actor, release_id=release_id)
    if result.already:
        publish_catalog(ws, config.product_id, result.current_release_id)
    return result


def _rollback_release(
    ws: Workspace, config: ProductConfig, *, actor: str, release_id: str | None = None
) -> RollbackResult:
    """Move the product's current pointer back to the parent of ``release_id``.

    ``release_id`` is the release expected to be current (default: whatever is current).
    Cost is O(delta of that release): the pointer moves in O(1) and only the items in its
    delta change state; no manifest or catalog is read or written in the transaction.
    A retry after success sees that the release is no longer current and was rolled back,
    and returns ``already=True`` without changing anything.
    """
    pid = config.product_id
    with ws.transaction() as session:
        auth.require(session, actor, "rollback")
        product = get_product(session, pid, lock=True)
        check_config(session, config)  # a differing caller config is refused
        current = product.current_release_id
        if release_id is None and current is not None:
            # "roll back the current release" means "undo the latest release": once that
            # is rolled back, a repeat is a no-op; going further back names the release.
            # Three small columns, not the row: a release's delta lists every item it added.
            latest = session.exec(
                select(Release.id, Release.version, Release.deprecated)
                .where(Release.product_id == pid)
                .order_by(col(Release.created_at).desc())
                .limit(1)
            ).first()
            if latest is not None and latest[2] and latest[0] != current:
                latest_id, latest_version = latest[0], latest[1]
                version = session.exec(select(Release.version).where(Release.id == current)).one()
                return RollbackResult(
                    product_id=pid,
                    already=True,
                    current_release_id=current,
                    current_version=version,
                    release_id=latest_id,
                    message=f"already rolled back: the latest release {latest_version} "
                    f"({latest_id[:12]}…) was rolled back and {version} is current; to roll "
                    f"back {version} as well, name it (--release {version})",
                )
        if release_id is None and current is None:
            # every release was withdrawn (the first one rolled back): a repeat is a no-op
            withdrawn = session.exec(
                select(Release.id, Release.version)
                .where(Release.product_id == pid)
                .order_by(col(Release.created_at).desc())
                .limit(1)
            ).first()
            if withdrawn is not None:
                return RollbackResult(
                    product_id=pid,
                    already=True,
                    current_release_id=None,
                    current_version=None,
                    release_id=withdrawn[0],
                    message=f"already rolled back: {pid} has no current release (the latest, "
                    f"{withdrawn[1]}, was withdrawn)",
                )
        target_id = release_id or current
        if target_id is None:
            raise NothingToRollBack(f"product {pid!r} has no release to roll back")
        rel = _resolve_release(session, pid, target_id)
        if rel.id != current:
            if rel.deprecated:
                cur = session.get(Release, current) if current else None
                return RollbackResult(
                    product_id=pid,
                    already=True,
                    current_release_id=current,
                    current_version=cur.version if cur else None,
                    release_id=rel.id,
                    message=f"already rolled back: release {rel.version} ({rel.id[:12]}…) "
                    "is no longer current",
                )
            raise NotCurrentRelease(
                f"release {rel.version} ({rel.id[:12]}…) is not the current release of {pid}",
                hint="only the current release can be rolled back; see `geomesh releases list`",
            )
        # the first release has no parent: rolling it back withdraws it, and the product
        # has no current release until the next promote (which continues the versions)
        parent = session.get(Release, rel.parent_id) if rel.parent_id else None
        if rel.parent_id is not None and parent is None:  # pragma: no cover - never deleted
            raise NotFound(f"parent release {rel.parent_id} of {rel.version} is missing")
        restored_id = parent.id if parent else None
        restored_version = parent.version if parent else None
        delta = Delta.from_dict(rel.delta)
        to_withdraw = [*delta.added, *(c.to_id for c in delta.changed)]
        to_production = [*delta.removed, *(c.from_id for c in delta.changed)]
        items = items_by_id(session, [*to_withdraw, *to_production], lock=True)
        details = {"release": rel.id, "version": rel.version, "restored": restored_version}
        for iid in to_withdraw:
            lifecycle.transition(
                session,
                items[iid],
                ItemState.withdrawn,
                actor=actor,
                action="rollback.release",
                details=details,
            )
        for iid in to_production:
            lifecycle.transition(
                session,
                items[iid],
                ItemState.production,
                actor=actor,
                action="rollback.release",
                details=details,
            )
        _move_pointer(
            product,
            expected_current=rel.id,
            expected_counter=product.version_counter,
            new_id=restored_id,
        )
        rel.deprecated = True
        session.add(rel)
        session.add(product)
        audit.append(
            session,
            actor=actor,
            action="rollback.release",
            target=rel.id,
            product_id=pid,
            digest=restored_id,
            details={
                "version": rel.version,
                "restored_release": restored_id,
                "restored_version": restored_version,
                "withdrawn_items": len(to_withdraw),
                "restored_items": len(to_production),
            },
        )
        result = RollbackResult(
            product_id=pid,
            already=False,
            current_release_id=restored_id,
            current_version=restored_version,
            release_id=rel.id,
            message=(
                f"rolled back {pid} {rel.version}; current is {restored_version} again"
                if parent is not None
                else f"withdrew {pid} {rel.version}, its first release: no release is current"
            ),
            items=tuple(to_withdraw),
        )
    faults.point("rollback.committed")
    publish_catalog(ws, pid, restored_id)
    return result
