"""4. Promotion, rollback and publication vs the size of the current release (1k, 10k, 100k).

Fixture (not measured): a fresh catalog; five real tiles ingested with ``ingest_rasters``,
marked validated (a passing validation run + the real lifecycle transition, as routing
does for a clean item) and approved by a steward with ``sign_off``; then N released items
built in bulk from the first tile's real STAC item (new digests and ids): item JSON files
in the production area, ``Item`` rows in state ``production``, and release 1.0.0 with its
content-addressed manifest tree, added with publication's own ``_add_release`` and made
current.

Measured, in this order, with the real service functions (A, B, C, D: the new tiles):

0. the first publication of release 1.0.0 (``publication.publish_catalog``: every item
   document, partition and the release's own documents are new), against writing the
   same item dicts with plain ``json.dump`` (one file each) in the same run;
1. ``promote(A)``                          → 1.1.0 (N+1 items)
2. for X in B, C, D: ``promote(X)``, then ``rollback_release`` (back to 1.1.0)
3. ``rollback_item(x)`` twice, for two of the N released items (2.0.0, 3.0.0)
4. the stac-geoparquet snapshot of 1.0.0 (``snapshot.snapshot_release``), against
   ``rustac.write_sync`` of the same item documents, already in memory.

Every call in 1–3 is measured whole, publication of the new release's static catalog and
the index rewrite included. Timing probes split it: the pointer-move transaction
(``Workspace.transaction``: role check, optimistic pointer move, item states, audit
events, commit), the catalog materialization (``releases.materialize_catalog``), the
release-index rewrite (``publication.refresh_index``), manifest-root loads, and the rest
(promotion plan, checksum gate, manifest parts and root).

Reference (baseline) for the whole calls: the classic pystac way to drop an item from a
static catalog of N small items: ``Catalog.from_file`` → ``remove_item`` →
``normalize_hrefs`` → ``save(SELF_CONTAINED)``, at 1k and 10k.
"""

from __future__ import annotations

import hashlib
import json
import statistics
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from bench import Row, cpu_seconds, fmt_s, make_tile, open_workspace, product_config, timed, workdir

NAME = "rollback / promotion"
FLAT_TARGET = 2.0
#: the whole promote / rollback call, publication included, at the largest size
WHOLE_CALL_LIMIT_S = 1.0
#: first publication items/s against json.dump of the same items
FIRST_PUBLICATION_TARGET = 0.5
#: first publication time per item, largest size against smallest
LINEAR_TARGET = 1.5
SUBMITTER, STEWARD, ADMIN = "ingester", "alice", "root"
NEW_TILES = 4


# ------------------------------------------------------------------ probes


@dataclass
class Probe:
    """Wall time spent inside wrapped functions while one operation runs."""

    spent: dict[str, float] = field(default_factory=dict)

    def add(self, key: str, seconds: float) -> None:
        self.spent[key] = self.spent.get(key, 0.0) + seconds

    def wrap(self, module: Any, name: str, key: str) -> Callable[[], None]:
        original = getattr(module, name)

        def wrapper(*args: Any, **kwargs: Any) -> Any:
            t0 = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                self.add(key, time.perf_counter() - t0)

        setattr(module, name, wrapper)
        return lambda: setattr(module, name, original)

    def wrap_transaction(self, ws: Any) -> Callable[[], None]:
        original = ws.transaction

        @contextmanager
        def transaction() -> Iterator[Any]:
            t0 = time.perf_counter()
            try:
                with original() as session:
                    yield session
            finally:
                self.add("transaction", time.perf_counter() - t0)

        ws.transaction = transaction
        return lambda: setattr(ws, "transaction", original)


@dataclass
class OpTime:
    total: float
    transaction: float
    index: float
    manifests: float
    materialize: float

    @property
    def rest(self) -> float:
        return max(
            0.0, self.total - self.transaction - self.index - self.manifests - self.materialize
        )


def measure(ws: Any, fn: Callable[[], Any]) -> tuple[OpTime, Any]:
    from geomesh import releases
    from geomesh.services import publication

    probe = Probe()
    undo = [
        probe.wrap_transaction(ws),
        probe.wrap(publication, "refresh_index", "index"),
        probe.wrap(releases, "load_manifest", "manifests"),
        probe.wrap(releases, "materialize_catalog", "materialize"),
    ]
    try:
        seconds, value = timed(fn)
    finally:
        for u in reversed(undo):
            u()
    s = probe.spent
    return OpTime(
        seconds,
        s.get("transaction", 0.0),
        s.get("index", 0.0),
        s.get("manifests", 0.0),
        s.get("materialize", 0.0),
    ), value


# ------------------------------------------------------------------ fixture


def _mark_validated(
    ws: Any, config: Any, item_id: str, actor: str
) -> tuple[str | None, str | None, dict[str, int]]:
    """Post-stage stand-in: a passing validation run, then staging → validation."""
    from geomesh import lifecycle
    from geomesh.models import Item, ItemState, ValidationRun

    del config
    with ws.transaction() as session:
        item = session.get(Item, item_id)
        assert item is not None
        session.add(
            ValidationRun(
                item_id=item.id, content_digest=item.content_digest, passed=True, actor=actor
            )
        )
        lifecycle.transition(session, item, ItemState.validation, actor=actor, action="route")
    return "validation", "warn", {}


@dataclass
class Fixture:
    ws: Any
    config: Any
    new_items: list[str]
    base_ids: list[str]
    first_release: str
    build_seconds: float
    #: the N released items' JSON as dicts (the json.dump baseline writes them)
    item_dicts: list[dict[str, Any]] = field(default_factory=list)


def build_fixture(base: Path, n: int) -> Fixture:
    """The catalog with N released items (rows, production item JSON files, manifest tree);
    release 1.0.0's static catalog is not published yet (the first measurement)."""
    from sqlalchemy import insert

    from geomesh import releases
    from geomesh.models import Item, ItemState, Product
    from geomesh.releases import Delta, Manifest, ManifestItem, ReleaseKind
    from geomesh.services import promotion, publication, signoff, users
    from geomesh.services.pipeline import ingest_rasters
    from geomesh.stac import item_id_for
    from geomesh.storage import object_key
    from geomesh.tiles import stac_key_for

    t0 = time.perf_counter()
    config = product_config(base)
    ws = open_workspace(base / "root")
    # the first user is the admin (the system principal may only bootstrap it)
    for name, role in ((ADMIN, "admin"), (SUBMITTER, "steward"), (STEWARD, "steward")):
        users.add_user(ws, actor="system" if role == "admin" else ADMIN, name=name, role=role)
    tiles = [
        str(
            make_tile(
                base / f"t{i}.tif",
                width=128,
                height=128,
                count=1,
                seed=i,
                origin=(545000.0 + 2000.0 * i, 4185000.0),
            )
        )
        for i in range(1 + NEW_TILES)
    ]
    report = ingest_rasters(ws, config, tiles, actor=SUBMITTER, post_stage=_mark_validated)
    if not report.ok:
        raise RuntimeError(f"fixture ingest failed: {report.to_json()}")
    template_id, *new_items = [r.item_id for r in report.results if r.item_id]
    for iid in new_items:
        signoff.sign_off(ws, config, iid, actor=STEWARD, approve=True)
    pid = config.product_id
    with ws.read() as session:
        template = session.get(Item, template_id)
        assert template is not None
        # one JSON text per item: the template with its digest and id replaced
        template_json = json.dumps(template.stac, sort_keys=True)
        old_digest, template_size = template.content_digest, template.size

    # N released items in bulk: rows, (item JSON files,) one manifest
    now = datetime.now(UTC) - timedelta(days=1)
    rows: list[dict[str, Any]] = []
    mitems: list[ManifestItem] = []
    item_dir = ws.store.path("production", stac_key_for(pid, template_id)).parent
    item_dir.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        digest = hashlib.sha256(f"bench-release-item-{i}".encode()).hexdigest()
        iid = item_id_for(pid, digest)
        okey, skey = object_key(digest), stac_key_for(pid, iid)
        text = template_json.replace(old_digest, digest).replace(template_id, iid)
        (item_dir / f"{iid}.json").write_text(text)
        rows.append(
            {
                "id": iid,
                "product_id": pid,
                "source": f"bench://tile/{i}",
                "source_key": digest[:32],
                "source_digest": None,
                "content_digest": digest,
                "size": template_size,
                "object_key": okey,
                "stac_key": skey,
                "stac": json.loads(text),
                "state": ItemState.production,
                "submitted_by": SUBMITTER,
                "created_at": now,
                "updated_at": now,
            }
        )
        mitems.append(
            ManifestItem(
                id=iid, digest=digest, stac_key=skey, object_key=okey, source_key=digest[:32]
            )
        )
    manifest = Manifest.build(
        product_id=pid,
        version=releases.FIRST_VERSION,
        parent_id=None,
        actor=ADMIN,
        created_at=releases.now_iso(),
        kind=ReleaseKind.promote.value,
        spatial_contract=config.spatial_contract(),
        product_metadata=promotion._product_metadata(config),
        items=mitems,
    )
    releases.store_manifest(ws.store, manifest)
    with ws.transaction() as session:
        for c in range(0, len(rows), 5000):
            session.execute(insert(Item), rows[c : c + 5000])
        publication._add_release(
            session, manifest, Delta(added=tuple(m.id for m in mitems)), kind=ReleaseKind.promote
        )
        product = session.get(Product, pid)
        assert product is not None
        product.current_release_id = manifest.id
        product.version_counter += 1
        session.add(product)
    item_dicts = [r["stac"] for r in rows]
    del rows
    return Fixture(
        ws,
        config,
        new_items,
        [m.id for m in mitems],
        manifest.id,
        time.perf_counter() - t0,
        item_dicts,
    )


# ------------------------------------------------------------------ pystac reference


def pystac_reference(base: Path, n: int) -> float:
    """Build a static catalog of ``n`` small items, then time load → remove → save."""
    import pystac

    root = base / "pystac-catalog"
    catalog = pystac.Catalog(id="bench", description="reference catalog")
    start = datetime(2024, 1, 1, tzinfo=UTC)
    for i in range(n):
        x, y = -122.5 + (i % 100) * 0.002, 37.7 + (i // 100 % 100) * 0.002
        ring = [[x, y], [x + 0.002, y], [x + 0.002, y + 0.002], [x, y + 0.002], [x, y]]
        item = pystac.Item(
            id=f"item-{i:06d}",
            geometry={"type": "Polygon", "coordinates": [ring]},
            bbox=[x, y, x + 0.002, y + 0.002],
            datetime=start + timedelta(hours=i),
            properties={},
        )
        item.add_asset(
            "data", pystac.Asset(href=f"./data/{i}.tif", media_type=pystac.MediaType.COG)
        )
        catalog.add_item(item)
    catalog.normalize_hrefs(str(root))
    catalog.save(catalog_type=pystac.CatalogType.SELF_CONTAINED)

    def load_remove_save() -> None:
        loaded = pystac.Catalog.from_file(str(root / "catalog.json"))
        loaded.remove_item(f"item-{n // 2:06d}")
        loaded.normalize_hrefs(str(root))
        loaded.save(catalog_type=pystac.CatalogType.SELF_CONTAINED)

    seconds, _ = timed(load_remove_save)
    return seconds


# ------------------------------------------------------------------ the run


@dataclass
class Publication:
    """The first publication of release 1.0.0 and its json.dump baseline."""

    wall: float
    cpu: float
    items: int
    baseline: float


@dataclass
class Snapshot:
    """The geoparquet snapshot of 1.0.0 and rustac's own write of the same documents."""

    wall: float
    baseline: float
    items: int


@dataclass
class SizeResult:
    n: int
    build: float
    promote: list[OpTime]
    rollback_release: list[OpTime]
    rollback_item: list[OpTime]
    reference: float | None
    publication: Publication
    snapshot: Snapshot


def json_dump_baseline(base: Path, item_dicts: list[dict[str, Any]]) -> float:
    """Plain ``json.dump`` of every item dict into its own file (no temp file, no fsync)."""
    out = base / "json-dump"
    out.mkdir()

    def write_all() -> None:
        for n, d in enumerate(item_dicts):
            with open(out / f"{n}.json", "w") as fh:
                json.dump(d, fh)

    seconds, _ = timed(write_all)
    return seconds


def first_publication(fx: Fixture, base: Path) -> Publication:
    """publish_catalog of release 1.0.0 (built in bulk: nothing of it is published yet)."""
    from geomesh.services import publication

    baseline = json_dump_baseline(base, fx.item_dicts)
    c0, t0 = cpu_seconds(), time.perf_counter()
    publication.publish_catalog(fx.ws, fx.config.product_id, fx.first_release)
    wall = time.perf_counter() - t0
    return Publication(wall, cpu_seconds() - c0, len(fx.base_ids), baseline)


def materialization_only(base: Path, n: int) -> tuple[float, float, int]:
    """The first publication of an N-item release alone: (wall s, CPU s, items)."""
    fx = build_fixture(base, n)
    try:
        p = first_publication(fx, base)
        return p.wall, p.cpu, p.items
    finally:
        fx.ws.close()


def geoparquet(fx: Fixture, base: Path) -> Snapshot:
    import rustac

    from geomesh import releases
    from geomesh.services import snapshot

    pid = fx.config.product_id
    docs = [
        json.loads(data)
        for _, data in releases.release_item_docs(fx.ws.store, pid, releases.FIRST_VERSION)
    ]
    target = base / "rustac.parquet"
    baseline, _ = timed(lambda: rustac.write_sync(str(target), docs, format="geoparquet"))
    docs.clear()
    wall, _ = timed(
        lambda: snapshot.snapshot_release(fx.ws, pid, releases.FIRST_VERSION, actor=ADMIN)
    )
    return Snapshot(wall, baseline, len(fx.base_ids))


def run_size(base: Path, n: int, *, with_reference: bool) -> SizeResult:
    from geomesh.services import promotion, rollback

    fx = build_fixture(base, n)
    ws, config = fx.ws, fx.config
    promotes: list[OpTime] = []
    rollbacks: list[OpTime] = []
    item_rollbacks: list[OpTime] = []

    def promote(iid: str) -> None:
        t, res = measure(ws, lambda: promotion.promote(ws, config, [iid], actor=ADMIN))
        if res.already or iid not in res.promoted:
            raise RuntimeError(f"promote({iid}) did not release it: {res.message}")
        promotes.append(t)

    try:
        pub = first_publication(fx, base)
        fx.item_dicts.clear()
        first, *others = fx.new_items
        promote(first)
        for iid in others:
            promote(iid)
            t, rr = measure(ws, lambda: rollback.rollback_release(ws, config, actor=ADMIN))
            if rr.already:
                raise RuntimeError(f"rollback_release was a no-op: {rr.message}")
            rollbacks.append(t)
        for k in (1, 2):
            victim = fx.base_ids[k * len(fx.base_ids) // 3]
            t, ri = measure(
                ws,
                lambda v=victim: rollback.rollback_item(ws, config, v, actor=ADMIN),
            )
            if ri.already:
                raise RuntimeError(f"rollback_item was a no-op: {ri.message}")
            item_rollbacks.append(t)
        snap = geoparquet(fx, base)
    finally:
        ws.close()
    ref = pystac_reference(base, n) if with_reference else None
    return SizeResult(n, fx.build_seconds, promotes, rollbacks, item_rollbacks, ref, pub, snap)


def _k(n: int) -> str:
    return f"{n // 1000}k" if n >= 1000 and n % 1000 == 0 else str(n)


def _med(ts: list[OpTime], get: Callable[[OpTime], float]) -> float:
    return statistics.median(get(t) for t in ts)


def _split(ts: list[OpTime]) -> str:
    return (
        f"median of {len(ts)}: transaction {fmt_s(_med(ts, lambda t: t.transaction))} + "
        f"catalog {fmt_s(_med(ts, lambda t: t.materialize))} + index rewrite "
        f"{fmt_s(_med(ts, lambda t: t.index))} + manifest-root loads "
        f"{fmt_s(_med(ts, lambda t: t.manifests))} + plan, copies, manifest parts "
        f"{fmt_s(_med(ts, lambda t: t.rest))}"
    )


def run(smoke: bool) -> list[Row]:
    sizes = [10, 30, 100] if smoke else [1000, 10_000, 100_000]
    results: list[SizeResult] = []
    for n in sizes:
        with workdir(f"rollback-{n}") as tmp:
            results.append(run_size(Path(tmp), n, with_reference=n in sizes[:2]))
    small, big = results[0], results[-1]
    rows: list[Row] = []
    ops: dict[str, Callable[[SizeResult], list[OpTime]]] = {
        "rollback_release": lambda r: r.rollback_release,
        "promote 1 item": lambda r: r.promote,
        "rollback_item": lambda r: r.rollback_item,
    }

    # flatness of the pointer move: largest size vs smallest (best of k: the work itself;
    # fsync latency of the commit only adds noise on top)
    def best_txn(ts: list[OpTime]) -> float:
        return min(t.transaction for t in ts)

    for label, get in ops.items():
        a, b = best_txn(get(small)), best_txn(get(big))
        rows.append(
            Row(
                NAME,
                f"{label}: pointer-move transaction, {_k(big.n)} vs {_k(small.n)} items",
                f"latency growth, best of {len(get(big))} (largest / smallest)",
                fmt_s(b),
                fmt_s(a),
                b / a,
                f"flat: ≤ {FLAT_TARGET:.1f}×",
                b / a <= FLAT_TARGET,
                " · ".join(
                    f"{_k(r.n)}: {fmt_s(best_txn(get(r)))} (median "
                    f"{fmt_s(_med(get(r), lambda t: t.transaction))})"
                    for r in results
                )
                + "; role check, optimistic pointer move, item states, audit, commit",
            )
        )
    # the whole call, publication included: ≤ 1 s at the largest size and ≤ 2× growth
    for label, get in ops.items():
        a, b = _med(get(small), lambda t: t.total), _med(get(big), lambda t: t.total)
        ok = b / a <= FLAT_TARGET and b <= WHOLE_CALL_LIMIT_S
        rows.append(
            Row(
                NAME,
                f"{label}: whole call incl. publication, {_k(big.n)} vs {_k(small.n)} items",
                "latency growth, median (largest / smallest)",
                fmt_s(b),
                fmt_s(a),
                b / a,
                f"≤ {FLAT_TARGET:.1f}× and ≤ {WHOLE_CALL_LIMIT_S:.0f} s @ {_k(big.n)}",
                ok,
                " · ".join(f"{_k(r.n)}: {fmt_s(_med(get(r), lambda t: t.total))}" for r in results)
                + f"; @ {_k(big.n)}: "
                + _split(get(big)),
            )
        )
    # whole calls at each size, against the pystac reference
    for label, get in ops.items():
        for r in results:
            total = _med(get(r), lambda t: t.total)
            if r.reference is not None:
                base_s, base_txt, note = (
                    r.reference,
                    fmt_s(r.reference),
                    "; baseline = pystac from_file → remove_item → normalize_hrefs → save",
                )
            else:
                base_s = _med(get(small), lambda t: t.total)
                base_txt = f"{fmt_s(base_s)} (geomesh @ {_k(small.n)})"
                note = "; no pystac reference at this size: baseline = the same call at the smallest size"
            rows.append(
                Row(
                    NAME,
                    f"{label} @ {_k(r.n)} items",
                    "whole call incl. publication, median",
                    fmt_s(total),
                    base_txt,
                    total / base_s,
                    "— (info)",
                    None,
                    _split(get(r)) + note,
                )
            )
    # the first publication of a release where everything is new: items/s vs json.dump
    for r in results:
        p = r.publication
        ours, theirs = p.items / p.wall, p.items / p.baseline
        rows.append(
            Row(
                NAME,
                f"first publication of a {_k(p.items)}-item release (everything new)",
                "items/s (higher is better)",
                f"{ours:,.0f}/s",
                f"{theirs:,.0f}/s",
                ours / theirs,
                f"≥ {FIRST_PUBLICATION_TARGET:.1f}× json.dump",
                ours / theirs >= FIRST_PUBLICATION_TARGET,
                f"publish_catalog {fmt_s(p.wall)} (CPU {p.cpu / p.wall:.0%} of wall): read the "
                "released item JSON, re-point links, hash, temp file + rename, one durability "
                f"barrier, {min(p.items, 256)} partitions, collection, catalog, index; "
                f"baseline = json.dump of the same dicts, one file each, {fmt_s(p.baseline)}",
            )
        )
    per_item = [r.publication.wall / r.publication.items for r in results]
    rows.append(
        Row(
            NAME,
            f"first publication: time per item, {_k(big.n)} vs {_k(small.n)} items",
            "growth (largest / smallest)",
            f"{per_item[-1] * 1e6:.0f} µs",
            f"{per_item[0] * 1e6:.0f} µs",
            per_item[-1] / per_item[0],
            f"linear: ≤ {LINEAR_TARGET:.1f}×",
            per_item[-1] / per_item[0] <= LINEAR_TARGET,
            " · ".join(
                f"{_k(r.n)}: {v * 1e6:.0f} µs" for r, v in zip(results, per_item, strict=True)
            ),
        )
    )
    # the columnar snapshot, against rustac's own write of the same documents
    for r in results:
        sn = r.snapshot
        rows.append(
            Row(
                NAME,
                f"stac-geoparquet snapshot of {_k(sn.items)} items",
                "latency",
                fmt_s(sn.wall),
                fmt_s(sn.baseline),
                sn.wall / sn.baseline,
                "— (info)",
                None,
                "snapshot_release: read every published item document from the store, "
                "rustac.write_sync, store the file, record it (transaction + audit), rewrite "
                "the index; baseline = rustac.write_sync of the same documents already in "
                "memory",
            )
        )
    rows.append(
        Row(
            NAME,
            "fixture build (not measured in the rows above)",
            "seconds",
            " · ".join(f"{_k(r.n)}: {fmt_s(r.build)}" for r in results),
            "—",
            1.0,
            "— (info)",
            None,
            "bulk Item rows + item JSON + release 1.0.0 through publication._add_release",
        )
    )
    return rows
