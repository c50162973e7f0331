"""The Starlette app factory, its routes and the one error mapping."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, Final

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from geomesh.errors import (
    DatabaseError,
    GeomeshError,
    NotFound,
    PermissionDenied,
    PolicyMismatch,
    ReplayRefused,
    SignoffError,
    StoreUnavailable,
    WebhookRefused,
)
from geomesh.redact import redact
from geomesh.services import webhook_signoff
from geomesh.services.queries import api as reads
from geomesh.workspace import Workspace

log = logging.getLogger(__name__)

#: GeomeshError subclass -> HTTP status; the most specific class in an error's MRO wins
STATUS: Final[dict[type[GeomeshError], int]] = {
    ReplayRefused: 409,
    WebhookRefused: 401,
    PermissionDenied: 403,
    NotFound: 404,
    SignoffError: 409,  # StaleDigest, not under review, rejection without a comment
    PolicyMismatch: 409,
    # a part is down (the database, the object store): the caller retries later
    DatabaseError: 503,
    StoreUnavailable: 503,
    GeomeshError: 400,
}


def status_of(exc: GeomeshError) -> int:
    for cls in type(exc).__mro__:
        if cls in STATUS:
            return STATUS[cls]
    return 400  # pragma: no cover - GeomeshError is in the table


async def _geomesh_error(_request: Request, exc: Exception) -> Response:
    assert isinstance(exc, GeomeshError)
    return JSONResponse(
        {"error": type(exc).__name__, "message": redact(str(exc))}, status_code=status_of(exc)
    )


def _inbound(request: Request, body: bytes) -> webhook_signoff.InboundRequest:
    return webhook_signoff.InboundRequest(
        method=request.method,
        path=request.url.path,
        headers={k.lower(): v for k, v in request.headers.items()},
        body=body,
        client=request.client.host if request.client else None,
    )


def create_app(ws: Workspace) -> Starlette:
    """The ASGI app over one workspace (open it once per process)."""

    async def health(_request: Request) -> Response:
        return JSONResponse(await run_in_threadpool(reads.health, ws))

    async def signoff(request: Request) -> Response:
        body = await request.body()
        outcome = await run_in_threadpool(
            webhook_signoff.receive_signoff, ws, _inbound(request, body)
        )
        return JSONResponse(outcome.to_json())

    def signed_read(read: Callable[..., dict[str, Any]]) -> Callable[[Request], Any]:
        async def endpoint(request: Request) -> Response:
            product_id = request.path_params["product_id"]
            req = _inbound(request, await request.body())

            def run() -> dict[str, Any]:
                integ, _ = webhook_signoff.authenticate(ws, req, need_key=False)
                if not integ.allows_product(product_id):
                    raise PermissionDenied(
                        f"integration {integ.name!r} may not read product {product_id!r}"
                    )
                return read(ws, **request.path_params)

            return JSONResponse(await run_in_threadpool(run))

        return endpoint

    return Starlette(
        routes=[
            Route("/v1/health", health, methods=["GET"]),
            Route("/v1/signoff", signoff, methods=["POST"]),
            Route(
                "/v1/products/{product_id}/releases",
                signed_read(reads.product_releases),
                methods=["GET"],
            ),
            Route(
                "/v1/products/{product_id}/items/{item_id}/status",
                signed_read(reads.item_status),
                methods=["GET"],
            ),
        ],
        exception_handlers={GeomeshError: _geomesh_error},
    )
