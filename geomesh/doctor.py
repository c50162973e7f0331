"""`geomesh doctor`: check database ↔ objects ↔ manifests ↔ published catalogs.

It reports problems (dangling references, half-written files, orphans, a broken audit
chain) and can garbage-collect leftover temporary files from interrupted writes. It never
changes the database.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from sqlmodel import select

from geomesh import audit
from geomesh.catalog import Catalog
from geomesh.errors import StorageError
from geomesh.hashing import sha256_file
from geomesh.models import Item, ItemState, Product, Release
from geomesh.storage import TMP_PREFIX

Level = Literal["error", "warning", "info"]


@dataclass(frozen=True)
class Problem:
    level: Level
    kind: str
    target: str
    message: str


@dataclass
class DoctorReport:
    problems: list[Problem] = field(default_factory=list)
    checked: dict[str, int] = field(default_factory=dict)
    collected: list[str] = field(default_factory=list)

    @property
    def consistent(self) -> bool:
        """No errors: everything visible is complete and every reference resolves."""
        return not any(p.level == "error" for p in self.problems)

    def add(self, level: Level, kind: str, target: str, message: str) -> None:
        self.problems.append(Problem(level, kind, target, message))

    def to_json(self) -> dict[str, Any]:
        return {
            "consistent": self.consistent,
            "checked": self.checked,
            "problems": [asdict(p) for p in self.problems],
            "collected": self.collected,
        }


def _check_items(cat: Catalog, report: DoctorReport, *, deep: bool) -> set[str]:
    referenced: set[str] = set()
    store = cat.store
    with cat.read() as session:
        items = session.exec(select(Item)).all()
    for item in items:
        referenced.add(item.object_key)
        referenced.add(item.stac_key)
        if item.state == ItemState.discarded:
            continue
        area: Literal["staging", "quarantine"] = "staging"
        if item.state == ItemState.quarantined and item.quarantine_key:
            area = "quarantine"
            if not store.exists("quarantine", item.quarantine_key):
                report.add("error", "missing-object", item.id,
                           f"quarantined copy {item.quarantine_key} is missing")
        key = item.quarantine_key if area == "quarantine" and item.quarantine_key else item.object_key
        if not store.exists("staging", item.object_key) and not store.exists(area, key):
            report.add("error", "missing-object", item.id, f"object {item.object_key} is missing")
        else:
            size = store.size(area, key) if store.exists(area, key) else store.size("staging", item.object_key)
            if size != item.size:
                report.add("error", "size-mismatch", item.id,
                           f"object {key} has {size} bytes, the item says {item.size}")
            elif deep:
                with store.open_local(area, key) as p:
                    digest, _ = sha256_file(p)
                if digest != item.content_digest:
                    report.add("error", "checksum-mismatch", item.id,
                               f"object {key} no longer hashes to the item's digest")
        if not store.exists("staging", item.stac_key):
            report.add("error", "missing-item-json", item.id, f"item JSON {item.stac_key} is missing")
        else:
            stored = json.loads(store.get_bytes("staging", item.stac_key))
            if stored.get("id") != item.id:
                report.add("error", "item-json-mismatch", item.id,
                           f"item JSON {item.stac_key} describes {stored.get('id')!r}")
    report.checked["items"] = len(items)
    return referenced


def _check_releases(cat: Catalog, report: DoctorReport) -> set[str]:
    referenced: set[str] = set()
    with cat.read() as session:
        releases = session.exec(select(Release)).all()
        products = session.exec(select(Product)).all()
        ids = {r.id for r in releases}
        for rel in releases:
            referenced.add(rel.manifest_key)
            if not cat.store.exists("production", rel.manifest_key):
                report.add("error", "missing-manifest", rel.id,
                           f"release {rel.version} manifest {rel.manifest_key} is missing")
                continue
            try:
                manifest = json.loads(cat.store.get_bytes("production", rel.manifest_key))
            except (json.JSONDecodeError, StorageError) as exc:
                report.add("error", "bad-manifest", rel.id, f"manifest unreadable: {exc}")
                continue
            for entry in manifest.get("items", []):
                key = entry.get("object_key")
                if key and not cat.store.exists("production", key):
                    report.add("error", "missing-production-object", rel.id,
                               f"release {rel.version} lists {entry.get('id')} whose object {key} "
                               "is not in the production area")
            if rel.parent_id and rel.parent_id not in ids:
                report.add("error", "dangling-parent", rel.id,
                           f"release {rel.version} has an unknown parent {rel.parent_id}")
        for product in products:
            if product.current_release_id and product.current_release_id not in ids:
                report.add("error", "dangling-current", product.id,
                           f"current release {product.current_release_id} does not exist")
    report.checked["releases"] = len(releases)
    report.checked["products"] = len(products)
    return referenced


def _check_temp_files(cat: Catalog, report: DoctorReport, *, gc: bool, min_age_s: float) -> None:
    temps: list[Path] = [p for p in cat.root.rglob(f"{TMP_PREFIX}*") if p.exists()]
    now = time.time()
    for p in sorted(temps):
        rel = p.relative_to(cat.root).as_posix()
        old_enough = now - p.stat().st_mtime >= min_age_s
        if gc and old_enough:
            if p.is_dir():
                shutil.rmtree(p, ignore_errors=True)
            else:
                p.unlink(missing_ok=True)
            report.collected.append(rel)
        else:
            report.add("warning", "temporary-file", rel,
                       "left by an interrupted write (invisible to readers); `geomesh doctor --gc` removes it")
    report.checked["temporary_files"] = len(temps)


def _check_orphans(cat: Catalog, report: DoctorReport, referenced: set[str]) -> None:
    orphans = 0
    for key in cat.store.list("staging"):
        if key not in referenced:
            orphans += 1
            report.add("info", "orphan-object", f"staging/{key}",
                       "complete but unreferenced (an interrupted ingest); a re-run reuses it")
    report.checked["orphans"] = orphans


def run_doctor(
    cat: Catalog, *, gc: bool = False, deep: bool = False, min_age_s: float = 3600.0
) -> DoctorReport:
    """Check the whole catalog; with ``gc`` remove temporary files older than ``min_age_s``."""
    report = DoctorReport()
    referenced = _check_items(cat, report, deep=deep)
    referenced |= _check_releases(cat, report)
    _check_orphans(cat, report, referenced)
    if cat.root.exists():
        _check_temp_files(cat, report, gc=gc, min_age_s=min_age_s)
    with cat.read() as session:
        for problem in audit.verify(session):
            report.add("error", "audit-chain", f"#{problem.seq}", problem.problem)
    return report
