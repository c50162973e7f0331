"""Parallel file work for batches: a local process pool, or a Dask cluster.

Only :func:`geomesh.tiles.prepare_tile` (inspect, COG, hash) runs remotely; staging
(object store + one transaction per tile) stays in the calling process, so the results, the
objects and the rows are the same as a serial run's. Every task is submitted up front and
the results come back in input order, so the caller stages tile k while tiles k+1… are
being written.

**The default (``workers=None``, "auto"; ``geomesh ingest`` without ``--workers``).** A batch
of two or more tiles runs in ``min(cores, tiles)`` spawn processes with ONE GDAL thread each
(``GEOMESH_GDAL_THREADS=1``); a single tile — or a batch too small to repay starting the
pool (under :data:`PARALLEL_MIN_BYTES` of local source files, about 1.5 s of serial work
here) — runs in the caller with ``GDAL_NUM_THREADS=ALL_CPUS``. Why: GDAL's multi-threaded DEFLATE does not keep the cores busy (overviews,
the final copy into the COG layout and the reads are single-threaded), so on 2 cores two
single-threaded processes wrote 16 tiles of 1536²×4 in ~0.6× the time of the serial
ALL_CPUS run, pool start-up included, while two processes × ALL_CPUS lost about a fifth of
that to oversubscription. ``bench/batch_scaling.py`` measures the four plain rio-cogeo
setups (serial × ALL_CPUS, serial × 1, 2 processes × 1, 2 processes × ALL_CPUS) and this
default side by side on the same tiles; ``bench/results.md`` has the numbers. An explicit
``workers=N`` (N ≥ 2) gives each of N processes ``cores // N`` GDAL threads (at least 1);
``workers=1`` is serial in the caller.

Remote assets (``services.sources``) are I/O bound (``/vsicurl/`` range reads wait on the
network), so :func:`plan_remote` gives them more threads than cores.

On Dask each task compresses with one GDAL thread when the cluster runs two or more tasks
at once (Dask sizes a worker's threads to its cores), else with all of them.
"""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from geomesh.config import ProductConfig
from geomesh.errors import ConfigError, GeomeshError
from geomesh.opening import OpeningPolicy
from geomesh.tiles import PreparedTile, prepare_tile

#: ``GEOMESH_GDAL_THREADS`` value (read by ``raster.write_cog``) for "every core"
ALL_CPUS = "ALL_CPUS"
#: most threads :func:`plan_remote` starts for I/O-bound remote reads
MAX_REMOTE_THREADS = 16
#: auto goes parallel only from this much source data: a spawn pool costs ~0.5–1 s to
#: start (it imports GDAL, PROJ and geomesh), and a process writes ~40 MiB of source a second
PARALLEL_MIN_BYTES = 64 * 2**20


@dataclass(frozen=True)
class Plan:
    """How a batch's file work runs: ``processes`` (1: in the caller) × GDAL threads each."""

    processes: int
    gdal_threads: str

    def describe(self) -> str:
        where = "in-process" if self.processes == 1 else f"{self.processes} spawn processes"
        return f"{where} × GDAL_NUM_THREADS={self.gdal_threads}"


def default_workers() -> int:
    """The cores this process may run on (its CPU affinity)."""
    return max(
        1,
        len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1),
    )


def _check_workers(workers: int | None) -> None:
    if workers is not None and workers < 0:
        raise ConfigError(
            f"workers must be 0 (auto), 1 (serial) or more, not {workers}",
            hint="omit --workers for the automatic choice",
        )


def source_bytes(sources: Sequence[str]) -> int:
    """Size of the file work ahead: local files by their size; a URL counts as a large
    file (its size is unknown without a request, and remote reads gain most from a pool)."""
    total = 0
    for src in sources:
        if "://" in src:
            total += PARALLEL_MIN_BYTES
            continue
        try:
            total += os.stat(src).st_size
        except OSError:
            continue  # fails in prepare_tile, with its own message
    return total


def plan_workers(
    n_tasks: int,
    workers: int | None = None,
    *,
    cores: int | None = None,
    total_bytes: int | None = None,
) -> Plan:
    """Processes and GDAL threads per process for ``n_tasks`` tiles (module docstring).

    ``workers``: None or 0 = auto, 1 = serial in the caller, N = N processes.
    ``total_bytes``: :func:`source_bytes` of the batch (None: assume it is large enough).
    """
    _check_workers(workers)
    cores = cores if cores is not None else default_workers()
    if not workers:  # auto
        small = total_bytes is not None and total_bytes < PARALLEL_MIN_BYTES
        if n_tasks <= 1 or cores <= 1 or small:
            return Plan(1, ALL_CPUS)
        return Plan(min(cores, n_tasks), "1")
    n = min(workers, max(1, n_tasks))
    if n <= 1:
        return Plan(1, ALL_CPUS)
    return Plan(n, str(max(1, cores // n)))


def plan_remote(n_tasks: int, workers: int | None = None, *, cores: int | None = None) -> int:
    """Threads for ``n_tasks`` remote assets: auto = 4 per core (I/O bound), at most
    :data:`MAX_REMOTE_THREADS` and never more than the tasks; ``workers`` ≥ 1 as given."""
    _check_workers(workers)
    cores = cores if cores is not None else default_workers()
    n = workers if workers else min(MAX_REMOTE_THREADS, 4 * cores)
    return max(1, min(n, n_tasks))


def _prepare_safe(
    config: ProductConfig,
    source: str,
    workdir: Path,
    acquired: datetime | None,
    source_digest: str | None,
    policy: OpeningPolicy | None = None,
    gdal_threads: str | None = None,
    flush: bool = True,
) -> PreparedTile | GeomeshError:
    """Run in a worker: a GeomeshError is returned (picklable), never raised.

    A local source without a known digest is hashed here, while its COG is written.
    """
    if gdal_threads is not None:
        _set_gdal_threads(gdal_threads)
    try:
        return prepare_tile(
            config,
            source,
            workdir,
            acquired=acquired,
            source_digest=source_digest,
            policy=policy,
            hash_source=True,
            flush=flush,
        )
    except GeomeshError as exc:
        # exceptions pickle through their args; keep the class and the full message
        clean = GeomeshError.__new__(type(exc))
        GeomeshError.__init__(clean, str(exc))
        return clean


def _set_gdal_threads(threads: str) -> None:
    os.environ["GEOMESH_GDAL_THREADS"] = threads


def map_prepare(
    config: ProductConfig,
    tasks: Sequence[tuple[str, str | None]],
    workdir: Path,
    *,
    acquired: datetime | None,
    workers: int | None = None,
    scheduler: str | None = None,
    policy: OpeningPolicy | None = None,
    flush: bool = True,
) -> Iterator[tuple[str, PreparedTile | GeomeshError]]:
    """Yield (source, prepared-or-error) in input order, from a spawn pool (or Dask).

    The pool is sized by :func:`plan_workers` (auto for ``workers`` None or 0). All tasks
    are submitted at once, so the pool keeps writing while the caller consumes (stages)
    the results in order.
    """
    if not tasks:
        return
    if scheduler:
        yield from _map_dask(
            config,
            tasks,
            workdir,
            acquired=acquired,
            scheduler=scheduler,
            policy=policy,
            flush=flush,
        )
        return
    plan = plan_workers(len(tasks), workers, total_bytes=source_bytes([s for s, _ in tasks]))
    ctx = multiprocessing.get_context("spawn")  # GDAL state must not be forked
    with ProcessPoolExecutor(
        max_workers=plan.processes,
        mp_context=ctx,
        initializer=_set_gdal_threads,
        initargs=(plan.gdal_threads,),
    ) as pool:
        futures: list[Future[PreparedTile | GeomeshError]] = [
            pool.submit(_prepare_safe, config, src, workdir, acquired, sdigest, policy, flush=flush)
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
    policy: OpeningPolicy | None,
    flush: bool,
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
        slots = sum(
            int(w.get("nthreads", 1)) for w in client.scheduler_info().get("workers", {}).values()
        )
        # tasks running side by side on a worker share its cores: one GDAL thread each
        threads = "1" if slots >= 2 else ALL_CPUS
        futures = [
            client.submit(
                _prepare_safe,
                config,
                src,
                workdir,
                acquired,
                sdigest,
                policy,
                threads,
                flush=flush,
                pure=False,
            )
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
    workers: int | None = None,
    scheduler: str | None = None,
    policy: OpeningPolicy | None = None,
    flush: bool = True,
) -> Iterator[tuple[str, PreparedTile | GeomeshError]]:
    """Run :func:`prepare_tile` for each (source, source_digest), serially or in parallel.

    ``workers``: None or 0 = auto (:func:`plan_workers`), 1 = serial in the caller, N = N
    spawn processes. Results come back in input order. A GeomeshError for one tile is
    returned, not raised. Every source is checked by ``policy`` where it is opened (in the
    worker). A task's digest None means "hash the source while its COG is written".
    """
    sizes = source_bytes([s for s, _ in tasks]) if not workers else None
    if scheduler or plan_workers(len(tasks), workers, total_bytes=sizes).processes > 1:
        yield from map_prepare(
            config,
            tasks,
            workdir,
            acquired=acquired,
            workers=workers,
            scheduler=scheduler,
            policy=policy,
            flush=flush,
        )
        return
    for source, sdigest in tasks:
        try:
            yield (
                source,
                prepare_tile(
                    config,
                    source,
                    workdir,
                    acquired=acquired,
                    source_digest=sdigest,
                    policy=policy,
                    hash_source=True,
                    flush=flush,
                ),
            )
        except GeomeshError as exc:
            yield source, exc
