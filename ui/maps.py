"""The review map: leafmap's folium backend, offline by default.

- Leaflet itself is served by the app (``static/vendor/leaflet-1.9.3``, Streamlit static
  serving), never from a CDN, and no plugin that needs a CDN is enabled.
- No basemap unless ``GEOMESH_BASEMAP`` names one (e.g. ``OpenStreetMap``; needs internet).
- ALL footprints are ONE Leaflet GeoJSON layer (:class:`Footprints`), already simplified
  and capped by ``geomesh.services.queries.map_layer``, styled, highlighted and bound to
  their tooltips in the browser. Its data is JSON text made once per change of the product
  (``ui.fmt.footprints_json``, cached with the map's read model): a rerun neither serialises
  5,000 features again nor styles them one by one in Python, and the script is added to the
  page as text, never compiled as a Jinja template (what folium's GeoJson costs per render).
- Tooltip values arrive HTML-escaped (Leaflet inserts them with innerHTML), and the JSON is
  safe inside a ``<script>`` (``<``, ``>``, ``&`` and ``'`` escaped).
"""

from __future__ import annotations

import base64
import html
import json
import os
from typing import Any, Final

import folium
import leafmap.foliumap as leafmap
from branca.element import Element, MacroElement, Template
from jinja2.utils import htmlsafe_json_dumps

from geomesh.preview import Preview
from geomesh.services.queries import MapLayer
from ui.fmt import SEVERITY_COLOURS, SEVERITY_HELP, STATE_COLOURS, footprints_json

LEAFLET: Final = "/app/static/vendor/leaflet-1.9.3"
BOUNDARY_STYLE: Final = {"color": "#263238", "weight": 2.5, "fill": False, "dashArray": "6 4"}


class Legend(MacroElement):  # type: ignore[misc]
    """A small legend drawn by Leaflet itself (no jQuery, no CDN)."""

    _template = Template(
        """
        {% macro script(this, kwargs) %}
        (function() {
            var legend = L.control({position: "bottomright"});
            legend.onAdd = function() {
                var div = L.DomUtil.create("div", "geomesh-legend");
                div.style.cssText = "background:rgba(255,255,255,.92);padding:6px 9px;"
                    + "border-radius:4px;font:12px/1.5 sans-serif;box-shadow:0 1px 4px #0004";
                div.innerHTML = {{ this.html|tojson }};
                return div;
            };
            legend.addTo({{ this._parent.get_name() }});
        })();
        {% endmacro %}
        """
    )

    def __init__(self, title: str, entries: dict[str, str], boundary: str) -> None:
        super().__init__()
        self._name = "Legend"
        rows = "".join(
            f'<div><span style="display:inline-block;width:12px;height:12px;'
            f'background:{colour};opacity:.75;margin-right:6px;border:1px solid #0003"></span>'
            f"{html.escape(label)}</div>"
            for label, colour in entries.items()
        )
        boundary = (
            '<div><span style="display:inline-block;width:12px;height:0;'
            'border-top:2px dashed #263238;margin-right:6px;vertical-align:middle"></span>'
            f"{html.escape(boundary)}</div>"
        )
        self.html = f"<b>{html.escape(title)}</b>{rows}{boundary}"


#: (property, label) rows of a footprint's tooltip (values arrive HTML-escaped)
TOOLTIP: Final = (
    ("tip_id", "item"),
    ("tip_state", "state"),
    ("tip_findings", "open findings"),
    ("tip_source", "source"),
)


class _Text(Element):  # type: ignore[misc]
    """Ready JavaScript added to the page's script as it is (no template)."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.text = text

    def render(self, **kwargs: Any) -> str:
        return self.text


class Footprints(MacroElement):  # type: ignore[misc]
    """Every footprint as ONE ``L.geoJson`` layer: colour by a property through a palette,
    a thicker outline for the selected tile, highlight on hover, a sticky tooltip."""

    _template = Template(
        """
        {% macro script(this, kwargs) %}
        (function() {
            var palette = {{ this.palette }}, key = {{ this.key }};
            var selected = {{ this.selected }}, faded = {{ this.faded }};
            var rows = {{ this.tooltip }};
            function style(feature) {
                var p = feature.properties, colour = palette[p[key]] || "#607d8b";
                var chosen = p.item_id === selected;
                return {color: chosen ? "#000000" : colour, weight: chosen ? 3 : 1,
                        fillColor: colour, fillOpacity: chosen && faded ? 0.05 : 0.35};
            }
            var layer = L.geoJson({{ this.data }}, {
                style: style,
                onEachFeature: function(feature, part) {
                    var p = feature.properties, tip = "<table>";
                    for (var i = 0; i < rows.length; i++) {
                        tip += "<tr><th>" + rows[i][1] + "</th><td>" + p[rows[i][0]] + "</td></tr>";
                    }
                    part.bindTooltip(tip + "</table>", {sticky: true});
                    part.on("mouseover", function() { part.setStyle({weight: 3, fillOpacity: 0.6}); });
                    part.on("mouseout", function() { layer.resetStyle(part); });
                }
            });
            layer.addTo({{ this._parent.get_name() }});
        })();
        {% endmacro %}
        """
    )

    def __init__(
        self,
        data: str,
        *,
        palette: dict[str, str],
        key: str,
        selected: str | None,
        faded: bool,
    ) -> None:
        super().__init__()
        self._name = "Footprints"
        self.data = data
        self.palette = htmlsafe_json_dumps(palette)
        self.key = htmlsafe_json_dumps(key)
        self.selected = htmlsafe_json_dumps(selected)
        self.faded = json.dumps(faded)
        self.tooltip = htmlsafe_json_dumps([[k, html.escape(v)] for k, v in TOOLTIP])

    def render(self, **kwargs: Any) -> None:
        """Add the script to the page as text: branca's own render would compile the
        rendered script (megabytes of GeoJSON) as a Jinja template every time."""
        figure = self.get_root()
        figure.script.add_child(
            _Text(self._template.module.script(self, kwargs)), name=self.get_name()
        )


def _offline(m: folium.Map) -> None:
    m.default_js = [("leaflet", f"{LEAFLET}/leaflet.js")]
    m.default_css = [("leaflet_css", f"{LEAFLET}/leaflet.css")]


def legend_entries(colour_by: str, layer: MapLayer) -> dict[str, str]:
    props = [f["properties"] for f in layer.features["features"]]
    if colour_by == "severity":
        present = {p["worst"] for p in props} or {"clean"}
        return {SEVERITY_HELP[s]: SEVERITY_COLOURS[s] for s in SEVERITY_COLOURS if s in present}
    present = {p["state"] for p in props} or {"staging"}
    return {s: STATE_COLOURS[s] for s in STATE_COLOURS if s in present}


def build_map(
    layer: MapLayer,
    boundary: dict[str, Any],
    bounds: list[float],
    *,
    colour_by: str = "state",
    selected: str | None = None,
    preview: Preview | None = None,
    boundary_label: str = "domain",
    height: int = 560,
    footprints: str | None = None,
) -> folium.Map:
    """One leafmap (folium) map: boundary, one footprint layer, optional preview overlay.

    ``footprints``: :func:`footprints_json` of ``layer``, when the caller keeps it.
    """
    west, south, east, north = bounds
    m = leafmap.Map(
        center=((south + north) / 2, (west + east) / 2),
        zoom=12,
        tiles=None,
        height=height,
        draw_control=False,
        measure_control=False,
        fullscreen_control=False,
        search_control=False,
        locate_control=False,
        layers_control=False,
        scale_control=False,
        attribution_control=False,
        prefer_canvas=False,
    )
    _offline(m)
    basemap = os.environ.get("GEOMESH_BASEMAP", "").strip()
    if basemap:
        folium.TileLayer(basemap, name="basemap").add_to(m)
    # the preview first: Leaflet stacks it under the boundary and the footprints
    if preview is not None and preview.leaflet_bounds is not None:
        url = "data:image/png;base64," + base64.b64encode(preview.png).decode()
        folium.raster_layers.ImageOverlay(
            image=url, bounds=preview.leaflet_bounds, opacity=0.9, name="preview"
        ).add_to(m)
    folium.GeoJson(
        {"type": "Feature", "geometry": boundary, "properties": {}},
        name="boundary",
        style_function=lambda _f: BOUNDARY_STYLE,
        interactive=False,
    ).add_to(m)
    if layer.features["features"]:
        Footprints(
            footprints if footprints is not None else footprints_json(layer),
            palette=SEVERITY_COLOURS if colour_by == "severity" else STATE_COLOURS,
            key="worst" if colour_by == "severity" else "state",
            selected=selected,
            faded=preview is not None,
        ).add_to(m)
    Legend(
        "worst severity" if colour_by == "severity" else "state",
        legend_entries(colour_by, layer),
        f"boundary: {boundary_label}",
    ).add_to(m)
    for f in layer.features["features"][:2000]:  # fit the tiles too (bounds of the first 2,000)
        for ring in _rings(f["geometry"]):
            for x, y in ring:
                west, east = min(west, x), max(east, x)
                south, north = min(south, y), max(north, y)
    m.fit_bounds([[south, west], [north, east]])
    return m


def _rings(geometry: dict[str, Any]) -> list[list[list[float]]]:
    if geometry.get("type") == "Polygon":
        return [geometry["coordinates"][0]]
    if geometry.get("type") == "MultiPolygon":
        return [poly[0] for poly in geometry["coordinates"]]
    return []
