"""Findings: every validation finding, filtered by severity, rule, state and product."""

import pandas as pd
import streamlit as st

from geomesh.services import queries
from ui import cached, layout
from ui.state import K
from ui.widgets import FINDING_COLUMNS

ctx = layout.context("Findings", "Filters run in the database; exports hold the filtered rows.")
products = [p["id"] for p in queries.list_products(ctx.ws)]

c1, c2, c3, c4 = st.columns([2, 1, 2, 2])
product = c1.selectbox(
    "Product",
    products,
    index=products.index(ctx.product_id) if ctx.product_id in products else None,
    key=K.F_PRODUCT,
    placeholder="all products",
)
severities = c2.multiselect("Severity", ["P1", "P2", "P3"], key=K.F_SEVERITY)
rules = c3.multiselect("Rule", cached.finding_rules(product), key=K.F_RULE)
states = c4.multiselect(
    "Item state",
    [
        "staging",
        "validation",
        "quarantined",
        "production",
        "rolled_back",
        "withdrawn",
        "superseded",
    ],
    key=K.F_STATE,
)
include_closed = st.toggle("Include closed findings (fixed by a later validation run)", key=K.F_ALL)

filters = {
    "product_id": product,
    "severities": severities,
    "rules": rules,
    "states": states,
    "open_only": not include_closed,
}
total = cached.findings_total(**filters)
pages = max(1, -(-total["total"] // queries.FINDINGS_PAGE_SIZE))
if int(st.session_state.get(K.F_PAGE, 1)) > pages:  # the filters left fewer pages
    st.session_state[K.F_PAGE] = pages
page = int(st.number_input(f"Page (of {pages:,})", 1, pages, key=K.F_PAGE) if pages > 1 else 1)
table = cached.findings_rows(page=page, **filters)
frame = pd.DataFrame(table)
m = st.columns(4)
m[0].metric("Findings", total["total"])
for col, sev in zip(m[1:], ("P1", "P2", "P3"), strict=True):
    col.metric(sev, total["counts"][sev])
first = (page - 1) * queries.FINDINGS_PAGE_SIZE
st.caption(
    f"Rows {first + 1 if total['total'] else 0:,}–{first + len(frame):,} of {total['total']:,}, "
    "worst first; the exports hold every filtered row."
)

st.dataframe(
    frame,
    hide_index=True,
    width="stretch",
    height=520,
    column_order=[
        "severity",
        "rule_id",
        "item_id",
        "state",
        "path",
        "message",
        "remediation",
        "open",
        "created_at",
        "product_id",
    ],  # fmt: skip
    column_config={
        **FINDING_COLUMNS,
        "item_id": st.column_config.TextColumn("Item"),
        "state": st.column_config.TextColumn("State", width="small"),
        "created_at": st.column_config.TextColumn("Found at"),
    },
)
d1, d2, _ = st.columns([1, 1, 4])
d1.download_button(
    "Export CSV",
    lambda: queries.export_findings(ctx.ws, fmt="csv", **filters),
    file_name="geomesh-findings.csv",
    mime="text/csv",
    on_click="ignore",
    disabled=frame.empty,
)
d2.download_button(
    "Export JSON",
    lambda: queries.export_findings(ctx.ws, fmt="json", **filters),
    file_name="geomesh-findings.json",
    mime="application/json",
    on_click="ignore",
    disabled=frame.empty,
)
