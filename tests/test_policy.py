"""The registered policy (issue 13): the config stored at registration decides every
governance action; a caller config that differs is refused; changing it is an audited,
versioned action whose loosening changes wait for a second admin or steward.

Service tests run on the ``workspace`` fixture (SQLite + local, and PostgreSQL + S3 with
``GEOMESH_TEST_BACKEND=postgres-s3``); the classification tests are pure.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import governance_support as gs
import identity_support as identity
import pytest
import yaml
from click.testing import CliRunner
from sqlalchemy import text
from sqlmodel import Session, col, select

from geomesh import db
from geomesh.cli import cli
from geomesh.config import ProductConfig, load_config, parse_config
from geomesh.doctor import run_doctor
from geomesh.errors import NotFound, PermissionDenied, PolicyMismatch, PromotionBlocked
from geomesh.models import AuditEvent, Item, PolicyStatus, ProductConfigVersion
from geomesh.policy import ChangeKind, classify_change, config_diff, render_diff
from geomesh.services import (
    pipeline,
    policy,
    promotion,
    quarantine,
    remediation,
    rollback,
    signoff,
)
from geomesh.services.products import check_config
from geomesh.settings import Settings
from geomesh.workspace import Workspace

from conftest import EXAMPLE_CONFIG

PID = "sentinel2-msi-l2a-v2.1"
#: the example domain, a little larger on every side (still EPSG:4326)
WIDER = "POLYGON((-122.6 37.6, -122.2 37.6, -122.2 38.0, -122.6 38.0, -122.6 37.6))"


def cfg(**sections: dict[str, Any]) -> ProductConfig:
    """The example config with some sections replaced or extended (pure, no file)."""
    data = yaml.safe_load(EXAMPLE_CONFIG)
    for name, values in sections.items():
        data[name] = {**data.get(name, {}), **values}
    return parse_config(data)


# ------------------------------------------------------------------ classification (pure)

HOOK = {"name": "ops", "url": "https://hooks.example.org/ops", "severities": ["P1", "P2"]}

#: (what, before, after): each change loosens governance; the reverse tightens it
LOOSENING: list[tuple[str, dict[str, Any], dict[str, Any]]] = [
    ("fewer approvals", {"governance": {"approvals_required": 2}}, {}),
    ("a rule disabled", {}, {"validation": {"disabled_rules": ["GM-CRS-001"]}}),
    ("a severity lowered", {}, {"validation": {"severity_overrides": {"GM-CRS-001": "P3"}}}),
    (
        "a raised severity dropped",
        {"validation": {"severity_overrides": {"GM-SCHEMA-003": "P1"}}},
        {},
    ),
    (
        "a route softened",
        {},
        {"validation": {"routing": {"P1": "rollback", "P2": "warn", "P3": "warn"}}},
    ),
    ("strict off", {"validation": {"strict": True}}, {}),
    ("an escalation target removed", {"governance": {"escalation": [HOOK]}}, {}),
    (
        "a target hears fewer events",
        {"governance": {"escalation": [HOOK]}},
        {"governance": {"escalation": [HOOK | {"events": ["finding"]}]}},
    ),
    ("fewer webhook attempts", {}, {"governance": {"webhook_max_attempts": 2}}),
    (
        "a target hears fewer severities",
        {"governance": {"escalation": [HOOK]}},
        {"governance": {"escalation": [HOOK | {"severities": ["P1"]}]}},
    ),
]


@pytest.mark.parametrize(("what", "before", "after"), LOOSENING, ids=[w for w, _, _ in LOOSENING])
def test_each_loosening_change_is_classified_and_its_reverse_tightens(
    what: str, before: dict[str, Any], after: dict[str, Any]
) -> None:
    old, new = cfg(**before), cfg(**after)
    verdict = classify_change(old, new)
    assert verdict.kind is ChangeKind.loosening, (what, verdict)
    assert verdict.loosening and not verdict.tightening
    reverse = classify_change(new, old)
    assert reverse.kind is ChangeKind.tightening, (what, reverse)
    assert not verdict.spatial_contract_changed


def test_neutral_changes_and_the_spatial_contract() -> None:
    base = cfg()
    retitled = cfg(product_metadata={"title": "SF"}, ingestion={"tile_size": 512})
    verdict = classify_change(base, retitled)
    assert verdict.kind is ChangeKind.neutral and not verdict.spatial_contract_changed
    moved = cfg(spatial_domain={"boundary_wkt": WIDER})
    verdict = classify_change(base, moved)
    assert verdict.kind is ChangeKind.neutral and verdict.spatial_contract_changed
    # re-pointing an escalation target is loosening either way (the old receiver loses it)
    a = cfg(governance={"escalation": [HOOK]})
    b = cfg(governance={"escalation": [HOOK | {"url": "https://elsewhere.example/x"}]})
    assert classify_change(a, b).kind is classify_change(b, a).kind is ChangeKind.loosening
    # a tightening and a loosening together: the change waits (loosening wins)
    mixed = cfg(governance={"approvals_required": 3}, validation={"strict": False})
    assert classify_change(cfg(validation={"strict": True}), mixed).kind is ChangeKind.loosening


def test_the_diff_names_key_paths_and_ignores_storage() -> None:
    old = cfg(governance={"approvals_required": 2, "escalation": [HOOK]})
    new = cfg(
        governance={"approvals_required": 1, "escalation": [HOOK | {"severities": ["P1"]}]},
        storage={"root": "/somewhere/else"},
    )
    changes = config_diff(old, new)
    assert [c.path for c in changes] == [
        "governance.approvals_required",
        "governance.escalation[ops].severities",
    ]
    text = render_diff(changes)
    assert "~ governance.approvals_required: 2 → 1" in text
    assert config_diff(old, old.model_copy(update={"storage": new.storage})) == []


# ------------------------------------------------------------------ fixtures


@dataclass
class Setup:
    ws: Workspace
    registered: ProductConfig  #: approvals_required: 2, as registered
    copy: ProductConfig  #: the same YAML saying approvals_required: 1
    released: str  #: in release 1.0.0
    waiting: str  #: in validation with ONE approval (alice)
    new_tile: Path


@pytest.fixture
def tile(make_raster: Callable[..., Path]) -> Callable[..., Path]:
    return gs.tile_factory(make_raster)


@pytest.fixture
def setup(
    workspace: Workspace, write_config: Callable[..., Path], tile: Callable[..., Path]
) -> Setup:
    identity.add_users(workspace, gs.ROLES)
    registered = load_config(write_config({"governance": {"approvals_required": 2}}, "reg.yaml"))
    copy = load_config(write_config({"governance": {"approvals_required": 1}}, "copy.yaml"))
    [released] = gs.ingest(workspace, registered, [tile("a", 1)])
    gs.approve(workspace, registered, [released], n=2)
    assert promotion.promote(workspace, registered, actor="alice").release is not None
    [waiting] = gs.ingest(workspace, registered, [tile("b", 2)])
    gs.approve(workspace, registered, [waiting], n=1)
    return Setup(workspace, registered, copy, released, waiting, tile("c", 3))


def audit_actions(ws: Workspace, product_id: str = PID) -> list[str]:
    with ws.read() as s:
        return list(
            s.exec(
                select(AuditEvent.action)
                .where(AuditEvent.product_id == product_id)
                .order_by(col(AuditEvent.seq))
            ).all()
        )


def snapshot(ws: Workspace) -> tuple[list[str], dict[str, str]]:
    with ws.read() as s:
        items = {i.id: i.state.value for i in s.exec(select(Item))}
    return audit_actions(ws), items


# ------------------------------------------------------------------ the bypass is refused

#: every state-changing call (and the promotion plan) with the caller's copy saying 1
BYPASS: dict[str, Callable[[Setup], Any]] = {
    "sign_off": lambda s: signoff.sign_off(s.ws, s.copy, s.waiting, actor="bob", approve=True),
    "request_signoff": lambda s: signoff.request_signoff(s.ws, s.copy, s.waiting, actor="ana"),
    "promote": lambda s: promotion.promote(s.ws, s.copy, actor="alice"),
    "promote --dry-run": lambda s: promotion.plan_promotion(s.ws, s.copy),
    "rollback_item": lambda s: rollback.rollback_item(s.ws, s.copy, s.released, actor="bob"),
    "rollback_release": lambda s: rollback.rollback_release(s.ws, s.copy, actor="bob"),
    "quarantine.release": lambda s: quarantine.release(s.ws, s.copy, s.waiting, actor="ana"),
    "quarantine.revalidate": lambda s: quarantine.revalidate(s.ws, s.copy, s.waiting, actor="ana"),
    "ingest": lambda s: pipeline.ingest_rasters(s.ws, s.copy, [str(s.new_tile)], actor="alice"),
    "validate_and_route": lambda s: pipeline.validate_and_route(
        s.ws, s.copy, s.waiting, actor="alice"
    ),
    "remediate": lambda s: remediation.remediate_item(s.ws, s.copy, s.waiting, actor="alice"),
}


@pytest.mark.parametrize("call", list(BYPASS))
def test_a_caller_config_with_fewer_approvals_is_refused(call: str, setup: Setup) -> None:
    before = snapshot(setup.ws)
    with pytest.raises(PolicyMismatch) as info:
        BYPASS[call](setup)
    text = str(info.value)
    assert "governance.approvals_required (registered 2, given 1)" in text
    assert "geomesh products update" in text
    assert snapshot(setup.ws) == before, f"the refused {call} changed something"


def test_the_registered_policy_still_needs_two_approvals(setup: Setup) -> None:
    """The bypass of the issue: one approval must never release the item."""
    with pytest.raises(PromotionBlocked, match="1/2"):
        promotion.promote(setup.ws, setup.registered, [setup.waiting], actor="alice")
    signoff.sign_off(setup.ws, setup.registered, setup.waiting, actor="bob", approve=True)
    result = promotion.promote(setup.ws, setup.registered, [setup.waiting], actor="alice")
    assert result.release is not None and result.release.version == "1.1.0"


def test_only_the_storage_section_may_differ(setup: Setup) -> None:
    elsewhere = setup.registered.model_copy(
        update={"storage": setup.registered.storage.model_copy(update={"root": Path("/x")})}
    )
    with setup.ws.read() as s:
        assert check_config(s, elsewhere) is elsewhere
    assert signoff.signoff_status(setup.ws, elsewhere, setup.waiting).approved_by == ("alice",)


# ------------------------------------------------------------------ changing the policy


def versions(ws: Workspace) -> list[policy.PolicyVersion]:
    return policy.policy_history(ws, PID)


def test_a_loosening_change_waits_for_a_second_approver(setup: Setup) -> None:
    ws, old_digest, new_digest = setup.ws, setup.registered.digest(), setup.copy.digest()
    change = policy.update_config(ws, setup.copy, actor="root")
    assert change.outcome == "pending" and change.version is not None
    assert "governance.approvals_required: 2 → 1" in change.message
    # nothing changed yet: the registered policy still decides, the proposal is refused
    with pytest.raises(PolicyMismatch, match="waits for a second admin or steward"):
        promotion.promote(ws, setup.copy, actor="alice")
    with pytest.raises(PromotionBlocked, match="1/2"):
        promotion.promote(ws, setup.registered, [setup.waiting], actor="alice")
    # four eyes: not the proposer, not an analyst, not the system principal
    for who in ("root", "ana", "system"):
        with pytest.raises(PermissionDenied):
            policy.approve_config(ws, PID, new_digest, actor=who)
    with pytest.raises(NotFound, match="waits for approval"):
        policy.approve_config(ws, PID, "0" * 64, actor="alice")
    approved = policy.approve_config(ws, PID, new_digest[:16], actor="alice")
    assert approved.outcome == "applied"
    # the new policy is the registered one now, the old copy is refused
    with pytest.raises(PolicyMismatch, match=r"registered 1, given 2"):
        promotion.plan_promotion(ws, setup.registered)
    result = promotion.promote(ws, setup.copy, [setup.waiting], actor="bob")
    assert result.release is not None
    latest, first = versions(ws)[0], versions(ws)[-1]
    assert (latest.version, latest.status, latest.change) == (2, "active", "loosening")
    assert (latest.previous_digest, latest.digest) == (old_digest, new_digest)
    assert (latest.proposed_by, latest.approved_by) == ("root", "alice")
    assert latest.diff_text == "~ governance.approvals_required: 2 → 1"
    assert (first.version, first.status, first.change) == (1, "superseded", "initial")
    assert first.digest == old_digest
    with ws.read() as s:
        events = s.exec(
            select(AuditEvent)
            .where(col(AuditEvent.action).startswith("product.config"))
            .order_by(col(AuditEvent.seq))
        ).all()
    assert [(e.action, e.actor) for e in events] == [
        ("product.config.propose", "root"),
        ("product.config.approve", "alice"),
        ("product.config", "alice"),
    ]
    for e in events:
        assert (e.details["old_digest"], e.details["new_digest"]) == (old_digest, new_digest)
        assert e.details["diff"] == [
            {
                "path": "governance.approvals_required",
                "old": 2,
                "new": 1,
                "added": False,
                "removed": False,
            }
        ]
    # approving again is a no-op
    assert policy.approve_config(ws, PID, new_digest, actor="bob").outcome == "unchanged"


def test_a_tightening_change_applies_at_once(setup: Setup) -> None:
    ws = setup.ws
    stricter = setup.registered.model_copy(
        update={
            "governance": setup.registered.governance.model_copy(update={"approvals_required": 3})
        }
    )
    with pytest.raises(PermissionDenied):  # a steward cannot change the policy
        policy.update_config(ws, stricter, actor="alice")
    with pytest.raises(PermissionDenied):  # nor can the system principal
        policy.update_config(ws, stricter, actor="system")
    change = policy.update_config(ws, stricter, actor="root")
    assert change.outcome == "applied" and change.version is not None
    assert change.version.change == "tightening" and change.version.approved_by is None
    assert audit_actions(ws)[-1] == "product.config"
    assert "product.config.propose" not in audit_actions(ws)
    with pytest.raises(PolicyMismatch, match="registered 3, given 2"):
        signoff.sign_off(ws, setup.registered, setup.waiting, actor="bob", approve=True)
    status = signoff.sign_off(ws, stricter, setup.waiting, actor="bob", approve=True)
    assert not status.ok and status.required == 3
    # proposing the registered config again records nothing
    before = audit_actions(ws)
    assert policy.update_config(ws, stricter, actor="root").outcome == "unchanged"
    assert audit_actions(ws) == before and len(versions(ws)) == 2


def test_a_change_applied_first_replaces_an_older_proposal(setup: Setup) -> None:
    ws = setup.ws
    loose = policy.update_config(ws, setup.copy, actor="root")
    assert loose.outcome == "pending"
    # proposing the same loosening again returns the same proposal
    again = policy.update_config(ws, setup.copy, actor="root")
    assert again.version is not None and loose.version is not None
    assert again.version.version == loose.version.version
    titled = setup.registered.model_copy(
        update={
            "product_metadata": setup.registered.product_metadata.model_copy(update={"title": "SF"})
        }
    )
    assert policy.update_config(ws, titled, actor="root").outcome == "applied"
    statuses = [(v.version, v.status) for v in versions(ws)]
    assert statuses == [(3, "active"), (2, "replaced"), (1, "superseded")]
    with pytest.raises(NotFound):
        policy.approve_config(ws, PID, setup.copy.digest(), actor="alice")


def test_a_spatial_contract_change_makes_the_next_release_major(
    setup: Setup, tile: Callable[..., Path]
) -> None:
    ws = setup.ws
    wider = setup.registered.model_copy(
        update={
            "spatial_domain": setup.registered.spatial_domain.model_copy(
                update={"boundary_wkt": WIDER}
            )
        }
    )
    # without the change, the waiting item would be a MINOR release (an item added)
    assert promotion.plan_promotion(ws, setup.registered).bump is None  # 1 of 2 approvals
    change = policy.update_config(ws, wider, actor="root")
    assert change.outcome == "applied" and "MAJOR" in change.message
    assert change.version is not None and change.version.spatial_contract_changed
    signoff.sign_off(ws, wider, setup.waiting, actor="bob", approve=True)
    plan = promotion.plan_promotion(ws, wider)
    assert plan.spatial_contract_changed and plan.next_version == "2.0.0"
    result = promotion.promote(ws, wider, actor="alice")
    assert result.release is not None and result.release.version == "2.0.0"
    # the next release against the new contract is MINOR again
    [nxt] = gs.ingest(ws, wider, [tile("d", 4)])
    gs.approve(ws, wider, [nxt], n=2)
    assert promotion.plan_promotion(ws, wider).next_version == "2.1.0"


def test_an_unknown_rule_id_is_refused_before_anything_is_recorded(setup: Setup) -> None:
    bad = setup.registered.model_copy(
        update={
            "validation": setup.registered.validation.model_copy(
                update={"disabled_rules": ["GM-NOPE-9"]}
            )
        }
    )
    before = audit_actions(setup.ws)
    with pytest.raises(Exception, match="GM-NOPE-9"):
        policy.update_config(setup.ws, bad, actor="root")
    assert audit_actions(setup.ws) == before and len(versions(setup.ws)) == 1


def test_doctor_names_a_policy_changed_outside_the_service(setup: Setup) -> None:
    """`doctor` checks that each product has one active config version, the one its row
    and its stored config say; a raw-SQL edit of any of the three is named."""
    ws = setup.ws
    policy_kinds = {"policy-active", "policy-digest", "policy-config"}
    assert run_doctor(ws).kinds("error") & policy_kinds == set()
    loosened = cfg(governance={"approvals_required": 1}).to_json_dict()
    with ws.transaction() as s:  # someone with database access drops an approval
        s.execute(
            text("UPDATE product SET config_json = :j WHERE id = :p"),
            {"j": json.dumps(loosened), "p": PID},
        )
    report = run_doctor(ws)
    assert "policy-digest" in report.kinds("error")
    with ws.transaction() as s:  # the row is put back; a second version is made active
        s.execute(
            text("UPDATE product SET config_json = :j WHERE id = :p"),
            {"j": json.dumps(setup.registered.to_json_dict()), "p": PID},
        )
    assert run_doctor(ws).kinds("error") & policy_kinds == set()
    with ws.transaction() as s:
        v1 = s.exec(select(ProductConfigVersion).where(ProductConfigVersion.product_id == PID))
        first = v1.first()
        assert first is not None
        s.add(
            ProductConfigVersion(
                product_id=PID,
                version=first.version + 1,
                digest=first.digest,
                config_json=first.config_json,
                change=ChangeKind.neutral.value,
                status=PolicyStatus.active,
                proposed_by="mallory",
            )
        )
    assert "policy-active" in run_doctor(ws).kinds("error")


@pytest.mark.empty_database
def test_products_registered_before_the_migration_get_version_one(settings: Settings) -> None:
    """Migration 0004 backfills the history from ``product``: a database at 0003 with a
    registered product gets that config as version 1 (active, ``initial``)."""
    from alembic import command
    from alembic.config import Config

    root = settings.resolved_storage_root()
    root.mkdir(parents=True, exist_ok=True)
    engine = db.make_engine(settings.resolved_database_url(root))
    alembic_cfg = Config()
    alembic_cfg.set_main_option("script_location", str(db.MIGRATIONS_DIR))
    config = cfg(governance={"approvals_required": 2})
    try:
        with engine.begin() as conn:
            alembic_cfg.attributes["connection"] = conn
            command.upgrade(alembic_cfg, "0003")
        with engine.begin() as conn:  # the product row as an older release wrote it
            conn.execute(
                text(
                    "INSERT INTO product (id, config_json, config_digest, version_counter, "
                    "created_at, updated_at) VALUES (:id, :cfg, :digest, 0, :now, :now)"
                ),
                {
                    "id": config.product_id,
                    "cfg": json.dumps(config.to_json_dict()),
                    "digest": config.digest(),
                    "now": datetime.now(UTC),
                },
            )
        with engine.begin() as conn:
            alembic_cfg.attributes["connection"] = conn
            command.upgrade(alembic_cfg, "0004")
        with Session(engine) as s:
            [row] = s.exec(select(ProductConfigVersion)).all()
    finally:
        engine.dispose()
    assert (row.product_id, row.version, row.status, row.change) == (
        PID,
        1,
        PolicyStatus.active,
        "initial",
    )
    assert row.digest == config.digest() and row.config_json == config.to_json_dict()
    assert (row.proposed_by, row.diff, row.reasons) == ("migration", [], {})


# ------------------------------------------------------------------ the command line


def as_actor(ws: Workspace, name: str) -> tuple[list[str], dict[str, str]]:
    """The CLI arguments and environment that make ``name`` the proven acting user."""
    return [], identity.token_env(ws, name)


def run(ws: Workspace, args: list[str], actor: str | None = None) -> Any:
    extra, env = as_actor(ws, actor) if actor else ([], {})
    return CliRunner().invoke(cli, [*args, *extra], env=env)


def test_cli_refuses_the_copy_and_changes_the_policy_with_four_eyes(
    setup: Setup, write_config: Callable[..., Path]
) -> None:
    copy = write_config({"governance": {"approvals_required": 1}}, "copy.yaml")
    refused = run(setup.ws, ["promote", str(copy)], actor="alice")
    assert refused.exit_code == 2
    assert "governance.approvals_required" in refused.output
    assert "geomesh products update" in refused.output

    proposed = run(setup.ws, ["products", "update", str(copy), "--json"], actor="root")
    assert proposed.exit_code == 0, proposed.output
    data = json.loads(proposed.output)
    assert data["outcome"] == "pending" and data["version"]["change"] == "loosening"
    digest = data["version"]["digest"]
    own = run(setup.ws, ["products", "approve", PID, digest], actor="root")
    assert own.exit_code == 2 and "cannot approve" in own.output
    ok = run(setup.ws, ["products", "approve", PID, digest], actor="bob")
    assert ok.exit_code == 0 and "approved by bob" in ok.output

    history = run(setup.ws, ["products", "history", PID])
    assert history.exit_code == 0
    assert "~ governance.approvals_required: 2 → 1" in history.output
    assert "active" in history.output and "superseded" in history.output
    shown = run(setup.ws, ["products", "show", PID])
    assert shown.exit_code == 0
    assert yaml.safe_load(shown.output)["governance"]["approvals_required"] == 1
    printed = copy.with_name("printed.yaml")  # what `show` prints is a config to pass
    printed.write_text(shown.output)
    same = run(setup.ws, ["products", "update", str(printed)], actor="root")
    assert same.exit_code == 0 and "equals its registered config" in same.output
    assert run(setup.ws, ["promote", str(copy)], actor="alice").exit_code == 0
