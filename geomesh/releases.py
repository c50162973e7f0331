"""Release manifests, semantic version bumps, materialized STAC catalogs and diffs.

A release is an immutable JSON manifest (product id, semantic version, the item versions
with their digests and item-JSON keys, the parent manifest id, actor, time and the
spatial contract). Its id is the SHA-256 of its canonical JSON, and it is stored in the
``production`` area at ``releases/<product>/<id>.json``.

Each release is materialized once as a self-contained static STAC catalog at
``catalogs/<product>/<version>/`` (``catalog.json`` written last, so a reader never sees
half a catalog). Published catalogs are immutable, so they can only point *backwards*
(``predecessor-version``). Whatever changes later — which release is current, which one
succeeds another, which were rolled back — lives in one small, rewritten index,
``catalogs/<product>/latest.json`` (see :func:`write_index`).

No database access here: ``geomesh.services.promotion`` and ``geomesh.services.rollback``
own the transactions.
"""

from __future__ import annotations

import hashlib
import json
import posixpath
import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from functools import cached_property
from pathlib import Path
from typing import Any, Final

import pystac
import semver
from pystac.extensions.version import VersionExtension

from geomesh import faults
from geomesh.errors import ChecksumMismatch, StacError, StorageError, UnsafePath
from geomesh.storage import Area, ObjectStore, check_key

AREA: Final[Area] = "production"
FIRST_VERSION = "1.0.0"
#: structural links of an item that the materialized catalog re-creates
_STRUCTURAL_RELS = frozenset({"self", "root", "parent", "collection"})
_MEDIA_JSON = "application/json"


class Bump(StrEnum):
    major = "major"
    minor = "minor"
    patch = "patch"


class ReleaseKind(StrEnum):
    promote = "promote"
    item_rollback = "item-rollback"


# ------------------------------------------------------------------ manifest


@dataclass(frozen=True)
class ManifestItem:
    """One item version as recorded in a manifest."""

    id: str
    digest: str
    stac_key: str
    object_key: str
    source_key: str

    def to_dict(self) -> dict[str, str]:
        return {
            "id": self.id,
            "digest": self.digest,
            "stac_key": self.stac_key,
            "object_key": self.object_key,
            "source_key": self.source_key,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ManifestItem:
        return cls(
            id=str(d["id"]),
            digest=str(d["digest"]),
            stac_key=str(d["stac_key"]),
            object_key=str(d["object_key"]),
            source_key=str(d["source_key"]),
        )


@dataclass(frozen=True)
class Manifest:
    """An immutable release manifest; ``id`` is the SHA-256 of :meth:`canonical_json`."""

    product_id: str
    version: str
    parent_id: str | None
    actor: str
    created_at: str
    kind: str
    spatial_contract: dict[str, str]
    product_metadata: dict[str, Any]
    items: tuple[ManifestItem, ...] = field(default=())

    def to_dict(self) -> dict[str, Any]:
        return {
            "manifest_version": 1,
            "product_id": self.product_id,
            "version": self.version,
            "parent_id": self.parent_id,
            "actor": self.actor,
            "created_at": self.created_at,
            "kind": self.kind,
            "spatial_contract": dict(self.spatial_contract),
            "product_metadata": dict(self.product_metadata),
            "items": [i.to_dict() for i in sorted(self.items, key=lambda i: i.id)],
        }

    def canonical_json(self) -> bytes:
        return canonical_json(self.to_dict())

    @cached_property
    def id(self) -> str:
        return hashlib.sha256(self.canonical_json()).hexdigest()

    @cached_property
    def by_id(self) -> dict[str, ManifestItem]:
        return {i.id: i for i in self.items}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Manifest:
        try:
            return cls(
                product_id=str(d["product_id"]),
                version=str(d["version"]),
                parent_id=d.get("parent_id"),
                actor=str(d["actor"]),
                created_at=str(d["created_at"]),
                kind=str(d["kind"]),
                spatial_contract={str(k): str(v) for k, v in d["spatial_contract"].items()},
                product_metadata=dict(d.get("product_metadata") or {}),
                items=tuple(ManifestItem.from_dict(i) for i in d["items"]),
            )
        except (KeyError, TypeError, AttributeError) as exc:
            raise StacError(
                f"release manifest of {d.get('product_id')!r} is malformed (missing {exc})",
                hint="manifests are written by geomesh only; restore it from a backup",
            ) from exc


def canonical_json(data: Any) -> bytes:
    """Sorted keys, no whitespace, UTF-8: the bytes a content address is computed over."""
    return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def manifest_key(product_id: str, manifest_id: str) -> str:
    return check_key(f"releases/{product_id}/{manifest_id}.json")


def store_manifest(store: ObjectStore, manifest: Manifest) -> str:
    """Write the manifest (no-op when it is already stored: it is content-addressed)."""
    key = manifest_key(manifest.product_id, manifest.id)
    store.put_bytes(AREA, key, manifest.canonical_json())
    return key


def load_manifest(store: ObjectStore, product_id: str, manifest_id: str) -> Manifest:
    """Read a manifest and check that its bytes still hash to its id."""
    key = manifest_key(product_id, manifest_id)
    data = store.get_bytes(AREA, key)
    actual = hashlib.sha256(data).hexdigest()
    if actual != manifest_id:
        raise ChecksumMismatch(
            f"release manifest {AREA}/{key} hashes to {actual}, not its id {manifest_id}",
            hint="the manifest was altered after publication; restore it from a backup",
        )
    return Manifest.from_dict(json.loads(data))


# ------------------------------------------------------------------ delta and versions


@dataclass(frozen=True)
class Change:
    """An item version replaced by another version of the same source tile."""

    source_key: str
    from_id: str
    to_id: str

    def to_dict(self) -> dict[str, str]:
        return {"source_key": self.source_key, "from": self.from_id, "to": self.to_id}


@dataclass(frozen=True)
class Delta:
    """What a manifest changes against its parent.

    ``added`` are new tiles, ``removed`` are tiles gone without replacement and
    ``changed`` are tiles whose item version was replaced (same ``source_key``).
    An id appears in at most one of the three.
    """

    added: tuple[str, ...] = ()
    removed: tuple[str, ...] = ()
    changed: tuple[Change, ...] = ()

    @property
    def is_empty(self) -> bool:
        return not (self.added or self.removed or self.changed)

    def to_dict(self) -> dict[str, Any]:
        return {
            "added": list(self.added),
            "removed": list(self.removed),
            "changed": [c.to_dict() for c in self.changed],
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Delta:
        return cls(
            added=tuple(d.get("added", ())),
            removed=tuple(d.get("removed", ())),
            changed=tuple(
                Change(source_key=c["source_key"], from_id=c["from"], to_id=c["to"])
                for c in d.get("changed", ())
            ),
        )


def compute_delta(old: Iterable[ManifestItem], new: Iterable[ManifestItem]) -> Delta:
    """Added / removed / changed item versions between two item sets."""
    old_by_id = {i.id: i for i in old}
    new_by_id = {i.id: i for i in new}
    gone = {i: old_by_id[i] for i in old_by_id.keys() - new_by_id.keys()}
    came = {i: new_by_id[i] for i in new_by_id.keys() - old_by_id.keys()}
    gone_by_source = {m.source_key: m for m in gone.values()}
    changed: list[Change] = []
    for m in sorted(came.values(), key=lambda m: m.id):
        prev = gone_by_source.pop(m.source_key, None)
        if prev is not None:
            changed.append(Change(source_key=m.source_key, from_id=prev.id, to_id=m.id))
    paired = {c.from_id for c in changed} | {c.to_id for c in changed}
    return Delta(
        added=tuple(sorted(i for i in came if i not in paired)),
        removed=tuple(sorted(i for i in gone if i not in paired)),
        changed=tuple(changed),
    )


def bump_for(
    parent: Manifest | None,
    *,
    spatial_contract: Mapping[str, str],
    product_metadata: Mapping[str, Any],
    delta: Delta,
) -> Bump | None:
    """The semantic-version bump a new manifest needs against its parent (None: no change).

    MAJOR: the spatial contract (CRS or boundary) changed, or items were removed.
    MINOR: items were added, or the product metadata changed (additive metadata).
    PATCH: item versions were replaced by reprocessed ones of the same source tile.
    """
    if parent is None:
        return Bump.major
    if dict(parent.spatial_contract) != dict(spatial_contract) or delta.removed:
        return Bump.major
    if delta.added or dict(parent.product_metadata) != dict(product_metadata):
        return Bump.minor
    if delta.changed:
        return Bump.patch
    return None


def parse_version(version: str) -> semver.Version:
    try:
        return semver.Version.parse(version)
    except (ValueError, TypeError) as exc:
        raise StacError(f"release version {version!r} is not a semantic version") from exc


def highest_version(versions: Iterable[str]) -> str | None:
    parsed = [parse_version(v) for v in versions]
    return str(max(parsed)) if parsed else None


def next_version(highest: str | None, bump: Bump) -> str:
    """The next version after the highest one ever released (versions never repeat).

    The bump is applied to the highest released version, not to the parent's: after a
    rollback from 1.1.0 to 1.0.0, the next MINOR release is 1.2.0, not a second 1.1.0.
    """
    if highest is None:
        return FIRST_VERSION
    v = parse_version(highest)
    if bump is Bump.major:
        return str(v.bump_major())
    if bump is Bump.minor:
        return str(v.bump_minor())
    return str(v.bump_patch())


def sort_versions(versions: Iterable[str]) -> list[str]:
    return sorted(versions, key=parse_version)


# ------------------------------------------------------------------ materialized catalogs


def catalogs_root(product_id: str) -> str:
    return check_key(f"catalogs/{product_id}")


def catalog_prefix(product_id: str, version: str) -> str:
    return check_key(f"catalogs/{product_id}/{version}")


def catalog_key(product_id: str, version: str) -> str:
    return f"{catalog_prefix(product_id, version)}/catalog.json"


def index_key(product_id: str) -> str:
    return f"{catalogs_root(product_id)}/latest.json"


def load_item_json(store: ObjectStore, item: ManifestItem) -> dict[str, Any]:
    """The immutable item JSON of a released item (production copy of its ``stac_key``)."""
    try:
        data: dict[str, Any] = json.loads(store.get_bytes(AREA, item.stac_key))
    except StorageError as exc:
        raise StorageError(
            f"item JSON of {item.id} ({AREA}/{item.stac_key}) is missing",
            hint="it is copied there on promotion; re-run `geomesh promote` or restore it",
        ) from exc
    return data


def materialize_catalog(
    store: ObjectStore, manifest: Manifest, *, predecessor_version: str | None
) -> str:
    """Write the static STAC catalog of one release; return the key of its ``catalog.json``.

    Deterministic given the manifest, and a no-op when ``catalog.json`` exists (it is
    written last, so its presence means the catalog is complete).
    """
    key = catalog_key(manifest.product_id, manifest.version)
    if store.exists(AREA, key):
        return key
    prefix = catalog_prefix(manifest.product_id, manifest.version)
    item_dicts = {m.id: load_item_json(store, m) for m in manifest.items}
    with tempfile.TemporaryDirectory(prefix="geomesh-catalog-") as tmp:
        root = Path(tmp)
        catalog = _build_catalog(
            manifest,
            item_dicts,
            root,
            prefix,
            predecessor_version,
            _predecessor_keys(store, manifest, item_dicts),
        )
        catalog.save(catalog_type=pystac.CatalogType.SELF_CONTAINED)
        files = sorted(p for p in root.rglob("*") if p.is_file())
        last = root / "catalog.json"
        for p in [*(f for f in files if f != last), last]:
            store.put_bytes(AREA, f"{prefix}/{p.relative_to(root).as_posix()}", p.read_bytes())
            faults.point("catalog.file_written")
    return key


def _predecessor_keys(
    store: ObjectStore, manifest: Manifest, item_dicts: Mapping[str, dict[str, Any]]
) -> dict[str, str]:
    """Item id -> production key of its predecessor's item JSON, when that was released.

    Ingest links an item to its predecessor's *staging* JSON; the published catalog links
    to the released copy instead, or drops the link when the predecessor never was released.
    """
    out: dict[str, str] = {}
    for m in manifest.items:
        for link in item_dicts[m.id].get("links", []):
            if link.get("rel") != "predecessor-version":
                continue
            name = posixpath.basename(str(link.get("href", "")))
            key = f"items/{manifest.product_id}/{name}"
            try:
                check_key(key)
            except UnsafePath:
                continue
            if store.exists(AREA, key):
                out[m.id] = key
    return out


def _build_catalog(
    manifest: Manifest,
    item_dicts: Mapping[str, dict[str, Any]],
    root: Path,
    prefix: str,
    predecessor_version: str | None,
    predecessor_keys: Mapping[str, str],
) -> pystac.Catalog:
    meta = manifest.product_metadata
    pid = manifest.product_id
    title = str(meta.get("title") or pid)
    description = str(meta.get("description") or f"{title}, release {manifest.version}")
    items = []
    for m in sorted(manifest.items, key=lambda m: m.id):
        d = dict(item_dicts[m.id])
        # structural links are re-created; predecessor links are re-pointed below (their
        # staging hrefs may be s3:// URLs that pystac would try to resolve)
        d["links"] = [
            ln
            for ln in d.get("links", [])
            if ln.get("rel") not in _STRUCTURAL_RELS and ln.get("rel") != "predecessor-version"
        ]
        d.pop("collection", None)
        items.append(pystac.Item.from_dict(d, preserve_dict=True))
    if items:
        extent = pystac.Extent.from_items(items)
    else:
        start = datetime.fromisoformat(manifest.created_at.replace("Z", "+00:00"))
        extent = pystac.Extent(
            pystac.SpatialExtent([[-180.0, -90.0, 180.0, 90.0]]),
            pystac.TemporalExtent([[start, None]]),
        )
    catalog = pystac.Catalog(
        id=pid,
        description=f"{description} (static catalog of release {manifest.version})",
        title=f"{title} {manifest.version}",
        catalog_type=pystac.CatalogType.SELF_CONTAINED,
    )
    collection = pystac.Collection(
        id=pid,
        description=description,
        extent=extent,
        title=title,
        license=str(meta.get("license") or "proprietary"),
        extra_fields={
            "geomesh:release_id": manifest.id,
            "geomesh:spatial_contract": dict(manifest.spatial_contract),
        },
    )
    for obj in (catalog, collection):
        VersionExtension.ext(obj, add_if_missing=True).apply(
            version=manifest.version, deprecated=False
        )
    catalog.add_child(collection)
    for item in items:
        collection.add_item(item)
    catalog.normalize_hrefs(str(root))
    by_id = manifest.by_id
    for item in items:
        self_href = item.get_self_href()
        if self_href is None:  # pragma: no cover - normalize_hrefs always sets it
            raise StacError(f"item {item.id} has no location after normalize_hrefs")
        rel_item = Path(self_href).relative_to(root).as_posix()
        item_key = f"{prefix}/{rel_item}"
        asset = item.assets.get("data")
        if asset is None:
            raise StacError(
                f"item {item.id} has no 'data' asset",
                hint="items are built by `geomesh ingest`; re-ingest the source",
            )
        asset.href = posixpath.relpath(by_id[item.id].object_key, posixpath.dirname(item_key))
        item.clear_links("predecessor-version")
        pred_key = predecessor_keys.get(item.id)
        if pred_key is not None:
            item.add_link(
                pystac.Link(
                    "predecessor-version",
                    posixpath.relpath(pred_key, posixpath.dirname(item_key)),
                    media_type="application/geo+json",
                )
            )
    if predecessor_version is not None:
        catalog.add_link(
            pystac.Link(
                "predecessor-version",
                f"../{predecessor_version}/catalog.json",
                media_type=_MEDIA_JSON,
                title=predecessor_version,
            )
        )
        collection.add_link(
            pystac.Link(
                "predecessor-version",
                f"../../{predecessor_version}/{pid}/collection.json",
                media_type=_MEDIA_JSON,
                title=predecessor_version,
            )
        )
    return catalog


# ------------------------------------------------------------------ the release index


@dataclass(frozen=True)
class IndexEntry:
    version: str
    release_id: str
    parent_id: str | None
    kind: str
    deprecated: bool
    created_at: str


def build_index(
    product_id: str, entries: Iterable[IndexEntry], current_id: str | None
) -> dict[str, Any]:
    """The release index of a product: a small STAC catalog with geomesh fields.

    It carries what immutable per-version catalogs cannot: the ``latest-version`` link
    (to the *current* release, which moves back on rollback) and, per release, its
    predecessor (the parent manifest's version), its successor (the next higher
    version) and whether it is deprecated (rolled back).
    """
    ordered = sorted(entries, key=lambda e: parse_version(e.version))
    version_of = {e.release_id: e.version for e in ordered}
    releases = []
    for n, e in enumerate(ordered):
        releases.append(
            {
                "version": e.version,
                "release_id": e.release_id,
                "href": f"./{e.version}/catalog.json",
                "kind": e.kind,
                "deprecated": e.deprecated,
                "current": e.release_id == current_id,
                "created_at": e.created_at,
                "predecessor-version": version_of.get(e.parent_id) if e.parent_id else None,
                "successor-version": ordered[n + 1].version if n + 1 < len(ordered) else None,
            }
        )
    links: list[dict[str, Any]] = []
    current = next((e for e in ordered if e.release_id == current_id), None)
    if current is not None:
        links.append(
            {
                "rel": "latest-version",
                "href": f"./{current.version}/catalog.json",
                "type": _MEDIA_JSON,
                "title": current.version,
            }
        )
    return {
        "type": "Catalog",
        "stac_version": pystac.get_stac_version(),
        "id": f"{product_id}-releases",
        "description": (
            f"Release index of {product_id}: the current release and every version. "
            "Rewritten on each promote or rollback; the per-version catalogs are immutable."
        ),
        "links": links,
        "geomesh:current": (
            {"version": current.version, "release_id": current.release_id} if current else None
        ),
        "geomesh:releases": releases,
    }


def write_index(
    store: ObjectStore, product_id: str, entries: Iterable[IndexEntry], current_id: str | None
) -> str:
    key = index_key(product_id)
    data = json.dumps(build_index(product_id, entries, current_id), indent=2).encode()
    store.put_bytes(AREA, key, data, overwrite=True)
    return key


# ------------------------------------------------------------------ diffs


def diff_json(
    a: Any, b: Any, *, path: str = "", ignore: frozenset[str] = frozenset({"links", "id"})
) -> dict[str, dict[str, Any]]:
    """Changed fields between two JSON documents as dotted paths → {"from", "to"}."""
    if isinstance(a, dict) and isinstance(b, dict):
        out: dict[str, dict[str, Any]] = {}
        for k in sorted(a.keys() | b.keys()):
            if not path and k in ignore:
                continue
            sub = f"{path}.{k}" if path else str(k)
            if k not in a:
                out[sub] = {"from": None, "to": b[k]}
            elif k not in b:
                out[sub] = {"from": a[k], "to": None}
            else:
                out.update(diff_json(a[k], b[k], path=sub, ignore=ignore))
        return out
    if a != b:
        return {path or ".": {"from": a, "to": b}}
    return {}
