"""Releases page: the release history one page at a time, the items of the current release
one search at a time, and what a rollback would change (its confirmation dialog).

A page costs the same whatever the number of releases or items: the history is paged in
SQL with each delta's sizes counted in the database (``history.release_infos``: a first
release's delta lists every item and is never loaded here), and the item picker reads at
most ``limit`` ids from an index. Only the rollback dialog loads a delta: the current
release's, when a release rollback is asked for.
"""

from __future__ import annotations

from typing import Any, Final

from sqlalchemy import func, or_
from sqlalchemy import select as sa_select
from sqlmodel import col, select

from geomesh.errors import NotFound, NothingToRollBack
from geomesh.models import Item, ItemState, Release
from geomesh.releases import Bump, Delta, highest_version, next_version
from geomesh.services.history import release_infos
from geomesh.services.lookup import get_product
from geomesh.services.queries.products import PRODUCT_HINT
from geomesh.workspace import Workspace

#: releases per page of the history table
RELEASES_PAGE_SIZE: Final = 50
#: items of the current release offered by the rollback picker at a time
ITEM_CHOICES: Final = 50


def release_history(
    ws: Workspace, product_id: str, *, page: int = 1, size: int = RELEASES_PAGE_SIZE
) -> dict[str, Any]:
    """One page of the release history, newest first, and what the page needs around it.

    ``{"total", "page", "pages", "rows": [ReleaseInfo.to_json(), ...], "versions": [every
    version, oldest first], "current": the current release's row or None}``. Releases are
    created in version order (a new version is always above the highest ever released), so
    newest first is creation order.
    """
    with ws.read() as session:
        get_product(session, product_id, hint=PRODUCT_HINT)
        versions = list(
            session.exec(
                select(Release.version)
                .where(Release.product_id == product_id)
                .order_by(col(Release.created_at), col(Release.id))
            ).all()
        )
        total = len(versions)
        pages = max(1, -(-total // size))
        page = min(max(page, 1), pages)
        newest_first = (col(Release.created_at).desc(), col(Release.id).desc())
        ids = session.exec(
            select(Release.id)
            .where(Release.product_id == product_id)
            .order_by(*newest_first)
            .limit(size)
            .offset((page - 1) * size)
        ).all()
        current_id = get_product(session, product_id).current_release_id
        wanted = [*ids, *([current_id] if current_id else [])]  # the current one: its snapshot
        infos = {r.id: r for r in release_infos(session, product_id, ids=wanted)}
    current = infos.get(current_id) if current_id else None
    return {
        "total": total,
        "page": page,
        "pages": pages,
        "rows": [infos[i].to_json() for i in ids],
        "versions": versions,
        "current": current.to_json() if current is not None else None,
    }


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


def released_item_ids(
    ws: Workspace, product_id: str, *, containing: str = "", limit: int = ITEM_CHOICES
) -> dict[str, Any]:
    """Items of the current release (state ``production``; `geomesh doctor` checks that
    this equals the current manifest) to pick one from: ``{"total": n, "ids": [at most
    limit ids, newest first]}``, those whose id or source contains ``containing`` when
    given. From the indexed table, not the manifest."""
    released = (col(Item.product_id) == product_id, col(Item.state) == ItemState.production)
    stmt = sa_select(col(Item.id)).where(*released)
    if containing:
        pattern = f"%{_like_literal(containing)}%"
        stmt = stmt.where(
            or_(
                col(Item.id).like(pattern, escape="\\"),
                col(Item.source).like(pattern, escape="\\"),
            )
        )
    with ws.read() as session:
        total = session.execute(sa_select(func.count()).where(*released)).scalar_one()
        ids = session.execute(
            stmt.order_by(col(Item.created_at).desc(), col(Item.id).desc()).limit(limit)
        ).scalars()
        return {"total": int(total), "ids": list(ids)}


def _like_literal(text: str) -> str:
    """``text`` matched literally by LIKE (escape character ``\\``)."""
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
