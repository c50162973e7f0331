"""Governance: steward sign-off, promotion through three gates, releases, rollback, history.

Promotion gates (all three are required, see :func:`plan_promotion`):

* **validation** — no open P1/P2 finding for the item, and the latest validation run of
  its current content (same ``content_digest``) passed;
* **checksum** — the stored object is streamed and its SHA-256 must equal the item's
  ``file:checksum`` (re-verified at promotion time);
* **signoff** — ``governance.approvals_required`` distinct stewards approved this very
  content digest, none rejected it, and none of them is the item's submitter.

Every state change is one function: role check, one transaction, audit event(s) in it.
Object writes that must precede the visibility point (production copies of objects and
item JSON, the content-addressed manifest) happen before the transaction; the static
catalog of a release and the release index are (re)written after it, idempotently.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy.sql.elements import ColumnElement
from sqlmodel import Session, col, select

from geomesh import audit, auth, faults, lifecycle, releases
from geomesh.config import ProductConfig
from geomesh.errors import (
    ConcurrentUpdate,
    NotFound,
    NothingToRollBack,
    PermissionDenied,
    PromotionBlocked,
    SignoffError,
    StacError,
    StorageError,
)
from geomesh.hashing import parse_multihash, sha256_file
from geomesh.models import (
    Approval,
    AuditEvent,
    Decision,
    FindingRecord,
    Item,
    ItemState,
    Product,
    Release,
    Severity,
    ValidationRun,
    utcnow,
)
from geomesh.releases import Bump, Delta, Manifest, ManifestItem, ReleaseKind
from geomesh.services.outbox import enqueue_escalations
from geomesh.storage import LocalStore
from geomesh.workspace import Workspace

#: item states in which a steward may review (sign off) an item
REVIEWABLE = frozenset({ItemState.staging, ItemState.validation})
BLOCKING_SEVERITIES = (Severity.P1, Severity.P2)
_IN_CHUNK = 500


# ------------------------------------------------------------------ small helpers


def _chunks(ids: Sequence[str], n: int = _IN_CHUNK) -> Iterator[Sequence[str]]:
    for i in range(0, len(ids), n):
        yield ids[i : i + n]


def _items_by_id(session: Session, ids: Iterable[str]) -> dict[str, Item]:
    wanted = sorted(set(ids))
    out: dict[str, Item] = {}
    for chunk in _chunks(wanted):
        for item in session.exec(select(Item).where(col(Item.id).in_(chunk))).all():
            out[item.id] = item
    return out


def _product(session: Session, product_id: str, *, lock: bool = False) -> Product:
    stmt = select(Product).where(Product.id == product_id)
    if lock:
        stmt = stmt.with_for_update()
    product = session.exec(stmt).first()
    if product is None:
        raise NotFound(
            f"product {product_id!r} is not registered",
            hint="ingest tiles first: `geomesh ingest CONFIG SOURCE...`",
        )
    return product


def _item(session: Session, product_id: str, item_id: str) -> Item:
    item = session.get(Item, item_id)
    if item is None or item.product_id != product_id:
        raise NotFound(
            f"item {item_id!r} does not exist in product {product_id!r}",
            hint="list items with `geomesh items list CONFIG`",
        )
    return item


def _product_metadata(config: ProductConfig) -> dict[str, Any]:
    """The descriptive product metadata recorded in manifests (its change is MINOR)."""
    return config.product_metadata.model_dump(mode="json", exclude={"lifecycle_stage"})


def _notify(
    session: Session,
    config: ProductConfig,
    *,
    event: str,
    item: Item,
    payload: dict[str, Any],
    key: str,
) -> None:
    """Queue the governance webhook (outbox rows, in the caller's transaction)."""
    enqueue_escalations(session, config, event=event, item=item, key=key, payload=payload)


# ------------------------------------------------------------------ gates


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


@dataclass(frozen=True)
class SignoffStatus:
    """The sign-off state of one item version (only its current content digest counts)."""

    item_id: str
    content_digest: str
    required: int
    approved_by: tuple[str, ...]
    rejected_by: tuple[tuple[str, str], ...]
    #: decisions recorded on other content digests (they do not count)
    stale: int
    requested: bool

    @property
    def ok(self) -> bool:
        return not self.rejected_by and len(self.approved_by) >= self.required

    def gate(self) -> Gate:
        if self.rejected_by:
            who = "; ".join(f"{a}: {c}" for a, c in self.rejected_by)
            return Gate("signoff", False, f"rejected by {who}")
        have = len(self.approved_by)
        if have < self.required:
            extra = (
                f" ({self.stale} decision(s) on other content do not count)" if self.stale else ""
            )
            return Gate(
                "signoff",
                False,
                f"{have}/{self.required} steward approval(s) of digest "
                f"{self.content_digest[:12]}…{extra}; ask a steward: "
                "`geomesh signoff CONFIG ITEM_ID --approve`",
            )
        return Gate("signoff", True, f"approved by {', '.join(self.approved_by)}")

    def to_json(self) -> dict[str, Any]:
        return {
            "item_id": self.item_id,
            "content_digest": self.content_digest,
            "required": self.required,
            "approved_by": list(self.approved_by),
            "rejected_by": [{"actor": a, "comment": c} for a, c in self.rejected_by],
            "stale_decisions": self.stale,
            "requested": self.requested,
            "ok": self.ok,
        }


def _signoff_status(session: Session, item: Item, required: int) -> SignoffStatus:
    rows = session.exec(select(Approval).where(Approval.item_id == item.id)).all()
    current = [r for r in rows if r.content_digest == item.content_digest]
    approved = sorted(
        {
            r.actor
            for r in current
            if r.decision == Decision.approve and r.actor != item.submitted_by
        }
    )
    rejected = sorted((r.actor, r.comment or "") for r in current if r.decision == Decision.reject)
    requested = (
        session.exec(
            select(AuditEvent.seq).where(
                AuditEvent.action == "signoff.request",
                AuditEvent.target == item.id,
                AuditEvent.digest == item.content_digest,
            )
        ).first()
        is not None
    )
    return SignoffStatus(
        item_id=item.id,
        content_digest=item.content_digest,
        required=required,
        approved_by=tuple(approved),
        rejected_by=tuple(rejected),
        stale=len(rows) - len(current),
        requested=requested,
    )


def signoff_status(ws: Workspace, config: ProductConfig, item_id: str) -> SignoffStatus:
    with ws.read() as session:
        item = _item(session, config.product_id, item_id)
        return _signoff_status(session, item, config.governance.approvals_required)


# ------------------------------------------------------------------ sign-off


def request_signoff(
    ws: Workspace, config: ProductConfig, item_id: str, *, actor: str
) -> SignoffStatus:
    """Ask the stewards to review an item; notifies the governance webhook. Idempotent
    per content digest (a second request for the same content is a no-op)."""
    with ws.transaction() as session:
        auth.require(session, actor, "signoff.request")
        item = _item(session, config.product_id, item_id)
        if item.state not in REVIEWABLE:
            raise SignoffError(
                f"item {item.id} is in state {item.state.value!r}; sign-off can be requested "
                "only for items in 'staging' or 'validation'"
            )
        required = config.governance.approvals_required
        status = _signoff_status(session, item, required)
        if status.requested:
            return status
        audit.append(
            session,
            actor=actor,
            action="signoff.request",
            target=item.id,
            product_id=item.product_id,
            state_before=item.state.value,
            state_after=item.state.value,
            digest=item.content_digest,
            details={"approvals_required": required},
        )
        _notify(
            session,
            config,
            event="signoff_requested",
            item=item,
            payload={
                "item_id": item.id,
                "content_digest": item.content_digest,
                "requested_by": actor,
                "submitted_by": item.submitted_by,
                "approvals_required": required,
            },
            key=f"signoff_requested:{item.content_digest}",
        )
        return _signoff_status(session, item, required)


def sign_off(
    ws: Workspace,
    config: ProductConfig,
    item_id: str,
    *,
    actor: str,
    approve: bool,
    comment: str | None = None,
) -> SignoffStatus:
    """Record a steward's decision on the item's *current content digest*.

    Only stewards decide; the submitter cannot approve its own item; a rejection needs a
    comment. Repeating the same decision is a no-op; a different decision by the same
    steward on the same content replaces the earlier one (both are in the audit trail).
    """
    decision = Decision.approve if approve else Decision.reject
    text = (comment or "").strip() or None
    if decision is Decision.reject and text is None:
        raise SignoffError(
            f"rejecting item {item_id!r} needs a comment",
            hint="say what must change: --reject --comment TEXT",
        )
    with ws.transaction() as session:
        auth.require(session, actor, "signoff")
        item = _item(session, config.product_id, item_id)
        if decision is Decision.approve and actor == item.submitted_by:
            raise PermissionDenied(
                f"{actor!r} submitted item {item.id} and cannot approve it",
                hint="another steward must review it",
            )
        if item.state not in REVIEWABLE:
            raise SignoffError(
                f"item {item.id} is in state {item.state.value!r}; only items in 'staging' or "
                "'validation' can be signed off"
            )
        existing = session.exec(
            select(Approval).where(
                Approval.item_id == item.id,
                Approval.actor == actor,
                Approval.content_digest == item.content_digest,
            )
        ).first()
        required = config.governance.approvals_required
        if existing is not None and existing.decision == decision and existing.comment == text:
            return _signoff_status(session, item, required)
        previous = existing.decision.value if existing is not None else None
        if existing is None:
            session.add(
                Approval(
                    item_id=item.id,
                    content_digest=item.content_digest,
                    actor=actor,
                    decision=decision,
                    comment=text,
                )
            )
        else:
            existing.decision = decision
            existing.comment = text
            existing.created_at = utcnow()
            session.add(existing)
        session.flush()
        event = audit.append(
            session,
            actor=actor,
            action=f"signoff.{decision.value}",
            target=item.id,
            product_id=item.product_id,
            state_before=item.state.value,
            state_after=item.state.value,
            digest=item.content_digest,
            details={"comment": text, "previous_decision": previous},
        )
        status = _signoff_status(session, item, required)
        _notify(
            session,
            config,
            event="signoff_decided",
            item=item,
            payload={
                "item_id": item.id,
                "content_digest": item.content_digest,
                "decision": decision.value,
                "decided_by": actor,
                "comment": text,
                "approvals": len(status.approved_by),
                "approvals_required": required,
                "signed_off": status.ok,
            },
            key=f"signoff_decided:{event.event_id}",
        )
        return status


# ------------------------------------------------------------------ promotion plan


@dataclass(frozen=True)
class ItemPlan:
    item_id: str
    source_key: str
    content_digest: str
    state: str
    gates: tuple[Gate, ...]
    #: the item version in the current release this one replaces (same source tile)
    replaces: str | None = None

    @property
    def eligible(self) -> bool:
        return all(g.ok for g in self.gates)

    @property
    def reasons(self) -> list[str]:
        return [f"{g.name}: {g.detail}" for g in self.gates if not g.ok]

    def to_json(self) -> dict[str, Any]:
        return {
            "item_id": self.item_id,
            "source_key": self.source_key,
            "content_digest": self.content_digest,
            "state": self.state,
            "eligible": self.eligible,
            "replaces": self.replaces,
            "gates": [g.to_json() for g in self.gates],
        }


@dataclass(frozen=True)
class PromotionPlan:
    """What a promotion would do: eligible and blocked items, and the computed version."""

    product_id: str
    current_release_id: str | None
    current_version: str | None
    version_counter: int
    items: tuple[ItemPlan, ...]
    bump: Bump | None
    next_version: str | None
    spatial_contract_changed: bool
    delta: Delta = field(default_factory=Delta)
    new_items: tuple[ManifestItem, ...] = ()

    @property
    def eligible(self) -> list[ItemPlan]:
        return [p for p in self.items if p.eligible]

    @property
    def blocked(self) -> list[ItemPlan]:
        return [p for p in self.items if not p.eligible]

    def to_json(self) -> dict[str, Any]:
        return {
            "product_id": self.product_id,
            "current_release_id": self.current_release_id,
            "current_version": self.current_version,
            "next_version": self.next_version,
            "bump": self.bump.value if self.bump else None,
            "spatial_contract_changed": self.spatial_contract_changed,
            "delta": self.delta.to_dict(),
            "eligible": [p.item_id for p in self.eligible],
            "blocked": {p.item_id: p.reasons for p in self.blocked},
            "items": [p.to_json() for p in self.items],
        }


def _manifest_item(item: Item) -> ManifestItem:
    return ManifestItem(
        id=item.id,
        digest=item.content_digest,
        stac_key=item.stac_key,
        object_key=item.object_key,
        source_key=item.source_key,
    )


def _current_manifest(ws: Workspace, product: Product) -> Manifest | None:
    if product.current_release_id is None:
        return None
    return releases.load_manifest(ws.store, product.id, product.current_release_id)


def _highest_version(session: Session, product_id: str) -> str | None:
    versions = session.exec(select(Release.version).where(Release.product_id == product_id)).all()
    return releases.highest_version(versions)


def plan_promotion(
    ws: Workspace,
    config: ProductConfig,
    item_ids: Sequence[str] | None = None,
    *,
    verify_checksums: bool = True,
) -> PromotionPlan:
    """Evaluate the three gates for the candidates and compute the next version.

    Candidates are ``item_ids`` or, by default, every item of the product in state
    ``validation``. Read-only. With ``verify_checksums=False`` the (slow) checksum gate is
    reported as not checked; :func:`promote` always verifies.
    """
    pid = config.product_id
    required = config.governance.approvals_required
    with ws.read() as session:
        product = _product(session, pid)
        current = _current_manifest(ws, product)
        if item_ids is None:
            candidates = list(
                session.exec(
                    select(Item)
                    .where(Item.product_id == pid, Item.state == ItemState.validation)
                    .order_by(col(Item.created_at), col(Item.id))
                ).all()
            )
        else:
            found = _items_by_id(session, item_ids)
            missing = [i for i in item_ids if i not in found or found[i].product_id != pid]
            if missing:
                raise NotFound(
                    f"item(s) {', '.join(map(repr, missing))} do not exist in product {pid!r}",
                    hint="list items with `geomesh items list CONFIG`",
                )
            candidates = [found[i] for i in dict.fromkeys(item_ids)]
        gates: dict[str, list[Gate]] = {}
        for item in candidates:
            g: list[Gate] = []
            if item.state != ItemState.validation:
                g.append(
                    Gate(
                        "state",
                        False,
                        f"item is in state {item.state.value!r}; only items in 'validation' "
                        "can be promoted",
                    )
                )
            g.append(validation_gate(session, item))
            g.append(_signoff_status(session, item, required).gate())
            gates[item.id] = g
        highest = _highest_version(session, pid)
        counter = product.version_counter
        current_id = product.current_release_id
    for item in candidates:
        if verify_checksums:
            gates[item.id].insert(1, checksum_gate(ws, item))
        else:
            gates[item.id].insert(
                1, Gate("checksum", True, "not checked in this plan; promote re-verifies it")
            )
    # at most one version per source tile in a batch: the newest wins
    newest: dict[str, Item] = {}
    for item in candidates:
        if all(x.ok for x in gates[item.id]):
            other = newest.get(item.source_key)
            if other is None or (item.created_at, item.id) > (other.created_at, other.id):
                newest[item.source_key] = item
    for item in candidates:
        winner = newest.get(item.source_key)
        if winner is not None and winner.id != item.id and all(x.ok for x in gates[item.id]):
            gates[item.id].append(
                Gate("batch", False, f"a newer version of the same tile ({winner.id}) is promoted")
            )
    parent_items = list(current.items) if current else []
    by_source = {m.source_key: m for m in parent_items}
    plans: list[ItemPlan] = []
    chosen: list[ManifestItem] = []
    replaced: set[str] = set()
    for item in candidates:
        prev = by_source.get(item.source_key)
        replaces = prev.id if prev is not None and prev.id != item.id else None
        plan = ItemPlan(
            item_id=item.id,
            source_key=item.source_key,
            content_digest=item.content_digest,
            state=item.state.value,
            gates=tuple(gates[item.id]),
            replaces=replaces,
        )
        plans.append(plan)
        if plan.eligible:
            chosen.append(_manifest_item(item))
            if replaces:
                replaced.add(replaces)
    new_items = tuple(
        sorted([m for m in parent_items if m.id not in replaced] + chosen, key=lambda m: m.id)
    )
    delta = releases.compute_delta(parent_items, new_items)
    contract = config.spatial_contract()
    bump = (
        releases.bump_for(
            current,
            spatial_contract=contract,
            product_metadata=_product_metadata(config),
            delta=delta,
        )
        if chosen
        else None
    )
    return PromotionPlan(
        product_id=pid,
        current_release_id=current_id,
        current_version=current.version if current else None,
        version_counter=counter,
        items=tuple(plans),
        bump=bump,
        next_version=releases.next_version(highest, bump) if bump else None,
        spatial_contract_changed=current is not None and current.spatial_contract != contract,
        delta=delta,
        new_items=new_items,
    )


# ------------------------------------------------------------------ promote


@dataclass(frozen=True)
class ReleaseInfo:
    id: str
    product_id: str
    version: str
    parent_id: str | None
    kind: str
    actor: str
    item_count: int
    delta: dict[str, Any]
    deprecated: bool
    current: bool
    created_at: str
    manifest_key: str

    @classmethod
    def of(cls, row: Release, current_id: str | None) -> ReleaseInfo:
        return cls(
            id=row.id,
            product_id=row.product_id,
            version=row.version,
            parent_id=row.parent_id,
            kind=row.kind,
            actor=row.actor,
            item_count=row.item_count,
            delta=dict(row.delta),
            deprecated=row.deprecated,
            current=row.id == current_id,
            created_at=row.created_at.isoformat(),
            manifest_key=row.manifest_key,
        )

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass(frozen=True)
class PromoteResult:
    product_id: str
    release: ReleaseInfo | None
    promoted: tuple[str, ...]
    superseded: tuple[str, ...]
    #: True when nothing changed (the items were already released, or nothing to promote)
    already: bool
    message: str
    catalog_key: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "product_id": self.product_id,
            "release": self.release.to_json() if self.release else None,
            "promoted": list(self.promoted),
            "superseded": list(self.superseded),
            "already": self.already,
            "message": self.message,
            "catalog_key": self.catalog_key,
        }


def _blocked_message(plans: Iterable[ItemPlan]) -> str:
    lines = [f"{p.item_id}: " + "; ".join(p.reasons) for p in plans]
    return "\n  ".join(lines)


def _move_pointer(
    product: Product, *, expected_current: str | None, expected_counter: int, new_id: str
) -> None:
    """Optimistic check + pointer move (the product row is locked by the caller)."""
    if (
        product.current_release_id != expected_current
        or product.version_counter != expected_counter
    ):
        raise ConcurrentUpdate(
            f"the current release of product {product.id!r} changed while this operation was "
            f"prepared (expected {expected_current}, found {product.current_release_id})",
            hint="re-run the command; it re-plans against the new current release",
        )
    product.current_release_id = new_id
    product.version_counter = expected_counter + 1
    product.updated_at = utcnow()


def _add_release(
    session: Session, manifest: Manifest, delta: Delta, *, kind: ReleaseKind
) -> Release:
    row = Release(
        id=manifest.id,
        product_id=manifest.product_id,
        version=manifest.version,
        parent_id=manifest.parent_id,
        manifest_key=releases.manifest_key(manifest.product_id, manifest.id),
        item_count=len(manifest.items),
        delta=delta.to_dict(),
        kind=kind.value,
        actor=manifest.actor,
    )
    session.add(row)
    session.flush()
    audit.append(
        session,
        actor=manifest.actor,
        action="release.publish",
        target=manifest.id,
        product_id=manifest.product_id,
        digest=manifest.id,
        details={
            "version": manifest.version,
            "parent_id": manifest.parent_id,
            "kind": kind.value,
            "item_count": len(manifest.items),
            "added": len(delta.added),
            "removed": len(delta.removed),
            "changed": len(delta.changed),
        },
    )
    return row


def promote(
    ws: Workspace,
    config: ProductConfig,
    item_ids: Sequence[str] | None = None,
    *,
    actor: str,
) -> PromoteResult:
    """Promote items whose three gates are met into a new release.

    With ``item_ids`` every listed item must pass (all or nothing); items already in the
    current release are a no-op. Without, every eligible item in ``validation`` is
    promoted and blocked ones are left alone. Raises PromotionBlocked when nothing can go.
    """
    pid = config.product_id
    with ws.read() as session:
        auth.require(session, actor, "promote")
        product = _product(session, pid)
        current = _current_manifest(ws, product)
    if item_ids is not None:
        released = current.by_id if current else {}
        todo = [i for i in dict.fromkeys(item_ids) if i not in released]
        if not todo:
            if product.current_release_id is not None:  # finish an interrupted publication
                publish_catalog(ws, pid, product.current_release_id)
            return PromoteResult(
                product_id=pid,
                release=_release_info(ws, pid, product.current_release_id),
                promoted=(),
                superseded=(),
                already=True,
                message=f"already released in {current.version if current else '-'}",
            )
        plan = plan_promotion(ws, config, todo)
        if plan.blocked:
            raise PromotionBlocked(
                f"cannot promote {len(plan.blocked)} of {len(todo)} item(s) of {pid}:\n  "
                + _blocked_message(plan.blocked),
                hint="fix what each gate says, or promote without ITEM_IDs to release the "
                "eligible ones only",
            )
    else:
        plan = plan_promotion(ws, config)
        if not plan.items:
            if product.current_release_id is not None:  # finish an interrupted publication
                publish_catalog(ws, pid, product.current_release_id)
            return PromoteResult(
                product_id=pid,
                release=None,
                promoted=(),
                superseded=(),
                already=True,
                message=f"nothing to promote: no item of {pid} is in 'validation'",
            )
        if not plan.eligible:
            raise PromotionBlocked(
                f"no item of {pid} meets all promotion gates:\n  " + _blocked_message(plan.blocked),
                hint="see `geomesh promote CONFIG --dry-run` for the gates of each item",
            )
    assert plan.next_version is not None and plan.bump is not None
    eligible = plan.eligible
    manifest = Manifest(
        product_id=pid,
        version=plan.next_version,
        parent_id=plan.current_release_id,
        actor=actor,
        created_at=releases.now_iso(),
        kind=ReleaseKind.promote.value,
        spatial_contract=config.spatial_contract(),
        product_metadata=_product_metadata(config),
        items=plan.new_items,
    )
    # objects first: a crash leaves complete, unreferenced copies that a retry reuses
    for p in eligible:
        m = manifest.by_id[p.item_id]
        ws.store.copy("staging", "production", m.object_key)
        ws.store.copy("staging", "production", m.stac_key)
    faults.point("promote.objects_copied")
    releases.store_manifest(ws.store, manifest)
    faults.point("promote.manifest_stored")
    superseded = tuple(c.from_id for c in plan.delta.changed)
    required = config.governance.approvals_required
    with ws.transaction() as session:
        auth.require(session, actor, "promote")
        product = _product(session, pid, lock=True)
        _move_pointer(
            product,
            expected_current=plan.current_release_id,
            expected_counter=plan.version_counter,
            new_id=manifest.id,
        )
        items = _items_by_id(session, [p.item_id for p in eligible])
        for p in eligible:
            item = items[p.item_id]
            # re-check the database gates inside the transaction (no time-of-check gap)
            recheck = [
                validation_gate(session, item),
                _signoff_status(session, item, required).gate(),
            ]
            failed = [g for g in recheck if not g.ok]
            if item.content_digest != p.content_digest or failed:
                raise ConcurrentUpdate(
                    f"item {item.id} changed while the promotion was prepared: "
                    + "; ".join(f"{g.name}: {g.detail}" for g in failed),
                    hint="re-run `geomesh promote`",
                )
            lifecycle.transition(
                session,
                item,
                ItemState.production,
                actor=actor,
                action="promote",
                details={"release": manifest.id, "version": manifest.version},
            )
        for old in _items_by_id(session, superseded).values():
            lifecycle.transition(
                session,
                old,
                ItemState.superseded,
                actor=actor,
                action="supersede",
                details={"release": manifest.id, "version": manifest.version},
            )
        _add_release(session, manifest, plan.delta, kind=ReleaseKind.promote)
        session.add(product)
    faults.point("promote.committed")
    key = publish_catalog(ws, pid, manifest.id)
    return PromoteResult(
        product_id=pid,
        release=_release_info(ws, pid, manifest.id),
        promoted=tuple(p.item_id for p in eligible),
        superseded=superseded,
        already=False,
        message=f"released {pid} {manifest.version} "
        + (f"({plan.bump.value} bump)" if plan.current_version else "(first release)"),
        catalog_key=key,
    )


def _release_info(ws: Workspace, product_id: str, release_id: str | None) -> ReleaseInfo | None:
    if release_id is None:
        return None
    with ws.read() as session:
        row = session.get(Release, release_id)
        product = _product(session, product_id)
        return ReleaseInfo.of(row, product.current_release_id) if row else None


def publish_catalog(ws: Workspace, product_id: str, release_id: str) -> str:
    """Materialize the release's static catalog (if missing) and rewrite the index.

    Idempotent; called after every promote/rollback and safe to re-run after a crash.
    """
    key = ensure_catalog(ws, product_id, release_id)
    faults.point("publish.catalog_written")
    refresh_index(ws, product_id)
    return key


def ensure_catalog(ws: Workspace, product_id: str, release_id: str) -> str:
    """The key of the release's ``catalog.json``, materializing it from the manifest if it
    is missing (e.g. after a crash between the release transaction and publication)."""
    with ws.read() as session:
        row = session.get(Release, release_id)
        if row is None or row.product_id != product_id:
            raise NotFound(f"release {release_id} of product {product_id!r} does not exist")
        parent = session.get(Release, row.parent_id) if row.parent_id else None
    key = releases.catalog_key(product_id, row.version)
    if not ws.store.exists("production", key):
        manifest = releases.load_manifest(ws.store, product_id, release_id)
        key = releases.materialize_catalog(
            ws.store, manifest, predecessor_version=parent.version if parent else None
        )
    return key


def refresh_index(ws: Workspace, product_id: str) -> str:
    """Rewrite ``catalogs/<product>/latest.json`` from the release rows (O(releases))."""
    with ws.read() as session:
        product = _product(session, product_id)
        rows = session.exec(select(Release).where(Release.product_id == product_id)).all()
        entries = [
            releases.IndexEntry(
                version=r.version,
                release_id=r.id,
                parent_id=r.parent_id,
                kind=r.kind,
                deprecated=r.deprecated,
                created_at=r.created_at.isoformat(),
            )
            for r in rows
        ]
        current = product.current_release_id
    return releases.write_index(ws.store, product_id, entries, current)


# ------------------------------------------------------------------ rollback


@dataclass(frozen=True)
class RollbackResult:
    product_id: str
    #: True when the rollback had already happened (a retry): nothing changed
    already: bool
    #: the release that is current now (None: the product has no current release)
    current_release_id: str | None
    current_version: str | None
    #: item rollback: the new PATCH release; release rollback: the release rolled back
    release_id: str | None
    message: str
    items: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__) | {"items": list(self.items)}


def rollback_item(
    ws: Workspace, config: ProductConfig, item_id: str, *, actor: str
) -> RollbackResult:
    """Remove one failed item version from the current release: a new PATCH release.

    Idempotent: when the item is no longer in the current release and is ``rolled_back``,
    the call is a no-op that reports "already rolled back".
    """
    pid = config.product_id
    with ws.read() as session:
        auth.require(session, actor, "rollback")
        product = _product(session, pid)
        item = _item(session, pid, item_id)
        highest = _highest_version(session, pid)
        current_id, counter = product.current_release_id, product.version_counter
        current_row = session.get(Release, current_id) if current_id else None
        current_version = current_row.version if current_row else None
    current = releases.load_manifest(ws.store, pid, current_id) if current_id else None
    if current is None or item_id not in current.by_id:
        if item.state == ItemState.rolled_back:
            if current_id is not None:  # finish an interrupted publication
                publish_catalog(ws, pid, current_id)
            return RollbackResult(
                product_id=pid,
                already=True,
                current_release_id=current_id,
                current_version=current_version,
                release_id=None,
                message=f"already rolled back: item {item_id} is not in the current release",
                items=(item_id,),
            )
        raise NothingToRollBack(
            f"item {item_id} (state {item.state.value!r}) is not in the current release "
            f"{current_version or '-'} of {pid}",
            hint="only released items can be rolled back; see `geomesh releases show CONFIG`",
        )
    delta = Delta(removed=(item_id,))
    manifest = Manifest(
        product_id=pid,
        version=releases.next_version(highest, Bump.patch),
        parent_id=current.id,
        actor=actor,
        created_at=releases.now_iso(),
        kind=ReleaseKind.item_rollback.value,
        spatial_contract=dict(current.spatial_contract),
        product_metadata=dict(current.product_metadata),
        items=tuple(m for m in current.items if m.id != item_id),
    )
    releases.store_manifest(ws.store, manifest)
    faults.point("rollback.manifest_stored")
    with ws.transaction() as session:
        auth.require(session, actor, "rollback")
        product = _product(session, pid, lock=True)
        _move_pointer(
            product, expected_current=current.id, expected_counter=counter, new_id=manifest.id
        )
        item = _item(session, pid, item_id)
        lifecycle.transition(
            session,
            item,
            ItemState.rolled_back,
            actor=actor,
            action="rollback.item",
            details={"release": manifest.id, "version": manifest.version, "from": current.id},
        )
        _add_release(session, manifest, delta, kind=ReleaseKind.item_rollback)
        session.add(product)
    faults.point("rollback.committed")
    publish_catalog(ws, pid, manifest.id)
    return RollbackResult(
        product_id=pid,
        already=False,
        current_release_id=manifest.id,
        current_version=manifest.version,
        release_id=manifest.id,
        message=f"rolled back item {item_id}: released {pid} {manifest.version} without it",
        items=(item_id,),
    )


def rollback_release(
    ws: Workspace, config: ProductConfig, *, actor: str, release_id: str | None = None
) -> RollbackResult:
    """Move the product's current pointer back to the parent of ``release_id``.

    See :func:`_rollback_release`; a retry also finishes an interrupted publication of the
    restored release (its catalog and the release index).
    """
    result = _rollback_release(ws, config, actor=actor, release_id=release_id)
    if result.already and result.current_release_id is not None:
        publish_catalog(ws, config.product_id, result.current_release_id)
    return result


def _rollback_release(
    ws: Workspace, config: ProductConfig, *, actor: str, release_id: str | None = None
) -> RollbackResult:
    """Move the product's current pointer back to the parent of ``release_id``.

    ``release_id`` is the release expected to be current (default: whatever is current).
    Cost is O(delta of that release): the pointer moves in O(1) and only the items in its
    delta change state; no manifest or catalog is read or written in the transaction.
    A retry after success sees that the release is no longer current and was rolled back,
    and returns ``already=True`` without changing anything.
    """
    pid = config.product_id
    with ws.transaction() as session:
        auth.require(session, actor, "rollback")
        product = _product(session, pid, lock=True)
        current = product.current_release_id
        if release_id is None and current is not None:
            # "roll back the current release" means "undo the latest release": once that
            # is rolled back, a repeat is a no-op; going further back names the release
            # three small columns, not the row: a release's delta lists every item it added
            latest = session.exec(
                select(Release.id, Release.version, Release.deprecated)
                .where(Release.product_id == pid)
                .order_by(col(Release.created_at).desc())
                .limit(1)
            ).first()
            if latest is not None and latest[2] and latest[0] != current:
                latest_id, latest_version = latest[0], latest[1]
                version = session.exec(select(Release.version).where(Release.id == current)).one()
                return RollbackResult(
                    product_id=pid,
                    already=True,
                    current_release_id=current,
                    current_version=version,
                    release_id=latest_id,
                    message=f"already rolled back: the latest release {latest_version} "
                    f"({latest_id[:12]}…) was rolled back and {version} is current; to roll "
                    f"back {version} as well, name it (--release {version})",
                )
        target_id = release_id or current
        if target_id is None:
            raise NothingToRollBack(f"product {pid!r} has no release to roll back")
        rel = _resolve_release(session, pid, target_id)
        if rel.id != current:
            if rel.deprecated:
                cur = session.get(Release, current) if current else None
                return RollbackResult(
                    product_id=pid,
                    already=True,
                    current_release_id=current,
                    current_version=cur.version if cur else None,
                    release_id=rel.id,
                    message=f"already rolled back: release {rel.version} ({rel.id[:12]}…) "
                    "is no longer current",
                )
            raise ConcurrentUpdate(
                f"release {rel.version} ({rel.id[:12]}…) is not the current release of {pid}",
                hint="only the current release can be rolled back; see `geomesh releases list`",
            )
        if rel.parent_id is None:
            raise NothingToRollBack(
                f"release {rel.version} is the first release of {pid}; there is no earlier "
                "release to roll back to",
                hint="roll back single items with `geomesh rollback CONFIG --item ITEM_ID`",
            )
        parent = session.get(Release, rel.parent_id)
        if parent is None:  # pragma: no cover - parent rows are never deleted
            raise NotFound(f"parent release {rel.parent_id} of {rel.version} is missing")
        delta = Delta.from_dict(rel.delta)
        to_rolled_back = [*delta.added, *(c.to_id for c in delta.changed)]
        to_production = [*delta.removed, *(c.from_id for c in delta.changed)]
        items = _items_by_id(session, [*to_rolled_back, *to_production])
        details = {"release": rel.id, "version": rel.version, "restored": parent.version}
        for iid in to_rolled_back:
            lifecycle.transition(
                session,
                items[iid],
                ItemState.rolled_back,
                actor=actor,
                action="rollback.release",
                details=details,
            )
        for iid in to_production:
            lifecycle.transition(
                session,
                items[iid],
                ItemState.production,
                actor=actor,
                action="rollback.release",
                details=details,
            )
        _move_pointer(
            product,
            expected_current=rel.id,
            expected_counter=product.version_counter,
            new_id=parent.id,
        )
        rel.deprecated = True
        session.add(rel)
        session.add(product)
        audit.append(
            session,
            actor=actor,
            action="rollback.release",
            target=rel.id,
            product_id=pid,
            digest=parent.id,
            details={
                "version": rel.version,
                "restored_release": parent.id,
                "restored_version": parent.version,
                "rolled_back_items": len(to_rolled_back),
                "restored_items": len(to_production),
            },
        )
        result = RollbackResult(
            product_id=pid,
            already=False,
            current_release_id=parent.id,
            current_version=parent.version,
            release_id=rel.id,
            message=f"rolled back {pid} {rel.version}; current is {parent.version} again",
            items=tuple(to_rolled_back),
        )
    faults.point("rollback.committed")
    publish_catalog(ws, pid, parent.id)
    return result


# ------------------------------------------------------------------ history


def _resolve_release(session: Session, product_id: str, ref: str) -> Release:
    """A release by id, unique id prefix (>= 8 hex), version, or 'current'."""
    if ref in ("current", "latest"):
        product = _product(session, product_id)
        if product.current_release_id is None:
            raise NotFound(f"product {product_id!r} has no current release")
        ref = product.current_release_id
    cond: ColumnElement[bool] = col(Release.id) == ref
    row = session.exec(
        select(Release)
        .where(Release.product_id == product_id)
        .where(cond | (col(Release.version) == ref.removeprefix("v")))
    ).first()
    if row is None and len(ref) >= 8:
        rows = session.exec(
            select(Release).where(Release.product_id == product_id, col(Release.id).startswith(ref))
        ).all()
        if len(rows) == 1:
            row = rows[0]
    if row is None:
        raise NotFound(
            f"release {ref!r} of product {product_id!r} does not exist",
            hint="list releases with `geomesh releases list CONFIG`",
        )
    return row


def list_releases(ws: Workspace, product_id: str) -> list[ReleaseInfo]:
    """Every release of the product, oldest version first."""
    with ws.read() as session:
        product = _product(session, product_id)
        rows = session.exec(select(Release).where(Release.product_id == product_id)).all()
        infos = [ReleaseInfo.of(r, product.current_release_id) for r in rows]
    return sorted(infos, key=lambda r: releases.parse_version(r.version))


def show_release(ws: Workspace, product_id: str, ref: str = "current") -> dict[str, Any]:
    """One release: its row (version, delta, current, deprecated) and its manifest."""
    with ws.read() as session:
        row = _resolve_release(session, product_id, ref)
        info = ReleaseInfo.of(row, _product(session, product_id).current_release_id)
    manifest = releases.load_manifest(ws.store, product_id, row.id)
    return info.to_json() | {"manifest": manifest.to_dict()}


@dataclass(frozen=True)
class ItemChange:
    source_key: str
    from_id: str
    to_id: str
    fields: dict[str, dict[str, Any]]

    def to_json(self) -> dict[str, Any]:
        return {
            "source_key": self.source_key,
            "from": self.from_id,
            "to": self.to_id,
            "fields": self.fields,
        }


@dataclass(frozen=True)
class ReleaseDiff:
    product_id: str
    from_version: str
    to_version: str
    added: tuple[str, ...]
    removed: tuple[str, ...]
    changed: tuple[ItemChange, ...]
    spatial_contract_changed: bool

    def to_json(self) -> dict[str, Any]:
        return {
            "product_id": self.product_id,
            "from": self.from_version,
            "to": self.to_version,
            "added": list(self.added),
            "removed": list(self.removed),
            "changed": [c.to_json() for c in self.changed],
            "spatial_contract_changed": self.spatial_contract_changed,
        }


def diff_releases(ws: Workspace, product_id: str, a: str, b: str) -> ReleaseDiff:
    """Items added, removed and changed (with the changed item-JSON fields) from a to b."""
    with ws.read() as session:
        ra = _resolve_release(session, product_id, a)
        rb = _resolve_release(session, product_id, b)
    ma = releases.load_manifest(ws.store, product_id, ra.id)
    mb = releases.load_manifest(ws.store, product_id, rb.id)
    delta = releases.compute_delta(ma.items, mb.items)
    changed = []
    for c in delta.changed:
        old = releases.load_item_json(ws.store, ma.by_id[c.from_id])
        new = releases.load_item_json(ws.store, mb.by_id[c.to_id])
        changed.append(ItemChange(c.source_key, c.from_id, c.to_id, releases.diff_json(old, new)))
    return ReleaseDiff(
        product_id=product_id,
        from_version=ma.version,
        to_version=mb.version,
        added=delta.added,
        removed=delta.removed,
        changed=tuple(changed),
        spatial_contract_changed=ma.spatial_contract != mb.spatial_contract,
    )


@dataclass(frozen=True)
class CatalogAt:
    product_id: str
    version: str
    release_id: str
    key: str
    #: local path of catalog.json (LocalStore only; None for S3)
    path: Path | None
    catalog: dict[str, Any]


def catalog_at(ws: Workspace, product_id: str, version: str = "current") -> CatalogAt:
    """The static catalog as it was published at ``version`` (or release id / 'current')."""
    with ws.read() as session:
        row = _resolve_release(session, product_id, version)
    key = ensure_catalog(ws, product_id, row.id)
    path = ws.store.path("production", key) if isinstance(ws.store, LocalStore) else None
    return CatalogAt(
        product_id=product_id,
        version=row.version,
        release_id=row.id,
        key=key,
        path=path,
        catalog=json.loads(ws.store.get_bytes("production", key)),
    )


# ------------------------------------------------------------------ audit trail


def verify_audit(ws: Workspace) -> list[audit.ChainProblem]:
    """Recompute the audit hash chain; the problems name each edited/inserted/deleted event."""
    with ws.read() as session:
        return audit.verify(session)


def export_audit(ws: Workspace, *, product_id: str | None = None) -> Iterator[dict[str, Any]]:
    """Every audit event as a JSON-ready dict, oldest first (streamed in batches)."""
    with ws.read() as session:
        for ev in audit.iter_events(session):
            if product_id is None or ev.product_id == product_id:
                yield audit.to_json(ev)
