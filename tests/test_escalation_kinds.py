"""Typed escalation targets: Slack incoming-webhook messages and Jira create-issue bodies.

The bodies geomesh POSTs to a loopback receiver are checked against JSON Schemas written
from each service's documented request format (``tests/schemas/``; each schema's
``$comment`` names the format it encodes). The escalation table follows the product
owner's guide: P3 → the domain steward channel (Slack), P2 → a platform + GIS steward
ticket (Jira), P1 → the review board (generic signed JSON) + the incident commander (Jira).
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from _worker_support import dedup_receiver
from sqlmodel import select

from geomesh.config import EscalationTarget, ProductConfig, load_config
from geomesh.errors import ConfigError
from geomesh.escalation import jira_body, slack_body
from geomesh.models import OutboxMessage
from geomesh.services.outbox import deliver_outbox
from geomesh.services.pipeline import ingest_rasters
from geomesh.workspace import Workspace

SCHEMAS = Path(__file__).parent / "schemas"
DATED = {"TIFFTAG_DATETIME": "2024:06:12 19:03:21"}
SECRET = "review-board-secret-0123456789"
JIRA_TOKEN = "jira-personal-access-token-xyz"


def schema(name: str) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads((SCHEMAS / name).read_text())
    jsonschema.Draft202012Validator.check_schema(doc)
    return doc


SLACK = schema("slack_incoming_webhook.schema.json")
JIRA = schema("jira_create_issue_v2.schema.json")


def errors(doc: dict[str, Any], body: Any) -> list[str]:
    return [e.message for e in jsonschema.Draft202012Validator(doc).iter_errors(body)]


@pytest.fixture
def guide_config(
    write_config: Callable[..., Path], monkeypatch: pytest.MonkeyPatch
) -> Callable[[str], ProductConfig]:
    monkeypatch.setenv("GEOMESH_TEST_BOARD_SECRET", SECRET)
    monkeypatch.setenv("GEOMESH_TEST_JIRA_TOKEN", JIRA_TOKEN)

    def make(url: str) -> ProductConfig:
        monkeypatch.setenv("GEOMESH_TEST_SLACK_URL", url + "/slack/T000/B000/XXXX")

        def jira() -> dict[str, Any]:  # a fresh dict each time (no YAML aliases)
            return {"kind": "jira", "url": url + "/rest/api/2/issue",
                    "secret_env": "GEOMESH_TEST_JIRA_TOKEN", "events": ["finding"]}  # fmt: skip

        targets = [
            {"name": "steward-channel", "kind": "slack", "severities": ["P3"],
             "url": "https://hooks.slack.example/services/stewards",
             "url_env": "GEOMESH_TEST_SLACK_URL", "events": ["finding"]},
            {**jira(), "name": "gis-ticket", "severities": ["P2"], "jira_project": "GIS"},
            {"name": "review-board", "url": url + "/board", "severities": ["P1"],
             "secret_env": "GEOMESH_TEST_BOARD_SECRET", "events": ["finding"]},
            {**jira(), "name": "incident-commander", "severities": ["P1"],
             "jira_project": "INC", "jira_issue_type": "Incident"},
        ]  # fmt: skip
        return load_config(write_config({"governance": {"escalation": targets}}))

    return make


def test_each_severity_reaches_its_targets_in_their_documented_formats(
    workspace: Workspace,
    guide_config: Callable[[str], ProductConfig],
    make_raster: Callable[..., Path],
) -> None:
    with dedup_receiver() as rec:
        cfg = guide_config(rec.url.removesuffix("/hook"))
        tiles = {
            "P1": make_raster("out.tif", width=64, height=64, count=1,
                              origin=(245000.0, 4185000.0), tags=DATED),
            "P2": make_raster("nocrs.tif", width=64, height=64, count=1, crs=None, tags=DATED),
            "P3": make_raster("p3.tif", width=64, height=64, count=1, tags=DATED),
        }  # fmt: skip
        report = ingest_rasters(workspace, cfg, list(tiles.values()), actor="system")
        routes = [r.route for r in report.results]
        assert routes == ["rollback", "quarantine", "warn"], report.to_json()
        sent = deliver_outbox(workspace)
        assert sent.failed == [] and sent.retrying == []
        with rec.lock:
            hits = list(rec.first.values())
    with workspace.read() as s:
        targets = {m.idempotency_key: m.target_name for m in s.exec(select(OutboxMessage))}
    by_target = {targets[h.key]: h for h in hits}
    assert set(by_target) == {"steward-channel", "gis-ticket", "review-board",
                              "incident-commander"}  # fmt: skip

    slack = by_target["steward-channel"]
    body = json.loads(slack.body)
    assert errors(SLACK, body) == []
    assert "X-Geomesh-Signature" not in slack.headers  # Slack verifies nothing of ours
    assert body["text"].startswith("[P3]") and "warn" in body["text"]

    for name, project, issue_type, priority in (
        ("gis-ticket", "GIS", "Task", "High"),
        ("incident-commander", "INC", "Incident", "Highest"),
    ):
        hit = by_target[name]
        issue = json.loads(hit.body)
        assert errors(JIRA, issue) == [], name
        fields = issue["fields"]
        assert (fields["project"]["key"], fields["issuetype"]["name"]) == (project, issue_type)
        assert fields["priority"]["name"] == priority
        assert hit.key in fields["labels"]  # Jira does not de-duplicate: the key travels
        assert hit.headers["Authorization"] == f"Bearer {JIRA_TOKEN}"

    board = by_target["review-board"]
    want = "sha256=" + hmac.new(SECRET.encode(), board.body, hashlib.sha256).hexdigest()
    assert board.headers["X-Geomesh-Signature"] == want
    assert json.loads(board.body)["data"]["worst_severity"] == "P1"
    # no secret or token is stored with the messages
    with workspace.read() as s:
        stored = json.dumps([m.model_dump(mode="json") for m in s.exec(select(OutboxMessage))])
    assert JIRA_TOKEN not in stored and SECRET not in stored and "B000/XXXX" not in stored


def test_the_schemas_catch_a_malformed_body() -> None:
    """The schemas are not vacuous: bodies that break each documented format fail."""
    msg = OutboxMessage(
        idempotency_key="gm-abc",
        product_id="p",
        target_name="t",
        url="http://127.0.0.1/",
        event="finding",
        payload={"item_id": "i", "worst_severity": "P3", "findings": [
            {"severity": "P3", "rule_id": "R", "path": "x", "message": "m" * 5000}]},
    )  # fmt: skip
    body = slack_body(msg)
    assert errors(SLACK, body) == []  # long details are cut to Slack's 3000 characters
    assert errors(SLACK, {"blocks": body["blocks"]})  # no fallback text
    bad_section = {**body, "blocks": [{"type": "section", "text": {"type": "html", "text": "x"}}]}
    assert errors(SLACK, bad_section)
    cfg_target = load_config_target()
    issue = jira_body(cfg_target, msg)
    assert errors(JIRA, issue) == []
    assert issue["fields"]["priority"]["name"] == "Medium"  # P3
    assert errors(JIRA, {"fields": {**issue["fields"], "project": {}}})
    assert errors(JIRA, {"fields": {**issue["fields"], "labels": ["has space"]}})
    long = {**issue["fields"], "summary": "s" * 300}
    assert errors(JIRA, {"fields": long})


def load_config_target() -> EscalationTarget:
    return EscalationTarget(
        name="t", kind="jira", url="https://jira.example/rest/api/2/issue", jira_project="GIS"
    )


def test_a_jira_target_needs_a_project(write_config: Callable[..., Path]) -> None:
    target = {"name": "t", "kind": "jira", "url": "https://jira.example/rest/api/2/issue"}
    with pytest.raises(ConfigError, match="jira_project"):
        load_config(write_config({"governance": {"escalation": [target]}}))
