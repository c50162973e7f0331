"""Overview: the product card, counts per state and severity, KPIs and recent activity."""

import altair as alt
import pandas as pd
import streamlit as st

from geomesh.services import tasks
from ui import cached, layout
from ui.fmt import SEVERITY_COLOURS, STATE_COLOURS, duration, md_escape

ctx = layout.context("Overview")
pid = layout.require_product(ctx)
ov = cached.overview(pid)
states = ov["states"]

with st.container(border=True):
    card, shape = st.columns([3, 2])
    with card:
        st.subheader(md_escape(ov["title"]))
        st.text(ov["description"])
        st.markdown(
            f"**Product** `{ov['id']}` · **current version** "
            f"`{ov['current_version'] or ('withdrawn' if ov['releases'] else 'unreleased')}` "
            f"({ov['releases']} releases) · "
            f"**lifecycle stage** `{ov['lifecycle_stage']}`"
        )
        st.caption(
            f"{md_escape(ov['platform'] or '-')} · {md_escape(', '.join(ov['instruments']) or '-')} · "
            f"{md_escape(ov['processing_level'] or '-')} · domain CRS {ov['crs']} · "
            f"{ov['approvals_required']} steward approval(s) per item"
        )
    with shape:
        boundary = alt.Data(values=[{"type": "Feature", "geometry": ov["boundary"]}])
        st.altair_chart(
            alt.Chart(boundary)
            .mark_geoshape(fill="#e3f2fd", stroke="#263238", strokeDash=[5, 3])
            .project("mercator")
            .properties(height=170, title="domain boundary"),
            width="stretch",
        )

m = st.columns(5)
m[0].metric("In production", states.get("production", 0))
m[1].metric("Awaiting sign-off", states.get("validation", 0))
m[2].metric("Quarantined", states.get("quarantined", 0))
m[3].metric("Open P1 findings", ov["severities"]["P1"])
m[4].metric("Median staging → sign-off", duration(ov["signoff"]["median_seconds"]))

left, right = st.columns(2)
with left:
    st.markdown("**Items per state**")
    frame = pd.DataFrame({"state": list(states), "items": list(states.values())})
    st.altair_chart(
        alt.Chart(frame)
        .mark_bar()
        .encode(
            x=alt.X("items:Q"),
            y=alt.Y("state:N", sort="-x", title=None),
            color=alt.Color(
                "state:N",
                scale=alt.Scale(domain=list(STATE_COLOURS), range=list(STATE_COLOURS.values())),
                legend=None,
            ),
        )
        .properties(height=200),
        width="stretch",
    )
with right:
    st.markdown("**Open findings per severity**")
    sev = pd.DataFrame(
        {"severity": list(ov["severities"]), "findings": list(ov["severities"].values())}
    )
    st.altair_chart(
        alt.Chart(sev)
        .mark_bar()
        .encode(
            x=alt.X("severity:N", title=None),
            y=alt.Y("findings:Q"),
            color=alt.Color(
                "severity:N",
                scale=alt.Scale(
                    domain=["P1", "P2", "P3"],
                    range=[SEVERITY_COLOURS[s] for s in ("P1", "P2", "P3")],
                ),
                legend=None,
            ),
        )
        .properties(height=200),
        width="stretch",
    )

left, right = st.columns(2)
with left:
    st.markdown("**Pass rate per rule** (validated items without an open finding of the rule)")
    rates = pd.DataFrame([r for r in ov["rule_pass_rates"] if r["pass_rate"] is not None])
    if rates.empty:
        st.caption("No item has been validated yet.")
    else:
        st.altair_chart(
            alt.Chart(rates)
            .mark_bar()
            .encode(
                x=alt.X(
                    "pass_rate:Q",
                    title="pass rate",
                    axis=alt.Axis(format="%"),
                    scale=alt.Scale(domain=[0, 1]),
                ),
                y=alt.Y("rule:N", title=None, axis=alt.Axis(labelOverlap=False)),
                color=alt.Color(
                    "severity:N",
                    scale=alt.Scale(
                        domain=["P1", "P2", "P3"],
                        range=[SEVERITY_COLOURS[s] for s in ("P1", "P2", "P3")],
                    ),
                    title="default severity",
                ),
                tooltip=[
                    "rule",
                    "severity",
                    "items_failing",
                    "items_validated",
                    alt.Tooltip("pass_rate:Q", format=".0%"),
                ],
            )
            .properties(height=24 * len(rates)),
            width="stretch",
        )
with right:
    st.markdown("**Time from staging to sign-off** (approved item versions)")
    bins = pd.DataFrame(ov["signoff"]["histogram"])
    if bins.empty:
        st.caption("No item has been approved yet.")
    else:
        longest = float(ov["signoff"]["max_seconds"] or 0.0)
        unit, factor = (
            ("seconds", 1.0)
            if longest < 120
            else ("minutes", 60.0)
            if longest < 7200
            else ("hours", 3600.0)
        )
        bins["from"] = bins["from"] / factor
        bins["to"] = bins["to"] / factor
        st.altair_chart(
            alt.Chart(bins)
            .mark_bar(color="#1e88e5")
            .encode(
                x=alt.X("from:Q", bin="binned", title=unit),
                x2="to:Q",
                y=alt.Y("items:Q", title="item versions"),
                tooltip=[
                    alt.Tooltip("from:Q", format=".1f"),
                    alt.Tooltip("to:Q", format=".1f"),
                    "items:Q",
                ],
            )
            .properties(height=200),
            width="stretch",
        )

st.markdown("**Worker** (`geomesh worker`: escalation webhooks, re-clips, snapshots, previews)")
queue = tasks.queue_depth(ctx.ws)
q = st.columns(5)
q[0].metric("Tasks queued", queue["tasks"]["queued"])
q[1].metric("Tasks running", queue["tasks"]["running"])
q[2].metric("Tasks failed", queue["tasks"]["failed"])
q[3].metric("Webhooks pending", queue["outbox"]["pending"])
q[4].metric("Webhooks failed", queue["outbox"]["failed"])
if queue["failed_tasks"]:
    st.caption("Failed tasks (queue them again with `geomesh tasks retry ID`)")
    st.dataframe(
        pd.DataFrame(
            [
                {
                    "task": t["id"],
                    "kind": t["kind"],
                    "item": t["item_id"] or "",
                    "attempts": t["attempts"],
                    "error": t["last_error"] or "",
                }
                for t in queue["failed_tasks"]
            ]
        ),
        hide_index=True,
        width="stretch",
    )

st.markdown("**Recent activity**")
st.dataframe(pd.DataFrame(ov["activity"]), hide_index=True, width="stretch")
