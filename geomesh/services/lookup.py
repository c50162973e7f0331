"""Shared lookups of the service layer: a row or ``NotFound``, and chunked ``IN`` queries.

Every service module finds products and items through these, so "not found" reads the
same everywhere and a long id list never exceeds a database's bound-parameter limit.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import Final, TypeVar

from sqlmodel import Session, col, select

from geomesh.errors import NotFound
from geomesh.models import Item, Product

#: ids per ``IN (...)`` clause: well below SQLite's 32,766 and PostgreSQL's 65,535 parameters
IN_CHUNK: Final = 500
#: what a "product not registered" error tells the user to do, unless the caller says otherwise
PRODUCT_HINT: Final = "ingest tiles first: `geomesh ingest CONFIG SOURCE...`"

T = TypeVar("T")


def chunks(values: Sequence[T], n: int = IN_CHUNK) -> Iterator[Sequence[T]]:
    """``values`` in consecutive slices of at most ``n``."""
    for i in range(0, len(values), n):
        yield values[i : i + n]


def get_product(
    session: Session,
    product_id: str,
    *,
    lock: bool = False,
    hint: str = PRODUCT_HINT,
) -> Product:
    """The product row (``lock``: ``SELECT … FOR UPDATE``), or ``NotFound``."""
    stmt = select(Product).where(Product.id == product_id)
    if lock:
        stmt = stmt.with_for_update()
    product = session.exec(stmt).first()
    if product is None:
        raise NotFound(f"product {product_id!r} is not registered", hint=hint)
    return product


def get_item(
    session: Session,
    item_id: str,
    *,
    product_id: str | None = None,
    hint: str = "list items with `geomesh items list`",
) -> Item:
    """The item row (of ``product_id``, when given), or ``NotFound``."""
    item = session.get(Item, item_id)
    if item is None or (product_id is not None and item.product_id != product_id):
        where = f" in product {product_id!r}" if product_id is not None else ""
        raise NotFound(f"item {item_id!r} does not exist{where}", hint=hint)
    return item


def items_by_id(session: Session, ids: Iterable[str]) -> dict[str, Item]:
    """The existing items among ``ids``, by id (missing ids are left out)."""
    out: dict[str, Item] = {}
    for chunk in chunks(sorted(set(ids))):
        for item in session.exec(select(Item).where(col(Item.id).in_(chunk))).all():
            out[item.id] = item
    return out
