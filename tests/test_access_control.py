"""Access control: every state-changing service call × every role, against auth.PERMISSIONS.

Each case runs the REAL service function on its own copy of one prepared catalog (users of
every role, a quarantined item, items awaiting sign-off and promotion, two releases, a
failed webhook, a stale temporary file): on either backend a clone of the template
(``tests/_backend_clone.py``: a copied directory, or a PostgreSQL database created from the
template's plus buckets holding copies of its objects). The expectation comes from the permission table
itself: the call is refused with PermissionDenied exactly when the actor's role is not
allowed, and a refused call changes nothing (no row, no audit event, no file). The
``system`` principal may do everything except sign off, manage users and release a
quarantined item; an unknown or a disabled user may do nothing.

The app side: no page or UI helper reaches past the service layer (checked on the source).
"""

from __future__ import annotations

import ast
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import rasterio
import yaml
from _backend_clone import Place, Places, catalog_state
from rasterio.transform import from_origin
from sqlmodel import col, select

from geomesh import auth
from geomesh.auth import PERMISSIONS, SYSTEM, SYSTEM_ACTIONS
from geomesh.config import ProductConfig, load_config
from geomesh.doctor import run_doctor
from geomesh.errors import PermissionDenied
from geomesh.models import AuditEvent, Item, ItemState, Role
from geomesh.services import (
    outbox,
    policy,
    promotion,
    quarantine,
    remediation,
    rollback,
    signoff,
    users,
    validation,
)
from geomesh.services.pipeline import ingest_rasters
from geomesh.workspace import Workspace

from conftest import EXAMPLE_CONFIG, ROOT

#: role -> the actor that has it ("unknown" is a name no user has; "system" is built in)
ACTORS: dict[str, str] = {
    "admin": "root",
    "steward": "stew",
    "analyst": "ana",
    "viewer": "vic",
    "unknown": "mallory",
    "system": SYSTEM,
    "disabled": "dora",  # a steward an admin disabled
}


def allowed(role: str, action: str) -> bool:
    """What the permission table says (the single source of truth)."""
    if role == "system":
        return action in SYSTEM_ACTIONS
    if role in ("unknown", "disabled"):
        return False
    return Role(role) in PERMISSIONS[action]


# ------------------------------------------------------------------ the prepared catalog


def _tile(work: Path, name: str, seed: int, *, crs: str | None = "EPSG:32610") -> Path:
    path = work / name
    data = np.random.default_rng(seed).integers(1, 10000, (1, 128, 128)).astype("uint16")
    profile: dict[str, Any] = {
        "driver": "GTiff",
        "width": 128,
        "height": 128,
        "count": 1,
        "dtype": "uint16",
        "nodata": 0,
        "transform": from_origin(545000.0, 4185000.0, 10, 10),
    }
    if crs is not None:
        profile["crs"] = crs
    with rasterio.open(path, "w", **profile) as ds:
        ds.write(data)
        ds.update_tags(TIFFTAG_DATETIME="2024:06:12 19:03:21")
    return path


def _write_config(
    work: Path,
    name: str,
    *,
    relaxed: bool = False,
    disabled: tuple[str, ...] = (),
    approvals: int = 1,
) -> Path:
    data = yaml.safe_load(EXAMPLE_CONFIG)
    data["ingestion"]["tile_size"] = 128
    data["governance"] = {
        "approvals_required": approvals,
        "webhook_max_attempts": 1,
        # nothing listens on the discard port: deliveries fail at once
        "escalation": [{"name": "ops", "url": "http://127.0.0.1:9/hook", "events": ["finding"]}],
    }
    if relaxed:  # the steward's fix for the CRS-less tile
        data["validation"] = {"severity_overrides": {"GM-CRS-001": "P3", "GM-CONTRACT-001": "P3"}}
    if disabled:
        data.setdefault("validation", {})["disabled_rules"] = list(disabled)
    path = work / name
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


@dataclass
class Prepared:
    template: Place  #: the prepared catalog (read-only: each case gets a clone)
    config: Path
    relaxed: Path  #: the registered policy (an admin proposed it, a steward approved it)
    stricter: Path  #: the registered policy with two approvals (a tightening change)
    looser_digest: str  #: a loosening change proposed by the admin "boss", not approved yet
    quarantined: str  #: re-validated under the relaxed config: releasable
    awaiting: str  #: in validation, no sign-off yet
    approved: str  #: in validation, approved by a steward: promotable
    released: str  #: in the current release (1.1.0)
    extra_tile: Path  #: not ingested yet


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory, places: Places) -> Prepared:
    work = tmp_path_factory.mktemp("access")
    template = places.fresh(work / "template")
    root = template.root
    ws = template.open()
    # the system principal bootstraps the first admin; that admin adds everyone else
    users.add_user(ws, actor=SYSTEM, name=ACTORS["admin"], role="admin")
    for role, name in ACTORS.items():
        if role not in ("admin", "unknown", "system", "disabled"):
            users.add_user(ws, actor=ACTORS["admin"], name=name, role=role)
    users.add_user(ws, actor=ACTORS["admin"], name="alice", role="steward")
    users.add_user(ws, actor=ACTORS["admin"], name=ACTORS["disabled"], role="steward")
    users.set_disabled(ws, actor=ACTORS["admin"], name=ACTORS["disabled"], disabled=True)
    cfg_path = _write_config(work, "product.yaml")
    relaxed_path = _write_config(work, "relaxed.yaml", relaxed=True)
    cfg = load_config(cfg_path)

    def ingest(*tiles: Path) -> list[str]:
        report = ingest_rasters(ws, cfg, [str(t) for t in tiles], actor=SYSTEM)
        assert report.ok, report.to_json()
        return [r.item_id for r in report.results if r.item_id]

    def release(tile: Path) -> str:
        (item_id,) = ingest(tile)
        signoff.sign_off(ws, cfg, item_id, actor="alice", approve=True)
        assert promotion.promote(ws, cfg, actor="alice").release is not None
        return item_id

    release(_tile(work, "a.tif", 1))
    released = release(_tile(work, "b.tif", 2))  # 1.1.0
    (quarantined,) = ingest(_tile(work, "nocrs.tif", 3, crs=None))
    awaiting, approved = ingest(_tile(work, "c.tif", 4), _tile(work, "d.tif", 5))
    signoff.sign_off(ws, cfg, approved, actor="alice", approve=True)
    report = outbox.deliver_outbox(ws, configs=[cfg], actor=SYSTEM, timeout=2.0)
    assert report.failed, "the quarantine webhook should have failed"
    ingest(_tile(work, "nocrs2.tif", 7, crs=None))  # its webhook stays pending
    # the steward's fix is a policy change (issue 13): an admin proposes it (a loosening
    # change), a steward approves it; a further loosening change waits for approval
    users.add_user(ws, actor=ACTORS["admin"], name="boss", role="admin")
    relaxed = load_config(relaxed_path)
    proposed = policy.update_config(ws, relaxed, actor="boss")
    assert proposed.version is not None
    policy.approve_config(ws, relaxed.product_id, proposed.version.digest, actor="alice")
    assert quarantine.revalidate(ws, relaxed, quarantined, actor="alice").releasable
    looser = load_config(_write_config(work, "looser.yaml", relaxed=True, disabled=("GM-CRS-003",)))
    pending = policy.update_config(ws, looser, actor="boss")
    assert pending.outcome == "pending" and pending.version is not None
    # a local leftover `doctor --gc` collects on either backend (it walks the whole root)
    stale = root / "staging" / ".tmp-left-by-a-crash"
    stale.parent.mkdir(exist_ok=True)
    stale.write_bytes(b"half")
    os.utime(stale, (1_000_000_000, 1_000_000_000))
    with ws.read() as s:
        states = {i.id: i.state for i in s.exec(select(Item))}
    assert states[quarantined] is ItemState.quarantined
    assert states[awaiting] is states[approved] is ItemState.validation
    assert states[released] is ItemState.production
    ws.close()
    return Prepared(
        template=template,
        config=cfg_path,
        relaxed=relaxed_path,
        stricter=_write_config(work, "stricter.yaml", relaxed=True, approvals=2),
        looser_digest=pending.version.digest,
        quarantined=quarantined,
        awaiting=awaiting,
        approved=approved,
        released=released,
        extra_tile=_tile(work, "e.tif", 6),
    )


@dataclass
class Case:
    ws: Workspace
    p: Prepared
    config: ProductConfig  #: the registered (relaxed) config
    relaxed: ProductConfig
    stricter: ProductConfig


@pytest.fixture
def case(prepared: Prepared, places: Places, tmp_path: Path) -> Iterator[Case]:
    place = places.clone(prepared.template, tmp_path / "root")
    ws = place.open(migrate=False)
    relaxed = load_config(prepared.relaxed)
    yield Case(ws, prepared, relaxed, relaxed, load_config(prepared.stricter))
    ws.close()
    places.drop(place)


# ------------------------------------------------------------------ the calls


def _ingest(c: Case, actor: str) -> Any:
    report = ingest_rasters(c.ws, c.config, [str(c.p.extra_tile)], actor=actor)
    assert report.ok, report.to_json()


def _validate(c: Case, actor: str) -> Any:
    return validation.validate_item(c.ws, c.config, c.p.awaiting, actor=actor, strict=True)


CALLS: dict[str, tuple[str, Callable[[Case, str], Any]]] = {
    "ingest_rasters": ("ingest", _ingest),
    "validate_item": ("validate", _validate),
    "quarantine.revalidate": (
        "quarantine",
        lambda c, a: quarantine.revalidate(c.ws, c.config, c.p.quarantined, actor=a, strict=True),
    ),
    "quarantine.release": (
        "quarantine.release",
        lambda c, a: quarantine.release(c.ws, c.relaxed, c.p.quarantined, actor=a),
    ),
    "quarantine.discard": (
        "quarantine.discard",
        lambda c, a: quarantine.discard(c.ws, c.p.quarantined, actor=a, reason="broken"),
    ),
    "request_signoff": (
        "signoff.request",
        lambda c, a: signoff.request_signoff(c.ws, c.config, c.p.awaiting, actor=a),
    ),
    "sign_off": (
        "signoff",
        lambda c, a: signoff.sign_off(c.ws, c.config, c.p.awaiting, actor=a, approve=True),
    ),
    "promote": ("promote", lambda c, a: promotion.promote(c.ws, c.config, actor=a)),
    "rollback_item": (
        "rollback",
        lambda c, a: rollback.rollback_item(c.ws, c.config, c.p.released, actor=a),
    ),
    "rollback_release": (
        "rollback",
        lambda c, a: rollback.rollback_release(c.ws, c.config, actor=a, release_id="1.1.0"),
    ),
    "remediate_item": (
        "remediate",
        lambda c, a: remediation.remediate_item(c.ws, c.config, c.p.quarantined, actor=a),
    ),
    "users.add_user": (
        "users.manage",
        lambda c, a: users.add_user(c.ws, actor=a, name="newbie", role="viewer"),
    ),
    "retry_outbox": ("outbox.retry", lambda c, a: outbox.retry_outbox(c.ws, actor=a)),
    "deliver_outbox": (
        "outbox.retry",
        lambda c, a: outbox.deliver_outbox(c.ws, configs=[c.config], actor=a, timeout=2.0),
    ),
    "doctor --gc": ("doctor.gc", lambda c, a: run_doctor(c.ws, gc=True, min_age_s=0, actor=a)),
    "policy.update_config": (
        "product.config",
        lambda c, a: policy.update_config(c.ws, c.stricter, actor=a),
    ),
    "policy.approve_config": (
        "product.config.approve",
        lambda c, a: policy.approve_config(c.ws, c.config.product_id, c.p.looser_digest, actor=a),
    ),
}
#: calls that, allowed, may legitimately change nothing (none today; kept explicit)
MAY_BE_NO_OP: frozenset[str] = frozenset()


def test_every_permission_is_exercised_by_a_service_call() -> None:
    assert {action for action, _ in CALLS.values()} == set(PERMISSIONS)


@pytest.mark.parametrize("role", list(ACTORS))
@pytest.mark.parametrize("call", list(CALLS))
def test_role_matrix(call: str, role: str, case: Case) -> None:
    action, fn = CALLS[call]
    actor = ACTORS[role]
    before = catalog_state(case.ws)
    if allowed(role, action):
        fn(case, actor)
        if call not in MAY_BE_NO_OP:
            assert catalog_state(case.ws) != before, f"{call} by {role} changed nothing"
        return
    with pytest.raises(PermissionDenied) as info:
        fn(case, actor)
    assert actor in str(info.value) or role == "system", str(info.value)
    assert catalog_state(case.ws) == before, f"the refused {call} by {role} changed something"


def test_the_submitter_cannot_approve_even_as_a_steward(case: Case) -> None:
    with case.ws.read() as s:
        item = s.get(Item, case.p.awaiting)
        assert item is not None and item.submitted_by == SYSTEM
    ingest_rasters(case.ws, case.config, [str(case.p.extra_tile)], actor="stew")
    with case.ws.read() as s:
        mine = s.exec(select(Item).where(Item.submitted_by == "stew")).one()
    before = catalog_state(case.ws)
    with pytest.raises(PermissionDenied, match="cannot approve"):
        signoff.sign_off(case.ws, case.config, mine.id, actor="stew", approve=True)
    assert catalog_state(case.ws) == before


def test_a_role_change_takes_effect_on_the_next_call(case: Case) -> None:
    """Roles are read from the database on every call, never cached."""
    with pytest.raises(PermissionDenied):
        promotion.promote(case.ws, case.config, actor="vic")
    with case.ws.transaction() as s:
        user = auth.get_user(s, "vic")
        assert user is not None
        user.role = Role.steward
        s.add(user)
    assert promotion.promote(case.ws, case.config, actor="vic").release is not None


def test_refusals_leave_no_trace_in_the_audit_trail(case: Case) -> None:
    """A refused call is not an event: the chain does not grow (the refusal is the error)."""

    def last_seq() -> int | None:
        with case.ws.read() as s:
            return s.exec(select(AuditEvent.seq).order_by(col(AuditEvent.seq).desc())).first()

    last = last_seq()
    for name, (_, fn) in CALLS.items():
        with pytest.raises(PermissionDenied):
            fn(case, "mallory")
        assert last_seq() == last, name


# ------------------------------------------------------------------ the app stays thin

APP_FILES = sorted(
    [ROOT / "app.py", *(ROOT / "pages").glob("*.py"), *(ROOT / "ui").glob("*.py")],
    key=str,
)
#: modules the app may import from geomesh: the services, their error types, settings
ALLOWED_GEOMESH = (
    "geomesh.services",
    "geomesh.errors",
    "geomesh.workspace",
    "geomesh.settings",
    "geomesh.config",
    "geomesh.preview",
    "geomesh.redact",  # text only: strips credentials from messages at the edge
)
FORBIDDEN_MODULES = ("sqlmodel", "sqlalchemy", "rasterio", "rio_cogeo", "psycopg", "obstore")
#: method names that write the database or the object store directly
FORBIDDEN_CALLS = frozenset(
    {
        "add",
        "add_all",
        "commit",
        "flush",
        "transaction",
        "put_bytes",
        "put_file",
        "transition",
        "append",
        "delete",
    }
)


def _imports(tree: ast.AST) -> Iterator[str]:
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            yield node.module
            yield from (f"{node.module}.{a.name}" for a in node.names)


def _writes(tree: ast.AST) -> Iterator[str]:
    """Calls like ``session.add(...)``, ``cat.store.put_bytes(...)``, ``x.commit()``."""
    for node in ast.walk(tree):
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)):
            continue
        if node.func.attr not in FORBIDDEN_CALLS:
            continue
        owner = ast.unparse(node.func.value)
        # streamlit containers/session state are not storage
        if owner.startswith(("st.", "st_")) or owner in ("st", "messages", "rows", "parts"):
            continue
        if node.func.attr in ("add", "append", "delete") and not any(
            word in owner for word in ("session", "store", "cat", "db")
        ):
            continue
        yield f"{owner}.{node.func.attr}() at line {node.lineno}"


def test_app_code_exists() -> None:
    assert (ROOT / "app.py").is_file() and len(APP_FILES) > 5


@pytest.mark.parametrize("path", APP_FILES, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_no_page_action_bypasses_the_service_layer(path: Path) -> None:
    source = path.read_text()
    tree = ast.parse(source)
    bad = [
        m
        for m in _imports(tree)
        if m.split(".")[0] in FORBIDDEN_MODULES
        or (m.startswith("geomesh") and not m.startswith(ALLOWED_GEOMESH) and m != "geomesh")
    ]
    assert not bad, f"{path.name} imports {bad}: call geomesh.services instead"
    writes = list(_writes(tree))
    assert not writes, f"{path.name} writes past the services: {writes}"


def test_the_thin_app_check_can_fail(tmp_path: Path) -> None:
    """The source checks catch the bypasses they are meant to catch."""
    tree = ast.parse(
        "from sqlmodel import Session\n"
        "from geomesh.models import Item\n"
        "with cat.transaction() as session:\n"
        "    session.add(Item())\n"
        "cat.store.put_bytes('meta', 'k', b'')\n"
    )
    imports = list(_imports(tree))
    assert "sqlmodel" in imports and "geomesh.models" in imports
    assert len(list(_writes(tree))) == 3
