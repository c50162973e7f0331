"""Remediation: derive missing or drifted ``proj:*`` fields into a NEW item version.

``remediate_item`` is the explicit, audited ``geomesh remediate``: it derives the fields from
the raster into a new item version (new id, ``derived_from`` = old id) and marks the old
version superseded; nothing is edited in place.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import pystac
from pystac.extensions.projection import ProjectionExtension
from sqlmodel import Session, col, select

from geomesh import audit, auth, lifecycle
from geomesh.config import ProductConfig
from geomesh.errors import InvalidTransition, StacError, ValidationError
from geomesh.models import Item, ItemState
from geomesh.services.lookup import get_item
from geomesh.services.products import check_config
from geomesh.services.validation import check_product, stored_raster
from geomesh.stac import is_safe_item_id, item_to_dict
from geomesh.tiles import object_href, stac_key_for
from geomesh.validation.rules import (
    CRS_FIELDS,
    REQUIRED_PROJ,
    Subject,
    check_crs,
    check_drift,
    read_raster_facts,
)
from geomesh.workspace import Workspace

PROJECTION_V2: Final = ProjectionExtension.get_schema_uri()
_LEGACY_PROJECTION = re.compile(r"^https://stac-extensions\.github\.io/projection/v1\.")
_REVISION_SUFFIX = re.compile(r"-r[0-9]+$")
REMEDIABLE_STATES: Final = frozenset(
    {ItemState.staging, ItemState.validation, ItemState.quarantined}
)


@dataclass
class RemediationResult:
    old_item_id: str
    new_item_id: str
    fields: list[str]
    created: bool
    old_state_before: str

    def to_json(self) -> dict[str, Any]:
        return {
            "old_item_id": self.old_item_id,
            "new_item_id": self.new_item_id,
            "fields": self.fields,
            "created": self.created,
            "old_state_before": self.old_state_before,
        }


def derivable_fields(doc: dict[str, Any], raster: Path, *, item_id: str) -> dict[str, Any]:
    """proj:* fields to (re)write: missing, drifted, or disagreeing with the COG header."""
    facts = read_raster_facts(raster)
    derived = facts.projection_fields()
    subject = Subject(doc=doc, item_id=item_id, raster_path=raster)
    out: dict[str, Any] = {}
    for name in (*REQUIRED_PROJ,):
        if name in derived and subject.field(name) is None:
            out[name] = derived[name]
    for f in check_drift(subject):
        name = str(f.context.get("field"))
        if name in derived:
            out[name] = derived[name]
    crs_name = next((n for n in CRS_FIELDS if n in derived), None)
    if crs_name is not None:
        crs_findings = list(check_crs(subject))
        if any(f.rule_id in ("GM-CRS-002", "GM-CRS-003") for f in crs_findings) or (
            subject.crs_ref() is None
        ):
            out[crs_name] = derived[crs_name]
    return out


def _apply_projection(item: pystac.Item, fields: dict[str, Any]) -> None:
    """Write ``fields`` with pystac's typed projection extension (v2.0) on the properties,
    or on the data asset where the item keeps them there."""
    asset = item.assets.get("data")
    for name, value in fields.items():
        on_asset = asset is not None and name in asset.extra_fields
        target: Any = ProjectionExtension.ext(asset if on_asset else item, add_if_missing=True)
        attr = name.removeprefix("proj:")
        setattr(target, attr, value)
    # the legacy field and schema go once proj:code is written
    if "proj:code" in fields or "proj:wkt2" in fields:
        item.properties.pop("proj:epsg", None)
        if asset is not None:
            asset.extra_fields.pop("proj:epsg", None)
    item.stac_extensions = [u for u in item.stac_extensions if not _LEGACY_PROJECTION.match(u)]
    if PROJECTION_V2 not in item.stac_extensions:
        item.stac_extensions.append(PROJECTION_V2)


def _next_revision_id(session: Session, item_id: str) -> str:
    base = _REVISION_SUFFIX.sub("", item_id)
    taken = set(session.exec(select(Item.id).where(col(Item.id).startswith(f"{base}-r"))).all())
    n = 1
    while f"{base}-r{n}" in taken:
        n += 1
    new_id = f"{base}-r{n}"
    if not is_safe_item_id(new_id):
        raise StacError(f"item id {item_id!r} is too long to derive a new version id from")
    return new_id


def remediate_item(
    ws: Workspace, config: ProductConfig, item_id: str, *, actor: str
) -> RemediationResult:
    """Derive missing/drifted proj:* fields into a new item version; the old one is superseded.

    Idempotent: remediating an item that already has a derived version returns that version.
    """
    with ws.read() as session:
        auth.require(session, actor, "remediate")
        old = get_item(session, item_id)
        check_product(config, old)
        check_config(session, config)  # a differing caller config is refused
        done = session.exec(select(Item).where(Item.derived_from == item_id)).first()
        if done is not None:
            return RemediationResult(item_id, done.id, [], False, ItemState(old.state).value)
        if ItemState(old.state) not in REMEDIABLE_STATES:
            raise InvalidTransition(ItemState(old.state).value, "superseded", item_id=item_id)
    with stored_raster(ws, old) as (raster, problems):
        if raster is None:
            raise ValidationError(
                f"item {item_id!r} cannot be remediated: {problems[0].message}",
                hint="ingest the source again instead",
            )
        fields = derivable_fields(dict(old.stac), raster, item_id=item_id)
    if not fields:
        raise ValidationError(
            f"item {item_id!r}: nothing is derivable from its raster (every proj:* field is "
            "present and agrees with the COG)",
            hint="fix the remaining findings at the source and ingest again",
        )
    try:
        item = pystac.Item.from_dict(json.loads(json.dumps(old.stac)), preserve_dict=True)
    except (KeyError, TypeError, ValueError) as exc:
        raise StacError(
            f"item {item_id!r}: its STAC JSON cannot be read by pystac ({exc})"
        ) from exc
    with ws.read() as session:
        new_id = _next_revision_id(session, item_id)
    item.id = new_id
    _apply_projection(item, fields)
    item.add_link(
        pystac.Link(
            "derived_from",
            object_href(ws.store, "staging", old.stac_key),
            media_type="application/geo+json",
            title=f"remediated from {item_id}",
        )
    )
    stac = item_to_dict(item)
    skey = stac_key_for(old.product_id, new_id)
    ws.store.put_bytes("staging", skey, json.dumps(stac, indent=2, sort_keys=True).encode())

    with ws.transaction() as session:
        auth.require(session, actor, "remediate")
        old = get_item(session, item_id, lock=True)  # a concurrent remediation waits here
        done = session.exec(select(Item).where(Item.derived_from == item_id)).first()
        if done is not None:  # a concurrent remediation won
            return RemediationResult(item_id, done.id, [], False, ItemState(old.state).value)
        state_before = ItemState(old.state)
        if state_before not in REMEDIABLE_STATES:
            raise InvalidTransition(state_before.value, "superseded", item_id=item_id)
        if state_before is ItemState.quarantined:
            # quarantine → staging → superseded: the old version leaves quarantine through
            # the only legal door, both steps audited in this transaction
            lifecycle.transition(
                session,
                old,
                ItemState.staging,
                actor=actor,
                action="quarantine.release",
                details={"reason": f"remediated into {new_id}"},
            )
        lifecycle.transition(
            session,
            old,
            ItemState.superseded,
            actor=actor,
            action="supersede",
            details={"by": new_id, "remediation": True},
        )
        new = Item(
            id=new_id,
            product_id=old.product_id,
            source=old.source,
            source_key=old.source_key,
            content_digest=old.content_digest,
            size=old.size,
            object_key=old.object_key,
            stac_key=skey,
            stac=stac,
            state=ItemState.staging,
            submitted_by=actor,
            derived_from=old.id,
        )
        session.add(new)
        session.flush()
        audit.append(
            session,
            actor=actor,
            action="remediate",
            target=new_id,
            product_id=old.product_id,
            state_after=ItemState.staging.value,
            digest=old.content_digest,
            details={"derived_from": old.id, "fields": sorted(fields)},
        )
    return RemediationResult(
        old_item_id=item_id,
        new_item_id=new_id,
        fields=sorted(fields),
        created=True,
        old_state_before=state_before.value,
    )
