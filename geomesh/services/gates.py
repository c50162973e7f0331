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

from dataclasses import dataclass
from typing import Any

from sqlmodel import Session, col, select

from geomesh.errors import StacError, StorageError
from geomesh.hashing import parse_multihash, sha256_file
from geomesh.models import FindingRecord, Item, ItemState, Severity, ValidationRun
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


def checksum_gate(ws: Workspace, item: Item) -> Gate:
    """(b) stream the stored object and compare its SHA-256 with the item's file:checksum."""
    try:
        multihash = item.stac["assets"]["data"]["file:checksum"]
    except (KeyError, TypeError):
        return Gate("checksum", False, "the item JSON has no assets.data.file:checksum")
    try:
        expected = parse_multihash(multihash)
    except StacError as exc:
        return Gate("checksum", False, str(exc))
    if expected != item.content_digest:
        return Gate(
            "checksum",
            False,
            f"file:checksum ({expected[:12]}…) differs from the recorded content digest "
            f"({item.content_digest[:12]}…); re-ingest the source",
        )
    try:
        with ws.store.open_local("staging", item.object_key) as path:
            actual, _ = sha256_file(path)
    except StorageError as exc:
        return Gate("checksum", False, f"{exc}; re-ingest the source")
    if actual != expected:
        return Gate(
            "checksum",
            False,
            f"stored object staging/{item.object_key} hashes to {actual[:12]}…, "
            f"file:checksum says {expected[:12]}…; the object is corrupt, re-ingest the source",
        )
    return Gate("checksum", True, f"sha256 {actual[:12]}… matches file:checksum")
