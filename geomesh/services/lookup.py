"""Shared lookups of the service layer: a row or ``NotFound``, and chunked ``IN`` queries
(``db.chunks``).

Every service module finds products and items through these, so "not found" reads the
same everywhere and a long id list never exceeds a database's bound-parameter limit.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Final

from sqlmodel import Session, col, select
from sqlmodel.sql.expression import SelectOfScalar

from geomesh.db import chunks
from geomesh.errors import NotFound
from geomesh.models import Item, Product

#: what a "product not registered" error tells the user to do, unless the caller says otherwise
PRODUCT_HINT: Final = "ingest tiles first: `geomesh ingest CONFIG SOURCE...`"


def get_product(
    session: Session,
    product_id: str,
    *,
    lock: bool = False,
    hint: str = PRODUCT_HINT,
) -> Product:
    """The product row, or ``NotFound``.

    ``lock``: ``SELECT … FOR NO KEY UPDATE`` (PostgreSQL) until the transaction ends:
    promotions, rollbacks and policy changes of one product wait for each other, while
    rows that merely reference the product (a newly staged item) can still be inserted.
    Taken before any item lock (:func:`items_by_id`) and before the audit chain's head.
    """
    stmt = select(Product).where(Product.id == product_id)
    if lock:
        stmt = stmt.with_for_update(key_share=True)
    product = session.exec(stmt).first()
    if product is None:
        raise NotFound(f"product {product_id!r} is not registered", hint=hint)
    return product


def get_item(
    session: Session,
    item_id: str,
    *,
    product_id: str | None = None,
    lock: bool = False,
    hint: str = "list items with `geomesh items list`",
) -> Item:
    """The item row (of ``product_id``, when given), or ``NotFound``.

    ``lock``: the row is locked until the transaction ends (see :func:`items_by_id`), and
    read again if the session held an older copy.
    """
    if lock:
        item = session.exec(_locked(select(Item).where(Item.id == item_id))).first()
    else:
        item = session.get(Item, item_id)
    if item is None or (product_id is not None and item.product_id != product_id):
        where = f" in product {product_id!r}" if product_id is not None else ""
        raise NotFound(f"item {item_id!r} does not exist{where}", hint=hint)
    return item


def items_by_id(session: Session, ids: Iterable[str], *, lock: bool = False) -> dict[str, Item]:
    """The existing items among ``ids``, by id (missing ids are left out).

    ``lock``: every row is locked until the transaction ends, in id order (so two
    transactions locking overlapping sets never deadlock): ``SELECT … FOR NO KEY UPDATE`` on
    PostgreSQL, where a concurrent transaction that locks or changes one of them waits and
    then reads the committed row; nothing on SQLite, whose ``BEGIN IMMEDIATE`` already
    serialises writers. Lock every row a transaction will change BEFORE its first audit
    event: ``audit.append`` locks the chain's head, which must be the last lock taken.
    """
    out: dict[str, Item] = {}
    for chunk in chunks(sorted(set(ids))):
        stmt = select(Item).where(col(Item.id).in_(chunk))
        if lock:
            stmt = _locked(stmt.order_by(col(Item.id)))
        for item in session.exec(stmt).all():
            out[item.id] = item
    return out


def _locked(stmt: SelectOfScalar[Item]) -> SelectOfScalar[Item]:
    """``stmt`` taking row locks that still allow inserts referencing the rows (approvals,
    findings: ``FOR NO KEY UPDATE``), refreshing rows the session already holds."""
    return stmt.with_for_update(key_share=True).execution_options(populate_existing=True)
