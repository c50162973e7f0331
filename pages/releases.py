"""Releases: history, a diff between two releases, rollback behind a confirmation dialog."""

import pandas as pd
import streamlit as st

from geomesh.services import queries, rollback, snapshot
from ui import cached, errors, layout
from ui.fmt import short_id
from ui.state import K, flash

#: rows of a release diff shown (the counts cover every change)
DIFF_ROWS = 1000

ctx = layout.context("Releases", "Immutable, content-addressed release manifests.")
pid = layout.require_product(ctx)
config = queries.product_config(ctx.ws, pid)
ctx.role_note("rollback", "roll back")

page = int(st.session_state.get(K.REL_PAGE, 1))
hist = cached.release_history(pid, page)
if not hist["total"]:
    st.info("No release yet: promote items from the review queue.")
    st.stop()

if hist["pages"] > 1:
    st.session_state[K.REL_PAGE] = hist["page"]  # within the pages there are now
    st.number_input(f"Page (of {hist['pages']:,}, newest first)", 1, hist["pages"], key=K.REL_PAGE)
history_rows = [
    {"version": r["version"], "current": r["current"], "rolled back": r["deprecated"],
     "kind": r["kind"], "items": r["item_count"], "added": r["added"], "removed": r["removed"],
     "changed": r["changed"], "by": r["actor"], "at": r["created_at"][:19], "release id": r["id"]}
    for r in hist["rows"]
]  # fmt: skip
st.dataframe(pd.DataFrame(history_rows), hide_index=True, width="stretch")
st.caption(f"{hist['total']:,} releases; page {hist['page']:,} of {hist['pages']:,}.")

st.subheader("Compare two releases")
versions = hist["versions"]
c1, c2 = st.columns(2)
a = c1.selectbox("From", versions, index=max(len(versions) - 2, 0), key=K.REL_A)
b = c2.selectbox("To", versions, index=len(versions) - 1, key=K.REL_B)
diff = cached.release_diff(pid, a, b)
st.markdown(
    f"**{diff['from']} → {diff['to']}**: {len(diff['added'])} added, "
    f"{len(diff['removed'])} removed, {len(diff['changed'])} changed"
    + (" · **spatial contract changed**" if diff["spatial_contract_changed"] else "")
)
changes = [{"change": "added", "item": i, "fields": ""} for i in diff["added"][:DIFF_ROWS]]
changes += [{"change": "removed", "item": i, "fields": ""} for i in diff["removed"][:DIFF_ROWS]]
changes += [
    {
        "change": "changed",
        "item": f"{short_id(c['from'])} → {short_id(c['to'])}",
        "fields": ", ".join(c["fields"]),
    }
    for c in diff["changed"][:DIFF_ROWS]
]
if changes:
    st.dataframe(pd.DataFrame(changes[:DIFF_ROWS]), hide_index=True, width="stretch")
    if len(changes) > DIFF_ROWS:
        st.caption(f"The first {DIFF_ROWS:,} changes are listed.")

current = hist["current"]
st.subheader("Columnar snapshot")
if current is None:
    st.caption("No release is current: every release was withdrawn.")
elif current["snapshot_key"]:
    st.caption(f"stac-geoparquet of {current['version']}: `production/{current['snapshot_key']}`")
else:
    st.caption(f"{current['version']} has no stac-geoparquet snapshot yet (written on demand).")
    if ctx.can("promote") and st.button("Write the snapshot", key=K.REL_SNAPSHOT):
        done = errors.attempt(
            snapshot.snapshot_release, ctx.ws, pid, current["id"], actor=ctx.user.name
        )
        if done is not None:
            flash(f"snapshot written: production/{done.key}")
            st.rerun()

st.subheader("Roll back")
if current is None:
    st.caption(
        "The product has no current release (withdrawn); the next promote continues after "
        f"the highest version ever released ({versions[-1]})."
    )
    st.stop()
c1, c2 = st.columns(2)
with c1:
    st.markdown(f"Current release **{current['version']}**; its parent comes back.")
    if st.button(f"Roll back release {current['version']}…", key=K.REL_ROLLBACK_RELEASE):
        st.session_state[K.PENDING_ROLLBACK] = {"kind": "release"}
with c2:
    find = st.text_input("Find an item of the current release (id or source)", key=K.REL_ITEM_FIND)
    released = cached.released_items(pid, find.strip())
    if st.session_state.get(K.REL_ITEM) not in released["ids"]:
        st.session_state.pop(K.REL_ITEM, None)
    item = st.selectbox("Item of the current release", released["ids"], index=None, key=K.REL_ITEM)
    if released["total"] > len(released["ids"]):
        st.caption(
            f"{len(released['ids'])} of {released['total']:,} items listed (newest first); "
            "type part of an id or source name to find another."
        )
    if st.button("Roll back this item…", key=K.REL_ROLLBACK_ITEM, disabled=item is None):
        st.session_state[K.PENDING_ROLLBACK] = {"kind": "item", "item_id": item}


def _cancel() -> None:
    st.session_state.pop(K.PENDING_ROLLBACK, None)


@st.dialog("Confirm rollback", on_dismiss=_cancel)
def confirm(pending: dict[str, str]) -> None:
    impact = errors.attempt(
        queries.rollback_impact, ctx.ws, pid, kind=pending["kind"], item_id=pending.get("item_id")
    )
    if impact is None:
        return
    if impact["kind"] == "release":
        st.markdown(
            f"Release **{impact['version']}** stops being current; **{impact['restores'] or 'nothing'}** "
            f"is current again. {len(impact['withdrawn'])} item(s) become withdrawn, "
            f"{len(impact['restored'])} return to production."
        )
        st.dataframe(pd.DataFrame({"withdrawn": impact["withdrawn"]}), hide_index=True)
        if impact["restores"] is None:
            st.warning(
                f"{impact['version']} is the first release: rolling it back withdraws the "
                "product (no release is current until the next promote)."
            )
    else:
        st.markdown(
            f"A new PATCH release **{impact['new_version']}** replaces {impact['version']} without "
            f"`{impact['item_id']}` ({impact['items_after']} items remain)."
        )
    ok, cancel = st.columns(2)
    if ok.button("Roll back", key=K.REL_CONFIRM, type="primary", disabled=not impact["possible"]):
        if impact["kind"] == "release":
            result = errors.attempt(
                rollback.rollback_release,
                ctx.ws,
                config,
                actor=ctx.user.name,
                release_id=impact["release_id"],
            )
        else:
            result = errors.attempt(
                rollback.rollback_item, ctx.ws, config, impact["item_id"], actor=ctx.user.name
            )
        if result is not None:
            _cancel()
            flash(result.message)
            st.rerun()
    if cancel.button("Cancel", key=K.REL_CANCEL):
        _cancel()
        st.rerun()


pending = st.session_state.get(K.PENDING_ROLLBACK)
if pending:
    confirm(pending)
