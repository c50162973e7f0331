"""Tile previews: a small PNG of a stored COG plus its EPSG:4326 bounds, rendered locally.

rio-tiler reads the COG (overviews make this cheap), warps it to Web Mercator so a Leaflet
``ImageOverlay`` placed on its lat/lon bounds lines up with the footprints, and renders a
contrast-stretched RGB (or grey) PNG with an alpha mask. Results are cached in the object
store's ``meta`` area at ``previews/<item_id>/<max_size>.png`` (+ ``.json`` with the
bounds); item ids are content-addressed, so a cached preview never goes stale, and routing
deletes the prefix when an item is rolled back.

Nothing here touches the database except to find the item's stored object.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import numpy as np
import rasterio
from rasterio.crs import CRS
from rasterio.errors import NotGeoreferencedWarning, RasterioError
from rasterio.warp import transform_bounds
from rio_tiler.errors import RioTilerError
from rio_tiler.io import Reader
from rio_tiler.models import ImageData

from geomesh.errors import NotFound, RasterError
from geomesh.models import Item, ItemState
from geomesh.storage import Area
from geomesh.workspace import Workspace

WEB_MERCATOR: Final = CRS.from_epsg(3857)
WGS84: Final = CRS.from_epsg(4326)
DEFAULT_SIZE: Final = 512
#: Sentinel-2 band names for a true-colour composite (red, green, blue)
_RGB_NAMES: Final = (("b04", "red"), ("b03", "green"), ("b02", "blue"))


@dataclass(frozen=True)
class Preview:
    """A rendered preview: PNG bytes and where it goes on a map (None: no CRS)."""

    item_id: str
    png: bytes
    width: int
    height: int
    #: (west, south, east, north) in EPSG:4326, or None when the raster has no CRS
    bounds: tuple[float, float, float, float] | None
    bands: tuple[int, ...]
    cached: bool = False

    @property
    def leaflet_bounds(self) -> list[list[float]] | None:
        """[[south, west], [north, east]] as Leaflet's ImageOverlay wants it."""
        if self.bounds is None:
            return None
        w, s, e, n = self.bounds
        return [[s, w], [n, e]]


def cache_keys(item_id: str, max_size: int) -> tuple[str, str]:
    base = f"previews/{item_id}/{max_size}"
    return f"{base}.png", f"{base}.json"


def _locations(item: Item) -> list[tuple[Area, str]]:
    state = ItemState(item.state)
    out: list[tuple[Area, str]] = []
    if state is ItemState.quarantined or item.quarantine_key:
        out.append(("quarantine", item.quarantine_key or item.object_key))
    if state in (ItemState.production, ItemState.superseded, ItemState.withdrawn):
        out.append(("production", item.object_key))
    out += [("staging", item.object_key), ("production", item.object_key)]
    return list(dict.fromkeys(out))


def item_preview(ws: Workspace, item_id: str, *, max_size: int = DEFAULT_SIZE) -> Preview:
    """The (cached) preview of one item's stored COG. Raises NotFound or RasterError."""
    with ws.read() as session:
        item = session.get(Item, item_id)
        if item is None:
            raise NotFound(f"item {item_id!r} does not exist")
    png_key, meta_key = cache_keys(item_id, max_size)
    if ws.store.exists("meta", png_key) and ws.store.exists("meta", meta_key):
        meta = json.loads(ws.store.get_bytes("meta", meta_key))
        bounds = tuple(meta["bounds"]) if meta.get("bounds") else None
        return Preview(
            item_id=item_id,
            png=ws.store.get_bytes("meta", png_key),
            width=int(meta["width"]),
            height=int(meta["height"]),
            bounds=bounds,
            bands=tuple(meta.get("bands") or ()),
            cached=True,
        )
    for area, key in _locations(item):
        if ws.store.exists(area, key):
            with ws.store.open_local(area, key) as path:
                preview = render_preview(path, item_id=item_id, max_size=max_size)
            break
    else:
        raise RasterError(
            f"the stored object {item.object_key} of item {item_id} is missing",
            hint="`geomesh doctor` lists missing objects; ingest the source again",
        )
    meta_out = {
        "width": preview.width,
        "height": preview.height,
        "bounds": list(preview.bounds) if preview.bounds else None,
        "bands": list(preview.bands),
    }
    ws.store.put_bytes("meta", png_key, preview.png, overwrite=True)
    ws.store.put_bytes("meta", meta_key, json.dumps(meta_out).encode(), overwrite=True)
    return preview


def rgb_bands(descriptions: tuple[str | None, ...], count: int) -> tuple[int, ...]:
    """Band indexes (1-based) for display: S2 red/green/blue when named, else 1-2-3 or 1."""
    names = [(d or "").strip().lower() for d in descriptions]
    picked: list[int] = []
    for aliases in _RGB_NAMES:
        idx = next((i + 1 for i, n in enumerate(names) if n in aliases), None)
        if idx is None:
            break
        picked.append(idx)
    if len(picked) == 3:
        return tuple(picked)
    return (1, 2, 3) if count >= 3 else (1,)


def _stretch(img: ImageData) -> ImageData:
    """One 2–98 percentile stretch for all bands together (keeps true-colour hues), to uint8."""
    data = np.ma.MaskedArray(img.array)
    valid = data.compressed()
    if valid.size == 0:
        lo, hi = 0.0, 1.0
    else:
        lo, hi = (float(v) for v in np.percentile(valid, [2, 98]))
        hi = hi if hi > lo else lo + 1.0
    return img.rescale(in_range=[(lo, hi)] * data.shape[0])


def render_preview(path: Path, *, item_id: str, max_size: int = DEFAULT_SIZE) -> Preview:
    """Render a PNG preview of a local raster (Web Mercator when it has a CRS)."""
    name = path.name
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            with rasterio.open(path) as ds:
                crs, count, descriptions = ds.crs, ds.count, tuple(ds.descriptions)
                bands = rgb_bands(descriptions, count)
                if crs is None:
                    return _render_plain(ds, item_id, bands, max_size)
            with Reader(str(path)) as src:
                merc = transform_bounds(src.crs, WEB_MERCATOR, *src.bounds, densify_pts=21)
                img = src.part(
                    merc,
                    dst_crs=WEB_MERCATOR,
                    bounds_crs=WEB_MERCATOR,
                    indexes=bands,
                    max_size=max_size,
                )
    except (RasterioError, RioTilerError, ValueError) as exc:
        raise RasterError(
            f"{name}: cannot render a preview ({str(exc).splitlines()[0][:200]})",
            hint="the stored object may be corrupt; re-validate the item",
        ) from exc
    west, south, east, north = transform_bounds(WEB_MERCATOR, WGS84, *img.bounds)
    png = _stretch(img).render(img_format="PNG")
    return Preview(
        item_id=item_id,
        png=png,
        width=img.width,
        height=img.height,
        bounds=(west, south, east, north),
        bands=bands,
    )


def _render_plain(ds: Any, item_id: str, bands: tuple[int, ...], max_size: int) -> Preview:
    """No CRS: a plain downsampled image (shown beside the map, not on it)."""
    scale = max(ds.width, ds.height) / max_size
    width = max(1, round(ds.width / max(scale, 1.0)))
    height = max(1, round(ds.height / max(scale, 1.0)))
    arr = ds.read(indexes=list(bands), out_shape=(len(bands), height, width), masked=True)
    img = ImageData(arr)
    png = _stretch(img).render(img_format="PNG")
    return Preview(item_id=item_id, png=png, width=width, height=height, bounds=None, bands=bands)
