"""Read models for the CLI and the app (no state changes here), one module per page.

Every function takes the :class:`~geomesh.workspace.Workspace` first and returns plain,
JSON-ready values (dicts, lists, small dataclasses), so the app never needs sqlmodel.
Callers use the package (``queries.list_products(ws)``); a name loads its module on first
use (``lazy_loader`` reads the names from ``__init__.pyi``), so ``geomesh items list``
imports the item queries and not the map's or the review's. The modules are:

* :mod:`.products` — the product picker, registered config, boundary, cache key;
* :mod:`.items` — `geomesh items list/show` and the detail of one item;
* :mod:`.product_overview` — the overview page (counts, activity, KPIs);
* :mod:`.map` — the map page (boundary and footprints);
* :mod:`.findings` — the findings page (table, rule choices, downloads);
* :mod:`.review` — the review page (sign-off queue, one item under review);
* :mod:`.releases` — the releases page (history paged, the current release's items, rollback
  impact);
* :mod:`.audit` — the audit page (events, facets, chain check, download);
* :mod:`.users` — a user's role.
"""

from __future__ import annotations

import lazy_loader

__getattr__, __dir__, __all__ = lazy_loader.attach_stub(__name__, __file__)
