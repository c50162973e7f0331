"""Parallel file work for batches: a local process pool, or a Dask cluster.

Only :func:`geomesh.tiles.prepare_tile` (inspect, COG, hash) runs remotely; staging
(object store + one transaction per tile) stays in the calling process, so the results, the
objects and the rows are the same as a serial run's.
"""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from datetime import datetime
from pathlib import Path
from typing import Any

from geomesh.config import ProductConfig
from geomesh.errors import GeomeshError
from geomesh.tiles import PreparedTile, prepare_tile


def _prepare_safe(
    config: ProductConfig,
    source: str,
    workdir: Path,
    acquired: datetime | None,
    source_digest: str | None,
) -> PreparedTile | GeomeshError:
    """Run in a worker: a GeomeshError is returned (picklable), never raised."""
    try:
        return prepare_tile(config, source, workdir, acquired=acquired, source_digest=source_digest)
    except GeomeshError as exc:
        # exceptions pickle through their args; keep the class and the full message
        clean = GeomeshError.__new__(type(exc))
        GeomeshError.__init__(clean, str(exc))
        return clean


def _set_gdal_threads(threads: str) -> None:
    os.environ["GEOMESH_GDAL_THREADS"] = threads


def default_workers() -> int:
    return max(
        1,
        len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1),
    )


def map_prepare(
    config: ProductConfig,
    tasks: Sequence[tuple[str, str | None]],
    workdir: Path,
    *,
    acquired: datetime | None,
    workers: int = 0,
    scheduler: str | None = None,
) -> Iterator[tuple[str, PreparedTile | GeomeshError]]:
    """Yield (source, prepared-or-error) in input order."""
    if not tasks:
        return
    if scheduler:
        yield from _map_dask(config, tasks, workdir, acquired=acquired, scheduler=scheduler)
        return
    n = workers if workers > 0 else default_workers()
    ctx = multiprocessing.get_context("spawn")  # GDAL state must not be forked
    n = min(n, len(tasks))
    # each worker compresses with its share of the cores, not all of them (oversubscription)
    threads = str(max(1, default_workers() // n))
    with ProcessPoolExecutor(
        max_workers=n, mp_context=ctx, initializer=_set_gdal_threads, initargs=(threads,)
    ) as pool:
        futures: list[Future[PreparedTile | GeomeshError]] = [
            pool.submit(_prepare_safe, config, src, workdir, acquired, sdigest)
            for src, sdigest in tasks
        ]
        for (src, _), fut in zip(tasks, futures, strict=True):
            yield src, fut.result()


def _map_dask(
    config: ProductConfig,
    tasks: Sequence[tuple[str, str | None]],
    workdir: Path,
    *,
    acquired: datetime | None,
    scheduler: str,
) -> Iterator[tuple[str, PreparedTile | GeomeshError]]:
    try:
        from distributed import Client
    except ImportError as exc:  # pragma: no cover - dask is a pinned dependency
        raise GeomeshError("--scheduler needs dask.distributed; install it") from exc
    try:
        client: Any = Client(scheduler, timeout="10s")  # type: ignore[no-untyped-call]
    except OSError as exc:
        raise GeomeshError(
            f"cannot reach the Dask scheduler at {scheduler}",
            hint="check the address (tcp://host:port) and that the scheduler is running",
        ) from exc
    with client:
        futures = [
            client.submit(_prepare_safe, config, src, workdir, acquired, sdigest, pure=False)
            for src, sdigest in tasks
        ]
        for (src, _), fut in zip(tasks, futures, strict=True):
            yield src, fut.result()


def iter_prepared(
    config: ProductConfig,
    tasks: Sequence[tuple[str, str | None]],
    workdir: Path,
    *,
    acquired: datetime | None,
    workers: int = 1,
    scheduler: str | None = None,
) -> Iterator[tuple[str, PreparedTile | GeomeshError]]:
    """Run :func:`prepare_tile` for each (source, source_digest), serially or in parallel.

    Results come back in input order. A GeomeshError for one tile is returned, not raised.
    """
    if scheduler or workers > 1:
        yield from map_prepare(
            config, tasks, workdir, acquired=acquired, workers=workers, scheduler=scheduler
        )
        return
    for source, sdigest in tasks:
        try:
            yield (
                source,
                prepare_tile(config, source, workdir, acquired=acquired, source_digest=sdigest),
            )
        except GeomeshError as exc:
            yield source, exc
