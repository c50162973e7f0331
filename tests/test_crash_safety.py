"""Crash safety: SIGKILL the CLI at every write step; the catalog stays consistent and converges.

For each scenario the harness (1) builds the pre-operation catalog with in-process service
calls, (2) runs the operation once with GEOMESH_FAULT_TRACE to list every crash point it
reaches (``name#k``: the k-th time the process reached ``faults.point(name)``) and keeps
that run's end state as the reference, then (3) for each point clones the pre-operation
catalog, runs the operation with GEOMESH_CRASH_AT=<point> (the process SIGKILLs itself
there), checks that `geomesh doctor` finds the catalog consistent and that nothing visible
is half-written, re-runs the operation and checks it converges to the reference (and that
the re-run repaired whatever was left for it: unpublished catalogs, a stale release index).

Both backends: each run (the trace, the reference, every crash point) gets its own clone of
the pre-operation catalog (``tests/_backend_clone.py``: a copied directory on SQLite +
local; on PostgreSQL + S3 a database created from the template's and buckets holding copies
of its objects), and everything is read back through the workspace (SQL, the store API).

The operation runs in a real child process: a fork of a warm interpreter that already
imported geomesh (``tests/_forkserver.py``), so each run costs a fork, not a cold start.
"""

from __future__ import annotations

import hashlib
import json
import queue
import signal
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import identity_support
import numpy as np
import pytest
import rasterio
import yaml
from _backend_clone import Place, Places, child_env, stored_objects
from _forkserver import ForkServer, Result
from policy_support import change_policy
from rasterio.transform import from_origin
from sqlmodel import col, select

from geomesh.config import ProductConfig, load_config
from geomesh.doctor import DoctorReport, run_doctor
from geomesh.models import (
    Approval,
    AuditEvent,
    FindingRecord,
    Item,
    ItemState,
    Product,
    Release,
    ValidationRun,
)
from geomesh.services import promotion, quarantine, signoff
from geomesh.services.pipeline import ingest_rasters
from geomesh.workspace import Workspace

from conftest import BACKEND, EXAMPLE_CONFIG

PID = "sentinel2-msi-l2a-v2.1"
#: kinds of doctor warning a re-run must have repaired (temporary files may stay: invisible)
REPAIRED_BY_RERUN = {"unpublished-catalog", "stale-index", "partial-catalog"}
#: every scenario's crash points, filled as the scenario tests run (for the total)
POINTS: dict[str, list[str]] = {}


# ------------------------------------------------------------------ running the CLI


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[ForkServer]]:
    """Two fork servers (2 cores): crash points of a scenario run two at a time."""
    scratch = tmp_path_factory.mktemp("forkserver")
    started = [ForkServer(child_env(), scratch, scratch) for _ in range(2)]
    yield started
    for s in started:
        s.close()


def run_cli(server: ForkServer, place: Place, argv: list[str], **extra: str) -> Result:
    return server.run(argv, env=place.process_env(**extra), cwd=place.root.parent)


def _open(place: Place) -> Workspace:
    # the CLI migrated the database already; alembic's global context is not thread-safe
    return place.open(migrate=False)


# ------------------------------------------------------------------ what "the same state" means


def snapshot(place: Place) -> dict[str, Any]:
    """Everything a user can see, with release ids (they hash a timestamp) named by version.

    Read through SQL and the store API, so the same on both backends. Not bytes: two runs
    differ in timestamps, release ids and asset hrefs (which name the catalog's own root
    or bucket); ``_backend_clone.catalog_state`` compares bytes within one catalog.
    """
    ws = _open(place)
    try:
        with ws.read() as s:
            rels = s.exec(select(Release)).all()
            version = {r.id: r.version for r in rels}

            def name(ref: str | None) -> str | None:
                return version.get(ref, ref) if ref else ref

            items = sorted((i.id, i.state.value, i.content_digest) for i in s.exec(select(Item)))
            releases = sorted(
                (r.product_id, r.version, r.item_count, r.kind, r.deprecated, name(r.parent_id))
                for r in rels
            )
            current = sorted((p.id, name(p.current_release_id)) for p in s.exec(select(Product)))
            story = [
                (e.actor, e.action, name(e.target), e.state_before, e.state_after)
                for e in s.exec(select(AuditEvent).order_by(col(AuditEvent.seq)))
            ]
            findings = sorted(
                (f.item_id, f.rule_id, f.severity.value, f.open)
                for f in s.exec(select(FindingRecord))
            )
            runs = sorted((r.item_id, r.passed) for r in s.exec(select(ValidationRun)))
            approvals = sorted(
                (a.item_id, a.actor, a.decision.value) for a in s.exec(select(Approval))
            )
            quarantined = sorted(
                (i.id, i.quarantine_key or "") for i in s.exec(select(Item)) if i.quarantine_key
            )
        objects = {
            area: sorted(
                k
                for k in ws.store.list(area)  # type: ignore[arg-type]
                if not k.startswith("releases/")  # manifests: named by a timestamped hash
            )
            for area in ("staging", "quarantine", "production")
        }
        index = None
        if ws.store.exists("production", f"catalogs/{PID}/latest.json"):
            doc = json.loads(ws.store.get_bytes("production", f"catalogs/{PID}/latest.json"))
            index = [(r["version"], r["deprecated"], r["current"]) for r in doc["geomesh:releases"]]
    finally:
        ws.close()
    return {
        "items": items,
        "releases": releases,
        "current": current,
        "audit": story,
        "findings": findings,
        "validation_runs": runs,
        "approvals": approvals,
        "quarantined": quarantined,
        "objects": objects,
        "index": index,
    }


def assert_consistent(place: Place, *, repaired: bool = False) -> DoctorReport:
    """`geomesh doctor --deep` finds no error, and nothing visible is half-written."""
    ws = _open(place)
    try:
        report = run_doctor(ws, deep=True)
        assert report.consistent, report.to_json()
        if repaired:
            left = report.kinds("warning") & REPAIRED_BY_RERUN
            assert not left, report.to_json()
        for area, key, data in stored_objects(ws.store):  # every area, meta too
            if key.startswith("sha256/"):
                digest = hashlib.sha256(data).hexdigest()
                assert key == f"sha256/{digest[:2]}/{digest[2:]}.tif", f"{area}/{key}"
            elif key.endswith(".json"):
                json.loads(data)  # complete JSON, never half a file
    finally:
        ws.close()
    return report


# ------------------------------------------------------------------ the harness


@dataclass
class Scenario:
    name: str
    #: (empty catalog, work dir) -> builds the pre-operation catalog, returns the CLI argv
    setup: Callable[[Place, Path], list[str]]


def _one_point(
    server: ForkServer,
    places: Places,
    template: Place,
    work: Path,
    n: int,
    point: str,
    argv: list[str],
    reference: dict[str, Any],
) -> None:
    """Crash at ``point``, check the catalog, re-run, check it equals the reference."""
    place = places.clone(template, work / f"crash-{n}" / "root")
    res = run_cli(server, place, argv, GEOMESH_CRASH_AT=point)
    assert res.returncode == -signal.SIGKILL, (point, res.returncode, res.stderr[-2000:])
    assert_consistent(place)
    rerun = run_cli(server, place, argv)
    assert rerun.returncode == 0, (point, rerun.stderr[-2000:])
    assert "Traceback" not in rerun.stderr, (point, rerun.stderr[-2000:])
    assert_consistent(place, repaired=True)
    converged = snapshot(place)
    if converged != reference:
        diff = {k: (converged[k], reference[k]) for k in reference if converged[k] != reference[k]}
        raise AssertionError(f"no convergence after a crash at {point}: {diff}")
    places.drop(place)


def check_scenario(
    scenario: Scenario, work: Path, servers: list[ForkServer], places: Places
) -> list[str]:
    template = places.fresh(work / "template" / "root")
    argv = scenario.setup(template, work)
    before = snapshot(template)

    # the uninterrupted run: its crash points and its end state (the reference)
    traced = places.clone(template, work / "trace" / "root")
    trace = work / "trace.txt"
    res = run_cli(servers[0], traced, argv, GEOMESH_FAULT_TRACE=str(trace))
    assert res.returncode == 0, res.stderr[-2000:]
    points = trace.read_text().split() if trace.exists() else []
    assert points, f"{scenario.name}: no crash points reached"
    assert len(set(points)) == len(points)
    reference = snapshot(traced)
    assert reference != before, f"{scenario.name}: the operation changed nothing"
    assert_consistent(traced, repaired=True)
    # an uninterrupted re-run is a no-op: the reference is a fixed point
    again = run_cli(servers[0], traced, argv)
    assert again.returncode == 0, again.stderr[-2000:]
    assert snapshot(traced) == reference
    places.drop(traced)

    failures: list[str] = []
    idle: queue.SimpleQueue[ForkServer] = queue.SimpleQueue()
    for server in servers:
        idle.put(server)

    def check(n: int, point: str) -> None:
        server = idle.get()  # each server runs one child at a time
        try:
            _one_point(server, places, template, work, n, point, argv, reference)
        except AssertionError as exc:
            failures.append(f"{point}: {exc}")
        finally:
            idle.put(server)

    with ThreadPoolExecutor(max_workers=len(servers)) as pool:
        list(pool.map(lambda a: check(*a), enumerate(points)))
    assert not failures, "\n".join(failures)
    POINTS[scenario.name] = points
    return points


# ------------------------------------------------------------------ building blocks


def _config(work: Path, *, relaxed: bool = False) -> Path:
    data = yaml.safe_load(EXAMPLE_CONFIG)
    data["ingestion"]["tile_size"] = 128
    name = "product.yaml"
    if relaxed:  # the steward's fix for a CRS-less tile (see tests/test_quarantine.py)
        data["validation"] = {"severity_overrides": {"GM-CRS-001": "P3", "GM-CONTRACT-001": "P3"}}
        name = "relaxed.yaml"
    path = work / name
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def _tile(work: Path, name: str, seed: int, *, crs: str | None = "EPSG:32610") -> Path:
    path = work / name
    if path.exists():
        return path
    data = np.random.default_rng(seed).integers(1, 10000, (2, 128, 128)).astype("uint16")
    profile: dict[str, Any] = {
        "driver": "GTiff",
        "width": 128,
        "height": 128,
        "count": 2,
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


class Pre:
    """The pre-operation catalog, built with in-process service calls."""

    def __init__(self, place: Place, work: Path) -> None:
        self.place = place
        self.work = work
        self.ws = place.open()
        self.config_path = _config(work)
        self.config: ProductConfig = load_config(self.config_path)
        # stewards (and the admin `root`, bootstrapped first); tiles are submitted by `system`
        identity_support.add_users(self.ws, {"alice": "steward", "bob": "steward"})

    def token_file(self, name: str) -> str:
        """A file holding an API token of ``name``: the CLI run proves who acts with it."""
        path = self.work / f"{name}.token"
        path.write_text(identity_support.token_env(self.ws, name)["GEOMESH_TOKEN"])
        return str(path)

    def ingest(self, *tiles: Path) -> list[str]:
        report = ingest_rasters(self.ws, self.config, [str(t) for t in tiles], actor="system")
        assert report.ok, report.to_json()
        return [r.item_id for r in report.results if r.item_id]

    def release(self, *tiles: Path) -> list[str]:
        ids = self.ingest(*tiles)
        for item_id in ids:
            signoff.sign_off(self.ws, self.config, item_id, actor="alice", approve=True)
        result = promotion.promote(self.ws, self.config, actor="alice")
        assert result.release is not None
        return ids

    def state(self, item_id: str) -> ItemState:
        with self.ws.read() as s:
            item = s.get(Item, item_id)
            assert item is not None
            return ItemState(item.state)

    def done(self) -> None:
        self.ws.close()  # checkpoints the WAL / ends the sessions: the catalog can be cloned


# ------------------------------------------------------------------ scenarios


def _ingest(place: Place, work: Path) -> list[str]:
    pre = Pre(place, work)
    pre.done()
    return ["ingest", str(pre.config_path), str(_tile(work, "a.tif", 1))]


def _quarantine(place: Place, work: Path) -> list[str]:
    """A tile without a CRS (P2) is validated and routed to quarantine after ingest."""
    pre = Pre(place, work)
    pre.done()
    return ["ingest", str(pre.config_path), str(_tile(work, "nocrs.tif", 3, crs=None))]


def _quarantined(place: Place, work: Path) -> tuple[Pre, str]:
    pre = Pre(place, work)
    (item_id,) = pre.ingest(_tile(work, "nocrs.tif", 3, crs=None))
    assert pre.state(item_id) is ItemState.quarantined
    return pre, item_id


def _release(place: Place, work: Path) -> list[str]:
    pre, item_id = _quarantined(place, work)
    relaxed = _config(work, relaxed=True)
    fixed = load_config(relaxed)
    change_policy(pre.ws, fixed, proposer="root", approver="alice")  # registered (issue 13)
    assert quarantine.revalidate(pre.ws, fixed, item_id, actor="alice").releasable
    token = pre.token_file("alice")
    pre.done()
    return ["quarantine", "release", str(relaxed), item_id, "--actor", "alice", "--note", "ok",
            "--token-file", token]  # fmt: skip


def _discard(place: Place, work: Path) -> list[str]:
    pre, item_id = _quarantined(place, work)
    token = pre.token_file("alice")
    pre.done()
    return ["quarantine", "discard", item_id, "--reason", "sensor fault", "--actor", "alice",
            "--token-file", token]  # fmt: skip


def _promote(place: Place, work: Path) -> list[str]:
    pre = Pre(place, work)
    for item_id in pre.ingest(_tile(work, "a.tif", 1), _tile(work, "b.tif", 2)):
        signoff.sign_off(pre.ws, pre.config, item_id, actor="alice", approve=True)
    token = pre.token_file("bob")
    pre.done()
    return ["promote", str(pre.config_path), "--actor", "bob", "--token-file", token]


def _rollback_item(place: Place, work: Path) -> list[str]:
    pre = Pre(place, work)
    first, _ = pre.release(_tile(work, "a.tif", 1), _tile(work, "b.tif", 2))
    token = pre.token_file("alice")
    pre.done()
    return ["rollback", str(pre.config_path), "--item", first, "--actor", "alice",
            "--token-file", token]  # fmt: skip


def _rollback_release(place: Place, work: Path) -> list[str]:
    pre = Pre(place, work)
    pre.release(_tile(work, "a.tif", 1))
    pre.release(_tile(work, "b.tif", 2))  # 1.1.0 adds b
    token = pre.token_file("alice")
    pre.done()
    # naming the release makes a retry idempotent (a bare --release would roll back 1.0.0 next)
    return ["rollback", str(pre.config_path), "--release", "1.1.0", "--actor", "alice",
            "--token-file", token]  # fmt: skip


def _promote_next(place: Place, work: Path) -> list[str]:
    """A release on top of a published one: shared partitions reused, one rewritten."""
    pre = Pre(place, work)
    pre.release(_tile(work, "a.tif", 1), _tile(work, "b.tif", 2))
    for item_id in pre.ingest(_tile(work, "c.tif", 4)):
        signoff.sign_off(pre.ws, pre.config, item_id, actor="alice", approve=True)
    token = pre.token_file("bob")
    pre.done()
    return ["promote", str(pre.config_path), "--actor", "bob", "--token-file", token]


def _withdraw(place: Place, work: Path) -> list[str]:
    """Rolling back the first release: no release is current afterwards."""
    pre = Pre(place, work)
    pre.release(_tile(work, "a.tif", 1))
    token = pre.token_file("alice")
    pre.done()
    return ["rollback", str(pre.config_path), "--release", "1.0.0", "--actor", "alice",
            "--token-file", token]  # fmt: skip


def _snapshot(place: Place, work: Path) -> list[str]:
    pre = Pre(place, work)
    pre.release(_tile(work, "a.tif", 1), _tile(work, "b.tif", 2))
    token = pre.token_file("alice")
    pre.done()
    return ["releases", "snapshot", str(pre.config_path), "1.0.0", "--actor", "alice",
            "--token-file", token]  # fmt: skip


SCENARIOS = {
    "ingest": Scenario("ingest", _ingest),
    "quarantine": Scenario("quarantine", _quarantine),
    "quarantine-release": Scenario("quarantine-release", _release),
    "quarantine-discard": Scenario("quarantine-discard", _discard),
    "promote": Scenario("promote", _promote),
    "rollback-item": Scenario("rollback-item", _rollback_item),
    "rollback-release": Scenario("rollback-release", _rollback_release),
    "promote-next": Scenario("promote-next", _promote_next),
    "withdraw": Scenario("withdraw", _withdraw),
    "snapshot": Scenario("snapshot", _snapshot),
}
#: write steps of the local store's temporary-file protocol (geomesh/storage.py: a half
#: written temporary file, the rename into place, put_many's batch of temporary files and
#: its renames). An S3 PUT is atomic: no partial object, no rename, so S3Store has no such
#: step and these points are never reached on postgres-s3.
LOCAL_STORE_POINTS = frozenset(
    {
        "write_bytes.partial",
        "write_bytes.before_rename",
        "copy_file.partial",
        "copy_file.before_rename",
        "copy.before_rename",
        "put_file.before_rename",
        "put_many.written",
        "put_many.partly_renamed",
    }
)
#: points each scenario must reach at least, per backend (a lower count means a write step
#: lost its point); README's Guarantees table states both totals. Every point postgres-s3
#: reaches, sqlite-local reaches too (the same names in the same order, measured when the
#: table was written); sqlite-local reaches more: the LOCAL_STORE_POINTS of each object
#: written, audit checkpoints included.
MINIMUM = {
    "sqlite-local": {
        "ingest": 9,
        "quarantine": 12,
        "quarantine-release": 4,
        "quarantine-discard": 4,
        "promote": 34,
        "rollback-item": 22,
        "rollback-release": 8,
        "promote-next": 30,
        "withdraw": 8,
        "snapshot": 10,
    },
    "postgres-s3": {
        "ingest": 4,
        "quarantine": 5,
        "quarantine-release": 2,
        "quarantine-discard": 2,
        "promote": 10,
        "rollback-item": 9,
        "rollback-release": 4,
        "promote-next": 10,
        "withdraw": 4,
        "snapshot": 5,
    },
}


def _local_store_point(point: str) -> bool:
    return point.split("#", 1)[0] in LOCAL_STORE_POINTS


@pytest.mark.parametrize("name", list(SCENARIOS))
def test_crash_at_every_write_step(
    name: str, tmp_path: Path, servers: list[ForkServer], places: Places
) -> None:
    points = check_scenario(SCENARIOS[name], tmp_path, servers, places)
    assert len(points) >= MINIMUM[BACKEND][name], (len(points), points)
    neutral = [p for p in points if not _local_store_point(p)]
    assert len(neutral) >= MINIMUM["postgres-s3"][name], (len(neutral), neutral)
    if BACKEND == "postgres-s3":
        assert neutral == points, "S3Store reached a point of the local store's protocol"


def test_the_crash_points_readme_states_are_all_reached() -> None:
    if set(POINTS) != set(SCENARIOS):
        pytest.skip("runs after every scenario of this module (not with -k)")
    total = sum(len(p) for p in POINTS.values())
    assert total >= sum(MINIMUM[BACKEND].values()), {k: len(v) for k, v in POINTS.items()}
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    stated = {
        "sqlite-local": f"**{sum(MINIMUM['sqlite-local'].values())} crash-injection points**",
        "postgres-s3": f"**{sum(MINIMUM['postgres-s3'].values())} crash-injection points on "
        "PostgreSQL + S3**",
    }
    assert stated[BACKEND] in readme, f"README does not state {stated[BACKEND]}"


#: a crash that leaves a temporary file: half of a store object written (local store), or
#: the ingest's work folder under the storage root (S3: the store itself writes none)
LEFTOVER_AT = {"sqlite-local": "write_bytes.partial#1", "postgres-s3": "ingest.files_stored#1"}


def test_doctor_cli_collects_what_a_crash_left(
    tmp_path: Path, servers: list[ForkServer], places: Places
) -> None:
    """`geomesh doctor` itself: after a crash mid-write it reports the temporary file,
    says consistent (exit 0), and `--gc` removes it."""
    place = places.fresh(tmp_path / "root")
    argv = _ingest(place, tmp_path)
    res = run_cli(servers[0], place, argv, GEOMESH_CRASH_AT=LEFTOVER_AT[BACKEND])
    assert res.returncode == -signal.SIGKILL
    assert list(place.root.rglob(".tmp-*"))
    out = run_cli(servers[0], place, ["doctor", "--json"])
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert report["consistent"] is True
    assert {p["kind"] for p in report["problems"]} >= {"temporary-file"}
    admin = Pre(place, tmp_path)  # the admin `root` proves who collects
    token = admin.token_file("root")
    admin.done()
    gc = run_cli(servers[0], place, ["doctor", "--gc", "--min-age", "0", "--token-file", token])
    assert gc.returncode == 0 and "removed" in gc.stdout
    assert not list(place.root.rglob(".tmp-*"))


def test_doctor_finds_what_a_crash_cannot_explain(tmp_path: Path, places: Places) -> None:
    """The checks can fail: a truncated released object, a broken published catalog and a
    production state without its release are errors (tampered with through the store)."""
    pre = Pre(places.fresh(tmp_path / "root"), tmp_path)
    a, _ = pre.release(_tile(tmp_path, "a.tif", 1), _tile(tmp_path, "b.tif", 2))
    ws = pre.ws
    assert run_doctor(ws, deep=True).consistent
    with ws.read() as s:
        item = s.get(Item, a)
        assert item is not None
        object_key = item.object_key
    data = ws.store.get_bytes("production", object_key)
    ws.store.put_bytes("production", object_key, data[: len(data) // 2], overwrite=True)
    assert "checksum-mismatch" in run_doctor(ws, deep=True).kinds("error")
    ws.store.put_bytes("production", object_key, data, overwrite=True)
    collection = next(
        k for k in ws.store.list("production", "catalogs/") if k.endswith("/collection.json")
    )
    text = ws.store.get_bytes("production", collection)
    ws.store.put_bytes("production", collection, text[: len(text) // 2], overwrite=True)
    assert "bad-catalog-file" in run_doctor(ws).kinds("error")
    ws.store.put_bytes("production", collection, text, overwrite=True)
    with ws.transaction() as s:
        row = s.get(Item, a)
        assert row is not None
        row.state = ItemState.validation  # behind the services' back
        s.add(row)
    assert "production-mismatch" in run_doctor(ws).kinds("error")
    pre.done()
