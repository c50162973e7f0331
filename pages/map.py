"""Map: staged, quarantined and production footprints over the domain boundary."""

import streamlit as st
from streamlit_folium import st_folium

from geomesh.services import queries
from ui import cached, layout, maps, state, widgets
from ui.fmt import STATE_COLOURS
from ui.state import K

ctx = layout.context(
    "Map", "Footprints over the domain boundary. Click a tile, or pick it in the list."
)
pid = layout.require_product(ctx)

pending = st.session_state.pop(K.MAP_PENDING, None)
if pending:
    st.session_state[K.MAP_ITEM] = pending

c1, c2, c3 = st.columns([3, 1, 1])
states = c1.multiselect(
    "States",
    [s for s in STATE_COLOURS if s != "discarded"],
    default=list(queries.MAP_STATES),
    key=K.MAP_STATES,
)
colour_by = c2.radio("Colour by", ["state", "severity"], key=K.MAP_COLOUR, horizontal=True)
show_preview = c3.toggle("Preview on map", value=True, key=K.MAP_PREVIEW)

view = state.map_view(pid, states)
layer = view["layer"]
labels = {}
for f in layer.features["features"]:
    props = f["properties"]
    labels[props["item_id"]] = f"{props['state']:<12} {props['source']}"
for iid in layer.without_footprint:
    labels.setdefault(iid, f"(no footprint) {iid}")
if st.session_state.get(K.MAP_ITEM) not in labels:
    st.session_state.pop(K.MAP_ITEM, None)

map_col, detail_col = st.columns([3, 2])
with detail_col:
    selected = st.selectbox(
        "Tile",
        list(labels),
        index=None,
        key=K.MAP_ITEM,
        format_func=lambda i: labels[i],
        placeholder="Select a tile (or click one on the map)",
    )
    pv = None
    if selected:
        detail = cached.item_detail(pid, selected)
        widgets.item_header(detail)
        pv = widgets.preview(selected, caption="rio-tiler preview")
        widgets.findings(detail["open_findings"])
        with st.expander("Raster and STAC facts"):
            widgets.facts_table(detail["raster"])

with map_col:
    fmap = maps.build_map(
        layer,
        view["boundary"],
        view["bounds"],
        colour_by=colour_by,
        selected=selected,
        preview=pv if show_preview else None,
        boundary_label=view["title"],
        footprints=view["footprints"],
    )
    out = st_folium(
        fmap,
        key="w.map.folium",
        height=560,
        use_container_width=True,
        returned_objects=["last_active_drawing"],
    )
    st.caption(
        f"{layer.shown} of {layer.total} tiles drawn"
        + (f" (capped at {queries.MAX_MAP_FEATURES}, worst first)" if layer.capped else "")
        + (
            f"; {len(layer.without_footprint)} without a footprint (no CRS)"
            if layer.without_footprint
            else ""
        )
    )

clicked = ((out or {}).get("last_active_drawing") or {}).get("properties", {}).get("item_id")
if clicked and clicked != st.session_state.get(K.MAP_LAST_CLICK):
    st.session_state[K.MAP_LAST_CLICK] = clicked
    st.session_state[K.MAP_PENDING] = clicked
    st.rerun()
