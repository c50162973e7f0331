"""Escalation messages on the wire: the signed geomesh envelope, Slack and Jira bodies.

Pure functions of an outbox row (and its target): the exact bytes and headers POSTed,
stable across retries. ``generic`` = the geomesh envelope signed with
``X-Geomesh-Signature: sha256=<hmac hex>`` over the raw body; ``slack`` = an
incoming-webhook message (``text`` + Block Kit ``blocks``); ``jira`` = a REST v2
create-issue body (the secret, if any, as a bearer token). Delivery is
``geomesh.services.outbox``.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from datetime import UTC
from typing import Any, Final

from geomesh.config import DEFAULT_JIRA_PRIORITIES, EscalationTarget
from geomesh.models import OutboxMessage, as_utc

SIGNATURE_HEADER: Final = "X-Geomesh-Signature"
IDEMPOTENCY_HEADER: Final = "Idempotency-Key"
EVENT_HEADER: Final = "X-Geomesh-Event"


def envelope_bytes(msg: OutboxMessage) -> bytes:
    """The exact bytes POSTed (and signed): stable across retries."""
    created = as_utc(msg.created_at).astimezone(UTC).replace(tzinfo=None)
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


SEVERITY_ORDER: Final = ("P1", "P2", "P3")
#: Slack: a section block's text holds at most 3000 characters, a context block 10 elements
SLACK_TEXT_MAX: Final = 3000
JIRA_SUMMARY_MAX: Final = 255


def _worst(msg: OutboxMessage) -> str | None:
    value = msg.payload.get("worst_severity")
    return value if value in SEVERITY_ORDER else None


def _headline(msg: OutboxMessage) -> str:
    data = msg.payload
    item = data.get("item_id", "?")
    if msg.event == "finding":
        return (
            f"[{data.get('worst_severity') or '-'}] {msg.product_id}: item {item} "
            f"{data.get('action', 'routed')} ({data.get('state', '?')})"
        )
    if msg.event == "signoff_requested":
        return f"{msg.product_id}: sign-off requested for item {item}"
    if msg.event == "signoff_decided":
        return f"{msg.product_id}: item {item} {data.get('decision', 'decided')} by {data.get('decided_by', '?')}"
    return f"{msg.product_id}: {msg.event} for item {item}"


def _detail_lines(msg: OutboxMessage) -> list[str]:
    data = msg.payload
    lines: list[str] = []
    for f in data.get("findings") or []:
        lines.append(f"{f.get('severity')} {f.get('rule_id')} {f.get('path')}: {f.get('message')}")
    if data.get("quarantine_reason"):
        lines.append(f"quarantine reason: {data['quarantine_reason']}")
    if data.get("reclip_task_id") is not None:
        lines.append(f"re-clip task {data['reclip_task_id']} queued")
    if data.get("content_digest"):
        lines.append(f"content digest: {data['content_digest']}")
    callback = data.get("callback")
    if isinstance(callback, dict) and callback.get("url"):
        lines.append(f"decide: POST {callback['url']}")
    return lines


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def slack_body(msg: OutboxMessage) -> dict[str, Any]:
    """A Slack incoming-webhook message: ``text`` (the notification fallback) and
    ``blocks`` (a section with the headline and details, a context with ids)."""
    headline = _headline(msg)
    details = "\n".join(_detail_lines(msg))
    section = f"*{headline}*" + (f"\n{details}" if details else "")
    return {
        "text": _clip(headline, SLACK_TEXT_MAX),
        "blocks": [
            {"type": "section", "text": {"type": "mrkdwn", "text": _clip(section, SLACK_TEXT_MAX)}},
            {
                "type": "context",
                "elements": [
                    {"type": "mrkdwn", "text": f"event `{msg.event}`"},
                    {"type": "mrkdwn", "text": f"id `{msg.idempotency_key}`"},
                ],
            },
        ],
    }


def jira_body(target: EscalationTarget, msg: OutboxMessage) -> dict[str, Any]:
    """A Jira REST v2 create-issue body (``POST /rest/api/2/issue``): project key, summary,
    issue type, the priority of the worst severity, a description, and labels that carry
    the idempotency key (Jira itself does not de-duplicate)."""
    worst = _worst(msg) or "P3"
    priorities = {str(k): v for k, v in DEFAULT_JIRA_PRIORITIES.items()}
    priorities.update({str(k): v for k, v in target.jira_priorities.items()})
    priority = priorities[worst]
    description = "\n".join(
        [_headline(msg), "", *_detail_lines(msg), "", f"geomesh event: {msg.event}",
         f"idempotency key: {msg.idempotency_key}"]
    )  # fmt: skip
    return {
        "fields": {
            "project": {"key": target.jira_project},
            "summary": _clip(_headline(msg), JIRA_SUMMARY_MAX),
            "issuetype": {"name": target.jira_issue_type},
            "priority": {"name": priority},
            "description": description,
            "labels": ["geomesh", msg.idempotency_key],
        }
    }


def request_for(
    target: EscalationTarget | None, msg: OutboxMessage, secret: bytes | None
) -> tuple[bytes, dict[str, str]]:
    """The exact body and headers POSTed for ``msg`` to ``target`` (stable across retries)."""
    headers = {
        "Content-Type": "application/json",
        "User-Agent": "geomesh-webhook/1",
        IDEMPOTENCY_HEADER: msg.idempotency_key,
        EVENT_HEADER: msg.event,
    }
    kind = target.kind if target is not None else "generic"
    if kind == "slack":
        body = json.dumps(slack_body(msg), sort_keys=True, separators=(",", ":")).encode()
    elif kind == "jira":
        assert target is not None
        body = json.dumps(jira_body(target, msg), sort_keys=True, separators=(",", ":")).encode()
        if secret is not None:
            headers["Authorization"] = "Bearer " + secret.decode()
        return body, headers
    else:
        body = envelope_bytes(msg)
    if secret is not None:
        headers[SIGNATURE_HEADER] = sign(secret, body)
    return body, headers
