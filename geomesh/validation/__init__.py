"""Validation of STAC items: rules with stable ids and severities, returning ``Finding``s.

Validation never raises for a bad item and never prints; the service layer
(``geomesh.services.validation``) persists the findings and routing acts on them.

    >>> from geomesh.validation import validate_document, Policy
    >>> findings = validate_document(item_dict, config=config, schema_dir=store)
"""

from __future__ import annotations

from geomesh.validation.engine import (
    FileResult,
    LoadedDocument,
    iter_json_files,
    load_document,
    local_asset_path,
    validate_document,
    validate_file,
)
from geomesh.validation.findings import (
    Finding,
    count_by_severity,
    exit_code,
    severity_rank,
    sort_findings,
    worst_severity,
)
from geomesh.validation.registry import RULES, Policy, Rule, make_finding, rule
from geomesh.validation.rules import RasterFacts, data_asset_key, read_raster_facts
from geomesh.validation.schemas import (
    DEFAULT_SCHEMA_URLS,
    SyncReport,
    check_schemas,
    clear_cache,
    extension_urls,
    sync_schemas,
)

__all__ = [
    "DEFAULT_SCHEMA_URLS",
    "RULES",
    "FileResult",
    "Finding",
    "LoadedDocument",
    "Policy",
    "RasterFacts",
    "Rule",
    "SyncReport",
    "check_schemas",
    "clear_cache",
    "count_by_severity",
    "data_asset_key",
    "exit_code",
    "extension_urls",
    "iter_json_files",
    "load_document",
    "local_asset_path",
    "make_finding",
    "read_raster_facts",
    "rule",
    "severity_rank",
    "sort_findings",
    "sync_schemas",
    "validate_document",
    "validate_file",
    "worst_severity",
]
