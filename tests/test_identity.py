"""Proven identity (issue 13): API tokens, CLI proof, user management, sign-in hardening,
SSO by verified e-mail, the channel in the audit trail, demo isolation.

Service tests run on the ``workspace`` fixture (SQLite + local, and PostgreSQL + S3 with
GEOMESH_TEST_BACKEND=postgres-s3); CLI tests drive the real ``geomesh`` command through
click's CliRunner on the same workspace. Throttling is tested with an explicit clock
(``now=``) and the work per attempt by counting argon2 verifications, never by timing.
"""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

import identity_support
import pytest
from _app_helpers import APP, K, app_as, no_exception, texts
from click.testing import CliRunner, Result
from sqlalchemy import text
from sqlmodel import SQLModel, col, select
from streamlit.testing.v1 import AppTest

from geomesh import auth, demo, throttle
from geomesh.cli import cli
from geomesh.config import ProductConfig
from geomesh.errors import ConfigError, IdentityNotProven, PermissionDenied, WeakPassword
from geomesh.models import Approval, AuditEvent, utcnow
from geomesh.services import auth_session, demo_root, history, tokens, users
from geomesh.services.pipeline import ingest_rasters
from geomesh.workspace import Workspace

pytest_plugins = ("_app_fixtures",)
PW = {name: f"{name}-pass-phrase-1" for name in ("root", "alice", "bob", "ana", "vic")}
ROLES = {"alice": "steward", "bob": "steward", "ana": "analyst", "vic": "viewer"}


@pytest.fixture
def people(workspace: Workspace) -> Workspace:
    """root (admin, bootstrapped), alice and bob (stewards), ana (analyst), vic (viewer)."""
    users.add_user(workspace, actor=auth.SYSTEM, name="root", role="admin", password=PW["root"])
    for name, role in ROLES.items():
        users.add_user(workspace, actor="root", name=name, role=role, password=PW[name])
    return workspace


def events(ws: Workspace, action: str | None = None) -> list[AuditEvent]:
    with ws.read() as s:
        stmt = select(AuditEvent).order_by(col(AuditEvent.seq))
        if action is not None:
            stmt = stmt.where(AuditEvent.action == action)
        return list(s.exec(stmt).all())


def every_row(ws: Workspace) -> str:
    """Every row of every table as text (to look for a secret anywhere in the database)."""
    out: list[str] = []
    with ws.read() as s:
        for table in SQLModel.metadata.sorted_tables:
            out.extend(repr(tuple(r)) for r in s.execute(table.select()))
    return "\n".join(out)


def run(args: list[str], env: dict[str, str] | None = None, stdin: str | None = None) -> Result:
    return CliRunner().invoke(cli, args, env=env or {}, input=stdin, catch_exceptions=False)


# ------------------------------------------------------------------ tokens (service)


def test_a_token_proves_only_its_own_user_and_only_its_digest_is_stored(people: Workspace) -> None:
    token, info = tokens.create_token(people, actor="alice", name="alice", label="laptop")
    assert token.startswith("gmt_") and len(token) > 40
    assert tokens.prove_token(people, token) == "alice"
    assert token not in every_row(people)
    assert auth.token_digest(token) in every_row(people)  # what is stored: its SHA-256
    listed = [t.to_json() for t in tokens.list_tokens(people, "alice")]
    assert [t["id"] for t in listed] == [info.id] and token not in json.dumps(listed)
    assert listed[0]["status"] == "active" and listed[0]["last_used_at"] is not None
    # a look-alike, a truncated and a foreign string prove nothing
    for bad in (token[:-1] + ("A" if token[-1] != "A" else "B"), token[:20], "not-a-token"):
        with pytest.raises(IdentityNotProven):
            tokens.prove_token(people, bad)
    # only alice herself or an admin creates and revokes her tokens
    with pytest.raises(PermissionDenied):
        tokens.create_token(people, actor="bob", name="alice")
    with pytest.raises(PermissionDenied):
        tokens.revoke_token(people, actor="bob", token_id=info.id)
    assert tokens.create_token(people, actor="root", name="bob")[1].user == "bob"


def test_a_revoked_expired_or_disabled_users_token_is_refused(people: Workspace) -> None:
    revoked, info = tokens.create_token(people, actor="bob", name="bob")
    assert tokens.revoke_token(people, actor="bob", token_id=info.id).status() == "revoked"
    with pytest.raises(IdentityNotProven, match="revoked"):
        tokens.prove_token(people, revoked)
    long_ago = utcnow() - timedelta(days=10)
    expired, _ = tokens.create_token(people, actor="bob", name="bob", expires_days=2, now=long_ago)
    with pytest.raises(IdentityNotProven, match="expired"):
        tokens.prove_token(people, expired)
    valid, _ = tokens.create_token(people, actor="ana", name="ana")
    users.set_disabled(people, actor="root", name="ana", disabled=True)
    with pytest.raises(IdentityNotProven, match="disabled"):
        tokens.prove_token(people, valid)
    users.set_disabled(people, actor="root", name="ana", disabled=False)
    assert tokens.prove_token(people, valid) == "ana"
    assert [e.target for e in events(people, "token.create")] == ["bob", "bob", "ana"]
    assert [e.target for e in events(people, "token.revoke")] == ["bob"]


# ------------------------------------------------------------------ users (service)


def test_the_system_principal_only_bootstraps_the_first_admin(workspace: Workspace) -> None:
    with pytest.raises(PermissionDenied, match="first user must be an admin"):
        users.add_user(workspace, actor=auth.SYSTEM, name="sam", role="steward")
    users.add_user(workspace, actor=auth.SYSTEM, name="root", role="admin")
    with pytest.raises(PermissionDenied, match="system principal cannot users.manage"):
        users.add_user(workspace, actor=auth.SYSTEM, name="eve", role="admin")
    (boot,) = events(workspace, "user.add")
    assert boot.actor == "system" and boot.details["bootstrap"] is True
    assert [u.name for u in users.list_users(workspace)] == ["root"]


def test_user_management_is_audited_and_never_locks_the_workspace_out(
    people: Workspace,
) -> None:
    with pytest.raises(WeakPassword, match=str(auth.MIN_PASSWORD_LENGTH)):
        users.set_password(people, actor="bob", name="bob", password="short")
    with pytest.raises(PermissionDenied):
        users.set_password(people, actor="bob", name="alice", password="bob-sets-alice-pw")
    with pytest.raises(IdentityNotProven, match="current password"):
        users.set_password(
            people, actor="bob", name="bob", password="x" * 12, current_password="no"
        )
    users.set_password(
        people, actor="bob", name="bob", password="bob-new-phrase", current_password=PW["bob"]
    )
    users.set_password(people, actor="root", name="alice", password="alice-reset-phrase")
    assert auth_session.sign_in(people, "bob", "bob-new-phrase").name == "bob"
    with pytest.raises(PermissionDenied, match="last enabled admin"):
        users.set_role(people, actor="root", name="root", role="steward")
    with pytest.raises(PermissionDenied, match="last enabled admin"):
        users.set_disabled(people, actor="root", name="root", disabled=True)
    with pytest.raises(PermissionDenied):
        users.set_role(people, actor="alice", name="vic", role="admin")
    assert users.set_role(people, actor="root", name="vic", role="analyst").role.value == "analyst"
    users.set_disabled(people, actor="root", name="alice", disabled=True)
    # a disabled user: no sign-in, no action, no session; its history stays
    with pytest.raises(IdentityNotProven):
        auth_session.sign_in(people, "alice", "alice-reset-phrase")
    with pytest.raises(PermissionDenied, match="disabled"), people.transaction() as s:
        auth.require(s, "alice", "signoff")
    assert auth_session.current_user(people, "alice") is None
    assert [u.name for u in users.list_users(people) if u.disabled] == ["alice"]
    actions = [(e.action, e.target) for e in events(people) if e.action.startswith("user.")]
    assert actions[5:] == [  # after the five user.add: refused changes left no event
        ("user.passwd", "bob"),
        ("user.passwd", "alice"),
        ("user.role", "vic"),
        ("user.disable", "alice"),
    ]
    for secret in ("bob-new-phrase", "alice-reset-phrase", PW["bob"]):
        assert secret not in every_row(people)


# ------------------------------------------------------------------ sign-in hardening


def _attempt(ws: Workspace, name: str, password: str, **kw: Any) -> str:
    """Sign in; the outcome as text ('ok', or the refusal's message)."""
    try:
        return "ok:" + auth_session.sign_in(ws, name, password, **kw).name
    except IdentityNotProven as exc:
        return str(exc)


def test_unknown_and_known_names_cost_one_argon2_verification_each(people: Workspace) -> None:
    users.add_user(people, actor="root", name="sso-only", role="viewer")  # no password
    users.add_user(people, actor="root", name="gone", role="viewer", password="gone-pass-phrase")
    users.set_disabled(people, actor="root", name="gone", disabled=True)
    cases = {
        "known, right password": ("alice", PW["alice"]),
        "known, wrong password": ("alice", "Wrong-Guess-Password-17"),
        "unknown name": ("mallory", "Wrong-Guess-Password-17"),
        "invalid name": ("Not A Name!", "Wrong-Guess-Password-17"),
        "no password set": ("sso-only", "Wrong-Guess-Password-17"),
        "disabled, right password": ("gone", "gone-pass-phrase"),
    }
    work: dict[str, int] = {}
    outcome: dict[str, str] = {}
    for label, (name, password) in cases.items():
        before = auth.VERIFICATIONS.value
        outcome[label] = _attempt(people, name, password, client=f"test:{label}")
        work[label] = auth.VERIFICATIONS.value - before
    assert work == dict.fromkeys(cases, 1), work
    assert outcome["known, right password"] == "ok:alice"
    assert len({outcome[k] for k in cases if k != "known, right password"}) == 1  # one message
    # failures are audited without the typed secret or an unknown typed name
    failed = events(people, "auth.sign_in_failed")
    assert [e.target for e in failed] == ["alice", "-", "-", "sso-only", "gone"]
    stored = every_row(people)
    for typed in ("Wrong-Guess-Password-17", "mallory", "Not A Name!", "gone-pass-phrase"):
        assert typed not in stored, typed


def test_failed_sign_ins_slow_down_then_lock_and_the_lock_is_audited_once(
    people: Workspace,
) -> None:
    t0 = utcnow()
    wrong = "Wrong-Guess-Password-17"

    def fail_until_locked(name: str, client: str) -> tuple[list[str], Any]:
        """Fail as fast as the throttle allows; returns the refusals seen and the clock."""
        now, refusals = t0, []
        for n in range(throttle.NAME_LOCK_AFTER):
            answer = _attempt(people, name, wrong, client=client, now=now)
            assert "wrong password" in answer, (n, answer)
            wait = throttle.delay_s(n + 1)
            if wait:  # trying again at once is refused without any password work
                before = auth.VERIFICATIONS.value
                refusals.append(_attempt(people, name, PW["bob"], client=client, now=now))
                assert auth.VERIFICATIONS.value == before
            now += timedelta(seconds=wait)
        return refusals, now

    before_events = len(events(people))
    refusals, now = fail_until_locked("bob", "test:a")
    # delays grow: 2, 4, 8 … seconds after the third failure
    assert [r.split("wait ")[1].split(" ")[0] for r in refusals if "wait" in r][:3] == [
        "2",
        "4",
        "8",
    ]
    locked = events(people, "auth.locked")
    assert [(e.target, e.details["scope"]) for e in locked] == [("bob", "name")]
    # while locked even the right password is refused, without work and without an event
    count = len(events(people))
    for k in range(3):
        before = auth.VERIFICATIONS.value
        answer = _attempt(
            people, "bob", PW["bob"], client=f"test:b{k}", now=now + timedelta(seconds=k)
        )
        assert "locked" in answer and auth.VERIFICATIONS.value == before
    assert len(events(people)) == count
    assert count - before_events == throttle.NAME_LOCK_AFTER + 1  # failures + one lock
    # after the lock, the right password works again
    later = now + timedelta(seconds=throttle.LOCK_S + 1)
    assert _attempt(people, "bob", PW["bob"], client="test:c", now=later) == "ok:bob"
    # an unknown name is throttled exactly like a known one (no enumeration by lock)
    unknown_refusals, _ = fail_until_locked("nobody-here", "test:d")
    assert [r.replace("nobody-here", "bob") for r in unknown_refusals] == refusals
    assert [e.target for e in events(people, "auth.locked")] == ["bob", "-"]
    # the throttle table holds digests, not the names typed
    with people.read() as s:
        keys = [k for (k,) in s.execute(text("SELECT key FROM sign_in_throttle"))]
    assert keys and not any("bob" in k or "nobody" in k for k in keys)


def test_one_client_guessing_many_names_is_locked_per_client(people: Workspace) -> None:
    now = utcnow()
    for n in range(throttle.CLIENT_LOCK_AFTER):
        # a new name each time: the per-name limit never triggers, the per-client one does
        answer = _attempt(people, f"guess{n}", "Wrong-Guess-Password-17", client="test:x", now=now)
        assert "wrong password" in answer, (n, answer)
        now += timedelta(seconds=throttle.delay_s(n + 1, "client"))
    blocked = _attempt(people, "alice", PW["alice"], client="test:x", now=now)
    assert "locked" in blocked and "this client" in blocked
    assert _attempt(people, "alice", PW["alice"], client="test:y", now=now) == "ok:alice"
    (lock,) = events(people, "auth.locked")
    assert lock.details["scope"] == "client" and lock.details["client"] == "test:x"


# ------------------------------------------------------------------ SSO


def test_sso_needs_a_verified_registered_email_of_an_allowed_domain(people: Workspace) -> None:
    users.add_user(people, actor="root", name="carol", role="steward", email="Carol@Example.org")
    ok = {"email": "carol@example.org", "email_verified": True, "sub": "1", "name": "Carol"}
    assert auth_session.sign_in_sso(people, ok).name == "carol"
    assert auth_session.sign_in_sso(people, {**ok, "email": "CAROL@example.ORG"}).name == "carol"
    assert auth_session.sign_in_sso(people, ok, domains=["example.org"]).name == "carol"
    refused = {
        "unverified": {**ok, "email_verified": False},
        "no verified claim": {"email": "carol@example.org"},
        "verified as text 'false'": {**ok, "email_verified": "false"},
        "foreign domain": ok,  # with domains=["corp.example"]
        "local part of a user": {**ok, "email": "alice@anything.example"},
        "same local part, other domain": {**ok, "email": "carol@evil.example"},
        "no e-mail": {"email_verified": True},
    }
    for label, claims in refused.items():
        domains = ["corp.example"] if label == "foreign domain" else None
        with pytest.raises(IdentityNotProven):
            auth_session.sign_in_sso(people, claims, domains=domains)
    failed = events(people, "auth.sign_in_failed")
    assert [e.details["reason"] for e in failed] == [
        "e-mail not verified",
        "e-mail not verified",
        "e-mail not verified",
        "domain not allowed",
        "no enabled user with this e-mail",
        "no enabled user with this e-mail",
        "no e-mail address",
    ]
    users.set_disabled(people, actor="root", name="carol", disabled=True)
    with pytest.raises(IdentityNotProven):
        auth_session.sign_in_sso(people, ok)


def test_sso_allowed_domains_come_from_the_settings(people: Workspace) -> None:
    users.add_user(people, actor="root", name="carol", role="viewer", email="carol@example.org")
    people.settings.sso_allowed_domains = "corp.example, @example.org"
    assert auth_session.allowed_domains(people) == ["corp.example", "example.org"]
    claims = {"email": "carol@example.org", "email_verified": True}
    assert auth_session.sign_in_sso(people, claims).name == "carol"
    people.settings.sso_allowed_domains = "corp.example"
    with pytest.raises(IdentityNotProven, match="not allowed"):
        auth_session.sign_in_sso(people, claims)


# ------------------------------------------------------------------ the CLI


@pytest.fixture
def item(people: Workspace, config: ProductConfig, make_raster: Any) -> str:
    """An item awaiting sign-off, submitted by `system` (ingest needs no proof)."""
    tile = make_raster(
        "t.tif", width=64, height=64, count=1, tags={"TIFFTAG_DATETIME": "2024:06:12 19:03:21"}
    )
    (res,) = ingest_rasters(people, config, [str(tile)], actor=auth.SYSTEM).results
    assert res.item_id and res.state == "validation", res
    return res.item_id


def test_the_cli_refuses_every_unproven_state_change(
    people: Workspace, item: str, config_path: Any, make_raster: Any
) -> None:
    cfg = str(config_path)
    unproven = {
        "signoff": ["signoff", cfg, item, "--approve", "--actor", "bob"],
        "promote": ["promote", cfg, "--actor", "bob"],
        "rollback": ["rollback", cfg, "--release", "--actor", "bob"],
        "quarantine release": ["quarantine", "release", cfg, item, "--actor", "bob"],
        "quarantine discard": ["quarantine", "discard", item, "--reason", "x", "--actor", "bob"],
        "remediate": ["remediate", cfg, item, "--actor", "bob"],
        "users add": ["users", "add", "eve", "--role", "admin", "--actor", "root"],
        "users disable": ["users", "disable", "alice", "--actor", "root"],
        "users role": ["users", "role", "vic", "admin", "--actor", "root"],
        "token create": ["users", "token", "create", "alice", "--actor", "alice"],
        "doctor --gc": ["doctor", "--gc", "--actor", "root"],
        "ingest as a named user": ["ingest", cfg, str(make_raster("u.tif")), "--actor", "bob"],
        "users add as system": ["users", "add", "eve", "--role", "admin"],
        "signoff as system": ["signoff", cfg, item, "--approve"],
    }
    before = len(events(people))
    for label, args in unproven.items():
        res = run(args)
        assert res.exit_code == 2, (label, res.output)
        assert "not proven" in res.output or "system principal cannot" in res.output, (
            label,
            res.output,
        )
    assert len(events(people)) == before  # nothing happened, nothing was recorded
    # ingest as `system` stays possible without proof
    res = run(
        ["ingest", cfg, str(make_raster("s.tif", tags={"TIFFTAG_DATETIME": "2024:06:12 19:03:21"}))]
    )
    assert res.exit_code == 0, res.output


def test_one_token_is_one_actor_so_one_person_cannot_approve_twice(
    people: Workspace, item: str, config_path: Any
) -> None:
    cfg = str(config_path)
    alice = identity_support.token_env(people, "alice")
    for other in ("bob", "root", "system"):  # another name with alice's token: refused
        res = run(["signoff", cfg, item, "--approve", "--actor", other], env=alice)
        assert res.exit_code == 2 and f"proves 'alice', not '{other}'" in res.output
    res = run(["signoff", cfg, item, "--approve", "--json"], env={**alice, "GEOMESH_USER": "bob"})
    assert res.exit_code == 2 and "not 'bob'" in res.output  # $GEOMESH_USER is a claim too
    first = run(["signoff", cfg, item, "--approve", "--json"], env=alice)
    assert first.exit_code == 0 and json.loads(first.stdout)["approved_by"] == ["alice"]
    again = run(["signoff", cfg, item, "--approve", "--json"], env=alice)
    assert again.exit_code in (0, 2), again.output
    with people.read() as s:
        approvers = s.exec(select(Approval.actor).where(Approval.item_id == item)).all()
    assert set(approvers) == {"alice"}, approvers  # one person, one approval
    bob = identity_support.token_env(people, "bob")
    second = run(["signoff", cfg, item, "--approve", "--json"], env=bob)
    assert json.loads(second.stdout)["approved_by"] == ["alice", "bob"], second.output


def test_cli_proof_by_password_stdin_by_token_file_and_refusal_of_bad_tokens(
    people: Workspace, item: str, config_path: Any, tmp_path: Any
) -> None:
    cfg = str(config_path)
    args = ["signoff", cfg, item, "--request", "--actor", "ana", "--password-stdin"]
    wrong = run(args, stdin="Wrong-Guess-Password-17\n")
    assert wrong.exit_code == 2 and "wrong password" in wrong.output
    ok = run(args, stdin=PW["ana"] + "\n")
    assert ok.exit_code == 0, ok.output
    sign_ins = events(people, "auth.sign_in")
    assert sign_ins[-1].actor == "ana" and sign_ins[-1].details["channel"]["name"] == "cli"
    # a token file
    token, info = tokens.create_token(people, actor="bob", name="bob")
    path = tmp_path / "bob.token"
    path.write_text(token + "\n")
    res = run(["signoff", cfg, item, "--approve", "--token-file", str(path)])
    assert res.exit_code == 0, res.output
    tokens.revoke_token(people, actor="root", token_id=info.id)
    res = run(["signoff", cfg, item, "--reject", "--comment", "x", "--token-file", str(path)])
    assert res.exit_code == 2 and "revoked" in res.output
    res = run(["signoff", cfg, item, "--approve"], env={"GEOMESH_TOKEN": "gmt_forged"})
    assert res.exit_code == 2 and "not valid" in res.output


def test_cli_users_and_tokens_end_to_end(workspace: Workspace) -> None:
    boot = run(["users", "add", "root", "--role", "admin", "--password-stdin"], stdin=PW["root"])
    assert boot.exit_code == 0, boot.output
    # after the bootstrap, managing users needs an admin's proof
    again = run(["users", "add", "eve", "--role", "admin", "--password-stdin"], stdin=PW["root"])
    assert again.exit_code == 2 and "users.manage" in again.output
    created = run(
        ["users", "token", "create", "root", "--actor", "root", "--password-stdin", "--json"],
        stdin=PW["root"],
    )
    assert created.exit_code == 0, created.output
    token = json.loads(created.stdout)["token"]
    admin = {"GEOMESH_TOKEN": token}
    added = run(
        ["users", "add", "sam", "--role", "steward", "--email", "sam@example.org",
         "--password-stdin", "--json"],
        env=admin,
        stdin=PW["alice"],
    )  # fmt: skip
    assert added.exit_code == 0 and json.loads(added.stdout)["email"] == "sam@example.org"
    short = run(["users", "passwd", "sam", "--password-stdin"], env=admin, stdin="short")
    assert short.exit_code == 2 and "at least 12" in short.output
    assert (
        run(
            ["users", "passwd", "sam", "--password-stdin"], env=admin, stdin="sam-new-phrase-9"
        ).exit_code
        == 0
    )
    assert run(["users", "role", "sam", "analyst"], env=admin).exit_code == 0
    assert run(["users", "disable", "sam"], env=admin).exit_code == 0
    listed = json.loads(run(["users", "list", "--json"]).stdout)
    assert {u["name"]: (u["role"], u["disabled"]) for u in listed} == {
        "root": ("admin", False),
        "sam": ("analyst", True),
    }
    assert run(["users", "enable", "sam"], env=admin).exit_code == 0
    for_sam = run(["users", "token", "create", "sam", "--expires-days", "7", "--json"], env=admin)
    sam_token = json.loads(for_sam.stdout)["token"]
    shown = run(["users", "token", "list", "--json"])
    assert token not in shown.output and sam_token not in shown.output
    rows = json.loads(shown.stdout)
    assert [(r["user"], r["status"]) for r in rows] == [("root", "active"), ("sam", "active")]
    revoke = run(["users", "token", "revoke", str(rows[1]["id"])], env={"GEOMESH_TOKEN": sam_token})
    assert revoke.exit_code == 0 and "revoked" in revoke.output
    assert token not in every_row(workspace) and sam_token not in every_row(workspace)
    actions = [e.action for e in events(workspace)]
    assert actions.count("user.add") == 2 and "user.disable" in actions and "user.enable" in actions


# ------------------------------------------------------------------ channel


def test_audit_events_record_the_channel_and_the_chain_covers_it(
    people: Workspace, item: str, config_path: Any
) -> None:
    res = run(
        ["signoff", str(config_path), item, "--request"],
        env=identity_support.token_env(people, "ana"),
    )
    assert res.exit_code == 0, res.output
    request = events(people, "signoff.request")[-1]
    channel = request.details["channel"]
    assert channel["name"] == "cli" and channel["os_user"] and channel["host"]
    people.channel = auth_session.app_channel()  # what the app's workspace carries
    auth_session.sign_out(people, "ana")
    assert events(people, "auth.sign_out")[-1].details["channel"] == {"name": "app"}
    assert "channel" not in events(people, "user.add")[0].details  # in-process: none claimed
    assert history.verify_audit(people) == []
    # the channel is part of the hashed content: rewriting it is detected
    with people.transaction() as s:
        forged = json.dumps({**request.details, "channel": {"name": "app"}})
        s.execute(
            text("UPDATE auditevent SET details = :d WHERE seq = :s"),
            {"d": forged, "s": request.seq},
        )
    assert any(p.seq == request.seq for p in history.verify_audit(people))


# ------------------------------------------------------------------ demo isolation


def test_the_demo_never_seeds_into_a_root_that_is_not_empty(people: Workspace) -> None:
    with pytest.raises(ConfigError, match="not a demo root"):
        demo.seed(people)
    skipped = demo.seed(people, if_empty=True)
    assert not skipped.seeded and "not a demo" in skipped.message
    assert not demo_root.is_demo_workspace(people)
    names = {u.name for u in users.list_users(people)}
    assert names.isdisjoint(u.name for u in demo.USERS)
    res = run(["demo", "seed", "--if-empty"])
    assert res.exit_code == 0 and "not seeding" in res.output
    res = run(["demo", "seed"])
    assert res.exit_code == 2 and "not a demo root" in res.output
    assert {u.name for u in users.list_users(people)} == names


def test_demo_accounts_with_demo_passwords_are_found_until_changed(
    demo_workspace: Workspace,
) -> None:
    ws = demo_workspace
    assert demo_root.is_demo_workspace(ws)
    assert demo_root.accounts_with_demo_passwords(ws) == sorted(u.name for u in demo.USERS)
    users.set_password(ws, actor="admin", name="steward", password="a-real-passphrase")
    users.set_disabled(ws, actor="admin", name="viewer", disabled=True)
    assert demo_root.accounts_with_demo_passwords(ws) == ["admin", "analyst", "steward2"]


# ------------------------------------------------------------------ the app


def test_the_demo_hint_is_shown_only_in_a_demo_root(demo_workspace: Workspace) -> None:
    at = app_as(None)
    no_exception(at)
    assert any("Demo workspace" in t for t in texts(at.caption))


def test_no_demo_hint_outside_a_demo_root(people: Workspace) -> None:
    at = app_as(None)
    no_exception(at)
    assert texts(at.title) == ["geomesh review"]
    assert not any("Demo" in t or "demo" in t for t in texts(at.caption))


def test_an_admin_is_warned_while_accounts_keep_their_demo_password(
    demo_workspace: Workspace,
) -> None:
    at = app_as("admin")
    no_exception(at)
    (warning,) = [t for t in texts(at.warning) if "demo password" in t]
    assert "steward" in warning and "admin" in warning
    assert not any("demo password" in t for t in texts(app_as("steward").warning))
    for u in demo.USERS:
        users.set_password(demo_workspace, actor="admin", name=u.name, password=f"{u.name}-real-1!")
    assert not any("demo password" in t for t in texts(app_as("admin").warning))


def test_an_idle_session_is_signed_out_and_a_disabled_user_at_once(people: Workspace) -> None:
    at = AppTest.from_file(APP, default_timeout=120)
    at.session_state[K.USER] = "ana"
    at.session_state[K.LAST_SEEN] = utcnow() - timedelta(minutes=5)
    at.run()
    no_exception(at)
    assert texts(at.title) == ["Overview"]  # active a few minutes ago: still signed in
    at.session_state[K.LAST_SEEN] = utcnow() - auth_session.IDLE_TIMEOUT - timedelta(minutes=1)
    at.run()
    assert texts(at.title) == ["geomesh review"] and K.USER not in at.session_state
    assert any("without activity" in t for t in texts(at.info))
    (out,) = events(people, "auth.sign_out")
    assert out.actor == "ana" and out.details["reason"] == "idle"
    assert out.details["channel"] == {"name": "app"}
    # an admin disables a signed-in user: the next run signs it out
    at = app_as("vic")
    assert texts(at.title) == ["Overview"]
    users.set_disabled(people, actor="root", name="vic", disabled=True)
    at.run()
    assert texts(at.title) == ["geomesh review"] and K.USER not in at.session_state


def test_users_page_admin_adds_disables_and_a_token_is_shown_once(people: Workspace) -> None:
    at = app_as("root", "pages/users.py")
    no_exception(at)
    at.text_input(key=K.U_NEW_NAME).input("dana")
    at.selectbox(key=K.U_NEW_ROLE).set_value("analyst")
    at.text_input(key=K.U_NEW_EMAIL).input("dana@example.org")
    at.text_input(key=K.U_NEW_PW).input("dana-pass-phrase")
    at.button(key=K.U_ADD).click().run()
    no_exception(at)
    assert not at.error, texts(at.error)
    assert any("dana (analyst) was added" in t for t in texts(at.success))
    at.selectbox(key=K.U_PICK).set_value("dana").run()
    at.button(key=K.U_TOGGLE).click().run()
    assert not at.error, texts(at.error)
    dana = next(u for u in users.list_users(people) if u.name == "dana")
    assert dana.disabled and dana.email == "dana@example.org"
    at.button(key=K.U_TOKEN_CREATE).click().run()
    (shown,) = [c.value for c in at.code]
    assert str(shown).startswith("gmt_") and tokens.prove_token(people, str(shown)) == "root"
    at.run()
    assert not [c.value for c in at.code]  # shown once
    assert [e.details["channel"]["name"] for e in events(people, "user.disable")] == ["app"]


def test_users_page_lets_others_manage_only_their_own_account(people: Workspace) -> None:
    at = app_as("bob", "pages/users.py")
    no_exception(at)
    assert any("may not manage other accounts" in t for t in texts(at.info))
    assert not [e for e in at.button if e.key == K.U_ADD]
    at.text_input(key=K.U_OWN_CURRENT).input("not-my-password")
    at.text_input(key=K.U_OWN_NEW).input("bob-new-pass-phrase")
    at.button(key=K.U_OWN_SAVE).click().run()
    assert any("current password is wrong" in t for t in texts(at.error))
    at.text_input(key=K.U_OWN_CURRENT).input(PW["bob"])
    at.text_input(key=K.U_OWN_NEW).input("bob-new-pass-phrase")
    at.button(key=K.U_OWN_SAVE).click().run()
    assert not at.error, texts(at.error)
    assert auth_session.sign_in(people, "bob", "bob-new-pass-phrase").name == "bob"
