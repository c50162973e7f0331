"""`geomesh items list` and the app's item pickers: item summaries, streamed.

Core statements over :mod:`geomesh.tables` on a read-only connection
(``Workspace.read_rows``): the CLI's `items list` runs in a process that never imports
SQLModel (issue 19; ``tests/test_cli_startup.py`` checks it).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from sqlalchemy import select

from geomesh.enums import ItemState
from geomesh.services.finding_counts import finding_counts
from geomesh.tables import ITEM
from geomesh.workspace import Workspace

#: the columns a list view shows (never the STAC JSON: the checksum is read out of it in SQL)
_LISTED = (
    "id",
    "product_id",
    "state",
    "source",
    "content_digest",
    "size",
    "submitted_by",
    "supersedes",
    "worst_severity",
    "quarantine_reason",
    "created_at",
    "updated_at",
)


def iter_items(
    ws: Workspace,
    *,
    product_id: str | None = None,
    state: str | ItemState | None = None,
    batch: int = 1000,
) -> Iterator[dict[str, Any]]:
    """Item summaries (``items.item_summary`` without the STAC JSON), oldest first,
    streamed: one cursor over a projection (``file:checksum`` extracted in SQL), ``batch``
    rows and their finding counts (one grouped query) in memory at a time."""
    c = ITEM.c
    checksum = c.stac[("assets", "data", "file:checksum")].as_string()
    stmt = select(*(c[name] for name in _LISTED), checksum).order_by(c.created_at, c.id)
    if product_id:
        stmt = stmt.where(c.product_id == product_id)
    if state:
        stmt = stmt.where(c.state == ItemState(state).name)
    with ws.read_rows() as conn:
        result = conn.execution_options(yield_per=batch).execute(stmt)
        for rows in result.partitions():
            counts = finding_counts(conn, [r[0] for r in rows])
            for row in rows:
                r = dict(zip(_LISTED, row, strict=False))
                yield {
                    "id": r["id"],
                    "product_id": r["product_id"],
                    "state": ItemState[r["state"]].value,
                    "source": r["source"],
                    "checksum": row[-1],
                    "digest": r["content_digest"],
                    "size": r["size"],
                    "submitted_by": r["submitted_by"],
                    "supersedes": r["supersedes"],
                    "worst_severity": r["worst_severity"],
                    "quarantine_reason": r["quarantine_reason"],
                    "findings": counts[r["id"]],
                    "created_at": r["created_at"].isoformat(),
                    "updated_at": r["updated_at"].isoformat(),
                }


def list_items(
    ws: Workspace, *, product_id: str | None = None, state: str | ItemState | None = None
) -> list[dict[str, Any]]:
    """:func:`iter_items` as a list (small lists; the CLI streams)."""
    return list(iter_items(ws, product_id=product_id, state=state))
