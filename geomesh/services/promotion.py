"""Promotion: plan which items pass the three gates, and promote them into a new release.

:func:`plan_promotion` evaluates the gates (:mod:`geomesh.services.gates`, the sign-off
status of :mod:`geomesh.services.signoff`) and computes the next version; :func:`promote`
releases the eligible items. Object writes that must precede the visibility point
(production copies of objects and item JSON, the content-addressed manifest) happen
before the one transaction (role check, pointer move, item states, audit events); the
static catalog of the release and the release index are written after it, idempotently.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlmodel import col, select

from geomesh import auth, faults, lifecycle, releases
from geomesh.config import ProductConfig
from geomesh.errors import ConcurrentUpdate, NotFound, PromotionBlocked
from geomesh.models import Item, ItemState, Product, Release
from geomesh.releases import Bump, Delta, Derived, Manifest, ManifestItem, ReleaseKind
from geomesh.services.gates import (
    Gate,
    cached_checksum_gate,
    checksum_gate,
    validation_gate,
    validation_gates,
)
from geomesh.services.history import ReleaseInfo, _highest_version
from geomesh.services.lookup import get_product, items_by_id
from geomesh.services.products import check_config
from geomesh.services.publication import (
    _add_release,
    _move_pointer,
    publish_catalog,
    replanned,
)
from geomesh.services.signoff import approvals_by_item, status_from
from geomesh.workspace import Workspace


def _product_metadata(config: ProductConfig) -> dict[str, Any]:
    """The descriptive product metadata recorded in manifests (its change is MINOR)."""
    return config.product_metadata.model_dump(mode="json", exclude={"lifecycle_stage"})


# ------------------------------------------------------------------ plan


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
    #: the eligible item versions (one per source tile) and the new manifest's partitions
    chosen: tuple[ManifestItem, ...] = ()
    derived: Derived | None = None

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
    """The current release's manifest root (its partitions are read only when needed)."""
    if product.current_release_id is None:
        return None
    return releases.load_manifest(ws.store, product.id, product.current_release_id)


def _released(ws: Workspace, current: Manifest | None, items: Iterable[Item]) -> set[str]:
    """The ids among ``items`` that the current release holds (reads their partitions only)."""
    if current is None:
        return set()
    return {
        i.id for i in items if releases.find_item(ws.store, current, i.id, i.source_key) is not None
    }


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
    the cached hash of the unchanged object (``gates.cached_checksum_gate``), or reported as
    not checked; :func:`promote` always verifies.
    """
    pid = config.product_id
    with ws.read() as session:
        product = get_product(session, pid)
        config = check_config(session, config)  # the registered policy decides the gates
        required = config.governance.approvals_required
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
            found = items_by_id(session, item_ids)
            missing = [i for i in item_ids if i not in found or found[i].product_id != pid]
            if missing:
                raise NotFound(
                    f"item(s) {', '.join(map(repr, missing))} do not exist in product {pid!r}",
                    hint="list items with `geomesh items list CONFIG`",
                )
            candidates = [found[i] for i in dict.fromkeys(item_ids)]
        approvals = approvals_by_item(session, [item.id for item in candidates])
        validated = validation_gates(session, candidates)  # two queries, not two per item
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
            g.append(validated[item.id])
            g.append(status_from(item, approvals[item.id], required).gate())
            gates[item.id] = g
        highest = _highest_version(session, pid)
        counter = product.version_counter
        current_id = product.current_release_id
    for item in candidates:
        if verify_checksums:
            gates[item.id].insert(1, checksum_gate(ws, item))
        else:  # the last hash of the unchanged object (no read); promote re-verifies
            known = cached_checksum_gate(ws, item)
            gates[item.id].insert(
                1,
                known or Gate("checksum", True, "not checked in this plan; promote re-verifies it"),
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
    plans: list[ItemPlan] = []
    chosen: list[ManifestItem] = []
    parts: dict[str, releases.ManifestPart] = {}
    for item in candidates:
        # the version of the same tile in the current release: in that tile's partition
        prev = None
        if current is not None:
            b = releases.partition_of(item.source_key)
            if b not in parts:
                parts[b] = releases.load_part(ws.store, current, b)
            prev = parts[b].by_source.get(item.source_key)
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
    # O(changed): only the partitions of the chosen tiles are read and rebuilt
    derived = releases.derive(ws.store, current, put=chosen, loaded=parts)
    delta = derived.delta
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
        chosen=tuple(chosen),
        derived=derived,
    )


# ------------------------------------------------------------------ promote


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
    A promotion or rollback that commits a new current release while this one is prepared
    makes it plan again on top of that release (``publication.replanned``).
    """
    return replanned(lambda: _promote(ws, config, item_ids, actor=actor))


def _promote(
    ws: Workspace, config: ProductConfig, item_ids: Sequence[str] | None, *, actor: str
) -> PromoteResult:
    """One attempt of :func:`promote` (``ConcurrentUpdate``: another release won)."""
    pid = config.product_id
    with ws.read() as session:
        auth.require(session, actor, "promote")
        product = get_product(session, pid)
        config = check_config(session, config)  # the registered policy decides
        current = _current_manifest(ws, product)
        named = items_by_id(session, list(item_ids)) if item_ids is not None else {}
    if item_ids is not None:
        released = _released(ws, current, named.values())
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
    assert plan.derived is not None
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
        parts=plan.derived.parts,
        inline=plan.derived.inline,
    )
    # objects first: a crash leaves complete, unreferenced copies that a retry reuses
    for m in plan.chosen:
        ws.store.copy("staging", "production", m.object_key)
        ws.store.copy("staging", "production", m.stac_key)
    faults.point("promote.objects_copied")
    releases.store_manifest(ws.store, manifest)
    faults.point("promote.manifest_stored")
    superseded = tuple(c.from_id for c in plan.delta.changed)
    required = config.governance.approvals_required
    with ws.transaction() as session:
        auth.require(session, actor, "promote")
        product = get_product(session, pid, lock=True)
        check_config(session, config)  # the policy did not change since the plan
        _move_pointer(
            product,
            expected_current=plan.current_release_id,
            expected_counter=plan.version_counter,
            new_id=manifest.id,
        )
        # every row this transaction changes, locked before its first audit event
        locked = items_by_id(session, [*(p.item_id for p in eligible), *superseded], lock=True)
        items = {p.item_id: locked[p.item_id] for p in eligible}
        approvals = approvals_by_item(session, list(items))
        for p in eligible:
            item = items[p.item_id]
            # re-check the database gates inside the transaction (no time-of-check gap;
            # the row is locked, so its state is the committed one)
            recheck = [
                Gate("state", item.state == ItemState.validation, f"now {item.state.value!r}"),
                validation_gate(session, item),
                status_from(item, approvals[item.id], required).gate(),
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
        for old in (locked[i] for i in sorted(set(superseded)) if i in locked):
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
        product = get_product(session, product_id)
        return ReleaseInfo.of(row, product.current_release_id) if row else None
