"""The release index ``catalogs/<product>/latest.json``: the only rewritten catalog file.

Published catalogs are immutable, so they can only point *backwards*
(``predecessor-version``). Whatever changes later — which release is current (possibly
none, after the first release was withdrawn), which one succeeds another, which were rolled
back, which have a columnar snapshot — lives in this one small index.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import pystac

from geomesh.releases.catalog import MEDIA_JSON, index_key
from geomesh.releases.manifest import AREA, parse_version
from geomesh.storage import ObjectStore

MEDIA_PARQUET = "application/vnd.apache.parquet"


@dataclass(frozen=True)
class IndexEntry:
    version: str
    release_id: str
    parent_id: str | None
    kind: str
    deprecated: bool
    created_at: str
    #: production key of the release's stac-geoparquet snapshot, once written
    snapshot_key: str | None = None


def build_index(
    product_id: str, entries: Iterable[IndexEntry], current_id: str | None
) -> dict[str, Any]:
    """The release index of a product: a small STAC catalog with geomesh fields.

    It carries what immutable per-version catalogs cannot: the ``latest-version`` link
    (to the *current* release, which moves back on rollback, and is absent when the
    product has no current release) and, per release, its predecessor (the parent
    manifest's version), its successor (the next higher version), whether it is deprecated
    (rolled back) and its stac-geoparquet snapshot (an ``alternate`` link).
    """
    ordered = sorted(entries, key=lambda e: parse_version(e.version))
    version_of = {e.release_id: e.version for e in ordered}
    prefix = f"catalogs/{product_id}/"
    releases = []
    for n, e in enumerate(ordered):
        links: list[dict[str, Any]] = []
        if e.snapshot_key and e.snapshot_key.startswith(prefix):
            links.append(
                {
                    "rel": "alternate",
                    "href": "./" + e.snapshot_key[len(prefix) :],
                    "type": MEDIA_PARQUET,
                    "title": f"stac-geoparquet snapshot of {e.version}",
                }
            )
        releases.append(
            {
                "version": e.version,
                "release_id": e.release_id,
                "href": f"./{e.version}/catalog.json",
                "kind": e.kind,
                "deprecated": e.deprecated,
                "current": e.release_id == current_id,
                "created_at": e.created_at,
                "predecessor-version": version_of.get(e.parent_id) if e.parent_id else None,
                "successor-version": ordered[n + 1].version if n + 1 < len(ordered) else None,
                "links": links,
            }
        )
    index_links: list[dict[str, Any]] = []
    current = next((e for e in ordered if e.release_id == current_id), None)
    if current is not None:
        index_links.append(
            {
                "rel": "latest-version",
                "href": f"./{current.version}/catalog.json",
                "type": MEDIA_JSON,
                "title": current.version,
            }
        )
    status = (
        f"the current release is {current.version}"
        if current is not None
        else "no release is current (none yet, or every release was withdrawn)"
    )
    return {
        "type": "Catalog",
        "stac_version": pystac.get_stac_version(),
        "id": f"{product_id}-releases",
        "description": (
            f"Release index of {product_id}: {status}. Rewritten on each promote or "
            "rollback; the per-version catalogs are immutable."
        ),
        "links": index_links,
        "geomesh:current": (
            {"version": current.version, "release_id": current.release_id} if current else None
        ),
        "geomesh:releases": releases,
    }


def write_index(
    store: ObjectStore, product_id: str, entries: Iterable[IndexEntry], current_id: str | None
) -> str:
    key = index_key(product_id)
    data = json.dumps(build_index(product_id, entries, current_id), indent=2).encode()
    store.put_bytes(AREA, key, data, overwrite=True)
    return key
