"""2. Batch scaling: 16 tiles ingested serially vs with ``workers=2`` (geomesh.parallel).

Both sides call ``ingest_rasters`` on the same 16 sources, each into a fresh catalog, from
this process; the parallel side includes starting its spawn process pool (that is part of
what ``--workers 2`` costs). Sides alternate; the speed-up is serial / parallel of the
median wall times.
"""

from __future__ import annotations

import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from bench import (
    Row,
    fmt_s,
    make_tile,
    median,
    open_workspace,
    product_config,
    timed,
    workdir,
)

NAME = "batch scaling"
TARGET = 1.8
WORKERS = 2


def _ingest(sources: list[str], root: Path, config: object, workers: int) -> float:
    from geomesh.services.pipeline import ingest_rasters

    ws = open_workspace(root)
    try:
        seconds, report = timed(
            lambda: ingest_rasters(ws, config, sources, actor="system", workers=workers)  # type: ignore[arg-type]
        )
    finally:
        ws.close()
    staged = report.counts().get("staged", 0)
    if staged != len(sources):
        raise RuntimeError(
            f"workers={workers}: staged {staged} of {len(sources)}: {report.counts()}"
        )
    return seconds


def _import_worker(_: int) -> int:
    import geomesh.services.ingest  # noqa: F401  (what a geomesh.parallel worker imports)

    return os.getpid()


def pool_startup(workers: int) -> float:
    """Wall time to start a spawn pool like geomesh.parallel's and import geomesh in it."""
    ctx = multiprocessing.get_context("spawn")

    def start() -> list[int]:
        with ProcessPoolExecutor(max_workers=workers, mp_context=ctx) as pool:
            return list(pool.map(_import_worker, range(workers)))

    seconds, _ = timed(start)
    return seconds


def run(smoke: bool) -> list[Row]:
    n, size, rounds = (4, 128, 1) if smoke else (16, 1536, 2)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    with workdir("batch") as tmp:
        base = Path(tmp)
        config = product_config(base)
        sources = [
            str(
                make_tile(
                    base / f"tile{i:02d}.tif",
                    width=size,
                    height=size,
                    count=4,
                    seed=i,
                    # neighbouring tiles, all inside the 10SEG footprint
                    origin=(
                        540000.0 + 2 * size * 10 * (i % 4),
                        4190000.0 - 2 * size * 10 * (i // 4),
                    ),
                )
            )
            for i in range(n)
        ]
        # warm this process (GDAL, PROJ, SQLAlchemy) before the first measured run
        _ingest(sources[:1], base / "warm", config, 1)
        serial: list[float] = []
        parallel: list[float] = []
        for r in range(rounds):
            order = (1, WORKERS) if r % 2 == 0 else (WORKERS, 1)
            for w in order:
                t = _ingest(sources, base / f"r{r}-w{w}", config, w)
                (serial if w == 1 else parallel).append(t)
        startup = pool_startup(WORKERS)
    ts, tp = median(serial), median(parallel)
    speedup = ts / tp
    return [
        Row(
            NAME,
            f"{n} tiles {size}×{size}×4 uint16, workers={WORKERS} on {cores} cores "
            f"({rounds} runs/side)",
            "speed-up (serial / parallel wall time)",
            fmt_s(tp),
            fmt_s(ts),
            speedup,
            f"≥ {TARGET:.1f}×",
            speedup >= TARGET,
            f"geomesh = workers={WORKERS} (spawn pool, start-up included), baseline = serial "
            f"(whose COG writes already use every core: GDAL_NUM_THREADS=ALL_CPUS); pool "
            f"start-up alone {fmt_s(startup)}; {ts / n * 1000:.0f} ms/tile serial; per-run serial "
            + ", ".join(fmt_s(t) for t in serial)
            + "; parallel "
            + ", ".join(fmt_s(t) for t in parallel),
        )
    ]
