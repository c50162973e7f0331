"""`geomesh api`: the inbound governance webhook served by a real uvicorn process.

The approval tool is played by this test: it receives the outbound ``signoff_requested``
webhook on a loopback receiver, and calls back ``POST /v1/signoff`` with a signed request.
Every refused request (bad signature, old timestamp, replayed key, unknown approver, the
submitter as approver, a stale digest, a non-steward) changes nothing but the audit trail.
"""

from __future__ import annotations

import dataclasses
import json
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx2
import pytest
from _worker_support import dedup_receiver, free_port, start_geomesh, stop, wait_for
from governance_support import SUBMITTER, add_users, ingest
from sqlmodel import col, select

from geomesh.config import ProductConfig, load_config
from geomesh.models import Approval, AuditEvent, Item, WebhookReceipt
from geomesh.services.integrations import add_integration
from geomesh.services.outbox import deliver_outbox
from geomesh.services.signoff import request_signoff
from geomesh.services.webhook_signoff import sign_request
from geomesh.workspace import Workspace

SECRET = "chat-approvals-secret-0123456789abcdef"
SECRET_ENV = "GEOMESH_TEST_CHAT_SECRET"
APPROVERS = {"U-ALICE": "alice", "U-BOB": "bob", "U-INGESTER": SUBMITTER, "U-ANA": "ana"}
DATED = {"TIFFTAG_DATETIME": "2024:06:12 19:03:21"}


@dataclasses.dataclass
class Api:
    base: str
    ws: Workspace
    client: httpx2.Client

    def send(
        self,
        method: str,
        path: str,
        body: dict[str, Any] | None = None,
        *,
        secret: str = SECRET,
        stamp: int | None = None,
        key: str | None = None,
        integration: str = "chat",
    ) -> httpx2.Response:
        raw = json.dumps(body).encode() if body is not None else b""
        ts = str(int(time.time()) if stamp is None else stamp)
        idem = key if key is not None else (uuid.uuid4().hex if method == "POST" else "")
        headers = {
            "X-Geomesh-Integration": integration,
            "X-Geomesh-Timestamp": ts,
            "X-Geomesh-Signature": sign_request(secret.encode(), ts, idem, method, path, raw),
            "Content-Type": "application/json",
        }
        if idem:
            headers["Idempotency-Key"] = idem
        return self.client.request(method, self.base + path, content=raw, headers=headers)


@pytest.fixture
def api(workspace: Workspace, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Api]:
    add_users(workspace)
    add_integration(workspace, "chat", secret_env=SECRET_ENV, approvers=APPROVERS, actor="root")
    monkeypatch.setenv(SECRET_ENV, SECRET)
    port = free_port()
    proc = start_geomesh(["api", "--port", str(port)], tmp_path / "api.log")
    base = f"http://127.0.0.1:{port}"
    with httpx2.Client(timeout=30, trust_env=False) as client:

        def up() -> bool:
            if proc.poll() is not None:
                raise AssertionError((tmp_path / "api.log").read_text())
            try:
                return client.get(base + "/v1/health").status_code == 200
            except httpx2.TransportError:
                return False

        try:
            wait_for(up, "geomesh api to answer")
            yield Api(base, workspace, client)
        finally:
            assert stop(proc) == 0, (tmp_path / "api.log").read_text()


@pytest.fixture
def tool_config(write_config: Callable[..., Path]) -> Callable[[str], ProductConfig]:
    def make(url: str) -> ProductConfig:
        target = {"name": "chat", "url": url, "events": ["signoff_requested"]}
        return load_config(write_config({"governance": {"escalation": [target]}}))

    return make


def _refusals(ws: Workspace) -> list[AuditEvent]:
    with ws.read() as s:
        return list(
            s.exec(
                select(AuditEvent)
                .where(AuditEvent.action == "webhook.refused")
                .order_by(col(AuditEvent.seq))
            ).all()
        )


def _approvals(ws: Workspace) -> list[tuple[str, str]]:
    with ws.read() as s:
        return sorted((a.actor, a.decision.value) for a in s.exec(select(Approval)).all())


def test_the_approval_tool_closes_the_loop_and_every_bad_request_is_refused_and_audited(
    api: Api,
    tool_config: Callable[[str], ProductConfig],
    make_raster: Callable[..., Path],
) -> None:
    ws = dataclasses.replace(
        api.ws, settings=api.ws.settings.model_copy(update={"api_url": api.base + "/"})
    )
    with dedup_receiver() as tool:
        cfg = tool_config(tool.url)
        tile = make_raster("t.tif", width=64, height=64, count=1, tags=DATED)
        (item_id,) = ingest(ws, cfg, [tile])  # submitted by SUBMITTER
        request_signoff(ws, cfg, item_id, actor="ana")
        assert deliver_outbox(ws).delivered
        (requested,) = tool.json_bodies()
    assert requested["event"] == "signoff_requested"
    callback = requested["data"]["callback"]
    assert callback["url"] == api.base + "/v1/signoff" and callback["method"] == "POST"
    good = {
        **{k: callback["body"][k] for k in ("product_id", "item_id", "content_digest")},
        "decision": "approve",
        "approver": "U-ALICE",
    }
    path = "/v1/signoff"
    assert (
        callback["status_url"] == f"{api.base}/v1/products/{cfg.product_id}/items/{item_id}/status"
    )

    def refused(resp: httpx2.Response, status: int, error: str) -> None:
        assert resp.status_code == status, resp.text
        assert resp.json()["error"] == error
        last = _refusals(ws)[-1]
        assert last.details["error"] == error
        assert _approvals(ws) == before

    before: list[tuple[str, str]] = []
    refused(api.send("POST", path, good, secret="not-the-secret"), 401, "WebhookRefused")
    refused(api.send("POST", path, good, stamp=int(time.time()) - 3600), 401, "WebhookRefused")
    refused(api.send("POST", path, good, integration="nobody"), 401, "WebhookRefused")
    refused(api.send("POST", path, {**good, "approver": "U-NOBODY"}), 403, "PermissionDenied")
    refused(api.send("POST", path, {**good, "approver": "U-INGESTER"}), 403, "PermissionDenied")
    assert "submitted" in _refusals(ws)[-1].details["reason"]
    refused(api.send("POST", path, {**good, "approver": "U-ANA"}), 403, "PermissionDenied")
    assert "analyst" in _refusals(ws)[-1].details["reason"]
    refused(api.send("POST", path, {**good, "content_digest": "0" * 64}), 409, "StaleDigest")
    assert len(_refusals(ws)) == 7

    ok = api.send("POST", path, good, key="decision-1")
    assert ok.status_code == 200, ok.text
    assert ok.json()["status"]["approved_by"] == ["alice"] and ok.json()["status"]["ok"]
    before = [("alice", "approve")]
    assert _approvals(ws) == before
    with ws.read() as s:
        (event,) = s.exec(select(AuditEvent).where(AuditEvent.action == "signoff.approve")).all()
        receipts = s.exec(select(WebhookReceipt)).all()
    assert event.actor == "alice" and event.digest == good["content_digest"]
    assert event.details["channel"] == {
        "name": "webhook",
        "integration": "chat",
        "approver": "U-ALICE",
        "idempotency_key": "decision-1",
    }
    assert {r.idempotency_key: r.outcome for r in receipts}["decision-1"] == "accepted"

    # the same request again (same key), and the same key with another body: both replays
    refused(api.send("POST", path, good, key="decision-1"), 409, "ReplayRefused")
    refused(
        api.send("POST", path, {**good, "approver": "U-BOB"}, key="decision-1"),
        409,
        "ReplayRefused",
    )
    # a refused request's key is spent too: it cannot be "fixed" into an approval
    refused_key = next(r.idempotency_key for r in receipts if r.outcome == "refused")
    refused(api.send("POST", path, {**good, "approver": "U-BOB"}, key=refused_key), 409,
            "ReplayRefused")  # fmt: skip
    assert len(_refusals(ws)) == 10

    # the read-only endpoints the tool shows (signed; no idempotency key needed)
    status = api.send("GET", f"/v1/products/{cfg.product_id}/items/{item_id}/status")
    assert status.status_code == 200, status.text
    body = status.json()
    assert body["signoff"]["approved_by"] == ["alice"]
    assert body["content_digest"] == good["content_digest"]
    releases = api.send("GET", f"/v1/products/{cfg.product_id}/releases")
    assert releases.status_code == 200 and releases.json()["releases"] == []
    unsigned = api.client.get(f"{api.base}/v1/products/{cfg.product_id}/releases")
    assert unsigned.status_code == 401
    missing = api.send("GET", f"/v1/products/{cfg.product_id}/items/nope/status")
    assert missing.status_code == 404 and missing.json()["error"] == "NotFound"
    assert api.client.get(api.base + "/v1/health").json() == {"status": "ok", "database": "ok"}


def test_a_rejection_needs_a_comment_and_counts_when_given(
    api: Api, tool_config: Callable[[str], ProductConfig], make_raster: Callable[..., Path]
) -> None:
    cfg = tool_config("http://127.0.0.1:9/unused")
    tile = make_raster("r.tif", width=64, height=64, count=1, tags=DATED)
    (item_id,) = ingest(api.ws, cfg, [tile])
    with api.ws.read() as s:
        item = s.get(Item, item_id)
        assert item is not None
        digest = item.content_digest
    body = {
        "product_id": cfg.product_id,
        "item_id": item_id,
        "content_digest": digest,
        "decision": "reject",
        "approver": "U-BOB",
    }
    bare = api.send("POST", "/v1/signoff", body)
    assert bare.status_code == 409 and bare.json()["error"] == "SignoffError"
    ok = api.send("POST", "/v1/signoff", {**body, "comment": "clouds over the bay"})
    assert ok.status_code == 200, ok.text
    assert ok.json()["status"]["rejected_by"] == [
        {"actor": "bob", "comment": "clouds over the bay"}
    ]
