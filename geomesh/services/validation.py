"""Validate stored items (findings persisted per run) and remediate derivable drift.

``validate_item`` runs every rule on the item's STAC dict and its stored COG, then in one
transaction closes the item's previous open findings, records a ``ValidationRun`` with its
``FindingRecord`` rows and appends the ``validate`` audit event. Validating unchanged
content twice with the same outcome records nothing new (idempotent).

``remediate_item`` is the explicit, audited ``geomesh remediate``: it derives missing or
drifted ``proj:*`` fields from the raster into a NEW item version (new id,
``derived_from`` = old id) and marks the old version superseded; nothing is edited in place.
"""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import pystac
from pystac.extensions.projection import ProjectionExtension
from sqlmodel import Session, col, select

from geomesh import audit, auth, lifecycle
from geomesh.config import ProductConfig
from geomesh.errors import ConfigError, InvalidTransition, NotFound, StacError, ValidationError
from geomesh.models import FindingRecord, Item, ItemState, Severity, ValidationRun, utcnow
from geomesh.services import queries
from geomesh.stac import is_safe_item_id, item_to_dict
from geomesh.storage import Area
from geomesh.validation import (
    Finding,
    Policy,
    count_by_severity,
    make_finding,
    read_raster_facts,
    sort_findings,
    validate_document,
    worst_severity,
)
from geomesh.validation.rules import CRS_FIELDS, REQUIRED_PROJ, Subject, check_crs, check_drift
from geomesh.workspace import Workspace

PROJECTION_V2: Final = ProjectionExtension.get_schema_uri()
_LEGACY_PROJECTION = re.compile(r"^https://stac-extensions\.github\.io/projection/v1\.")
_REVISION_SUFFIX = re.compile(r"-r[0-9]+$")
REMEDIABLE_STATES: Final = frozenset(
    {ItemState.staging, ItemState.validation, ItemState.quarantined}
)


def _get_item(session: Session, item_id: str) -> Item:
    item = session.get(Item, item_id)
    if item is None:
        raise NotFound(
            f"item {item_id!r} does not exist", hint="see `geomesh items list` for item ids"
        )
    return item


def _check_product(config: ProductConfig, item: Item) -> None:
    if item.product_id != config.product_id:
        raise ConfigError(
            f"item {item.id!r} belongs to product {item.product_id!r}, not "
            f"{config.product_id!r}; pass the config of product {item.product_id!r}"
        )


@contextlib.contextmanager
def stored_raster(ws: Workspace, item: Item) -> Iterator[tuple[Path | None, list[Finding]]]:
    """The item's stored COG as a local file (staging, else its quarantine copy).

    A missing object is not an exception here: it is a GM-CHECKSUM-003 finding.
    """
    candidates: list[tuple[Area, str]] = [("staging", item.object_key)]
    if item.quarantine_key:
        candidates.append(("quarantine", item.quarantine_key))
    for area, key in candidates:
        if ws.store.exists(area, key):
            with ws.store.open_local(area, key) as path:
                yield path, []
            return
    missing = make_finding(
        "GM-CHECKSUM-003",
        item_id=item.id,
        path="assets.data.href",
        message=f"the stored object {item.object_key} of item {item.id} is missing from "
        f"{ws.store.describe()}",
        remediation="ingest the source again; `geomesh doctor` lists other missing objects",
        context={"object_key": item.object_key},
    )
    yield None, [missing]


def run_rules(
    ws: Workspace, config: ProductConfig, item: Item, *, strict: bool = False
) -> list[Finding]:
    """The findings of ``item`` (no database writes)."""
    with stored_raster(ws, item) as (raster, problems):
        return validate_document(
            dict(item.stac),
            item_id=item.id,
            config=config,
            schema_dir=ws.schema_dir,
            raster_path=raster,
            raster_findings=problems,
            raster_label=f"object {item.object_key}",
            strict=strict,
        )


def _same_findings(previous: Iterable[FindingRecord], findings: Iterable[Finding]) -> bool:
    before = sorted((r.rule_id, Severity(r.severity).value, r.path, r.message) for r in previous)
    after = sorted(f.key() for f in findings)
    return before == after


def validate_item(
    ws: Workspace, config: ProductConfig, item_id: str, *, actor: str, strict: bool = False
) -> list[Finding]:
    """Validate a stored item and persist the run; returns the findings, worst first."""
    strict = strict or config.validation.strict
    Policy.from_config(config)  # an unknown rule id in the config fails before any work
    with ws.read() as session:
        auth.require(session, actor, "validate")
        item = _get_item(session, item_id)
        _check_product(config, item)
    findings = run_rules(ws, config, item, strict=strict)
    with ws.transaction() as session:
        auth.require(session, actor, "validate")
        item = _get_item(session, item_id)
        previous = session.exec(
            select(FindingRecord).where(
                FindingRecord.item_id == item_id, col(FindingRecord.open).is_(True)
            )
        ).all()
        last = session.exec(
            select(ValidationRun)
            .where(ValidationRun.item_id == item_id)
            .order_by(col(ValidationRun.id).desc())
            .limit(1)
        ).first()
        if (
            last is not None
            and last.content_digest == item.content_digest
            and last.strict == strict
            and _same_findings(previous, findings)
        ):
            return findings  # nothing changed since the last run: record nothing new
        for rec in previous:
            rec.open = False
            session.add(rec)
        worst = worst_severity(findings)
        run = ValidationRun(
            item_id=item_id,
            content_digest=item.content_digest,
            passed=worst is None or worst is Severity.P3,
            worst_severity=worst,
            strict=strict,
            actor=actor,
        )
        session.add(run)
        session.flush()
        assert run.id is not None
        for f in findings:
            session.add(
                FindingRecord(
                    run_id=run.id,
                    item_id=item_id,
                    product_id=item.product_id,
                    rule_id=f.rule_id,
                    severity=f.severity,
                    path=f.path,
                    message=f.message,
                    remediation=f.remediation,
                    context=json.loads(json.dumps(f.context, default=str)),
                )
            )
        item.worst_severity = worst
        item.updated_at = utcnow()
        session.add(item)
        audit.append(
            session,
            actor=actor,
            action="validate",
            target=item_id,
            product_id=item.product_id,
            digest=item.content_digest,
            details={
                "run_id": run.id,
                "worst_severity": worst.value if worst else None,
                "counts": count_by_severity(findings),
                "strict": strict,
                "closed": len(previous),
            },
        )
    return findings


def latest_run(session: Session, item_id: str) -> ValidationRun | None:
    return session.exec(
        select(ValidationRun)
        .where(ValidationRun.item_id == item_id)
        .order_by(col(ValidationRun.id).desc())
        .limit(1)
    ).first()


def record_to_finding(rec: FindingRecord) -> Finding:
    return Finding(
        rule_id=rec.rule_id,
        severity=Severity(rec.severity),
        item_id=rec.item_id,
        path=rec.path,
        message=rec.message,
        remediation=rec.remediation,
        context=dict(rec.context or {}),
    )


def open_findings(session: Session, item_id: str) -> list[Finding]:
    """The item's open findings (those of its latest validation run), worst first."""
    rows = session.exec(
        select(FindingRecord).where(
            FindingRecord.item_id == item_id, col(FindingRecord.open).is_(True)
        )
    ).all()
    return sort_findings(record_to_finding(r) for r in rows)


def finding_counts(session: Session, item_ids: Iterable[str]) -> dict[str, dict[str, int]]:
    """Open findings per item and severity, zeros included: {id: {"P1": n, "P2": n, "P3": n}}."""
    ids = list(item_ids)
    counts = queries.finding_counts(session, ids)
    return {i: counts.get(i, {s.value: 0 for s in Severity}) for i in ids}


# --------------------------------------------------------------------------- remediation


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
    from geomesh.services.ingest import object_href, stac_key_for

    with ws.read() as session:
        auth.require(session, actor, "remediate")
        old = _get_item(session, item_id)
        _check_product(config, old)
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
        old = _get_item(session, item_id)
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
