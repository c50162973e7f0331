"""The validation rules beyond JSON Schema: contract, CRS, boundary, checksum, COG, drift.

Every rule is a function ``(subject) -> Iterable[Finding]`` that emits findings with the
rule's default severity; :class:`~geomesh.validation.registry.Policy` applies the product's
overrides afterwards. Rules never raise for a bad item and never print.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from functools import cached_property, lru_cache
from pathlib import Path
from typing import Any, Final

import numpy as np
import rasterio
import shapely
from pyproj import CRS
from pyproj.exceptions import CRSError
from rasterio.errors import NotGeoreferencedWarning, RasterioIOError
from rasterio.transform import Affine
from rio_cogeo.cogeo import cog_validate
from shapely.errors import ShapelyError
from shapely.geometry import box, mapping, shape
from shapely.geometry.base import BaseGeometry

from geomesh.config import ProductConfig
from geomesh.crs import crs_from_text, transformer
from geomesh.errors import RasterError, StacError
from geomesh.hashing import parse_multihash, sha256_file
from geomesh.validation.findings import Finding
from geomesh.validation.registry import make_finding

DATA_ASSET: Final = "data"
CRS_FIELDS: Final = ("proj:code", "proj:wkt2", "proj:projjson")
REQUIRED_PROJ: Final = ("proj:geometry", "proj:bbox", "proj:shape", "proj:transform")
REQUIRED_FILE: Final = ("file:checksum", "file:size")
OPTIONAL_FIELDS: Final = ("processing:level", "instruments", "platform")
WGS84: Final = "EPSG:4326"


# --------------------------------------------------------------------------- helpers


def as_dict(value: Any) -> dict[str, Any]:
    """``value`` if it is a JSON object, else an empty dict (schemas report the type)."""
    return value if isinstance(value, dict) else {}


def data_asset_key(doc: Mapping[str, Any]) -> str | None:
    """The asset that holds the raster: ``data``, else the first asset with role ``data``."""
    assets = as_dict(doc.get("assets"))
    if isinstance(assets.get(DATA_ASSET), dict):
        return DATA_ASSET
    for key, asset in assets.items():
        roles = as_dict(asset).get("roles")
        if isinstance(roles, list) and DATA_ASSET in roles:
            return str(key)
    return None


@dataclass(frozen=True)
class FieldRef:
    value: Any
    path: str


def find_field(doc: Mapping[str, Any], name: str, asset_key: str | None) -> FieldRef | None:
    """A field on the item properties, else on the data asset (with its JSON path)."""
    props = as_dict(doc.get("properties"))
    if name in props and props[name] is not None:
        return FieldRef(props[name], f"properties.{name}")
    if asset_key is not None:
        asset = as_dict(as_dict(doc.get("assets")).get(asset_key))
        if name in asset and asset[name] is not None:
            return FieldRef(asset[name], f"assets.{asset_key}.{name}")
    return None


def crs_label(crs: CRS) -> str:
    auth = crs.to_authority(min_confidence=90)
    return f"{auth[0]}:{auth[1]}" if auth else (crs.name or "custom CRS")


def _parse_crs(ref: FieldRef) -> CRS:
    name = ref.path.rsplit(".", 1)[-1]
    if name == "proj:epsg":
        if isinstance(ref.value, bool) or not isinstance(ref.value, int):
            raise CRSError(f"{ref.value!r} is not an EPSG number")
        return crs_from_text(f"EPSG:{ref.value}")
    if name == "proj:projjson":
        if not isinstance(ref.value, dict):
            raise CRSError("proj:projjson is not a JSON object")
        return CRS.from_json_dict(ref.value)
    if not isinstance(ref.value, str):
        raise CRSError(f"{ref.value!r} is not a string")
    return crs_from_text(ref.value)


@lru_cache(maxsize=32)
def _prepared_boundary(wkt: str) -> BaseGeometry:
    geom = shapely.from_wkt(wkt)
    shapely.prepare(geom)
    return geom


def reproject(geom: BaseGeometry, src: CRS, dst: CRS) -> BaseGeometry:
    """``geom`` in ``dst``; edges densified first so curved projected edges stay close."""
    if src.equals(dst, ignore_axis_order=True):
        return geom
    minx, miny, maxx, maxy = geom.bounds
    step = max(maxx - minx, maxy - miny) / 64 or 1.0
    dense = shapely.segmentize(geom, step)
    t = transformer(src, dst)

    def fn(xy: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
        x, y = t.transform(xy[:, 0], xy[:, 1])
        return np.column_stack([x, y])

    return shapely.transform(dense, fn)


# --------------------------------------------------------------------------- raster facts


@dataclass(frozen=True)
class RasterFacts:
    """What the raster file itself says (read once per validation)."""

    path: Path
    crs: CRS | None
    transform: tuple[float, float, float, float, float, float]
    height: int
    width: int
    georeferenced: bool
    block_shape: tuple[int, int]

    @property
    def bounds(self) -> tuple[float, float, float, float]:
        a, b, c, d, e, f = self.transform
        xs = [c, c + a * self.width, c + b * self.height, c + a * self.width + b * self.height]
        ys = [f, f + d * self.width, f + e * self.height, f + d * self.width + e * self.height]
        return (min(xs), min(ys), max(xs), max(ys))

    def footprint(self) -> BaseGeometry:
        return box(*self.bounds)

    def projection_fields(self) -> dict[str, Any]:
        """The proj:* fields derivable from the raster (projection extension v2.0)."""
        out: dict[str, Any] = {
            "proj:shape": [self.height, self.width],
            "proj:transform": [float(v) for v in self.transform],
        }
        if self.crs is not None and self.georeferenced:
            auth = self.crs.to_authority(min_confidence=90)
            if auth:
                out["proj:code"] = f"{auth[0]}:{auth[1]}"
            else:
                out["proj:wkt2"] = self.crs.to_wkt()
            out["proj:bbox"] = [float(v) for v in self.bounds]
            out["proj:geometry"] = mapping(self.footprint())
        return out


def read_raster_facts(path: Path) -> RasterFacts:
    """Open ``path`` with rasterio; raise RasterError naming the file if GDAL cannot."""
    try:
        with warnings.catch_warnings():
            # a missing geotransform is a fact we record, not a warning to show
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            with rasterio.open(path) as src:
                crs = CRS.from_wkt(src.crs.to_wkt()) if src.crs else None
                gcps, gcp_crs = src.gcps
                if crs is None and gcps and gcp_crs:
                    crs = CRS.from_wkt(gcp_crs.to_wkt())
                return raster_facts(
                    path, crs, src.transform, src.height, src.width, src.block_shapes
                )
    except (RasterioIOError, CRSError) as exc:
        raise RasterError(f"{path}: GDAL cannot read the raster ({exc})") from exc


def raster_facts(
    path: Path,
    crs: CRS | None,
    transform: Affine,
    height: int,
    width: int,
    block_shapes: Sequence[Sequence[int]],
) -> RasterFacts:
    """The :class:`RasterFacts` of a header, whoever read it (this module, or an
    inspection whose result the caller passes on in :class:`KnownRaster`)."""
    t = transform
    return RasterFacts(
        path=path,
        crs=crs,
        transform=(t.a, t.b, t.c, t.d, t.e, t.f),
        height=height,
        width=width,
        georeferenced=not t.is_identity,
        block_shape=(int(block_shapes[0][0]), int(block_shapes[0][1])) if block_shapes else (0, 0),
    )


# --------------------------------------------------------------------------- the subject


@dataclass(frozen=True)
class KnownRaster:
    """What the caller computed from the raster's bytes just before validating them: their
    SHA-256 (hex), rio-cogeo's verdict and, when given, the header as its one inspection
    read it. The checksum rule then does not hash the same bytes again, the COG rule does
    not re-run ``cog_validate`` and the raster is not opened again; the findings are the
    same. Only for bytes the caller itself wrote and hashed a moment ago (the validation
    right after staging); the promotion's checksum gate always re-hashes the stored object.
    """

    sha256: str
    cog_errors: tuple[str, ...] = ()
    cog_warnings: tuple[str, ...] = ()
    #: the header facts (their ``path`` is replaced by the subject's raster path)
    facts: RasterFacts | None = None


@dataclass
class Subject:
    """One item under validation: its STAC dict and, when available, its local raster."""

    doc: Mapping[str, Any]
    item_id: str
    config: ProductConfig | None = None
    raster_path: Path | None = None
    #: problems met while locating the raster (e.g. a missing stored object)
    raster_findings: list[Finding] = field(default_factory=list)
    #: how messages name the raster (a storage key or href, never a temporary local path)
    raster_label: str | None = None
    #: the raster's digest and COG verdict, already computed by the caller (or None)
    known: KnownRaster | None = None

    @property
    def raster_name(self) -> str:
        if self.raster_label:
            return self.raster_label
        return self.raster_path.name if self.raster_path is not None else "the raster"

    @cached_property
    def asset_key(self) -> str | None:
        return data_asset_key(self.doc)

    @cached_property
    def raster(self) -> RasterFacts | RasterError | None:
        if self.raster_path is None:
            return None
        if self.known is not None and self.known.facts is not None:
            return replace(self.known.facts, path=self.raster_path)
        try:
            return read_raster_facts(self.raster_path)
        except RasterError as exc:
            return exc

    @property
    def facts(self) -> RasterFacts | None:
        r = self.raster
        return r if isinstance(r, RasterFacts) else None

    @property
    def asset_path(self) -> str:
        return f"assets.{self.asset_key}" if self.asset_key else "assets"

    def field(self, name: str) -> FieldRef | None:
        return find_field(self.doc, name, self.asset_key)

    def crs_ref(self) -> FieldRef | None:
        for name in CRS_FIELDS:
            ref = self.field(name)
            if ref is not None:
                return ref
        return None

    def finding(self, rule_id: str, path: str, message: str, **kw: Any) -> Finding:
        return make_finding(rule_id, item_id=self.item_id, path=path, message=message, **kw)


Check = Callable[[Subject], Iterable[Finding]]


# --------------------------------------------------------------------------- CRS


def check_crs(s: Subject) -> Iterator[Finding]:
    """GM-CRS-001/002/003: a CRS is declared, is current, and matches the raster header."""
    ref = s.crs_ref()
    epsg = s.field("proj:epsg")
    facts = s.facts
    raster_crs = facts.crs if facts is not None else None
    if ref is None and epsg is not None:
        fix = (
            f'replace "proj:epsg": {epsg.value} with "proj:code": "EPSG:{epsg.value}" and list '
            "https://stac-extensions.github.io/projection/v2.0.0/schema.json in stac_extensions"
        )
        yield s.finding(
            "GM-CRS-003",
            epsg.path,
            f"{epsg.path} uses the legacy proj:epsg; projection v2.0 names the CRS in proj:code",
            remediation=fix,
            context={"proj:epsg": epsg.value},
        )
        ref = epsg
    item_crs: CRS | None = None
    if ref is not None:
        try:
            item_crs = _parse_crs(ref)
        except CRSError as exc:
            yield s.finding(
                "GM-CRS-001",
                ref.path,
                f"{ref.path} = {str(ref.value)[:80]!r} is not a CRS pyproj knows ({exc})",
                context={"derivable": raster_crs is not None},
            )
            return
    if facts is not None and raster_crs is None:
        declared = f"; the item says {crs_label(item_crs)}" if item_crs is not None else ""
        yield s.finding(
            "GM-CRS-001",
            f"{s.asset_path}.href",
            f"the raster {s.raster_name} has no CRS in its header{declared}",
            context={"derivable": False, "declared": crs_label(item_crs) if item_crs else None},
        )
        return
    if ref is None:
        if facts is not None and raster_crs is not None:
            yield s.finding(
                "GM-CRS-001",
                "properties.proj:code",
                f"the item declares no CRS (proj:code); the raster header says "
                f"{crs_label(raster_crs)}",
                context={"derivable": True, "field": "proj:code", "value": crs_label(raster_crs)},
            )
        elif s.config is not None:
            yield s.finding(
                "GM-CRS-001",
                "properties.proj:code",
                "the item declares no CRS (proj:code, proj:wkt2 or proj:projjson)",
                context={"derivable": False},
            )
        return
    if item_crs is not None and raster_crs is not None and not _same_crs(item_crs, raster_crs):
        yield s.finding(
            "GM-CRS-002",
            ref.path,
            f"mismatched projection: {ref.path} says {crs_label(item_crs)} but the COG header "
            f"of {s.raster_name} says {crs_label(raster_crs)}",
            context={
                "item_crs": crs_label(item_crs),
                "raster_crs": crs_label(raster_crs),
                "derivable": True,
            },
        )


def _same_crs(a: CRS, b: CRS) -> bool:
    if a.equals(b, ignore_axis_order=True):
        return True
    ea, eb = a.to_epsg(min_confidence=70), b.to_epsg(min_confidence=70)
    return ea is not None and ea == eb


# --------------------------------------------------------------------------- contract


def check_contract(s: Subject) -> Iterator[Finding]:
    """GM-CONTRACT-001/002: the fields the product contract requires or recommends."""
    if s.config is None:
        return
    facts = s.facts
    if s.asset_key is None:
        yield s.finding(
            "GM-CONTRACT-001",
            "assets.data",
            "the item has no data asset (key 'data' or an asset with role 'data')",
        )
    for name in REQUIRED_PROJ:
        if s.field(name) is not None:
            continue
        needs_crs = name in ("proj:geometry", "proj:bbox")
        derivable = facts is not None and facts.georeferenced
        if needs_crs:
            derivable = derivable and facts is not None and facts.crs is not None
        hint = " It is derivable from the raster: run `geomesh remediate`." if derivable else ""
        yield s.finding(
            "GM-CONTRACT-001",
            f"properties.{name}",
            f"{name} is missing from the item properties and its data asset.{hint}",
            context={"derivable": derivable, "field": name},
        )
    for name in REQUIRED_FILE:
        if s.field(name) is None:
            yield s.finding(
                "GM-CONTRACT-001",
                f"{s.asset_path}.{name}",
                f"{name} is missing from the data asset and the item properties",
                context={"derivable": False, "field": name},
            )
    props = as_dict(s.doc.get("properties"))
    has_range = props.get("start_datetime") is not None and props.get("end_datetime") is not None
    if props.get("datetime") is None and not has_range:
        yield s.finding(
            "GM-CONTRACT-001",
            "properties.datetime",
            "the item has neither datetime nor start_datetime and end_datetime",
            remediation="set ingestion.datetime in the product config (or pass --datetime) and "
            "ingest again",
            context={"derivable": False, "field": "datetime"},
        )
    for name in OPTIONAL_FIELDS:
        if props.get(name) in (None, "", []):
            yield s.finding(
                "GM-CONTRACT-002",
                f"properties.{name}",
                f"recommended field {name} is not set",
                context={"field": name},
            )


# --------------------------------------------------------------------------- boundary


def footprint(s: Subject) -> tuple[BaseGeometry, CRS, str] | None:
    """The item footprint and its CRS: the GeoJSON geometry (WGS84, what searches use),
    else proj:geometry in the item's CRS."""
    candidates: list[tuple[Any, Callable[[], CRS], str]] = [
        (s.doc.get("geometry"), lambda: crs_from_text(WGS84), "geometry")
    ]
    proj_geom = s.field("proj:geometry")
    ref = s.crs_ref() or s.field("proj:epsg")
    if proj_geom is not None and ref is not None:
        candidates.append((proj_geom.value, lambda: _parse_crs(ref), proj_geom.path))
    for value, get_crs, path in candidates:
        if not isinstance(value, dict):
            continue
        try:
            geom = shape(value)
            crs = get_crs()
        except (
            ShapelyError,
            ValueError,
            TypeError,
            KeyError,
            AttributeError,
            CRSError,
            OverflowError,  # an integer coordinate no double can hold
        ):
            continue
        if geom.is_empty:
            continue
        if not geom.is_valid:
            geom = shapely.make_valid(geom)
        return geom, crs, path
    return None


def check_boundary(s: Subject) -> Iterator[Finding]:
    """GM-BOUNDARY-001/002: the footprint lies inside the product's spatial domain."""
    if s.config is None:
        return
    fp = footprint(s)
    if fp is None:
        return  # no usable geometry: the schema and contract rules report that
    geom, src_crs, path = fp
    domain = s.config.spatial_domain
    boundary = _prepared_boundary(domain.boundary_wkt)
    projected = reproject(geom, src_crs, domain.pyproj_crs)
    coords = shapely.get_coordinates(projected)
    ctx: dict[str, Any] = {"domain_crs": domain.crs, "footprint": path}
    if coords.size == 0 or not np.isfinite(coords).all():
        yield s.finding(
            "GM-BOUNDARY-001",
            path,
            f"the footprint ({path}) cannot be expressed in the domain CRS {domain.crs}, so it "
            "lies far outside the domain",
            context={**ctx, "overlap_fraction": 0.0, "reclip": True},
        )
        return
    if not shapely.intersects(boundary, projected):
        yield s.finding(
            "GM-BOUNDARY-001",
            path,
            f"the footprint ({path}) does not intersect the domain boundary of product "
            f"{s.config.product_id} ({domain.crs})",
            context={**ctx, "overlap_fraction": 0.0, "reclip": True},
        )
        return
    if shapely.covers(boundary, projected):
        return
    area = projected.area
    fraction = projected.intersection(boundary).area / area if area > 0 else 1.0
    if fraction >= 1.0 - 1e-9:
        return
    yield s.finding(
        "GM-BOUNDARY-002",
        path,
        f"the footprint ({path}) lies partly outside the domain: {fraction:.1%} of it overlaps",
        context={**ctx, "overlap_fraction": round(fraction, 6), "reclip": True},
    )


# --------------------------------------------------------------------------- checksum


def check_checksum(s: Subject) -> Iterator[Finding]:
    """GM-CHECKSUM-001..004: multihash form and function, stored bytes and size."""
    assets = as_dict(s.doc.get("assets"))
    for key, asset in assets.items():
        value = as_dict(asset).get("file:checksum")
        if value is None:
            continue
        path = f"assets.{key}.file:checksum"
        problem = _multihash_problem(value)
        if problem:
            yield s.finding(
                "GM-CHECKSUM-001",
                path,
                f"{path} = {str(value)[:80]!r} {problem}",
            )
    if s.asset_key is None:
        return
    ref = s.field("file:checksum")
    if ref is None:
        return
    digest: str | None = None
    if not _multihash_problem(ref.value):
        try:
            digest = parse_multihash(ref.value)
        except StacError as exc:
            if s.config is not None:
                yield s.finding("GM-CHECKSUM-002", ref.path, f"{ref.path}: {exc}")
    if s.raster_findings:
        yield from s.raster_findings
        return
    if s.raster_path is None:
        return
    if s.known is not None:
        actual, size = s.known.sha256, s.raster_path.stat().st_size
    else:
        actual, size = sha256_file(s.raster_path)
    if digest is not None and digest != actual:
        yield s.finding(
            "GM-CHECKSUM-003",
            ref.path,
            f"the stored bytes of {s.raster_name} hash to sha256 {actual[:16]}…, "
            f"but {ref.path} says {digest[:16]}…",
            context={"expected": digest, "actual": actual},
        )
    size_ref = s.field("file:size")
    if size_ref is not None and size_ref.value != size:
        yield s.finding(
            "GM-CHECKSUM-004",
            size_ref.path,
            f"{size_ref.path} says {size_ref.value!r} bytes but the stored object has {size}",
            context={"expected": size_ref.value, "actual": size},
        )


def _multihash_problem(value: Any) -> str | None:
    """Why ``value`` is not a well-formed multihash (any function), or None."""
    if not isinstance(value, str) or not value:
        return "is not a hex string"
    try:
        raw = bytes.fromhex(value)
    except ValueError:
        return "is not a hex string"
    fn, n = _varint(raw, 0)
    length, n = _varint(raw, n)
    if fn is None or length is None:
        return "is truncated (no function code and digest length)"
    if len(raw) - n != length:
        return f"declares a {length}-byte digest but carries {len(raw) - n} bytes"
    return None


def _varint(raw: bytes, pos: int) -> tuple[int | None, int]:
    value = shift = 0
    while pos < len(raw) and shift < 63:
        b = raw[pos]
        pos += 1
        value |= (b & 0x7F) << shift
        if not b & 0x80:
            return value, pos
        shift += 7
    return None, pos


# --------------------------------------------------------------------------- COG


def check_cog(s: Subject) -> Iterator[Finding]:
    """GM-COG-001..004: rio-cogeo validation and the product's block size."""
    if s.raster_path is None or s.raster_findings:
        return
    raster = s.raster
    href = f"{s.asset_path}.href"
    if isinstance(raster, RasterError):
        yield s.finding(
            "GM-COG-004",
            href,
            f"{s.raster_name} cannot be read as a raster by GDAL",
            context={"error": str(raster)[:300]},
        )
        return
    if s.known is not None:
        errors, warns = list(s.known.cog_errors), list(s.known.cog_warnings)
    else:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            _valid, errors, warns = cog_validate(str(s.raster_path), quiet=True)
    name = s.raster_name
    for msg in errors:
        yield s.finding("GM-COG-001", href, f"{name}: {msg}", context={"cogeo": msg})
    for msg in warns:
        yield s.finding("GM-COG-002", href, f"{name}: {msg}", context={"cogeo": msg})
    if s.config is not None and raster is not None:
        tile = s.config.ingestion.tile_size
        bh, bw = raster.block_shape
        if (bh, bw) != (tile, tile):
            yield s.finding(
                "GM-COG-003",
                href,
                f"{name} has {bw}x{bh} blocks; the product's ingestion.tile_size is {tile}",
                context={"block_shape": [bh, bw], "tile_size": tile},
            )


# --------------------------------------------------------------------------- drift


def check_drift(s: Subject) -> Iterator[Finding]:
    """GM-DRIFT-001: proj:shape, proj:transform and proj:bbox agree with the raster."""
    facts = s.facts
    if facts is None:
        return
    derived = facts.projection_fields()
    for name in ("proj:shape", "proj:transform", "proj:bbox"):
        ref = s.field(name)
        if ref is None or name not in derived:
            continue
        want = derived[name]
        value = _ordered_bbox(ref.value) if name == "proj:bbox" else ref.value
        if not _close(value, want, n=len(want)):
            yield s.finding(
                "GM-DRIFT-001",
                ref.path,
                f"{ref.path} = {_short(ref.value)} but the raster says {_short(want)}",
                context={"derivable": True, "field": name, "item": ref.value, "raster": want},
            )


def _ordered_bbox(value: Any) -> Any:
    """[minx, miny, maxx, maxy] of a 2D bbox written corner-first (south-up rasters)."""
    if (
        isinstance(value, list)
        and len(value) == 4
        and all(isinstance(v, int | float) and not isinstance(v, bool) for v in value)
    ):
        x0, y0, x1, y1 = value
        return [min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1)]
    return value


def _close(value: Any, want: list[float], *, n: int) -> bool:
    if not isinstance(value, list) or len(value) < n:
        return False
    scale = max((abs(w) for w in want), default=1.0) or 1.0
    for v, w in zip(value[:n], want, strict=True):
        if isinstance(v, bool) or not isinstance(v, int | float):
            return False
        if not math.isclose(float(v), float(w), rel_tol=1e-9, abs_tol=1e-9 * scale):
            return False
    return True


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:79] + "…"


# --------------------------------------------------------------------------- the rule table


@dataclass(frozen=True)
class RuleCheck:
    check: Check
    rule_ids: tuple[str, ...]


#: in order of cost: cheap metadata rules first
CHECKS: Final[tuple[RuleCheck, ...]] = (
    RuleCheck(check_contract, ("GM-CONTRACT-001", "GM-CONTRACT-002")),
    RuleCheck(check_crs, ("GM-CRS-001", "GM-CRS-002", "GM-CRS-003")),
    RuleCheck(check_boundary, ("GM-BOUNDARY-001", "GM-BOUNDARY-002")),
    RuleCheck(check_drift, ("GM-DRIFT-001",)),
    RuleCheck(
        check_checksum, ("GM-CHECKSUM-001", "GM-CHECKSUM-002", "GM-CHECKSUM-003", "GM-CHECKSUM-004")
    ),
    RuleCheck(check_cog, ("GM-COG-001", "GM-COG-002", "GM-COG-003", "GM-COG-004")),
)
