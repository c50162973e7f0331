"""Remote STAC API sources, the domain side: search, candidates, asset identity, metadata.

What geomesh needs to know about a STAC API without touching its own database: the search
parameters for the product's ``source`` section (pystac-client ``ItemSearch``: collection,
the domain boundary as GeoJSON in EPSG:4326, datetime, cloud cover, query or CQL2 filter),
the :class:`Candidate` scenes, an asset's identity (``file:checksum`` when the item has
one, else the HTTP ETag from a HEAD request), the source metadata carried into a new item
and the GDAL settings for ``/vsicurl/`` range reads. Discovery and ingestion against the
database are ``geomesh.services.sources``.

Extension fields are carried only when their schema is in the offline schema store and the
value validates against it, so items stay valid offline; other prefixes are left out.
"""

from __future__ import annotations

import ctypes
import hashlib
import json
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from functools import cache
from pathlib import Path
from typing import Any, Final, Literal
from urllib.parse import urljoin, urlsplit

import numpy as np
import pystac
import rasterio
import shapely
from pyproj import CRS, Transformer
from pystac_client import Client
from pystac_client.conformance import ConformanceClasses
from pystac_client.errors import ClientTypeError
from pystac_client.exceptions import APIError
from pystac_client.stac_api_io import StacApiIO
from rasterio import _base as rasterio_base
from requests import Request, Response
from shapely.geometry.base import BaseGeometry

from geomesh.config import ProductConfig, Source
from geomesh.errors import ConfigError, GeomeshError, SourceError
from geomesh.opening import DEFAULT_PORTS, OpeningPolicy
from geomesh.raster import EDGE_POINTS, parse_datetime, sanitize_source
from geomesh.redact import redact
from geomesh.validation.schemas import compiled_validator

CandidateStatus = Literal["new", "ingested", "unavailable"]
AssetStatus = Literal["new", "changed", "ingested"]

#: GDAL options for remote reads: no directory listing on open, only COG extensions probed
GDAL_REMOTE_OPTIONS: Final[dict[str, str]] = {
    "GDAL_DISABLE_READDIR_ON_OPEN": "EMPTY_DIR",
    "CPL_VSIL_CURL_ALLOWED_EXTENSIONS": ".tif,.tiff,.TIF,.TIFF",
    "GDAL_HTTP_MERGE_CONSECUTIVE_RANGES": "YES",
    "GDAL_HTTP_MAX_RETRY": "3",
    "GDAL_HTTP_RETRY_DELAY": "1",
}
#: page size asked of the API (max_items still caps the total at source.limit)
PAGE_SIZE: Final = 100
HTTP_TIMEOUT_S: Final = 30.0
MAX_IDENTITY_CHARS: Final = 255

#: core fields copied from the source item when present
CARRIED_CORE: Final[tuple[str, ...]] = ("platform", "constellation", "instruments")
#: property prefix → the extension schema its fields are checked against (offline store)
CARRIED_EXTENSIONS: Final[dict[str, str]] = {
    "eo:": "https://stac-extensions.github.io/eo/v1.1.0/schema.json",
    "sat:": "https://stac-extensions.github.io/sat/v1.0.0/schema.json",
    "s2:": "https://stac-extensions.github.io/sentinel-2/v1.0.0/schema.json",
    "processing:": "https://stac-extensions.github.io/processing/v1.2.0/schema.json",
}
#: fields that describe the whole source scene's band set, not the one asset ingested
NOT_CARRIED: Final[frozenset[str]] = frozenset({"eo:bands"})


# ------------------------------------------------------------------ candidates


@dataclass(frozen=True)
class Candidate:
    """One scene the search found, with what it would contribute to the product.

    ``geometry`` is the item's GeoJSON geometry (EPSG:4326 lon/lat), ready to draw over
    :func:`domain_geojson`. ``assets`` maps each configured asset key the item offers to
    its href (as the API gave it; signed URLs keep their token for reading — use
    :meth:`to_json` for display, which strips tokens).
    """

    item_id: str
    collection: str | None
    datetime: datetime | None
    cloud_cover: float | None
    geometry: dict[str, Any]
    bbox: list[float] | None
    assets: dict[str, str]
    status: CandidateStatus
    self_href: str | None
    #: asset key → identity recorded as Item.source_etag ("checksum:…", "etag:…", …)
    identities: dict[str, str | None] = field(default_factory=dict)
    asset_status: dict[str, AssetStatus] = field(default_factory=dict)
    #: asset key → id of the geomesh item that already holds it (status "ingested")
    ingested_items: dict[str, str] = field(default_factory=dict)
    #: configured asset keys this item does not offer, and every key it does offer
    missing_assets: tuple[str, ...] = ()
    offered_assets: tuple[str, ...] = ()
    #: asset key → why its identity could not be read (the asset is still a candidate)
    errors: dict[str, str] = field(default_factory=dict)
    properties: dict[str, Any] = field(default_factory=dict, repr=False)

    def source_item_id(self, asset_key: str) -> str:
        return f"{self.item_id}/{asset_key}"

    def to_json(self) -> dict[str, Any]:
        return {
            "item_id": self.item_id,
            "collection": self.collection,
            "datetime": self.datetime.isoformat() if self.datetime else None,
            "cloud_cover": self.cloud_cover,
            "platform": self.properties.get("platform"),
            "status": self.status,
            "assets": {k: sanitize_source(v) for k, v in self.assets.items()},
            "asset_status": dict(self.asset_status),
            "identities": dict(self.identities),
            "ingested_items": dict(self.ingested_items),
            "missing_assets": list(self.missing_assets),
            "errors": dict(self.errors),
            "self_href": sanitize_source(self.self_href) if self.self_href else None,
            "bbox": self.bbox,
            "geometry": self.geometry,
        }

    def to_feature(self) -> dict[str, Any]:
        """A GeoJSON Feature (for maps): the geometry plus the summary as properties."""
        props = self.to_json()
        geometry = props.pop("geometry")
        props.pop("bbox")
        feature: dict[str, Any] = {
            "type": "Feature",
            "id": self.item_id,
            "geometry": geometry,
            "properties": props,
        }
        if self.bbox:
            feature["bbox"] = self.bbox
        return feature


def candidates_geojson(candidates: Sequence[Candidate]) -> dict[str, Any]:
    """The candidates as a GeoJSON FeatureCollection (EPSG:4326)."""
    return {"type": "FeatureCollection", "features": [c.to_feature() for c in candidates]}


# ------------------------------------------------------------------ the domain in lon/lat


def domain_geometry_4326(config: ProductConfig) -> BaseGeometry:
    """The domain boundary in EPSG:4326 (lon/lat), edges densified before reprojecting."""
    dom = config.spatial_domain
    geom = dom.boundary
    if dom.pyproj_crs.to_epsg() == 4326:
        return geom
    tr = Transformer.from_crs(dom.pyproj_crs, CRS.from_epsg(4326), always_xy=True)
    minx, miny, maxx, maxy = geom.bounds
    step = max(maxx - minx, maxy - miny) / (EDGE_POINTS - 1)
    dense = shapely.segmentize(geom, step)
    out = shapely.transform(dense, lambda xy: _transform_xy(tr, xy))
    if not bool(shapely.is_valid(out)):
        out = shapely.make_valid(out)
    return out


def _transform_xy(tr: Transformer, xy: Any) -> Any:
    x, y = tr.transform(xy[:, 0], xy[:, 1])
    out = np.column_stack([x, y])
    if not np.all(np.isfinite(out)):
        raise ConfigError(
            "spatial_domain.boundary_wkt cannot be reprojected to EPSG:4326 (coordinates "
            "outside the CRS's area of use); check spatial_domain.crs"
        )
    return out


def domain_geojson(config: ProductConfig) -> dict[str, Any]:
    """The domain boundary as a GeoJSON geometry in EPSG:4326 (what the search sends)."""
    result: dict[str, Any] = json.loads(shapely.to_geojson(domain_geometry_4326(config)))
    return result


# ------------------------------------------------------------------ search


def require_source(config: ProductConfig) -> Source:
    if config.source is None:
        raise ConfigError(
            f"product {config.product_id!r} has no `source` section",
            hint="add source.url (STAC API), source.collection and source.assets to the config",
        )
    return config.source


def _short(exc: BaseException, *urls: str) -> str:
    text = str(exc).strip()
    first = text.splitlines()[0] if text else type(exc).__name__
    return redact(first, *urls)[:300]


def _origin(url: str) -> tuple[str, str, int | None]:
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    return scheme, (parts.hostname or "").lower(), parts.port or DEFAULT_PORTS.get(scheme)


def origin_guards(
    api_url: str,
) -> tuple[Callable[[Request], None], Callable[..., Response]]:
    """Hold pystac-client to the API's own server (scheme, host, port): a check of every
    request before it is sent, and a response hook that checks a redirect's target.

    The API's answers are untrusted: a ``next`` or ``self`` link, or a redirect, to any
    other server (the cloud metadata address, a service on the internal network) is
    refused before a request goes there, naming both servers.
    """
    origin = _origin(api_url)
    shown = sanitize_source(api_url)

    def check(target: str) -> None:
        if _origin(target) != origin:
            raise SourceError(
                f"{shown}: the STAC API links to another server ({sanitize_source(target)}); "
                "geomesh reads a STAC API only from its own server",
                hint="point source.url at the API whose links stay on its own server",
            )

    def before_request(request: Request) -> None:
        check(str(request.url or ""))

    def before_redirect(response: Response, **_: Any) -> Response:
        if response.is_redirect:
            check(urljoin(response.url, response.headers.get("location", "")))
        return response

    return before_request, before_redirect


def open_client(source: Source) -> Client:
    """Open the STAC API landing page; failures become a SourceError naming the URL."""
    url = sanitize_source(source.url)
    try:
        before_request, before_redirect = origin_guards(source.url)
        io = StacApiIO()
        io.session.hooks["response"].append(before_redirect)
        return Client.open(
            source.url, stac_io=io, request_modifier=before_request, timeout=HTTP_TIMEOUT_S
        )
    except (APIError, ClientTypeError, pystac.STACError, ValueError, OSError) as exc:
        raise SourceError(
            f"{url}: cannot open the STAC API ({_short(exc, source.url)})",
            hint="check source.url points at a STAC API landing page and the API is reachable",
        ) from exc


def search_parameters(client: Client, config: ProductConfig) -> dict[str, Any]:
    """The ItemSearch keyword arguments for the config's source (checked against the API)."""
    source = require_source(config)
    url = sanitize_source(source.url)
    has_query = bool(client.conforms_to(ConformanceClasses.QUERY))
    has_filter = bool(client.conforms_to(ConformanceClasses.FILTER))
    if source.query and not has_query:
        raise SourceError(
            f"{url}: source.query needs the STAC API query extension, which this API does "
            "not declare in conformsTo",
            hint="remove source.query, or express it as source.filter (CQL2) if the API "
            "supports filter",
        )
    if source.filter and not has_filter:
        raise SourceError(
            f"{url}: source.filter needs the STAC API filter extension (CQL2), which this "
            "API does not declare in conformsTo",
            hint="remove source.filter, or use source.query if the API supports it",
        )
    params: dict[str, Any] = {
        "collections": [source.collection],
        "intersects": domain_geojson(config),
        "max_items": source.limit,
        "limit": min(source.limit, PAGE_SIZE),
    }
    if source.datetime:
        params["datetime"] = source.datetime
    query: dict[str, Any] = {
        k: dict(v) if isinstance(v, dict) else v for k, v in (source.query or {}).items()
    }
    filt: dict[str, Any] | None = dict(source.filter) if source.filter else None
    if source.max_cloud_cover is not None:
        # server-side when the API can; the result is re-checked client-side either way
        if has_query and filt is None:
            cc = query.get("eo:cloud_cover")
            query["eo:cloud_cover"] = {
                **(cc if isinstance(cc, dict) else {}),
                "lt": source.max_cloud_cover,
            }
        elif has_filter:
            clause = {"op": "<", "args": [{"property": "eo:cloud_cover"}, source.max_cloud_cover]}
            filt = {"op": "and", "args": [filt, clause]} if filt else clause
    if query:
        params["query"] = query
    if filt:
        params["filter"] = filt
        params["filter_lang"] = "cql2-json"
    return params


def search_items(client: Client, config: ProductConfig) -> Iterator[pystac.Item]:
    source = require_source(config)
    url = sanitize_source(source.url)
    params = search_parameters(client, config)
    try:
        search = client.search(**params)
        yield from search.items()
    except (APIError, pystac.STACError, ValueError, OSError) as exc:
        raise SourceError(
            f"{url}: item search in collection {source.collection!r} failed "
            f"({_short(exc, source.url)})",
            hint="check source.collection, source.datetime and source.query/filter",
        ) from exc


def self_href(item: pystac.Item, api_url: str) -> str | None:
    """The item's self href in this API (some servers keep the upstream self link too)."""
    hrefs = [link.href for link in item.links if link.rel == "self"]
    base = api_url.rstrip("/")
    for href in hrefs:
        if href.startswith(base + "/"):
            return href
    if hrefs:
        return hrefs[0]
    if item.collection_id:
        return f"{base}/collections/{item.collection_id}/items/{item.id}"
    return None


def item_datetime(item: pystac.Item) -> datetime | None:
    if item.datetime is not None:
        return item.datetime
    start = item.properties.get("start_datetime")
    return parse_datetime(start) if isinstance(start, str) else None


def cloud_cover(item: pystac.Item) -> float | None:
    value = item.properties.get("eo:cloud_cover")
    return float(value) if isinstance(value, int | float) else None


# ------------------------------------------------------------------ asset identity


def _cap(value: str) -> str:
    if len(value) <= MAX_IDENTITY_CHARS:
        return value
    return "sha256:" + hashlib.sha256(value.encode()).hexdigest()


def _head(href: str, policy: OpeningPolicy) -> Mapping[str, str]:
    """Response headers of a HEAD (or, where HEAD is refused, a 1-byte ranged GET), every
    hop (redirects included) checked by the opening policy before it is contacted."""
    return policy.probe(href).headers


def asset_identity(
    href: str, asset: pystac.Asset | None = None, *, policy: OpeningPolicy
) -> str | None:
    """What identifies this version of the asset's bytes, without reading them.

    ``checksum:<multihash>`` from the item's ``file:checksum``, else ``etag:<ETag>`` from
    an HTTP HEAD, else ``modified:<Last-Modified>;size:<n>``; None when nothing is known
    (then the source item id alone decides). Raises SourceError when the HEAD fails or
    the policy refuses the href.
    """
    checksum = asset.extra_fields.get("file:checksum") if asset is not None else None
    if isinstance(checksum, str) and checksum:
        return _cap(f"checksum:{checksum.lower()}")
    if not href.startswith(("http://", "https://")):
        return None
    try:
        headers = {k.lower(): v for k, v in _head(href, policy).items()}
    except GeomeshError as exc:
        raise SourceError(redact(exc.message, href), hint=exc.hint or None) from None
    if headers.get("etag"):
        return _cap(f"etag:{headers['etag']}")
    if headers.get("last-modified"):
        size = headers.get("content-length", "?")
        return _cap(f"modified:{headers['last-modified']};size:{size}")
    return None


# ------------------------------------------------------------------ carried metadata


def carried_metadata(
    schema_dir: Path, properties: Mapping[str, Any]
) -> tuple[dict[str, Any], list[str], list[str]]:
    """(properties to carry, extension schema URIs they need, field names left out).

    Core fields are carried as they are. Extension fields are carried when the offline
    schema store has the extension's schema and the field validates against it; otherwise
    they are left out (an item must not list an extension it cannot be validated against).
    """
    carried: dict[str, Any] = {}
    extensions: list[str] = []
    dropped: list[str] = []
    for key in CARRIED_CORE:
        if properties.get(key) is not None:
            carried[key] = properties[key]
    for prefix, uri in CARRIED_EXTENSIONS.items():
        fields = {
            k: v for k, v in properties.items() if k.startswith(prefix) and k not in NOT_CARRIED
        }
        if not fields:
            continue
        compiled = compiled_validator(schema_dir, uri)
        if compiled is None:
            dropped.extend(sorted(fields))
            continue
        kept = False
        for key, value in sorted(fields.items()):
            doc = {
                "type": "Feature",
                "stac_extensions": [uri],
                "properties": {key: value},
                "assets": {},
            }
            if compiled.validator.is_valid(doc):
                carried[key] = value
                kept = True
            else:
                dropped.append(key)
        if kept:
            extensions.append(uri)
    return carried, extensions, dropped


# ------------------------------------------------------------------ remote reads


def remote_config(config: ProductConfig) -> ProductConfig:
    """The config remote reads use: clip forced on, so only the domain's ranges are read."""
    if config.ingestion.clip:
        return config
    ingestion = config.ingestion.model_copy(update={"clip": True})
    return config.model_copy(update={"ingestion": ingestion})


@contextmanager
def gdal_remote_env() -> Iterator[None]:
    """GDAL settings for /vsicurl/ range reads (no sidecar probing, retries)."""
    with rasterio.Env(**GDAL_REMOTE_OPTIONS):
        yield


@cache
def _partial_clear_cache() -> Callable[[bytes], None] | None:
    # GDAL's VSICurlPartialClearCache, reached through the libgdal rasterio links
    # (rasterio exposes no wrapper). None where the symbol cannot be found.
    try:
        fn = ctypes.CDLL(rasterio_base.__file__).VSICurlPartialClearCache
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_char_p]
    fn.restype = None
    return fn


def forget_cached(href: str) -> None:
    """Drop GDAL's in-process /vsicurl/ cache of ``href``.

    GDAL keeps the size, headers and blocks of a remote file for the life of the process;
    a remote asset replaced in place would otherwise be read as a mix of old and new bytes.
    """
    fn = _partial_clear_cache()
    if fn is not None and href.startswith(("http://", "https://")):
        fn(("/vsicurl/" + href).encode())
