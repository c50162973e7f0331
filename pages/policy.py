"""Policy: the product's registered config (the one every governance decision uses), its
versions with digests and diffs, and the approval of a pending loosening change by a second
admin or steward (one service call). Changing it: `geomesh products update CONFIG`."""

import pandas as pd
import streamlit as st

from geomesh.services import policy
from ui import errors, layout
from ui.state import K, flash

ctx = layout.context(
    "Policy",
    "The registered config decides approvals, routing and severities. Every change is "
    "versioned; a loosening one waits for a second admin or steward.",
)
product_id = layout.require_product(ctx)
versions = policy.policy_history(ctx.ws, product_id)
active = next((v for v in versions if v.status == "active"), None)
if active is not None:
    st.markdown(
        f"**Registered config:** version {active.version} · `{active.digest[:16]}…` · "
        f"by {active.proposed_by}"
        + (f", approved by {active.approved_by}" if active.approved_by else "")
        + f" · {active.proposed_at:%Y-%m-%d %H:%M} UTC"
    )

# ---- changes waiting for a second approver
pending = [v for v in versions if v.status == "pending"]
if pending:
    st.subheader("Waiting for approval")
    ctx.role_note("product.config.approve", "approve a policy change")
for v in pending:
    with st.container(border=True):
        st.markdown(
            f"**Version {v.version}** proposed by **{v.proposed_by}** "
            f"({v.proposed_at:%Y-%m-%d %H:%M} UTC) · digest `{v.digest}`"
        )
        st.markdown("It loosens governance:\n" + "\n".join(f"- {r}" for r in v.loosening))
        st.code(v.diff_text, language="diff")
        if v.proposed_by == ctx.user.name:
            st.caption("You proposed this change: another admin or steward must approve it.")
        if st.button(f"Approve version {v.version}", key=f"{K.POL_APPROVE}.{v.version}"):
            done = errors.attempt(
                policy.approve_config, ctx.ws, product_id, v.digest, actor=ctx.user.name
            )
            if done is not None:
                flash(done.message)
                st.rerun()

# ---- the history
st.subheader("History")
st.dataframe(
    pd.DataFrame(
        [
            {
                "version": v.version,
                "status": v.status,
                "change": v.change,
                "digest": v.digest[:16],
                "previous digest": (v.previous_digest or "")[:16],
                "proposed by": v.proposed_by,
                "proposed at": v.proposed_at,
                "approved by": v.approved_by or "",
                "approved at": v.approved_at,
                "spatial contract": "changed (MAJOR)" if v.spatial_contract_changed else "",
            }
            for v in versions
        ]
    ),
    hide_index=True,
    width="stretch",
)
for v in versions:
    with st.expander(f"Version {v.version} · {v.status} · {v.change} · `{v.digest[:12]}…`"):
        st.caption(f"old digest {v.previous_digest or '-'} → new digest {v.digest}")
        st.code(v.diff_text or "(the config as first registered)", language="diff")
        st.json(v.config, expanded=False)
