"""Releases page: what a rollback would change, for its confirmation dialog."""

from __future__ import annotations

from typing import Any

from sqlmodel import col, select

from geomesh.errors import NotFound, NothingToRollBack
from geomesh.models import Item, ItemState, Release
from geomesh.releases import Bump, Delta, highest_version, next_version
from geomesh.services.lookup import get_product
from geomesh.services.queries.products import PRODUCT_HINT
from geomesh.workspace import Workspace


def rollback_impact(
    ws: Workspace, product_id: str, *, kind: str, item_id: str | None = None
) -> dict[str, Any]:
    """What a rollback would change, for the confirmation dialog (nothing is written).

    ``kind="release"``: the current release goes, its parent comes back; the items its
    delta added or changed are rolled back, the ones it removed or replaced are restored.
    ``kind="item"``: a new PATCH release without ``item_id``.
    """
    with ws.read() as session:
        product = get_product(session, product_id, hint=PRODUCT_HINT)
        if product.current_release_id is None:
            raise NothingToRollBack(f"product {product_id!r} has no release to roll back")
        current = session.get(Release, product.current_release_id)
        if current is None:  # pragma: no cover - the pointer always names a row
            raise NotFound(f"release {product.current_release_id} is missing")
        versions = session.exec(
            select(Release.version).where(Release.product_id == product_id)
        ).all()
        parent = session.get(Release, current.parent_id) if current.parent_id else None
    if kind == "release":
        delta = Delta.from_dict(current.delta)
        return {
            "kind": "release",
            "release_id": current.id,
            "version": current.version,
            "restores": parent.version if parent else None,
            "withdrawn": [*delta.added, *(c.to_id for c in delta.changed)],
            "restored": [*delta.removed, *(c.from_id for c in delta.changed)],
            # the first release can be rolled back too: the product is then withdrawn
            "possible": True,
        }
    if item_id is None:
        raise NotFound("choose the item to roll back")
    return {
        "kind": "item",
        "item_id": item_id,
        "version": current.version,
        "new_version": next_version(highest_version(versions), Bump.patch),
        "items_after": max(current.item_count - 1, 0),
        "possible": True,
    }


def released_item_ids(ws: Workspace, product_id: str) -> list[str]:
    """The ids of the current release's items (state ``production``; `geomesh doctor`
    checks that this equals the current manifest), from the indexed table, not the
    manifest."""
    with ws.read() as session:
        return list(
            session.exec(
                select(Item.id)
                .where(Item.product_id == product_id, Item.state == ItemState.production)
                .order_by(col(Item.id))
            ).all()
        )
