"""Staging → sign-off time of each item version, kept as sign-offs happen (issue 16).

The overview's KPIs (how many item versions were approved, the median and longest time
from staging to the first approval of their content, and the distribution) are index
aggregates over ``signoff_time``: one row per approved item version, written in the
transaction of the decision that changed it (:func:`record`, called by
``signoff.sign_off``). A decision costs one small query and one row, whatever the
product's size; the overview never joins the product's items to their approvals.
:func:`recompute` derives the same rows from the approvals (a check, or a bulk load).
"""

from __future__ import annotations

from sqlalchemy import func
from sqlmodel import Session, col, select

from geomesh.models import Approval, Decision, Item, SignoffTime, as_utc


def record(session: Session, item: Item) -> None:
    """Bring ``item``'s row in line with its approvals (call after the decision is flushed):
    seconds from its staging to the first approval of its content, never below 0; no row
    while no approval of its content stands."""
    first = session.exec(
        select(func.min(Approval.created_at)).where(
            Approval.item_id == item.id,
            Approval.decision == Decision.approve,
            Approval.content_digest == item.content_digest,
        )
    ).one()
    row = session.get(SignoffTime, item.id)
    if first is None:
        if row is not None:
            session.delete(row)
        return
    seconds = max((as_utc(first) - as_utc(item.created_at)).total_seconds(), 0.0)
    if row is None:
        row = SignoffTime(item_id=item.id, product_id=item.product_id, seconds=seconds)
    else:
        row.seconds = seconds
    session.add(row)


def recompute(session: Session, product_id: str) -> dict[str, float]:
    """Every approved item version's seconds, derived from the approvals (O(approvals)):
    what ``signoff_time`` holds for the product."""
    rows = session.exec(
        select(Item.id, Item.created_at, func.min(Approval.created_at))
        .join(Approval, col(Approval.item_id) == col(Item.id))
        .where(
            Item.product_id == product_id,
            Approval.decision == Decision.approve,
            col(Approval.content_digest) == col(Item.content_digest),
        )
        .group_by(col(Item.id), col(Item.created_at))
    ).all()
    return {
        item_id: max((as_utc(first) - as_utc(staged)).total_seconds(), 0.0)
        for item_id, staged, first in rows
        if first is not None
    }
