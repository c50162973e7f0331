"""Read models for the CLI and the app (no state changes here), one module per page.

Every function takes the :class:`~geomesh.workspace.Workspace` first and returns plain,
JSON-ready values (dicts, lists, small dataclasses), so the app never needs sqlmodel.
Callers use the package (``queries.list_products(ws)``); the modules are:

* :mod:`.products` — the product picker, registered config, boundary, cache key;
* :mod:`.items` — `geomesh items list/show` and the detail of one item;
* :mod:`.product_overview` — the overview page (counts, activity, KPIs);
* :mod:`.map` — the map page (boundary and footprints);
* :mod:`.findings` — the findings page (table, rule choices, downloads);
* :mod:`.review` — the review page (sign-off queue, one item under review);
* :mod:`.releases` — the releases page (rollback impact, the current release's items);
* :mod:`.audit` — the audit page (events, facets, chain check, download);
* :mod:`.users` — a user's role.
"""

from __future__ import annotations

from geomesh.services.queries._common import SEVERITIES
from geomesh.services.queries.audit import (
    audit_chain_status,
    audit_events,
    audit_facets,
    audit_jsonl,
)
from geomesh.services.queries.findings import (
    FINDING_COLUMNS,
    export_findings,
    finding_rules,
    findings_csv,
    findings_json,
    findings_page,
    findings_table,
    iter_findings,
    write_findings,
)
from geomesh.services.queries.findings import PAGE_SIZE as FINDINGS_PAGE_SIZE
from geomesh.services.queries.items import (
    get_item,
    item_detail,
    item_summary,
    iter_items,
    list_items,
    production_counterpart,
    raster_facts,
    state_counts,
    verify_item_checksum,
)
from geomesh.services.queries.map import (
    MAP_STATES,
    MAX_MAP_FEATURES,
    SIMPLIFY_DEGREES,
    MapLayer,
    map_layer,
    map_view,
)
from geomesh.services.queries.product_overview import overview, rule_pass_rates, signoff_times
from geomesh.services.queries.products import (
    boundary_geojson,
    catalog_version,
    is_empty,
    list_products,
    product_config,
    product_version,
)
from geomesh.services.queries.releases import released_item_ids, rollback_impact
from geomesh.services.queries.review import review_item, review_queue, verify_checksums
from geomesh.services.queries.users import user_role

__all__ = [
    "FINDINGS_PAGE_SIZE",
    "FINDING_COLUMNS",
    "MAP_STATES",
    "MAX_MAP_FEATURES",
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
