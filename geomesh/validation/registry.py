"""The rule registry: stable ids, default severities, descriptions and remediation hints.

A product's config can change a rule's severity (``validation.severity_overrides``),
switch rules off (``validation.disabled_rules``) and raise every P3 to P2
(``validation.strict`` or ``--strict``). :class:`Policy` applies those choices to the
findings the rules produce with their default severity.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from geomesh.config import ProductConfig
from geomesh.errors import ConfigError
from geomesh.models import Severity
from geomesh.validation.findings import Finding

P1, P2, P3 = Severity.P1, Severity.P2, Severity.P3


@dataclass(frozen=True)
class Rule:
    id: str
    severity: Severity
    description: str
    remediation: str
    #: "generic" rules run on any STAC item; "product" rules need a product config
    scope: str = "generic"


def _rules(*rules: Rule) -> dict[str, Rule]:
    out: dict[str, Rule] = {}
    for rule in rules:
        if rule.id in out:  # pragma: no cover - a programming error caught at import
            raise ValueError(f"duplicate rule id {rule.id}")
        out[rule.id] = rule
    return out


#: every rule geomesh knows, by id. Ids are stable: never reuse or renumber one.
RULES: Final[dict[str, Rule]] = _rules(
    # -------------------------------------------------------------- document
    Rule(
        "GM-JSON-001",
        P2,
        "The file is not a readable STAC JSON object (syntax, encoding, size or nesting).",
        "Fix the JSON so that it parses as one object; keep files under the size and depth limits.",
    ),
    # -------------------------------------------------------------- schemas
    Rule(
        "GM-SCHEMA-001",
        P2,
        "The item does not conform to the STAC core JSON Schema of its stac_version.",
        "Fix the named field so the item conforms to the STAC core specification.",
    ),
    Rule(
        "GM-SCHEMA-002",
        P2,
        "The item does not conform to a STAC extension schema it lists in stac_extensions.",
        "Fix the named field or remove the extension from stac_extensions.",
    ),
    Rule(
        "GM-SCHEMA-003",
        P3,
        "A schema the item needs is not in the offline schema store, so it was not checked.",
        "Run `geomesh schemas sync` while online (or copy the schema into the store at "
        "<store>/<host>/<path>), then validate again.",
    ),
    # -------------------------------------------------------------- product contract
    Rule(
        "GM-CONTRACT-001",
        P2,
        "A field the product contract requires is missing from the item and its data asset.",
        "Add the field (for proj:* fields derivable from the raster: `geomesh remediate`).",
        scope="product",
    ),
    Rule(
        "GM-CONTRACT-002",
        P3,
        "A recommended field (processing:level, instruments, platform) is missing.",
        "Set it in product_metadata of the product config and ingest again, or add it to the item.",
        scope="product",
    ),
    # -------------------------------------------------------------- CRS
    Rule(
        "GM-CRS-001",
        P2,
        "No coordinate reference system: neither the raster nor the item declares one.",
        "Assign the CRS to the raster (e.g. `gdal_edit.py -a_srs EPSG:32610`) or set proj:code.",
    ),
    Rule(
        "GM-CRS-002",
        P2,
        "The CRS in the COG header differs from proj:code on the item or its data asset.",
        "Correct proj:code to the raster's CRS, or reproject the raster; then ingest again.",
    ),
    Rule(
        "GM-CRS-003",
        P3,
        "Only the legacy proj:epsg is given; projection v2.0 uses proj:code.",
        'Replace "proj:epsg": N with "proj:code": "EPSG:N" and list the projection v2.0.0 schema.',
    ),
    # -------------------------------------------------------------- boundary
    Rule(
        "GM-BOUNDARY-001",
        P1,
        "The item footprint does not intersect the product's spatial domain.",
        "Check the tile and the domain boundary; enable ingestion.clip only if a part overlaps.",
        scope="product",
    ),
    Rule(
        "GM-BOUNDARY-002",
        P3,
        "The item footprint lies partly outside the product's spatial domain.",
        "Enable ingestion.clip in the product config to clip tiles to the domain, or accept it.",
        scope="product",
    ),
    Rule(
        "GM-RECLIP-001",
        P2,
        "The automatic re-clip of a rolled-back tile failed: its source cannot be re-read, or "
        "no part of it lies inside the domain.",
        "Make the source readable again (or ingest a corrected tile), then queue the task "
        "again with `geomesh tasks retry TASK_ID`.",
        scope="product",
    ),
    # -------------------------------------------------------------- checksum
    Rule(
        "GM-CHECKSUM-001",
        P1,
        "file:checksum is not a valid multihash.",
        "Write file:checksum as '1220' + the SHA-256 hex digest of the asset's bytes.",
    ),
    Rule(
        "GM-CHECKSUM-002",
        P1,
        "file:checksum does not use sha2-256, the product's checksum algorithm.",
        "Recompute the checksum with SHA-256 and write '1220' + hexdigest.",
        scope="product",
    ),
    Rule(
        "GM-CHECKSUM-003",
        P1,
        "The stored bytes do not match file:checksum (or the stored object is missing).",
        "The object is corrupt or the item describes other bytes: ingest the source again.",
    ),
    Rule(
        "GM-CHECKSUM-004",
        P1,
        "The stored object's size does not match file:size.",
        "The object is truncated or the item describes other bytes: ingest the source again.",
    ),
    # -------------------------------------------------------------- COG
    Rule(
        "GM-COG-001",
        P2,
        "The raster is not a valid Cloud-Optimized GeoTIFF (rio-cogeo validation error).",
        "Rewrite it as a COG (`rio cogeo create`), or ingest it again so geomesh converts it.",
    ),
    Rule(
        "GM-COG-002",
        P3,
        "rio-cogeo reports a COG warning (e.g. missing overviews).",
        "Rewrite it with `rio cogeo create` (adds overviews and the recommended layout).",
    ),
    Rule(
        "GM-COG-003",
        P3,
        "The COG block size differs from the product's ingestion.tile_size.",
        "Ingest the source again so it is rewritten with blocksize = ingestion.tile_size.",
        scope="product",
    ),
    Rule(
        "GM-COG-004",
        P2,
        "The raster file cannot be opened.",
        "Check that the object is a GeoTIFF GDAL can read; ingest the source again.",
    ),
    # -------------------------------------------------------------- drift
    Rule(
        "GM-DRIFT-001",
        P2,
        "A proj:* value on the item differs from what the raster says (metadata drift).",
        "Derive the metadata again from the raster with `geomesh remediate CONFIG ITEM_ID`.",
    ),
)


def rule(rule_id: str) -> Rule:
    try:
        return RULES[rule_id]
    except KeyError:
        raise KeyError(f"unknown rule id {rule_id!r}") from None


def make_finding(
    rule_id: str,
    *,
    item_id: str,
    path: str,
    message: str,
    remediation: str | None = None,
    context: Mapping[str, Any] | None = None,
) -> Finding:
    """A finding with the rule's default severity and (unless given) its remediation hint."""
    r = rule(rule_id)
    return Finding(
        rule_id=r.id,
        severity=r.severity,
        item_id=item_id,
        path=path,
        message=message,
        remediation=remediation or r.remediation,
        context=dict(context or {}),
    )


@dataclass(frozen=True)
class Policy:
    """How a product adjusts the registry: overrides, disabled rules, strict mode."""

    severity_overrides: Mapping[str, Severity] = field(default_factory=dict)
    disabled_rules: frozenset[str] = frozenset()
    strict: bool = False

    @classmethod
    def from_config(cls, config: ProductConfig | None, *, strict: bool = False) -> Policy:
        """The policy of ``config`` (the defaults without one); ``strict`` adds to config's."""
        if config is None:
            return cls(strict=strict)
        v = config.validation
        overrides = {k: Severity(s) for k, s in v.severity_overrides.items()}
        unknown = sorted((set(overrides) | set(v.disabled_rules)) - set(RULES))
        if unknown:
            raise ConfigError(
                f"validation: unknown rule id(s) {', '.join(unknown)} in severity_overrides or "
                f"disabled_rules; known ids: {', '.join(sorted(RULES))}"
            )
        return cls(
            severity_overrides=overrides,
            disabled_rules=frozenset(v.disabled_rules),
            strict=strict or v.strict,
        )

    def enabled(self, rule_id: str) -> bool:
        return rule_id not in self.disabled_rules

    def any_enabled(self, rule_ids: Iterable[str]) -> bool:
        return any(r not in self.disabled_rules for r in rule_ids)

    def severity_of(self, rule_id: str) -> Severity:
        sev = self.severity_overrides.get(rule_id, rule(rule_id).severity)
        if self.strict and sev is Severity.P3:
            return Severity.P2
        return sev

    def apply(self, findings: Iterable[Finding]) -> list[Finding]:
        """Drop disabled rules' findings and set each finding's effective severity."""
        out: list[Finding] = []
        for f in findings:
            if not self.enabled(f.rule_id):
                continue
            sev = self.severity_of(f.rule_id)
            out.append(f if sev is f.severity else f.with_severity(sev))
        return out
