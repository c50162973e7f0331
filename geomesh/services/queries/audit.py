"""Audit page: the filtered audit trail, its filter choices, the hash-chain check and the
JSON-lines download."""

from __future__ import annotations

import json
from typing import Any

from sqlmodel import col, select

from geomesh import audit
from geomesh.models import AuditEvent
from geomesh.services.queries._common import iso
from geomesh.workspace import Workspace


def audit_events(
    ws: Workspace,
    *,
    product_id: str | None = None,
    text: str | None = None,
    actor: str | None = None,
    action: str | None = None,
    limit: int = 1000,
) -> list[dict[str, Any]]:
    """Audit events, newest first, filtered in SQL; ``text`` matches target, action or actor."""
    stmt = select(AuditEvent).order_by(col(AuditEvent.seq).desc()).limit(limit)
    if product_id:
        stmt = stmt.where(AuditEvent.product_id == product_id)
    if actor:
        stmt = stmt.where(AuditEvent.actor == actor)
    if action:
        stmt = stmt.where(AuditEvent.action == action)
    if text:
        like = f"%{text.strip()}%"
        stmt = stmt.where(
            col(AuditEvent.target).ilike(like)
            | col(AuditEvent.action).ilike(like)
            | col(AuditEvent.actor).ilike(like)
            | col(AuditEvent.event_id).ilike(like)
        )
    with ws.read() as session:
        rows = session.exec(stmt).all()
    return [
        {
            "seq": e.seq,
            "time": iso(e.timestamp),
            "actor": e.actor,
            "action": e.action,
            "target": e.target,
            "state_before": e.state_before,
            "state_after": e.state_after,
            "details": json.dumps(e.details, sort_keys=True, default=str),
            "hash": e.hash[:16],
        }
        for e in rows
    ]


def audit_facets(ws: Workspace) -> dict[str, list[str]]:
    with ws.read() as session:
        actors = session.exec(select(AuditEvent.actor).distinct()).all()
        actions = session.exec(select(AuditEvent.action).distinct()).all()
    return {"actors": sorted(actors), "actions": sorted(actions)}


def audit_chain_status(ws: Workspace, *, full: bool = False) -> dict[str, Any]:
    """Check the hash chain: {"ok", "events", "problems": [str], "from_seq", "full"}.

    Incremental (``audit.verify_incremental``): only the events after the head the last
    clean check reached are recomputed, and the checkpoints written since; ``full=True``
    recomputes the whole chain (the Audit page's "Verify the whole chain").
    """
    with ws.read() as session:
        result = audit.verify_incremental(session, ws.audit_key, ws.store, full=full)
    return {
        "ok": not result.problems,
        "events": result.head_seq,
        "problems": [str(p) for p in result.problems],
        "from_seq": result.from_seq,
        "full": result.from_seq == 1,
    }


def audit_jsonl(ws: Workspace, *, product_id: str | None = None) -> str:
    """The audit trail as JSON lines, oldest first (for download)."""
    with ws.read() as session:
        lines = [
            json.dumps(audit.to_json(ev), sort_keys=True, default=str)
            for ev in audit.iter_events(session)
            if product_id is None or ev.product_id == product_id
        ]
    return "\n".join(lines) + ("\n" if lines else "")
