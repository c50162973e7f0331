"""The outbox: escalation webhooks written with the change that caused them, then delivered.

Rows are written in the SAME transaction as the routing or governance event (unique
idempotency key: a retry or a crash neither loses nor duplicates one) and sent by
:func:`deliver_outbox`: JSON body, ``X-Geomesh-Signature: sha256=<hmac hex>`` over the raw
body, ``Idempotency-Key``, bounded retries with exponential backoff. Secrets are read at
delivery time from the config or the environment and never stored or logged.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import urllib.error
import urllib.request
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Final

from sqlmodel import Session, col, select

from geomesh import audit, auth, faults
from geomesh.config import EscalationTarget, ProductConfig
from geomesh.errors import ConfigError, DeliveryError, NotFound
from geomesh.models import Item, OutboxMessage, OutboxStatus, Severity, utcnow
from geomesh.services.products import registered_config
from geomesh.workspace import Workspace

log = logging.getLogger(__name__)

SIGNATURE_HEADER: Final = "X-Geomesh-Signature"
IDEMPOTENCY_HEADER: Final = "Idempotency-Key"
EVENT_HEADER: Final = "X-Geomesh-Event"
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
            url=target.url,
            event=event,
            payload=json.loads(json.dumps(dict(payload), default=str)),
        )
        session.add(msg)
        session.flush()
        assert msg.id is not None
        ids.append(msg.id)
    return ids


def envelope_bytes(msg: OutboxMessage) -> bytes:
    """The exact bytes POSTed (and signed): stable across retries."""
    created = _aware(msg.created_at).astimezone(UTC).replace(tzinfo=None)
    created_text = created.isoformat(timespec="seconds") + "Z"
    body = {
        "id": msg.idempotency_key,
        "event": msg.event,
        "product_id": msg.product_id,
        "created_at": created_text,
        "data": msg.payload,
    }
    return json.dumps(body, sort_keys=True, separators=(",", ":")).encode()


def sign(secret: bytes, body: bytes) -> str:
    """The signature header value: ``sha256=<hex HMAC-SHA256 of the raw body>``."""
    return "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()


@dataclass
class DeliveryReport:
    delivered: list[int] = field(default_factory=list)
    retrying: list[int] = field(default_factory=list)
    failed: list[int] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {"delivered": self.delivered, "retrying": self.retrying, "failed": self.failed}


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """A webhook that redirects is an error, never a silent GET elsewhere."""

    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


def _post(url: str, body: bytes, headers: Mapping[str, str], timeout: float) -> str | None:
    """POST once; None on a 2xx answer, else a short reason (never containing secrets)."""
    opener = urllib.request.build_opener(_NoRedirect)
    req = urllib.request.Request(url, data=body, headers=dict(headers), method="POST")
    try:
        with opener.open(req, timeout=timeout) as resp:
            status = int(resp.status)
            resp.read(1024)
    except urllib.error.HTTPError as exc:
        return f"HTTP {exc.code} {exc.reason}"
    except (urllib.error.URLError, TimeoutError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        return f"{type(exc).__name__}: {reason}"
    if 200 <= status < 300:
        return None
    return f"HTTP {status}"


@dataclass(frozen=True)
class _Resolved:
    target: EscalationTarget | None
    secret: bytes | None
    max_attempts: int
    error: str | None = None


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
        return _Resolved(target, value.encode(), attempts)
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
        return _Resolved(target, value.encode(), attempts)
    return _Resolved(target, None, attempts)


def _aware(ts: datetime) -> datetime:
    """SQLite hands back naive UTC timestamps; make them comparable with aware ones."""
    return ts if ts.tzinfo is not None else ts.replace(tzinfo=UTC)


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
) -> DeliveryReport:
    """Send due pending messages once each; record delivered / retry later / failed.

    A message is claimed (its next attempt moved past the send timeout) before it is sent,
    so two workers do not post it at the same time; receivers de-duplicate by
    ``Idempotency-Key`` in any case. After ``governance.webhook_max_attempts`` failed
    attempts a message is ``failed`` (see `geomesh outbox list`, `geomesh outbox retry`).
    """
    if configs is None:
        cfgs: dict[str, ProductConfig] = {}
    elif isinstance(configs, Mapping):
        cfgs = dict(configs)
    else:
        cfgs = {c.product_id: c for c in configs}
    now = _aware(now) if now is not None else utcnow()
    report = DeliveryReport()
    with ws.read() as session:
        auth.require(session, actor, "outbox.retry")
        stmt = (
            select(OutboxMessage.id)
            .where(OutboxMessage.status == OutboxStatus.pending)
            .where(col(OutboxMessage.next_attempt_at) <= now)
            .order_by(col(OutboxMessage.id))
            .limit(limit)
        )
        if ids is not None:
            stmt = stmt.where(col(OutboxMessage.id).in_(list(ids)))
        due = [i for i in session.exec(stmt).all() if i is not None]
    lease = timedelta(seconds=timeout * 2 + 1)
    for msg_id in due:
        with ws.transaction() as session:  # claim
            msg = session.get(OutboxMessage, msg_id)
            if (
                msg is None
                or msg.status != OutboxStatus.pending
                or _aware(msg.next_attempt_at) > now
            ):
                continue
            msg.next_attempt_at = now + lease
            session.add(msg)
            snapshot = OutboxMessage(**msg.model_dump())  # detached copy for the send
        resolved = _resolve(ws, snapshot, cfgs)
        error = resolved.error
        if error is None:
            body = envelope_bytes(snapshot)
            headers = {
                "Content-Type": "application/json",
                "User-Agent": "geomesh-webhook/1",
                IDEMPOTENCY_HEADER: snapshot.idempotency_key,
                EVENT_HEADER: snapshot.event,
            }
            if resolved.secret is not None:
                headers[SIGNATURE_HEADER] = sign(resolved.secret, body)
            error = _post(snapshot.url, body, headers, timeout)
            faults.point("outbox.sent")
        with ws.transaction() as session:
            msg = session.get(OutboxMessage, msg_id)
            if msg is None or msg.status != OutboxStatus.pending:
                continue
            msg.attempts += 1
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
                    details={
                        "target": msg.target_name,
                        "event": msg.event,
                        "attempts": msg.attempts,
                    },
                )
            else:
                msg.last_error = error[:500]
                if msg.attempts >= resolved.max_attempts:
                    msg.status = OutboxStatus.failed
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
                        "webhook %s to %s failed for good: %s",
                        msg_id,
                        msg.target_name,
                        msg.last_error,
                    )
                else:
                    delay = min(backoff_s * 2 ** (msg.attempts - 1), MAX_BACKOFF_S)
                    msg.next_attempt_at = now + timedelta(seconds=delay)
                    report.retrying.append(msg_id)
            session.add(msg)
    return report


def outbox_to_json(msg: OutboxMessage) -> dict[str, Any]:
    return {
        "id": msg.id,
        "idempotency_key": msg.idempotency_key,
        "product_id": msg.product_id,
        "target": msg.target_name,
        "url": msg.url,
        "event": msg.event,
        "status": OutboxStatus(msg.status).value,
        "attempts": msg.attempts,
        "last_error": msg.last_error,
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
