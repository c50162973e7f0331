"""Releases: content-addressed manifest trees, versions, published catalogs, the index.

A release is an immutable manifest (:mod:`geomesh.releases.manifest`: a small root that
references content-addressed partitions of item versions), published once as a static
STAC catalog that shares unchanged partitions and item documents with its parent
(:mod:`geomesh.releases.catalog`), listed in the rewritten release index ``latest.json``
(:mod:`geomesh.releases.index`) and, on demand, exported as stac-geoparquet
(:mod:`geomesh.releases.snapshot`).

No database access here: ``geomesh.services.promotion``, ``rollback`` and ``publication``
own the transactions. A name loads its module on first use (``lazy_loader`` reads the
names from ``__init__.pyi``): reading a manifest does not import pystac or rustac.
"""

from __future__ import annotations

import lazy_loader

__getattr__, __dir__, __all__ = lazy_loader.attach_stub(__name__, __file__)
