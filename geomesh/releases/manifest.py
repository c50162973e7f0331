"""Release manifests as content-addressed trees, deltas and semantic versions.

A release manifest (format 2) is a small root document: product id, version, parent
manifest id, actor, time, kind, spatial contract, product metadata and one reference per
*partition* ``{"id": <sha256 of the part>, "count": <items>}``. A partition holds the item
versions whose source tile hashes to it (:func:`partition_of`: the first two hex digits of
SHA-256(source key), so 256 partitions; every version of one tile lands in the same one).
Parts are content-addressed and shared: a release that changes one tile stores one new
part and a new root, and every other part is the parent's, by reference (a Merkle tree,
as git trees are). The manifest id is the SHA-256 of the root's canonical JSON, so it
still commits to every item.

Format 1 (before issue 15) is one document listing every item; it is still read, and a
release derived from it is stored in format 2 (all of its parts written once).

Storage (``production`` area): ``releases/<product>/<id>.json`` (roots, both formats) and
``releases/<product>/parts/<part id>.json``. No database access here.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from functools import cached_property
from typing import Any, Final

import semver

from geomesh import faults
from geomesh.errors import ChecksumMismatch, StacError, StorageError, StoreUnavailable
from geomesh.storage import Area, ObjectStore, check_key

AREA: Final[Area] = "production"
FIRST_VERSION = "1.0.0"
MANIFEST_FORMAT = 2
#: hex digits of SHA-256(source key) that name a partition (2 → 256 partitions)
PARTITION_DIGITS = 2


class Bump(StrEnum):
    major = "major"
    minor = "minor"
    patch = "patch"


class ReleaseKind(StrEnum):
    promote = "promote"
    item_rollback = "item-rollback"


def canonical_json(data: Any) -> bytes:
    """Sorted keys, no whitespace, UTF-8: the bytes a content address is computed over."""
    return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def partition_of(source_key: str) -> str:
    """The partition of a source tile: stable for every version of that tile."""
    return hashlib.sha256(source_key.encode()).hexdigest()[:PARTITION_DIGITS]


def _malformed(what: str, exc: BaseException) -> StacError:
    return StacError(
        f"{what} is malformed ({type(exc).__name__}: {exc})",
        hint="manifests are written by geomesh only; restore it from a backup",
    )


# ------------------------------------------------------------------ items and parts


@dataclass(frozen=True)
class ManifestItem:
    """One item version as recorded in a manifest."""

    id: str
    digest: str
    stac_key: str
    object_key: str
    source_key: str

    @property
    def partition(self) -> str:
        return partition_of(self.source_key)

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
class ManifestPart:
    """The item versions of one partition, sorted by id; ``id`` hashes its canonical JSON."""

    items: tuple[ManifestItem, ...]

    @classmethod
    def of(cls, items: Iterable[ManifestItem]) -> ManifestPart:
        return cls(tuple(sorted(items, key=lambda m: m.id)))

    def canonical_json(self) -> bytes:
        return canonical_json({"items": [m.to_dict() for m in self.items]})

    @cached_property
    def id(self) -> str:
        return hashlib.sha256(self.canonical_json()).hexdigest()

    @cached_property
    def by_id(self) -> dict[str, ManifestItem]:
        return {m.id: m for m in self.items}

    @cached_property
    def by_source(self) -> dict[str, ManifestItem]:
        return {m.source_key: m for m in self.items}


EMPTY_PART = ManifestPart(())


@dataclass(frozen=True)
class PartRef:
    """A manifest root's reference to one stored part."""

    id: str
    count: int

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "count": self.count}


def _partitioned(items: Iterable[ManifestItem]) -> dict[str, ManifestPart]:
    groups: dict[str, list[ManifestItem]] = {}
    for m in items:
        groups.setdefault(m.partition, []).append(m)
    return {b: ManifestPart.of(ms) for b, ms in sorted(groups.items())}


# ------------------------------------------------------------------ the manifest root


@dataclass(frozen=True)
class Manifest:
    """An immutable release manifest; ``id`` is the SHA-256 of :meth:`canonical_json`.

    ``parts`` maps partition → :class:`PartRef`. ``inline`` holds parts this object
    carries in memory (the new parts of a manifest being built, or every part of a format-1
    manifest); the others are read from the store on demand (:func:`load_part`).
    ``legacy_items`` is set only for a manifest read in format 1 (it renders that format).
    """

    product_id: str
    version: str
    parent_id: str | None
    actor: str
    created_at: str
    kind: str
    spatial_contract: dict[str, str]
    product_metadata: dict[str, Any]
    parts: Mapping[str, PartRef] = field(default_factory=dict)
    inline: Mapping[str, ManifestPart] = field(default_factory=dict, compare=False, repr=False)
    legacy_items: tuple[ManifestItem, ...] | None = field(default=None, repr=False)

    @classmethod
    def build(cls, *, items: Iterable[ManifestItem], **head: Any) -> Manifest:
        """A format-2 manifest holding ``items`` (all of its parts in memory)."""
        parts = _partitioned(items)
        return cls(
            parts={b: PartRef(p.id, len(p.items)) for b, p in parts.items()},
            inline=parts,
            **head,
        )

    @property
    def format(self) -> int:
        return 1 if self.legacy_items is not None else MANIFEST_FORMAT

    @property
    def item_count(self) -> int:
        return sum(r.count for r in self.parts.values())

    def head_dict(self) -> dict[str, Any]:
        return {
            "product_id": self.product_id,
            "version": self.version,
            "parent_id": self.parent_id,
            "actor": self.actor,
            "created_at": self.created_at,
            "kind": self.kind,
            "spatial_contract": dict(self.spatial_contract),
            "product_metadata": dict(self.product_metadata),
        }

    def to_dict(self) -> dict[str, Any]:
        """The stored document (format 1 for a legacy manifest, else format 2)."""
        if self.legacy_items is not None:
            items = sorted(self.legacy_items, key=lambda i: i.id)
            return {"manifest_version": 1, **self.head_dict()} | {
                "items": [i.to_dict() for i in items]
            }
        return {"manifest_version": MANIFEST_FORMAT, **self.head_dict()} | {
            "item_count": self.item_count,
            "parts": {b: self.parts[b].to_dict() for b in sorted(self.parts)},
        }

    def canonical_json(self) -> bytes:
        return canonical_json(self.to_dict())

    @cached_property
    def id(self) -> str:
        return hashlib.sha256(self.canonical_json()).hexdigest()

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Manifest:
        what = f"release manifest of {d.get('product_id')!r}"
        try:
            head: dict[str, Any] = {
                "product_id": str(d["product_id"]),
                "version": str(d["version"]),
                "parent_id": d.get("parent_id"),
                "actor": str(d["actor"]),
                "created_at": str(d["created_at"]),
                "kind": str(d["kind"]),
                "spatial_contract": {str(k): str(v) for k, v in d["spatial_contract"].items()},
                "product_metadata": dict(d.get("product_metadata") or {}),
            }
            if d.get("manifest_version", 1) == 1:
                items = tuple(ManifestItem.from_dict(i) for i in d["items"])
                parts = _partitioned(items)
                return cls(
                    parts={b: PartRef(p.id, len(p.items)) for b, p in parts.items()},
                    inline=parts,
                    legacy_items=items,
                    **head,
                )
            refs = {str(b): PartRef(str(r["id"]), int(r["count"])) for b, r in d["parts"].items()}
        except (KeyError, TypeError, AttributeError, ValueError) as exc:
            raise _malformed(what, exc) from exc
        return cls(parts=refs, **head)


def manifest_key(product_id: str, manifest_id: str) -> str:
    return check_key(f"releases/{product_id}/{manifest_id}.json")


def part_key(product_id: str, part_id: str) -> str:
    return check_key(f"releases/{product_id}/parts/{part_id}.json")


def _checked(store: ObjectStore, key: str, expected: str, what: str) -> bytes:
    data = store.get_bytes(AREA, key)
    actual = hashlib.sha256(data).hexdigest()
    if actual != expected:
        raise ChecksumMismatch(
            f"{what} {AREA}/{key} hashes to {actual}, not its id {expected}",
            hint="it was altered after publication; restore it from a backup",
        )
    return data


def store_manifest(store: ObjectStore, manifest: Manifest) -> str:
    """Write the manifest's new parts, then its root (no-ops for what is stored already:
    everything is content-addressed). A format-1 manifest is never written again."""
    if manifest.legacy_items is not None:
        raise StacError(f"release {manifest.version}: format-1 manifests are read-only")
    key = manifest_key(manifest.product_id, manifest.id)
    if store.exists(AREA, key):
        return key
    store.put_many(
        AREA,
        (
            (part_key(manifest.product_id, p.id), p.canonical_json())
            for b, p in sorted(manifest.inline.items())
            if b in manifest.parts and manifest.parts[b].id == p.id
        ),
    )
    faults.point("manifest.parts_stored")
    store.put_bytes(AREA, key, manifest.canonical_json())
    return key


def load_manifest(store: ObjectStore, product_id: str, manifest_id: str) -> Manifest:
    """Read a manifest root (either format) and check that its bytes hash to its id."""
    key = manifest_key(product_id, manifest_id)
    data = _checked(store, key, manifest_id, "release manifest")
    try:
        doc = json.loads(data)
    except ValueError as exc:
        raise _malformed(f"release manifest {key}", exc) from exc
    if not isinstance(doc, dict):
        raise StacError(f"release manifest {key} is not a JSON object")
    return Manifest.from_dict(doc)


def load_part(store: ObjectStore, manifest: Manifest, partition: str) -> ManifestPart:
    """The items of one partition of ``manifest`` (empty when it has none there)."""
    ref = manifest.parts.get(partition)
    if ref is None:
        return EMPTY_PART
    held = manifest.inline.get(partition)
    if held is not None and held.id == ref.id:
        return held
    return read_part(store, manifest.product_id, ref.id)


def read_part(store: ObjectStore, product_id: str, part_id: str) -> ManifestPart:
    """A stored part, checked against its content address."""
    key = part_key(product_id, part_id)
    try:
        data = _checked(store, key, part_id, "manifest part")
    except StoreUnavailable:
        raise  # the store is down: nothing is known to be missing
    except StorageError as exc:
        raise StorageError(
            f"manifest part {AREA}/{key} is missing",
            hint="parts are written before their release; restore it from a backup",
        ) from exc
    try:
        return ManifestPart(tuple(ManifestItem.from_dict(i) for i in json.loads(data)["items"]))
    except (KeyError, TypeError, ValueError) as exc:
        raise _malformed(f"manifest part {key}", exc) from exc


def iter_items(store: ObjectStore, manifest: Manifest) -> Iterator[ManifestItem]:
    """Every item of the release, partition by partition (O(items): for exports/checks)."""
    for b in sorted(manifest.parts):
        yield from load_part(store, manifest, b).items


def all_items(store: ObjectStore, manifest: Manifest) -> dict[str, ManifestItem]:
    return {m.id: m for m in iter_items(store, manifest)}


def find_item(
    store: ObjectStore, manifest: Manifest, item_id: str, source_key: str
) -> ManifestItem | None:
    """The release's entry for ``item_id`` (looked up in its source tile's partition only)."""
    return load_part(store, manifest, partition_of(source_key)).by_id.get(item_id)


# ------------------------------------------------------------------ delta and derivation


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


@dataclass(frozen=True)
class Derived:
    """The partitions of a new manifest derived from its parent, and the delta."""

    parts: dict[str, PartRef]
    inline: dict[str, ManifestPart]
    delta: Delta


def derive(
    store: ObjectStore,
    parent: Manifest | None,
    *,
    put: Iterable[ManifestItem] = (),
    remove: Iterable[ManifestItem] = (),
    loaded: Mapping[str, ManifestPart] | None = None,
) -> Derived:
    """The parent's partitions with ``put`` items added (replacing the version of the same
    source tile) and ``remove`` items taken out. Reads and writes only the partitions
    those items fall into: O(changed × partition size), whatever the release's size.
    ``loaded``: partitions of ``parent`` the caller has already read (not read again).
    """
    puts = list(put)
    removes = {m.id for m in remove}
    touched = sorted({m.partition for m in puts} | {m.partition for m in remove})
    parts = dict(parent.parts) if parent else {}
    inline: dict[str, ManifestPart] = {}
    if parent is not None and parent.legacy_items is not None:
        # a format-1 parent has no stored parts: the new manifest stores all of them once
        inline.update({b: p for b, p in parent.inline.items() if b not in touched})
    added: list[str] = []
    removed: list[str] = []
    changed: list[Change] = []
    for b in touched:
        if parent is None:
            old = EMPTY_PART
        elif loaded is not None and b in loaded:
            old = loaded[b]
        else:
            old = load_part(store, parent, b)
        keep = {m.source_key: m for m in old.items if m.id not in removes}
        for m in puts:
            if m.partition == b:
                keep[m.source_key] = m
        new = ManifestPart.of(keep.values())
        d = compute_delta(old.items, new.items)
        added += d.added
        removed += d.removed
        changed += d.changed
        if new.items:
            parts[b] = PartRef(new.id, len(new.items))
            inline[b] = new
        else:
            parts.pop(b, None)
    delta = Delta(
        added=tuple(sorted(added)),
        removed=tuple(sorted(removed)),
        changed=tuple(sorted(changed, key=lambda c: c.to_id)),
    )
    return Derived(parts=dict(sorted(parts.items())), inline=inline, delta=delta)


# ------------------------------------------------------------------ versions


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
