"""Promotion gates: the read-only checks an item must pass before it can be released.

* **validation** — no open P1/P2 finding for the item, and the latest validation run of
  its current content (same ``content_digest``) passed;
* **checksum** — the stored object is streamed and its SHA-256 must equal the item's
  ``file:checksum`` (re-verified at promotion time);
* **signoff** — ``governance.approvals_required`` distinct stewards approved this very
  content digest, none rejected it, and none of them is the item's submitter (see
  :mod:`geomesh.services.signoff`, whose status yields that gate).
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final

from sqlalchemy import func
from sqlmodel import Session, col, select

from geomesh.db import chunks
from geomesh.errors import StacError, StorageError, StoreUnavailable
from geomesh.hashing import parse_multihash, sha256_file
from geomesh.models import FindingRecord, Item, ItemState, Severity, ValidationRun, utcnow
from geomesh.workspace import Workspace

#: item states in which a steward may review (sign off) an item
REVIEWABLE = frozenset({ItemState.staging, ItemState.validation})
BLOCKING_SEVERITIES = (Severity.P1, Severity.P2)


@dataclass(frozen=True)
class Gate:
    """One promotion gate for one item: met or not, and why."""

    name: str
    ok: bool
    detail: str

    def to_json(self) -> dict[str, Any]:
        return {"gate": self.name, "ok": self.ok, "detail": self.detail}


def validation_gate(session: Session, item: Item) -> Gate:
    """(a) no open P1/P2 finding and a passing validation run of the current content."""
    open_rules = session.exec(
        select(FindingRecord.rule_id, FindingRecord.severity).where(
            FindingRecord.item_id == item.id,
            col(FindingRecord.open).is_(True),
            col(FindingRecord.severity).in_(BLOCKING_SEVERITIES),
        )
    ).all()
    if open_rules:
        names = ", ".join(sorted({f"{r} ({Severity(s).value})" for r, s in open_rules}))
        return Gate(
            "validation",
            False,
            f"{len(open_rules)} open P1/P2 finding(s): {names}; remediate and re-validate",
        )
    run = session.exec(
        select(ValidationRun)
        .where(
            ValidationRun.item_id == item.id,
            ValidationRun.content_digest == item.content_digest,
        )
        .order_by(col(ValidationRun.id).desc())
        .limit(1)
    ).first()
    if run is None:
        return Gate(
            "validation",
            False,
            "no validation run of the current content; run `geomesh validate CONFIG ITEM_ID`",
        )
    if not run.passed:
        return Gate("validation", False, f"the latest validation run (#{run.id}) did not pass")
    return Gate("validation", True, f"validation run #{run.id} passed, no open P1/P2 finding")


#: where the checksum cache keeps one document per stored object (object store ``meta``)
HASH_CACHE_PREFIX: Final = "checksums/"


@dataclass(frozen=True)
class ObjectHash:
    """The SHA-256 of a stored object as last computed, valid while its stamp is the same."""

    object_key: str
    stamp: str
    sha256: str
    checked_at: str


def _expected(item: Item) -> tuple[str | None, Gate | None]:
    """The item's expected digest, or the gate that fails without reading the object."""
    try:
        multihash = item.stac["assets"]["data"]["file:checksum"]
    except (KeyError, TypeError):
        return None, Gate("checksum", False, "the item JSON has no assets.data.file:checksum")
    try:
        expected = parse_multihash(multihash)
    except StacError as exc:
        return None, Gate("checksum", False, str(exc))
    if expected != item.content_digest:
        return None, Gate(
            "checksum",
            False,
            f"file:checksum ({expected[:12]}…) differs from the recorded content digest "
            f"({item.content_digest[:12]}…); re-ingest the source",
        )
    return expected, None


def _compare(item: Item, expected: str, actual: str, when: str = "") -> Gate:
    if actual != expected:
        return Gate(
            "checksum",
            False,
            f"stored object staging/{item.object_key} hashes to {actual[:12]}…, "
            f"file:checksum says {expected[:12]}…; the object is corrupt, re-ingest the source"
            + when,
        )
    return Gate("checksum", True, f"sha256 {actual[:12]}… matches file:checksum{when}")


def _cache_key(object_key: str) -> str:
    return f"{HASH_CACHE_PREFIX}{object_key}.json"


def _mac(ws: Workspace, object_key: str, stamp: str, sha256: str, checked_at: str) -> str:
    msg = f"object-hash:{object_key}:{stamp}:{sha256}:{checked_at}".encode()
    return hmac.new(ws.audit_key, msg, hashlib.sha256).hexdigest()


def cached_hash(ws: Workspace, object_key: str, stamp: str) -> ObjectHash | None:
    """The cached hash of ``object_key`` if it was computed at this very ``stamp`` (and the
    cache document is signed with the workspace's key), else None."""
    try:
        doc = json.loads(ws.store.get_bytes("meta", _cache_key(object_key)))
        found = ObjectHash(object_key, str(doc["stamp"]), str(doc["sha256"]), str(doc["at"]))
        mac = str(doc["mac"])
    except (StorageError, ValueError, KeyError, TypeError):
        return None
    good = _mac(ws, object_key, found.stamp, found.sha256, found.checked_at)
    if found.stamp != stamp or not hmac.compare_digest(mac, good):
        return None
    return found


def hash_object(ws: Workspace, object_key: str) -> ObjectHash:
    """Stream the stored object now and remember its SHA-256 under its stamp (size and
    mtime, or ETag), so the next read of an unchanged object costs one stat."""
    before = ws.store.stamp("staging", object_key)
    with ws.store.open_local("staging", object_key) as path:
        actual, _ = sha256_file(path)
    result = ObjectHash(
        object_key, before, actual, utcnow().replace(tzinfo=None).isoformat(timespec="seconds")
    )
    if ws.store.stamp("staging", object_key) == before:  # unchanged while it was read
        doc = {
            "stamp": before,
            "sha256": actual,
            "at": result.checked_at,
            "mac": _mac(ws, object_key, before, actual, result.checked_at),
        }
        ws.store.put_bytes("meta", _cache_key(object_key), json.dumps(doc).encode(), overwrite=True)
    return result


def validation_gates(session: Session, items: Sequence[Item]) -> dict[str, Gate]:
    """:func:`validation_gate` of many items in two queries (open P1/P2 findings of all of
    them; the latest run of each one's current content), not two per item."""
    ids = [i.id for i in items]
    blocking: dict[str, list[tuple[str, Any]]] = {}
    latest: dict[str, ValidationRun] = {}
    for chunk in chunks(ids):
        for iid, rule, sev in session.exec(
            select(FindingRecord.item_id, FindingRecord.rule_id, FindingRecord.severity).where(
                col(FindingRecord.item_id).in_(chunk),
                col(FindingRecord.open).is_(True),
                col(FindingRecord.severity).in_(BLOCKING_SEVERITIES),
            )
        ).all():
            blocking.setdefault(iid, []).append((rule, sev))
        newest = (
            select(func.max(ValidationRun.id))
            .join(Item, col(Item.id) == col(ValidationRun.item_id))
            .where(
                col(ValidationRun.item_id).in_(chunk),
                col(ValidationRun.content_digest) == col(Item.content_digest),
            )
            .group_by(col(ValidationRun.item_id))
        )
        for run in session.exec(select(ValidationRun).where(col(ValidationRun.id).in_(newest))):
            latest[run.item_id] = run
    return {i.id: _validation_verdict(blocking.get(i.id, []), latest.get(i.id)) for i in items}


def _validation_verdict(open_rules: Sequence[tuple[str, Any]], run: ValidationRun | None) -> Gate:
    if open_rules:
        names = ", ".join(sorted({f"{r} ({Severity(s).value})" for r, s in open_rules}))
        return Gate(
            "validation",
            False,
            f"{len(open_rules)} open P1/P2 finding(s): {names}; remediate and re-validate",
        )
    if run is None:
        return Gate(
            "validation",
            False,
            "no validation run of the current content; run `geomesh validate CONFIG ITEM_ID`",
        )
    if not run.passed:
        return Gate("validation", False, f"the latest validation run (#{run.id}) did not pass")
    return Gate("validation", True, f"validation run #{run.id} passed, no open P1/P2 finding")


def checksum_gate(ws: Workspace, item: Item) -> Gate:
    """(b) stream the stored object and compare its SHA-256 with the item's file:checksum.

    Always reads the object (promotion and "Verify now"); the result is remembered for
    :func:`cached_checksum_gate`.
    """
    expected, failed = _expected(item)
    if failed is not None or expected is None:
        return failed or Gate("checksum", False, "no checksum")
    try:
        found = hash_object(ws, item.object_key)
    except StoreUnavailable:
        raise  # an outage of the store is not a failed gate: the user must see it as such
    except StorageError as exc:
        return Gate("checksum", False, f"{exc}; re-ingest the source")
    return _compare(item, expected, found.sha256)


def cached_checksum_gate(ws: Workspace, item: Item, *, verify: bool = False) -> Gate | None:
    """The checksum gate from the cache: one stat of the object and one small read.

    When the object was not hashed at its current stamp (never, or it changed since), it is
    hashed now if ``verify``, else the result is None (not known).
    """
    expected, failed = _expected(item)
    if failed is not None or expected is None:
        return failed
    try:
        stamp = ws.store.stamp("staging", item.object_key)
    except StoreUnavailable:
        raise
    except StorageError as exc:
        return Gate("checksum", False, f"{exc}; re-ingest the source")
    found = cached_hash(ws, item.object_key, stamp)
    if found is None:
        return checksum_gate(ws, item) if verify else None
    return _compare(item, expected, found.sha256, f" (checked {found.checked_at}Z)")
