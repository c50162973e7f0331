"""Raster inspection, warp/clip to the domain, and COG writing (rasterio + rio-cogeo).

Nothing here touches the catalog: functions read a raster and write files where told.
Every rasterio/GDAL failure on user input becomes a :class:`~geomesh.errors.RasterError`
that names the file.
"""

from __future__ import annotations

import json
import math
import os
import re
import warnings
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import lru_cache
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import numpy as np
import rasterio
import shapely
from pyproj import CRS
from rasterio._err import CPLE_BaseError
from rasterio.enums import Resampling
from rasterio.errors import NotGeoreferencedWarning, RasterioError
from rasterio.vrt import WarpedVRT
from rasterio.warp import calculate_default_transform, transform_bounds
from rio_cogeo.cogeo import cog_translate, cog_validate
from rio_cogeo.profiles import cog_profiles
from shapely.geometry import Polygon, box, mapping
from shapely.geometry.base import BaseGeometry

from geomesh.config import ProductConfig
from geomesh.crs import crs_from_text, transformer
from geomesh.errors import MissingCRS, OutsideDomain, RasterError
from geomesh.redact import redact

#: absolute ceiling on what any raster may declare (a 10980² S2 band is 1.2e8); a product's
#: own, lower limits (ingestion.max_pixels, max_decompressed_mb) apply before any write
MAX_PIXELS = 4 * 10980 * 10980 * 16
#: drivers for rasters geomesh wrote itself; sources use their OpeningPolicy's drivers
DEFAULT_DRIVERS: tuple[str, ...] = ("GTiff",)
EDGE_POINTS = 21  # densification of footprint edges


@dataclass(frozen=True)
class BandInfo:
    index: int
    dtype: str
    nodata: float | None
    description: str | None


@dataclass(frozen=True)
class RasterInfo:
    """What `geomesh inspect` shows: `rio info` plus what the contract needs."""

    source: str
    driver: str
    width: int
    height: int
    count: int
    dtypes: tuple[str, ...]
    nodata: float | None
    crs_code: str | None
    crs_wkt2: str | None
    crs_projjson: dict[str, Any] | None
    transform: tuple[float, ...]
    bounds: tuple[float, float, float, float]
    res: tuple[float, float]
    block_shapes: tuple[tuple[int, int], ...]
    tiled: bool
    compression: str | None
    overviews: tuple[int, ...]
    has_gcps: bool
    tags: dict[str, str]
    datetime: datetime | None
    bands: tuple[BandInfo, ...]
    #: footprint in the raster CRS, EPSG:4326 and the domain CRS (None without a CRS)
    footprint: BaseGeometry | None = field(repr=False)
    footprint_4326: BaseGeometry | None = field(repr=False)
    footprint_domain: BaseGeometry | None = field(repr=False)

    @property
    def has_crs(self) -> bool:
        return self.crs_wkt2 is not None

    def to_json(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "driver": self.driver,
            "width": self.width,
            "height": self.height,
            "count": self.count,
            "dtypes": list(self.dtypes),
            "nodata": _json_num(self.nodata),
            "crs": self.crs_code or ("custom (WKT2)" if self.crs_wkt2 else None),
            "transform": list(self.transform),
            "bounds": list(self.bounds),
            "res": list(self.res),
            "blocks": [list(b) for b in self.block_shapes],
            "tiled": self.tiled,
            "compression": self.compression,
            "overviews": list(self.overviews),
            "gcps": self.has_gcps,
            "datetime": self.datetime.isoformat() if self.datetime else None,
            "bands": [
                {
                    "index": b.index,
                    "dtype": b.dtype,
                    "nodata": _json_num(b.nodata),
                    "description": b.description,
                }
                for b in self.bands
            ],
            "footprint_4326": mapping(self.footprint_4326) if self.footprint_4326 else None,
        }


def _json_num(v: float | None) -> float | str | None:
    if v is None:
        return None
    if math.isnan(v):
        return "nan"
    if math.isinf(v):
        return "inf" if v > 0 else "-inf"
    return v


def sanitize_source(source: str) -> str:
    """The source as recorded: URLs lose credentials and query strings (signed tokens)."""
    if "://" in source:
        parts = urlsplit(source)
        host = parts.hostname or ""
        if parts.port:
            host = f"{host}:{parts.port}"
        return urlunsplit((parts.scheme, host, parts.path, "", ""))
    return str(Path(source).expanduser().resolve())


def display_name(source: str) -> str:
    """How messages name a source: as given (a symlink by its own name), URLs without
    their secrets (:func:`sanitize_source` resolves paths: that is the tile's key)."""
    return sanitize_source(source) if "://" in source else source


def is_remote(source: str) -> bool:
    return source.startswith(("http://", "https://", "s3://", "/vsi"))


@contextmanager
def open_raster(
    source: str | Path,
    *,
    drivers: tuple[str, ...] = DEFAULT_DRIVERS,
    name: str | None = None,
) -> Iterator[rasterio.io.DatasetReader]:
    """Open a raster with only ``drivers`` tried, mapping failures to RasterError.

    ``source`` is what GDAL opens: a path, or what ``geomesh.opening`` made of a checked
    URL; ``name`` is how messages call it (default: the sanitized source).
    """
    src_str = str(source)
    name = display_name(name or src_str)
    if not is_remote(src_str):
        p = Path(src_str)
        if not p.exists():
            raise RasterError(f"{name}: file not found", hint="check the path")
        if p.is_dir():
            raise RasterError(f"{name}: is a directory, not a raster file")
        if p.stat().st_size == 0:
            raise RasterError(f"{name}: file is empty (0 bytes)", hint="re-export the raster")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            ds = _open_with(src_str, drivers)
    except RasterioError as exc:
        raise RasterError(
            f"{name}: not a readable raster of an allowed format ({', '.join(drivers)}) "
            f"({_short(exc)})",
            hint="give a GeoTIFF/COG; check the file is complete and not another format "
            "(VRT and other indirection formats are not read)",
        ) from exc
    with ds:
        _sanity(ds, name)
        yield ds


def _open_with(path: str, drivers: tuple[str, ...]) -> Any:
    """``rasterio.open`` trying only ``drivers`` (rasterio takes one name at a time; GDAL
    then tries that driver alone, never one picked from the content, such as VRT)."""
    if not drivers:
        raise RasterError(f"{sanitize_source(path)}: no GDAL driver is allowed to open it")
    first: RasterioError | None = None
    for driver in drivers:
        try:
            return rasterio.open(path, driver=driver)
        except RasterioError as exc:
            first = first or exc
    assert first is not None
    raise first


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return redact(text)[:300]


def check_limits(
    config: ProductConfig, name: str, width: int, height: int, count: int, dtype: str, what: str
) -> None:
    """Refuse a grid larger than the product's ``max_pixels`` / ``max_decompressed_mb``."""
    ing = config.ingestion
    pixels = int(width) * int(height) * max(int(count), 1)
    if pixels > ing.max_pixels:
        raise RasterError(
            f"{name}: {what} has {width}×{height}×{count} = {pixels} pixels, more than the "
            f"product's limit of {ing.max_pixels} (ingestion.max_pixels)",
            hint="split the scene into tiles, or raise ingestion.max_pixels in the config",
        )
    size_mb = pixels * np.dtype(dtype).itemsize / (1 << 20)
    if size_mb > ing.max_decompressed_mb:
        raise RasterError(
            f"{name}: {what} is {size_mb:.0f} MiB decompressed, more than the product's limit "
            f"of {ing.max_decompressed_mb} MiB (ingestion.max_decompressed_mb)",
            hint="split the scene into tiles, or raise ingestion.max_decompressed_mb",
        )


def _sanity(ds: Any, name: str) -> None:
    pixels = int(ds.width) * int(ds.height) * max(int(ds.count), 1)
    if ds.width <= 0 or ds.height <= 0 or ds.count <= 0:
        raise RasterError(f"{name}: raster has no pixels or no bands")
    if pixels > MAX_PIXELS:
        raise RasterError(
            f"{name}: declares {ds.width}×{ds.height}×{ds.count} pixels, more than the "
            f"limit of {MAX_PIXELS}",
            hint="split the scene into tiles before ingesting",
        )
    complex_bands = [d for d in ds.dtypes if np.dtype(d).kind == "c"]
    if complex_bands:
        raise RasterError(
            f"{name}: has complex-valued bands ({complex_bands[0]}); geomesh ingests real-valued "
            "imagery only",
            hint="convert to amplitude/real values before ingesting",
        )
    t = ds.transform
    if not all(math.isfinite(v) for v in (t.a, t.b, t.c, t.d, t.e, t.f)):
        raise RasterError(f"{name}: geotransform contains NaN or infinity; fix the georeferencing")
    if ds.crs is not None and (t.a == 0 or t.e == 0) and t.b == 0 and t.d == 0:
        raise RasterError(f"{name}: geotransform has a zero pixel size; fix the georeferencing")


_TIFF_DT = re.compile(r"^(\d{4})[:-](\d{2})[:-](\d{2})[ T](\d{2}):(\d{2}):(\d{2})")


def parse_datetime(value: str) -> datetime | None:
    """Parse TIFF ('YYYY:MM:DD HH:MM:SS') or ISO 8601 datetimes; naive means UTC."""
    v = value.strip()
    m = _TIFF_DT.match(v)
    if m and v[4] == ":":  # TIFF style; ISO 8601 is handled below
        y, mo, d, h, mi, s = (int(x) for x in m.groups())
        try:
            return datetime(y, mo, d, h, mi, s, tzinfo=UTC)
        except ValueError:
            return None
    try:
        dt = datetime.fromisoformat(v.replace("Z", "+00:00"))
    except ValueError:
        return None
    return dt if dt.tzinfo else dt.replace(tzinfo=UTC)


DATETIME_TAGS = (
    "ACQUISITIONDATETIME",
    "DATETIME",
    "datetime",
    "ACQUISITION_DATETIME",
    "SENSING_TIME",
    "PRODUCT_START_TIME",
    "TIFFTAG_DATETIME",
)


def datetime_from_tags(tags: dict[str, str]) -> datetime | None:
    for key in DATETIME_TAGS:
        if key in tags and tags[key]:
            dt = parse_datetime(tags[key])
            if dt is not None:
                return dt
    return None


def crs_identity(crs: Any) -> tuple[str | None, str | None, dict[str, Any] | None]:
    """(authority code like 'EPSG:32610' or None, WKT2, PROJJSON) of a rasterio/pyproj CRS."""
    if crs is None:
        return None, None, None
    code, wkt2, projjson = _wkt_identity(crs.to_wkt() if hasattr(crs, "to_wkt") else str(crs))
    return code, wkt2, json.loads(projjson)  # a fresh dict: the cached text stays unshared


@lru_cache(maxsize=64)
def _wkt_identity(text: str) -> tuple[str | None, str, str]:
    """:func:`crs_identity` of a CRS's text, PROJJSON as text. Cached: a batch's tiles share
    a few CRSs, and the authority lookup searches PROJ's database (a tile and its COG ask
    twice)."""
    pcrs = crs_from_text(text)
    auth = pcrs.to_authority(min_confidence=90)
    code = f"{auth[0]}:{auth[1]}" if auth else None
    return code, pcrs.to_wkt(version="WKT2_2019"), pcrs.to_json()


def footprint_polygon(
    bounds: tuple[float, float, float, float], src_crs: CRS, dst_crs: CRS
) -> BaseGeometry:
    """The raster's bounds as a polygon in ``dst_crs`` with densified edges."""
    poly = box(*bounds)
    if src_crs == dst_crs:
        return poly
    step = max(bounds[2] - bounds[0], bounds[3] - bounds[1]) / (EDGE_POINTS - 1)
    dense = shapely.segmentize(poly, step)
    tr = transformer(src_crs, dst_crs)
    xs, ys = np.asarray(dense.exterior.coords).T
    tx, ty = tr.transform(xs, ys)
    if not (np.all(np.isfinite(tx)) and np.all(np.isfinite(ty))):
        raise RasterError("footprint cannot be reprojected (coordinates outside the CRS's area)")
    out = Polygon(zip(tx, ty, strict=True))
    return out if out.is_valid else shapely.make_valid(out)


def inspect(
    source: str | Path,
    *,
    domain_crs: str | None = None,
    drivers: tuple[str, ...] = DEFAULT_DRIVERS,
    name: str | None = None,
) -> RasterInfo:
    """Read everything the contract needs from a raster's header (no pixel reads)."""
    with open_raster(source, drivers=drivers, name=name) as ds:
        return _inspect_open(ds, name or str(source), domain_crs)


def _inspect_open(ds: Any, source: str, domain_crs: str | None) -> RasterInfo:
    code, wkt2, projjson = crs_identity(ds.crs)
    tags = {str(k): str(v) for k, v in ds.tags().items()}
    ovr = tuple(ds.overviews(1)) if ds.count else ()
    footprint = fp4326 = fpdom = None
    if wkt2 is not None:
        src_crs = crs_from_text(wkt2)
        footprint = box(*ds.bounds)
        wgs84 = crs_from_text("EPSG:4326")
        fp4326 = footprint_polygon(tuple(ds.bounds), src_crs, wgs84)
        if domain_crs:
            dom = crs_from_text(domain_crs)
            fpdom = fp4326 if dom == wgs84 else footprint_polygon(tuple(ds.bounds), src_crs, dom)
    nodata = ds.nodata
    return RasterInfo(
        source=sanitize_source(source),
        driver=ds.driver,
        width=ds.width,
        height=ds.height,
        count=ds.count,
        dtypes=tuple(ds.dtypes),
        nodata=None if nodata is None else float(nodata),
        crs_code=code,
        crs_wkt2=wkt2,
        crs_projjson=projjson,
        transform=tuple(ds.transform)[:6],
        bounds=tuple(ds.bounds),
        res=tuple(ds.res),
        block_shapes=tuple(tuple(b) for b in ds.block_shapes),
        tiled=bool(ds.profile.get("tiled", False)),
        compression=ds.compression.value if ds.compression else None,
        overviews=ovr,
        has_gcps=bool(ds.gcps[0]),
        tags=tags,
        datetime=datetime_from_tags(tags),
        bands=tuple(
            BandInfo(
                i,
                ds.dtypes[i - 1],
                None if ds.nodatavals[i - 1] is None else float(ds.nodatavals[i - 1]),
                ds.descriptions[i - 1],
            )
            for i in range(1, ds.count + 1)
        ),
        footprint=footprint,
        footprint_4326=fp4326,
        footprint_domain=fpdom,
    )


@dataclass(frozen=True)
class CogResult:
    path: Path
    is_valid: bool
    errors: list[str]
    warnings: list[str]
    clipped: bool
    #: the source's :func:`inspect` result, read from the dataset the COG was written from
    #: (``write_cog(..., inspect_source=True)``): one open of the source, not two
    source_info: RasterInfo | None = None


def _cog_profile(config: ProductConfig, nodata_dtype: str) -> dict[str, Any]:
    ing = config.ingestion
    profile: dict[str, Any] = dict(cog_profiles.get(ing.compression.lower()))  # type: ignore[no-untyped-call]
    profile.update(blockxsize=ing.tile_size, blockysize=ing.tile_size, BIGTIFF="IF_SAFER")
    if ing.compression in ("DEFLATE", "LZW"):
        profile["predictor"] = 3 if np.dtype(nodata_dtype).kind == "f" else 2
    return profile


def clip_grid(
    ds: Any, domain_crs: CRS, envelope: tuple[float, float, float, float], name: str
) -> tuple[Any, int, int]:
    """Output transform and size of the tile warped to the domain CRS, clipped to the envelope."""
    src_crs = CRS.from_wkt(ds.crs.to_wkt())
    tb = transform_bounds(ds.crs, domain_crs.to_wkt(), *ds.bounds, densify_pts=EDGE_POINTS)
    left, bottom = max(tb[0], envelope[0]), max(tb[1], envelope[1])
    right, top = min(tb[2], envelope[2]), min(tb[3], envelope[3])
    if left >= right or bottom >= top:
        raise OutsideDomain(
            f"{name}: the tile does not intersect the domain envelope {list(envelope)} "
            f"(tile bounds in {domain_crs.to_string()}: {[round(v, 6) for v in tb]})",
            hint="check the tile and the product's spatial_domain",
        )
    default_t, _, _ = calculate_default_transform(
        src_crs.to_wkt(), domain_crs.to_wkt(), ds.width, ds.height, *ds.bounds
    )
    res = abs(default_t.a)
    width = max(1, math.ceil((right - left) / res))
    height = max(1, math.ceil((top - bottom) / res))
    transform = rasterio.transform.from_origin(left, top, res, res)
    return transform, width, height


def write_cog(
    source: str | Path,
    dst: Path,
    config: ProductConfig,
    *,
    clip: bool | None = None,
    drivers: tuple[str, ...] = DEFAULT_DRIVERS,
    name: str | None = None,
    inspect_source: bool = False,
    written: Callable[[Path], object] | None = None,
) -> CogResult:
    """Write ``source`` as a COG at ``dst`` (optionally warped + clipped to the domain).

    The product's pixel and decompressed-size limits are checked on the source and on the
    clipped grid before anything is written. With ``inspect_source`` the result also holds
    what :func:`inspect` says of the source (footprints in the product's domain CRS), read
    from the same open dataset once the COG is written. ``written(dst)`` is called as soon
    as the COG's bytes are final, before the source is inspected and the COG validated
    (e.g. to start hashing them on another thread while those run).
    """
    do_clip = config.ingestion.clip if clip is None else clip
    resampling = config.ingestion.resampling
    name = display_name(name or str(source))
    source_info: RasterInfo | None = None
    with ExitStack() as stack:
        ds = stack.enter_context(open_raster(source, drivers=drivers, name=name))
        src: Any = ds
        if not do_clip:
            check_limits(config, name, ds.width, ds.height, ds.count, ds.dtypes[0], "the raster")
        if do_clip:
            if ds.crs is None:
                raise MissingCRS(
                    f"{name}: cannot clip to the domain: the raster has no CRS",
                    hint="assign a CRS (gdal_edit.py -a_srs) or set ingestion.clip: false",
                )
            dom = config.spatial_domain
            transform, width, height = clip_grid(ds, dom.pyproj_crs, dom.boundary.bounds, name)
            check_limits(config, name, width, height, ds.count, ds.dtypes[0], "the clipped grid")
            src = stack.enter_context(
                WarpedVRT(
                    ds,
                    crs=dom.pyproj_crs.to_wkt(),
                    transform=transform,
                    width=width,
                    height=height,
                    resampling=Resampling[resampling],
                    nodata=ds.nodata,
                )
            )
        profile = _cog_profile(config, ds.dtypes[0])
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", NotGeoreferencedWarning)
                cog_translate(
                    src,
                    str(dst),
                    profile,
                    overview_resampling=resampling,  # type: ignore[arg-type]
                    web_optimized=False,
                    quiet=True,
                    in_memory=False,
                    use_cog_driver=False,
                    config={
                        # a worker of a parallel batch gets its share of the cores
                        "GDAL_NUM_THREADS": os.environ.get("GEOMESH_GDAL_THREADS", "ALL_CPUS"),
                        "GDAL_TIFF_OVR_BLOCKSIZE": str(config.ingestion.tile_size),
                    },
                )
        except (RasterioError, CPLE_BaseError) as exc:  # CPLE_*: GDAL errors, e.g. one GCP
            raise RasterError(f"{name}: could not be converted to a COG ({_short(exc)})") from exc
        if written is not None:
            written(dst)
        if inspect_source:
            source_info = _inspect_open(ds, name, config.spatial_domain.crs)
    is_valid, errors, warns = validate_cog(dst)
    return CogResult(
        path=dst,
        is_valid=is_valid,
        errors=errors,
        warnings=warns,
        clipped=do_clip,
        source_info=source_info,
    )


def validate_cog(path: str | Path) -> tuple[bool, list[str], list[str]]:
    """rio-cogeo's validation: (is_valid, errors, warnings); never prints."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        try:
            ok, errs, warns = cog_validate(str(path), quiet=True)
        except RasterioError as exc:
            return False, [f"cannot be read as a GeoTIFF: {_short(exc)}"], []
    return bool(ok), list(errs), list(warns)


def inspect_with_statistics(
    path: str | Path, *, domain_crs: str | None = None
) -> tuple[RasterInfo, list[dict[str, float] | None]]:
    """:func:`inspect` and the approximate per-band statistics of a COG just written, from
    one open of it."""
    with open_raster(path) as ds:
        return _inspect_open(ds, str(path), domain_crs), _band_statistics(ds)


def _band_statistics(ds: Any) -> list[dict[str, float] | None]:
    """Approximate per-band statistics (GDAL computes them on overviews: cheap)."""
    out: list[dict[str, float] | None] = []
    for b in range(1, ds.count + 1):
        try:
            st = ds.stats(indexes=[b], approx=True)[0]
        except (RasterioError, ValueError):
            out.append(None)
            continue
        vals = {"minimum": st.min, "maximum": st.max, "mean": st.mean, "stddev": st.std}
        if all(v is not None and math.isfinite(v) for v in vals.values()):
            out.append({k: float(v) for k, v in vals.items()})
        else:
            out.append(None)
    return out
