"""Small formatting helpers shared by the read models (not part of the public API)."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Final

SEVERITIES: Final = ("P1", "P2", "P3")


def iso(ts: datetime | None) -> str | None:
    """A timestamp as naive-UTC ISO text with a ``Z`` (None stays None)."""
    return ts.replace(tzinfo=None).isoformat(timespec="seconds") + "Z" if ts else None


def val(v: Any) -> Any:
    """An enum's value, anything else as it is."""
    return getattr(v, "value", v)
