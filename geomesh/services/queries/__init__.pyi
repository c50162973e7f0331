"""The names of :mod:`geomesh.services.queries`, for type checkers and for the lazy loader
(which reads this stub: one list of names, loaded on first use)."""

from ._common import SEVERITIES
from .audit import (
    audit_chain_status,
    audit_events,
    audit_facets,
    audit_jsonl,
)
from .findings import (
    FINDING_COLUMNS,
    FINDINGS_PAGE_SIZE,
    export_findings,
    finding_rules,
    findings_csv,
    findings_json,
    findings_page,
    findings_table,
    iter_findings,
    write_findings,
)
from .item_list import iter_items, list_items
from .items import (
    get_item,
    item_detail,
    item_summary,
    production_counterpart,
    raster_facts,
    state_counts,
    verify_item_checksum,
)
from .map import (
    MAP_STATES,
    MAX_MAP_FEATURES,
    SIMPLIFY_DEGREES,
    MapLayer,
    map_layer,
    map_view,
)
from .product_overview import overview, rule_pass_rates, signoff_times
from .products import (
    boundary_geojson,
    catalog_version,
    is_empty,
    list_products,
    product_config,
    product_version,
)
from .releases import (
    RELEASES_PAGE_SIZE,
    release_history,
    released_item_ids,
    rollback_impact,
)
from .review import review_item, review_queue, verify_checksums
from .users import user_role

__all__ = [
    "FINDINGS_PAGE_SIZE",
    "FINDING_COLUMNS",
    "MAP_STATES",
    "MAX_MAP_FEATURES",
    "RELEASES_PAGE_SIZE",
    "SEVERITIES",
    "SIMPLIFY_DEGREES",
    "MapLayer",
    "audit_chain_status",
    "audit_events",
    "audit_facets",
    "audit_jsonl",
    "boundary_geojson",
    "catalog_version",
    "export_findings",
    "finding_rules",
    "findings_csv",
    "findings_json",
    "findings_page",
    "findings_table",
    "get_item",
    "is_empty",
    "item_detail",
    "item_summary",
    "iter_findings",
    "iter_items",
    "list_items",
    "list_products",
    "map_layer",
    "map_view",
    "overview",
    "product_config",
    "product_version",
    "production_counterpart",
    "raster_facts",
    "release_history",
    "released_item_ids",
    "review_item",
    "review_queue",
    "rollback_impact",
    "rule_pass_rates",
    "signoff_times",
    "state_counts",
    "user_role",
    "verify_item_checksum",
    "verify_checksums",
    "write_findings",
]
