"""The chat-completions proxy, in both route shapes the `openai` SDK clients use."""

from __future__ import annotations

import time

import azure.functions as func
from azurefunctions.extensions.http.fastapi import Request, Response

from blueprints.http_adapter import endpoint, proxied
from shared.capture.chat_request import ChatRequest, parse_chat_request
from shared.platform.access import Caller, Right
from shared.platform.errors import InvalidRequest
from shared.platform.request_body import parse_json_object

bp = func.Blueprint()


@bp.route(
    route="openai/deployments/{deployment}/chat/completions",
    methods=["POST"],
    auth_level=func.AuthLevel.ANONYMOUS,
)
@endpoint(Right.INFERENCE, body=ChatRequest)
async def create_chat_completion_for_deployment(req: Request, caller: Caller | None) -> Response:
    """Azure route shape: the deployment comes from the path."""
    return await _create(req, caller, deployment=req.path_params["deployment"])


@bp.route(route="openai/v1/chat/completions", methods=["POST"], auth_level=func.AuthLevel.ANONYMOUS)
@endpoint(Right.INFERENCE, body=ChatRequest)
async def create_chat_completion(req: Request, caller: Caller | None) -> Response:
    """`/openai/v1` route shape: the deployment is the body's `model`."""
    return await _create(req, caller, deployment=None)


async def _create(req: Request, caller: Caller | None, *, deployment: str | None) -> Response:
    started = time.perf_counter()  # x-distillery-overhead-ms counts from here, body parsing included
    assert caller is not None
    request = parse_chat_request(parse_json_object(await req.body()))
    if deployment is None:
        if not request.model:
            raise InvalidRequest("Missing required parameter: 'model'.", param="model")
        deployment = request.model
    caller.require_deployment(deployment)
    return await proxied(req, request, deployment=deployment, caller=caller, started=started)
