"""3. Validation throughput: geomesh's full offline validation vs pystac's ``validate_dict``.

1,000 Sentinel-2 L2A items derived from the real Earth Search and Planetary Computer items
in ``../shared/data/stac-items`` (new ids, datetimes, and footprints moved around the San
Francisco domain: inside, across and outside its boundary).

geomesh: ``geomesh.validation.engine.validate_document(doc, config=..., schema_dir=...)``: core and
extension JSON Schemas from the offline store plus the product-contract, CRS, boundary and
checksum-form rules; no pixel I/O (no raster path).

Baseline: ``pystac.validation.validate_dict`` with a ``JsonSchemaSTACValidator`` whose
schema cache is seeded with every file of the same store (URL = ``https://`` + path). It is
~100× slower per item, so it is timed on a slice of the same items; both are reported
in items per second. Network access is blocked while either side runs.
"""

from __future__ import annotations

import copy
import json
import random
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from bench import SCHEMA_DIR, STAC_ITEMS, Row, median, product_config, skipped, timed, workdir

NAME = "validation throughput"
TARGET = 20.0
TEMPLATES = (
    "earth-search-v1/sentinel-2-c1-l2a/S2B_T24MUV_20250731T130245_L2A.json",
    "earth-search-v1/sentinel-2-l2a/S2A_13TDE_20231008_0_L2A.json",
    "planetary-computer/sentinel-2-l2a/S2A_MSIL2A_20190101T000001_R116_T58UFE_20201007T214651.json",
)
SF = (-122.4, 37.8)


@contextmanager
def no_network() -> Iterator[None]:
    """Refuse every non-loopback connection (a schema fetch would fail loudly)."""
    real = socket.socket.connect

    def guarded(self: socket.socket, address: Any) -> Any:
        if self.family in (socket.AF_INET, socket.AF_INET6) and address[0] not in (
            "127.0.0.1",
            "::1",
            "localhost",
        ):
            raise OSError(f"benchmarks must not reach the network (tried {address[0]})")
        return real(self, address)

    socket.socket.connect = guarded  # type: ignore[method-assign]
    try:
        yield
    finally:
        socket.socket.connect = real  # type: ignore[method-assign]


def _shift(coords: Any, dx: float, dy: float) -> Any:
    if isinstance(coords, list) and coords and isinstance(coords[0], int | float):
        return [coords[0] + dx, coords[1] + dy, *coords[2:]]
    return [_shift(c, dx, dy) for c in coords]


def derive_items(n: int, seed: int = 8) -> list[dict[str, Any]]:
    """``n`` items from the real templates: new id, datetime and footprint per item."""
    templates = [json.loads((STAC_ITEMS / t).read_text()) for t in TEMPLATES]
    rng = random.Random(seed)
    out: list[dict[str, Any]] = []
    for i in range(n):
        doc = copy.deepcopy(templates[i % len(templates)])
        doc["id"] = f"{doc['id']}-b{i:05d}"
        t0 = datetime.fromisoformat(doc["properties"]["datetime"].replace("Z", "+00:00"))
        when = t0 + timedelta(days=5 * (i // len(templates)), minutes=rng.randint(0, 600))
        doc["properties"]["datetime"] = when.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        # move the footprint so its first vertex lands near San Francisco (±1.2°)
        ring = doc["geometry"]["coordinates"]
        while isinstance(ring[0][0], list):
            ring = ring[0]
        x0, y0 = ring[0][0], ring[0][1]
        dx = SF[0] - x0 + rng.uniform(-1.2, 1.2)
        dy = SF[1] - y0 + rng.uniform(-1.2, 1.2)
        doc["geometry"]["coordinates"] = _shift(doc["geometry"]["coordinates"], dx, dy)
        if "bbox" in doc:
            b = doc["bbox"]
            doc["bbox"] = [b[0] + dx, b[1] + dy, b[2] + dx, b[3] + dy]
        out.append(doc)
    return out


def pystac_validator(store: Path) -> Any:
    from pystac.validation.stac_validator import JsonSchemaSTACValidator

    validator = JsonSchemaSTACValidator()
    for f in store.rglob("*.json"):
        validator.schema_cache["https://" + f.relative_to(store).as_posix()] = json.loads(
            f.read_text()
        )
    return validator


def _geomesh_pass(docs: list[dict[str, Any]], config: Any) -> tuple[float, int]:
    from geomesh.validation.engine import validate_document

    def go() -> int:
        bad = 0
        for doc in docs:
            findings = validate_document(doc, config=config, schema_dir=SCHEMA_DIR)
            bad += any(f.rule_id in ("GM-SCHEMA-001", "GM-SCHEMA-002") for f in findings)
        return bad

    return timed(go)


def _pystac_pass(docs: list[dict[str, Any]]) -> tuple[float, int]:
    import pystac.validation
    from pystac.errors import STACValidationError

    def go() -> int:
        bad = 0
        for doc in docs:
            try:
                pystac.validation.validate_dict(doc)
            except STACValidationError:
                bad += 1
        return bad

    return timed(go)


@contextmanager
def _without_accelerator() -> Iterator[None]:
    """geomesh's pure-Python schema path (what runs when jsonschema-rs is not installed)."""
    from geomesh.validation import schemas

    saved = schemas._RS
    schemas._RS = None
    schemas.clear_cache()
    try:
        yield
    finally:
        schemas._RS = saved
        schemas.clear_cache()


def run(smoke: bool) -> list[Row]:
    if not SCHEMA_DIR.is_dir() or not all((STAC_ITEMS / t).is_file() for t in TEMPLATES):
        return skipped(NAME, f"../shared data not found at {STAC_ITEMS.parent.parent}")
    import pystac.validation

    from geomesh.validation import schemas

    n, n_pystac, rounds = (30, 6, 1) if smoke else (1000, 100, 2)
    docs = derive_items(n)
    with workdir("validation") as tmp:
        config = product_config(Path(tmp))
    previous = pystac.validation.RegisteredValidator.get_validator()
    pystac.validation.RegisteredValidator.set_validator(pystac_validator(SCHEMA_DIR))
    try:
        with no_network():
            # warm both: compile every validator once
            _geomesh_pass(docs[:3], config)
            _pystac_pass(docs[:3])
            g_rates: list[float] = []
            p_rates: list[float] = []
            g_bad = p_bad = 0
            p_items = 0
            for r in range(rounds):
                t, g_bad = _geomesh_pass(docs, config)
                g_rates.append(len(docs) / t)
                chunk = docs[r * n_pystac : (r + 1) * n_pystac]
                t, bad = _pystac_pass(chunk)
                p_bad += bad
                p_items += len(chunk)
                p_rates.append(len(chunk) / t)
            with _without_accelerator():
                slow = docs[: max(3, n_pystac)]
                _geomesh_pass(slow[:3], config)
                t_slow, _ = _geomesh_pass(slow, config)
    finally:
        pystac.validation.RegisteredValidator.set_validator(previous)
    g, p = median(g_rates), median(p_rates)
    fallback = len(slow) / t_slow
    accel = "with jsonschema-rs" if schemas._RS is not None else "jsonschema-rs NOT installed"
    return [
        Row(
            NAME,
            f"{n:,} S2 L2A items, schemas + contract rules, no pixels ({accel})",
            "items/s (higher is better)",
            f"{g:,.0f}/s",
            f"{p:,.1f}/s",
            g / p,
            f"≥ {TARGET:.0f}× pystac",
            g / p >= TARGET,
            f"{rounds} rounds; geomesh validates all {n:,} per round, pystac {n_pystac} per round "
            f"({p_items} different items); schema-invalid: geomesh {g_bad}/{n}, "
            f"pystac {p_bad}/{p_items}",
        ),
        Row(
            NAME,
            f"{len(slow)} of the items, jsonschema-rs disabled (pure-Python fallback)",
            "items/s (higher is better)",
            f"{fallback:,.1f}/s",
            f"{p:,.1f}/s",
            fallback / p,
            "— (info)",
            None,
            "geomesh's schema path when jsonschema-rs cannot be imported; error details "
            "always come from jsonschema",
        ),
    ]
