"""What happens to a tile right after it is staged: validation, then severity routing."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from geomesh.catalog import Catalog
from geomesh.config import ProductConfig


def default_post_stage(
    cat: Catalog, config: ProductConfig, item_id: str, actor: str
) -> tuple[str | None, str | None, dict[str, int]]:
    """Validate the staged item and route it by worst severity: (state, route, counts)."""
    # PLACEHOLDER until geomesh.services.routing lands (validation issue)
    return "staging", None, {}


def dry_run_findings(
    cat: Catalog, config: ProductConfig, stac: dict[str, Any], cog_path: Path
) -> tuple[dict[str, int], str | None]:
    """Findings counts and the route a tile would take, without writing anything."""
    return {}, None
