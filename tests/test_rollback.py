"""Item and release rollback: exact restore, idempotence, O(delta) cost, CLI token."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import governance_support as gs
import pytest
from _statements import executed
from click.testing import CliRunner
from identity_support import token_env
from sqlmodel import select

from geomesh import audit, releases
from geomesh.config import ProductConfig
from geomesh.doctor import run_doctor
from geomesh.errors import NotCurrentRelease, NothingToRollBack, PermissionDenied
from geomesh.models import AuditEvent, Product
from geomesh.services import history, promotion, rollback
from geomesh.workspace import Workspace

PID = "sentinel2-msi-l2a-v2.1"


@pytest.fixture
def ws(workspace: Workspace) -> Workspace:
    gs.add_users(workspace)
    return workspace


@pytest.fixture
def tile(make_raster: Callable[..., Path]) -> Callable[..., Path]:
    return gs.tile_factory(make_raster)


def release(ws: Workspace, config: ProductConfig, paths: list[Path]) -> history.ReleaseInfo:
    ids = gs.ingest(ws, config, paths)
    gs.approve(ws, config, ids)
    result = promotion.promote(ws, config, actor="alice")
    assert result.release is not None
    return result.release


def pointer(ws: Workspace) -> tuple[str | None, int]:
    with ws.read() as s:
        p = s.get(Product, PID)
        assert p is not None
        return p.current_release_id, p.version_counter


def test_release_rollback_restores_exactly_the_previous_manifest(
    ws: Workspace, config: ProductConfig, tile: Callable[..., Path]
) -> None:
    r1 = release(ws, config, [tile("a", 1), tile("b", 2)])
    before = gs.states(ws, PID)
    # 1.1.0 adds c and reprocesses a (a's old version superseded)
    r2 = release(ws, config, [tile("a", 5), tile("c", 3)])
    assert gs.production_ids(ws, PID) == gs.manifest_ids(ws, PID, r2.id)
    assert "superseded" in gs.states(ws, PID).values()

    result = rollback.rollback_release(ws, config, actor="bob", release_id=r2.id)
    assert not result.already
    assert result.current_release_id == r1.id and result.current_version == "1.0.0"
    assert pointer(ws)[0] == r1.id
    assert gs.production_ids(ws, PID) == gs.manifest_ids(ws, PID, r1.id)
    after = gs.states(ws, PID)
    # every item of r1 is back in its r1 state; r2's new versions are withdrawn
    assert {i: after[i] for i in before} == before
    assert {after[i] for i in set(after) - set(before)} == {"withdrawn"}
    shown = history.show_release(ws, PID, r2.id)
    assert shown["deprecated"] and not shown["current"]


def test_release_rollback_twice_equals_once(
    ws: Workspace, config: ProductConfig, tile: Callable[..., Path]
) -> None:
    release(ws, config, [tile("a", 1)])
    r2 = release(ws, config, [tile("b", 2)])
    rollback.rollback_release(ws, config, actor="bob", release_id=r2.id)
    snapshot = (gs.states(ws, PID), pointer(ws), _events(ws))
    again = rollback.rollback_release(ws, config, actor="bob", release_id=r2.id)
    assert again.already and "already rolled back" in again.message
    assert (gs.states(ws, PID), pointer(ws), _events(ws)) == snapshot


def test_bare_release_rollback_twice_equals_once_and_going_further_names_the_release(
    ws: Workspace, config: ProductConfig, tile: Callable[..., Path]
) -> None:
    r1 = release(ws, config, [tile("a", 1)])
    r2 = release(ws, config, [tile("b", 2)])
    r3 = release(ws, config, [tile("c", 3)])
    first = rollback.rollback_release(ws, config, actor="bob")  # undo the latest: 1.2.0
    assert not first.already and first.current_release_id == r2.id
    snapshot = (gs.states(ws, PID), pointer(ws), _events(ws))
    second = rollback.rollback_release(ws, config, actor="bob")
    assert second.already and second.current_release_id == r2.id
    assert "already rolled back" in second.message and "--release 1.1.0" in second.message
    assert (gs.states(ws, PID), pointer(ws), _events(ws)) == snapshot
    # going further back is explicit: name the release that is current now
    further = rollback.rollback_release(ws, config, actor="bob", release_id="1.1.0")
    assert not further.already and further.current_release_id == r1.id
    assert gs.production_ids(ws, PID) == gs.manifest_ids(ws, PID, r1.id)
    # a new release after the rollback is the latest again: a bare rollback undoes it
    r4 = release(ws, config, [tile("d", 4)])
    assert r4.id not in {r1.id, r2.id, r3.id}
    undo = rollback.rollback_release(ws, config, actor="bob")
    assert not undo.already and undo.current_release_id == r1.id


def test_cli_bare_release_rollback_is_idempotent(
    ws: Workspace, config: ProductConfig, config_path: Path, tile: Callable[..., Path]
) -> None:
    from geomesh.cli import cli

    r1 = release(ws, config, [tile("a", 1)])
    release(ws, config, [tile("b", 2)])
    runner = CliRunner(env=token_env(ws, "bob"))
    args = ["rollback", str(config_path), "--release", "--actor", "bob"]
    outs = [runner.invoke(cli, args) for _ in range(2)]
    assert [o.exit_code for o in outs] == [0, 0], [o.output for o in outs]
    assert "already rolled back" in outs[1].stdout
    for out in outs:
        assert out.stdout.splitlines()[-1] == f"PRODUCT_ROLLBACK_COMPLETE: {r1.id}"


def _events(ws: Workspace) -> int:
    with ws.read() as s:
        return len(s.exec(select(AuditEvent.seq)).all())


def test_rollback_of_a_non_current_release_that_never_was_rolled_back_is_refused(
    ws: Workspace, config: ProductConfig, tile: Callable[..., Path]
) -> None:
    r1 = release(ws, config, [tile("a", 1)])
    release(ws, config, [tile("b", 2)])
    with pytest.raises(NotCurrentRelease, match="not the current release"):
        rollback.rollback_release(ws, config, actor="bob", release_id=r1.id)


def test_rolling_back_the_first_release_withdraws_it_idempotently(
    ws: Workspace, config: ProductConfig, tile: Callable[..., Path]
) -> None:
    """Withdrawal: the product has no current release, the index says so, a repeat is a
    no-op, and the next promote continues from the highest version ever released."""
    with pytest.raises(NothingToRollBack, match="no release"):
        # the product exists only once something was ingested
        gs.ingest(ws, config, [tile("z", 9)], post_stage=gs.stay_in_staging)
        rollback.rollback_release(ws, config, actor="bob")
    first = release(ws, config, [tile("a", 1), tile("b", 2)])
    released = gs.manifest_ids(ws, PID)
    done = rollback.rollback_release(ws, config, actor="bob")
    assert not done.already and done.current_release_id is None and done.release_id == first.id
    assert "no release is current" in done.message
    assert gs.production_ids(ws, PID) == set()
    assert {gs.states(ws, PID)[i] for i in released} == {"withdrawn"}
    index = json.loads(ws.store.get_bytes("production", releases.index_key(PID)))
    assert index["geomesh:current"] is None and index["links"] == []
    assert [(r["version"], r["deprecated"], r["current"]) for r in index["geomesh:releases"]] == [
        ("1.0.0", True, False)
    ]
    with ws.read() as s:
        product = s.get(Product, PID)
        assert product is not None and product.current_release_id is None
        events = len(s.exec(select(AuditEvent)).all())
    # a repeat (bare or naming the release) changes nothing
    for again in (
        rollback.rollback_release(ws, config, actor="bob"),
        rollback.rollback_release(ws, config, actor="bob", release_id="1.0.0"),
    ):
        assert again.already and again.current_release_id is None
    with ws.read() as s:
        assert len(s.exec(select(AuditEvent)).all()) == events
    assert [r.current for r in history.list_releases(ws, PID)] == [False]
    assert run_doctor(ws, deep=True).consistent
    # the next release continues the versions (never a second 1.0.0)
    later = release(ws, config, [tile("c", 3)])
    assert later.version == "2.0.0" and later.parent_id is None
    assert gs.manifest_ids(ws, PID) == {
        i for i, s in gs.states(ws, PID).items() if s == "production"
    }
    # and it can be withdrawn in turn
    assert rollback.rollback_release(ws, config, actor="bob").current_release_id is None
    assert run_doctor(ws, deep=True).consistent


def test_item_rollback_makes_a_patch_release_without_the_item(
    ws: Workspace, config: ProductConfig, tile: Callable[..., Path]
) -> None:
    r1 = release(ws, config, [tile("a", 1), tile("b", 2)])
    bad = sorted(gs.manifest_ids(ws, PID))[0]
    result = rollback.rollback_item(ws, config, bad, actor="bob")
    assert not result.already and result.current_version == "1.0.1"
    assert gs.manifest_ids(ws, PID) == gs.manifest_ids(ws, PID, r1.id) - {bad}
    assert gs.states(ws, PID)[bad] == "withdrawn"
    assert gs.production_ids(ws, PID) == gs.manifest_ids(ws, PID)
    snapshot = (gs.states(ws, PID), pointer(ws), _events(ws))
    again = rollback.rollback_item(ws, config, bad, actor="bob")
    assert again.already and "already rolled back" in again.message
    assert (gs.states(ws, PID), pointer(ws), _events(ws)) == snapshot
    # rolling back the PATCH release brings the item back
    rollback.rollback_release(ws, config, actor="bob", release_id=result.release_id)
    assert gs.production_ids(ws, PID) == gs.manifest_ids(ws, PID, r1.id)
    assert gs.states(ws, PID)[bad] == "production"


def test_item_rollback_of_an_unreleased_item_is_refused(
    ws: Workspace, config: ProductConfig, tile: Callable[..., Path]
) -> None:
    release(ws, config, [tile("a", 1)])
    [waiting] = gs.ingest(ws, config, [tile("b", 2)])
    with pytest.raises(NothingToRollBack, match="not in the current release"):
        rollback.rollback_item(ws, config, waiting, actor="bob")


def test_rollback_needs_a_role(
    ws: Workspace, config: ProductConfig, tile: Callable[..., Path]
) -> None:
    release(ws, config, [tile("a", 1)])
    release(ws, config, [tile("b", 2)])
    for actor in ("ana", "vic"):
        with pytest.raises(PermissionDenied):
            rollback.rollback_release(ws, config, actor=actor)


def test_rollback_events_are_audited_and_chain_verifies(
    ws: Workspace, config: ProductConfig, tile: Callable[..., Path]
) -> None:
    release(ws, config, [tile("a", 1)])
    r2 = release(ws, config, [tile("b", 2)])
    rollback.rollback_release(ws, config, actor="bob")
    with ws.read() as s:
        ev = s.exec(select(AuditEvent).where(AuditEvent.action == "rollback.release")).all()
        item_events = [e for e in ev if e.target != r2.id]
        [release_event] = [e for e in ev if e.target == r2.id]
        assert release_event.actor == "bob" and release_event.details["restored_version"] == "1.0.0"
        assert [(e.state_before, e.state_after) for e in item_events] == [
            ("production", "withdrawn")
        ]
        assert audit.verify(s, ws.audit_key) == []


# ------------------------------------------------------------------ O(delta) cost


def _rollback_cost(
    ws: Workspace, config: ProductConfig, tile: Callable[..., Path], n: int
) -> list[tuple[str, Any]]:
    """Roll back a one-item release whose parent holds ``n`` items; the SQL it ran."""
    release(ws, config, [tile(f"base{i}", 100 + i) for i in range(n)])
    top = release(ws, config, [tile("extra", 7)])
    with executed(ws.engine) as seen:
        rollback.rollback_release(ws, config, actor="bob", release_id=top.id)
    return seen


def test_release_rollback_cost_does_not_grow_with_the_release_size(
    workspace: Workspace,
    config: ProductConfig,
    tile: Callable[..., Path],
) -> None:
    gs.add_users(workspace)
    small = _rollback_cost(workspace, config, tile, 1)
    # a second product in the same catalog (and so on the same backend) with 12 items
    big_config = config.model_copy(
        update={
            "product_metadata": config.product_metadata.model_copy(
                update={"product_id": "sentinel2-big"}
            )
        }
    )
    big_cat = workspace
    big = _rollback_cost(big_cat, big_config, tile, 12)

    def shape(seen: list[tuple[str, Any]]) -> list[str]:
        return [re.sub(r"\s+", " ", sql) for sql, _ in seen]

    # the same statements, with the same number of parameters, at 1 and 12 items
    assert shape(small) == shape(big)
    assert [len(p or ()) for _, p in small] == [len(p or ()) for _, p in big]
    # and no statement reads the product's items wholesale
    for sql in shape(big):
        assert not re.search(r"FROM item WHERE item\.product_id", sql), sql
    # (the guard above does match how a whole-product read looks)
    with executed(big_cat.engine) as seen:
        promotion.plan_promotion(big_cat, big_config)
    assert any(re.search(r"FROM item WHERE item\.product_id", sql) for sql in shape(seen))


def test_cli_rollback_prints_the_completion_token(
    ws: Workspace, config: ProductConfig, config_path: Path, tile: Callable[..., Path]
) -> None:
    from geomesh.cli import cli

    r1 = release(ws, config, [tile("a", 1)])
    r2 = release(ws, config, [tile("b", 2)])
    runner = CliRunner(env=token_env(ws, "bob"))
    args = ["rollback", str(config_path), "--release", r2.id, "--actor", "bob"]
    first = runner.invoke(cli, args)
    assert first.exit_code == 0, first.output
    assert first.stdout.splitlines()[-1] == f"PRODUCT_ROLLBACK_COMPLETE: {r1.id}"
    second = runner.invoke(cli, args)
    assert second.exit_code == 0, second.output
    assert "already rolled back" in second.stdout
    assert second.stdout.splitlines()[-1] == f"PRODUCT_ROLLBACK_COMPLETE: {r1.id}"
    item = sorted(gs.manifest_ids(ws, PID))[0]
    out = runner.invoke(cli, ["rollback", str(config_path), "--item", item, "--actor", "bob"])
    assert out.exit_code == 0, out.output
    assert re.fullmatch(r"PRODUCT_ROLLBACK_COMPLETE: [0-9a-f]{64}", out.stdout.splitlines()[-1])
    both = runner.invoke(cli, ["rollback", str(config_path), "--item", item, "--release"])
    assert both.exit_code == 2
    denied = runner.invoke(
        cli, ["rollback", str(config_path), "--release", "--actor", "vic"], env=token_env(ws, "vic")
    )
    assert denied.exit_code == 2 and "viewer" in denied.output
