"""Offline JSON-Schema validation of STAC documents against a schema store.

The store is a directory laid out by URL path: the schema served at
``https://stac-extensions.github.io/projection/v2.0.0/schema.json`` lives at
``<store>/stac-extensions.github.io/projection/v2.0.0/schema.json``. Resources are
registered under the URL they were retrieved from, never under their declared ``$id``
(the official v1.1.0 ``common.json`` declares a misspelled one). Nothing here touches the
network except :func:`sync_schemas`, which fills the store when asked to.

Validators are compiled once per (store, schema URL) and reused, so validating many items
costs one jsonschema traversal per schema and item.
"""

from __future__ import annotations

import importlib
import json
import re
import threading
import urllib.error
import urllib.request
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from importlib import resources as importlib_resources
from pathlib import Path, PurePosixPath
from typing import Any, Final
from urllib.parse import urldefrag, urljoin, urlsplit

from jsonschema import Draft7Validator
from jsonschema.exceptions import ValidationError as SchemaValidationError
from jsonschema.protocols import Validator
from jsonschema.validators import validator_for
from referencing import Registry, Resource
from referencing.exceptions import NoSuchResource, Unresolvable
from referencing.jsonschema import DRAFT7

from geomesh.errors import ValidationError
from geomesh.storage import atomic_write_bytes
from geomesh.validation.findings import Finding
from geomesh.validation.registry import make_finding

CORE_ITEM_SCHEMA: Final = "https://schemas.stacspec.org/v{version}/item-spec/json-schema/item.json"
CORE_SCHEMAS: Final[dict[str, str]] = {
    "Feature": "https://schemas.stacspec.org/v{version}/item-spec/json-schema/item.json",
    "Collection": "https://schemas.stacspec.org/v{version}/collection-spec/json-schema/collection.json",
    "Catalog": "https://schemas.stacspec.org/v{version}/catalog-spec/json-schema/catalog.json",
}
DEFAULT_STAC_VERSION: Final = "1.1.0"
LEGACY_EXTENSION_SCHEMA: Final = (
    "https://schemas.stacspec.org/v{version}/extensions/{name}/json-schema/schema.json"
)
_PRE_1_0 = re.compile(r"^(0\.|1\.0\.0-)")

#: schemas geomesh's own items reference (filled by `geomesh schemas sync` without arguments)
DEFAULT_SCHEMA_URLS: Final[tuple[str, ...]] = (
    "https://schemas.stacspec.org/v1.1.0/item-spec/json-schema/item.json",
    "https://schemas.stacspec.org/v1.0.0/item-spec/json-schema/item.json",
    "https://stac-extensions.github.io/projection/v2.0.0/schema.json",
    "https://stac-extensions.github.io/file/v2.1.0/schema.json",
    "https://stac-extensions.github.io/raster/v1.1.0/schema.json",
    "https://stac-extensions.github.io/version/v1.2.0/schema.json",
    "https://stac-extensions.github.io/processing/v1.2.0/schema.json",
    "https://stac-extensions.github.io/eo/v2.0.0/schema.json",
    # carried from provider items by `ingest --from-stac`
    "https://stac-extensions.github.io/eo/v1.1.0/schema.json",
    "https://stac-extensions.github.io/sat/v1.0.0/schema.json",
    "https://stac-extensions.github.io/sentinel-2/v1.0.0/schema.json",
)

#: at most this many schema findings per schema and item (the rest are counted)
MAX_ERRORS_PER_SCHEMA: Final = 25
MAX_SCHEMA_BYTES: Final = 4 << 20
_SAFE_PART = re.compile(r"^[A-Za-z0-9._~+=-]{1,200}$")
_VERSION_RE = re.compile(r"^[0-9]+\.[0-9]+\.[0-9]+(-[A-Za-z0-9.]+)?$")

# pystac bundles the core v1.1.0 and GeoJSON schemas: a fallback when the store lacks them
_PYSTAC_PACKAGE: Final = "pystac.validation.jsonschemas"
_PYSTAC_FALLBACK: Final[dict[str, str]] = {
    "https://schemas.stacspec.org/v1.1.0/item-spec/json-schema/": "stac-spec/v1.1.0/",
    "https://schemas.stacspec.org/v1.1.0/collection-spec/json-schema/": "stac-spec/v1.1.0/",
    "https://schemas.stacspec.org/v1.1.0/catalog-spec/json-schema/": "stac-spec/v1.1.0/",
    "https://geojson.org/schema/": "geojson/",
}


# --------------------------------------------------------------------------- the store


def store_path(store: Path, url: str) -> Path | None:
    """Where ``url`` lives in the store, or None if it is not a safe http(s) file URL."""
    parts = urlsplit(urldefrag(url).url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return None
    host = parts.hostname.lower()
    if not _SAFE_PART.match(host):
        return None
    segments = PurePosixPath(parts.path).parts
    names = [s for s in segments if s != "/"]
    if not names or parts.path.endswith("/"):
        return None
    for name in names:
        if name in (".", "..") or not _SAFE_PART.match(name):
            return None
    return store.joinpath(host, *names)


def _pystac_bytes(url: str) -> bytes | None:
    for prefix, rel in _PYSTAC_FALLBACK.items():
        if url.startswith(prefix):
            name = url[len(prefix) :]
            if "/" in name or not _SAFE_PART.match(name):
                return None
            res = importlib_resources.files(_PYSTAC_PACKAGE).joinpath(rel + name)
            if res.is_file():
                return res.read_bytes()
    return None


class _Store:
    """Loaded resources of one store directory, read from disk at most once each."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._resources: dict[str, Resource[Any]] = {}
        self._lock = threading.Lock()

    def load(self, url: str) -> Resource[Any] | None:
        url = urldefrag(url).url
        with self._lock:
            if url in self._resources:
                return self._resources[url]
        raw: bytes | None = None
        path = store_path(self.root, url)
        if path is not None and path.is_file():
            raw = path.read_bytes()
        if raw is None:
            raw = _pystac_bytes(url)
        if raw is None:
            return None  # misses are not cached: `schemas sync` may fill the store later
        try:
            contents = json.loads(raw)
        except ValueError as exc:
            raise ValidationError(
                f"schema {url} in the store ({path}) is not valid JSON ({exc})",
                hint="delete the file and run `geomesh schemas sync` again",
            ) from exc
        if not isinstance(contents, dict):
            raise ValidationError(f"schema {url} in the store ({path}) is not a JSON object")
        # register by the URL it was retrieved from, never by its declared $id
        contents = {**contents, "$id": url}
        resource = Resource.from_contents(contents, default_specification=DRAFT7)
        with self._lock:
            self._resources[url] = resource
        return resource

    def retrieve(self, uri: str) -> Resource[Any]:
        resource = self.load(uri)
        if resource is None:
            raise NoSuchResource(ref=uri)  # type: ignore[call-arg]
        return resource


def _load_accelerator() -> Any:
    """jsonschema-rs, when installed: a compiled validity check ~100x faster than jsonschema.

    It only answers "valid?"; error details always come from jsonschema (below), so both
    paths report the same findings.
    """
    try:
        return importlib.import_module("jsonschema_rs")
    except ImportError:
        return None


_RS: Any = _load_accelerator()


@dataclass
class _Compiled:
    url: str
    validator: Validator
    #: referenced schemas absent from the store (validation may stop when it reaches one)
    missing_refs: tuple[str, ...]
    #: jsonschema-rs validator of the same closure (None without the accelerator)
    fast: Any = None

    def quick_valid(self, doc: Any) -> bool:
        """True when the accelerator says ``doc`` is valid (False: unknown or invalid)."""
        if self.fast is None:
            return False
        try:
            return bool(self.fast.is_valid(doc))
        except (ValueError, TypeError, OverflowError):
            return False  # a value Rust cannot take (e.g. NaN): use the full path


_STORES: dict[str, _Store] = {}
_COMPILED: dict[tuple[str, str], _Compiled] = {}
_CACHE_LOCK = threading.Lock()


def _store(root: Path) -> _Store:
    key = str(root)
    with _CACHE_LOCK:
        st = _STORES.get(key)
        if st is None:
            st = _STORES[key] = _Store(root)
        return st


def clear_cache() -> None:
    """Forget compiled validators and loaded schemas (after the store changed)."""
    with _CACHE_LOCK:
        _STORES.clear()
        _COMPILED.clear()


def _refs(node: Any) -> Iterator[str]:
    stack = [node]
    while stack:
        cur = stack.pop()
        if isinstance(cur, dict):
            ref = cur.get("$ref")
            if isinstance(ref, str):
                yield ref
            stack.extend(cur.values())
        elif isinstance(cur, list):
            stack.extend(cur)


def referenced_urls(url: str, contents: Any) -> set[str]:
    """Absolute URLs (without fragment) of the other documents ``contents`` references."""
    out: set[str] = set()
    for ref in _refs(contents):
        target = urldefrag(urljoin(url, ref)).url
        if target and target != url:
            out.add(target)
    return out


def compiled_validator(store: Path, url: str) -> _Compiled | None:
    """The compiled validator of ``url`` (cached), or None if the schema is not in the store."""
    url = urldefrag(url).url
    key = (str(store), url)
    with _CACHE_LOCK:
        hit = _COMPILED.get(key)
    if hit is not None:
        return hit
    st = _store(store)
    root = st.load(url)
    if root is None:
        return None
    # preload the closure of referenced documents so validation never re-resolves
    loaded: dict[str, Resource[Any]] = {url: root}
    missing: set[str] = set()
    todo = list(referenced_urls(url, root.contents))
    while todo:
        ref = todo.pop()
        if ref in loaded or ref in missing:
            continue
        res = st.load(ref)
        if res is None:
            missing.add(ref)
            continue
        loaded[ref] = res
        todo.extend(referenced_urls(ref, res.contents))
    registry: Registry[Any] = Registry(retrieve=st.retrieve)  # type: ignore[call-arg]
    registry = registry.with_resources(loaded.items())
    registry = registry.crawl()
    cls = validator_for(root.contents, default=Draft7Validator)
    validator = cls(root.contents, registry=registry)
    comp = _Compiled(
        url=url,
        validator=validator,
        missing_refs=tuple(sorted(missing)),
        fast=_fast_validator(url, loaded, missing),
    )
    with _CACHE_LOCK:
        _COMPILED[key] = comp
    return comp


def _no_retrieval(uri: str) -> Any:
    raise ValueError(f"{uri} is not in the offline schema store")


def _fast_validator(url: str, loaded: Mapping[str, Resource[Any]], missing: set[str]) -> Any:
    if _RS is None:
        return None
    # a missing schema rejects everything, so reaching it sends the item to the full path,
    # which reports it as unavailable offline
    docs: list[tuple[str, Any]] = [(u, r.contents) for u, r in loaded.items()]
    docs += [(m, False) for m in sorted(missing)]
    registry = _RS.Registry(docs, retriever=_no_retrieval)
    return _RS.validator_for(
        loaded[url].contents, registry=registry, validate_formats=False, offline=True
    )


# --------------------------------------------------------------------------- error messages


def json_path(parts: Iterable[str | int]) -> str:
    """``properties.proj:code``, ``assets.B01.href``, ``bbox[2]``."""
    out = ""
    for p in parts:
        if isinstance(p, int):
            out += f"[{p}]"
        else:
            out += f".{p}" if out else str(p)
    return out


def _short(value: Any, limit: int = 60) -> str:
    text = json.dumps(value, default=str, ensure_ascii=False)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__


#: STAC fields forbidden by an if/then/else whose generic wording says nothing useful
_KNOWN_FORBIDDEN: Final[dict[str, str]] = {
    "collection": "'collection' is set but no link has rel 'collection'; "
    "add that link or remove the field",
}


def _describe(err: SchemaValidationError) -> list[tuple[list[str | int], str]]:
    """(JSON path, plain message) pairs for one leaf error."""
    path: list[str | int] = list(err.absolute_path)
    kw = err.validator
    val = err.validator_value
    inst = err.instance
    if kw == "required" and isinstance(inst, dict) and isinstance(val, list):
        missing = [k for k in val if isinstance(k, str) and k not in inst]
        return [([*path, k], "required field is missing") for k in missing]
    if kw == "type":
        want = " or ".join(val) if isinstance(val, list) else str(val)
        return [(path, f"must be {want}, not {_json_type(inst)}")]
    if kw == "const":
        return [(path, f"must be {_short(val)}, not {_short(inst)}")]
    if kw == "enum":
        return [(path, f"{_short(inst)} is not one of {_short(val, 120)}")]
    if kw == "pattern":
        return [(path, f"{_short(inst)} does not match the pattern {val}")]
    if kw in ("minItems", "maxItems") and isinstance(inst, list):
        word = "at least" if kw == "minItems" else "at most"
        return [(path, f"must have {word} {val} items, has {len(inst)}")]
    if kw in ("minLength", "maxLength") and isinstance(inst, str):
        word = "at least" if kw == "minLength" else "at most"
        return [(path, f"must have {word} {val} characters, has {len(inst)}")]
    if kw in ("minProperties", "maxProperties") and isinstance(inst, dict):
        word = "at least" if kw == "minProperties" else "at most"
        return [(path, f"must have {word} {val} fields, has {len(inst)}")]
    if kw in ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"):
        op = {"minimum": ">=", "maximum": "<=", "exclusiveMinimum": ">", "exclusiveMaximum": "<"}
        return [(path, f"must be {op[kw]} {val}, is {_short(inst)}")]
    if kw == "additionalProperties" and isinstance(inst, dict):
        return [(path, err.message)]
    if kw == "uniqueItems":
        return [(path, "items must be unique")]
    if kw == "contains":
        return [(path, "contains no entry matching the schema")]
    if kw == "not" and isinstance(val, dict):
        req = val.get("required")
        if isinstance(req, list) and len(req) == 1 and isinstance(req[0], str):
            name = req[0]
            return [([*path, name], _KNOWN_FORBIDDEN.get(name, "must not be present here"))]
        if val == {}:
            name = path[-1] if path and isinstance(path[-1], str) else ""
            return [(path, _KNOWN_FORBIDDEN.get(name, "must not be present here"))]
        if set(val) == {"type"} and isinstance(val["type"], str):
            return [(path, f"must not be {val['type']}")]
        return [(path, f"must not match {_short(val)}")]
    if kw == "oneOf" and not err.context:
        return [(path, "matches more than one of the allowed forms")]
    if kw in ("anyOf", "oneOf"):
        return [(path, "matches none of the allowed forms")]
    if kw == "format":
        return [(path, f"{_short(inst)} is not a valid {val}")]
    return [(path, f"fails the schema's {kw!r} rule")]


def _is_discriminator(err: SchemaValidationError) -> bool:
    """An error that says the instance is simply not the kind this branch describes."""
    rel = list(err.relative_path)
    if err.validator == "type" and not rel:
        return True
    return err.validator in ("const", "enum") and rel == ["type"]


def _leaves(err: SchemaValidationError) -> Iterator[SchemaValidationError]:
    """Collapse oneOf/anyOf noise: descend into the branch that came closest to matching."""
    if err.validator not in ("oneOf", "anyOf") or not err.context:
        yield err
        return
    branches: dict[Any, list[SchemaValidationError]] = defaultdict(list)
    for sub in err.context:
        branches[sub.relative_schema_path[0] if sub.relative_schema_path else 0].append(sub)

    def score(errs: list[SchemaValidationError]) -> tuple[int, int, int]:
        discriminated = any(_is_discriminator(e) for e in errs)
        depth = max(len(e.absolute_path) for e in errs)
        return (int(discriminated), len(errs), -depth)

    best = min(branches.values(), key=score)
    if all(_is_discriminator(e) for e in best):
        # no branch is the right kind: the plainest statement is the oneOf failure itself
        yield err
        return
    for sub in best:
        yield from _leaves(sub)


def describe_errors(errors: Iterable[SchemaValidationError]) -> list[tuple[str, str]]:
    """Plain (path, message) pairs, de-duplicated, in a stable order."""
    seen: set[tuple[str, str]] = set()
    out: list[tuple[str, str]] = []
    for err in errors:
        for leaf in _leaves(err):
            for parts, msg in _describe(leaf):
                pair = (json_path(parts), msg)
                if pair not in seen:
                    seen.add(pair)
                    out.append(pair)
    return out


# --------------------------------------------------------------------------- item checks


@dataclass(frozen=True)
class SchemaTarget:
    url: str
    rule_id: str  # GM-SCHEMA-001 core | GM-SCHEMA-002 extension
    label: str


def schema_targets(
    doc: Mapping[str, Any], *, item_id: str = ""
) -> tuple[list[SchemaTarget], list[Finding]]:
    """The schemas ``doc`` must satisfy, and findings for unusable declarations."""
    targets: list[SchemaTarget] = []
    problems: list[Finding] = []
    kind = doc.get("type")
    version = doc.get("stac_version")
    if not isinstance(version, str) or not _VERSION_RE.match(version):
        version = DEFAULT_STAC_VERSION  # the core schema reports the bad/missing field
    template = CORE_SCHEMAS.get(kind if isinstance(kind, str) else "Feature")
    if template is None:
        template = CORE_SCHEMAS["Feature"]
    targets.append(
        SchemaTarget(template.format(version=version), "GM-SCHEMA-001", f"STAC {version} core")
    )
    exts = doc.get("stac_extensions")
    if isinstance(exts, list):
        for i, ext in enumerate(exts):
            if isinstance(ext, str) and ext.startswith(("http://", "https://")):
                targets.append(SchemaTarget(ext, "GM-SCHEMA-002", ext))
            elif isinstance(ext, str) and _PRE_1_0.match(version) and _SAFE_PART.match(ext):
                # before STAC 1.0.0, extensions were listed by short name
                url = LEGACY_EXTENSION_SCHEMA.format(version=version, name=ext)
                targets.append(SchemaTarget(url, "GM-SCHEMA-002", f"{ext} ({url})"))
            elif isinstance(ext, str):
                problems.append(
                    make_finding(
                        "GM-SCHEMA-003",
                        item_id=item_id,
                        path=f"stac_extensions[{i}]",
                        message=f"extension {ext!r} is not a schema URL, so it cannot be checked",
                        remediation="list extensions by their schema URL, e.g. "
                        "https://stac-extensions.github.io/projection/v2.0.0/schema.json",
                    )
                )
    return targets, problems


def check_schemas(
    doc: Mapping[str, Any], *, item_id: str, store: Path, accelerate: bool = True
) -> list[Finding]:
    """Validate ``doc`` against its core schema and every listed extension, offline.

    ``accelerate=False`` skips the jsonschema-rs validity check (same findings, slower).
    """
    targets, findings = schema_targets(doc, item_id=item_id)
    reported: set[tuple[str, str]] = set()  # extensions often repeat core errors: say it once
    for target in targets:
        comp = compiled_validator(store, target.url)
        if comp is None:
            findings.append(
                make_finding(
                    "GM-SCHEMA-003",
                    item_id=item_id,
                    path="stac_extensions" if target.rule_id == "GM-SCHEMA-002" else "stac_version",
                    message=f"schema unavailable offline: {target.url} is not in the schema "
                    f"store {store}; the item was not checked against it",
                    context={"schema": target.url, "store": str(store)},
                )
            )
            continue
        if accelerate and comp.quick_valid(doc):
            continue
        errors: list[SchemaValidationError] = []
        unresolved: str | None = None
        try:
            for err in comp.validator.iter_errors(doc):
                errors.append(err)
        except Unresolvable as exc:
            unresolved = str(getattr(exc, "ref", "") or exc)
        pairs = [p for p in describe_errors(errors) if p not in reported]
        reported.update(pairs)
        for path, msg in pairs[:MAX_ERRORS_PER_SCHEMA]:
            where = "STAC core" if target.rule_id == "GM-SCHEMA-001" else target.url
            findings.append(
                make_finding(
                    target.rule_id,
                    item_id=item_id,
                    path=path,
                    message=f"{path or 'item'}: {msg} ({where})",
                    context={"schema": target.url},
                )
            )
        if len(pairs) > MAX_ERRORS_PER_SCHEMA:
            findings.append(
                make_finding(
                    target.rule_id,
                    item_id=item_id,
                    path="",
                    message=f"{len(pairs) - MAX_ERRORS_PER_SCHEMA} more schema errors against "
                    f"{target.url} were not listed",
                    context={"schema": target.url, "omitted": len(pairs) - MAX_ERRORS_PER_SCHEMA},
                )
            )
        if unresolved is not None:
            findings.append(
                make_finding(
                    "GM-SCHEMA-003",
                    item_id=item_id,
                    path="",
                    message=f"schema unavailable offline: {target.url} references {unresolved}, "
                    "which is not in the schema store; that part was not checked",
                    context={"schema": unresolved, "store": str(store)},
                )
            )
    return findings


# --------------------------------------------------------------------------- sync


@dataclass
class SyncReport:
    fetched: list[str] = field(default_factory=list)
    present: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"fetched": self.fetched, "present": self.present, "failed": self.failed}


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


def _fetch(url: str, *, timeout: float, max_bytes: int) -> bytes:
    opener = urllib.request.build_opener(_NoRedirect)
    req = urllib.request.Request(
        url, headers={"Accept": "application/schema+json, application/json"}
    )
    with opener.open(req, timeout=timeout) as resp:
        data: bytes = resp.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise ValueError(f"larger than {max_bytes} bytes")
    return data


def mirror_url(url: str, mirror: str | None) -> str:
    """The URL to download ``url`` from: itself, or ``<mirror>/<host>/<path>``."""
    if not mirror:
        return url
    parts = urlsplit(url)
    return f"{mirror.rstrip('/')}/{parts.hostname}{parts.path}"


def sync_schemas(
    store: Path,
    urls: Iterable[str],
    *,
    mirror: str | None = None,
    timeout: float = 5.0,
    fetch: Callable[[str], bytes] | None = None,
) -> SyncReport:
    """Download the schemas at ``urls`` and everything they reference into ``store``.

    Schemas already in the store are kept. ``mirror`` (e.g. an internal HTTP server laid
    out like the store) replaces the origin; each request times out after ``timeout`` s.
    """
    get = fetch or (lambda u: _fetch(u, timeout=timeout, max_bytes=MAX_SCHEMA_BYTES))
    report = SyncReport()
    todo = [urldefrag(u).url for u in urls]
    seen: set[str] = set()
    while todo:
        url = todo.pop(0)
        if url in seen:
            continue
        seen.add(url)
        path = store_path(store, url)
        if path is None:
            report.failed[url] = "not an http(s) URL of a file"
            continue
        if path.is_file():
            report.present.append(url)
            raw = path.read_bytes()
        else:
            src = mirror_url(url, mirror)
            try:
                raw = get(src)
            except (urllib.error.URLError, TimeoutError, OSError, ValueError) as exc:
                report.failed[url] = f"download from {src} failed: {exc}"
                continue
        try:
            contents = json.loads(raw)
        except ValueError as exc:
            report.failed[url] = f"not JSON: {exc}"
            continue
        if not isinstance(contents, dict):
            report.failed[url] = "not a JSON object"
            continue
        if not path.is_file():
            atomic_write_bytes(path, raw)
            report.fetched.append(url)
        todo.extend(sorted(referenced_urls(url, contents) - seen))
    clear_cache()
    return report


def extension_urls(docs: Iterable[Mapping[str, Any]]) -> list[str]:
    """Core and extension schema URLs the given STAC documents need."""
    urls: dict[str, None] = {}
    for doc in docs:
        targets, _ = schema_targets(doc)
        for t in targets:
            urls.setdefault(t.url)
    return list(urls)
