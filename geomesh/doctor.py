"""`geomesh doctor`: check database ↔ objects ↔ manifests ↔ published catalogs.

It reports problems (dangling references, half-written files, orphans, a broken audit
chain) and can garbage-collect leftover temporary files from interrupted writes. It never
changes the database.

Levels: an ``error`` is something a reader can see that is wrong (a missing or corrupt
object the database or a published catalog points at, a production pointer that does not
match the item states). A ``warning`` is invisible to readers and repaired by re-running
the interrupted command (temporary files, a release whose static catalog is not
materialized yet, a release index that lags the database). ``info`` lists complete but
unreferenced objects that a re-run reuses.
"""

from __future__ import annotations

import hashlib
import json
import posixpath
import shutil
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from sqlmodel import col, select

from geomesh import audit, auth, releases
from geomesh.config import parse_config
from geomesh.errors import GeomeshError, StoreUnavailable, UnsafePath
from geomesh.hashing import sha256_file
from geomesh.models import (
    Item,
    ItemState,
    PolicyStatus,
    Product,
    ProductConfigVersion,
    Release,
)
from geomesh.releases import Manifest, ManifestItem, ManifestPart
from geomesh.storage import TMP_PREFIX, Area
from geomesh.workspace import Workspace

Level = Literal["error", "warning", "info"]
PRODUCTION: Area = "production"
#: published catalog documents larger than this are reported instead of parsed
MAX_CATALOG_FILE_BYTES = 64 << 20


@dataclass(frozen=True)
class Problem:
    level: Level
    kind: str
    target: str
    message: str


@dataclass
class DoctorReport:
    problems: list[Problem] = field(default_factory=list)
    checked: dict[str, int] = field(default_factory=dict)
    collected: list[str] = field(default_factory=list)

    @property
    def consistent(self) -> bool:
        """No errors: everything visible is complete and every reference resolves."""
        return not any(p.level == "error" for p in self.problems)

    def add(self, level: Level, kind: str, target: str, message: str) -> None:
        self.problems.append(Problem(level, kind, target, message))

    def kinds(self, level: Level | None = None) -> set[str]:
        """The kinds of problem found (of one level, or of all)."""
        return {p.kind for p in self.problems if level is None or p.level == level}

    def to_json(self) -> dict[str, Any]:
        return {
            "consistent": self.consistent,
            "checked": self.checked,
            "problems": [asdict(p) for p in self.problems],
            "collected": self.collected,
        }


def _json_object(ws: Workspace, area: Area, key: str) -> dict[str, Any] | str:
    """The JSON object stored at ``key``, or why it cannot be read."""
    try:
        size = ws.store.size(area, key)
        if size > MAX_CATALOG_FILE_BYTES:
            return f"{area}/{key} is {size} bytes (limit {MAX_CATALOG_FILE_BYTES})"
        data = json.loads(ws.store.get_bytes(area, key))
    except StoreUnavailable:
        raise  # an outage says nothing about the object: the check stops and names it
    except (GeomeshError, ValueError, RecursionError) as exc:
        return f"{area}/{key} is not readable JSON: {str(exc)[:200]}"
    if not isinstance(data, dict):
        return f"{area}/{key} is a JSON {type(data).__name__}, not an object"
    return data


# ------------------------------------------------------------------ items


def _check_items(ws: Workspace, report: DoctorReport, *, deep: bool) -> set[tuple[Area, str]]:
    referenced: set[tuple[Area, str]] = set()
    store = ws.store
    with ws.read() as session:
        items = session.exec(select(Item)).all()
    for item in items:
        referenced.add(("staging", item.object_key))
        referenced.add(("staging", item.stac_key))
        if item.quarantine_key:
            referenced.add(("quarantine", item.quarantine_key))
            referenced.add(("quarantine", item.stac_key))
        if item.state == ItemState.discarded:
            continue
        area: Literal["staging", "quarantine"] = "staging"
        if item.state == ItemState.quarantined and item.quarantine_key:
            area = "quarantine"
            if not store.exists("quarantine", item.quarantine_key):
                report.add(
                    "error",
                    "missing-object",
                    item.id,
                    f"quarantined copy {item.quarantine_key} is missing",
                )
        key = (
            item.quarantine_key if area == "quarantine" and item.quarantine_key else item.object_key
        )
        if not store.exists("staging", item.object_key) and not store.exists(area, key):
            report.add("error", "missing-object", item.id, f"object {item.object_key} is missing")
        else:
            if not store.exists(area, key):
                area, key = "staging", item.object_key
            size = store.size(area, key)
            if size != item.size:
                report.add(
                    "error",
                    "size-mismatch",
                    item.id,
                    f"object {key} has {size} bytes, the item says {item.size}",
                )
            elif deep:
                with store.open_local(area, key) as p:
                    digest, _ = sha256_file(p)
                if digest != item.content_digest:
                    report.add(
                        "error",
                        "checksum-mismatch",
                        item.id,
                        f"object {key} no longer hashes to the item's digest",
                    )
        if not store.exists("staging", item.stac_key):
            report.add(
                "error", "missing-item-json", item.id, f"item JSON {item.stac_key} is missing"
            )
        else:
            stored = _json_object(ws, "staging", item.stac_key)
            if isinstance(stored, str):
                report.add("error", "bad-item-json", item.id, stored)
            elif stored.get("id") != item.id:
                report.add(
                    "error",
                    "item-json-mismatch",
                    item.id,
                    f"item JSON {item.stac_key} describes {stored.get('id')!r}",
                )
    report.checked["items"] = len(items)
    return referenced


# ------------------------------------------------------------------ releases


@dataclass
class _Releases:
    """What the release checks learnt, for the catalog checks."""

    manifests: dict[str, Manifest] = field(default_factory=dict)
    #: manifest part id → its items (None: missing or corrupt, already reported)
    parts: dict[str, ManifestPart | None] = field(default_factory=dict)

    def items_of(self, manifest: Manifest) -> dict[str, ManifestItem] | None:
        """Every item of a release (None when one of its parts is unreadable)."""
        out: dict[str, ManifestItem] = {}
        for b, ref in manifest.parts.items():
            part = (
                manifest.inline[b] if manifest.legacy_items is not None else self.parts.get(ref.id)
            )
            if part is None:
                return None
            out.update(part.by_id)
        return out


def _load_manifest(ws: Workspace, report: DoctorReport, rel: Release) -> Manifest | None:
    if not ws.store.exists(PRODUCTION, rel.manifest_key):
        report.add(
            "error",
            "missing-manifest",
            rel.id,
            f"release {rel.version} manifest {rel.manifest_key} is missing",
        )
        return None
    try:
        manifest = releases.load_manifest(ws.store, rel.product_id, rel.id)
    except StoreUnavailable:
        raise
    except (GeomeshError, ValueError, RecursionError) as exc:
        report.add("error", "bad-manifest", rel.id, f"manifest unreadable: {str(exc)[:300]}")
        return None
    if manifest.version != rel.version or manifest.parent_id != rel.parent_id:
        report.add(
            "error",
            "manifest-mismatch",
            rel.id,
            f"manifest says version {manifest.version} (parent {manifest.parent_id}), the "
            f"release row says {rel.version} (parent {rel.parent_id})",
        )
    return manifest


def _load_parts(
    ws: Workspace, report: DoctorReport, rel: Release, manifest: Manifest, seen: _Releases
) -> list[ManifestPart]:
    """The release's parts not checked before (each shared part is read once, its bytes
    checked against its content address and its count against the root's)."""
    fresh: list[ManifestPart] = []
    for b, ref in sorted(manifest.parts.items()):
        if manifest.legacy_items is not None:
            part: ManifestPart | None = manifest.inline[b]
            if ref.id in seen.parts:
                continue
        elif ref.id in seen.parts:
            continue
        else:
            try:
                part = releases.read_part(ws.store, rel.product_id, ref.id)
            except StoreUnavailable:
                raise
            except (GeomeshError, ValueError, RecursionError) as exc:
                kind = "missing-manifest-part" if "missing" in str(exc) else "bad-manifest-part"
                report.add("error", kind, rel.id, f"release {rel.version}: {str(exc)[:300]}")
                part = None
        if part is not None and (
            len(part.items) != ref.count or any(m.partition != b for m in part.items)
        ):
            report.add(
                "error",
                "manifest-mismatch",
                rel.id,
                f"release {rel.version}: part {ref.id[:12]}… of partition {b} holds "
                f"{len(part.items)} item(s) (root says {ref.count}) or items of another "
                "partition",
            )
        seen.parts[ref.id] = part
        if part is not None:
            fresh.append(part)
    return fresh


def _check_manifest_objects(
    ws: Workspace, report: DoctorReport, rel: Release, part: ManifestPart, *, deep: bool
) -> None:
    for m in part.items:
        if not ws.store.exists(PRODUCTION, m.object_key):
            report.add(
                "error",
                "missing-production-object",
                rel.id,
                f"release {rel.version} lists {m.id} whose object {m.object_key} is not in the "
                "production area",
            )
        elif deep:
            with ws.store.open_local(PRODUCTION, m.object_key) as p:
                digest, _ = sha256_file(p)
            if digest != m.digest:
                report.add(
                    "error",
                    "checksum-mismatch",
                    rel.id,
                    f"production object {m.object_key} of {m.id} no longer hashes to {m.digest}",
                )
        if not ws.store.exists(PRODUCTION, m.stac_key):
            report.add(
                "error",
                "missing-production-item-json",
                rel.id,
                f"release {rel.version} lists {m.id} whose item JSON {m.stac_key} is not in "
                "the production area",
            )


def _check_production_states(
    report: DoctorReport,
    product: Product,
    released: set[str],
    items: Iterable[Item],
) -> None:
    """The items in state ``production`` are exactly those of the current release."""
    in_db = {i.id for i in items if i.product_id == product.id and i.state == ItemState.production}
    for item_id in sorted(in_db - released):
        report.add(
            "error",
            "production-mismatch",
            item_id,
            f"item is in state 'production' but not in the current release of {product.id}",
        )
    for item_id in sorted(released - in_db):
        report.add(
            "error",
            "production-mismatch",
            item_id,
            f"item is in the current release of {product.id} but not in state 'production'",
        )


def _check_releases(
    ws: Workspace, report: DoctorReport, *, deep: bool
) -> tuple[set[tuple[Area, str]], _Releases]:
    """Manifest roots and parts (format 1 or 2), the objects they list, the pointer."""
    referenced: set[tuple[Area, str]] = set()
    seen = _Releases()
    with ws.read() as session:
        rels = session.exec(select(Release)).all()
        products = session.exec(select(Product)).all()
        items = session.exec(select(Item)).all()
    ids = {r.id for r in rels}
    for rel in rels:
        referenced.add((PRODUCTION, rel.manifest_key))
        if rel.parent_id and rel.parent_id not in ids:
            report.add(
                "error",
                "dangling-parent",
                rel.id,
                f"release {rel.version} has an unknown parent {rel.parent_id}",
            )
        manifest = _load_manifest(ws, report, rel)
        if manifest is None:
            continue
        seen.manifests[rel.id] = manifest
        if manifest.legacy_items is None:
            for ref in manifest.parts.values():
                referenced.add((PRODUCTION, releases.part_key(rel.product_id, ref.id)))
        for part in _load_parts(ws, report, rel, manifest, seen):
            for m in part.items:
                referenced.add((PRODUCTION, m.object_key))
                referenced.add((PRODUCTION, m.stac_key))
            _check_manifest_objects(ws, report, rel, part, deep=deep)
        if rel.snapshot_key:
            referenced.add((PRODUCTION, rel.snapshot_key))
            if not ws.store.exists(PRODUCTION, rel.snapshot_key):
                report.add(
                    "error",
                    "missing-snapshot",
                    rel.id,
                    f"release {rel.version} records the snapshot {rel.snapshot_key}, which "
                    "is missing; restore it from a backup",
                )
    for product in products:
        current = product.current_release_id
        if current and current not in ids:
            report.add(
                "error",
                "dangling-current",
                product.id,
                f"current release {current} does not exist",
            )
            continue
        if current is None:
            _check_production_states(report, product, set(), items)
        elif current in seen.manifests:
            released = seen.items_of(seen.manifests[current])
            if released is not None:
                _check_production_states(report, product, set(released), items)
    report.checked["releases"] = len(rels)
    report.checked["manifest_parts"] = len(seen.parts)
    report.checked["products"] = len(products)
    return referenced, seen


# ------------------------------------------------------------------ published catalogs


def _resolve(base_key: str, href: Any) -> str | None:
    """The production key a relative href of the document at ``base_key`` points at."""
    return releases.resolve(base_key, href)


def _links(doc: dict[str, Any], rel: str) -> list[Any]:
    return [ln.get("href") for ln in releases.links_of(doc, rel)]


def _check_catalog(
    ws: Workspace, report: DoctorReport, rel: Release, by_id: dict[str, ManifestItem]
) -> set[tuple[Area, str]]:
    """One release's static catalog in layout 1 (before issue 15): complete, and
    describing its manifest."""
    seen: set[tuple[Area, str]] = set()
    root_key = releases.catalog_key(rel.product_id, rel.version)
    target = f"{rel.product_id} {rel.version}"

    def bad(kind: str, message: str) -> None:
        report.add("error", kind, target, message)

    root = _json_object(ws, PRODUCTION, root_key)
    seen.add((PRODUCTION, root_key))
    if isinstance(root, str):
        bad("bad-catalog-file", root)
        return seen
    if root.get("version") != rel.version:
        bad("catalog-mismatch", f"{root_key} says version {root.get('version')!r}")
    listed: set[str] = set()
    for child_href in _links(root, "child"):
        child_key = _resolve(root_key, child_href)
        if child_key is None or not ws.store.exists(PRODUCTION, child_key):
            bad("broken-catalog-link", f"{root_key} links to a missing child {child_href!r}")
            continue
        seen.add((PRODUCTION, child_key))
        child = _json_object(ws, PRODUCTION, child_key)
        if isinstance(child, str):
            bad("bad-catalog-file", child)
            continue
        if child.get("geomesh:release_id") != rel.id:
            bad(
                "catalog-mismatch",
                f"{child_key} describes release {child.get('geomesh:release_id')!r}, not {rel.id}",
            )
        for item_href in _links(child, "item"):
            item_key = _resolve(child_key, item_href)
            if item_key is None or not ws.store.exists(PRODUCTION, item_key):
                bad("broken-catalog-link", f"{child_key} links to a missing item {item_href!r}")
                continue
            seen.add((PRODUCTION, item_key))
            doc = _json_object(ws, PRODUCTION, item_key)
            if isinstance(doc, str):
                bad("bad-catalog-file", doc)
                continue
            item_id = str(doc.get("id"))
            listed.add(item_id)
            entry = by_id.get(item_id)
            if entry is None:
                bad("catalog-mismatch", f"{item_key} describes {item_id}, not in the manifest")
            else:
                _check_data_asset(doc, item_key, entry, bad)
    missing = sorted(set(by_id) - listed)
    if missing:
        bad(
            "catalog-mismatch",
            f"the published catalog lacks {len(missing)} released item(s), e.g. {missing[0]}",
        )
    return seen


def _check_data_asset(
    doc: dict[str, Any], item_key: str, entry: ManifestItem, bad: Callable[[str, str], None]
) -> None:
    assets = doc.get("assets")
    data = assets.get("data") if isinstance(assets, dict) else None
    href = data.get("href") if isinstance(data, dict) else None
    if _resolve(item_key, href) != entry.object_key:
        bad(
            "broken-catalog-link",
            f"{item_key}: the data asset {href!r} does not point at the released "
            f"object {entry.object_key}",
        )


@dataclass
class _Shared:
    """Shared layout-2 documents checked so far: each is checked once, whatever the number
    of releases that reference it. Partition key → (item ids listed, item keys), or None
    when the partition is unreadable."""

    parts: dict[str, tuple[frozenset[str], frozenset[str]] | None] = field(default_factory=dict)
    items: set[str] = field(default_factory=set)


def _named_by_hash(
    ws: Workspace, key: str, bad: Callable[[str, str], None], *, deep: bool
) -> dict[str, Any] | None:
    """A shared, content-addressed document: readable, and (deep) hashing to its name."""
    if deep:
        try:
            data = ws.store.get_bytes(PRODUCTION, key)
        except StoreUnavailable:
            raise
        except GeomeshError as exc:
            bad("broken-catalog-link", f"{key} is missing ({str(exc)[:200]})")
            return None
        digest = hashlib.sha256(data).hexdigest()
        if posixpath.basename(key) != f"{digest}.json":
            bad("checksum-mismatch", f"{key} hashes to {digest}, not to its name")
            return None
    doc = _json_object(ws, PRODUCTION, key)
    if isinstance(doc, str):
        bad("bad-catalog-file", doc)
        return None
    return doc


def _read_part_doc(
    ws: Workspace,
    part_key: str,
    expected: ManifestPart,
    shared: _Shared,
    bad: Callable[[str, str], None],
    *,
    deep: bool,
) -> tuple[frozenset[str], frozenset[str]] | None:
    """One shared partition, checked once: its item links resolve; (deep) each item
    document hashes to its name, describes the linked item and points at its object."""
    doc = _named_by_hash(ws, part_key, bad, deep=deep)
    if doc is None:
        return None
    titles: set[str] = set()
    keys: set[str] = set()
    for ln in releases.links_of(doc, "item"):
        item_key = _resolve(part_key, ln.get("href"))
        title = str(ln.get("title"))
        titles.add(title)
        if item_key is None or not ws.store.exists(PRODUCTION, item_key):
            bad("broken-catalog-link", f"{part_key} links to a missing item {title}")
            continue
        keys.add(item_key)
        if not deep or item_key in shared.items:
            continue
        shared.items.add(item_key)
        item_doc = _named_by_hash(ws, item_key, bad, deep=True)
        entry = expected.by_id.get(title)
        if item_doc is None:
            continue
        if item_doc.get("id") != title:
            bad(
                "catalog-mismatch",
                f"{item_key} describes {item_doc.get('id')!r}, linked as {title}",
            )
        elif entry is not None:
            _check_data_asset(item_doc, item_key, entry, bad)
    return frozenset(titles), frozenset(keys)


def _check_part_doc(
    ws: Workspace,
    part_key: str,
    expected: ManifestPart,
    shared: _Shared,
    bad: Callable[[str, str], None],
    *,
    deep: bool,
) -> set[tuple[Area, str]]:
    """A partition as one release uses it: it lists exactly its manifest part's items."""
    if part_key not in shared.parts:
        shared.parts[part_key] = _read_part_doc(ws, part_key, expected, shared, bad, deep=deep)
    found = shared.parts[part_key]
    if found is None:
        return {(PRODUCTION, part_key)}
    titles, keys = found
    if titles != set(expected.by_id):
        bad(
            "catalog-mismatch",
            f"partition {part_key} lists {len(titles)} item(s); its manifest part "
            f"{expected.id[:12]}… holds {len(expected.items)}",
        )
    return {(PRODUCTION, part_key)} | {(PRODUCTION, k) for k in keys}


def _check_catalog_v2(
    ws: Workspace,
    report: DoctorReport,
    rel: Release,
    manifest: Manifest,
    known: _Releases,
    shared: _Shared,
    *,
    deep: bool,
) -> set[tuple[Area, str]]:
    """One release in layout 2: root → collection → shared partitions → shared items, each
    partition built from the manifest part it names."""
    target = f"{rel.product_id} {rel.version}"

    def bad(kind: str, message: str) -> None:
        report.add("error", kind, target, message)

    root_key = releases.catalog_key(rel.product_id, rel.version)
    coll_key = releases.collection_key(rel.product_id, rel.version)
    seen: set[tuple[Area, str]] = {(PRODUCTION, root_key), (PRODUCTION, coll_key)}
    root = _json_object(ws, PRODUCTION, root_key)
    if isinstance(root, str):
        bad("bad-catalog-file", root)
        return seen
    collection = _json_object(ws, PRODUCTION, coll_key)
    if isinstance(collection, str):
        bad("bad-catalog-file", collection)
        return seen
    for name, doc in ((root_key, root), (coll_key, collection)):
        if doc.get("version") != rel.version or doc.get("geomesh:release_id") != rel.id:
            bad(
                "catalog-mismatch",
                f"{name} says version {doc.get('version')!r}, release "
                f"{doc.get('geomesh:release_id')!r}",
            )
    if _resolve(root_key, next(iter(_links(root, "child")), None)) != coll_key:
        bad("broken-catalog-link", f"{root_key} does not link its collection {coll_key}")
    links = releases.partition_links(collection)
    if set(links) != set(manifest.parts):
        bad(
            "catalog-mismatch",
            f"{coll_key} has {len(links)} partition(s); the manifest has {len(manifest.parts)}",
        )
    for b, ln in sorted(links.items()):
        ref = manifest.parts.get(b)
        part_key = _resolve(coll_key, ln.get("href"))
        if ref is None or ln.get("geomesh:manifest_part") != ref.id:
            bad("catalog-mismatch", f"{coll_key}: partition {b} was built from another part")
            continue
        if part_key is None or not ws.store.exists(PRODUCTION, part_key):
            bad("broken-catalog-link", f"{coll_key} links to a missing partition {b}")
            continue
        expected = (
            manifest.inline[b] if manifest.legacy_items is not None else known.parts.get(ref.id)
        )
        if expected is None:
            continue  # the manifest part itself is broken: reported by the release checks
        seen |= _check_part_doc(ws, part_key, expected, shared, bad, deep=deep)
    return seen


def _check_index(
    ws: Workspace, report: DoctorReport, product: Product, rels: list[Release]
) -> set[tuple[Area, str]]:
    key = releases.index_key(product.id)
    if not rels:
        return set()
    if not ws.store.exists(PRODUCTION, key):
        report.add(
            "warning",
            "stale-index",
            product.id,
            f"the release index {key} is missing; re-run the command to rewrite it",
        )
        return set()
    index = _json_object(ws, PRODUCTION, key)
    if isinstance(index, str):
        report.add("error", "bad-catalog-file", product.id, index)
        return {(PRODUCTION, key)}
    current = index.get("geomesh:current")
    current_id = current.get("release_id") if isinstance(current, dict) else None
    listed = index.get("geomesh:releases")
    listed_ids = (
        {r.get("release_id") for r in listed if isinstance(r, dict)}
        if isinstance(listed, list)
        else set()
    )
    deprecated = {
        r.get("release_id")
        for r in (listed if isinstance(listed, list) else [])
        if isinstance(r, dict) and r.get("deprecated")
    }
    if (
        current_id != product.current_release_id
        or listed_ids != {r.id for r in rels}
        or deprecated != {r.id for r in rels if r.deprecated}
    ):
        report.add(
            "warning",
            "stale-index",
            product.id,
            f"the release index {key} lags the database (current {current_id}, database "
            f"{product.current_release_id}); re-run the command to rewrite it",
        )
    return {(PRODUCTION, key)}


def _check_partial_catalogs(
    ws: Workspace, report: DoctorReport, product_id: str, versions: set[str]
) -> None:
    """Version folders without their catalog.json (written last) are half materialized."""
    try:
        prefix = releases.catalogs_root(product_id) + "/"
    except UnsafePath:
        return
    folders = {k[len(prefix) :].split("/", 1)[0] for k in ws.store.list(PRODUCTION, prefix)}
    for version in sorted(folders - {"latest.json"} - releases.SHARED_FOLDERS):
        if version in versions and ws.store.exists(
            PRODUCTION, releases.catalog_key(product_id, version)
        ):
            continue
        report.add(
            "warning",
            "partial-catalog",
            f"{PRODUCTION}/{prefix}{version}",
            "catalog files without their catalog.json (an interrupted materialization, "
            "invisible to readers); re-running the command completes it",
        )


def _check_catalogs(
    ws: Workspace, report: DoctorReport, known: _Releases, *, deep: bool = False
) -> set[tuple[Area, str]]:
    """Every published release in either layout; shared layout-2 documents once each."""
    seen: set[tuple[Area, str]] = set()
    shared = _Shared()
    with ws.read() as session:
        rels = session.exec(select(Release)).all()
        products = session.exec(select(Product)).all()
    published = {1: 0, 2: 0}
    for rel in rels:
        manifest = known.manifests.get(rel.id)
        if manifest is None:
            continue
        layout = releases.layout_of(ws.store, rel.product_id, rel.version)
        if layout is None:
            if ws.store.exists(PRODUCTION, releases.catalog_key(rel.product_id, rel.version)):
                root = _json_object(
                    ws, PRODUCTION, releases.catalog_key(rel.product_id, rel.version)
                )
                report.add(
                    "error", "bad-catalog-file", f"{rel.product_id} {rel.version}", str(root)
                )
                continue
            report.add(
                "warning",
                "unpublished-catalog",
                rel.id,
                f"the static catalog of release {rel.version} is not materialized yet "
                "(invisible to readers); re-run the command, or `geomesh releases catalog "
                f"CONFIG {rel.version}`",
            )
            continue
        published[layout] += 1
        if layout == releases.LAYOUT:
            seen |= _check_catalog_v2(ws, report, rel, manifest, known, shared, deep=deep)
        else:
            by_id = known.items_of(manifest)
            if by_id is not None:
                seen |= _check_catalog(ws, report, rel, by_id)
    for product in products:
        mine = [r for r in rels if r.product_id == product.id]
        seen |= _check_index(ws, report, product, mine)
        _check_partial_catalogs(ws, report, product.id, {r.version for r in mine})
    report.checked["catalogs"] = published[1] + published[2]
    report.checked["catalogs_layout_1"] = published[1]
    report.checked["catalog_partitions"] = len(shared.parts)
    return seen


# ------------------------------------------------------------------ leftovers


def _check_temp_files(ws: Workspace, report: DoctorReport, *, gc: bool, min_age_s: float) -> None:
    found = sorted(ws.root.rglob(f"{TMP_PREFIX}*"))
    # a temporary directory (an interrupted ingest's workdir) counts once, with its content
    temps = [
        p
        for p in found
        if not any(a.name.startswith(TMP_PREFIX) for a in p.relative_to(ws.root).parents)
    ]
    now = time.time()
    for p in temps:
        rel = p.relative_to(ws.root).as_posix()
        try:
            old_enough = now - p.lstat().st_mtime >= min_age_s
        except FileNotFoundError:  # finished or collected by a concurrent writer meanwhile
            continue
        if gc and old_enough:
            if p.is_dir():
                shutil.rmtree(p, ignore_errors=True)
            else:
                p.unlink(missing_ok=True)
            report.collected.append(rel)
        else:
            report.add(
                "warning",
                "temporary-file",
                rel,
                "left by an interrupted write (invisible to readers); `geomesh doctor --gc` "
                "removes it",
            )
    report.checked["temporary_files"] = len(temps)


def _shared_doc(key: str) -> bool:
    """A shared layout-2 document (``catalogs/<product>/items|parts/…``)."""
    parts = key.split("/")
    return len(parts) == 4 and parts[2] in releases.SHARED_FOLDERS


def _check_orphans(
    ws: Workspace,
    report: DoctorReport,
    referenced: set[tuple[Area, str]],
    catalog_files: set[tuple[Area, str]],
) -> None:
    orphans = 0
    areas: tuple[Area, ...] = ("staging", "quarantine", PRODUCTION)
    for area in areas:
        for key in ws.store.list(area):
            if (area, key) in referenced or (area, key) in catalog_files:
                continue
            if area == PRODUCTION and key.startswith("catalogs/") and not _shared_doc(key):
                continue  # reported by the catalog checks (partial version folders)
            orphans += 1
            report.add(
                "info",
                "orphan-object",
                f"{area}/{key}",
                "complete but unreferenced (an interrupted command); a re-run reuses it",
            )
    report.checked["orphans"] = orphans


def _check_policies(ws: Workspace, report: DoctorReport) -> None:
    """Each product acts on exactly one active registered config, the one its row holds:
    the version's digest, the product's digest and the digest of the stored config agree."""
    with ws.read() as session:
        products = {p.id: p for p in session.exec(select(Product))}
        active: dict[str, list[ProductConfigVersion]] = {pid: [] for pid in products}
        for v in session.exec(
            select(ProductConfigVersion).where(
                col(ProductConfigVersion.status) == PolicyStatus.active
            )
        ):
            active.setdefault(v.product_id, []).append(v)
    for pid, versions in sorted(active.items()):
        product = products.get(pid)
        if product is None or len(versions) != 1:
            report.add(
                "error",
                "policy-active",
                pid,
                f"{len(versions)} active config versions (exactly one is the policy)",
            )
            continue
        (version,) = versions
        try:
            stored = parse_config(dict(product.config_json), source=f"config of {pid}").digest()
        except GeomeshError as exc:
            report.add("error", "policy-config", pid, f"the stored config does not parse: {exc}")
            continue
        if not (version.digest == product.config_digest == stored):
            report.add(
                "error",
                "policy-digest",
                pid,
                f"active version {version.version} has digest {version.digest[:12]}, the "
                f"product row {product.config_digest[:12]}, its stored config {stored[:12]}: "
                "the policy was changed outside `geomesh products update`",
            )


def run_doctor(
    ws: Workspace,
    *,
    gc: bool = False,
    deep: bool = False,
    min_age_s: float = 3600.0,
    actor: str = auth.SYSTEM,
) -> DoctorReport:
    """Check the whole catalog; with ``gc`` remove temporary files older than ``min_age_s``.

    Checking is read-only and open to everyone; collecting (``gc``) deletes files and needs
    the ``doctor.gc`` permission. An unreachable object store stops the check with
    ``StoreUnavailable`` (an outage is not a catalog problem to report).
    """
    if gc:
        with ws.read() as session:
            auth.require(session, actor, "doctor.gc")
    report = DoctorReport()
    referenced = _check_items(ws, report, deep=deep)
    from_releases, known = _check_releases(ws, report, deep=deep)
    referenced |= from_releases
    catalog_files = _check_catalogs(ws, report, known, deep=deep)
    _check_orphans(ws, report, referenced, catalog_files)
    _check_policies(ws, report)
    if ws.root.exists():
        _check_temp_files(ws, report, gc=gc, min_age_s=min_age_s)
    with ws.read() as session:
        for problem in audit.verify_stored(session, ws.audit_key, ws.store):
            report.add("error", "audit-chain", f"#{problem.seq}", problem.problem)
    return report
