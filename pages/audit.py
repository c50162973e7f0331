"""Audit: the hash-chained trail, searchable, with its verification status and an export."""

import pandas as pd
import streamlit as st

from geomesh.services import queries
from ui import cached, layout
from ui.state import K

ctx = layout.context("Audit", "Every state change, append-only and hash-chained.")

full = st.button(
    "Verify the whole chain",
    key=K.A_VERIFY_FULL,
    help="Recompute every event's hash, not only those since the last verified head",
)
status = queries.audit_chain_status(ctx.ws, full=True) if full else cached.chain_status()
if status["ok"]:
    st.success(f"Chain verified: {status['events']} events, every hash links to the previous one.")
    st.caption(
        "Whole chain recomputed."
        if status["full"]
        else f"Events #{status['from_seq']:,}–#{status['events']:,} recomputed now; the ones "
        "before were verified by an earlier check (re-check them with the button above)."
    )
else:
    st.error(
        f"Chain broken: {len(status['problems'])} problem(s) in {status['events']} events. "
        "Someone edited, inserted or deleted events in the database."
    )
    st.dataframe(pd.DataFrame({"problem": status["problems"]}), hide_index=True)

facets = cached.audit_facets()
c1, c2, c3 = st.columns([2, 1, 1])
text = c1.text_input("Search (target, action, actor or event id)", key=K.A_TEXT)
actor = c2.selectbox("Actor", facets["actors"], index=None, key=K.A_ACTOR, placeholder="any")
action = c3.selectbox("Action", facets["actions"], index=None, key=K.A_ACTION, placeholder="any")

events = cached.audit_events(text or None, actor, action)
st.caption(f"{len(events)} event(s), newest first (at most 2,000 shown; the export has all).")
st.dataframe(pd.DataFrame(events), hide_index=True, width="stretch", height=520)

st.download_button(
    "Export audit trail (JSON lines)",
    lambda: queries.audit_jsonl(ctx.ws),
    file_name="geomesh-audit.jsonl",
    mime="application/x-ndjson",
    on_click="ignore",
)
