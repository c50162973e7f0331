"""Rendering pieces more than one page uses (an item's facts, findings, preview)."""

from __future__ import annotations

from typing import Any

import pandas as pd
import streamlit as st

from geomesh.preview import Preview
from ui import cached, errors
from ui.fmt import md_escape

FINDING_COLUMNS = {
    "severity": st.column_config.TextColumn("Severity", width="small"),
    "rule_id": st.column_config.TextColumn("Rule", width="medium"),
    "path": st.column_config.TextColumn("Field path"),
    "message": st.column_config.TextColumn("Message", width="large"),
    "remediation": st.column_config.TextColumn("Remediation", width="large"),
}


def findings(rows: list[dict[str, Any]], *, empty: str = "No open findings.") -> None:
    if not rows:
        st.caption(empty)
        return
    frame = pd.DataFrame(rows)
    cols = [c for c in FINDING_COLUMNS if c in frame.columns]
    st.dataframe(frame[cols], hide_index=True, column_config=FINDING_COLUMNS)


def counts_line(counts: dict[str, int]) -> str:
    return " · ".join(f"{s} {counts.get(s, 0)}" for s in ("P1", "P2", "P3"))


def facts_table(facts: dict[str, Any], other: dict[str, Any] | None = None) -> None:
    """Raster facts as a two- (or three-, side by side with ``other``) column table."""
    keys = list(facts) if other is None else list(dict.fromkeys([*facts, *other]))
    data: dict[str, list[str]] = {
        "field": keys,
        "this version": [_show(facts.get(k)) for k in keys],
    }
    if other is not None:
        data["production"] = [_show(other.get(k)) for k in keys]
    st.dataframe(pd.DataFrame(data), hide_index=True)


def _show(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, list):
        return ", ".join(str(v) for v in value)
    return str(value)


def item_header(detail: dict[str, Any]) -> None:
    st.markdown(f"**{md_escape(detail['id'])}**")
    st.caption(
        f"state `{detail['state']}` · open findings {counts_line(detail['findings'])} · "
        f"submitted by {md_escape(detail['submitted_by'])}"
    )
    st.text(f"source: {detail['source']}")


def preview(item_id: str, *, caption: str | None = None) -> Preview | None:
    """Render the item's preview image (rio-tiler, cached); a broken object shows why."""
    pv = errors.attempt(cached.preview, item_id)
    if pv is not None:
        note = "" if pv.bounds else " · no CRS: not placed on the map"
        st.image(pv.png, caption=(caption or "preview") + note, width=360)
    return pv


def history(rows: list[dict[str, Any]]) -> None:
    if rows:
        st.dataframe(pd.DataFrame(rows), hide_index=True)
