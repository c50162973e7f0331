"""Ingest (stewards): upload rasters or name paths/URLs; dry run first, then ingest."""

import pandas as pd
import streamlit as st

from geomesh.services import queries
from geomesh.services.ingest import TileResult
from geomesh.services.pipeline import ingest_rasters
from ui import errors, layout, uploads
from ui.state import K

ctx = layout.context(
    "Ingest", "Tiles are converted to COGs, stored content-addressed, validated and routed."
)
pid = layout.require_product(ctx)
config = queries.product_config(ctx.ws, pid)
ctx.role_note("ingest", "ingest tiles")

files = st.file_uploader(
    "GeoTIFF / COG files", type=["tif", "tiff"], accept_multiple_files=True, key=K.I_UPLOAD
)
text = st.text_area(
    "…or paths and URLs (http(s)://, s3://), one per line", key=K.I_PATHS, height=90
)
named = [line.strip() for line in text.splitlines() if line.strip()]
wanted = [f"upload:{f.name}:{f.size}" for f in files or []] + named


def show(results: list[dict[str, object]]) -> None:
    st.dataframe(pd.DataFrame(results), hide_index=True, width="stretch")


if st.button("Dry run", key=K.I_DRY_RUN, disabled=not wanted):
    paths = errors.attempt(uploads.save, ctx.ws, ctx.user.name, files or [])
    if paths is not None:
        sources = [str(p) for p in paths] + named
        report = errors.attempt(
            ingest_rasters, ctx.ws, config, sources, actor=ctx.user.name, dry_run=True
        )
        if report is not None:
            st.session_state[K.INGEST_DRY_RUN] = {
                "wanted": wanted,
                "sources": sources,
                **report.to_json(),
            }

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
        total = len(dry["sources"])
        done: list[TileResult] = []
        with st.status(f"Ingesting {total} tile(s)…", expanded=True) as status:
            bar = st.progress(0.0)

            def tick(result: TileResult) -> None:
                done.append(result)
                bar.progress(len(done) / total, text=f"{len(done)}/{total}: {result.source}")

            report = errors.attempt(
                ingest_rasters,
                ctx.ws,
                config,
                dry["sources"],
                actor=ctx.user.name,
                progress=tick,
            )
            status.update(
                label="Ingest finished" if report and report.ok else "Ingest finished with errors",
                state="complete" if report and report.ok else "error",
            )
        if report is not None:
            st.session_state.pop(K.INGEST_DRY_RUN, None)
            uploads.discard(r.source for r in report.results if r.status != "failed")
            st.success(f"Ingested: {report.counts()} (run {report.run_id}).")
            show([r.to_json() for r in report.results])
