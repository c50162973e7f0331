"""Reading persisted findings: the latest validation run, open findings, counts per severity.

Validation writes findings (``services.validation``); routing, quarantine, the gates and
the read models read them through these functions only.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from sqlmodel import Session, col, func, select

from geomesh.models import FindingRecord, Severity, ValidationRun
from geomesh.services.lookup import chunks
from geomesh.validation.findings import Finding, sort_findings

_SEVERITY_VALUES = tuple(s.value for s in Severity)


def zero_counts() -> dict[str, int]:
    """``{"P1": 0, "P2": 0, "P3": 0}``."""
    return dict.fromkeys(_SEVERITY_VALUES, 0)


def latest_run(session: Session, item_id: str) -> ValidationRun | None:
    """The item's most recent validation run, if it was ever validated."""
    return session.exec(
        select(ValidationRun)
        .where(ValidationRun.item_id == item_id)
        .order_by(col(ValidationRun.id).desc())
        .limit(1)
    ).first()


def record_to_finding(rec: FindingRecord) -> Finding:
    return Finding(
        rule_id=rec.rule_id,
        severity=Severity(rec.severity),
        item_id=rec.item_id,
        path=rec.path,
        message=rec.message,
        remediation=rec.remediation,
        context=dict(rec.context or {}),
    )


def open_findings(session: Session, item_id: str) -> list[Finding]:
    """The item's open findings (those of its latest validation run), worst first."""
    rows = session.exec(
        select(FindingRecord).where(
            FindingRecord.item_id == item_id, col(FindingRecord.open).is_(True)
        )
    ).all()
    return sort_findings(record_to_finding(r) for r in rows)


def open_count_columns(item_id: Any) -> list[Any]:
    """Per row of a statement over items, its open findings of each severity (P1, P2, P3
    order) as correlated scalar subqueries on ``item_id`` (the statement's item id column):
    counted in ``ix_finding_item_open_severity``, in the same statement as the rows.
    :func:`finding_counts` counts the same for a list of ids, in one grouped query."""
    return [
        select(func.count())
        .where(
            col(FindingRecord.item_id) == item_id,
            col(FindingRecord.open).is_(True),
            col(FindingRecord.severity) == severity,
        )
        .scalar_subquery()
        for severity in Severity
    ]


def finding_counts(
    session: Session,
    item_ids: Iterable[str] | None = None,
    *,
    product_id: str | None = None,
) -> dict[str, dict[str, int]]:
    """Open findings per item and severity: ``{item_id: {"P1": n, "P2": n, "P3": n}}``.

    With ``item_ids``, every one of them is in the result (zeros where it has none); without,
    only the items (of ``product_id``, when given) that have an open finding.
    """
    base = select(FindingRecord.item_id, FindingRecord.severity, func.count()).where(
        col(FindingRecord.open).is_(True)
    )
    if product_id is not None:
        base = base.where(FindingRecord.product_id == product_id)
    base = base.group_by(col(FindingRecord.item_id), col(FindingRecord.severity))
    out: dict[str, dict[str, int]] = {}
    if item_ids is None:
        statements = [base]
    else:
        ids = list(item_ids)
        out = {i: zero_counts() for i in ids}
        statements = [base.where(col(FindingRecord.item_id).in_(c)) for c in chunks(ids)]
    for stmt in statements:
        for item_id, severity, n in session.exec(stmt).all():
            out.setdefault(item_id, zero_counts())[Severity(severity).value] = int(n)
    return out
