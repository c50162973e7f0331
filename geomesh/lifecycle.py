"""The item lifecycle state machine: one constant table of legal transitions."""

from __future__ import annotations

from typing import Any, Final

from sqlmodel import Session

from geomesh import audit
from geomesh.errors import InvalidTransition
from geomesh.models import Item, ItemState, utcnow

S = ItemState

#: current state -> states it may move to
TRANSITIONS: Final[dict[ItemState, frozenset[ItemState]]] = {
    S.staging: frozenset({S.validation, S.quarantined, S.rolled_back, S.superseded}),
    S.validation: frozenset({S.production, S.staging, S.quarantined, S.rolled_back, S.superseded}),
    S.production: frozenset({S.withdrawn, S.superseded, S.deprecated}),
    S.quarantined: frozenset({S.staging, S.discarded}),
    # a P1-routed tile may be staged again (never released as it was)
    S.rolled_back: frozenset({S.staging}),
    # a withdrawn release item returns when a release that holds it is current again
    S.withdrawn: frozenset({S.production}),
    # a P1 rollback restores the version a failed re-ingest superseded, wherever it was
    S.superseded: frozenset({S.production, S.staging, S.validation}),
    S.deprecated: frozenset(),
    S.discarded: frozenset(),
}


def can_transition(current: ItemState, target: ItemState) -> bool:
    return target in TRANSITIONS[current]


def transition(
    session: Session,
    item: Item,
    target: ItemState,
    *,
    actor: str,
    action: str,
    details: dict[str, Any] | None = None,
) -> None:
    """Move ``item`` to ``target`` and append the audit event, in the caller's transaction."""
    current = ItemState(item.state)
    if not can_transition(current, target):
        raise InvalidTransition(current.value, target.value, item_id=item.id)
    item.state = target
    item.updated_at = utcnow()
    session.add(item)
    audit.append(
        session,
        actor=actor,
        action=action,
        target=item.id,
        product_id=item.product_id,
        state_before=current.value,
        state_after=target.value,
        digest=item.content_digest,
        details=details,
    )
