"""The product config: a declarative YAML contract for one domain-scoped data product.

``load_config(path)`` returns a typed, validated :class:`ProductConfig` or raises
:class:`~geomesh.errors.ConfigError` naming the file, the key path and what is allowed.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import re
from functools import cached_property
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit, urlunsplit

import shapely
import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    field_serializer,
    field_validator,
    model_validator,
)
from pydantic import ValidationError as PydanticValidationError
from pyproj import CRS
from pyproj.exceptions import CRSError
from shapely import wkt as shapely_wkt
from shapely.errors import ShapelyError
from shapely.geometry.base import BaseGeometry
from shapely.validation import explain_validity

from geomesh.errors import ConfigError
from geomesh.redact import redact_url

Severity = Literal["P1", "P2", "P3"]
LifecycleStage = Literal["staging", "validation", "production"]
ALL_SEVERITIES: tuple[Severity, ...] = ("P1", "P2", "P3")

#: Resampling methods GDAL supports both for warping and for building overviews.
RESAMPLING_METHODS = (
    "nearest",
    "bilinear",
    "cubic",
    "cubic_spline",
    "lanczos",
    "average",
    "mode",
    "gauss",
    "rms",
)
MAX_CONFIG_BYTES = 1 << 20
MAX_WKT_CHARS = 2_000_000
MAX_WKT_VERTICES = 200_000
PRODUCT_ID_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,127}$")


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SpatialDomain(_Section):
    crs: str = Field(description="CRS of the domain, e.g. 'EPSG:4326' or 'EPSG:32610'.")
    boundary_wkt: str = Field(description="Domain boundary as WKT POLYGON/MULTIPOLYGON in `crs`.")

    @field_validator("crs")
    @classmethod
    def _known_crs(cls, value: str) -> str:
        try:
            CRS.from_user_input(value)
        except CRSError as exc:
            raise ValueError(
                f"unknown CRS {value!r}; use an authority code such as 'EPSG:4326' or 'EPSG:32610'"
            ) from exc
        return value

    @field_validator("boundary_wkt")
    @classmethod
    def _valid_wkt(cls, value: str) -> str:
        parse_boundary(value)
        return value

    @cached_property
    def boundary(self) -> BaseGeometry:
        """The boundary geometry in the domain CRS."""
        return parse_boundary(self.boundary_wkt)

    @cached_property
    def pyproj_crs(self) -> CRS:
        return CRS.from_user_input(self.crs)


def parse_boundary(value: str) -> BaseGeometry:
    """Parse and check a boundary WKT; raise ``ValueError`` with a plain reason."""
    if len(value) > MAX_WKT_CHARS:
        raise ValueError(
            f"boundary WKT is {len(value)} characters (limit {MAX_WKT_CHARS}); simplify the polygon"
        )
    if not value.strip():
        raise ValueError("boundary WKT is empty; give a POLYGON or MULTIPOLYGON")
    try:
        geom = shapely_wkt.loads(value)
    except (ShapelyError, ValueError, TypeError) as exc:
        raise ValueError(f"boundary WKT does not parse ({exc}); check brackets and commas") from exc
    if geom.is_empty:
        raise ValueError("boundary WKT is an empty geometry; give a POLYGON with an area")
    if geom.geom_type not in ("Polygon", "MultiPolygon"):
        raise ValueError(f"boundary WKT is a {geom.geom_type}; a POLYGON or MULTIPOLYGON is needed")
    if shapely.get_num_coordinates(geom) > MAX_WKT_VERTICES:
        raise ValueError(
            f"boundary has more than {MAX_WKT_VERTICES} vertices; simplify it before use"
        )
    if not geom.is_valid:
        raise ValueError(
            f"boundary WKT is not a valid polygon ({explain_validity(geom)}); "
            "fix self-intersections, e.g. with shapely.make_valid"
        )
    if geom.area <= 0:
        raise ValueError("boundary WKT has zero area")
    return geom


class ProductMetadata(_Section):
    product_id: str = Field(description="Lower-case id: letters, digits, '.', '_' and '-'.")
    version_strategy: Literal["semantic"] = "semantic"
    lifecycle_stage: LifecycleStage = "staging"
    title: str | None = None
    description: str | None = None
    platform: str | None = Field(default=None, description="e.g. 'sentinel-2a'")
    instruments: list[str] | None = Field(default=None, description="e.g. ['msi']")
    constellation: str | None = None
    processing_level: str | None = Field(default=None, description="e.g. 'L2A'")
    license: str = "proprietary"

    @field_validator("product_id")
    @classmethod
    def _product_id(cls, value: str) -> str:
        if not PRODUCT_ID_RE.match(value):
            raise ValueError(
                f"{value!r} is not a valid product id; use lower-case letters, digits, '.', '_' "
                "and '-' (at most 128 characters), starting with a letter or digit"
            )
        return value


InputDriver = Literal["GTiff", "JP2OpenJPEG"]


def _default_input_drivers() -> list[InputDriver]:
    return ["GTiff"]


class Ingestion(_Section):
    tile_size: int = Field(default=256, description="COG block size: a power of two >= 64.")
    resampling: str = Field(default="bilinear", description="GDAL resampling method.")
    output_format: Literal["cloud-optimized-geotiff"] = "cloud-optimized-geotiff"
    checksum_algorithm: Literal["sha256"] = "sha256"
    clip: bool = Field(
        default=False, description="Warp to the domain CRS and clip to its envelope."
    )
    compression: Literal["DEFLATE", "LZW", "ZSTD"] = "DEFLATE"
    datetime: dt.datetime | None = Field(
        default=None, description="Acquisition datetime when the raster does not carry one."
    )
    input_drivers: list[InputDriver] = Field(
        default_factory=_default_input_drivers,
        min_length=1,
        description="GDAL drivers allowed to open this product's input rasters (GTiff reads "
        "COGs; JP2OpenJPEG only when the product asks for it). VRT is never allowed here.",
    )
    max_pixels: int = Field(
        default=500_000_000,
        ge=1,
        le=10**10,
        description="Largest width x height x bands a source (or its clipped grid) may declare.",
    )
    max_decompressed_mb: int = Field(
        default=2048,
        ge=1,
        le=1 << 20,
        description="Largest decompressed size (MiB) of a source or of the COG it becomes.",
    )

    @field_validator("tile_size")
    @classmethod
    def _tile_size(cls, value: int) -> int:
        if value < 64 or value & (value - 1):
            raise ValueError(f"{value} is not a power of two >= 64; use 64, 128, 256, 512 or 1024")
        if value > 4096:
            raise ValueError(f"{value} is larger than 4096; use 64, 128, 256, 512 or 1024")
        return value

    @field_validator("resampling")
    @classmethod
    def _resampling(cls, value: str) -> str:
        if value not in RESAMPLING_METHODS:
            raise ValueError(
                f"{value!r} is not a GDAL resampling method; allowed: {', '.join(RESAMPLING_METHODS)}"
            )
        return value


class Storage(_Section):
    root: Path | None = Field(default=None, description="Storage root (default ./geomesh-data).")
    database_url: str | None = Field(default=None, description="SQLAlchemy database URL.")

    @field_serializer("database_url", when_used="json")
    def _without_password(self, value: str | None) -> str | None:
        """The stored/exported config never carries the database password."""
        return redact_password(value) if value else value


def redact_password(url: str) -> str:
    """``scheme://user:***@host/db``: the URL with its password (if any) masked."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.netloc.rsplit("@", 1)[1]
    return urlunsplit(parts._replace(netloc=f"{parts.username or ''}:***@{host}"))


EscalationKind = Literal["generic", "slack", "jira"]
#: Jira priority names per severity (``jira_priorities`` overrides them per target)
DEFAULT_JIRA_PRIORITIES: dict[Severity, str] = {"P1": "Highest", "P2": "High", "P3": "Medium"}


class EscalationTarget(_Section):
    name: str
    url: str = Field(description="Webhook URL (http:// or https://).")
    kind: EscalationKind = Field(
        default="generic",
        description="generic: the signed geomesh JSON envelope; slack: a Slack incoming-webhook "
        "message (text + blocks); jira: a Jira REST v2 create-issue body.",
    )
    url_env: str | None = Field(
        default=None,
        description="Environment variable holding the URL to post to, for URLs that are "
        "themselves the credential (Slack incoming webhooks); `url` then only names it.",
    )
    jira_project: str | None = Field(
        default=None, description="kind jira: the project key issues are created in."
    )
    jira_issue_type: str = Field(default="Task", description="kind jira: the issue type name.")
    jira_priorities: dict[Severity, str] = Field(
        default_factory=lambda: dict(DEFAULT_JIRA_PRIORITIES),
        description="kind jira: the priority name of each severity.",
    )
    severities: list[Severity] = Field(default_factory=lambda: list(ALL_SEVERITIES))
    events: list[str] = Field(
        default_factory=lambda: ["finding", "signoff_requested", "signoff_decided"],
        description="Which events this target receives.",
    )
    secret: SecretStr | None = Field(default=None, description="HMAC secret (prefer secret_env).")
    secret_env: str | None = Field(
        default=None, description="Environment variable holding the secret."
    )

    @field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError(f"{value!r} is not an http:// or https:// URL")
        return value

    @field_serializer("url", when_used="json")
    def _url_without_secrets(self, value: str) -> str:
        """The stored/exported config never carries a token or password of the URL."""
        return redact_url(value)

    @model_validator(mode="after")
    def _kind_needs(self) -> EscalationTarget:
        if self.kind == "jira" and not self.jira_project:
            raise ValueError(f"escalation target {self.name!r} of kind jira needs jira_project")
        return self


class Governance(_Section):
    approvals_required: int = Field(default=1, ge=1, le=10)
    escalation: list[EscalationTarget] = Field(default_factory=list)
    webhook_max_attempts: int = Field(default=5, ge=1, le=20)


RouteAction = Literal["warn", "quarantine", "rollback"]
DEFAULT_ROUTING: dict[Severity, RouteAction] = {"P1": "rollback", "P2": "quarantine", "P3": "warn"}


class Validation(_Section):
    severity_overrides: dict[str, Severity] = Field(default_factory=dict)
    disabled_rules: list[str] = Field(default_factory=list)
    strict: bool = False
    routing: dict[Severity, RouteAction] = Field(default_factory=lambda: dict(DEFAULT_ROUTING))


class Source(_Section):
    """Where `geomesh discover` / `ingest --from-stac` find scenes (issue 6)."""

    url: str
    collection: str
    assets: list[str] = Field(min_length=1)
    datetime: str | None = Field(
        default=None, description="RFC 3339 interval, e.g. 2024-01-01/2024-12-31"
    )
    max_cloud_cover: float | None = Field(default=None, ge=0, le=100)
    query: dict[str, Any] | None = None
    filter: dict[str, Any] | None = None
    limit: int = Field(default=100, ge=1, le=10_000)


class ProductConfig(_Section):
    spatial_domain: SpatialDomain
    product_metadata: ProductMetadata
    ingestion: Ingestion = Field(default_factory=Ingestion)
    storage: Storage = Field(default_factory=Storage)
    governance: Governance = Field(default_factory=Governance)
    validation: Validation = Field(default_factory=Validation)
    source: Source | None = None

    @property
    def product_id(self) -> str:
        return self.product_metadata.product_id

    def to_json_dict(self) -> dict[str, Any]:
        """A JSON-safe dict of the config, with secrets masked."""
        return self.model_dump(mode="json")

    def spatial_contract(self) -> dict[str, str]:
        """The part of the contract whose change is a MAJOR version bump."""
        return {"crs": self.spatial_domain.crs, "boundary_wkt": self.spatial_domain.boundary_wkt}

    def digest(self) -> str:
        """SHA-256 of the canonical JSON of the config (secrets masked)."""
        data = json.dumps(self.to_json_dict(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(data.encode()).hexdigest()


# ---------------------------------------------------------------------------------------
# loading


class _NoAliasLoader(yaml.SafeLoader):
    """A safe loader that refuses anchors/aliases (no alias bombs) and duplicate keys."""

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()  # type: ignore[no-untyped-call]
            raise ConfigError(
                f"YAML alias '*{event.anchor}' at line {event.start_mark.line + 1}: "
                "anchors and aliases are not allowed in product configs; write the value out"
            )
        return super().compose_node(parent, index)

    def construct_mapping(self, node: Any, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise ConfigError(
                    f"duplicate key {key!r} at line {key_node.start_mark.line + 1}; keep one"
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


_NoAliasLoader.add_constructor(
    yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _NoAliasLoader.construct_mapping
)


def _model_at(loc: tuple[int | str, ...]) -> type[BaseModel] | None:
    """The pydantic model a location points into (for listing allowed keys)."""
    model: type[BaseModel] | None = ProductConfig
    for part in loc:
        if model is None or not isinstance(part, str) or part not in model.model_fields:
            return None
        annotation = model.model_fields[part].annotation
        candidates = [annotation, *getattr(annotation, "__args__", ())]
        model = next(
            (c for c in candidates if isinstance(c, type) and issubclass(c, BaseModel)), None
        )
    return model


def _describe(err: Any, source: str) -> str:
    loc: tuple[int | str, ...] = tuple(err["loc"])
    path = ".".join(str(p) for p in loc) or "<root>"
    if err["type"] == "extra_forbidden":
        parent = _model_at(loc[:-1])
        allowed = ", ".join(parent.model_fields) if parent else "see docs"
        return f"{source}: {path}: unknown key; allowed keys here: {allowed}"
    if err["type"] == "missing":
        return f"{source}: {path}: required key is missing"
    msg = str(err["msg"]).removeprefix("Value error, ")
    return f"{source}: {path}: {msg}"


def parse_config(data: Any, *, source: str = "<config>") -> ProductConfig:
    """Validate an already-parsed mapping as a product config."""
    if not isinstance(data, dict):
        raise ConfigError(
            f"{source}: the config must be a YAML mapping with spatial_domain and "
            f"product_metadata sections, not {type(data).__name__}"
        )
    try:
        return ProductConfig.model_validate(data)
    except PydanticValidationError as exc:
        lines = [_describe(err, source) for err in exc.errors()]
        raise ConfigError("\n".join(lines)) from exc


def loads_config(text: str, *, source: str = "<config>") -> ProductConfig:
    try:
        data = yaml.load(text, Loader=_NoAliasLoader)
    except ConfigError as exc:
        raise ConfigError(f"{source}: {exc.message}") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"{source}: not valid YAML: {exc}") from exc
    except RecursionError:
        raise ConfigError(f"{source}: YAML is nested too deeply to be a product config") from None
    return parse_config(data, source=source)


def load_config(path: str | Path) -> ProductConfig:
    """Load and validate a product config file."""
    p = Path(path)
    try:
        size = p.stat().st_size
    except OSError as exc:
        raise ConfigError(f"{p}: cannot read the config file ({exc.strerror})") from exc
    if size > MAX_CONFIG_BYTES:
        raise ConfigError(f"{p}: config file is {size} bytes; the limit is {MAX_CONFIG_BYTES}")
    raw = p.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"{p}: not UTF-8 text (bad byte at offset {exc.start}); save the file as UTF-8"
        ) from exc
    return loads_config(text, source=str(p))
