"""Cached pyproj objects: a product's tiles share a few CRSs, and building a CRS or a
transformer asks PROJ's database each time (a transformer ~0.4 ms).

pyproj's CRS is immutable and, like its Transformer, safe to share between threads since
pyproj 3.1, so one cache serves the pipeline's threads and the validation rules alike.
"""

from __future__ import annotations

from functools import lru_cache

from pyproj import CRS, Transformer


@lru_cache(maxsize=256)
def crs_from_text(text: str) -> CRS:
    """The CRS of a WKT, PROJ or "AUTH:CODE" string (``CRS.from_user_input``)."""
    return CRS.from_user_input(text)


@lru_cache(maxsize=256)
def transformer(src: CRS, dst: CRS) -> Transformer:
    """An ``always_xy`` transformer from ``src`` to ``dst``."""
    return Transformer.from_crs(src, dst, always_xy=True)
