"""1. Ingest overhead: geomesh ingest of one tile vs a bare ``rio_cogeo.cog_translate``.

geomesh side: ``ingest_rasters`` (SQLite + local store), actor ``system``, no clip, the
default admission. That is: inspect, COG, cog_validate, SHA-256, statistics, STAC item,
content-addressed store, validation, then one transaction that stages, validates and routes
the tile with their audit events. Two catalogs:

* *warm*: the catalog already holds a tile this process ingested (the warm-up): what every
  further tile of a batch, or of a long-running worker or API, pays. The per-tile target
  (≤ 1.05×, issue 19: "no fixed tax per tile") is held here;
* *fresh*: the tile is the first a new catalog gets, opened just before: on top of the
  per-tile work it pays the catalog's one-offs (the product is registered with its audit
  event, SQLAlchemy compiles each statement once for the new engine, the store's folders
  are created). Its wall time is reported, and held to "no second hash". One more row sets
  its overhead beside the warm one: the difference is the one-off, held to ≤ 5 % of the
  tile's ``cog_translate`` (each overhead is the median over runs of the fastest call's
  wall time minus its own ``cog_translate``: far steadier than a difference of two wall
  times, which carries the noise of two ``cog_translate`` calls). The 10980² case, a new
  catalog too, is held to the per-tile target: the one-offs are a rounding error there.

The breakdown in the notes times each step (a probe around the function) and counts the
SHA-256 passes per tile: the COG must be hashed once (validation right after staging
reuses that digest; ``validate_item(known=…)``) and the source once, on a thread while
``cog_translate`` runs (so its time overlaps the COG write and is not overhead on the wall
clock). A per-tile row is met only when the wall-time ratio holds AND no bytes were hashed
twice; a first tile's row, when no bytes were hashed twice.

Baseline: ``cog_translate`` with geomesh's options (DEFLATE, 256 blocks, predictor 2 for
integers, bilinear overviews, the same GDAL config), on the same input.

Each run of each side is one fresh ``spawn`` worker: it imports the same modules for both
sides, warms up on a tiny tile (GDAL drivers, PROJ database, SQLAlchemy, Alembic), then
measures its calls one after the other, so ``ru_maxrss`` is the peak of one call. The sides
alternate (b g, g b, …). For the 2048² tile each worker makes three calls, on three tiles
of that size that differ only in their noise (the same three on both sides; a *fresh*
catalog is opened for each call), and keeps the fastest: on a shared machine a call's wall
time is its own cost plus whatever the neighbours took from it (one call varies by ±15 %
here), and the fastest of three is the closest to the cost itself, on both sides alike. The
notes give every call's time and the ratio of the medians as well.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any, NamedTuple

from bench import (
    S2_ORIGIN,
    SF_ORIGIN,
    Measured,
    Row,
    cpu_seconds,
    fmt_mib,
    fmt_s,
    in_fresh_worker,
    make_tile,
    median,
    open_workspace,
    peak_rss_mib,
    product_config,
    rss_mib,
    workdir,
)

NAME = "ingest overhead"
TIME_TARGET = 1.05
#: what a new catalog's first tile may pay once on top of the per-tile work, as a share of
#: its cog_translate (per tile and once together: the 1.10× a first tile was held to before)
ONE_OFF_TARGET = 0.05
MEMORY_TARGET = 1.50
#: wall-clock budget for the 10980² case; fewer runs (never < 3) when 5 would not fit
BIG_BUDGET_S = 150.0

GDAL_CONFIG = {"GDAL_NUM_THREADS": "ALL_CPUS", "GDAL_TIFF_OVR_BLOCKSIZE": "256"}


def baseline_profile() -> dict[str, Any]:
    """rio-cogeo's deflate profile with geomesh's block size, predictor and BigTIFF rule."""
    from rio_cogeo.profiles import cog_profiles

    profile: dict[str, Any] = dict(cog_profiles.get("deflate"))
    profile.update(blockxsize=256, blockysize=256, BIGTIFF="IF_SAFER", predictor=2)
    return profile


def baseline_cog(src: str, dst: str) -> None:
    from rio_cogeo.cogeo import cog_translate

    cog_translate(
        src,
        dst,
        baseline_profile(),
        overview_resampling="bilinear",
        web_optimized=False,
        quiet=True,
        in_memory=False,
        use_cog_driver=False,
        config=dict(GDAL_CONFIG),
    )


def _probe(
    module: Any,
    name: str,
    spent: dict[str, float],
    calls: dict[str, int] | None = None,
    key: str | None = None,
) -> None:
    """Wrap ``module.name`` to add its wall time to ``spent[key]`` and count its calls
    (a timing probe only; ``key`` defaults to ``name``)."""
    original = getattr(module, name)
    label = key or name

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        t0 = time.perf_counter()
        try:
            return original(*args, **kwargs)
        finally:
            spent[label] = spent.get(label, 0.0) + time.perf_counter() - t0
            if calls is not None:
                calls[label] = calls.get(label, 0) + 1

    setattr(module, name, wrapper)


def measure_side(
    side: str, sources: list[str], out_dir: str, warm_src: str, catalog: str
) -> Measured:
    """Runs in a fresh spawn worker: warm up, then measure one ingest or one cog_translate
    of each of ``sources`` and keep the fastest (``catalog``: ``fresh`` or ``warm``, see
    the module docstring)."""
    import geomesh.raster as raster
    import geomesh.services.pipeline as pipeline
    import geomesh.tiles as tiles
    import geomesh.validation.rules as rules

    out = Path(out_dir)
    config = product_config(out)
    # the same warm-up on both sides, so both workers hold the same modules and caches
    warm_ws = open_workspace(out / ("catalog" if catalog == "warm" else "warm"))
    warm = pipeline.ingest_rasters(warm_ws, config, [warm_src], actor="system")
    if not warm.ok:
        raise RuntimeError(f"warm-up ingest failed: {warm.to_json()}")
    baseline_cog(warm_src, str(out / "warm.tif"))
    before = rss_mib()
    calls_s: list[float] = []
    cpus: list[float] = []
    if side == "baseline":
        for i, src in enumerate(sources):
            c0 = cpu_seconds()
            t0 = time.perf_counter()
            baseline_cog(src, str(out / f"out{i}.tif"))
            calls_s.append(time.perf_counter() - t0)
            cpus.append(cpu_seconds() - c0)
        size = (out / "out0.tif").stat().st_size
        return Measured(
            min(calls_s),
            peak_rss_mib(),
            before,
            {"size": size, "cpu": min(cpus), "calls_s": calls_s},
        )

    spent: dict[str, float] = {}
    calls: dict[str, int] = {}
    _probe(raster, "cog_translate", spent)
    _probe(raster, "validate_cog", spent)
    _probe(tiles, "inspect_with_statistics", spent, calls, "inspect + statistics (COG)")
    _probe(raster, "_inspect_open", spent, calls, "inspect of an open dataset")
    # every SHA-256 pass over tile bytes, wherever it happens
    _probe(tiles, "sha256_mapped", spent, calls, "sha256 COG (thread, during validate + inspect)")
    _probe(tiles, "source_digest_for", spent, calls, "sha256 source (thread, during COG)")
    _probe(pipeline, "source_digest_for", spent, calls, "sha256 source before prepare")
    _probe(rules, "sha256_file", spent, calls, "sha256 COG again (validation)")
    _probe(pipeline, "admit_tile", spent, calls, "admit (stage + validate + route)")
    fastest: dict[str, Any] = {}
    most: dict[str, int] = {}  # the most calls of each probe any ingest made
    for i, src in enumerate(sources):
        ws = warm_ws if catalog == "warm" else open_workspace(out / f"catalog{i}")
        spent.clear()
        calls.clear()
        c0 = cpu_seconds()
        t0 = time.perf_counter()
        report = pipeline.ingest_rasters(ws, config, [src], actor="system")
        seconds = time.perf_counter() - t0
        cpus.append(cpu_seconds() - c0)
        if not report.ok or report.results[0].status != "staged":
            raise RuntimeError(f"geomesh ingest failed: {report.to_json()}")
        if ws is not warm_ws:
            ws.close()
        res = report.results[0]
        if not calls_s or seconds < min(calls_s):
            fastest = {
                "size": res.size,
                "spent": dict(spent),
                "state": res.state,
                "route": res.route,
            }
        calls_s.append(seconds)
        for k, v in calls.items():
            most[k] = max(most.get(k, 0), v)
    warm_ws.close()
    return Measured(
        min(calls_s),
        peak_rss_mib(),
        before,
        {**fastest, "calls": most, "cpu": min(cpus), "calls_s": calls_s},
    )


def _pair(
    i: int, sources: list[Path], warm: Path, base: Path, catalog: str
) -> tuple[Measured, Measured]:
    order = ("baseline", "geomesh") if i % 2 == 0 else ("geomesh", "baseline")
    got: dict[str, Measured] = {}
    names = [str(p) for p in sources]
    for side in order:
        out = base / f"{catalog}{i}-{side}"
        out.mkdir()
        got[side] = in_fresh_worker(measure_side, side, names, str(out), str(warm), catalog)
    return got["geomesh"], got["baseline"]


class Case(NamedTuple):
    rows: list[Row]
    #: median over runs of the fastest call's wall time minus its own cog_translate
    overhead: float
    #: median of those calls' cog_translate
    translate: float


def _case(
    label: str,
    sources: list[Path],
    warm: Path,
    base: Path,
    runs: int,
    budget: float | None,
    catalog: str,
    per_tile: bool,
) -> Case:
    """The rows of one case. ``per_tile``: the wall row holds the target; otherwise it
    is reported (a new catalog's first tile, see the module docstring)."""
    t_start = time.perf_counter()
    pairs = [_pair(0, sources, warm, base, catalog)]
    note_runs = ""
    asked = runs
    if budget is not None:
        per_pair = time.perf_counter() - t_start
        if per_pair * runs > budget:
            runs = max(3, min(runs, int(budget // per_pair)))
            note_runs = f"{runs} runs per side ({asked} would exceed the {budget:.0f} s budget); "
    for i in range(1, runs):
        pairs.append(_pair(i, sources, warm, base, catalog))
    g = [p[0] for p in pairs]
    b = [p[1] for p in pairs]
    tg, tb = median([m.seconds for m in g]), median([m.seconds for m in b])
    mg, mb = median([m.peak_mib for m in g]), median([m.peak_mib for m in b])
    dg, db = median([m.delta_mib for m in g]), median([m.delta_mib for m in b])
    spent: dict[str, list[float]] = {}
    for m in g:
        for k, v in m.extra.get("spent", {}).items():
            spent.setdefault(k, []).append(v)
    parts = {k: median(v) for k, v in spent.items()}
    translate = parts.get("cog_translate", 0.0)
    breakdown = ", ".join(
        f"{k} {fmt_s(v)}"
        for k, v in sorted(parts.items(), key=lambda kv: -kv[1])
        if k != "cog_translate"
    )
    # SHA-256 passes per tile (every run ingests one tile): the most seen in any run
    hashes: dict[str, int] = {}
    for m in g:
        for k, v in m.extra.get("calls", {}).items():
            if k.startswith("sha256"):
                hashes[k] = max(hashes.get(k, 0), v)
    cog_hashes = hashes.get("sha256 COG (thread, during validate + inspect)", 0)
    again = hashes.get("sha256 COG again (validation)", 0)
    source_hashes = hashes.get("sha256 source (thread, during COG)", 0) + hashes.get(
        "sha256 source before prepare", 0
    )
    once = cog_hashes == 1 and again == 0 and source_hashes <= 1
    hash_note = (
        f"SHA-256 per tile: COG {cog_hashes}×, COG again in validation {again}×, source "
        f"{source_hashes}× — " + ("each byte hashed once" if once else "**bytes hashed twice**")
    )
    size_note = f"COG {g[0].extra['size'] / 2**20:.1f} MiB vs {b[0].extra['size'] / 2**20:.1f} MiB"
    cg, cb = median([m.extra["cpu"] for m in g]), median([m.extra["cpu"] for m in b])
    time_ratio = tg / tb
    mem_ratio = mg / mb
    overhead = median([m.seconds - m.extra["spent"].get("cog_translate", 0.0) for m in g])
    time_target = f"≤ {TIME_TARGET:.2f}×, no second hash"

    def call_times(ms: list[Measured]) -> str:
        return ", ".join("/".join(f"{x:.2f}" for x in m.extra["calls_s"]) for m in ms)

    per_call = len(sources)
    all_g = median([x for m in g for x in m.extra["calls_s"]])
    all_b = median([x for m in b for x in m.extra["calls_s"]])
    how = f"fastest of {per_call} calls per run, " if per_call > 1 else ""

    rows = [
        Row(
            NAME,
            f"{label}, {catalog} catalog ({len(pairs)} runs/side)",
            f"wall time, {how}median",
            fmt_s(tg),
            fmt_s(tb),
            time_ratio,
            time_target if per_tile else "no second hash (wall: info, the warm row's target)",
            (time_ratio <= TIME_TARGET and once) if per_tile else once,
            f"{note_runs}{hash_note}; route {g[0].extra['route']} → {g[0].extra['state']}; "
            f"geomesh = cog_translate {fmt_s(translate)} + overhead "
            f"{fmt_s(overhead)} (fastest calls; steps, threads overlap: {breakdown}); "
            f"runs (s, each call): geomesh {call_times(g)}; baseline {call_times(b)} "
            "(median of the "
            f"per-pair ratios {median([x.seconds / y.seconds for x, y in pairs]):.2f}×"
            + (
                f"; median of all calls {fmt_s(all_g)} vs {fmt_s(all_b)}, {all_g / all_b:.2f}×"
                if per_call > 1
                else ""
            )
            + f"); {size_note}",
        ),
        Row(
            NAME,
            f"{label}, {catalog} catalog ({len(pairs)} runs/side)",
            f"CPU time (user+sys, all threads), {how}median",
            fmt_s(cg),
            fmt_s(cb),
            cg / cb,
            "— (info)",
            None,
            "less sensitive than wall time to other load on the machine",
        ),
        Row(
            NAME,
            f"{label}, {catalog} catalog ({len(pairs)} runs/side)",
            "peak RSS (ru_maxrss), median",
            fmt_mib(mg),
            fmt_mib(mb),
            mem_ratio,
            f"≤ {MEMORY_TARGET:.2f}×",
            mem_ratio <= MEMORY_TARGET,
            f"each run in a fresh spawn worker with the same imports; added by the call "
            f"itself (peak − RSS before): {fmt_mib(dg)} vs {fmt_mib(db)}",
        ),
    ]
    return Case(rows, overhead, translate)


def one_off_row(label: str, fresh: float, warm: float, translate_s: float) -> Row:
    """A new catalog's first tile against a further tile: their overheads (each the median
    of the fastest calls' wall time minus their own ``cog_translate``); the difference is
    what the first tile pays once, held to a share of the tile's ``cog_translate``."""
    one_off = fresh - warm
    share = one_off / translate_s if translate_s > 0 else math.nan
    return Row(
        NAME,
        f"{label}, a new catalog's first tile vs a further tile",
        "overhead over its own cog_translate, medians of the fastest calls",
        fmt_s(fresh),
        fmt_s(warm),
        fresh / warm if warm > 0 else math.nan,
        f"one-off (the difference) ≤ {ONE_OFF_TARGET:.0%} of cog_translate",
        one_off <= ONE_OFF_TARGET * translate_s,
        f"one-off {fmt_s(one_off)} = {share:.1%} of a cog_translate of "
        f"{fmt_s(translate_s)}: the product's registration with its audit event, SQLAlchemy "
        "compiling each statement once for the new engine, the store's new folders; once "
        "per catalog (the compiles once per process), never per tile",
    )


def run(smoke: bool) -> list[Row]:
    with workdir("ingest") as tmp:
        base = Path(tmp)
        warm = make_tile(base / "warm.tif", width=256, height=256, count=1, seed=99)
        # (label, size, bands, origin, runs, calls per run, budget, catalogs): nine pairs
        # of the 2048² tile, each run the fastest of three calls, since its ±5 % target is
        # within one call's run-to-run noise on this kind of machine; the 10980² case only
        # fresh and one call per run (its overhead is the same fixed cost, and five pairs
        # already take ~3 min). Every tile overlaps the domain, as a product's tiles do, and
        # takes the usual route (P3 warnings → validation), not the P1 rollback of a tile
        # outside it: the full Sentinel-2 tile covers the domain, a smaller one lies over it
        if smoke:
            cases = [
                ("256×256×4 uint16", 256, 4, SF_ORIGIN, 1, 2, None, ("fresh", "warm")),
                ("512×512×1 uint16", 512, 1, SF_ORIGIN, 1, 1, None, ("fresh",)),
            ]
        else:
            cases = [
                ("2048×2048×4 uint16", 2048, 4, SF_ORIGIN, 9, 3, None, ("fresh", "warm")),
                ("10980×10980×1 uint16", 10980, 1, S2_ORIGIN, 5, 1, BIG_BUDGET_S, ("fresh",)),
            ]
        rows: list[Row] = []
        for label, size, count, origin, runs, per_run, budget, catalogs in cases:
            case_dir = base / f"case{size}"
            case_dir.mkdir()
            sources = [
                make_tile(
                    case_dir / f"src{k}.tif",
                    width=size,
                    height=size,
                    count=count,
                    origin=origin,
                    seed=k,
                )
                for k in range(per_run)
            ]
            done: dict[str, Case] = {}
            for catalog in catalogs:
                # a new catalog's first tile is held to the per-tile target only when no
                # warm case measures the per-tile work beside it
                per_tile = catalog == "warm" or "warm" not in catalogs
                done[catalog] = _case(
                    label, sources, warm, case_dir, runs, budget, catalog, per_tile
                )
                rows += done[catalog].rows
            if {"fresh", "warm"} <= done.keys():
                fresh, warm_case = done["fresh"], done["warm"]
                rows.append(
                    one_off_row(label, fresh.overhead, warm_case.overhead, warm_case.translate)
                )
            for src in sources:
                src.unlink()
        return rows
