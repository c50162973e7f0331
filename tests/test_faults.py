"""Faults of the parts: the object store (SeaweedFS) dies mid-operation, the database
connection is cut mid-transaction.

Each test interrupts a promote or an ingest with a real fault of a real part, then checks:
nothing is half-visible (`geomesh doctor --deep` finds no error; no release row without
its catalog once re-run; no item row without its objects), the error the user sees names
the part that failed (the object store / S3, or the database), and re-running the command
converges to what an uninterrupted run gives.

- Database: a loopback TCP proxy (``tests/_proxy.py``) sits between the `geomesh` CLI and
  PostgreSQL and cuts every connection when the CLI sends a given statement (before it
  reaches the server, or a COMMIT just after: the outcome unknown to the client). An
  inbound sign-off (`geomesh api`) cut the same way is an outage (503), not a refusal: the
  approval tool's retry with the same Idempotency-Key is accepted.
- Object store: a private SeaweedFS server (``conftest.SeaweedFS``; not the session's) is
  SIGKILLed at a named write step (``geomesh.faults`` points, hooked in-process) and then
  restarted on the same ports and data directory.
"""

from __future__ import annotations

import json
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import governance_support as gs
import pytest
from _proxy import TcpProxy
from _worker_support import run_geomesh
from identity_support import token_env
from sqlalchemy.engine import make_url
from sqlmodel import col, select

from geomesh import faults, releases
from geomesh.api.app import status_of
from geomesh.config import ProductConfig, load_config
from geomesh.doctor import run_doctor
from geomesh.errors import DatabaseError, StoreUnavailable
from geomesh.models import AuditEvent, Item, Product, Release, ValidationRun
from geomesh.services import history, promotion
from geomesh.services.integrations import add_integration
from geomesh.services.pipeline import ingest_rasters
from geomesh.services.webhook_signoff import InboundRequest, receive_signoff, sign_request
from geomesh.settings import Settings
from geomesh.workspace import Workspace

from conftest import SHARED, SeaweedFS

SCHEMAS = SHARED / "stac-schemas"
#: doctor warnings a re-run must have repaired (a release's catalog, the release index)
REPAIRED_BY_RERUN = {"unpublished-catalog", "stale-index", "partial-catalog"}


# ------------------------------------------------------------------ what "converged" means


def assert_nothing_half_visible(ws: Workspace, *, rerun: bool = False) -> None:
    """`geomesh doctor --deep` finds no error (after a re-run: nothing left to repair)."""
    report = run_doctor(ws, deep=True)
    assert report.consistent, report.to_json()
    if rerun:
        assert not report.kinds("warning") & REPAIRED_BY_RERUN, report.to_json()
    assert history.verify_audit(ws) == []


def _actions(ws: Workspace, action: str) -> Counter[str]:
    with ws.read() as s:
        return Counter(
            s.exec(select(AuditEvent.target).where(col(AuditEvent.action) == action)).all()
        )


def assert_released_once(ws: Workspace, pid: str, items: list[str]) -> None:
    """What one uninterrupted promote of ``items`` leaves: one release 1.0.0 holding them,
    current and published (its catalog and the index), each step audited once."""
    with ws.read() as s:
        rels = s.exec(select(Release)).all()
        product = s.get(Product, pid)
    assert [r.version for r in rels] == ["1.0.0"], [r.version for r in rels]
    assert product is not None and product.current_release_id == rels[0].id
    assert gs.production_ids(ws, pid) == set(items)
    assert gs.manifest_ids(ws, pid) == set(items)
    assert _actions(ws, "promote") == Counter({i: 1 for i in items})
    assert sum(_actions(ws, "release.publish").values()) == 1
    assert ws.store.exists("production", releases.catalog_key(pid, "1.0.0"))
    index = json.loads(ws.store.get_bytes("production", f"catalogs/{pid}/latest.json"))
    assert index["geomesh:current"] == rels[0].id or any(
        r.get("current") and r["version"] == "1.0.0" for r in index["geomesh:releases"]
    ), index
    assert_nothing_half_visible(ws, rerun=True)


def assert_ingested_once(ws: Workspace, pid: str, n: int) -> None:
    """What one uninterrupted ingest of ``n`` clean tiles leaves: ``n`` items, each staged,
    validated and routed once (state 'validation')."""
    states = gs.states(ws, pid)
    assert len(states) == n and set(states.values()) == {"validation"}, states
    with ws.read() as s:
        runs = Counter(s.exec(select(ValidationRun.item_id)).all())
    assert runs == Counter({i: 1 for i in states})
    assert _actions(ws, "ingest") == Counter({i: 1 for i in states})
    assert _actions(ws, "route.proceed") == Counter({i: 1 for i in states})
    assert_nothing_half_visible(ws, rerun=True)


def _approved_items(
    ws: Workspace, cfg: ProductConfig, make_raster: Callable[..., Path], n: int = 2
) -> list[str]:
    gs.add_users(ws)
    tile = gs.tile_factory(make_raster)
    items = gs.ingest(ws, cfg, [tile(f"f{k}", 40 + k) for k in range(n)])
    gs.approve(ws, cfg, items)
    return items


def _error_line(stderr: str) -> str:
    """The one line the CLI prints for a GeomeshError (never a traceback)."""
    assert "Traceback" not in stderr, stderr
    lines = [ln for ln in stderr.strip().splitlines() if ln.startswith("error: ")]
    assert len(lines) == 1, stderr
    return lines[0]


# ------------------------------------------------------------------ the database


@pytest.fixture
def proxied_postgres(
    tmp_path: Path, migrated_postgres_env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[Workspace, TcpProxy]]:
    """The test's own workspace (direct to PostgreSQL) and a proxy every `geomesh` CLI run
    goes through (``GEOMESH_DATABASE_URL`` points at it); local object store."""
    direct = make_url(migrated_postgres_env["GEOMESH_DATABASE_URL"])
    proxy = TcpProxy(direct.port or 5432, direct.host or "127.0.0.1")
    via_proxy = direct.set(host="127.0.0.1", port=proxy.port, query={"sslmode": "disable"})
    root = tmp_path / "root"
    env = {
        "GEOMESH_STORAGE_ROOT": str(root),
        "GEOMESH_OBJECT_STORE": "local",
        "GEOMESH_DATABASE_URL": via_proxy.render_as_string(hide_password=False),
    }
    if SCHEMAS.is_dir():
        env["GEOMESH_SCHEMA_DIR"] = str(SCHEMAS)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    ws = Workspace.open(
        Settings(
            storage_root=root,
            database_url=direct.render_as_string(hide_password=False),
            object_store="local",
        )
    )
    try:
        yield ws, proxy
    finally:
        ws.close()
        proxy.close()


def _names_the_database(line: str) -> None:
    assert "database" in line.lower() and "postgresql" in line, line
    assert "s3" not in line.lower() and "object" not in line.lower(), line


@pytest.mark.postgres
@pytest.mark.parametrize("cut", ["before-the-release-row", "commit-in-flight"])
def test_a_connection_cut_during_a_promote_leaves_nothing_half_visible_and_a_rerun_converges(
    proxied_postgres: tuple[Workspace, TcpProxy],
    config_path: Path,
    make_raster: Callable[..., Path],
    cut: str,
) -> None:
    ws, proxy = proxied_postgres
    cfg = load_config(config_path)
    items = _approved_items(ws, cfg, make_raster)
    env = token_env(ws, "alice")
    if cut == "before-the-release-row":  # the transaction dies before the release row
        proxy.cut_when(b"INSERT INTO release")
    else:  # the server commits, the client never hears back
        proxy.cut_when(b"COMMIT", forward=True, after=b"INSERT INTO release")

    run = run_geomesh(["promote", str(config_path)], **env)
    assert proxy.fired(), run.stderr
    assert run.returncode == 2, run.stdout + run.stderr
    _names_the_database(_error_line(run.stderr))
    assert_nothing_half_visible(ws)
    with ws.read() as s:
        rows = s.exec(select(Release)).all()
    if cut == "before-the-release-row":
        assert rows == [] and gs.production_ids(ws, cfg.product_id) == set()
    else:  # committed whole: the release and the item states, its catalog is left to do
        assert len(rows) == 1 and gs.production_ids(ws, cfg.product_id) == set(items)

    again = run_geomesh(["promote", str(config_path)], **env)
    assert again.returncode == 0, again.stdout + again.stderr
    assert_released_once(ws, cfg.product_id, items)


@pytest.mark.postgres
def test_a_connection_cut_during_an_ingest_fails_that_tile_only_and_a_rerun_converges(
    proxied_postgres: tuple[Workspace, TcpProxy],
    config_path: Path,
    make_raster: Callable[..., Path],
) -> None:
    ws, proxy = proxied_postgres
    cfg = load_config(config_path)
    tile = gs.tile_factory(make_raster)
    tiles = [str(tile(f"i{k}", 60 + k)) for k in range(2)]
    proxy.cut_when(b"INSERT INTO item")  # the first tile's row never reaches the server

    run = run_geomesh(["ingest", str(config_path), *tiles, "--workers", "1", "--json"])
    assert proxy.fired(), run.stderr
    assert run.returncode == 1, run.stdout + run.stderr  # a tile failed; not a crash
    assert "Traceback" not in run.stderr, run.stderr
    results = json.loads(run.stdout)["results"]
    assert [r["status"] for r in results] == ["failed", "staged"], results
    _names_the_database(results[0]["error"])
    assert_nothing_half_visible(ws)
    assert len(gs.states(ws, cfg.product_id)) == 1  # the cut tile has no row at all

    again = run_geomesh(["ingest", str(config_path), *tiles, "--workers", "1", "--json"])
    assert again.returncode == 0, again.stdout + again.stderr
    assert_ingested_once(ws, cfg.product_id, 2)


WEBHOOK_SECRET = "fault-test-approvals-secret-0123456789"


def _signed_decision(item: Item, key: str) -> InboundRequest:
    """``POST /v1/signoff`` as the approval tool sends it: bob approves ``item``."""
    body = json.dumps(
        {
            "product_id": item.product_id,
            "item_id": item.id,
            "content_digest": item.content_digest,
            "decision": "approve",
            "approver": "U-BOB",
        }
    ).encode()
    stamp = str(int(time.time()))
    path = "/v1/signoff"
    signature = sign_request(WEBHOOK_SECRET.encode(), stamp, key, "POST", path, body)
    headers = {
        "x-geomesh-integration": "chat",
        "x-geomesh-timestamp": stamp,
        "x-geomesh-signature": signature,
        "idempotency-key": key,
    }
    return InboundRequest("POST", path, headers, body, "127.0.0.1")


@pytest.mark.postgres
def test_a_connection_cut_during_an_inbound_decision_is_an_outage_not_a_refusal(
    proxied_postgres: tuple[Workspace, TcpProxy],
    config_path: Path,
    make_raster: Callable[..., Path],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    ws, proxy = proxied_postgres
    cfg = load_config(config_path)
    gs.add_users(ws)
    add_integration(ws, "chat", secret_env="GEOMESH_TEST_FAULT_SECRET",
                    approvers={"U-BOB": "bob"}, actor="root")  # fmt: skip
    monkeypatch.setenv("GEOMESH_TEST_FAULT_SECRET", WEBHOOK_SECRET)
    [item_id] = gs.ingest(ws, cfg, [gs.tile_factory(make_raster)("w", 90)])
    with ws.read() as s:
        item = s.get(Item, item_id)
    assert item is not None
    api_ws = Workspace.open(Settings(), migrate=False)  # through the proxy, as `geomesh api`
    try:
        request = _signed_decision(item, key="tool-request-1")
        proxy.cut_when(b"INSERT INTO webhook_receipt")
        with pytest.raises(DatabaseError) as cut:
            receive_signoff(api_ws, request)
        assert proxy.fired()
        _names_the_database(str(cut.value))
        assert status_of(cut.value) == 503  # the tool is told to retry, not refused
        assert _actions(ws, "webhook.refused") == Counter()  # not recorded as a refusal
        # the tool retries the same request (same Idempotency-Key): accepted once
        outcome = receive_signoff(api_ws, request)
    finally:
        api_ws.close()
    assert outcome.status.approved_by == ("bob",)
    assert _actions(ws, "signoff.approve") == Counter({item_id: 1})
    assert_nothing_half_visible(ws)


# ------------------------------------------------------------------ the object store


@pytest.fixture(scope="module")
def private_s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SeaweedFS]:
    """A SeaweedFS server of this module only: the tests kill and restart it."""
    server = SeaweedFS(tmp_path_factory.mktemp("private-seaweedfs"))
    server.start()
    try:
        yield server
    finally:
        server.close()


@pytest.fixture
def s3_workspace(
    private_s3: SeaweedFS,
    migrated_postgres_env: dict[str, str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[Workspace]:
    """PostgreSQL + fresh buckets on the private SeaweedFS (also for `geomesh` CLI runs)."""
    if private_s3.proc is None or private_s3.proc.poll() is not None:
        private_s3.start()  # a failed test may have left it down
    bucket = f"gm-{uuid.uuid4().hex[:16]}"
    for name in (bucket, f"{bucket}-quarantine"):
        private_s3.service.create_bucket(name)
    env = {
        **migrated_postgres_env,
        **private_s3.service.env(bucket, f"{bucket}-quarantine"),
        "GEOMESH_STORAGE_ROOT": str(tmp_path / "root"),
    }
    if SCHEMAS.is_dir():
        env["GEOMESH_SCHEMA_DIR"] = str(SCHEMAS)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    ws = Workspace.open(Settings())
    try:
        yield ws
    finally:
        ws.close()


@contextmanager
def store_dies_at(
    server: SeaweedFS, point: str, monkeypatch: pytest.MonkeyPatch
) -> Iterator[list[str]]:
    """SIGKILL the S3 server the first time geomesh reaches the write step ``point``
    (``geomesh.faults``); yields the points reached, for the assertion that it happened."""
    real = faults.point
    reached: list[str] = []

    def hooked(name: str) -> None:
        real(name)
        reached.append(name)
        if name == point and reached.count(point) == 1:
            server.kill()

    with monkeypatch.context() as m:
        m.setattr(faults, "point", hooked)
        yield reached
    assert point in reached, reached


def _names_the_object_store(text: str) -> None:
    assert "s3://" in text and "S3 bucket" in text, text
    assert "database" not in text.lower(), text
    assert "re-ingest" not in text and "backup" not in text, text  # an outage, not a loss


@pytest.mark.postgres
@pytest.mark.s3
@pytest.mark.parametrize("point", ["promote.objects_copied", "promote.committed"])
def test_the_object_store_dying_during_a_promote_leaves_nothing_half_visible(
    s3_workspace: Workspace,
    private_s3: SeaweedFS,
    config_path: Path,
    make_raster: Callable[..., Path],
    monkeypatch: pytest.MonkeyPatch,
    point: str,
) -> None:
    ws = s3_workspace
    cfg = load_config(config_path)
    items = _approved_items(ws, cfg, make_raster)
    env = token_env(ws, "alice")
    with store_dies_at(private_s3, point, monkeypatch), pytest.raises(StoreUnavailable) as died:
        promotion.promote(ws, cfg, actor="alice")
    _names_the_object_store(str(died.value))
    # the CLI, while the store is still down: one line that names it
    down = run_geomesh(["promote", str(config_path)], **env)
    assert down.returncode == 2, down.stdout + down.stderr
    _names_the_object_store(_error_line(down.stderr))

    private_s3.start()  # same ports, same data
    assert_nothing_half_visible(ws)
    with ws.read() as s:
        rows = s.exec(select(Release)).all()
    if point == "promote.objects_copied":  # before the manifest: no release at all
        assert rows == [] and gs.production_ids(ws, cfg.product_id) == set()
    else:  # committed, its catalog not yet published: the re-run publishes it
        assert len(rows) == 1
    promotion.promote(ws, cfg, actor="alice")
    assert_released_once(ws, cfg.product_id, items)


@pytest.mark.postgres
@pytest.mark.s3
def test_the_object_store_dying_during_an_ingest_fails_its_tiles_and_a_rerun_converges(
    s3_workspace: Workspace,
    private_s3: SeaweedFS,
    config_path: Path,
    make_raster: Callable[..., Path],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    ws = s3_workspace
    cfg = load_config(config_path)
    tile = gs.tile_factory(make_raster)
    tiles = [tile(f"o{k}", 80 + k) for k in range(2)]
    # the first tile's object and item JSON are stored, then the store dies
    with store_dies_at(private_s3, "ingest.files_stored", monkeypatch):
        report = ingest_rasters(ws, cfg, tiles, actor="system", workers=1)
    # the first tile's files were durable before the outage, and its admission validates
    # the local COG they were stored from (it reads nothing back), so its row commits; the
    # second tile cannot be stored
    assert [r.status for r in report.results] == ["staged", "failed"], report.to_json()
    assert report.results[1].error is not None
    _names_the_object_store(report.results[1].error)
    with pytest.raises(StoreUnavailable):  # doctor names the outage, not "missing" objects
        run_doctor(ws)

    private_s3.start()
    assert_nothing_half_visible(ws)
    assert list(gs.states(ws, cfg.product_id)) == [report.results[0].item_id]
    assert run_doctor(ws).consistent  # the staged row's object and item JSON are there
    again = ingest_rasters(ws, cfg, tiles, actor="system", workers=1)
    assert again.ok, again.to_json()
    assert_ingested_once(ws, cfg.product_id, 2)
