"""The file work of one tile: raster → (warp/clip) → COG → SHA-256 → STAC Item dict.

Pure file work: nothing here touches the database or writes to the object store, so it
runs in worker processes (``geomesh.parallel``) as well as in the caller. Staging the
result is ``geomesh.services.ingest``.

Each byte is read once per purpose: the source is opened once (inspected from the dataset
the COG is written from) and, when its digest is wanted, hashed on a thread while GDAL
writes the COG; the COG is hashed once, on a thread while it is inspected (once) and its
statistics are read. The :class:`PreparedTile` carries those facts (digest, size, the COG's
:class:`~geomesh.raster.RasterInfo`, its rio-cogeo validation) to staging and to the
validation right after it, so neither opens nor hashes the file again.
"""

from __future__ import annotations

import ctypes
import hashlib
import json
import os
import sys
import tempfile
import threading
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

from geomesh.config import ProductConfig
from geomesh.hashing import sha256_mapped
from geomesh.opening import OpeningPolicy
from geomesh.raster import (
    CogResult,
    RasterInfo,
    inspect_with_statistics,
    is_remote,
    sanitize_source,
    write_cog,
)
from geomesh.storage import TMP_PREFIX, ObjectStore


@dataclass
class SourceMeta:
    """Where a tile came from when it was found in a STAC API (set by ``services.sources``)."""

    #: "<stac item id>/<asset key>": with source_etag, what makes a re-run skip the asset
    #: (None for a tile derived from one of our own items, e.g. a re-clip)
    source_item_id: str | None
    source_etag: str | None
    #: self href of the source STAC item (the new item's `derived_from` link)
    derived_from: str | None = None
    #: source item properties to carry (checked against their extension schemas)
    properties: dict[str, Any] = field(default_factory=dict)
    stac_extensions: list[str] = field(default_factory=list)


@dataclass
class PreparedTile:
    """The result of the file work for one source (picklable, for worker processes)."""

    source: str
    source_name: str
    source_key: str
    source_digest: str | None
    cog_path: Path
    hexdigest: str
    size: int
    acquired: datetime | None
    info_json: dict[str, Any]
    statistics: list[dict[str, float] | None]
    cog_valid: bool
    cog_errors: list[str]
    cog_warnings: list[str]
    clipped: bool
    source_meta: SourceMeta | None = None
    #: the COG's own :func:`~geomesh.raster.inspect` (read once, in prepare_tile)
    cog_info: RasterInfo | None = None


def source_key_for(source: str) -> str:
    """Stable key of "the same tile": the sanitized source location."""
    return hashlib.sha256(sanitize_source(source).encode()).hexdigest()[:32]


def _options_digest(config: ProductConfig) -> str:
    opts = {
        "ingestion": config.ingestion.model_dump(mode="json", exclude={"datetime"}),
        "domain": config.spatial_contract() if config.ingestion.clip else None,
    }
    return json.dumps(opts, sort_keys=True)


def source_digest_for(source: str, config: ProductConfig) -> str | None:
    """SHA-256 of a local source's bytes + the options that shape the output (None if remote).

    What a re-run of the same source with the same options is recognised by (the item's
    ``source_digest``). ``prepare_tile(..., hash_source=True)`` computes it while the COG
    is written; the pipeline computes it up front only for a source whose location the
    product already holds (the one case where it can skip the file work).
    """
    if is_remote(source):
        return None
    p = Path(source)
    if not p.is_file():
        return None
    h = hashlib.sha256()
    with open(p, "rb") as fh:
        while chunk := fh.read(1 << 20):
            h.update(chunk)
    h.update(_options_digest(config).encode())
    return h.hexdigest()


def stac_key_for(product_id: str, item_id: str) -> str:
    return f"items/{product_id}/{item_id}.json"


def object_href(store: ObjectStore, area: Literal["staging"], key: str) -> str:
    return store.url(area, key)


#: Linux's sync_file_range(2): start writing a file's dirty pages back, without waiting
_SYNC_FILE_RANGE_WRITE = 2
_LIBC = ctypes.CDLL(None, use_errno=True) if sys.platform == "linux" else None


def _start_writeback(fd: int) -> None:
    """Start writing ``fd``'s dirty pages to disk and return at once (Linux; elsewhere
    nothing). Not a barrier: the fsync after it still makes the bytes durable, it just finds
    little left to write."""
    if _LIBC is not None:
        _LIBC.sync_file_range(fd, ctypes.c_int64(0), ctypes.c_int64(0), _SYNC_FILE_RANGE_WRITE)


def _hash_cog(path: Path, flush: bool, hashing: threading.Event) -> tuple[str, int]:
    """The COG's one SHA-256; with ``flush``, its bytes written to disk (fsync) too, while
    the caller still reads them: a store that adopts files links this very file into place,
    and its fsync there then finds nothing left to write. The disk writes them back while
    they are hashed (measured on a 21 MiB COG: the fsync after the hash 13 ms → 0.4 ms).

    ``hashing`` is set once the hash is about to run (the GIL released), or on a failure
    before: the caller waits for it, so that its own Python work, which holds the GIL, does
    not keep this thread from starting (up to the 5 ms switch interval)."""
    try:
        with open(path, "rb") as fh:
            if flush:
                _start_writeback(fh.fileno())
            # our own temporary file: nobody truncates it
            digest = sha256_mapped(fh, started=hashing.set)
            if flush:
                os.fsync(fh.fileno())
    finally:
        hashing.set()
    return digest


def _start_hash(hasher: ThreadPoolExecutor, path: Path, flush: bool) -> Future[tuple[str, int]]:
    """Start the COG's hash on ``hasher`` and return once it runs (see :func:`_hash_cog`)."""
    hashing = threading.Event()
    future = hasher.submit(_hash_cog, path, flush, hashing)
    hashing.wait()
    return future


def prepare_tile(
    config: ProductConfig,
    source: str,
    workdir: Path,
    *,
    acquired: datetime | None = None,
    source_digest: str | None = None,
    policy: OpeningPolicy | None = None,
    hash_source: bool = False,
    flush: bool = True,
) -> PreparedTile:
    """Inspect, (warp/clip), write the COG, hash it and read statistics. No database access.

    ``source`` is checked by ``policy`` (default: local paths anywhere with the product's
    drivers, URLs only under GEOMESH_ALLOWED_SOURCES-style prefixes — none) before GDAL
    sees it, and only the policy's drivers are tried. With ``hash_source`` and no
    ``source_digest``, a local source's :func:`source_digest_for` is computed on a thread
    while the COG is written (GDAL's own threads leave a core idle most of that time).
    ``flush``: the COG is fsynced on its hash thread (``ObjectStore.adopts_files``: the
    store will link it in place; False for a store that uploads a copy, or a dry run).
    """
    if policy is None:
        policy = OpeningPolicy(
            drivers=tuple(config.ingestion.input_drivers), local_anywhere=True, context="a caller"
        )
    checked = policy.check(source)
    name = sanitize_source(source)
    with ThreadPoolExecutor(max_workers=2, thread_name_prefix="geomesh-hash") as hasher:
        source_hash = (
            hasher.submit(source_digest_for, checked.gdal_path, config)
            if hash_source and source_digest is None and checked.local
            else None
        )
        # the one hash of the COG starts as soon as its bytes are final, so it runs while
        # they are validated, inspected and their statistics read; then it flushes them
        cog_hash: list[Future[tuple[str, int]]] = []
        with policy.gdal_env():
            fd, tmp = tempfile.mkstemp(prefix=TMP_PREFIX, suffix=".tif", dir=workdir)
            os.close(fd)
            cog_path = Path(tmp)
            try:
                cog: CogResult = write_cog(
                    checked.gdal_path,
                    cog_path,
                    config,
                    drivers=policy.drivers,
                    name=source,
                    inspect_source=True,
                    written=lambda path: cog_hash.append(_start_hash(hasher, path, flush)),
                )
            except BaseException:
                wait(cog_hash)  # a hash already started finishes before its file goes
                cog_path.unlink(missing_ok=True)
                raise
        try:
            cog_info, statistics = inspect_with_statistics(
                cog_path, domain_crs=config.spatial_domain.crs
            )
        finally:
            hexdigest, size = cog_hash[0].result()
        if source_hash is not None:
            source_digest = source_hash.result()
    src_info = cog.source_info
    assert src_info is not None  # inspect_source=True
    when = acquired or src_info.datetime or config.ingestion.datetime
    return PreparedTile(
        source=source,
        source_name=name,
        source_key=source_key_for(source),
        source_digest=source_digest,
        cog_path=cog_path,
        hexdigest=hexdigest,
        size=size,
        acquired=when,
        info_json={"source": src_info.to_json(), "cog": cog_info.to_json()},
        statistics=statistics,
        cog_valid=cog.is_valid,
        cog_errors=cog.errors,
        cog_warnings=cog.warnings,
        clipped=cog.clipped,
        cog_info=cog_info,
    )
