"""Severity routing after validation, escalation through the outbox, webhook delivery.

Routing table per product (``validation.routing``; default P1 rollback, P2 quarantine,
P3 warn):

* ``warn`` (or no findings): log a warning and proceed: staging → validation.
* ``quarantine``: halt the tile: its object is copied to the ``quarantine`` area, the item
  becomes ``quarantined`` with ``quarantine_reason`` and ``quarantine_key``.
* ``rollback``: the item leaves staging (→ ``rolled_back``), an item it superseded returns
  to its earlier state where the lifecycle allows, cached previews under
  ``meta/previews/<item_id>`` are deleted and, when clipping can fix a boundary failure, a
  ``reclip`` task is queued.

Escalation webhooks are written to the outbox in the SAME transaction as the routing event
(unique idempotency key: a retry or a crash neither loses nor duplicates one) and sent by
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
from pathlib import Path
from typing import Any, Final

from sqlmodel import Session, col, select

from geomesh import audit, auth, faults, lifecycle
from geomesh.config import EscalationTarget, ProductConfig, RouteAction, parse_config
from geomesh.errors import ConfigError, DeliveryError, NotFound
from geomesh.models import (
    AuditEvent,
    Item,
    ItemState,
    OutboxMessage,
    OutboxStatus,
    Product,
    Severity,
    Task,
    utcnow,
)
from geomesh.validation import (
    Finding,
    count_by_severity,
    sort_findings,
    validate_document,
    worst_severity,
)
from geomesh.workspace import Workspace

log = logging.getLogger(__name__)

SIGNATURE_HEADER: Final = "X-Geomesh-Signature"
IDEMPOTENCY_HEADER: Final = "Idempotency-Key"
EVENT_HEADER: Final = "X-Geomesh-Event"
FINDING_EVENT: Final = "finding"
MASKED_SECRET: Final = "**********"
BOUNDARY_RULES: Final = ("GM-BOUNDARY-001", "GM-BOUNDARY-002")
MAX_PAYLOAD_FINDINGS: Final = 50
MAX_BACKOFF_S: Final = 3600.0
_PERMISSION: Final[dict[str, str]] = {
    "proceed": "validate",
    "warn": "validate",
    "quarantine": "quarantine",
    "rollback": "rollback",
}


@dataclass
class RouteOutcome:
    """What routing did to one item."""

    item_id: str
    #: proceed (no findings) | warn | quarantine | rollback | none (not routable now)
    action: str
    state: str
    worst_severity: str | None
    counts: dict[str, int]
    findings: list[Finding] = field(default_factory=list, repr=False)
    changed: bool = True
    outbox_ids: list[int] = field(default_factory=list)
    task_id: int | None = None
    restored_item_id: str | None = None
    invalidated: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "item_id": self.item_id,
            "action": self.action,
            "state": self.state,
            "worst_severity": self.worst_severity,
            "counts": self.counts,
            "changed": self.changed,
            "outbox_ids": self.outbox_ids,
            "task_id": self.task_id,
            "restored_item_id": self.restored_item_id,
            "invalidated": self.invalidated,
            "findings": [f.to_json() for f in self.findings],
        }


def route_action(config: ProductConfig, findings: Iterable[Finding]) -> str:
    """The routing table's action for the worst finding ("proceed" when there is none)."""
    worst = worst_severity(findings)
    if worst is None:
        return "proceed"
    action: RouteAction | None = config.validation.routing.get(worst.value)
    return action or "warn"


#: root causes first in a quarantine reason: a missing CRS explains missing proj:bbox
_CAUSE_ORDER: Final = ("CHECKSUM", "CRS", "BOUNDARY", "COG", "DRIFT", "JSON", "SCHEMA", "CONTRACT")


def _cause_rank(rule_id: str) -> int:
    family = rule_id.split("-")[1] if rule_id.count("-") >= 2 else ""
    return _CAUSE_ORDER.index(family) if family in _CAUSE_ORDER else len(_CAUSE_ORDER)


def summarize(findings: list[Finding]) -> str:
    """One line: the worst severity, then each of its rules (root causes first) once."""
    worst = worst_severity(findings)
    if worst is None:
        return "no findings"
    by_rule: dict[str, list[Finding]] = {}
    for f in sort_findings(findings):
        if f.severity is worst:
            by_rule.setdefault(f.rule_id, []).append(f)
    parts = []
    for rule_id in sorted(by_rule, key=lambda r: (_cause_rank(r), r)):
        group = by_rule[rule_id]
        more = f" (+{len(group) - 1} more)" if len(group) > 1 else ""
        parts.append(f"{rule_id} {group[0].message}{more}")
    return f"{worst.value}: " + "; ".join(parts)


def _latest_run_id(session: Session, item_id: str) -> int | None:
    from geomesh.services.validation import latest_run

    run = latest_run(session, item_id)
    return run.id if run is not None else None


def route_item(
    ws: Workspace,
    config: ProductConfig,
    item_id: str,
    findings: list[Finding],
    *,
    actor: str,
) -> RouteOutcome:
    """Apply the product's routing table to a validated item. Idempotent.

    Only items in ``staging`` or ``validation`` are routed; for any other state nothing
    changes and the outcome says ``action="none"``.
    """
    findings = sort_findings(findings)
    action = route_action(config, findings)
    worst = worst_severity(findings)
    outcome = RouteOutcome(
        item_id=item_id,
        action=action,
        state="",
        worst_severity=worst.value if worst else None,
        counts=count_by_severity(findings),
        findings=findings,
    )
    with ws.read() as session:
        auth.require(session, actor, _PERMISSION[action])
        item = _get_item(session, item_id)
        routable = ItemState(item.state) in (ItemState.staging, ItemState.validation)
        object_key, stac_key = item.object_key, item.stac_key
    if routable and action == "quarantine":
        # copies first (idempotent): the row must never point at a missing quarantine object
        ws.store.copy("staging", "quarantine", object_key)
        faults.point("quarantine.copied")
        if ws.store.exists("staging", stac_key):
            ws.store.copy("staging", "quarantine", stac_key)

    with ws.transaction() as session:
        auth.require(session, actor, _PERMISSION[action])
        item = _get_item(session, item_id)
        state = ItemState(item.state)
        run_id = _latest_run_id(session, item_id)
        details: dict[str, Any] = {
            "run_id": run_id,
            "worst_severity": outcome.worst_severity,
            "counts": outcome.counts,
            "route": action,
        }
        if state not in (ItemState.staging, ItemState.validation):
            outcome.action, outcome.changed = "none", False
        elif action in ("proceed", "warn"):
            if state is ItemState.staging:
                lifecycle.transition(
                    session,
                    item,
                    ItemState.validation,
                    actor=actor,
                    action="route.proceed",
                    details=details,
                )
            else:
                outcome.changed = False
        elif action == "quarantine":
            item.quarantine_reason = summarize(findings)
            item.quarantine_key = item.object_key
            lifecycle.transition(
                session,
                item,
                ItemState.quarantined,
                actor=actor,
                action="quarantine",
                details={**details, "reason": item.quarantine_reason},
            )
        else:  # rollback
            lifecycle.transition(
                session,
                item,
                ItemState.rolled_back,
                actor=actor,
                action="rollback",
                details=details,
            )
            outcome.restored_item_id = _restore_superseded(session, item, actor=actor)
            outcome.task_id = _queue_reclip(session, config, item, findings)
        if outcome.changed and findings:
            outcome.outbox_ids = enqueue_escalations(
                session,
                config,
                event=FINDING_EVENT,
                item=item,
                key=f"run:{run_id}:{action}",
                severities={f.severity for f in findings},
                payload={
                    "item_id": item.id,
                    "product_id": item.product_id,
                    "action": action,
                    "state": ItemState(item.state).value,
                    "worst_severity": outcome.worst_severity,
                    "counts": outcome.counts,
                    "run_id": run_id,
                    "content_digest": item.content_digest,
                    "quarantine_reason": item.quarantine_reason if action == "quarantine" else None,
                    "reclip_task_id": outcome.task_id,
                    "findings": [
                        {k: f.to_json()[k] for k in ("rule_id", "severity", "path", "message")}
                        for f in findings[:MAX_PAYLOAD_FINDINGS]
                    ],
                },
            )
        outcome.state = ItemState(item.state).value
        faults.point("route.before_commit")

    if outcome.changed and action == "rollback":
        outcome.invalidated = invalidate_previews(ws, item_id)
    if outcome.changed and action == "warn":
        log.warning(
            "item %s proceeds with warnings: %s",
            item_id,
            summarize(findings),
            extra={"item": item_id},
        )
    return outcome


def validate_and_route(
    ws: Workspace, config: ProductConfig, item_id: str, *, actor: str, strict: bool = False
) -> RouteOutcome:
    """Validate a staged item (findings persisted) and route it by its worst severity."""
    from geomesh.services.validation import validate_item

    findings = validate_item(ws, config, item_id, actor=actor, strict=strict)
    return route_item(ws, config, item_id, findings, actor=actor)


def post_stage(
    ws: Workspace, config: ProductConfig, item_id: str, actor: str
) -> tuple[str | None, str | None, dict[str, int]]:
    """The ingest pipeline hook: (state, route action, counts per severity)."""
    out = validate_and_route(ws, config, item_id, actor=actor)
    return out.state, out.action, out.counts


def dry_run_findings(
    ws: Workspace, config: ProductConfig, stac: dict[str, Any], cog_path: Path
) -> tuple[dict[str, int], str | None]:
    """The counts and route a tile would get, without writing anything."""
    findings = validate_document(
        stac, config=config, schema_dir=ws.schema_dir, raster_path=cog_path
    )
    return count_by_severity(findings), route_action(config, findings)


def _get_item(session: Session, item_id: str) -> Item:
    item = session.get(Item, item_id)
    if item is None:
        raise NotFound(
            f"item {item_id!r} does not exist", hint="see `geomesh items list` for item ids"
        )
    return item


def _restore_superseded(session: Session, item: Item, *, actor: str) -> str | None:
    """Return the version ``item`` superseded to its earlier state, where that is legal."""
    if not item.supersedes:
        return None
    prev = session.get(Item, item.supersedes)
    if prev is None or ItemState(prev.state) is not ItemState.superseded:
        return None
    event = session.exec(
        select(AuditEvent)
        .where(AuditEvent.target == prev.id, AuditEvent.state_after == ItemState.superseded.value)
        .order_by(col(AuditEvent.seq).desc())
        .limit(1)
    ).first()
    if event is None or not event.state_before:
        return None
    prior = ItemState(event.state_before)
    if not lifecycle.can_transition(ItemState.superseded, prior):
        return None
    lifecycle.transition(
        session,
        prev,
        prior,
        actor=actor,
        action="rollback.restore",
        details={"rolled_back": item.id},
    )
    return prev.id


def _queue_reclip(
    session: Session, config: ProductConfig, item: Item, findings: list[Finding]
) -> int | None:
    """A re-clip task when a boundary failure caused the rollback and clipping is off."""
    if config.ingestion.clip:
        return None
    boundary = [f for f in findings if f.rule_id in BOUNDARY_RULES and f.severity is Severity.P1]
    if not boundary:
        return None
    existing = session.exec(
        select(Task).where(Task.item_id == item.id, Task.kind == "reclip", Task.status == "queued")
    ).first()
    if existing is not None:
        return existing.id
    task = Task(
        product_id=item.product_id,
        item_id=item.id,
        kind="reclip",
        details={
            "source": item.source,
            "rules": sorted({f.rule_id for f in boundary}),
            "overlap_fraction": boundary[0].context.get("overlap_fraction"),
            "hint": "enable ingestion.clip in the product config and ingest the source again",
        },
    )
    session.add(task)
    session.flush()
    return task.id


def invalidate_previews(ws: Workspace, item_id: str) -> list[str]:
    """Delete cached previews/manifests of ``item_id`` (meta keys under previews/<item_id>)."""
    prefix = f"previews/{item_id}"
    removed: list[str] = []
    for key in list(ws.store.list("meta", prefix)):
        rest = key[len(prefix) :]
        if rest == "" or rest[0] in "/.":
            ws.store.delete("meta", key)
            removed.append(key)
    return removed


# --------------------------------------------------------------------------- outbox


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


def _product_config(ws: Workspace, product_id: str) -> ProductConfig | None:
    with ws.read() as session:
        product = session.get(Product, product_id)
        if product is None:
            return None
        data = dict(product.config_json)
    try:
        return parse_config(data, source=f"product {product_id} (stored config)")
    except ConfigError:
        return None


def _resolve(ws: Workspace, msg: OutboxMessage, configs: Mapping[str, ProductConfig]) -> _Resolved:
    given = configs.get(msg.product_id)
    cfg = given or _product_config(ws, msg.product_id)
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
