"""Reading persisted findings: the latest validation run, open findings, counts per severity
(per item, for a list of ids: :mod:`geomesh.services.finding_counts`).

Validation writes findings (``services.validation``); routing, quarantine, the gates and
the read models read them through these functions only.
"""

from __future__ import annotations

from typing import Any

from sqlmodel import Session, col, func, select

from geomesh.models import FindingRecord, Severity, ValidationRun
from geomesh.validation.findings import Finding, sort_findings


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
    ``finding_counts.finding_counts`` counts the same for a list of ids, in one grouped
    query."""
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
