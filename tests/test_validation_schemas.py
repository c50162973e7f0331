"""Offline schema validation: real STAC items, plain error messages, the schema store, sync.

The store is ../shared/stac-schemas (laid out by URL path). Nothing here reaches the
internet; `schemas sync` runs against a loopback HTTP server.
"""

from __future__ import annotations

import http.server
import json
import shutil
import socket
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from geomesh.models import Severity
from geomesh.validation import schemas as schemas_mod
from geomesh.validation.engine import load_document, validate_document, validate_file
from geomesh.validation.findings import Finding
from geomesh.validation.schemas import check_schemas, clear_cache, sync_schemas

ITEMS = "data/stac-items"
EARTH_SEARCH = [
    "earth-search-v1/sentinel-2-c1-l2a/S2B_T24MUV_20250731T130245_L2A.json",
    "earth-search-v1/sentinel-2-l2a/S2A_13TDE_20231008_0_L2A.json",
]
PLANETARY = (
    "planetary-computer/sentinel-2-l2a/S2A_MSIL2A_20190101T000001_R116_T58UFE_20201007T214651.json"
)
VALID = [
    *EARTH_SEARCH,
    PLANETARY,
    "stac-spec-examples/v1.0.0/collectionless-item.json",
    "stac-spec-examples/v1.0.0/core-item.json",
    "stac-spec-examples/v1.0.0/extended-item.json",
    "stac-spec-examples/v1.0.0/simple-item.json",
    "stac-spec-examples/v1.1.0/core-item.json",
    "stac-spec-examples/v1.1.0/extended-item.json",
    "stac-spec-examples/v1.1.0/simple-item.json",
    "best-practice-violations/stac-check/1.0.0/core-item-bad-links.json",
    "best-practice-violations/stac-check/1.0.0/core-item-null-datetime.json",
    "best-practice-violations/stac-check/1.0.0/core-item-unlocated-null-bbox.json",
]


@pytest.fixture
def item_file(shared_dir: Path) -> Callable[[str], Path]:
    def get(rel: str) -> Path:
        p = shared_dir / ITEMS / rel
        assert p.is_file(), p
        return p

    return get


def load(path: Path) -> dict[str, Any]:
    data = json.loads(path.read_text())
    assert isinstance(data, dict)
    return data


def by_rule(findings: list[Finding], rule_id: str) -> list[Finding]:
    return [f for f in findings if f.rule_id == rule_id]


# ------------------------------------------------------------------ real items


@pytest.mark.parametrize("rel", VALID)
def test_valid_real_items_have_no_p1_or_p2(
    item_file: Callable[[str], Path], schema_dir: Path, rel: str
) -> None:
    result = validate_file(item_file(rel), schema_dir=schema_dir)
    assert [f for f in result.findings if f.severity is not Severity.P3] == []
    # every schema they list is in the store: nothing was skipped
    assert by_rule(result.findings, "GM-SCHEMA-003") == []


@pytest.mark.parametrize("rel", [*EARTH_SEARCH, PLANETARY])
def test_sentinel2_items_get_only_the_legacy_epsg_advice(
    item_file: Callable[[str], Path], schema_dir: Path, rel: str
) -> None:
    result = validate_file(item_file(rel), schema_dir=schema_dir)
    assert [(f.rule_id, f.path) for f in result.findings] == [
        ("GM-CRS-003", "properties.proj:epsg")
    ]


def test_titiler_item_collection_without_link(
    item_file: Callable[[str], Path], schema_dir: Path
) -> None:
    result = validate_file(
        item_file("titiler/S2A_34SGA_20200318_0_L2A.item.json"), schema_dir=schema_dir
    )
    (f,) = result.findings
    assert (f.rule_id, f.severity, f.path) == ("GM-SCHEMA-001", Severity.P2, "collection")
    assert "rel 'collection'" in f.message


def test_fields_subset_item_misses_geometry_links_assets(
    item_file: Callable[[str], Path], schema_dir: Path
) -> None:
    rel = "earth-search-v1/sentinel-2-c1-l2a/S2A_T13TDE_20250711T175745_L2A.fields-subset.json"
    result = validate_file(item_file(rel), schema_dir=schema_dir)
    assert {(f.rule_id, f.path) for f in result.findings} == {
        ("GM-SCHEMA-001", "geometry"),
        ("GM-SCHEMA-001", "links"),
        ("GM-SCHEMA-001", "assets"),
    }
    assert all("required field is missing" in f.message for f in result.findings)


def test_invalid_item_without_id(item_file: Callable[[str], Path], schema_dir: Path) -> None:
    result = validate_file(
        item_file("invalid/stac-validator/v100/bad-item.json"), schema_dir=schema_dir
    )
    assert [(f.rule_id, f.path) for f in result.findings] == [("GM-SCHEMA-001", "id")]
    assert result.item_id == "bad-item"  # no id: the file name stands in


def test_beta2_item_short_extension_names_and_unknown_extension(
    item_file: Callable[[str], Path], schema_dir: Path
) -> None:
    result = validate_file(
        item_file("invalid/stac-validator/1beta2/bad-sample-full.json"), schema_dir=schema_dir
    )
    assert [(f.rule_id, f.path) for f in by_rule(result.findings, "GM-SCHEMA-001")] == [
        ("GM-SCHEMA-001", "geometry")
    ]
    (missing,) = by_rule(result.findings, "GM-SCHEMA-003")
    assert missing.severity is Severity.P3
    assert "example.com/cs-extension" in missing.message
    assert "unavailable offline" in missing.message


# ------------------------------------------------------------------ messages


@pytest.fixture
def extended(item_file: Callable[[str], Path]) -> dict[str, Any]:
    return load(item_file("stac-spec-examples/v1.1.0/extended-item.json"))


def test_extension_errors_name_the_field_in_plain_words(
    extended: dict[str, Any], schema_dir: Path
) -> None:
    extended["properties"]["proj:code"] = 32659
    extended["properties"]["eo:cloud_cover"] = 150
    extended["assets"]["analytic"]["proj:shape"] = "5558x9559"
    findings = check_schemas(extended, item_id="x", store=schema_dir)
    got = {(f.rule_id, f.path): f.message for f in findings}
    assert set(got) == {
        ("GM-SCHEMA-002", "properties.proj:code"),
        ("GM-SCHEMA-002", "properties.eo:cloud_cover"),
        ("GM-SCHEMA-002", "assets.analytic.proj:shape"),
    }
    assert "must be string or null, not number" in got[("GM-SCHEMA-002", "properties.proj:code")]
    assert "<= 100" in got[("GM-SCHEMA-002", "properties.eo:cloud_cover")]
    for msg in got.values():
        # no raw jsonschema dumps: no repr of the whole instance or schema, no oneOf noise
        assert len(msg) < 200 and "{'" not in msg and "is not valid under" not in msg


def test_core_errors_collapse_oneof_noise(extended: dict[str, Any], schema_dir: Path) -> None:
    extended["bbox"] = [1, 2]
    extended["properties"]["datetime"] = 5
    found = check_schemas(extended, item_id="x", store=schema_dir)
    assert {(f.rule_id, f.path) for f in found} == {
        ("GM-SCHEMA-001", "bbox"),
        ("GM-SCHEMA-001", "properties.datetime"),
    }


def test_schema_common_json_resolves_by_url_path(
    item_file: Callable[[str], Path], schema_dir: Path
) -> None:
    # item.json v1.1.0 → common.json (whose declared $id is misspelled) → instrument.json
    doc = load(item_file("stac-spec-examples/v1.1.0/simple-item.json"))
    doc["properties"]["platform"] = 5
    (f,) = check_schemas(doc, item_id="x", store=schema_dir)
    assert (f.rule_id, f.path) == ("GM-SCHEMA-001", "properties.platform")


# ------------------------------------------------------------------ the store


def test_missing_extension_schema_is_p3_not_a_crash(
    tmp_path: Path, extended: dict[str, Any]
) -> None:
    empty = tmp_path / "empty-store"
    empty.mkdir()
    extended["id"] = None  # the core schema still runs (pystac bundles core 1.1.0)
    findings = check_schemas(extended, item_id="x", store=empty)
    missing = by_rule(findings, "GM-SCHEMA-003")
    assert {f.context["schema"] for f in missing} == set(extended["stac_extensions"])
    assert all(f.severity is Severity.P3 for f in missing)
    assert ("GM-SCHEMA-001", "id") in {(f.rule_id, f.path) for f in findings}


def test_unresolvable_reference_is_p3(extended: dict[str, Any], schema_dir: Path) -> None:
    # proj:projjson refers to proj.org's PROJJSON schema, which the store does not hold
    extended["properties"]["proj:projjson"] = {"type": "GeographicCRS", "name": "x"}
    findings = check_schemas(extended, item_id="x", store=schema_dir)
    (f,) = by_rule(findings, "GM-SCHEMA-003")
    assert "proj.org" in f.message and f.severity is Severity.P3


def test_validators_are_compiled_once_per_schema(
    schema_dir: Path, extended: dict[str, Any]
) -> None:
    url = extended["stac_extensions"][1]
    first = schemas_mod.compiled_validator(schema_dir, url)
    for _ in range(3):
        check_schemas(extended, item_id="x", store=schema_dir)
    assert schemas_mod.compiled_validator(schema_dir, url) is first


def test_accelerated_and_plain_paths_agree(
    shared_dir: Path, schema_dir: Path, extended: dict[str, Any]
) -> None:
    docs = [load(p) for p in sorted((shared_dir / ITEMS).rglob("*.json"))]
    broken = json.loads(json.dumps(extended))
    broken["properties"]["proj:code"] = 1
    broken["bbox"] = [1]
    docs.append(broken)
    for doc in docs:
        fast = check_schemas(doc, item_id="x", store=schema_dir, accelerate=True)
        slow = check_schemas(doc, item_id="x", store=schema_dir, accelerate=False)
        assert fast == slow, doc.get("id")


def test_store_path_rejects_unsafe_urls(tmp_path: Path) -> None:
    sp = schemas_mod.store_path
    assert sp(tmp_path, "https://a.org/x/v1/schema.json#") == tmp_path / "a.org/x/v1/schema.json"
    for bad in ["file:///etc/passwd", "https://a.org/../etc/passwd", "https://a.org/", "ftp://a/b"]:
        assert sp(tmp_path, bad) is None


# ------------------------------------------------------------------ robustness


@pytest.mark.parametrize(
    ("content", "expect"),
    [
        (b"{not json", "not valid JSON"),
        (b"[1, 2, 3]", "not an object"),
        (b"\xff\xfe\x00bad", "not UTF-8"),
        (b'{"type": "Feature", "x": NaN}', "NaN"),
        (b"[" * 100_000 + b"]" * 100_000, "nested"),
        (json.dumps({"a": [[[[[[[[[[[[]]]]]]]]]]]]} | {"b": 1}).encode(), None),
    ],
    ids=["syntax", "list", "encoding", "nan", "deep", "ok-nesting"],
)
def test_bad_documents_become_findings(tmp_path: Path, content: bytes, expect: str | None) -> None:
    p = tmp_path / "doc.json"
    p.write_bytes(content)
    loaded = load_document(p)
    if expect is None:
        assert loaded.doc is not None and loaded.findings == []
        return
    (f,) = loaded.findings
    assert loaded.doc is None and f.rule_id == "GM-JSON-001" and expect in f.message


def test_huge_document_is_refused(tmp_path: Path) -> None:
    p = tmp_path / "big.json"
    p.write_text(json.dumps({"pad": "x" * 5000}))
    (f,) = load_document(p, max_bytes=1000).findings
    assert "limit" in f.message


def test_wrong_types_everywhere_do_not_crash(schema_dir: Path, extended: dict[str, Any]) -> None:
    from geomesh.config import loads_config

    from conftest import EXAMPLE_CONFIG

    cfg = loads_config(EXAMPLE_CONFIG)
    weird: list[dict[str, Any]] = [
        {**extended, "properties": ["not", "an", "object"]},
        {**extended, "assets": "nope"},
        {**extended, "geometry": {"type": "Polygon", "coordinates": "x"}},
        {**extended, "stac_extensions": [1, None, "relative/schema.json"]},
        {**extended, "stac_version": 7},
        {"type": "Feature"},
        {},
    ]
    for doc in weird:
        findings = validate_document(doc, config=cfg, schema_dir=schema_dir)
        assert any(f.severity in (Severity.P1, Severity.P2) for f in findings), doc


# ------------------------------------------------------------------ sync (loopback only)


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        return None


@pytest.fixture
def mirror(tmp_path: Path, schema_dir: Path) -> Iterator[str]:
    """A loopback HTTP mirror laid out like the store (a copy of part of the shared store)."""
    root = tmp_path / "mirror"
    for host in ("stac-extensions.github.io", "geojson.org"):
        shutil.copytree(schema_dir / host, root / host)
    handler = lambda *a, **k: _Quiet(*a, directory=str(root), **k)  # noqa: E731
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_sync_fetches_schemas_and_their_references(
    tmp_path: Path, mirror: str, extended: dict[str, Any]
) -> None:
    store = tmp_path / "store"
    url = "https://stac-extensions.github.io/projection/v2.0.0/schema.json"
    report = sync_schemas(store, [url], mirror=mirror, timeout=5)
    assert url in report.fetched
    assert "https://geojson.org/schema/Geometry.json" in report.fetched  # referenced by it
    assert (store / "stac-extensions.github.io/projection/v2.0.0/schema.json").is_file()
    assert any("proj.org" in u for u in report.failed)  # not on the mirror: reported
    # idempotent: a second run downloads nothing
    again = sync_schemas(store, [url], mirror=mirror, timeout=5)
    assert again.fetched == [] and url in again.present
    # the synced store validates offline (core from pystac's bundle)
    extended["stac_extensions"] = [url]
    extended["properties"]["proj:code"] = 1
    found = check_schemas(extended, item_id="x", store=store)
    assert ("GM-SCHEMA-002", "properties.proj:code") in {(f.rule_id, f.path) for f in found}


def test_sync_times_out_on_a_silent_server(tmp_path: Path) -> None:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)  # accepts connections, never answers
    port = listener.getsockname()[1]
    try:
        url = "https://stac-extensions.github.io/file/v2.1.0/schema.json"
        report = sync_schemas(tmp_path / "s", [url], mirror=f"http://127.0.0.1:{port}", timeout=0.3)
        assert url in report.failed and report.fetched == []
        assert "timed out" in report.failed[url]
    finally:
        listener.close()
        clear_cache()
