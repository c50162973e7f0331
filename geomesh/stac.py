"""Build STAC 1.1.0 Items with pystac's typed extensions (projection v2, file, raster, version)."""

from __future__ import annotations

import re
from datetime import datetime
from typing import Any

import pystac
from pystac.extensions.file import FileExtension
from pystac.extensions.projection import ProjectionExtension
from pystac.extensions.raster import (
    DataType,
    NoDataStrings,
    RasterBand,
    RasterExtension,
    Statistics,
)
from pystac.extensions.version import ItemVersionExtension
from shapely.geometry import mapping

from geomesh.config import ProductConfig
from geomesh.hashing import to_multihash
from geomesh.raster import RasterInfo, inspect
from geomesh.tiles import PreparedTile

COG_MEDIA_TYPE = "image/tiff; application=geotiff; profile=cloud-optimized"
PROCESSING_SCHEMA = "https://stac-extensions.github.io/processing/v1.2.0/schema.json"
DATA_ASSET = "data"
_ITEM_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,159}$")
DIGEST_CHARS = 20


def item_id_for(product_id: str, hexdigest: str) -> str:
    """Deterministic item id: product id + content hash prefix (no ':' or '/')."""
    return f"{product_id}-{hexdigest[:DIGEST_CHARS]}"


def is_safe_item_id(item_id: str) -> bool:
    return bool(_ITEM_ID_RE.match(item_id)) and ".." not in item_id


def _round_geom(geom: dict[str, Any], ndigits: int = 7) -> dict[str, Any]:
    def r(c: Any) -> Any:
        if isinstance(c, (list, tuple)):
            return [r(x) for x in c]
        return round(float(c), ndigits)

    return {"type": geom["type"], "coordinates": r(geom["coordinates"])}


def build_item(
    *,
    config: ProductConfig,
    info: RasterInfo,
    hexdigest: str,
    size: int,
    asset_href: str,
    acquired: datetime | None,
    statistics: list[dict[str, float] | None] | None = None,
    item_version: int = 1,
    predecessor_href: str | None = None,
    source_href: str | None = None,
    extra_properties: dict[str, Any] | None = None,
    extra_extensions: list[str] | None = None,
) -> pystac.Item:
    """The STAC Item of a stored COG. ``info`` describes the COG itself (not the input)."""
    meta = config.product_metadata
    item_id = item_id_for(meta.product_id, hexdigest)
    geometry = _round_geom(mapping(info.footprint_4326)) if info.footprint_4326 else None
    bbox = [round(v, 7) for v in info.footprint_4326.bounds] if info.footprint_4326 else None
    # pystac needs a datetime or a range; a missing one is recorded as null and left to
    # validation (GM-CONTRACT: datetime) so the tile is quarantined with a clear reason
    placeholder = acquired or datetime(1970, 1, 1)
    item = pystac.Item(
        id=item_id,
        geometry=geometry,
        bbox=bbox,
        datetime=placeholder,
        properties={},
        collection=None,
    )
    if acquired is None:
        item.datetime = None
    if meta.platform:
        item.common_metadata.platform = meta.platform
    if meta.instruments:
        item.common_metadata.instruments = list(meta.instruments)
    if meta.constellation:
        item.common_metadata.constellation = meta.constellation
    if meta.processing_level:
        item.stac_extensions.append(PROCESSING_SCHEMA)
        item.properties["processing:level"] = meta.processing_level
    item.properties["geomesh:product_id"] = meta.product_id
    if extra_properties:
        item.properties.update(extra_properties)
    for uri in extra_extensions or ():
        if uri not in item.stac_extensions:
            item.stac_extensions.append(uri)

    asset = pystac.Asset(
        href=asset_href, media_type=COG_MEDIA_TYPE, roles=["data"], title=f"{meta.product_id} tile"
    )
    item.add_asset(DATA_ASSET, asset)

    if info.has_crs:
        proj = ProjectionExtension.ext(item, add_if_missing=True)
        if info.crs_code:
            proj.code = info.crs_code
        else:
            # WKT2 alone: the PROJJSON schema lives outside the STAC schema store, so
            # proj:projjson would make offline validation impossible
            proj.wkt2 = info.crs_wkt2
        proj.shape = [info.height, info.width]
        proj.transform = list(info.transform)
        proj.bbox = list(info.bounds)
        if info.footprint is not None:
            proj.geometry = _round_geom(mapping(info.footprint), 4)

    fext = FileExtension.ext(asset, add_if_missing=True)
    fext.checksum = to_multihash(hexdigest)
    fext.size = size

    rext = RasterExtension.ext(asset, add_if_missing=True)
    bands = []
    for i, b in enumerate(info.bands):
        band = RasterBand.create(
            data_type=DataType(b.dtype),
            spatial_resolution=float(info.res[0]) if info.has_crs else None,
        )
        if b.nodata is not None:
            band.nodata = b.nodata if b.nodata == b.nodata else NoDataStrings.NAN
        st = statistics[i] if statistics and i < len(statistics) else None
        if st:
            band.statistics = Statistics.create(
                minimum=st["minimum"], maximum=st["maximum"], mean=st["mean"], stddev=st["stddev"]
            )
        bands.append(band)
    rext.bands = bands

    ver = ItemVersionExtension.ext(item, add_if_missing=True)
    ver.version = str(item_version)
    ver.deprecated = False
    if predecessor_href:
        item.add_link(
            pystac.Link("predecessor-version", predecessor_href, media_type="application/geo+json")
        )
    if source_href:
        item.add_link(pystac.Link("derived_from", source_href))
    return item


def item_to_dict(item: pystac.Item) -> dict[str, Any]:
    """Serialise without resolving links against a root (stable, self-contained dict)."""
    return item.to_dict(include_self_link=False, transform_hrefs=False)


def build_stac(
    config: ProductConfig,
    prepared: PreparedTile,
    *,
    asset_href: str,
    item_version: int = 1,
    predecessor_href: str | None = None,
) -> dict[str, Any]:
    info = prepared.cog_info or inspect(prepared.cog_path, domain_crs=config.spatial_domain.crs)
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
