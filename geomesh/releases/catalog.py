"""The published static STAC catalog of a release, with structural sharing (layout 2).

Keys in the ``production`` area, per product::

    catalogs/<product>/<version>/catalog.json     root Catalog of one release (written last)
    catalogs/<product>/<version>/collection.json  its Collection: extent, version, one child
                                                  link per partition
    catalogs/<product>/parts/<sha256>.json        a partition: a Catalog of item links,
                                                  named by the SHA-256 of its bytes and
                                                  shared by every release holding exactly
                                                  those item versions
    catalogs/<product>/items/<sha256>.json        a published item document, named by the
                                                  SHA-256 of its bytes, written once and
                                                  shared by every release that holds it

A release that changes one tile writes its new item document, one partition and its two
small per-release documents; every other partition is its parent's, reused by reference
(found through the parent's ``collection.json``, whose child links name the manifest part
each partition was built from). Shared documents carry no links that depend on a release
(no ``root``/``parent``/``collection``): readers reach them from a release's root. Every
version stays a self-contained static catalog that pystac and STAC Browser walk from its
``catalog.json``.

Layout 1 (before issue 15, still read): pystac's self-contained layout under
``catalogs/<product>/<version>/``: ``<product>/collection.json`` and
``<product>/<item>/<item>.json``.
"""

from __future__ import annotations

import hashlib
import json
import posixpath
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final

import pystac
from pystac.extensions.version import VersionExtension

from geomesh import faults
from geomesh.errors import StacError, StorageError, StoreUnavailable, UnsafePath
from geomesh.releases.manifest import AREA, Manifest, ManifestItem, load_part
from geomesh.storage import ObjectStore, check_key

LAYOUT: Final = 2
#: folders under ``catalogs/<product>/`` that are not release versions
SHARED_FOLDERS: Final = frozenset({"items", "parts"})
#: structural links of an item that depend on where it is published: never in shared docs
_STRUCTURAL_RELS = frozenset({"self", "root", "parent", "collection"})
MEDIA_JSON: Final = "application/json"
MEDIA_GEOJSON: Final = "application/geo+json"
VERSION_SCHEMA: Final = VersionExtension.get_schema_uri()
_WORLD = [-180.0, -90.0, 180.0, 90.0]


# ------------------------------------------------------------------ keys


def catalogs_root(product_id: str) -> str:
    return check_key(f"catalogs/{product_id}")


def catalog_prefix(product_id: str, version: str) -> str:
    return check_key(f"catalogs/{product_id}/{version}")


def catalog_key(product_id: str, version: str) -> str:
    return f"{catalog_prefix(product_id, version)}/catalog.json"


def collection_key(product_id: str, version: str) -> str:
    return f"{catalog_prefix(product_id, version)}/collection.json"


def index_key(product_id: str) -> str:
    return f"{catalogs_root(product_id)}/latest.json"


def items_dir(product_id: str) -> str:
    return f"{catalogs_root(product_id)}/items"


def parts_dir(product_id: str) -> str:
    return f"{catalogs_root(product_id)}/parts"


def item_doc_key(product_id: str, sha: str) -> str:
    return check_key(f"{items_dir(product_id)}/{sha}.json")


def part_doc_key(product_id: str, sha: str) -> str:
    return check_key(f"{parts_dir(product_id)}/{sha}.json")


def resolve(base_key: str, href: Any) -> str | None:
    """The production key a relative href of the document at ``base_key`` points at."""
    if not isinstance(href, str) or not href or "://" in href or href.startswith("/"):
        return None
    key = posixpath.normpath(posixpath.join(posixpath.dirname(base_key), href))
    try:
        return check_key(key)
    except UnsafePath:
        return None


def links_of(doc: Mapping[str, Any], rel: str) -> list[dict[str, Any]]:
    links = doc.get("links")
    if not isinstance(links, list):
        return []
    return [ln for ln in links if isinstance(ln, dict) and ln.get("rel") == rel]


def _dumps(doc: Any) -> bytes:
    return json.dumps(doc, separators=(",", ":"), ensure_ascii=False).encode()


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# ------------------------------------------------------------------ item documents


def load_item_json(store: ObjectStore, item: ManifestItem) -> dict[str, Any]:
    """The immutable item JSON of a released item (production copy of its ``stac_key``)."""
    try:
        data: dict[str, Any] = json.loads(store.get_bytes(AREA, item.stac_key))
    except StoreUnavailable:
        raise  # the store is down: nothing is known to be missing
    except StorageError as exc:
        raise StorageError(
            f"item JSON of {item.id} ({AREA}/{item.stac_key}) is missing",
            hint="it is copied there on promotion; re-run `geomesh promote` or restore it",
        ) from exc
    return data


def _predecessor_key(store: ObjectStore, product_id: str, raw: Mapping[str, Any]) -> str | None:
    """Production key of the released item JSON the item's predecessor link names, if any.

    Ingest links an item to its predecessor's *staging* JSON; the published document links
    to the released copy instead, or drops the link when the predecessor never was released.
    """
    for link in links_of(raw, "predecessor-version"):
        name = posixpath.basename(str(link.get("href", "")))
        try:
            key = check_key(f"items/{product_id}/{name}")
        except UnsafePath:
            continue
        if store.exists(AREA, key):
            return key
    return None


def published_item(
    raw: Mapping[str, Any], item: ManifestItem, product_id: str, predecessor_key: str | None
) -> dict[str, Any]:
    """The shared, release-independent document of one released item version."""
    doc = dict(raw)
    base = items_dir(product_id)
    links = [
        dict(ln)
        for ln in doc.get("links", [])
        if isinstance(ln, dict)
        and ln.get("rel") not in _STRUCTURAL_RELS
        and ln.get("rel") != "predecessor-version"
    ]
    if predecessor_key is not None:
        links.append(
            {
                "rel": "predecessor-version",
                "href": posixpath.relpath(predecessor_key, base),
                "type": MEDIA_GEOJSON,
            }
        )
    doc["links"] = links
    doc.pop("collection", None)
    assets = dict(doc.get("assets") or {})
    data = assets.get("data")
    if not isinstance(data, dict):
        raise StacError(
            f"item {item.id} has no 'data' asset",
            hint="items are built by `geomesh ingest`; re-ingest the source",
        )
    assets["data"] = dict(data) | {"href": posixpath.relpath(item.object_key, base)}
    doc["assets"] = assets
    return doc


def _utc(value: Any) -> str | None:
    if not isinstance(value, str):
        return None
    try:
        dt = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return dt.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _extent_of_item(doc: Mapping[str, Any]) -> tuple[list[float] | None, list[str | None]]:
    bbox = doc.get("bbox")
    box = None
    if isinstance(bbox, list) and len(bbox) in (4, 6):
        n = len(bbox) // 2
        box = [float(bbox[0]), float(bbox[1]), float(bbox[n]), float(bbox[n + 1])]
    props = doc.get("properties") or {}
    start = _utc(props.get("start_datetime") or props.get("datetime"))
    end = _utc(props.get("end_datetime") or props.get("datetime"))
    return box, [start, end]


def _item_link(doc: Mapping[str, Any], sha: str) -> dict[str, Any]:
    box, interval = _extent_of_item(doc)
    link: dict[str, Any] = {
        "rel": "item",
        "href": f"../items/{sha}.json",
        "type": MEDIA_GEOJSON,
        "title": str(doc.get("id")),
    }
    if box is not None:
        link["geomesh:bbox"] = box
    link["geomesh:interval"] = interval
    return link


@dataclass(frozen=True)
class _Extent:
    bbox: list[float] | None
    interval: list[str | None]

    @classmethod
    def union(cls, extents: Iterable[tuple[Any, Any]]) -> _Extent:
        boxes: list[list[float]] = []
        starts: list[str] = []
        ends: list[str] = []
        for box, interval in extents:
            if isinstance(box, list) and len(box) == 4:
                boxes.append([float(v) for v in box])
            if isinstance(interval, list) and len(interval) == 2:
                if isinstance(interval[0], str):
                    starts.append(interval[0])
                if isinstance(interval[1], str):
                    ends.append(interval[1])
        bbox = (
            [
                min(b[0] for b in boxes),
                min(b[1] for b in boxes),
                max(b[2] for b in boxes),
                max(b[3] for b in boxes),
            ]
            if boxes
            else None
        )
        return cls(bbox, [min(starts) if starts else None, max(ends) if ends else None])


def _part_doc(product_id: str, partition: str, links: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "type": "Catalog",
        "stac_version": pystac.get_stac_version(),
        "id": f"{product_id}-partition-{partition}",
        "title": f"{product_id}: partition {partition}",
        "description": (
            f"Released items of {product_id} whose source tile falls into partition "
            f"{partition} (immutable; shared by every release that holds exactly these items)."
        ),
        "geomesh:partition": partition,
        "links": links,
    }


# ------------------------------------------------------------------ reading a published catalog


def read_doc(store: ObjectStore, key: str) -> dict[str, Any] | None:
    """A published JSON object, or None when it is missing or unreadable (an unreachable
    store raises ``StoreUnavailable``: it says nothing about what is published)."""
    try:
        doc = json.loads(store.get_bytes(AREA, key))
    except StoreUnavailable:
        raise
    except (StorageError, ValueError):
        return None
    return doc if isinstance(doc, dict) else None


def layout_of(store: ObjectStore, product_id: str, version: str) -> int | None:
    """1 or 2 for a published release, None when its ``catalog.json`` is not there."""
    root = read_doc(store, catalog_key(product_id, version))
    if root is None:
        return None
    return LAYOUT if root.get("geomesh:layout") == LAYOUT else 1


def partition_links(collection: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """Partition → child link of a layout-2 ``collection.json``."""
    out: dict[str, dict[str, Any]] = {}
    for ln in links_of(collection, "child"):
        b = ln.get("geomesh:partition")
        if isinstance(b, str):
            out[b] = ln
    return out


def release_item_docs(
    store: ObjectStore, product_id: str, version: str
) -> Iterator[tuple[str, bytes]]:
    """(key, bytes) of every item document of a published release (either layout):
    the documents its ``catalog.json`` reaches through child and item links."""
    root_key = catalog_key(product_id, version)
    if read_doc(store, root_key) is None:
        raise StorageError(
            f"the catalog of release {version} ({AREA}/{root_key}) is not published",
            hint=f"publish it with `geomesh releases catalog CONFIG {version}`",
        )
    pending = [root_key]
    while pending:  # root → collection → partitions (layout 2) → items
        key = pending.pop(0)
        doc = read_doc(store, key)
        if doc is None:
            raise StorageError(f"published document {AREA}/{key} is missing or unreadable")
        children = (resolve(key, ln.get("href")) for ln in links_of(doc, "child"))
        pending += sorted(k for k in children if k is not None)
        for item_ln in links_of(doc, "item"):
            ikey = resolve(key, item_ln.get("href"))
            if ikey is None:
                raise StorageError(f"{key} links to an unsafe item {item_ln.get('href')!r}")
            yield ikey, store.get_bytes(AREA, ikey)


# ------------------------------------------------------------------ materialization


@dataclass
class MaterializeStats:
    """What one materialization wrote and reused (for the bench and the logs)."""

    item_docs_written: int = 0
    item_links_reused: int = 0
    parts_written: int = 0
    parts_reused: int = 0


def _parent_collection(
    store: ObjectStore, product_id: str, version: str | None
) -> dict[str, Any] | None:
    if version is None:
        return None
    root = read_doc(store, catalog_key(product_id, version))
    if root is None or root.get("geomesh:layout") != LAYOUT:
        return None  # layout 1 or not published: nothing to share
    return read_doc(store, collection_key(product_id, version))


def materialize_catalog(
    store: ObjectStore,
    manifest: Manifest,
    *,
    predecessor_version: str | None,
    stats: MaterializeStats | None = None,
) -> str:
    """Write the static STAC catalog of one release; return the key of its ``catalog.json``.

    Deterministic given the manifest, and a no-op when ``catalog.json`` exists (written
    last, so its presence means the catalog is complete). When the parent release
    (``predecessor_version``) is published in layout 2, its partitions are reused where the
    manifest part is the same, and its item links where the item is: the work is
    O(changed partitions), not O(items).
    """
    pid, version = manifest.product_id, manifest.version
    key = catalog_key(pid, version)
    if store.exists(AREA, key):
        return key
    st = stats if stats is not None else MaterializeStats()
    parent = _parent_collection(store, pid, predecessor_version)
    parent_links = partition_links(parent) if parent is not None else {}
    parent_coll_key = collection_key(pid, predecessor_version) if predecessor_version else ""
    child_links: dict[str, dict[str, Any]] = {}
    new_items: dict[str, bytes] = {}
    new_parts: dict[str, bytes] = {}
    for b, ref in sorted(manifest.parts.items()):
        old = parent_links.get(b)
        if old is not None and old.get("geomesh:manifest_part") == ref.id:
            child_links[b] = dict(old)
            st.parts_reused += 1
            continue
        reusable: dict[str, dict[str, Any]] = {}
        if old is not None:
            old_key = resolve(parent_coll_key, old.get("href"))
            old_doc = read_doc(store, old_key) if old_key else None
            if old_doc is not None:
                reusable = {str(ln.get("title")): ln for ln in links_of(old_doc, "item")}
        links: list[dict[str, Any]] = []
        for m in load_part(store, manifest, b).items:
            link = reusable.get(m.id)
            if link is None:
                raw = load_item_json(store, m)
                doc = published_item(raw, m, pid, _predecessor_key(store, pid, raw))
                data = _dumps(doc)
                sha = _sha(data)
                new_items[item_doc_key(pid, sha)] = data
                link = _item_link(doc, sha)
                st.item_docs_written += 1
            else:
                st.item_links_reused += 1
            links.append(dict(link))
        links.sort(key=lambda ln: str(ln["title"]))
        part_bytes = _dumps(_part_doc(pid, b, links))
        part_sha = _sha(part_bytes)
        new_parts[part_doc_key(pid, part_sha)] = part_bytes
        st.parts_written += 1
        ext = _Extent.union((ln.get("geomesh:bbox"), ln.get("geomesh:interval")) for ln in links)
        child_links[b] = {
            "rel": "child",
            "href": f"../parts/{part_sha}.json",
            "type": MEDIA_JSON,
            "title": f"partition {b} ({len(links)} items)",
            "geomesh:partition": b,
            "geomesh:manifest_part": ref.id,
            "geomesh:count": len(links),
            "geomesh:bbox": ext.bbox,
            "geomesh:interval": ext.interval,
        }
    # shared documents first (items, then the partitions that link them), then the
    # release's own collection, and catalog.json last: a reader never sees half a release
    store.put_many(AREA, sorted(new_items.items()))
    faults.point("catalog.items_written")
    store.put_many(AREA, sorted(new_parts.items()))
    faults.point("catalog.parts_written")
    coll_key = collection_key(pid, version)
    store.put_bytes(
        AREA,
        coll_key,
        _json_pretty(_collection_doc(manifest, child_links, predecessor_version)),
    )
    faults.point("catalog.collection_written")
    store.put_bytes(AREA, key, _json_pretty(_root_doc(manifest, predecessor_version)))
    return key


def _json_pretty(doc: Mapping[str, Any]) -> bytes:
    return json.dumps(doc, indent=2, ensure_ascii=False).encode()


def _titles(manifest: Manifest) -> tuple[str, str]:
    meta = manifest.product_metadata
    title = str(meta.get("title") or manifest.product_id)
    description = str(meta.get("description") or f"{title}, release {manifest.version}")
    return title, description


def _collection_doc(
    manifest: Manifest, child_links: Mapping[str, dict[str, Any]], predecessor: str | None
) -> dict[str, Any]:
    title, description = _titles(manifest)
    ext = _Extent.union(
        (ln.get("geomesh:bbox"), ln.get("geomesh:interval")) for ln in child_links.values()
    )
    start, end = ext.interval
    if start is None:
        start = _utc(manifest.created_at)
    links: list[dict[str, Any]] = [
        {"rel": "root", "href": "./catalog.json", "type": MEDIA_JSON, "title": title},
        {"rel": "parent", "href": "./catalog.json", "type": MEDIA_JSON, "title": title},
    ]
    if predecessor is not None:
        links.append(
            {
                "rel": "predecessor-version",
                "href": f"../{predecessor}/collection.json",
                "type": MEDIA_JSON,
                "title": predecessor,
            }
        )
    links += [child_links[b] for b in sorted(child_links)]
    return {
        "type": "Collection",
        "stac_version": pystac.get_stac_version(),
        "stac_extensions": [VERSION_SCHEMA],
        "id": manifest.product_id,
        "title": title,
        "description": description,
        "license": str(manifest.product_metadata.get("license") or "proprietary"),
        "extent": {
            "spatial": {"bbox": [ext.bbox or _WORLD]},
            "temporal": {"interval": [[start, end]]},
        },
        "version": manifest.version,
        "deprecated": False,
        "geomesh:release_id": manifest.id,
        "geomesh:spatial_contract": dict(manifest.spatial_contract),
        "geomesh:item_count": manifest.item_count,
        "links": links,
    }


def _root_doc(manifest: Manifest, predecessor: str | None) -> dict[str, Any]:
    title, description = _titles(manifest)
    links: list[dict[str, Any]] = [
        {"rel": "root", "href": "./catalog.json", "type": MEDIA_JSON, "title": title},
        {"rel": "child", "href": "./collection.json", "type": MEDIA_JSON, "title": title},
    ]
    if predecessor is not None:
        links.append(
            {
                "rel": "predecessor-version",
                "href": f"../{predecessor}/catalog.json",
                "type": MEDIA_JSON,
                "title": predecessor,
            }
        )
    return {
        "type": "Catalog",
        "stac_version": pystac.get_stac_version(),
        "stac_extensions": [VERSION_SCHEMA],
        "id": manifest.product_id,
        "title": f"{title} {manifest.version}",
        "description": f"{description} (static catalog of release {manifest.version})",
        "version": manifest.version,
        "deprecated": False,
        "geomesh:layout": LAYOUT,
        "geomesh:release_id": manifest.id,
        "links": links,
    }
