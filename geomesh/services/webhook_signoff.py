"""The inbound governance webhook: a steward's decision from the organisation's approval tool.

Protocol (``POST /v1/signoff``, served by ``geomesh api``):

* headers ``X-Geomesh-Integration: <name>``, ``X-Geomesh-Timestamp: <unix seconds>``,
  ``Idempotency-Key: <1-128 printable characters, unique per request>`` and
  ``X-Geomesh-Signature: sha256=<hex>``, the HMAC-SHA256 under the integration's secret of
  the base string ``v1:<timestamp>:<idempotency key>:<METHOD>:<path>:`` followed by the raw
  body bytes;
* the timestamp must be within :data:`WINDOW_S` seconds of the server's clock;
* body: ``{"product_id", "item_id", "content_digest", "decision": "approve"|"reject",
  "approver": "<the tool's approver id>", "comment"}``.

The approver maps (per integration) to a geomesh user, and the decision is then recorded
by the same service call as in the app and the CLI (``services.signoff.sign_off``: steward
role, no self-approval, a rejection needs a comment), bound to ``content_digest`` (a
decision on other bytes is refused), with the request id stored in the SAME transaction:
a replayed id is refused. Every refusal is audited (``webhook.refused``); the accepted
decision's audit event records the channel ``webhook`` with the integration, the
approver id and the request id.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import json
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, select

from geomesh import audit
from geomesh.audit_info import Channel
from geomesh.errors import (
    DatabaseError,
    GeomeshError,
    PermissionDenied,
    ReplayRefused,
    StaleDigest,
    StoreUnavailable,
    WebhookRefused,
)
from geomesh.models import Item, WebhookReceipt
from geomesh.redact import redact
from geomesh.services.integrations import IntegrationInfo, find_integration
from geomesh.services.products import registered_config
from geomesh.services.signoff import SignoffStatus, sign_off
from geomesh.workspace import Workspace

INTEGRATION_HEADER: Final = "x-geomesh-integration"
TIMESTAMP_HEADER: Final = "x-geomesh-timestamp"
SIGNATURE_HEADER: Final = "x-geomesh-signature"
IDEMPOTENCY_HEADER: Final = "idempotency-key"
#: how far (seconds) a request's timestamp may be from the server's clock, either way
WINDOW_S: Final = 300
MAX_BODY_BYTES: Final = 64 * 1024
MAX_KEY_CHARS: Final = 128
#: the audit actor of a refusal whose integration is unknown
ANONYMOUS: Final = "webhook:unknown"


def signature_base(timestamp: str, key: str, method: str, path: str, body: bytes) -> bytes:
    """The bytes an integration signs: ``v1:<ts>:<key>:<METHOD>:<path>:`` + raw body."""
    return f"v1:{timestamp}:{key}:{method.upper()}:{path}:".encode() + body


def sign_request(
    secret: bytes, timestamp: str, key: str, method: str, path: str, body: bytes
) -> str:
    """The ``X-Geomesh-Signature`` value of a request (what an approval tool computes)."""
    base = signature_base(timestamp, key, method, path, body)
    return "sha256=" + hmac.new(secret, base, hashlib.sha256).hexdigest()


@dataclass(frozen=True)
class InboundRequest:
    method: str
    path: str
    #: header names lower-case
    headers: Mapping[str, str]
    body: bytes
    client: str | None = None

    def header(self, name: str) -> str:
        return self.headers.get(name, "").strip()


@dataclass(frozen=True)
class SignoffDecision:
    product_id: str
    item_id: str
    content_digest: str
    approve: bool
    approver: str
    comment: str | None


@dataclass(frozen=True)
class WebhookOutcome:
    integration: str
    idempotency_key: str
    actor: str
    status: SignoffStatus

    def to_json(self) -> dict[str, Any]:
        return {
            "accepted": True,
            "integration": self.integration,
            "idempotency_key": self.idempotency_key,
            "decided_by": self.actor,
            "status": self.status.to_json(),
        }


def authenticate(
    ws: Workspace, req: InboundRequest, *, now: float | None = None, need_key: bool = True
) -> tuple[IntegrationInfo, str]:
    """The integration whose secret signed ``req`` and the request's idempotency key.

    Raises ``WebhookRefused`` for an unknown or disabled integration, a missing header, a
    timestamp outside the window or a wrong signature (compared in constant time).
    """
    name = req.header(INTEGRATION_HEADER)
    integ = find_integration(ws, name) if name else None
    if integ is None or integ.disabled:
        raise WebhookRefused(f"unknown or disabled integration {name[:64]!r}")
    secret = os.environ.get(integ.secret_env, "")
    if not secret:
        raise WebhookRefused(
            f"the secret of integration {integ.name!r} ({integ.secret_env}) is not set on "
            "this server"
        )
    stamp = req.header(TIMESTAMP_HEADER)
    key = req.header(IDEMPOTENCY_HEADER)
    if need_key and not (0 < len(key) <= MAX_KEY_CHARS and key.isprintable()):
        raise WebhookRefused(f"the {IDEMPOTENCY_HEADER} header needs 1-{MAX_KEY_CHARS} characters")
    given = req.header(SIGNATURE_HEADER)
    want = sign_request(secret.encode(), stamp, key, req.method, req.path, req.body)
    if not given or not hmac.compare_digest(given.encode(), want.encode()):
        raise WebhookRefused(f"bad signature for integration {integ.name!r}")
    try:
        sent = int(stamp)
    except ValueError:
        raise WebhookRefused(f"{TIMESTAMP_HEADER} must be unix seconds") from None
    clock = time.time() if now is None else now
    if abs(clock - sent) > WINDOW_S:
        raise WebhookRefused(
            f"the request timestamp is {int(clock - sent)} s from the server's clock (window: "
            f"±{WINDOW_S} s)"
        )
    return integ, key


def parse_decision(body: bytes) -> SignoffDecision:
    if len(body) > MAX_BODY_BYTES:
        raise WebhookRefused(f"the body is larger than {MAX_BODY_BYTES} bytes")
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise WebhookRefused("the body is not JSON") from None
    if not isinstance(data, dict):
        raise WebhookRefused("the body must be a JSON object")
    fields = ("product_id", "item_id", "content_digest", "decision", "approver")
    missing = [f for f in fields if not isinstance(data.get(f), str) or not data[f].strip()]
    if missing:
        raise WebhookRefused(f"the body needs the string field(s): {', '.join(missing)}")
    if data["decision"] not in ("approve", "reject"):
        raise WebhookRefused("decision must be 'approve' or 'reject'")
    comment = data.get("comment")
    if comment is not None and not isinstance(comment, str):
        raise WebhookRefused("comment must be a string")
    return SignoffDecision(
        product_id=data["product_id"],
        item_id=data["item_id"],
        content_digest=data["content_digest"],
        approve=data["decision"] == "approve",
        approver=data["approver"],
        comment=comment,
    )


def _channel(integration: str, approver: str | None, key: str | None) -> dict[str, str]:
    out = {"name": Channel.webhook.value, "integration": integration}
    if approver is not None:
        out["approver"] = approver[:128]
    if key is not None:
        out["idempotency_key"] = key
    return out


def _refuse(
    ws: Workspace,
    exc: GeomeshError,
    *,
    integration: str | None,
    key: str | None,
    decision: SignoffDecision | None,
    client: str | None,
    claimed: str | None = None,
) -> None:
    """Audit a refusal (and remember an authenticated request id, so it is not retried
    into a different answer)."""
    actor = f"webhook:{integration}"[:64] if integration else ANONYMOUS
    reason = redact(str(exc))[:500]
    refused_ws = dataclasses.replace(
        ws, channel=_channel(integration or "?", decision.approver if decision else None, key)
    )
    with refused_ws.transaction() as session:
        if integration and key and not isinstance(exc, ReplayRefused):
            seen = session.exec(
                select(WebhookReceipt).where(
                    WebhookReceipt.integration == integration,
                    WebhookReceipt.idempotency_key == key,
                )
            ).first()
            if seen is None:
                session.add(
                    WebhookReceipt(
                        integration=integration,
                        idempotency_key=key,
                        outcome="refused",
                        item_id=decision.item_id if decision else None,
                        reason=reason,
                    )
                )
        audit.append(
            session,
            actor=actor,
            action="webhook.refused",
            target=f"webhook:{integration or '?'}",
            product_id=decision.product_id if decision else None,
            digest=decision.content_digest if decision else None,
            details={
                "reason": reason,
                "error": type(exc).__name__,
                "item_id": decision.item_id if decision else None,
                "decision": ("approve" if decision.approve else "reject") if decision else None,
                "client": client,
                "claimed_integration": claimed,
                "idempotency_key": key,
            },
        )


def receive_signoff(
    ws: Workspace, req: InboundRequest, *, now: float | None = None
) -> WebhookOutcome:
    """Check and record one inbound decision; every refusal raises (and is audited)."""
    integration: str | None = None
    key: str | None = None
    decision: SignoffDecision | None = None
    try:
        integ, key = authenticate(ws, req, now=now)
        integration = integ.name
        decision = parse_decision(req.body)
        with ws.read() as session:
            seen = session.exec(
                select(WebhookReceipt).where(
                    WebhookReceipt.integration == integ.name,
                    WebhookReceipt.idempotency_key == key,
                )
            ).first()
            if seen is not None:
                raise ReplayRefused(
                    f"request {key!r} of integration {integ.name!r} was received already "
                    f"({seen.outcome})"
                )
            config = registered_config(session, decision.product_id)
        if not integ.allows_product(decision.product_id):
            raise PermissionDenied(
                f"integration {integ.name!r} may not decide on product {decision.product_id!r}"
            )
        actor = integ.approvers.get(decision.approver)
        if actor is None:
            raise PermissionDenied(
                f"approver {decision.approver[:128]!r} is not mapped to a geomesh user by "
                f"integration {integ.name!r}",
                hint="an admin maps it: `geomesh integrations add … --approver ID=USER`",
            )
        wanted = decision
        request_key = key

        def bind(session: Session, item: Item) -> None:
            if item.content_digest != wanted.content_digest:
                raise StaleDigest(
                    f"the decision names content {wanted.content_digest[:12]}… but item "
                    f"{item.id} holds {item.content_digest[:12]}…",
                    hint="review the current content and decide again",
                )
            session.add(
                WebhookReceipt(
                    integration=integ.name,
                    idempotency_key=request_key,
                    outcome="accepted",
                    item_id=item.id,
                )
            )
            session.flush()  # a concurrent replay fails here (unique key), before any change

        webhook_ws = dataclasses.replace(ws, channel=_channel(integ.name, decision.approver, key))
        try:
            status = sign_off(
                webhook_ws,
                config,
                decision.item_id,
                actor=actor,
                approve=decision.approve,
                comment=decision.comment,
                within=bind,
            )
        except IntegrityError:
            raise ReplayRefused(
                f"request {key!r} of integration {integ.name!r} was received already"
            ) from None
        return WebhookOutcome(integ.name, key, actor, status)
    except (DatabaseError, StoreUnavailable):
        # an outage of a part, not a refusal: nothing is recorded against the request id,
        # so the tool's retry with the same Idempotency-Key is decided normally (API: 503)
        raise
    except GeomeshError as exc:
        _refuse(
            ws,
            exc,
            integration=integration,
            key=key,
            decision=decision,
            client=req.client,
            claimed=req.header(INTEGRATION_HEADER)[:64] or None,
        )
        raise
