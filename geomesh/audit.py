"""The append-only, hash-chained audit trail.

Every state change appends exactly one event *in the same transaction* as the change.
Each event stores the hash of the previous one; ``verify`` recomputes the chain and
names the first event that was edited, inserted or deleted.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlmodel import Session, col, select

from geomesh.models import AuditEvent, AuditHead, utcnow

GENESIS = "0" * 64


def _canonical(event: AuditEvent) -> bytes:
    ts = event.timestamp
    body = {
        "seq": event.seq,
        "event_id": event.event_id,
        "timestamp": _iso(ts),
        "actor": event.actor,
        "action": event.action,
        "product_id": event.product_id,
        "target": event.target,
        "state_before": event.state_before,
        "state_after": event.state_after,
        "digest": event.digest,
        "details": event.details,
        "prev_hash": event.prev_hash,
    }
    return json.dumps(body, sort_keys=True, separators=(",", ":"), default=str).encode()


def _iso(ts: datetime) -> str:
    # SQLite returns naive datetimes; normalise so the hash is stable across backends
    return ts.replace(tzinfo=None).isoformat(timespec="microseconds")


def event_hash(event: AuditEvent) -> str:
    return hashlib.sha256(_canonical(event)).hexdigest()


def _head(session: Session) -> AuditHead:
    head = session.exec(select(AuditHead).where(AuditHead.id == 1).with_for_update()).first()
    if head is None:
        head = AuditHead(id=1, last_seq=0, last_hash=GENESIS)
        session.add(head)
        session.flush()
    return head


def append(
    session: Session,
    *,
    actor: str,
    action: str,
    target: str,
    product_id: str | None = None,
    state_before: str | None = None,
    state_after: str | None = None,
    digest: str | None = None,
    details: dict[str, Any] | None = None,
) -> AuditEvent:
    """Append one event to the chain inside the caller's transaction."""
    head = _head(session)
    event = AuditEvent(
        seq=head.last_seq + 1,
        event_id=str(uuid.uuid4()),
        timestamp=utcnow(),
        actor=actor,
        action=action,
        product_id=product_id,
        target=target,
        state_before=state_before,
        state_after=state_after,
        digest=digest,
        details=json.loads(json.dumps(details or {}, default=str)),
        prev_hash=head.last_hash,
        hash="",
    )
    event.hash = event_hash(event)
    session.add(event)
    head.last_seq = event.seq or 0
    head.last_hash = event.hash
    session.add(head)
    session.flush()
    return event


@dataclass(frozen=True)
class ChainProblem:
    seq: int | None
    event_id: str | None
    problem: str

    def __str__(self) -> str:
        return f"event #{self.seq} ({self.event_id}): {self.problem}"


def verify(session: Session) -> list[ChainProblem]:
    """Recompute the chain. Returns the problems found (empty when it verifies)."""
    problems: list[ChainProblem] = []
    prev_hash = GENESIS
    expected_seq = 1
    for ev in iter_events(session):
        if ev.seq != expected_seq:
            if (ev.seq or 0) > expected_seq:
                problems.append(
                    ChainProblem(
                        ev.seq,
                        ev.event_id,
                        f"events #{expected_seq}..#{(ev.seq or 1) - 1} were deleted",
                    )
                )
            else:
                problems.append(ChainProblem(ev.seq, ev.event_id, "sequence number out of order"))
        if ev.prev_hash != prev_hash:
            problems.append(
                ChainProblem(
                    ev.seq,
                    ev.event_id,
                    "previous-hash link broken (an event before it was deleted or inserted)",
                )
            )
        if event_hash(ev) != ev.hash:
            problems.append(
                ChainProblem(ev.seq, ev.event_id, "content was edited after it was written")
            )
        prev_hash = ev.hash
        expected_seq = (ev.seq or 0) + 1
    head = session.get(AuditHead, 1)
    if head is not None and (head.last_seq != expected_seq - 1 or head.last_hash != prev_hash):
        problems.append(
            ChainProblem(
                head.last_seq, None, "the newest events were deleted (chain head does not match)"
            )
        )
    return problems


def iter_events(session: Session, *, batch: int = 2000) -> Iterator[AuditEvent]:
    last: int | None = None  # no lower bound: a forged row with seq <= 0 is seen too
    while True:
        stmt = select(AuditEvent).order_by(col(AuditEvent.seq)).limit(batch)
        if last is not None:
            stmt = stmt.where(col(AuditEvent.seq) > last)
        rows = session.exec(stmt).all()
        if not rows:
            return
        yield from rows
        last = rows[-1].seq or 0


def to_json(event: AuditEvent) -> dict[str, Any]:
    return {
        "seq": event.seq,
        "event_id": event.event_id,
        "timestamp": _iso(event.timestamp) + "Z",
        "actor": event.actor,
        "action": event.action,
        "product_id": event.product_id,
        "target": event.target,
        "state_before": event.state_before,
        "state_after": event.state_after,
        "digest": event.digest,
        "details": event.details,
        "prev_hash": event.prev_hash,
        "hash": event.hash,
    }
