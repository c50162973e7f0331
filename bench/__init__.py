"""geomesh benchmarks: ``make bench`` (``python -m bench``) prints one table and writes it,
with the machine it ran on, to ``bench/results.md``.

Every benchmark is a function ``run(smoke: bool) -> list[Row]`` in its own module, run in
its own spawned process. Each row compares geomesh with a baseline measured in that same
process and run (alternating where both sides repeat), so the ratio means something on any
machine; the absolute numbers are only as good as the machine was quiet. ``--smoke`` runs every benchmark at tiny sizes (the smoke
test in ``tests/test_bench_smoke.py`` checks the table's structure, never its timings).

This module holds what the benchmarks share: the row type, timing, peak-memory measurement
in fresh spawn workers, the synthetic rasters and the machine description.
"""

from __future__ import annotations

import importlib
import logging
import math
import multiprocessing
import os
import platform
import resource
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared"
SCHEMA_DIR = SHARED / "stac-schemas"
STAC_ITEMS = SHARED / "data" / "stac-items"

#: the README's example product (EPSG:4326 box over San Francisco), used by every benchmark
PRODUCT_YAML = """\
spatial_domain:
  crs: "EPSG:4326"
  boundary_wkt: "POLYGON((-122.5 37.7, -122.3 37.7, -122.3 37.9, -122.5 37.9, -122.5 37.7))"
product_metadata:
  product_id: "sentinel2-msi-l2a-v2.1"
  version_strategy: "semantic"
  lifecycle_stage: "production"
ingestion:
  tile_size: 256
  resampling: "bilinear"
  output_format: "cloud-optimized-geotiff"
  checksum_algorithm: "sha256"
"""

#: UTM 10N origin of Sentinel-2 tile 10SEG, which covers the San Francisco domain
S2_ORIGIN = (499980.0, 4200000.0)
#: UTM 10N corner of a tile that lies over the San Francisco domain (up to ~20 km wide)
SF_ORIGIN = (544000.0, 4193000.0)


# ------------------------------------------------------------------ rows


@dataclass
class Row:
    """One line of the results table."""

    bench: str
    case: str
    metric: str
    geomesh: str
    baseline: str
    #: geomesh against the baseline, in the direction the target states
    ratio: float
    target: str
    #: None: informational row (no target)
    met: bool | None
    notes: str = ""

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


COLUMNS = ("benchmark", "case", "metric", "geomesh", "baseline", "ratio", "target", "met?", "notes")


def fmt_ratio(r: float) -> str:
    if not math.isfinite(r):
        return "n/a"
    return f"{r:.0f}×" if r >= 100 else f"{r:.2f}×"


def fmt_met(m: bool | None) -> str:
    return "—" if m is None else ("yes" if m else "**NO**")


def fmt_s(seconds: float) -> str:
    if seconds < 1e-3:
        return f"{seconds * 1e6:.0f} µs"
    if seconds < 1:
        return f"{seconds * 1e3:.1f} ms"
    return f"{seconds:.2f} s"


def fmt_mib(mib: float) -> str:
    return f"{mib:.0f} MiB"


def markdown_table(rows: list[Row]) -> str:
    def esc(s: str) -> str:
        return s.replace("|", "\\|")

    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for r in rows:
        cells = [
            r.bench,
            r.case,
            r.metric,
            r.geomesh,
            r.baseline,
            fmt_ratio(r.ratio),
            r.target,
            fmt_met(r.met),
            r.notes,
        ]
        lines.append("| " + " | ".join(esc(c) for c in cells) + " |")
    return "\n".join(lines)


def skipped(bench: str, reason: str) -> list[Row]:
    """A benchmark that could not run says so in the table (ratio 1, no target)."""
    return [Row(bench, "skipped", "—", "—", "—", 1.0, "—", None, reason)]


# ------------------------------------------------------------------ running


def quiet_logs() -> None:
    """Routing logs a warning per tile with P3 findings: not what a benchmark reader needs."""
    logging.getLogger("geomesh").setLevel(logging.ERROR)


def run_benchmark(name: str, smoke: bool) -> list[Row]:
    """Run ``bench.<name>.run(smoke)`` (module-level, so a spawned process can call it)."""
    quiet_logs()
    module = importlib.import_module(f"bench.{name}")
    rows: list[Row] = module.run(smoke)
    return rows


# ------------------------------------------------------------------ timing


def median(values: list[float]) -> float:
    return statistics.median(values)


@contextmanager
def timer(out: list[float]) -> Iterator[None]:
    t0 = time.perf_counter()
    try:
        yield
    finally:
        out.append(time.perf_counter() - t0)


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    t0 = time.perf_counter()
    value = fn()
    return time.perf_counter() - t0, value


def rss_mib() -> float:
    """Current resident set size of this process (MiB)."""
    with open("/proc/self/statm") as fh:
        pages = int(fh.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def cpu_seconds() -> float:
    """User + system CPU time of this process so far, all threads included."""
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def peak_rss_mib() -> float:
    """High-water mark of this process's resident set (ru_maxrss is KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


@dataclass
class Measured:
    """One call measured in a fresh worker: wall time, peak RSS and RSS before the call."""

    seconds: float
    peak_mib: float
    before_mib: float
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def delta_mib(self) -> float:
        """Memory the call added on top of the warmed-up worker (peak − RSS before)."""
        return max(0.0, self.peak_mib - self.before_mib)


def in_fresh_worker(fn: Callable[..., Measured], *args: Any) -> Measured:
    """Run ``fn(*args)`` in a new spawned process (so ru_maxrss is this call's peak).

    GDAL allocates natively, so tracemalloc cannot see it: each measured call gets its own
    process and reads its own ``ru_maxrss``. ``fn`` must be a module-level function that
    imports and warms up what it needs, then measures only the call.
    """
    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=1, mp_context=ctx) as pool:
        return pool.submit(fn, *args).result()


# ------------------------------------------------------------------ data


def make_tile(
    path: Path,
    *,
    width: int,
    height: int,
    count: int,
    seed: int = 0,
    origin: tuple[float, float] = S2_ORIGIN,
    res: float = 10.0,
) -> Path:
    """A uint16 GeoTIFF in EPSG:32610 over San Francisco: smooth gradients + noise.

    Compressible like real reflectance (not white noise), written tiled and uncompressed
    in row blocks so a 10980×10980 band never needs more than a block of memory.
    """
    import numpy as np
    import rasterio
    from rasterio.crs import CRS
    from rasterio.transform import from_origin
    from rasterio.windows import Window

    rng = np.random.default_rng(seed)
    profile = {
        "driver": "GTiff",
        "width": width,
        "height": height,
        "count": count,
        "dtype": "uint16",
        "crs": CRS.from_epsg(32610),
        "transform": from_origin(origin[0], origin[1], res, res),
        "nodata": 0,
        "tiled": width >= 256 and height >= 256,
        "blockxsize": 256 if width >= 256 else None,
        "blockysize": 256 if height >= 256 else None,
        "BIGTIFF": "IF_SAFER",
    }
    profile = {k: v for k, v in profile.items() if v is not None}
    x = np.linspace(0.0, 1.0, width, dtype=np.float32)
    step = 1024
    with rasterio.open(path, "w", **profile) as dst:
        for band in range(1, count + 1):
            phase = band + seed
            for row0 in range(0, height, step):
                rows = min(step, height - row0)
                y = (np.arange(row0, row0 + rows, dtype=np.float32) / max(1, height - 1))[:, None]
                smooth = (
                    800.0
                    + 2500.0 * x * (band / count)
                    + 1800.0 * y
                    + 600.0 * np.sin(x * 23.0 + phase) * np.cos(y * 17.0 - phase)
                )
                noise = rng.integers(0, 48, (rows, width), dtype=np.uint16)
                block = smooth.astype(np.uint16) + noise
                dst.write(block, band, window=Window(0, row0, width, rows))
        dst.update_tags(TIFFTAG_DATETIME="2024:06:12 19:03:21")
    return path


def product_config(workdir: Path, yaml_text: str = PRODUCT_YAML) -> Any:
    from geomesh.config import load_config

    p = workdir / "product.yaml"
    p.write_text(yaml_text)
    return load_config(p)


def open_workspace(root: Path) -> Any:
    """A fresh catalog (SQLite + local store) under ``root``, with the shared schema store."""
    from geomesh.settings import Settings
    from geomesh.workspace import Workspace

    kwargs: dict[str, Any] = {
        "storage_root": root,
        "database_url": f"sqlite:///{root / 'geomesh.db'}",
        "object_store": "local",
        "log_stderr": False,
    }
    if SCHEMA_DIR.is_dir():
        kwargs["schema_dir"] = SCHEMA_DIR
    return Workspace.open(Settings(**kwargs))


def workdir(prefix: str) -> tempfile.TemporaryDirectory[str]:
    return tempfile.TemporaryDirectory(prefix=f"geomesh-bench-{prefix}-")


# ------------------------------------------------------------------ machine


def machine_info() -> dict[str, str]:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    ram = "unknown"
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                ram = f"{int(line.split()[1]) / 2**20:.1f} GiB"
                break
    except OSError:
        pass
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    try:
        import rasterio
        import rio_cogeo

        gdal = f"{rasterio.__gdal_version__} (rasterio {rasterio.__version__}, rio-cogeo {rio_cogeo.__version__})"
    except ImportError:  # pragma: no cover - pinned dependencies
        gdal = "unknown"
    try:
        load = " / ".join(f"{v:.2f}" for v in os.getloadavg())
    except OSError:
        load = "unknown"
    return {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": cpu,
        "cores": str(cores),
        "ram": ram,
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "gdal": gdal,
        "os": f"{platform.system()} {platform.release()}",
        "load average at start (1/5/15 min)": load,
        # geomesh is installed editable: with no .pyc written, every process (each CLI
        # call, each batch worker) compiles its modules again (~30 ms per worker here)
        "python bytecode cache": "off (PYTHONDONTWRITEBYTECODE set)"
        if os.environ.get("PYTHONDONTWRITEBYTECODE")
        else "on",
    }
