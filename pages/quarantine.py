"""Quarantine (analysts): inspect halted items; re-validate, release or discard them."""

import pandas as pd
import streamlit as st

from geomesh.services import pipeline, quarantine, queries
from ui import cached, errors, layout, widgets
from ui.fmt import file_name, short_id
from ui.state import K, flash

ctx = layout.context("Quarantine", "Items halted by validation routing (P2 by default).")
pid = layout.require_product(ctx)
config = queries.product_config(ctx.ws, pid)
ctx.role_note("quarantine", "act on quarantined items")

# items released to staging wait for validation + routing (the pipeline's next step)
staged = cached.item_ids(pid, "staging")
if staged:
    st.info(f"{len(staged)} released item(s) wait in staging for validation and routing.")
    if st.button("Validate and route released items", key=K.Q_ROUTE):
        outcomes = [
            errors.attempt(pipeline.validate_and_route, ctx.ws, config, i, actor=ctx.user.name)
            for i in staged
        ]
        routed = [o for o in outcomes if o is not None]
        if routed:
            flash("; ".join(f"{short_id(o.item_id)} → {o.state}" for o in routed))
            st.rerun()

items = cached.quarantined(pid)
if not items:
    st.success("Nothing is quarantined.")
    st.stop()

rows = [
    {"item": i["id"], "source": file_name(i["source"]), "reason": i["quarantine_reason"],
     **i["findings"], "since": i["updated_at"][:19]}
    for i in items
]  # fmt: skip
st.dataframe(pd.DataFrame(rows), hide_index=True, width="stretch")
ids = [i["id"] for i in items]
item_id = st.selectbox(
    "Item",
    ids,
    key=K.Q_ITEM,
    format_func=lambda i: f"{file_name(items[ids.index(i)]['source'])} · {short_id(i)}",
)
detail = cached.item_detail(pid, item_id)
widgets.item_header(detail)
st.warning(f"Quarantine reason: {detail['quarantine_reason']}", icon=":material/block:")

left, right = st.columns([2, 3])
with left:
    widgets.preview(item_id)
with right:
    st.markdown("**Raster and metadata**")
    widgets.facts_table(detail["raster"])
widgets.findings(detail["open_findings"])
with st.expander("History"):
    widgets.history(detail["history"])

reason = st.text_input("Reason or note (required to discard)", key=K.Q_REASON)
b1, b2, b3, _ = st.columns([1, 1, 1, 3])
if b1.button("Re-validate", key=K.Q_REVALIDATE):
    res = errors.attempt(quarantine.revalidate, ctx.ws, config, item_id, actor=ctx.user.name)
    if res is not None:
        verdict = "can be released" if res.releasable else f"still routes to {res.route}"
        flash(f"Re-validated {short_id(item_id)}: {len(res.findings)} finding(s); it {verdict}.")
        st.rerun()
if b2.button("Release to staging", key=K.Q_RELEASE):
    state = errors.attempt(
        quarantine.release, ctx.ws, config, item_id, actor=ctx.user.name, note=reason or None
    )
    if state is not None:
        flash(f"Released {short_id(item_id)} to {state}.")
        st.rerun()
if b3.button("Discard", key=K.Q_DISCARD, type="primary"):
    state = errors.attempt(quarantine.discard, ctx.ws, item_id, actor=ctx.user.name, reason=reason)
    if state is not None:
        flash(f"Discarded {short_id(item_id)}: {reason.strip()}")
        st.rerun()
