"""The audit trail: verify detects edited, inserted and deleted events; export; users CLI."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import governance_support as gs
import pytest
from click.testing import CliRunner
from sqlalchemy import text
from sqlmodel import select

from geomesh import audit
from geomesh.config import ProductConfig
from geomesh.errors import AlreadyExists, PermissionDenied
from geomesh.models import AuditEvent, Role
from geomesh.services import history, promotion, rollback, users
from geomesh.workspace import Workspace


@pytest.fixture
def ws(workspace: Workspace, config: ProductConfig, make_raster: Callable[..., Path]) -> Workspace:
    """A catalog with some history: users, ingest, sign-off, a release and a rollback."""
    gs.add_users(workspace)
    tile = gs.tile_factory(make_raster)
    for n, name in enumerate(("a", "b")):
        ids = gs.ingest(workspace, config, [tile(name, n)])
        gs.approve(workspace, config, ids)
        promotion.promote(workspace, config, actor="alice")
    rollback.rollback_release(workspace, config, actor="bob")
    return workspace


def events(ws: Workspace) -> list[AuditEvent]:
    with ws.read() as s:
        return list(s.exec(select(AuditEvent).order_by(AuditEvent.seq)).all())  # type: ignore[arg-type]


def raw(ws: Workspace, sql: str, **params: object) -> None:
    with ws.engine.begin() as conn:
        conn.execute(text(sql), params)


def test_history_verifies_and_covers_every_change(ws: Workspace) -> None:
    assert history.verify_audit(ws) == []
    actions = {e.action for e in events(ws)}
    assert {
        "user.add",
        "ingest",
        "route.proceed",
        "signoff.approve",
        "promote",
        "release.publish",
        "rollback.release",
    } <= actions


def test_edited_event_is_named(ws: Workspace) -> None:
    victim = next(e for e in events(ws) if e.action == "signoff.approve")
    raw(ws, "UPDATE auditevent SET actor = 'mallory' WHERE seq = :s", s=victim.seq)
    problems = history.verify_audit(ws)
    assert [(p.seq, p.event_id) for p in problems] == [(victim.seq, victim.event_id)]
    assert "edited" in problems[0].problem


def test_deleted_event_is_named(ws: Workspace) -> None:
    evs = events(ws)
    victim = evs[5]
    raw(ws, "DELETE FROM auditevent WHERE seq = :s", s=victim.seq)
    problems = history.verify_audit(ws)
    assert problems, "a deleted event must be detected"
    assert problems[0].seq == evs[6].seq
    assert f"#{victim.seq}" in problems[0].problem and "deleted" in problems[0].problem


def test_deleted_newest_event_is_detected(ws: Workspace) -> None:
    last = events(ws)[-1]
    raw(ws, "DELETE FROM auditevent WHERE seq = :s", s=last.seq)
    problems = history.verify_audit(ws)
    assert problems and "newest events were deleted" in problems[-1].problem


def test_inserted_event_is_named(ws: Workspace) -> None:
    """A forged event slipped in after #k (later rows renumbered, the forgery hashed
    correctly onto #k): the event after it no longer links and is named."""
    evs = events(ws)
    k = evs[3]
    after = evs[4]
    for e in reversed(evs[4:]):
        raw(ws, "UPDATE auditevent SET seq = seq + 1 WHERE seq = :s", s=e.seq)
    forged = AuditEvent(
        seq=(k.seq or 0) + 1,
        event_id="00000000-0000-0000-0000-000000000000",
        timestamp=k.timestamp,
        actor="mallory",
        action="signoff.approve",
        product_id=k.product_id,
        target=k.target,
        details={},
        prev_hash=k.hash,
        hash="",
    )
    forged.hash = audit.event_hash(forged)
    with ws.transaction() as s:
        s.add(forged)
    problems = history.verify_audit(ws)
    named = {p.event_id for p in problems}
    assert after.event_id in named
    first = next(p for p in problems if p.event_id == after.event_id)
    assert first.seq == (after.seq or 0) + 1
    assert any("previous-hash link broken" in p.problem for p in problems)


def test_cli_audit_verify_and_export(ws: Workspace, config_path: Path) -> None:
    from geomesh.cli import cli

    runner = CliRunner()
    ok = runner.invoke(cli, ["audit", "verify", str(config_path)])
    assert ok.exit_code == 0 and "verifies" in ok.stdout
    exported = runner.invoke(cli, ["audit", "export", str(config_path)])
    assert exported.exit_code == 0
    lines = [json.loads(line) for line in exported.stdout.splitlines()]
    assert [ln["seq"] for ln in lines] == [e.seq for e in events(ws)]
    assert lines[0]["prev_hash"] == audit.GENESIS
    assert all(b["prev_hash"] == a["hash"] for a, b in zip(lines, lines[1:], strict=False))
    victim = events(ws)[2]
    raw(ws, "UPDATE auditevent SET details = '{\"x\": 1}' WHERE seq = :s", s=victim.seq)
    bad = runner.invoke(cli, ["audit", "verify", str(config_path)])
    assert bad.exit_code == 2
    assert f"event #{victim.seq} ({victim.event_id})" in bad.output
    as_json = runner.invoke(cli, ["audit", "verify", str(config_path), "--json"])
    assert json.loads(as_json.stdout)["problems"][0]["seq"] == victim.seq


# ------------------------------------------------------------------ users


def test_add_user_is_admin_only_audited_and_idempotent(workspace: Workspace) -> None:
    users.add_user(workspace, actor="system", name="root", role="admin")
    with pytest.raises(PermissionDenied):
        users.add_user(workspace, actor="nobody", name="x", role="viewer")
    users.add_user(workspace, actor="root", name="sue", role=Role.steward, password="s3cret")
    with pytest.raises(PermissionDenied, match="steward"):
        users.add_user(workspace, actor="sue", name="eve", role="admin")
    again = users.add_user(workspace, actor="root", name="sue", role="steward")
    assert again.role == Role.steward
    with pytest.raises(AlreadyExists):
        users.add_user(workspace, actor="root", name="sue", role="viewer")
    with pytest.raises(PermissionDenied, match="not a role"):
        users.add_user(workspace, actor="root", name="zed", role="wizard")
    assert [(u.name, u.role.value) for u in users.list_users(workspace)] == [
        ("root", "admin"),
        ("sue", "steward"),
    ]
    adds = [e for e in events(workspace) if e.action == "user.add"]
    assert [e.target for e in adds] == ["root", "sue"]
    assert "s3cret" not in json.dumps([audit.to_json(e) for e in adds])


def test_cli_users(workspace: Workspace, monkeypatch: pytest.MonkeyPatch) -> None:
    from geomesh.auth import authenticate
    from geomesh.cli import cli

    monkeypatch.delenv("GEOMESH_USER", raising=False)  # bootstrap as the system principal
    runner = CliRunner()
    res = runner.invoke(
        cli, ["users", "add", "alice", "--role", "steward", "--password-stdin"], input="pw\n"
    )
    assert res.exit_code == 0, res.output
    res = runner.invoke(cli, ["users", "add", "bob", "--role", "viewer", "--actor", "alice"])
    assert res.exit_code == 2 and "users.manage" in res.output
    listed = runner.invoke(cli, ["users", "list", "--json"])
    assert [(u["name"], u["role"]) for u in json.loads(listed.stdout)] == [("alice", "steward")]
    assert "password_hash" not in listed.stdout
    with workspace.read() as s:
        assert authenticate(s, "alice", "pw").name == "alice"
