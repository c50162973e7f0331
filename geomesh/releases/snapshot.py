"""A columnar snapshot of a published release: one stac-geoparquet file for bulk readers.

``catalogs/<product>/<version>/items.parquet`` holds the release's published item
documents (the same bytes a static-catalog reader gets), written with ``rustac``; asset
hrefs stay relative and resolve from that folder exactly as from ``catalogs/<product>/items/``
(same depth). It is written on demand, never on the promote path (it is O(items)), and
it is immutable once stored.
"""

from __future__ import annotations

import json
import posixpath
import tempfile
from pathlib import Path
from typing import Any, Final

from geomesh import faults
from geomesh.errors import StacError
from geomesh.releases.catalog import catalog_prefix, release_item_docs, resolve
from geomesh.releases.manifest import AREA
from geomesh.storage import ObjectStore

SNAPSHOT_NAME: Final = "items.parquet"


def snapshot_key(product_id: str, version: str) -> str:
    return f"{catalog_prefix(product_id, version)}/{SNAPSHOT_NAME}"


def write_geoparquet(path: Path, items: list[dict[str, Any]]) -> None:
    """stac-geoparquet of ``items`` at ``path`` (rustac; imported here: a heavy extension)."""
    import rustac

    try:
        rustac.write_sync(str(path), items, format="geoparquet")
    except (rustac.RustacError, ValueError, OSError) as exc:
        raise StacError(
            f"cannot write the stac-geoparquet snapshot: {str(exc)[:300]}",
            hint="check the release's item documents with `geomesh doctor --deep`",
        ) from exc


def _rebased(doc: dict[str, Any], doc_key: str, base: str) -> dict[str, Any]:
    """Relative asset and link hrefs of the document at ``doc_key``, made relative to
    ``base`` (unchanged for layout 2, whose item folder has the same depth)."""

    def rebase(href: Any) -> Any:
        key = resolve(doc_key, href)
        return posixpath.relpath(key, base) if key is not None else href

    for asset in (doc.get("assets") or {}).values():
        if isinstance(asset, dict):
            asset["href"] = rebase(asset.get("href"))
    for link in doc.get("links") or []:
        if isinstance(link, dict):
            link["href"] = rebase(link.get("href"))
    return doc


def write_snapshot(store: ObjectStore, product_id: str, version: str) -> str:
    """Write the release's snapshot if it is missing; return its key (idempotent)."""
    key = snapshot_key(product_id, version)
    if store.exists(AREA, key):
        return key
    base = catalog_prefix(product_id, version)
    items = [
        _rebased(json.loads(data), ikey, base)
        for ikey, data in release_item_docs(store, product_id, version)
    ]
    if not items:
        raise StacError(
            f"release {version} of {product_id} has no items: there is nothing to snapshot"
        )
    with tempfile.TemporaryDirectory(prefix="geomesh-snapshot-") as tmp:
        path = Path(tmp) / SNAPSHOT_NAME
        write_geoparquet(path, items)
        faults.point("snapshot.file_written")
        store.put_file(AREA, key, path)
    return key
