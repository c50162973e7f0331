"""Steward sign-off: request a review, record decisions, and the sign-off status of items.

A decision counts only for the content digest it was made on; the submitter's own approval
never counts. :func:`status_from` is the one place the status is computed: the per-item
functions here and the read models (which load decisions in bulk with
:func:`approvals_by_item`) both use it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Final

from sqlmodel import Session, col, select

from geomesh import audit, auth
from geomesh.config import ProductConfig
from geomesh.db import chunks
from geomesh.errors import PermissionDenied, SignoffError
from geomesh.models import Approval, AuditEvent, Decision, Item, utcnow
from geomesh.services import approval_times
from geomesh.services.gates import REVIEWABLE, Gate
from geomesh.services.lookup import get_item
from geomesh.services.outbox import enqueue_escalations
from geomesh.services.products import check_config
from geomesh.workspace import Workspace

_ITEMS_HINT = "list items with `geomesh items list CONFIG`"


@dataclass(frozen=True)
class SignoffStatus:
    """The sign-off state of one item version (only its current content digest counts)."""

    item_id: str
    content_digest: str
    required: int
    approved_by: tuple[str, ...]
    rejected_by: tuple[tuple[str, str], ...]
    #: decisions recorded on other content digests (they do not count)
    stale: int
    requested: bool

    @property
    def ok(self) -> bool:
        return not self.rejected_by and len(self.approved_by) >= self.required

    def gate(self) -> Gate:
        if self.rejected_by:
            who = "; ".join(f"{a}: {c}" for a, c in self.rejected_by)
            return Gate("signoff", False, f"rejected by {who}")
        have = len(self.approved_by)
        if have < self.required:
            extra = (
                f" ({self.stale} decision(s) on other content do not count)" if self.stale else ""
            )
            return Gate(
                "signoff",
                False,
                f"{have}/{self.required} steward approval(s) of digest "
                f"{self.content_digest[:12]}…{extra}; ask a steward: "
                "`geomesh signoff CONFIG ITEM_ID --approve`",
            )
        return Gate("signoff", True, f"approved by {', '.join(self.approved_by)}")

    def to_json(self) -> dict[str, Any]:
        return {
            "item_id": self.item_id,
            "content_digest": self.content_digest,
            "required": self.required,
            "approved_by": list(self.approved_by),
            "rejected_by": [{"actor": a, "comment": c} for a, c in self.rejected_by],
            "stale_decisions": self.stale,
            "requested": self.requested,
            "ok": self.ok,
        }


def approvals_by_item(session: Session, item_ids: Sequence[str]) -> dict[str, list[Approval]]:
    """Every recorded decision (on any content digest) of each of ``item_ids``, by item id,
    oldest first; an item without decisions maps to ``[]``. Chunked ``IN`` queries."""
    out: dict[str, list[Approval]] = {i: [] for i in item_ids}
    for chunk in chunks(list(out)):
        for row in session.exec(
            select(Approval).where(col(Approval.item_id).in_(chunk)).order_by(col(Approval.id))
        ).all():
            out[row.item_id].append(row)
    return out


def status_from(
    item: Item, approvals: Sequence[Approval], required: int, *, requested: bool = False
) -> SignoffStatus:
    """The sign-off status of ``item`` from its recorded decisions (``approvals``: all of
    the item's decisions, on any content digest). Pure: no query."""
    current = [r for r in approvals if r.content_digest == item.content_digest]
    approved = sorted(
        {
            r.actor
            for r in current
            if r.decision == Decision.approve and r.actor != item.submitted_by
        }
    )
    rejected = sorted((r.actor, r.comment or "") for r in current if r.decision == Decision.reject)
    return SignoffStatus(
        item_id=item.id,
        content_digest=item.content_digest,
        required=required,
        approved_by=tuple(approved),
        rejected_by=tuple(rejected),
        stale=len(approvals) - len(current),
        requested=requested,
    )


def _signoff_status(session: Session, item: Item, required: int) -> SignoffStatus:
    rows = approvals_by_item(session, [item.id])[item.id]
    requested = (
        session.exec(
            select(AuditEvent.seq).where(
                AuditEvent.action == "signoff.request",
                AuditEvent.target == item.id,
                AuditEvent.digest == item.content_digest,
            )
        ).first()
        is not None
    )
    return status_from(item, rows, required, requested=requested)


def signoff_status(ws: Workspace, config: ProductConfig, item_id: str) -> SignoffStatus:
    with ws.read() as session:
        config = check_config(session, config)
        item = get_item(session, item_id, product_id=config.product_id, hint=_ITEMS_HINT)
        return _signoff_status(session, item, config.governance.approvals_required)


def _notify(
    session: Session,
    config: ProductConfig,
    *,
    event: str,
    item: Item,
    payload: dict[str, Any],
    key: str,
) -> None:
    """Queue the governance webhook (outbox rows, in the caller's transaction)."""
    enqueue_escalations(session, config, event=event, item=item, key=key, payload=payload)


# ------------------------------------------------------------------ sign-off

#: the decisions ``POST /v1/signoff`` accepts
CALLBACK_DECISIONS: Final = ("approve", "reject")


def signoff_callback(ws: Workspace, item: Item) -> dict[str, Any]:
    """The part of ``signoff_requested`` an approval tool echoes back to ``geomesh api``:
    where to POST, and the body fields that bind the decision to this content."""
    base = (ws.settings.api_url or "").rstrip("/")
    return {
        "url": f"{base}/v1/signoff" if base else None,
        "status_url": (
            f"{base}/v1/products/{item.product_id}/items/{item.id}/status" if base else None
        ),
        "method": "POST",
        "body": {
            "product_id": item.product_id,
            "item_id": item.id,
            "content_digest": item.content_digest,
            "decision": list(CALLBACK_DECISIONS),
            "approver": "<the approver's id in your tool>",
        },
        "headers": [
            "X-Geomesh-Integration",
            "X-Geomesh-Timestamp",
            "Idempotency-Key",
            "X-Geomesh-Signature",
        ],
    }


def request_signoff(
    ws: Workspace, config: ProductConfig, item_id: str, *, actor: str
) -> SignoffStatus:
    """Ask the stewards to review an item; notifies the governance webhook. Idempotent
    per content digest (a second request for the same content is a no-op)."""
    with ws.transaction() as session:
        auth.require(session, actor, "signoff.request")
        config = check_config(session, config)  # the registered approvals_required decides
        # locked: a concurrent request waits here, then finds this one and is a no-op
        item = get_item(session, item_id, product_id=config.product_id, lock=True, hint=_ITEMS_HINT)
        if item.state not in REVIEWABLE:
            raise SignoffError(
                f"item {item.id} is in state {item.state.value!r}; sign-off can be requested "
                "only for items in 'staging' or 'validation'"
            )
        required = config.governance.approvals_required
        status = _signoff_status(session, item, required)
        if status.requested:
            return status
        audit.append(
            session,
            actor=actor,
            action="signoff.request",
            target=item.id,
            product_id=item.product_id,
            state_before=item.state.value,
            state_after=item.state.value,
            digest=item.content_digest,
            details={"approvals_required": required},
        )
        _notify(
            session,
            config,
            event="signoff_requested",
            item=item,
            payload={
                "item_id": item.id,
                "content_digest": item.content_digest,
                "requested_by": actor,
                "submitted_by": item.submitted_by,
                "approvals_required": required,
                # what an approval tool needs to call back (`geomesh api`, POST /v1/signoff)
                "callback": signoff_callback(ws, item),
            },
            key=f"signoff_requested:{item.content_digest}",
        )
        return _signoff_status(session, item, required)


def sign_off(
    ws: Workspace,
    config: ProductConfig,
    item_id: str,
    *,
    actor: str,
    approve: bool,
    comment: str | None = None,
    within: Callable[[Session, Item], None] | None = None,
) -> SignoffStatus:
    """Record a steward's decision on the item's *current content digest*.

    ``within`` runs inside the decision's transaction once the item passed the checks (the
    inbound webhook binds the decision to the digest it names and records its request id
    there, so both commit or neither does).

    Only stewards decide; the submitter cannot approve its own item; a rejection needs a
    comment. Repeating the same decision is a no-op; a different decision by the same
    steward on the same content replaces the earlier one (both are in the audit trail).
    """
    decision = Decision.approve if approve else Decision.reject
    text = (comment or "").strip() or None
    if decision is Decision.reject and text is None:
        raise SignoffError(
            f"rejecting item {item_id!r} needs a comment",
            hint="say what must change: --reject --comment TEXT",
        )
    with ws.transaction() as session:
        auth.require(session, actor, "signoff")
        config = check_config(session, config)  # the registered approvals_required decides
        # decisions on one item are serialised (PostgreSQL row lock; SQLite: BEGIN
        # IMMEDIATE): the same steward twice finds its first decision (a no-op, not a
        # duplicate row), and each decision's status counts every one committed before it
        item = get_item(session, item_id, product_id=config.product_id, lock=True, hint=_ITEMS_HINT)
        if decision is Decision.approve and actor == item.submitted_by:
            raise PermissionDenied(
                f"{actor!r} submitted item {item.id} and cannot approve it",
                hint="another steward must review it",
            )
        if item.state not in REVIEWABLE:
            raise SignoffError(
                f"item {item.id} is in state {item.state.value!r}; only items in 'staging' or "
                "'validation' can be signed off"
            )
        if within is not None:
            within(session, item)
        existing = session.exec(
            select(Approval).where(
                Approval.item_id == item.id,
                Approval.actor == actor,
                Approval.content_digest == item.content_digest,
            )
        ).first()
        required = config.governance.approvals_required
        if existing is not None and existing.decision == decision and existing.comment == text:
            return _signoff_status(session, item, required)
        previous = existing.decision.value if existing is not None else None
        if existing is None:
            session.add(
                Approval(
                    item_id=item.id,
                    content_digest=item.content_digest,
                    actor=actor,
                    decision=decision,
                    comment=text,
                )
            )
        else:
            existing.decision = decision
            existing.comment = text
            existing.created_at = utcnow()
            session.add(existing)
        session.flush()
        approval_times.record(session, item)  # the overview's sign-off times (issue 16)
        event = audit.append(
            session,
            actor=actor,
            action=f"signoff.{decision.value}",
            target=item.id,
            product_id=item.product_id,
            state_before=item.state.value,
            state_after=item.state.value,
            digest=item.content_digest,
            details={"comment": text, "previous_decision": previous},
        )
        status = _signoff_status(session, item, required)
        _notify(
            session,
            config,
            event="signoff_decided",
            item=item,
            payload={
                "item_id": item.id,
                "content_digest": item.content_digest,
                "decision": decision.value,
                "decided_by": actor,
                "comment": text,
                "approvals": len(status.approved_by),
                "approvals_required": required,
                "signed_off": status.ok,
            },
            key=f"signoff_decided:{event.event_id}",
        )
        return status
