"""The outbox: escalation webhooks written with the change that caused them, then delivered.

Rows are written in the SAME transaction as the routing or governance event (unique
idempotency key: a retry or a crash neither loses nor duplicates one) and sent by
:func:`deliver_outbox` (``geomesh worker`` calls it continuously): each message is leased
to one worker (``SKIP LOCKED``, lease end from the database clock), POSTed with httpx2
(connection errors retried at once by tenacity), and recorded as delivered, retried later
with exponential backoff, or ``failed`` (the dead-letter state) after
``governance.webhook_max_attempts``. Every POST carries the message's stable
``Idempotency-Key``, so a receiver sees each message once even when a killed worker's
message is sent again. The body depends on the target's ``kind``: ``generic`` = the
geomesh envelope signed with ``X-Geomesh-Signature: sha256=<hmac hex>`` over the raw body;
``slack`` = an incoming-webhook message; ``jira`` = a REST v2 create-issue body (the
secret, if any, as a bearer token). Secrets are read at delivery time from the config or
the environment and never stored or logged.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import socket
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Final

import httpx2
from sqlmodel import Session, col, select
from tenacity import Retrying, retry_if_exception_type, stop_after_attempt, wait_exponential_jitter

from geomesh import audit, auth, faults
from geomesh.config import EscalationTarget, ProductConfig
from geomesh.db import db_now
from geomesh.errors import ConfigError, DeliveryError, NotFound
from geomesh.escalation import request_for
from geomesh.models import Item, OutboxMessage, OutboxStatus, Severity, as_utc, utcnow
from geomesh.redact import MASK, redact, redact_url, redact_value
from geomesh.services.products import registered_config
from geomesh.workspace import Workspace

log = logging.getLogger(__name__)

MASKED_SECRET: Final = "**********"
MAX_BACKOFF_S: Final = 3600.0


def idempotency_key(*parts: str) -> str:
    return "gm-" + hashlib.sha256("\x00".join(parts).encode()).hexdigest()


def enqueue_escalations(
    session: Session,
    config: ProductConfig,
    *,
    event: str,
    item: Item,
    key: str,
    payload: Mapping[str, Any],
    severities: Iterable[Severity] = (),
) -> list[int]:
    """Write one outbox row per escalation target that wants ``event`` (in the caller's txn).

    A target with a ``severities`` filter gets the event only if one of ``severities`` is in
    it (events without severities, e.g. sign-off, pass the filter). ``key`` identifies the
    event; the same (event, item, key, target) is never enqueued twice.
    """
    sevs = {Severity(s).value for s in severities}
    ids: list[int] = []
    for target in config.governance.escalation:
        if event not in target.events:
            continue
        if sevs and not sevs & set(target.severities):
            continue
        ikey = idempotency_key(event, item.product_id, item.id, key, target.name)
        existing = session.exec(
            select(OutboxMessage).where(OutboxMessage.idempotency_key == ikey)
        ).first()
        if existing is not None:
            continue
        msg = OutboxMessage(
            idempotency_key=ikey,
            product_id=item.product_id,
            target_name=target.name,
            # the row keeps a readable URL without credentials or tokens; delivery uses
            # the configured target's URL
            url=redact_url(target.url),
            event=event,
            payload=redact_value(json.loads(json.dumps(dict(payload), default=str))),
        )
        session.add(msg)
        session.flush()
        assert msg.id is not None
        ids.append(msg.id)
    return ids


@dataclass
class DeliveryReport:
    delivered: list[int] = field(default_factory=list)
    retrying: list[int] = field(default_factory=list)
    failed: list[int] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {"delivered": self.delivered, "retrying": self.retrying, "failed": self.failed}

    @property
    def count(self) -> int:
        return len(self.delivered) + len(self.retrying) + len(self.failed)


# ------------------------------------------------------------------ one POST, with retries

#: answers worth a quick retry inside one attempt (the receiver is briefly unavailable)
_TRANSIENT_STATUS: Final = frozenset({429, 502, 503, 504})


class _Transient(Exception):
    """A quick-retry answer (connection trouble); carries the reason."""


def _post(
    client: httpx2.Client,
    url: str,
    body: bytes,
    headers: Mapping[str, str],
    *,
    tries: int,
) -> str | None:
    """POST with quick retries on transport errors (tenacity, exponential backoff with
    jitter); None on a 2xx answer, else a short reason (never containing secrets). An HTTP
    error status is an attempt's answer: the outbox backs off and tries again later."""

    def once() -> str | None:
        try:
            resp = client.post(url, content=body, headers=dict(headers))
        except httpx2.TransportError as exc:
            raise _Transient(f"{type(exc).__name__}: {exc}") from exc
        if 200 <= resp.status_code < 300:
            return None
        reason = resp.reason_phrase or ""
        return f"HTTP {resp.status_code} {reason}".strip()

    try:
        for attempt in Retrying(
            retry=retry_if_exception_type(_Transient),
            stop=stop_after_attempt(max(1, tries)),
            wait=wait_exponential_jitter(multiplier=0.1, max=2.0),
            reraise=True,
        ):
            with attempt:
                return once()
    except _Transient as exc:
        return str(exc)
    raise AssertionError("unreachable")  # pragma: no cover


@dataclass(frozen=True)
class _Resolved:
    target: EscalationTarget | None
    secret: bytes | None
    max_attempts: int
    error: str | None = None
    url: str | None = None


def _resolve(ws: Workspace, msg: OutboxMessage, configs: Mapping[str, ProductConfig]) -> _Resolved:
    given = configs.get(msg.product_id)
    cfg = given
    if cfg is None:
        try:
            with ws.read() as session:
                cfg = registered_config(session, msg.product_id)
        except (NotFound, ConfigError):
            cfg = None
    if cfg is None:
        return _Resolved(None, None, 5, f"no config for product {msg.product_id!r}")
    attempts = cfg.governance.webhook_max_attempts
    target = next((t for t in cfg.governance.escalation if t.name == msg.target_name), None)
    if target is None:
        return _Resolved(
            None, None, attempts, f"escalation target {msg.target_name!r} is no longer configured"
        )
    url = target.url
    if target.url_env:
        url = os.environ.get(target.url_env, "")
        if not url.startswith(("http://", "https://")):
            return _Resolved(
                target,
                None,
                attempts,
                f"environment variable {target.url_env} (URL of target {target.name!r}) is "
                "not set to an http(s) URL",
            )
    elif given is None and MASK in target.url:
        return _Resolved(
            target,
            None,
            attempts,
            f"the URL of target {target.name!r} carries a token that is only in the product "
            "config file; pass --config to deliver",
        )
    if target.secret_env:
        value = os.environ.get(target.secret_env)
        if not value:
            return _Resolved(
                target,
                None,
                attempts,
                f"environment variable {target.secret_env} (secret of target "
                f"{target.name!r}) is not set",
            )
        return _Resolved(target, value.encode(), attempts, url=url)
    if target.secret is not None:
        value = target.secret.get_secret_value()
        if given is None and value == MASKED_SECRET:
            return _Resolved(
                target,
                None,
                attempts,
                f"the secret of target {target.name!r} is only in the product config file; pass "
                "--config to deliver, or use secret_env",
            )
        return _Resolved(target, value.encode(), attempts, url=url)
    return _Resolved(target, None, attempts, url=url)


def _claim(
    ws: Workspace,
    *,
    owner: str,
    lease: timedelta,
    now: datetime | None,
    ids: list[int] | None,
    skip: set[int],
) -> OutboxMessage | None:
    """Lease the oldest due pending message to ``owner`` (one short transaction).

    ``SELECT … FOR UPDATE SKIP LOCKED`` on PostgreSQL: concurrent workers take different
    rows. The lease ends at the DATABASE clock + ``lease`` (``now`` overrides the clock,
    for tests and ``--now``-style catch-up runs); until then no one else sends it.
    """
    with ws.transaction() as session:
        clock = as_utc(now) if now is not None else db_now(session)
        stmt = (
            select(OutboxMessage)
            .where(OutboxMessage.status == OutboxStatus.pending)
            .where(col(OutboxMessage.next_attempt_at) <= clock)
            .order_by(col(OutboxMessage.id))
            .limit(1)
            .with_for_update(skip_locked=True)
        )
        if ids is not None:
            stmt = stmt.where(col(OutboxMessage.id).in_(ids))
        if skip:
            stmt = stmt.where(col(OutboxMessage.id).not_in(sorted(skip)))
        msg = session.exec(stmt).first()
        if msg is None:
            return None
        msg.next_attempt_at = clock + lease
        msg.lease_owner = owner
        session.add(msg)
        session.flush()
        return OutboxMessage(**msg.model_dump())  # detached copy for the send


def _record(
    ws: Workspace,
    msg_id: int,
    error: str | None,
    *,
    max_attempts: int,
    backoff_s: float,
    now: datetime | None,
    actor: str,
    report: DeliveryReport,
) -> None:
    with ws.transaction() as session:
        # locked: a worker whose lease ended while it sent waits for the one that took the
        # message over, then finds it recorded (one ``outbox.delivered``, not two)
        msg = session.exec(
            select(OutboxMessage).where(OutboxMessage.id == msg_id).with_for_update()
        ).first()
        if msg is None or msg.status != OutboxStatus.pending:
            return  # another worker (after our lease ended) recorded it
        msg.attempts += 1
        msg.lease_owner = None
        if error is None:
            msg.status = OutboxStatus.delivered
            msg.delivered_at = utcnow()
            msg.last_error = None
            report.delivered.append(msg_id)
            audit.append(
                session,
                actor=actor,
                action="outbox.delivered",
                target=f"outbox:{msg_id}",
                product_id=msg.product_id,
                details={"target": msg.target_name, "event": msg.event, "attempts": msg.attempts},
            )
        else:
            msg.last_error = error[:500]
            if msg.attempts >= max_attempts:
                msg.status = OutboxStatus.failed  # the dead-letter state
                report.failed.append(msg_id)
                audit.append(
                    session,
                    actor=actor,
                    action="outbox.failed",
                    target=f"outbox:{msg_id}",
                    product_id=msg.product_id,
                    details={
                        "target": msg.target_name,
                        "event": msg.event,
                        "attempts": msg.attempts,
                        "error": msg.last_error,
                    },
                )
                log.warning(
                    "webhook %s to %s failed for good: %s", msg_id, msg.target_name, msg.last_error
                )
            else:
                delay = min(backoff_s * 2 ** (msg.attempts - 1), MAX_BACKOFF_S)
                clock = as_utc(now) if now is not None else db_now(session)
                msg.next_attempt_at = clock + timedelta(seconds=delay)
                report.retrying.append(msg_id)
        session.add(msg)


def deliver_outbox(
    ws: Workspace,
    *,
    configs: Mapping[str, ProductConfig] | Iterable[ProductConfig] | None = None,
    now: datetime | None = None,
    limit: int = 100,
    timeout: float = 5.0,
    backoff_s: float = 30.0,
    ids: Iterable[int] | None = None,
    actor: str = auth.SYSTEM,
    owner: str | None = None,
    quick_tries: int = 3,
    stop: Callable[[], bool] | None = None,
) -> DeliveryReport:
    """Send up to ``limit`` due pending messages once each; record delivered / retry later
    / failed (the dead-letter state, after ``governance.webhook_max_attempts`` attempts).

    Each message is leased to ``owner`` before it is sent (see :func:`_claim`), so two
    workers never post it at the same time; a worker killed after the POST leaves the lease
    to run out, and the message is sent again with the same ``Idempotency-Key`` (at least
    once: receivers de-duplicate by that key). Connection errors are retried at once
    (``quick_tries``, tenacity); error answers back off exponentially between attempts.
    ``stop`` is asked before each message (a worker's SIGTERM).
    """
    if configs is None:
        cfgs: dict[str, ProductConfig] = {}
    elif isinstance(configs, Mapping):
        cfgs = dict(configs)
    else:
        cfgs = {c.product_id: c for c in configs}
    owner = owner or f"{socket.gethostname()}:{os.getpid()}"
    wanted = list(ids) if ids is not None else None
    report = DeliveryReport()
    with ws.read() as session:
        auth.require(session, actor, "outbox.retry")
    # the lease covers one send with all its quick retries (each wait is at most 2 s)
    lease = timedelta(seconds=(timeout + 2.0) * max(1, quick_tries) + 1)
    seen: set[int] = set()
    with httpx2.Client(timeout=timeout, follow_redirects=False, trust_env=False) as client:
        while report.count < limit and not (stop is not None and stop()):
            snapshot = _claim(ws, owner=owner, lease=lease, now=now, ids=wanted, skip=seen)
            if snapshot is None:
                break
            assert snapshot.id is not None
            seen.add(snapshot.id)
            resolved = _resolve(ws, snapshot, cfgs)
            error = resolved.error
            if error is None:
                body, headers = request_for(resolved.target, snapshot, resolved.secret)
                url = resolved.url or snapshot.url
                error = _post(client, url, body, headers, tries=quick_tries)
                if error is not None:
                    error = redact(error, url)
                faults.point("outbox.sent")
            _record(
                ws,
                snapshot.id,
                error,
                max_attempts=resolved.max_attempts,
                backoff_s=backoff_s,
                now=now,
                actor=actor,
                report=report,
            )
    return report


def outbox_to_json(msg: OutboxMessage) -> dict[str, Any]:
    return {
        "id": msg.id,
        "idempotency_key": msg.idempotency_key,
        "product_id": msg.product_id,
        "target": msg.target_name,
        "url": redact_url(msg.url),
        "event": msg.event,
        "status": OutboxStatus(msg.status).value,
        "attempts": msg.attempts,
        "last_error": redact(msg.last_error) if msg.last_error else msg.last_error,
        "next_attempt_at": msg.next_attempt_at.isoformat(),
        "created_at": msg.created_at.isoformat(),
        "delivered_at": msg.delivered_at.isoformat() if msg.delivered_at else None,
        "payload": msg.payload,
    }


def list_outbox(
    ws: Workspace,
    *,
    status: str | None = None,
    product_id: str | None = None,
    limit: int = 200,
) -> list[dict[str, Any]]:
    """Outbox messages, newest first (no secrets: they are never stored)."""
    with ws.read() as session:
        stmt = select(OutboxMessage).order_by(col(OutboxMessage.id).desc()).limit(limit)
        if status is not None:
            try:
                st = OutboxStatus(status)
            except ValueError as exc:
                allowed = ", ".join(s.value for s in OutboxStatus)
                raise DeliveryError(
                    f"unknown outbox status {status!r}; use one of {allowed}"
                ) from exc
            stmt = stmt.where(OutboxMessage.status == st)
        if product_id is not None:
            stmt = stmt.where(OutboxMessage.product_id == product_id)
        return [outbox_to_json(m) for m in session.exec(stmt).all()]


def retry_outbox(ws: Workspace, ids: Iterable[int] | None = None, *, actor: str) -> list[int]:
    """Put failed messages back in the queue (all failed ones without ``ids``). Idempotent."""
    wanted = list(ids) if ids is not None else None
    with ws.transaction() as session:
        auth.require(session, actor, "outbox.retry")
        stmt = select(OutboxMessage).where(OutboxMessage.status == OutboxStatus.failed)
        if wanted is not None:
            found = set(
                session.exec(
                    select(OutboxMessage.id).where(col(OutboxMessage.id).in_(wanted))
                ).all()
            )
            missing = sorted(set(wanted) - found)
            if missing:
                raise NotFound(
                    f"outbox message(s) {', '.join(map(str, missing))} do not exist",
                    hint="see `geomesh outbox list`",
                )
            stmt = stmt.where(col(OutboxMessage.id).in_(wanted))
        retried: list[int] = []
        for msg in session.exec(stmt).all():
            msg.status = OutboxStatus.pending
            msg.attempts = 0
            msg.next_attempt_at = utcnow()
            session.add(msg)
            assert msg.id is not None
            retried.append(msg.id)
            audit.append(
                session,
                actor=actor,
                action="outbox.retry",
                target=f"outbox:{msg.id}",
                product_id=msg.product_id,
                details={
                    "target": msg.target_name,
                    "event": msg.event,
                    "last_error": msg.last_error,
                },
            )
    return retried
