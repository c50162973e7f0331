"""The file work of one tile: raster → (warp/clip) → COG → SHA-256 → STAC Item dict.

Pure file work: nothing here touches the database or writes to the object store, so it
runs in worker processes (``geomesh.parallel``) as well as in the caller. Staging the
result is ``geomesh.services.ingest``.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

from geomesh.config import ProductConfig
from geomesh.hashing import sha256_file
from geomesh.raster import (
    CogResult,
    band_statistics,
    inspect,
    is_remote,
    sanitize_source,
    write_cog,
)
from geomesh.stac import build_item, item_to_dict
from geomesh.storage import TMP_PREFIX, ObjectStore


@dataclass
class SourceMeta:
    """Where a tile came from when it was found in a STAC API (set by ``services.sources``)."""

    #: "<stac item id>/<asset key>": with source_etag, what makes a re-run skip the asset
    source_item_id: str
    source_etag: str | None
    #: self href of the source STAC item (the new item's `derived_from` link)
    derived_from: str | None = None
    #: source item properties to carry (checked against their extension schemas)
    properties: dict[str, Any] = field(default_factory=dict)
    stac_extensions: list[str] = field(default_factory=list)


@dataclass
class PreparedTile:
    """The result of the file work for one source (picklable, for worker processes)."""

    source: str
    source_name: str
    source_key: str
    source_digest: str | None
    cog_path: Path
    hexdigest: str
    size: int
    acquired: datetime | None
    info_json: dict[str, Any]
    statistics: list[dict[str, float] | None]
    cog_valid: bool
    cog_errors: list[str]
    cog_warnings: list[str]
    clipped: bool
    source_meta: SourceMeta | None = None


def source_key_for(source: str) -> str:
    """Stable key of "the same tile": the sanitized source location."""
    return hashlib.sha256(sanitize_source(source).encode()).hexdigest()[:32]


def _options_digest(config: ProductConfig) -> str:
    opts = {
        "ingestion": config.ingestion.model_dump(mode="json", exclude={"datetime"}),
        "domain": config.spatial_contract() if config.ingestion.clip else None,
    }
    return json.dumps(opts, sort_keys=True)


def source_digest_for(source: str, config: ProductConfig) -> str | None:
    """SHA-256 of a local source's bytes + the options that shape the output (None if remote)."""
    if is_remote(source):
        return None
    p = Path(source)
    if not p.is_file():
        return None
    h = hashlib.sha256()
    with open(p, "rb") as fh:
        while chunk := fh.read(1 << 20):
            h.update(chunk)
    h.update(_options_digest(config).encode())
    return h.hexdigest()


def stac_key_for(product_id: str, item_id: str) -> str:
    return f"items/{product_id}/{item_id}.json"


def object_href(store: ObjectStore, area: Literal["staging"], key: str) -> str:
    return store.url(area, key)


def prepare_tile(
    config: ProductConfig,
    source: str,
    workdir: Path,
    *,
    acquired: datetime | None = None,
    source_digest: str | None = None,
) -> PreparedTile:
    """Inspect, (warp/clip), write the COG, hash it and read statistics. No database access."""
    name = sanitize_source(source)
    src_info = inspect(source, domain_crs=config.spatial_domain.crs)
    fd, tmp = tempfile.mkstemp(prefix=TMP_PREFIX, suffix=".tif", dir=workdir)
    os.close(fd)
    cog_path = Path(tmp)
    cog: CogResult = write_cog(source, cog_path, config)
    hexdigest, size = sha256_file(cog_path)
    cog_info = inspect(cog_path, domain_crs=config.spatial_domain.crs)
    when = acquired or src_info.datetime or config.ingestion.datetime
    return PreparedTile(
        source=source,
        source_name=name,
        source_key=source_key_for(source),
        source_digest=source_digest,
        cog_path=cog_path,
        hexdigest=hexdigest,
        size=size,
        acquired=when,
        info_json={"source": src_info.to_json(), "cog": cog_info.to_json()},
        statistics=band_statistics(cog_path),
        cog_valid=cog.is_valid,
        cog_errors=cog.errors,
        cog_warnings=cog.warnings,
        clipped=cog.clipped,
    )


def build_stac(
    config: ProductConfig,
    prepared: PreparedTile,
    *,
    asset_href: str,
    item_version: int = 1,
    predecessor_href: str | None = None,
) -> dict[str, Any]:
    info = inspect(prepared.cog_path, domain_crs=config.spatial_domain.crs)
    meta = prepared.source_meta
    item = build_item(
        config=config,
        info=info,
        hexdigest=prepared.hexdigest,
        size=prepared.size,
        asset_href=asset_href,
        acquired=prepared.acquired,
        statistics=prepared.statistics,
        item_version=item_version,
        predecessor_href=predecessor_href,
        source_href=(meta.derived_from if meta and meta.derived_from else prepared.source_name),
        extra_properties=meta.properties if meta else None,
        extra_extensions=meta.stac_extensions if meta else None,
    )
    return item_to_dict(item)
