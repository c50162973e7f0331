"""``geomesh api``: the inbound governance webhook and read-only status for approval tools.

A Starlette app (served by uvicorn) with thin endpoints: each parses the request, calls one
service function and returns its JSON. ``GeomeshError`` subclasses are mapped to HTTP
statuses in one place (:data:`STATUS`); anything else is a bug and answers 500.

* ``GET /v1/health`` — liveness and database reachability (no authentication);
* ``POST /v1/signoff`` — a steward's decision (``services.webhook_signoff``);
* ``GET /v1/products/{product_id}/releases`` and
  ``GET /v1/products/{product_id}/items/{item_id}/status`` — signed like the POST (no
  idempotency key needed), for the approval tool to show.
"""

from __future__ import annotations

from geomesh.api.app import STATUS, create_app

__all__ = ["STATUS", "create_app"]
