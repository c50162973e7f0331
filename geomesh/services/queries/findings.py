"""Findings page: the filterable findings table, its rule choices and CSV / JSON downloads."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterable, Iterator, Sequence
from typing import IO, Any, Final

from sqlalchemy import func
from sqlalchemy import select as sa_select
from sqlmodel import col, select

from geomesh.models import FindingRecord, Item, ItemState
from geomesh.services.queries._common import SEVERITIES, iso, val
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


#: rows per page of the findings page (and per batch of an export)
FINDINGS_PAGE_SIZE: Final = 200


def _select_rows(*leading: Any) -> Any:
    """SELECT the ``FINDING_COLUMNS`` of findings joined to their item (``leading`` first)."""
    return sa_select(
        *leading,
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


def _filters(
    stmt: Any,
    *,
    product_id: str | None,
    severities: Sequence[str] | None,
    rules: Sequence[str] | None,
    states: Sequence[str] | None,
    item_id: str | None,
    open_only: bool,
) -> Any:
    """The page's filters as WHERE clauses; the item table is joined only for ``states``."""
    if product_id:
        stmt = stmt.where(col(FindingRecord.product_id) == product_id)
    if severities:
        stmt = stmt.where(col(FindingRecord.severity).in_(list(severities)))
    if rules:
        stmt = stmt.where(col(FindingRecord.rule_id).in_(list(rules)))
    if states:
        stmt = stmt.where(
            col(FindingRecord.item_id).in_(
                sa_select(col(Item.id)).where(col(Item.state).in_([ItemState(s) for s in states]))
            )
        )
    if item_id:
        stmt = stmt.where(col(FindingRecord.item_id) == item_id)
    if open_only:
        stmt = stmt.where(col(FindingRecord.open).is_(True))
    return stmt


def findings_page(
    ws: Workspace,
    *,
    product_id: str | None = None,
    severities: Sequence[str] | None = None,
    rules: Sequence[str] | None = None,
    states: Sequence[str] | None = None,
    open_only: bool = True,
    limit: int = FINDINGS_PAGE_SIZE,
    offset: int = 0,
) -> dict[str, Any]:
    """One page of the findings table and what the whole filtered set holds.

    ``{"rows": <columns of at most limit rows>, "total": n, "counts": {P1, P2, P3},
    "offset", "limit"}``: the page is a LIMIT/OFFSET range of the
    ``ix_finding_product_open_order`` index (worst first), the total and the counts per
    severity are one grouped COUNT; no other row is loaded.
    """
    where: dict[str, Any] = {
        "product_id": product_id,
        "severities": severities,
        "rules": rules,
        "states": states,
        "item_id": None,
        "open_only": open_only,
    }
    grouped = _filters(
        sa_select(col(FindingRecord.severity), func.count()).group_by(col(FindingRecord.severity)),
        **where,
    )
    with ws.read() as session:
        counts = {str(val(s)): int(n) for s, n in session.execute(grouped).all()}
    rows = (
        findings_table(ws, **where, limit=limit, offset=offset)
        if limit
        else {c: [] for c in FINDING_COLUMNS}
    )
    return {
        "rows": rows,
        "total": sum(counts.values()),
        "counts": {s: counts.get(s, 0) for s in SEVERITIES},
        "offset": offset,
        "limit": limit,
    }


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
    offset: int = 0,
) -> dict[str, list[Any]]:
    """Findings as columns (``FINDING_COLUMNS``), worst first; filters run in SQL.

    Columnar plain lists keep a page cheap (no ORM objects); the app wraps them in a
    DataFrame. ``limit``/``offset`` page in SQL (:func:`findings_page` adds the total): the
    page's ids are found in ``ix_finding_product_open_order`` alone (the offset skips index
    entries, not joined rows), then only those rows are read and joined to their items.
    """
    where: dict[str, Any] = {
        "product_id": product_id,
        "severities": severities,
        "rules": rules,
        "states": states,
        "item_id": item_id,
        "open_only": open_only,
    }
    order = (col(FindingRecord.severity), col(FindingRecord.rule_id), col(FindingRecord.id))
    if limit is None and not offset:
        stmt = _filters(_select_rows(), **where)
    else:
        page = _filters(sa_select(col(FindingRecord.id)), **where).order_by(*order)
        page = page.limit(limit).offset(offset)
        stmt = _select_rows().where(col(FindingRecord.id).in_(page))
    stmt = stmt.order_by(*order)
    with ws.read() as session:
        rows = session.execute(stmt).all()
    return _columns(rows)


def _columns(rows: Sequence[Any]) -> dict[str, list[Any]]:
    out: dict[str, list[Any]] = {c: [] for c in FINDING_COLUMNS}
    cols = [out[c] for c in FINDING_COLUMNS]
    for row in rows:
        for target, value in zip(cols, row, strict=True):
            target.append(value)
    out["state"] = [str(val(v)) for v in out["state"]]
    out["severity"] = [str(val(v)) for v in out["severity"]]
    out["created_at"] = [iso(v) for v in out["created_at"]]
    out["open"] = [bool(v) for v in out["open"]]
    return out


def iter_findings(
    ws: Workspace,
    *,
    product_id: str | None = None,
    severities: Sequence[str] | None = None,
    rules: Sequence[str] | None = None,
    states: Sequence[str] | None = None,
    open_only: bool = True,
    batch: int = 2000,
) -> Iterator[dict[str, Any]]:
    """Every filtered finding as a row dict, in id order, ``batch`` rows per query (keyset
    on the primary key): an export of any size holds one batch in memory."""
    last = 0
    while True:
        stmt = _select_rows(col(FindingRecord.id))
        stmt = _filters(
            stmt,
            product_id=product_id,
            severities=severities,
            rules=rules,
            states=states,
            item_id=None,
            open_only=open_only,
        )
        stmt = stmt.where(col(FindingRecord.id) > last).order_by(col(FindingRecord.id)).limit(batch)
        with ws.read() as session:
            rows = session.execute(stmt).all()
        if not rows:
            return
        last = int(rows[-1][0])
        table = _columns([row[1:] for row in rows])
        for values in zip(*table.values(), strict=True):
            yield dict(zip(FINDING_COLUMNS, values, strict=True))


def finding_rules(ws: Workspace, product_id: str | None = None) -> list[str]:
    """Rule ids that occur in the findings (for filter choices)."""
    stmt = select(FindingRecord.rule_id).distinct()
    if product_id:
        stmt = stmt.where(FindingRecord.product_id == product_id)
    with ws.read() as session:
        return sorted(str(r) for r in session.exec(stmt).all())


def write_findings(rows: Iterable[dict[str, Any]], out: IO[str], *, fmt: str = "csv") -> int:
    """Stream finding rows (:func:`iter_findings`) to ``out`` as CSV or a JSON array, one
    row at a time; returns how many were written."""
    n = 0
    if fmt == "csv":
        writer = csv.writer(out)
        writer.writerow(FINDING_COLUMNS)
        for row in rows:
            writer.writerow([row[c] for c in FINDING_COLUMNS])
            n += 1
        return n
    out.write("[")
    for n, row in enumerate(rows, start=1):
        out.write(("\n" if n == 1 else ",\n") + json.dumps(row, default=str))
    out.write("\n]\n" if n else "]\n")
    return n


def export_findings(ws: Workspace, *, fmt: str = "csv", **filters: Any) -> str:
    """Every filtered finding (not just the page shown) as CSV or JSON text, for the app's
    download buttons (built only when clicked)."""
    buf = io.StringIO()
    write_findings(iter_findings(ws, **filters), buf, fmt=fmt)
    return buf.getvalue()


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
