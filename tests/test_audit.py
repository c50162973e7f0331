"""The audit trail: verify detects edited, inserted and deleted events; export; users CLI."""

from __future__ import annotations

import hashlib
import json
import stat
from collections.abc import Callable
from pathlib import Path

import governance_support as gs
import pytest
from _statements import executed
from click.testing import CliRunner
from identity_support import token_env
from pydantic import SecretStr
from sqlalchemy import text
from sqlmodel import Session, col, select

from geomesh import audit, audit_info, db
from geomesh.config import ProductConfig
from geomesh.errors import AlreadyExists, AuditKeyError, PermissionDenied
from geomesh.models import AuditEvent, Role
from geomesh.services import history, promotion, rollback, users
from geomesh.settings import Settings
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
    correctly onto #k, even with the key): the event after it no longer links and is named."""
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
    forged.hash = audit.event_hash(forged, ws.audit_key)
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
    users.add_user(workspace, actor="root", name="sue", role=Role.steward, password="s3cret-phrase")
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
    assert "s3cret-phrase" not in json.dumps([audit.to_json(e) for e in adds])


def test_cli_users(workspace: Workspace, monkeypatch: pytest.MonkeyPatch) -> None:
    from geomesh.auth import authenticate
    from geomesh.cli import cli

    monkeypatch.delenv("GEOMESH_USER", raising=False)  # bootstrap as the system principal
    runner = CliRunner()
    pw = "alice-pass-phrase"
    res = runner.invoke(
        cli, ["users", "add", "root", "--role", "admin", "--password-stdin"], input=f"{pw}-root\n"
    )
    assert res.exit_code == 0, res.output
    res = runner.invoke(
        cli,
        ["users", "add", "alice", "--role", "steward", "--password-stdin"],
        input=f"{pw}\n",
        env=token_env(workspace, "root"),
    )
    assert res.exit_code == 0, res.output
    res = runner.invoke(
        cli,
        ["users", "add", "bob", "--role", "viewer", "--actor", "alice"],
        env=token_env(workspace, "alice"),
    )
    assert res.exit_code == 2 and "users.manage" in res.output
    listed = runner.invoke(cli, ["users", "list", "--json"])
    assert [(u["name"], u["role"]) for u in json.loads(listed.stdout)] == [
        ("alice", "steward"),
        ("root", "admin"),
    ]
    assert "password_hash" not in listed.stdout
    with workspace.read() as s:
        assert authenticate(s, "alice", pw).name == "alice"


def test_a_transaction_reads_the_chain_head_once_and_the_next_reads_it_again(
    workspace: Workspace,
) -> None:
    """The head row is read (and locked) at a transaction's first append; its later
    appends reuse it. A later transaction, even on the same session, reads it again: a
    stale head would fork the chain, which verify names."""

    def append_three(session: Session) -> None:
        for n in range(3):
            audit.append(session, actor="system", action="test.append", target=f"t{n}")

    with db.session(workspace.engine, info=audit_info.keyed(workspace.audit_key)) as session:
        for _ in range(2):
            with executed(workspace.engine) as seen, session.begin():
                append_three(session)
            heads = [sql for sql, _ in seen if sql.lstrip().upper().startswith("SELECT")]
            assert len(heads) == 1 and "audithead" in heads[0].lower(), heads
    assert [e.seq for e in events(workspace)] == [1, 2, 3, 4, 5, 6]
    assert history.verify_audit(workspace) == []


# ------------------------------------------------------------------ the key and checkpoints


def test_a_database_only_rewrite_of_the_chain_is_detected(ws: Workspace) -> None:
    """Someone with write access to the database but not the key edits an approval, then
    recomputes every hash after it (unkeyed SHA-256, as the chain used to be) and updates
    the head: the first rewritten event is named."""
    evs = events(ws)
    victim = next(e for e in evs if e.action == "signoff.approve")
    prev = next(e for e in evs if e.seq == (victim.seq or 0) - 1).hash
    with ws.read() as s:
        rows = list(
            s.exec(
                select(AuditEvent).where(col(AuditEvent.seq) >= victim.seq).order_by(AuditEvent.seq)
            ).all()
        )
    for row in rows:
        if row.seq == victim.seq:
            row.actor = "mallory"
        row.prev_hash = prev
        row.hash = hashlib.sha256(audit._canonical(row)).hexdigest()
        prev = row.hash
        raw(
            ws,
            "UPDATE auditevent SET actor = :a, prev_hash = :p, hash = :h WHERE seq = :s",
            a=row.actor,
            p=row.prev_hash,
            h=row.hash,
            s=row.seq,
        )
    raw(ws, "UPDATE audithead SET last_hash = :h WHERE id = 1", h=prev)
    problems = history.verify_audit(ws)
    assert problems and problems[0].seq == victim.seq and "keyed hash" in problems[0].problem
    assert {p.seq for p in problems} >= {r.seq for r in rows}  # every rewritten event is named


def test_cutting_the_newest_events_is_detected_by_the_stored_checkpoint(ws: Workspace) -> None:
    """Delete the newest events and move the head back consistently: the database alone
    looks whole, but the checkpoint in the object store remembers the longer chain."""
    evs = events(ws)
    keep = evs[-4]
    raw(ws, "DELETE FROM auditevent WHERE seq > :s", s=keep.seq)
    raw(
        ws,
        "UPDATE audithead SET last_seq = :s, last_hash = :h WHERE id = 1",
        s=keep.seq,
        h=keep.hash,
    )
    with ws.read() as s:
        assert audit.verify(s, ws.audit_key) == []  # without checkpoints the cut is invisible
    problems = history.verify_audit(ws)
    assert len(problems) == 1
    assert f"#{(keep.seq or 0) + 1}..#{evs[-1].seq}" in problems[0].problem
    assert "deleted" in problems[0].problem and audit_info.CHECKPOINT_PREFIX in problems[0].problem


def test_checkpoints_are_write_once_signed_and_a_forgery_is_named(ws: Workspace) -> None:
    keys = list(ws.store.list("meta", audit_info.CHECKPOINT_PREFIX))
    head = events(ws)[-1]
    assert audit_info.checkpoint_key(head.seq or 0) in keys  # the last write left its head
    newest = json.loads(ws.store.get_bytes("meta", audit_info.checkpoint_key(head.seq or 0)))
    assert (newest["seq"], newest["hash"]) == (head.seq, head.hash)
    # write-once: storing the same checkpoint again never replaces it
    audit_info.write_checkpoint(ws.store, b"x" * 32, head.seq or 0, head.hash)
    assert (
        json.loads(ws.store.get_bytes("meta", audit_info.checkpoint_key(head.seq or 0))) == newest
    )
    forged = audit_info.checkpoint_key((head.seq or 0) + 50)
    ws.store.put_bytes("meta", forged, json.dumps({"seq": 9, "hash": "0", "mac": "0"}).encode())
    problems = history.verify_audit(ws)
    assert [p.problem for p in problems] == [
        f"checkpoint {forged} is not signed with the audit key"
    ]


def test_the_key_file_is_private_created_once_and_never_stored(
    workspace: Workspace, tmp_path: Path
) -> None:
    if workspace.settings.audit_key is None:  # the default: a key file under the root
        key_file = workspace.settings.resolved_audit_key_file(workspace.root)
        assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
        assert key_file.read_text().strip().encode() == workspace.audit_key
    assert len(workspace.audit_key) >= audit_info.MIN_KEY_BYTES
    gs.add_users(workspace)
    secret = workspace.audit_key.decode()
    with workspace.read() as s:
        dumped = json.dumps([audit.to_json(e) for e in audit.iter_events(s)])
    assert secret not in dumped
    logs = "".join(p.read_text() for p in workspace.root.rglob("*.jsonl"))
    assert secret not in logs
    # a second workspace on the same root reads the same key
    again = Workspace.open(workspace.settings)
    try:
        assert again.audit_key == workspace.audit_key
    finally:
        again.close()
    # a key file others can read is refused, naming the file and the fix
    loose = tmp_path / "loose" / "audit.key"
    loose.parent.mkdir()
    loose.write_text("k" * 64)
    loose.chmod(0o644)
    with pytest.raises(AuditKeyError, match="chmod 600"):
        Workspace.open(Settings(storage_root=tmp_path / "r1", audit_key_file=loose))
    with pytest.raises(AuditKeyError, match="at least 32"):
        Workspace.open(Settings(storage_root=tmp_path / "r2", audit_key=SecretStr("short")))
