"""Steward sign-off and the three promotion gates."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import governance_support as gs
import pytest
from click.testing import CliRunner
from identity_support import token_env
from sqlmodel import select

from geomesh.config import ProductConfig, load_config
from geomesh.errors import PermissionDenied, PromotionBlocked, SignoffError
from geomesh.models import Approval, AuditEvent, Decision, Item
from geomesh.services import gates, history, promotion, signoff
from geomesh.workspace import Workspace

PID = "sentinel2-msi-l2a-v2.1"


@pytest.fixture
def ws(workspace: Workspace) -> Workspace:
    gs.add_users(workspace)
    return workspace


@pytest.fixture
def tile(make_raster: Callable[..., Path]) -> Callable[..., Path]:
    return gs.tile_factory(make_raster)


@pytest.fixture
def item_id(ws: Workspace, config: ProductConfig, tile: Callable[..., Path]) -> str:
    [iid] = gs.ingest(ws, config, [tile("a", 1)])
    return iid


def gate(ws: Workspace, config: ProductConfig, iid: str, name: str) -> gates.Gate:
    [plan] = promotion.plan_promotion(ws, config, [iid]).items
    return next(g for g in plan.gates if g.name == name)


def test_self_approval_is_rejected(ws: Workspace, config: ProductConfig, item_id: str) -> None:
    with pytest.raises(PermissionDenied, match="submitted item .* cannot approve"):
        signoff.sign_off(ws, config, item_id, actor=gs.SUBMITTER, approve=True)
    assert not gate(ws, config, item_id, "signoff").ok
    # an approval row by the submitter (written behind the service's back) does not count
    with ws.transaction() as s:
        item = s.get(Item, item_id)
        assert item is not None
        s.add(
            Approval(
                item_id=item_id,
                content_digest=item.content_digest,
                actor=gs.SUBMITTER,
                decision=Decision.approve,
            )
        )
    assert not gate(ws, config, item_id, "signoff").ok


@pytest.mark.parametrize("actor", ["ana", "vic", "root", "system", "nobody"])
def test_only_stewards_sign_off(
    ws: Workspace, config: ProductConfig, item_id: str, actor: str
) -> None:
    with pytest.raises(PermissionDenied):
        signoff.sign_off(ws, config, item_id, actor=actor, approve=True)
    with ws.read() as s:
        assert s.exec(select(Approval)).all() == []


def test_changed_content_invalidates_an_approval(
    ws: Workspace, config: ProductConfig, item_id: str, tile: Callable[..., Path]
) -> None:
    signoff.sign_off(ws, config, item_id, actor="alice", approve=True)
    assert gate(ws, config, item_id, "signoff").ok
    # the same source tile re-staged with changed bytes: a new item version supersedes it
    [v2] = gs.ingest(ws, config, [tile("a", 2)])
    assert v2 != item_id
    assert gs.states(ws, PID)[item_id] == "superseded"
    g = gate(ws, config, v2, "signoff")
    assert not g.ok and "0/1" in g.detail
    plan = promotion.plan_promotion(ws, config)
    assert [p.item_id for p in plan.items] == [v2] and plan.eligible == []
    # and an approval recorded on another digest of the same item never counts
    with ws.transaction() as s:
        s.add(Approval(item_id=v2, content_digest="f" * 64, actor="bob", decision=Decision.approve))
    g = gate(ws, config, v2, "signoff")
    assert not g.ok and "other content" in g.detail
    signoff.sign_off(ws, config, v2, actor="alice", approve=True)
    assert gate(ws, config, v2, "signoff").ok


def test_two_approvals_when_configured(
    ws: Workspace, write_config: Callable[..., Path], tile: Callable[..., Path]
) -> None:
    config = load_config(write_config({"governance": {"approvals_required": 2}}))
    [iid] = gs.ingest(ws, config, [tile("a", 1)])
    signoff.sign_off(ws, config, iid, actor="alice", approve=True)
    # the same steward twice is still one approval
    signoff.sign_off(ws, config, iid, actor="alice", approve=True)
    g = gate(ws, config, iid, "signoff")
    assert not g.ok and "1/2" in g.detail
    with pytest.raises(PromotionBlocked, match="1/2"):
        promotion.promote(ws, config, [iid], actor="alice")
    signoff.sign_off(ws, config, iid, actor="bob", approve=True)
    assert gate(ws, config, iid, "signoff").ok
    assert promotion.promote(ws, config, [iid], actor="alice").release is not None


def test_rejection_needs_a_comment_and_blocks(
    ws: Workspace, config: ProductConfig, item_id: str
) -> None:
    with pytest.raises(SignoffError, match="comment"):
        signoff.sign_off(ws, config, item_id, actor="bob", approve=False)
    with pytest.raises(SignoffError, match="comment"):
        signoff.sign_off(ws, config, item_id, actor="bob", approve=False, comment="  ")
    signoff.sign_off(ws, config, item_id, actor="alice", approve=True)
    signoff.sign_off(ws, config, item_id, actor="bob", approve=False, comment="clouds")
    g = gate(ws, config, item_id, "signoff")
    assert not g.ok and "clouds" in g.detail
    # bob changes his mind: the later decision replaces his earlier one
    signoff.sign_off(ws, config, item_id, actor="bob", approve=True)
    assert gate(ws, config, item_id, "signoff").ok
    with ws.read() as s:
        actions = [
            e.action
            for e in s.exec(select(AuditEvent).where(AuditEvent.target == item_id)).all()
            if e.action.startswith("signoff")
        ]
    assert actions == ["signoff.approve", "signoff.reject", "signoff.approve"]


def test_repeated_decision_is_a_no_op(ws: Workspace, config: ProductConfig, item_id: str) -> None:
    for _ in range(3):
        signoff.sign_off(ws, config, item_id, actor="alice", approve=True)
    with ws.read() as s:
        events = s.exec(select(AuditEvent).where(AuditEvent.action == "signoff.approve")).all()
    assert len(events) == 1


def test_request_signoff_is_audited_once(
    ws: Workspace, config: ProductConfig, item_id: str
) -> None:
    with pytest.raises(PermissionDenied):
        signoff.request_signoff(ws, config, item_id, actor="vic")
    status = signoff.request_signoff(ws, config, item_id, actor="ana")
    assert status.requested and not status.ok
    signoff.request_signoff(ws, config, item_id, actor="ana")
    with ws.read() as s:
        events = s.exec(select(AuditEvent).where(AuditEvent.action == "signoff.request")).all()
    assert [(e.actor, e.target) for e in events] == [("ana", item_id)]


def test_signoff_refused_outside_review_states(
    ws: Workspace, config: ProductConfig, item_id: str
) -> None:
    gs.approve(ws, config, [item_id])
    promotion.promote(ws, config, actor="alice")
    with pytest.raises(SignoffError, match="production"):
        signoff.sign_off(ws, config, item_id, actor="bob", approve=True)


# ------------------------------------------------------------------ gates (a) and (b)


def test_open_p2_finding_blocks_promotion(
    ws: Workspace, config: ProductConfig, item_id: str
) -> None:
    gs.approve(ws, config, [item_id])
    gs.add_finding(ws, item_id, "P2")
    g = gate(ws, config, item_id, "validation")
    assert not g.ok and "GM-TEST" in g.detail
    with pytest.raises(PromotionBlocked, match="open P1/P2"):
        promotion.promote(ws, config, actor="alice")
    assert gs.production_ids(ws, PID) == set()


def test_p3_finding_does_not_block(ws: Workspace, config: ProductConfig, item_id: str) -> None:
    gs.add_finding(ws, item_id, "P3", passed=True)
    assert gate(ws, config, item_id, "validation").ok


def test_item_without_validation_run_is_blocked(
    ws: Workspace, config: ProductConfig, tile: Callable[..., Path]
) -> None:
    [iid] = gs.ingest(ws, config, [tile("a", 1)], post_stage=gs.stay_in_staging)
    plan = promotion.plan_promotion(ws, config, [iid])
    reasons = " ".join(plan.items[0].reasons)
    assert "state: item is in state 'staging'" in reasons
    assert "no validation run" in reasons
    # by default only items in 'validation' are candidates
    assert promotion.plan_promotion(ws, config).items == ()


def test_corrupt_object_fails_the_checksum_gate(
    ws: Workspace, config: ProductConfig, item_id: str
) -> None:
    gs.approve(ws, config, [item_id])
    assert gate(ws, config, item_id, "checksum").ok
    with ws.read() as s:
        item = s.get(Item, item_id)
        assert item is not None
    gs.tamper(ws, "staging", item.object_key, lambda b: b[:-1] + bytes([b[-1] ^ 0xFF]))
    g = gate(ws, config, item_id, "checksum")
    assert not g.ok and "hashes to" in g.detail
    with pytest.raises(PromotionBlocked, match="checksum"):
        promotion.promote(ws, config, [item_id], actor="alice")
    assert history.list_releases(ws, PID) == []


def test_promotion_needs_a_promoter_role(
    ws: Workspace, config: ProductConfig, item_id: str
) -> None:
    gs.approve(ws, config, [item_id])
    for actor in ("ana", "vic"):
        with pytest.raises(PermissionDenied):
            promotion.promote(ws, config, actor=actor)
    assert promotion.promote(ws, config, actor="root").release is not None


def test_plan_reports_every_gate_and_the_next_version(
    ws: Workspace, config: ProductConfig, tile: Callable[..., Path]
) -> None:
    ok, blocked = gs.ingest(ws, config, [tile("a", 1), tile("b", 2)])
    gs.approve(ws, config, [ok])
    plan = promotion.plan_promotion(ws, config)
    assert [p.item_id for p in plan.eligible] == [ok]
    assert [p.item_id for p in plan.blocked] == [blocked]
    assert [g.name for g in plan.items[0].gates] == ["validation", "checksum", "signoff"]
    assert plan.next_version == "1.0.0"
    data = plan.to_json()
    assert json.loads(json.dumps(data))["blocked"][blocked][0].startswith("signoff:")
    # default promotion releases the eligible item and leaves the blocked one waiting
    result = promotion.promote(ws, config, actor="alice")
    assert result.promoted == (ok,)
    assert gs.states(ws, PID)[blocked] == "validation"


def test_cli_signoff_reject_needs_comment(ws: Workspace, config_path: Path, item_id: str) -> None:
    from geomesh.cli import cli

    runner = CliRunner(env=token_env(ws, "bob"))  # bob proves who he is
    res = runner.invoke(cli, ["signoff", str(config_path), item_id, "--reject", "--actor", "bob"])
    assert res.exit_code == 2 and "comment" in res.output
    res = runner.invoke(
        cli,
        [
            "signoff",
            str(config_path),
            item_id,
            "--reject",
            "--comment",
            "haze",
            "--actor",
            "bob",
            "--json",
        ],
    )
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["rejected_by"] == [{"actor": "bob", "comment": "haze"}]


def test_signoff_request_and_decision_notify_the_governance_webhook(
    ws: Workspace, write_config: Callable[..., Path], tile: Callable[..., Path]
) -> None:
    from geomesh.models import OutboxMessage

    config = load_config(
        write_config(
            {
                "governance": {
                    "escalation": [
                        {
                            "name": "gov",
                            "url": "http://127.0.0.1:9/hook",
                            "events": ["signoff_requested", "signoff_decided"],
                        },
                        {"name": "ops", "url": "http://127.0.0.1:9/ops", "events": ["finding"]},
                    ]
                }
            }
        )
    )
    [iid] = gs.ingest(ws, config, [tile("a", 1)])
    signoff.request_signoff(ws, config, iid, actor="ana")
    signoff.request_signoff(ws, config, iid, actor="ana")  # idempotent: one message
    signoff.sign_off(ws, config, iid, actor="alice", approve=True)
    signoff.sign_off(ws, config, iid, actor="alice", approve=True)  # no-op: no message
    with ws.read() as s:
        rows = s.exec(
            select(OutboxMessage).where(OutboxMessage.event.startswith("signoff"))  # type: ignore[attr-defined]
        ).all()
    assert [(r.event, r.target_name) for r in rows] == [
        ("signoff_requested", "gov"),
        ("signoff_decided", "gov"),
    ]
    decided = rows[1].payload
    assert decided["item_id"] == iid and decided["decision"] == "approve"
    assert decided["signed_off"] is True and decided["decided_by"] == "alice"
