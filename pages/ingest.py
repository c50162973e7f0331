"""Ingest (stewards): upload rasters or name paths/URLs; dry run first, then ingest.

Untrusted input: uploads are saved only after the service checked the role, into a
private folder under the storage root, and removed after every run; typed paths must lie
in an import directory and URLs under an allowed prefix (``geomesh.opening``).
"""

from collections.abc import Callable

import pandas as pd
import streamlit as st

from geomesh.services import queries, uploads
from geomesh.services.ingest import IngestReport, TileResult
from geomesh.services.pipeline import ingest_rasters
from ui import errors, layout
from ui.state import K

ctx = layout.context(
    "Ingest", "Tiles are converted to COGs, stored content-addressed, validated and routed."
)
pid = layout.require_product(ctx)
config = queries.product_config(ctx.ws, pid)
ctx.role_note("ingest", "ingest tiles")

limit_mb = uploads.upload_limit_mb(ctx.ws)
files = st.file_uploader(
    f"GeoTIFF / COG files (at most {limit_mb} MB each)",
    type=["tif", "tiff"],
    accept_multiple_files=True,
    key=K.I_UPLOAD,
    help="Uploads are kept only while they are checked and ingested.",
)
text = st.text_area(
    "…or paths in an import folder and URLs under an allowed prefix (http(s)://, s3://), "
    "one per line",
    key=K.I_PATHS,
    height=90,
)
named = [line.strip() for line in text.splitlines() if line.strip()]
wanted = [f"upload:{f.name}:{f.size}" for f in files or []] + named


def show(results: list[dict[str, object]]) -> None:
    st.dataframe(pd.DataFrame(results), hide_index=True, width="stretch")


def run(
    *, dry_run: bool, progress: Callable[[TileResult], None] | None = None
) -> IngestReport | None:
    """Save the uploads (the service checks the role first), run, and remove them again."""
    paths = errors.attempt(uploads.save_uploads, ctx.ws, ctx.user.name, files or [])
    if paths is None:
        return None
    try:
        policy = errors.attempt(uploads.app_policy, ctx.ws, config, ctx.user.name)
        if policy is None:
            return None
        return errors.attempt(
            ingest_rasters,
            ctx.ws,
            config,
            [str(p) for p in paths] + named,
            actor=ctx.user.name,
            dry_run=dry_run,
            progress=progress,
            policy=policy,
        )
    finally:
        uploads.discard_uploads(ctx.ws, ctx.user.name, paths)


if st.button("Dry run", key=K.I_DRY_RUN, disabled=not wanted):
    report = run(dry_run=True)
    if report is not None:
        st.session_state[K.INGEST_DRY_RUN] = {"wanted": wanted, **report.to_json()}

dry = st.session_state.get(K.INGEST_DRY_RUN)
if dry and dry["wanted"] != wanted:
    st.session_state.pop(K.INGEST_DRY_RUN, None)
    dry = None
if dry:
    st.markdown(f"**Dry run** for {pid}: nothing was written. Counts: {dry['counts']}")
    show(
        [
            {"source": r["source"], "status": r["status"], "item": r["item_id"],
             "findings": r["findings"], "route": r["route"], "would write object": r["object_key"],
             "would write item": r["stac_key"], "size": r["size"], "error": r["error"]}
            for r in dry["results"]
        ]
    )  # fmt: skip
    if st.button("Ingest", key=K.I_INGEST, type="primary", disabled=not dry["ok"]):
        total = len(wanted)
        done: list[TileResult] = []
        with st.status(f"Ingesting {total} tile(s)…", expanded=True) as status:
            bar = st.progress(0.0)

            def tick(result: TileResult) -> None:
                done.append(result)
                bar.progress(len(done) / total, text=f"{len(done)}/{total}: {result.source}")

            report = run(dry_run=False, progress=tick)
            status.update(
                label="Ingest finished" if report and report.ok else "Ingest finished with errors",
                state="complete" if report and report.ok else "error",
            )
        if report is not None:
            st.session_state.pop(K.INGEST_DRY_RUN, None)
            st.success(f"Ingested: {report.counts()} (run {report.run_id}).")
            show([r.to_json() for r in report.results])
