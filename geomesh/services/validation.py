"""Validate stored items: findings persisted per run.

``validate_item`` runs every rule on the item's STAC dict and its stored COG, then in one
transaction closes the item's previous open findings, records a ``ValidationRun`` with its
``FindingRecord`` rows and appends the ``validate`` audit event. Validating unchanged
content twice with the same outcome records nothing new (idempotent). Reading persisted
findings is ``services.findings``; deriving fixes is ``services.remediation``.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterable, Iterator
from pathlib import Path

from sqlalchemy import insert
from sqlmodel import Session, col, select

from geomesh import audit, auth
from geomesh.config import ProductConfig
from geomesh.errors import ConfigError
from geomesh.models import FindingRecord, Item, Severity, ValidationRun, utcnow
from geomesh.services.findings import latest_run
from geomesh.services.lookup import get_item
from geomesh.services.products import check_config
from geomesh.storage import Area
from geomesh.validation.engine import validate_document
from geomesh.validation.findings import Finding, count_by_severity, worst_severity
from geomesh.validation.registry import Policy, make_finding
from geomesh.validation.rules import KnownRaster
from geomesh.workspace import Workspace


def check_product(config: ProductConfig, item: Item) -> None:
    if item.product_id != config.product_id:
        raise ConfigError(
            f"item {item.id!r} belongs to product {item.product_id!r}, not "
            f"{config.product_id!r}; pass the config of product {item.product_id!r}"
        )


@contextlib.contextmanager
def stored_raster(
    ws: Workspace, item: Item, *, storing: Path | None = None
) -> Iterator[tuple[Path | None, list[Finding]]]:
    """The item's stored COG as a local file (staging, else its quarantine copy), or
    ``storing``: the local file its staging object was stored from, the same bytes.

    A missing object is not an exception here: it is a GM-CHECKSUM-003 finding.
    """
    if storing is not None:
        yield storing, []
        return
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
    ws: Workspace,
    config: ProductConfig,
    item: Item,
    *,
    strict: bool = False,
    known: KnownRaster | None = None,
    storing: Path | None = None,
) -> list[Finding]:
    """The findings of ``item`` (no database writes).

    ``known``: the digest and COG verdict of the staged object as the caller computed them
    while writing it (the pipeline, right after staging). Used only when it names the
    item's own content and the staging object is there (or ``storing``); otherwise the
    bytes are hashed.
    ``storing``: the local file the item's staging object was just stored from (the
    admission): the rules read it and read nothing back from the store (on S3, that
    would download the object).
    """
    if known is not None and (
        known.sha256 != item.content_digest
        or (storing is None and not ws.store.exists("staging", item.object_key))
    ):
        known = None
    with stored_raster(ws, item, storing=storing) as (raster, problems):
        return validate_document(
            dict(item.stac),
            item_id=item.id,
            config=config,
            schema_dir=ws.schema_dir,
            raster_path=raster,
            raster_findings=problems,
            raster_label=f"object {item.object_key}",
            strict=strict,
            known=known,
        )


def _same_findings(previous: Iterable[FindingRecord], findings: Iterable[Finding]) -> bool:
    before = sorted((r.rule_id, Severity(r.severity).value, r.path, r.message) for r in previous)
    after = sorted(f.key() for f in findings)
    return before == after


def validate_item(
    ws: Workspace,
    config: ProductConfig,
    item_id: str,
    *,
    actor: str,
    strict: bool = False,
    known: KnownRaster | None = None,
) -> list[Finding]:
    """Validate a stored item and persist the run; returns the findings, worst first.

    The product's registered config decides (a differing ``config`` is refused).
    ``known``: see :func:`run_rules`.
    """
    with ws.read() as session:
        auth.require(session, actor, "validate")
        item = get_item(session, item_id)
        check_product(config, item)
        config = check_config(session, config)
    strict = strict or config.validation.strict
    Policy.from_config(config)  # an unknown rule id in the config fails before any work
    findings = run_rules(ws, config, item, strict=strict, known=known)
    with ws.transaction() as session:
        auth.require(session, actor, "validate")
        check_config(session, config)  # the policy did not change while the rules ran
        # locked: a concurrent validation of the same item waits, then finds this run
        # (same content, same findings) and records nothing, as a serial re-run would
        item = get_item(session, item_id, lock=True)
        record_run(session, item, findings, strict=strict, actor=actor)
    return findings


def record_run(
    session: Session,
    item: Item,
    findings: list[Finding],
    *,
    strict: bool,
    actor: str,
    first: bool = False,
) -> int | None:
    """Persist one validation run of ``item`` (locked by the caller) in the caller's
    transaction: its previous open findings closed, the run with its findings, the item's
    worst severity and the ``validate`` audit event. Returns the new run's id, or None,
    recording nothing, when the last run saw the same content with the same findings (a
    re-run changes nothing). ``first``: the item's row was inserted in this transaction, so
    it has no earlier run.
    """
    previous = (
        []
        if first
        else session.exec(
            select(FindingRecord).where(
                FindingRecord.item_id == item.id, col(FindingRecord.open).is_(True)
            )
        ).all()
    )
    last = None if first else latest_run(session, item.id)
    if (
        last is not None
        and last.content_digest == item.content_digest
        and last.strict == strict
        and _same_findings(previous, findings)
    ):
        return None
    for rec in previous:
        rec.open = False
        session.add(rec)
    worst = worst_severity(findings)
    run = ValidationRun(
        item_id=item.id,
        content_digest=item.content_digest,
        passed=worst is None or worst is Severity.P3,
        worst_severity=worst,
        strict=strict,
        actor=actor,
    )
    session.add(run)
    session.flush()
    assert run.id is not None
    if findings:  # one multi-row INSERT: the rows are not read back in this unit of work
        session.execute(
            insert(FindingRecord),
            [finding_record(run.id, item, f).model_dump(exclude={"id"}) for f in findings],
        )
    item.worst_severity = worst
    item.updated_at = utcnow()
    session.add(item)
    audit.append(
        session,
        actor=actor,
        action="validate",
        target=item.id,
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
    return run.id


def finding_record(run_id: int, item: Item, finding: Finding) -> FindingRecord:
    """The row of ``finding`` in validation run ``run_id`` of ``item`` (its context made
    JSON-safe)."""
    return FindingRecord(
        run_id=run_id,
        item_id=item.id,
        product_id=item.product_id,
        rule_id=finding.rule_id,
        severity=finding.severity,
        path=finding.path,
        message=finding.message,
        remediation=finding.remediation,
        context=json.loads(json.dumps(finding.context, default=str)),
    )
