"""Findings page: the filterable findings table, its rule choices and CSV / JSON downloads."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Sequence
from typing import Any, Final

from sqlalchemy import select as sa_select
from sqlmodel import col, select

from geomesh.models import FindingRecord, Item, ItemState
from geomesh.services.queries._common import iso, val
from geomesh.workspace import Workspace

FINDING_COLUMNS: Final = (
    "item_id",
    "product_id",
    "state",
    "severity",
    "rule_id",
    "path",
    "message",
    "remediation",
    "open",
    "created_at",
)


def findings_table(
    ws: Workspace,
    *,
    product_id: str | None = None,
    severities: Sequence[str] | None = None,
    rules: Sequence[str] | None = None,
    states: Sequence[str] | None = None,
    item_id: str | None = None,
    open_only: bool = True,
    limit: int | None = None,
) -> dict[str, list[Any]]:
    """Findings as columns (``FINDING_COLUMNS``), worst first; filters run in SQL.

    Columnar plain lists keep 50,000 rows cheap (no ORM objects); the app wraps them in a
    DataFrame.
    """
    stmt = sa_select(
        col(FindingRecord.item_id),
        col(FindingRecord.product_id),
        col(Item.state),
        col(FindingRecord.severity),
        col(FindingRecord.rule_id),
        col(FindingRecord.path),
        col(FindingRecord.message),
        col(FindingRecord.remediation),
        col(FindingRecord.open),
        col(FindingRecord.created_at),
    ).join(Item, col(Item.id) == col(FindingRecord.item_id))
    if product_id:
        stmt = stmt.where(col(FindingRecord.product_id) == product_id)
    if severities:
        stmt = stmt.where(col(FindingRecord.severity).in_(list(severities)))
    if rules:
        stmt = stmt.where(col(FindingRecord.rule_id).in_(list(rules)))
    if states:
        stmt = stmt.where(col(Item.state).in_([ItemState(s) for s in states]))
    if item_id:
        stmt = stmt.where(col(FindingRecord.item_id) == item_id)
    if open_only:
        stmt = stmt.where(col(FindingRecord.open).is_(True))
    stmt = stmt.order_by(
        col(FindingRecord.severity), col(FindingRecord.rule_id), col(FindingRecord.id)
    )
    if limit is not None:
        stmt = stmt.limit(limit)
    out: dict[str, list[Any]] = {c: [] for c in FINDING_COLUMNS}
    with ws.read() as session:
        rows = session.execute(stmt).all()
    cols = [out[c] for c in FINDING_COLUMNS]
    for row in rows:
        for target, value in zip(cols, row, strict=True):
            target.append(value)
    out["state"] = [str(val(v)) for v in out["state"]]
    out["severity"] = [str(val(v)) for v in out["severity"]]
    out["created_at"] = [iso(v) for v in out["created_at"]]
    out["open"] = [bool(v) for v in out["open"]]
    return out


def finding_rules(ws: Workspace, product_id: str | None = None) -> list[str]:
    """Rule ids that occur in the findings (for filter choices)."""
    stmt = select(FindingRecord.rule_id).distinct()
    if product_id:
        stmt = stmt.where(FindingRecord.product_id == product_id)
    with ws.read() as session:
        return sorted(str(r) for r in session.exec(stmt).all())


def findings_csv(table: dict[str, list[Any]]) -> str:
    """A findings table (as returned by :func:`findings_table`) as CSV text."""
    buf = io.StringIO()
    writer = csv.writer(buf)
    cols = list(table)
    writer.writerow(cols)
    writer.writerows(zip(*(table[c] for c in cols), strict=True))
    return buf.getvalue()


def findings_json(table: dict[str, list[Any]]) -> str:
    """A findings table as a JSON array of objects."""
    cols = list(table)
    rows = [dict(zip(cols, values, strict=True)) for values in zip(*table.values(), strict=True)]
    return json.dumps(rows, indent=1, default=str)
