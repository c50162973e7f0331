"""What happens to a tile right after it is staged: validation, then severity routing.

The ingest service calls these two hooks; they live here so that ingestion does not import
the routing machinery at module import time.
"""

from __future__ import annotations

from geomesh.services.routing import dry_run_findings, post_stage

default_post_stage = post_stage

__all__ = ["default_post_stage", "dry_run_findings"]
