"""Readiness: answers without a key so load balancers and `make run` can wait on it."""

from __future__ import annotations

import azure.functions as func
from azurefunctions.extensions.http.fastapi import Request, Response

from blueprints.http_adapter import endpoint, json_response
from shared.platform.access import Caller
from shared.services import get_services

bp = func.Blueprint()


@bp.route(route="api/health", methods=["GET"], auth_level=func.AuthLevel.ANONYMOUS)
@endpoint(None)
async def health(req: Request, caller: Caller | None) -> Response:
    """Readiness and the upstream in use; public."""
    services = get_services()
    return json_response({"status": "ok", "upstream": services.upstream.label})
