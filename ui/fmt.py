"""Display helpers: colours, legends and safe text (item titles may contain HTML)."""

from __future__ import annotations

import re
from typing import Final

from jinja2.utils import htmlsafe_json_dumps

from geomesh.services.queries import MapLayer

STATE_COLOURS: Final = {
    "staging": "#757575",
    "validation": "#1e88e5",
    "production": "#2e7d32",
    "quarantined": "#ef6c00",
    "rolled_back": "#8e24aa",
    "withdrawn": "#ad1457",
    "superseded": "#90a4ae",
    "deprecated": "#5d4037",
    "discarded": "#212121",
}
SEVERITY_COLOURS: Final = {
    "P1": "#c62828",
    "P2": "#ef6c00",
    "P3": "#f9a825",
    "clean": "#2e7d32",
}
SEVERITY_HELP: Final = {
    "P1": "P1 · blocking: rolled back and escalated",
    "P2": "P2 · quarantined until fixed",
    "P3": "P3 · warning: proceeds to review",
    "clean": "no open finding",
}

_MD_SPECIAL = re.compile(r"([\\`*_{}\[\]()#+\-.!|<>~$])")


def md_escape(text: object) -> str:
    """Escape Markdown (and the HTML it would pass through) in user-supplied text."""
    return _MD_SPECIAL.sub(r"\\\1", str(text))


def short_id(item_id: str, keep: int = 12) -> str:
    """The product prefix dropped: ``…-3fa2c0d1e4b5`` (ids are long)."""
    head, _, tail = item_id.rpartition("-")
    return f"…{tail[:keep]}" if head else item_id


def file_name(source: str) -> str:
    return source.rstrip("/").rsplit("/", 1)[-1]


def duration(seconds: float | None) -> str:
    """A human duration: 0.4 s, 12 min, 3.5 h, 2.0 d."""
    if seconds is None:
        return "–"
    if seconds < 60:
        return f"{seconds:.1f} s"
    if seconds < 3600:
        return f"{seconds / 60:.0f} min"
    if seconds < 48 * 3600:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} d"


#: the footprint properties the map draws with (``ui.maps.Footprints``)
DRAWN: Final = ("item_id", "state", "worst", "tip_id", "tip_state", "tip_findings", "tip_source")


def footprints_json(layer: MapLayer) -> str:
    """A map layer's footprints as JSON text for ``ui.maps.Footprints``: only the drawn
    properties, safe inside a ``<script>`` (``<``, ``>``, ``&`` and ``'`` escaped)."""
    features = [
        {
            "type": "Feature",
            "geometry": f["geometry"],
            "properties": {k: f["properties"][k] for k in DRAWN},
        }
        for f in layer.features["features"]
    ]
    return str(htmlsafe_json_dumps({"type": "FeatureCollection", "features": features}))
