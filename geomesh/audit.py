"""The append-only, keyed hash chain of audit events.

Every state change appends exactly one event *in the same transaction* as the change.
Each event stores the HMAC-SHA256 of its canonical form (the previous event's hash
included) under a key kept outside the database (``geomesh.workspace`` loads it and hands
it to each unit of work in ``Session.info``). After a write commits, the workspace stores
the chain head as a write-once checkpoint object in the object store's ``meta`` area
(both in :mod:`geomesh.audit_info`, which needs no database).

``verify`` recomputes the chain and names each event that was edited, inserted or deleted,
and each checkpoint the database no longer matches. Someone with write access to the
database alone can neither recompute a hash (no key) nor cut the newest events unseen
(the checkpoint of a later head stays in the object store).
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final

from sqlmodel import Session, col, select

from geomesh.audit_info import (
    CHANNEL_INFO,
    CHECKPOINT_PREFIX,
    HEAD_INFO,
    KEY_INFO,
    checkpoint_mac,
)
from geomesh.errors import AuditKeyError, StorageError
from geomesh.models import AuditEvent, AuditHead, utcnow
from geomesh.redact import redact_value
from geomesh.storage import ObjectStore

GENESIS = "0" * 64


def _session_key(session: Session) -> bytes:
    key = session.info.get(KEY_INFO)
    if not isinstance(key, bytes):
        raise AuditKeyError(
            "this unit of work has no audit key, so it cannot append to the audit chain",
            hint="open sessions through Workspace.transaction() "
            "(or pass info=audit_info.keyed(key))",
        )
    return key


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


def event_hash(event: AuditEvent, key: bytes) -> str:
    """HMAC-SHA256 of the event's canonical form (its ``prev_hash`` included)."""
    return hmac.new(key, _canonical(event), hashlib.sha256).hexdigest()


#: ``Session.info`` key of the head row this session locked, with the transaction that
#: holds the lock (``_head``)
_LOCKED_HEAD: Final = "geomesh.audit_locked_head"


def _head(session: Session) -> AuditHead:
    """The chain's head row, locked until the caller's transaction ends.

    Read ``FOR UPDATE`` at the transaction's first append; later appends of the same
    transaction reuse that row, whose lock (and, on SQLite, the write lock) they already
    hold. No geomesh unit of work uses savepoints, which could release the lock early.
    """
    held = session.info.get(_LOCKED_HEAD)
    transaction = session.get_transaction()  # None between transactions
    if held is not None and transaction is not None and held[0] is transaction:
        head: AuditHead = held[1]
        return head
    found = session.exec(select(AuditHead).where(AuditHead.id == 1).with_for_update()).first()
    if found is None:
        found = AuditHead(id=1, last_seq=0, last_hash=GENESIS)
        session.add(found)
        session.flush()
    # the transaction the select ran in (it began one if none had)
    session.info[_LOCKED_HEAD] = (session.get_transaction(), found)
    return found


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
    key = _session_key(session)
    channel = session.info.get(CHANNEL_INFO)
    if channel:
        details = {**(details or {}), "channel": channel}
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
        details=redact_value(json.loads(json.dumps(details or {}, default=str))),
        prev_hash=head.last_hash,
        hash="",
    )
    event.hash = event_hash(event, key)
    session.add(event)
    head.last_seq = event.seq or 0
    head.last_hash = event.hash
    session.add(head)
    session.info[HEAD_INFO] = (head.last_seq, head.last_hash)
    return event


@dataclass(frozen=True)
class ChainProblem:
    seq: int | None
    event_id: str | None
    problem: str

    def __str__(self) -> str:
        return f"event #{self.seq} ({self.event_id}): {self.problem}"


@dataclass(frozen=True)
class Checkpoint:
    """The chain head at one moment, as stored (write-once) in the object store."""

    seq: int
    hash: str
    key: str  #: its object key, to name it in a problem


def stored_checkpoints(
    store: ObjectStore, key: bytes, *, after: int = 0
) -> tuple[list[Checkpoint], list[ChainProblem]]:
    """Every checkpoint in the store (only those past ``after``, by the sequence number in
    their name); a forged or unreadable one is a problem, not a head."""
    found: list[Checkpoint] = []
    problems: list[ChainProblem] = []
    for name in store.list("meta", CHECKPOINT_PREFIX):
        number = name[len(CHECKPOINT_PREFIX) :].removesuffix(".json")
        if after and number.isdigit() and int(number) <= after:
            continue
        try:
            doc = json.loads(store.get_bytes("meta", name))
            seq, head_hash, mac = int(doc["seq"]), str(doc["hash"]), str(doc["mac"])
        except (ValueError, KeyError, TypeError):
            problems.append(ChainProblem(None, None, f"checkpoint {name} is unreadable"))
            continue
        if not hmac.compare_digest(mac, checkpoint_mac(key, seq, head_hash)):
            problems.append(
                ChainProblem(seq, None, f"checkpoint {name} is not signed with the audit key")
            )
            continue
        found.append(Checkpoint(seq, head_hash, name))
    return sorted(found, key=lambda c: c.seq), problems


def verify(
    session: Session,
    key: bytes,
    checkpoints: Iterable[Checkpoint] = (),
    *,
    since: Checkpoint | None = None,
) -> list[ChainProblem]:
    """Recompute the chain with ``key`` and hold it against ``checkpoints``.

    ``since``: a head verified before (``verified_head``): only the events after it are
    recomputed, chained to it, and its event must still carry its hash.
    Returns the problems found (empty when it verifies), oldest first.
    """
    problems: list[ChainProblem] = []
    expected_at = {c.seq: c for c in checkpoints}
    prev_hash = GENESIS
    expected_seq = 1
    after: int | None = None
    if since is not None:
        anchor = session.get(AuditEvent, since.seq)
        if anchor is None or anchor.hash != since.hash:
            problems.append(
                ChainProblem(
                    since.seq,
                    anchor.event_id if anchor else None,
                    f"differs from the chain head verified before ({since.key}): "
                    "verify the whole chain",
                )
            )
        prev_hash, expected_seq, after = since.hash, since.seq + 1, since.seq
    for ev in iter_events(session, after=after):
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
        if not hmac.compare_digest(event_hash(ev, key), ev.hash):
            problems.append(
                ChainProblem(
                    ev.seq,
                    ev.event_id,
                    "content was edited after it was written (its keyed hash does not match)",
                )
            )
        point = expected_at.get(ev.seq or 0)
        if point is not None and point.hash != ev.hash:
            problems.append(
                ChainProblem(
                    ev.seq, ev.event_id, f"differs from the chain head recorded in {point.key}"
                )
            )
        prev_hash = ev.hash
        expected_seq = (ev.seq or 0) + 1
    last = expected_seq - 1
    beyond = [c for c in expected_at.values() if c.seq > last]
    if beyond:
        newest = max(beyond, key=lambda c: c.seq)
        problems.append(
            ChainProblem(
                newest.seq,
                None,
                f"the newest events #{last + 1}..#{newest.seq} were deleted: {newest.key} "
                f"recorded a chain of {newest.seq} events, the database has {last}",
            )
        )
    head = session.get(AuditHead, 1)
    if head is not None and (head.last_seq != last or head.last_hash != prev_hash):
        problems.append(
            ChainProblem(
                head.last_seq, None, "the newest events were deleted (chain head does not match)"
            )
        )
    return problems


def verify_stored(session: Session, key: bytes, store: ObjectStore) -> list[ChainProblem]:
    """``verify`` against every checkpoint in ``store`` (forged checkpoints reported too)."""
    checkpoints, problems = stored_checkpoints(store, key)
    return problems + verify(session, key, checkpoints)


#: where the newest verified head is remembered (object store ``meta``, signed)
VERIFIED_KEY: Final = "audit/verified.json"


def verified_head(store: ObjectStore, key: bytes) -> Checkpoint | None:
    """The chain head the last clean verification reached (None: never, or not signed with
    ``key``: then the whole chain is verified)."""
    try:
        doc = json.loads(store.get_bytes("meta", VERIFIED_KEY))
        seq, head_hash, mac = int(doc["seq"]), str(doc["hash"]), str(doc["mac"])
    except (StorageError, ValueError, KeyError, TypeError):
        return None
    good = hmac.new(key, f"verified:{seq}:{head_hash}".encode(), hashlib.sha256).hexdigest()
    if not hmac.compare_digest(mac, good):
        return None
    return Checkpoint(seq, head_hash, VERIFIED_KEY)


def remember_verified(store: ObjectStore, key: bytes, seq: int, head_hash: str) -> None:
    mac = hmac.new(key, f"verified:{seq}:{head_hash}".encode(), hashlib.sha256).hexdigest()
    body = json.dumps({"seq": seq, "hash": head_hash, "mac": mac}, sort_keys=True).encode()
    store.put_bytes("meta", VERIFIED_KEY, body, overwrite=True)


@dataclass(frozen=True)
class Verification:
    problems: list[ChainProblem]
    #: the first event recomputed (1: the whole chain)
    from_seq: int
    #: the head reached (the chain's length when it verifies)
    head_seq: int


def verify_incremental(
    session: Session, key: bytes, store: ObjectStore, *, full: bool = False
) -> Verification:
    """``verify_stored`` from the head a previous clean verification reached: the events
    after it and the checkpoints written since are checked, the rest was before. ``full``
    (or nothing remembered, or the remembered head no longer matches) recomputes the
    whole chain. A clean result is remembered for the next call."""
    since = None if full else verified_head(store, key)
    if since is not None:
        anchor = session.get(AuditEvent, since.seq)
        if anchor is None or anchor.hash != since.hash:
            since = None  # what was verified changed: recompute everything, name it
    checkpoints, problems = stored_checkpoints(store, key, after=since.seq if since else 0)
    problems += verify(session, key, checkpoints, since=since)
    head = session.get(AuditHead, 1)
    head_seq = head.last_seq if head is not None else 0
    if not problems and head is not None and (since is None or head.last_seq > since.seq):
        with contextlib.suppress(StorageError):  # only the next verification is slower
            remember_verified(store, key, head.last_seq, head.last_hash)
    return Verification(problems, since.seq + 1 if since else 1, head_seq)


def iter_events(
    session: Session, *, batch: int = 2000, after: int | None = None
) -> Iterator[AuditEvent]:
    """Events in sequence order (``after``: only those past it); without ``after`` there is
    no lower bound, so a forged row with seq <= 0 is seen too."""
    last: int | None = after
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
