"""Escalation webhooks: outbox written with the event, signed delivery, retries, crash safety.

The receiver is a real http.server on 127.0.0.1 that records every request.
"""

from __future__ import annotations

import hashlib
import hmac
import http.server
import json
import os
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from policy_support import change_policy
from sqlmodel import select

from geomesh.config import ProductConfig, load_config
from geomesh.models import AuditEvent, OutboxMessage, OutboxStatus, Product, utcnow
from geomesh.services.outbox import deliver_outbox, list_outbox, retry_outbox
from geomesh.services.pipeline import ingest_rasters, validate_and_route
from geomesh.workspace import Workspace

SYSTEM = "system"
SECRET = "s3cr3t-hmac-key-for-tests"
DATED = {"TIFFTAG_DATETIME": "2024:06:12 19:03:21"}
ROOT = Path(__file__).resolve().parent.parent


@dataclass
class Received:
    headers: dict[str, str]
    body: bytes
    status: int


@dataclass
class Receiver:
    url: str
    #: status codes to answer, in order; afterwards 200
    script: list[int] = field(default_factory=list)
    requests: list[Received] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def accepted(self) -> list[Received]:
        return [r for r in self.requests if 200 <= r.status < 300]


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    rec = Receiver(url="")

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            with rec.lock:
                status = rec.script.pop(0) if rec.script else 200
                rec.requests.append(Received(dict(self.headers.items()), body, status))
            self.send_response(status)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"ok")

        def log_message(self, format: str, *args: Any) -> None:
            return None

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    rec.url = f"http://127.0.0.1:{server.server_address[1]}/hook"
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield rec
    server.shutdown()
    server.server_close()


@pytest.fixture
def hook_config(
    write_config: Callable[..., Path], receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> Callable[..., ProductConfig]:
    monkeypatch.setenv("GEOMESH_TEST_HOOK_SECRET", SECRET)

    def make(**target: Any) -> ProductConfig:
        spec = {"name": "ops", "url": receiver.url, "secret_env": "GEOMESH_TEST_HOOK_SECRET"}
        spec.update(target)
        return load_config(write_config({"governance": {"escalation": [spec]}}))

    return make


def outside_tile(make_raster: Callable[..., Path], name: str = "outside.tif") -> Path:
    return make_raster(name, width=64, height=64, count=1, origin=(245000.0, 4185000.0), tags=DATED)


def staged(ws: Workspace, cfg: ProductConfig, source: Path) -> str:
    (res,) = ingest_rasters(
        ws, cfg, [source], actor=SYSTEM, post_stage=lambda *_: ("staging", None, {})
    ).results
    assert res.status == "staged" and res.item_id, res.error
    return res.item_id


def outbox_rows(ws: Workspace) -> list[OutboxMessage]:
    with ws.read() as s:
        return list(s.exec(select(OutboxMessage)).all())


def verify(req: Received, secret: str = SECRET) -> bool:
    want = "sha256=" + hmac.new(secret.encode(), req.body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(req.headers.get("X-Geomesh-Signature", ""), want)


def later(hours: float = 2) -> Any:
    return utcnow() + timedelta(hours=hours)


# ------------------------------------------------------------------ the happy path


def test_one_signed_notification_per_event_even_after_a_500(
    workspace: Workspace,
    hook_config: Callable[..., ProductConfig],
    receiver: Receiver,
    make_raster: Callable[..., Path],
) -> None:
    cfg = hook_config()
    item_id = staged(workspace, cfg, outside_tile(make_raster))
    out = validate_and_route(workspace, cfg, item_id, actor=SYSTEM)
    assert out.action == "rollback" and len(out.outbox_ids) == 1
    (row,) = outbox_rows(workspace)  # written with the routing event, before any delivery
    assert row.status == OutboxStatus.pending and row.event == "finding"

    receiver.script = [500]
    first = deliver_outbox(workspace)
    assert first.retrying == [row.id] and first.delivered == []
    (row,) = outbox_rows(workspace)
    assert row.attempts == 1 and row.last_error == "HTTP 500 Internal Server Error"
    assert deliver_outbox(workspace).to_json() == {"delivered": [], "retrying": [], "failed": []}

    second = deliver_outbox(workspace, now=later())  # past the backoff
    assert second.delivered == [row.id]
    assert deliver_outbox(workspace, now=later(10)).delivered == []  # never sent again

    assert len(receiver.requests) == 2 and len(receiver.accepted()) == 1
    keys = {r.headers["Idempotency-Key"] for r in receiver.requests}
    assert keys == {row.idempotency_key}
    assert receiver.requests[0].body == receiver.requests[1].body  # same bytes on retry
    assert all(verify(r) for r in receiver.requests)
    assert not verify(receiver.requests[0], secret="wrong")
    body = json.loads(receiver.accepted()[0].body)
    assert body["event"] == "finding" and body["id"] == row.idempotency_key
    data = body["data"]
    assert (data["item_id"], data["action"], data["worst_severity"]) == (item_id, "rollback", "P1")
    assert data["findings"][0]["rule_id"] == "GM-BOUNDARY-001"
    (row,) = outbox_rows(workspace)
    assert row.status == OutboxStatus.delivered and row.attempts == 2
    with workspace.read() as s:
        (ev,) = s.exec(select(AuditEvent).where(AuditEvent.action == "outbox.delivered")).all()
        assert ev.details["attempts"] == 2


def test_routing_again_does_not_enqueue_again(
    workspace: Workspace,
    hook_config: Callable[..., ProductConfig],
    receiver: Receiver,
    make_raster: Callable[..., Path],
) -> None:
    cfg = hook_config()
    item_id = staged(workspace, cfg, outside_tile(make_raster))
    validate_and_route(workspace, cfg, item_id, actor=SYSTEM)
    validate_and_route(workspace, cfg, item_id, actor=SYSTEM)
    assert len(outbox_rows(workspace)) == 1
    deliver_outbox(workspace)
    deliver_outbox(workspace)
    assert len(receiver.requests) == 1


def test_targets_filter_by_severity_and_event(
    workspace: Workspace,
    hook_config: Callable[..., ProductConfig],
    make_raster: Callable[..., Path],
) -> None:
    nocrs = make_raster("nocrs.tif", width=64, height=64, count=1, crs=None, tags=DATED)
    p1_only = hook_config(severities=["P1"])
    item_id = staged(workspace, p1_only, nocrs)
    out = validate_and_route(workspace, p1_only, item_id, actor=SYSTEM)
    assert out.action == "quarantine" and out.outbox_ids == []  # P2 only: not for this target
    signoff_only = hook_config(events=["signoff_requested"])
    change_policy(workspace, signoff_only)  # the registered policy changes (audited)
    other = staged(workspace, signoff_only, outside_tile(make_raster))
    assert validate_and_route(workspace, signoff_only, other, actor=SYSTEM).outbox_ids == []
    assert outbox_rows(workspace) == []


def test_a_clean_item_escalates_nothing(
    workspace: Workspace,
    write_config: Callable[..., Path],
    receiver: Receiver,
    make_raster: Callable[..., Path],
) -> None:
    cfg = load_config(
        write_config(
            {
                "product_metadata": {
                    "platform": "sentinel-2b",
                    "instruments": ["msi"],
                    "processing_level": "L2A",
                },
                "governance": {"escalation": [{"name": "ops", "url": receiver.url}]},
            }
        )
    )
    tile = make_raster("clean.tif", width=64, height=64, count=1, tags=DATED)
    out = validate_and_route(workspace, cfg, staged(workspace, cfg, tile), actor=SYSTEM)
    assert (out.action, out.outbox_ids) == ("proceed", [])
    assert outbox_rows(workspace) == []


# ------------------------------------------------------------------ failures


def test_bounded_retries_then_failed_then_retry(
    workspace: Workspace,
    write_config: Callable[..., Path],
    receiver: Receiver,
    make_raster: Callable[..., Path],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("GEOMESH_TEST_HOOK_SECRET", SECRET)
    cfg = load_config(
        write_config(
            {
                "governance": {
                    "webhook_max_attempts": 2,
                    "escalation": [
                        {
                            "name": "ops",
                            "url": receiver.url,
                            "secret_env": "GEOMESH_TEST_HOOK_SECRET",
                        }
                    ],
                }
            }
        )
    )
    item_id = staged(workspace, cfg, outside_tile(make_raster))
    validate_and_route(workspace, cfg, item_id, actor=SYSTEM)
    receiver.script = [503, 503]
    deliver_outbox(workspace, backoff_s=1)
    report = deliver_outbox(workspace, now=later(), backoff_s=1)
    (row,) = outbox_rows(workspace)
    assert report.failed == [row.id] and row.status == OutboxStatus.failed
    (listed,) = list_outbox(workspace, status="failed")
    assert listed["id"] == row.id and "503" in listed["last_error"]
    assert deliver_outbox(workspace, now=later(50)).to_json()["delivered"] == []  # failed stays

    assert retry_outbox(workspace, [row.id], actor=SYSTEM) == [row.id]
    assert retry_outbox(workspace, [row.id], actor=SYSTEM) == []  # already pending: no-op
    assert deliver_outbox(workspace).delivered == [row.id]
    assert [r.status for r in receiver.requests] == [503, 503, 200]
    with workspace.read() as s:
        acts = [e.action for e in s.exec(select(AuditEvent)).all() if e.action.startswith("outbox")]
    assert acts == ["outbox.failed", "outbox.retry", "outbox.delivered"]


def test_an_unreachable_target_is_retried_later(
    workspace: Workspace,
    write_config: Callable[..., Path],
    make_raster: Callable[..., Path],
) -> None:
    import socket

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens here
    cfg = load_config(
        write_config(
            {"governance": {"escalation": [{"name": "gone", "url": f"http://127.0.0.1:{port}/"}]}}
        )
    )
    item_id = staged(workspace, cfg, outside_tile(make_raster))
    validate_and_route(workspace, cfg, item_id, actor=SYSTEM)
    report = deliver_outbox(workspace, timeout=1)
    assert len(report.retrying) == 1
    (row,) = outbox_rows(workspace)
    assert row.last_error and "refused" in row.last_error.lower()


# ------------------------------------------------------------------ secrets


def _everything_stored(ws: Workspace) -> str:
    with ws.read() as s:
        parts = [
            json.dumps([m.model_dump(mode="json") for m in s.exec(select(OutboxMessage)).all()]),
            json.dumps([e.model_dump(mode="json") for e in s.exec(select(AuditEvent)).all()]),
            json.dumps([p.config_json for p in s.exec(select(Product)).all()]),
        ]
    logs = "".join(p.read_text() for p in (ws.root / "logs").glob("*.jsonl"))
    return "\n".join(parts) + logs


def test_inline_secret_is_never_stored_and_needs_the_config(
    workspace: Workspace,
    write_config: Callable[..., Path],
    receiver: Receiver,
    make_raster: Callable[..., Path],
) -> None:
    inline = "inline-secret-value-42"
    cfg = load_config(
        write_config(
            {"governance": {"escalation": [{"name": "ops", "url": receiver.url, "secret": inline}]}}
        )
    )
    item_id = staged(workspace, cfg, outside_tile(make_raster))
    validate_and_route(workspace, cfg, item_id, actor=SYSTEM)
    blocked = deliver_outbox(workspace)  # the stored config only has the masked secret
    assert len(blocked.retrying) == 1 and receiver.requests == []
    (row,) = outbox_rows(workspace)
    assert row.last_error and "--config" in row.last_error
    sent = deliver_outbox(workspace, configs=[cfg], now=later())
    assert len(sent.delivered) == 1
    assert verify(receiver.requests[0], secret=inline)
    stored = _everything_stored(workspace)
    assert inline not in stored and SECRET not in stored


def test_missing_secret_env_is_reported_by_name(
    workspace: Workspace,
    hook_config: Callable[..., ProductConfig],
    receiver: Receiver,
    make_raster: Callable[..., Path],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    cfg = hook_config()
    item_id = staged(workspace, cfg, outside_tile(make_raster))
    validate_and_route(workspace, cfg, item_id, actor=SYSTEM)
    monkeypatch.delenv("GEOMESH_TEST_HOOK_SECRET")
    deliver_outbox(workspace)
    (row,) = outbox_rows(workspace)
    assert row.last_error and "GEOMESH_TEST_HOOK_SECRET" in row.last_error
    assert receiver.requests == []  # never sent unsigned when a secret is configured


# ------------------------------------------------------------------ crash safety


def _run_crashing(code: str, crash_at: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "GEOMESH_CRASH_AT": crash_at}
    return subprocess.run(
        [sys.executable, "-c", code], env=env, cwd=ROOT, capture_output=True, text=True, timeout=120
    )


def test_crash_in_the_routing_transaction_loses_and_duplicates_nothing(
    workspace: Workspace,
    hook_config: Callable[..., ProductConfig],
    receiver: Receiver,
    make_raster: Callable[..., Path],
    write_config: Callable[..., Path],
) -> None:
    cfg = hook_config()
    item_id = staged(workspace, cfg, outside_tile(make_raster))
    cfg_path = write_config(
        {
            "governance": {
                "escalation": [
                    {"name": "ops", "url": receiver.url, "secret_env": "GEOMESH_TEST_HOOK_SECRET"}
                ]
            }
        },
        name="crash.yaml",
    )
    code = (
        "from geomesh.workspace import Workspace\n"
        "from geomesh.config import load_config\n"
        "from geomesh.services.pipeline import validate_and_route\n"
        f"cfg = load_config({str(cfg_path)!r})\n"
        f"validate_and_route(Workspace.open(), cfg, {item_id!r}, actor='system')\n"
    )
    proc = _run_crashing(code, "route.before_commit#1")
    assert proc.returncode == -9, proc.stderr  # SIGKILLed inside the transaction
    assert outbox_rows(workspace) == []  # the routing event and its outbox row died together
    out = validate_and_route(workspace, cfg, item_id, actor=SYSTEM)  # the re-run
    assert out.action == "rollback" and len(outbox_rows(workspace)) == 1

    # crash after the POST, before it is marked delivered: resent later with the same key
    deliver = (
        "from geomesh.workspace import Workspace\n"
        "from geomesh.services.outbox import deliver_outbox\n"
        "deliver_outbox(Workspace.open())\n"
    )
    proc = _run_crashing(deliver, "outbox.sent#1")
    assert proc.returncode == -9, proc.stderr
    (row,) = outbox_rows(workspace)
    assert row.status == OutboxStatus.pending
    assert deliver_outbox(workspace).delivered == []  # still leased to the crashed worker
    assert deliver_outbox(workspace, now=later()).delivered == [row.id]
    keys = [r.headers["Idempotency-Key"] for r in receiver.requests]
    assert keys == [row.idempotency_key] * 2  # the receiver de-duplicates by this key
