"""Run the rules on one STAC document: load it safely, pick the checks, apply the policy."""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final
from urllib.parse import unquote, urlsplit

from geomesh.config import ProductConfig
from geomesh.validation.findings import Finding, sort_findings
from geomesh.validation.registry import Policy, make_finding
from geomesh.validation.rules import CHECKS, KnownRaster, Subject, as_dict, data_asset_key
from geomesh.validation.schemas import check_schemas

MAX_DOCUMENT_BYTES: Final = 16 << 20
MAX_DEPTH: Final = 64
SCHEMA_RULES: Final = ("GM-SCHEMA-001", "GM-SCHEMA-002", "GM-SCHEMA-003")


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):  # e.g. 1e400: valid syntax, but no double holds it
        raise ValueError(f"the number {text[:40]} is out of range")
    return value


def _depth_exceeds(value: Any, limit: int) -> bool:
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        cur, depth = stack.pop()
        if depth > limit:
            return True
        if isinstance(cur, dict):
            stack.extend((v, depth + 1) for v in cur.values())
        elif isinstance(cur, list):
            stack.extend((v, depth + 1) for v in cur)
    return False


@dataclass
class LoadedDocument:
    path: Path
    doc: dict[str, Any] | None
    item_id: str
    findings: list[Finding] = field(default_factory=list)


def load_document(path: Path, *, max_bytes: int = MAX_DOCUMENT_BYTES) -> LoadedDocument:
    """Read a STAC JSON file; problems become GM-JSON-001 findings, never exceptions."""
    fallback_id = path.stem

    def bad(message: str, **context: Any) -> LoadedDocument:
        f = make_finding(
            "GM-JSON-001",
            item_id=fallback_id,
            path="",
            message=f"{path}: {message}",
            context={"file": str(path), **context},
        )
        return LoadedDocument(path, None, fallback_id, [f])

    try:
        size = path.stat().st_size
        if size > max_bytes:
            return bad(f"file is {size} bytes; the limit is {max_bytes}", size=size)
        raw = path.read_bytes()
    except OSError as exc:
        return bad(f"cannot read the file ({exc.strerror})")
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        return bad(f"not UTF-8 text (bad byte at offset {exc.start}); save it as UTF-8")
    try:
        doc = json.loads(text, parse_constant=_reject_constant, parse_float=_finite_float)
    except json.JSONDecodeError as exc:
        return bad(f"not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}")
    except ValueError as exc:
        return bad(f"not valid JSON: {exc}")
    except RecursionError:
        return bad(f"JSON is nested too deeply (limit {MAX_DEPTH} levels)")
    if not isinstance(doc, dict):
        return bad(f"the top level is a JSON {type(doc).__name__}, not an object (a STAC Item)")
    if _depth_exceeds(doc, MAX_DEPTH):
        return bad(f"JSON is nested more than {MAX_DEPTH} levels deep")
    item_id = doc.get("id")
    return LoadedDocument(
        path, doc, item_id if isinstance(item_id, str) and item_id else fallback_id
    )


def local_asset_path(doc: dict[str, Any], base_dir: Path | None) -> Path | None:
    """The local file of the data asset (relative hrefs resolve against ``base_dir``).

    Remote hrefs (http, s3, …) return None: validation never downloads anything.
    """
    key = data_asset_key(doc)
    if key is None:
        return None
    href = as_dict(as_dict(doc.get("assets")).get(key)).get("href")
    if not isinstance(href, str) or not href:
        return None
    parts = urlsplit(href)
    if parts.scheme == "file":
        candidate = Path(unquote(parts.path))
    elif parts.scheme and len(parts.scheme) > 1:
        return None
    else:
        candidate = Path(href)
        if not candidate.is_absolute():
            if base_dir is None:
                return None
            candidate = base_dir / candidate
    return candidate if candidate.is_file() else None


def validate_document(
    doc: dict[str, Any],
    *,
    item_id: str | None = None,
    config: ProductConfig | None = None,
    schema_dir: Path | None = None,
    raster_path: Path | None = None,
    raster_findings: Iterable[Finding] = (),
    raster_label: str | None = None,
    policy: Policy | None = None,
    strict: bool = False,
    known: KnownRaster | None = None,
) -> list[Finding]:
    """All findings for one STAC item dict, with the product policy applied, worst first.

    Without ``config`` only the generic rules run (schema, CRS, checksum form and, with a
    raster, COG/CRS-header/drift); with it also the product contract and boundary rules.
    ``schema_dir`` None skips the schema rules. ``known``: the raster's digest and COG
    verdict as the caller just computed them (:class:`~geomesh.validation.rules.KnownRaster`).
    """
    pol = policy or Policy.from_config(config, strict=strict)
    iid = item_id or (doc.get("id") if isinstance(doc.get("id"), str) else None) or "<no id>"
    findings: list[Finding] = []
    if schema_dir is not None and pol.any_enabled(SCHEMA_RULES):
        findings.extend(check_schemas(doc, item_id=iid, store=schema_dir))
    subject = Subject(
        doc=doc,
        item_id=iid,
        config=config,
        raster_path=raster_path,
        raster_findings=list(raster_findings),
        raster_label=raster_label,
        known=known,
    )
    for rc in CHECKS:
        if pol.any_enabled(rc.rule_ids):
            findings.extend(rc.check(subject))
    return sort_findings(pol.apply(findings))


@dataclass
class FileResult:
    path: Path
    item_id: str
    findings: list[Finding]

    def to_json(self) -> dict[str, Any]:
        return {
            "file": str(self.path),
            "item_id": self.item_id,
            "findings": [f.to_json() for f in self.findings],
        }


def _outside(raster: Path, roots: Iterable[Path]) -> bool:
    """True unless ``raster`` (symlinks resolved) lies inside one of ``roots``."""
    real = raster.resolve()
    return not any(real.is_relative_to(r.resolve()) for r in roots)


def validate_file(
    path: Path,
    *,
    config: ProductConfig | None = None,
    schema_dir: Path | None = None,
    strict: bool = False,
    policy: Policy | None = None,
    allowed_roots: Iterable[Path] = (),
) -> FileResult:
    """Validate one STAC JSON file; a local data asset is checked as the raster.

    The data asset is read only when it lies inside the item's folder or one of
    ``allowed_roots`` (the storage root): an href like ``../../etc/passwd`` or an absolute
    path elsewhere is a finding, never a read.
    """
    pol = policy or Policy.from_config(config, strict=strict)
    loaded = load_document(path)
    if loaded.doc is None:
        return FileResult(path, loaded.item_id, sort_findings(pol.apply(loaded.findings)))
    raster = local_asset_path(loaded.doc, path.parent)
    refused: list[Finding] = []
    if raster is not None and _outside(raster, [path.parent, *allowed_roots]):
        refused.append(
            make_finding(
                "GM-COG-004",
                item_id=loaded.item_id,
                path=f"assets.{data_asset_key(loaded.doc)}.href",
                message=f"{path}: the data asset href points outside the item's folder "
                f"({path.parent}) and the storage root; it was not read",
                remediation="use an href relative to the item file, inside its folder",
            )
        )
        raster = None
    findings = validate_document(
        loaded.doc,
        item_id=loaded.item_id,
        config=config,
        schema_dir=schema_dir,
        raster_path=raster,
        raster_label=str(raster) if raster is not None else None,
        policy=pol,
    )
    if refused:
        findings = sort_findings([*findings, *pol.apply(refused)])
    return FileResult(path, loaded.item_id, findings)


def iter_json_files(paths: Iterable[Path]) -> Iterator[Path]:
    """Files as given; folders expanded to their ``*.json`` files (sorted, recursive)."""
    for p in paths:
        if p.is_dir():
            yield from sorted(q for q in p.rglob("*.json") if q.is_file())
        else:
            yield p
