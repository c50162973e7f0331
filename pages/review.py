"""Review queue (stewards): sign off items in validation, then promote a new release."""

import pandas as pd
import streamlit as st

from geomesh.services import promotion, queries, signoff
from ui import cached, errors, layout, widgets
from ui.fmt import md_escape, short_id
from ui.state import K, flash

ctx = layout.context("Review queue", "Items in state validation, awaiting steward sign-off.")
pid = layout.require_product(ctx)
config = queries.product_config(ctx.ws, pid)
ctx.role_note("signoff", "sign off items")

queue = cached.review_queue(pid)
if not queue:
    st.info("Nothing awaits sign-off.")
else:
    st.dataframe(pd.DataFrame(queue), hide_index=True, width="stretch")
    ids = [q["id"] for q in queue]
    st.caption(
        "Checksums: the last hash of each unchanged stored object (size and modification "
        "time or ETag); promotion always re-hashes."
    )
    if st.button("Verify now", key=K.R_VERIFY, help="Re-hash every queued item's stored object"):
        checked = queries.verify_checksums(ctx.ws, ids)
        cached.checksums_verified()
        bad = [i for i, c in checked.items() if not c["ok"]]
        flash(f"Verified {len(checked)} object(s): {len(bad)} mismatch(es).")
        st.rerun()
    if st.session_state.get(K.R_ITEM) not in ids:
        st.session_state[K.R_ITEM] = ids[0]
    by_id = {q["id"]: q for q in queue}
    item_id = st.selectbox(
        "Item to review",
        ids,
        key=K.R_ITEM,
        format_func=lambda i: f"{by_id[i]['source']} · {short_id(i)}",
    )
    detail = cached.review_item(pid, item_id)
    prod = detail["production"]
    widgets.item_header(detail)
    check = detail["checksum_now"]
    (st.success if check["ok"] else st.error)(f"Checksum now: {check['detail']}")

    left, right = st.columns(2)
    with left:
        st.markdown("**This version**")
        widgets.preview(item_id, caption="candidate")
    with right:
        if prod is None:
            st.markdown("**Production**")
            st.caption("No version of this tile is in production: it is a new tile.")
        else:
            st.markdown(f"**Production** `{md_escape(short_id(prod['production_id']))}`")
            widgets.preview(prod["production_id"], caption="in production")
    widgets.facts_table(detail["raster"], prod["production_raster"] if prod else None)
    if prod is not None:
        changes = [
            {"field": k, "production": str(v["from"])[:200], "this version": str(v["to"])[:200]}
            for k, v in prod["changes"].items()
        ]
        with st.expander(f"Item JSON differences against production ({len(changes)})"):
            st.dataframe(pd.DataFrame(changes), hide_index=True, width="stretch")
    widgets.findings(detail["open_findings"])
    if detail["approvals"]:
        st.caption("Decisions so far")
        st.dataframe(pd.DataFrame(detail["approvals"]), hide_index=True)

    comment = st.text_area("Comment (required to reject)", key=K.R_COMMENT)
    a, r, _ = st.columns([1, 1, 4])
    approve = a.button("Approve", key=K.R_APPROVE, type="primary")
    reject = r.button("Reject", key=K.R_REJECT)
    if approve or reject:
        status = errors.attempt(
            signoff.sign_off,
            ctx.ws,
            config,
            item_id,
            actor=ctx.user.name,
            approve=approve,
            comment=comment,
        )
        if status is not None:
            if approve:
                flash(
                    f"Approved {item_id} ({len(status.approved_by)}/{status.required} approvals)."
                )
            else:
                flash(f"Rejected {item_id}: {comment.strip()}")
            st.rerun()

    with st.expander("Bulk approve"):
        chosen = st.multiselect(
            "Items", ids, key=K.R_BULK, format_func=lambda i: by_id[i]["source"]
        )
        if st.button("Approve selected", key=K.R_BULK_APPROVE, disabled=not chosen):
            done = [
                i
                for i in chosen
                if errors.attempt(
                    signoff.sign_off,
                    ctx.ws,
                    config,
                    i,
                    actor=ctx.user.name,
                    approve=True,
                    comment=comment,
                )
                is not None
            ]
            if done:
                flash(f"Approved {len(done)} of {len(chosen)} item(s).")
                st.rerun()

st.subheader("Promote")
plan = cached.promotion_plan(pid)  # cached checksums; promote re-hashes
eligible = plan["eligible"]
if eligible:
    st.markdown(
        f"Next release: **{plan['next_version']}** ({plan['bump'] or '-'}; current "
        f"{plan['current_version'] or 'none'}) with {len(eligible)} new item version(s): "
        f"{len(plan['delta']['added'])} added, {len(plan['delta']['changed'])} replacing a "
        "released version."
    )
    st.dataframe(pd.DataFrame({"eligible": eligible}), hide_index=True)
else:
    st.caption("No item meets all promotion gates yet (validation, checksum, sign-off).")
if plan["blocked"]:
    st.dataframe(
        pd.DataFrame([{"blocked": i, "why": "; ".join(r)} for i, r in plan["blocked"].items()]),
        hide_index=True,
        width="stretch",
    )
if eligible and plan["next_version"]:
    sure = st.checkbox(
        f"Release {len(eligible)} item(s) as {pid} {plan['next_version']}",
        key=K.R_PROMOTE_CONFIRM,
    )
    if st.button("Promote", key=K.R_PROMOTE, type="primary", disabled=not sure):
        result = errors.attempt(
            promotion.promote,
            ctx.ws,
            config,
            eligible,
            actor=ctx.user.name,
        )
        if result is not None:
            flash(
                result.message
                if result.release is None
                else f"Released {pid} {result.release.version}."
            )
            st.rerun()
