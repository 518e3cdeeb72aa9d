"""The Responses API: create (proxied and kept), and retrieve, delete and list input items of kept
responses, in both route shapes (`/openai/...` for `AzureOpenAI`, `/openai/v1/...` for `OpenAI`)."""

from __future__ import annotations

import time

import azure.functions as func
from azurefunctions.extensions.http.fastapi import Request, Response

from blueprints.http_adapter import Operation, json_response, proxied, raw_response, register_openai_routes
from shared.capture.responses_request import ResponsesRequest, parse_responses_request
from shared.platform.access import Caller, Right
from shared.platform.errors import InvalidRequest, NotFound
from shared.platform.request_body import parse_json_object
from shared.services import get_services
from shared.store import ids
from shared.store.completion_params import list_object, parse_input_item_params


async def create_response(req: Request, caller: Caller | None) -> Response:
    """Proxy a Responses call upstream; kept unless `store` is false (the API's default is to keep)."""
    started = time.perf_counter()  # x-distillery-overhead-ms counts from here, body parsing included
    caller = _caller(caller)
    request = parse_responses_request(parse_json_object(await req.body()))
    if not request.model:
        raise InvalidRequest("Missing required parameter: 'model'.", param="model")
    caller.require_deployment(request.model)
    return await proxied(req, request, deployment=request.model, caller=caller, started=started)


async def retrieve_response(req: Request, caller: Caller | None) -> Response:
    """Get one kept response; a background one not kept yet is asked of the upstream (so polling works)."""
    response_id = ids.require_completion_id(req.path_params["response_id"], kind="response")
    services = get_services()
    scope = _caller(caller).scope
    try:
        stored = await services.store.get(response_id, owner=scope)
    except NotFound:
        background = services.background_responses
        pending = await background.pending(response_id, scope=scope) if background is not None else None
        if background is None or pending is None:
            raise
        status, view = await background.fetch(pending)
        if isinstance(view, bytes):
            return raw_response(view, status=status, headers={"content-type": "application/json"})
        return json_response(view)
    return json_response(stored.as_response())


async def delete_response(req: Request, caller: Caller | None) -> Response:
    """Delete a kept response, and rebuild the datasets that held it."""
    response_id = ids.require_completion_id(req.path_params["response_id"], kind="response")
    await get_services().forgetting.delete(response_id, owner=_caller(caller).scope)
    return json_response({"id": response_id, "object": "response.deleted", "deleted": True})


async def list_response_input_items(req: Request, caller: Caller | None) -> Response:
    """The items a kept response was answered from, earlier turns of its chain included."""
    response_id = ids.require_completion_id(req.path_params["response_id"], kind="response")
    params = parse_input_item_params(req.query_params.multi_items())
    stored = await get_services().store.get(response_id, owner=_caller(caller).scope)
    items = stored.response_input_items()
    if params.order == "desc":
        items.reverse()
    if params.after is not None:
        positions = [item["id"] for item in items]
        if params.after not in positions:
            raise InvalidRequest("'after' must be an input item id of this response.", param="after")
        items = items[positions.index(params.after) + 1 :]
    return json_response(list_object(items[: params.limit], has_more=len(items) > params.limit))


def _caller(caller: Caller | None) -> Caller:
    assert caller is not None, "every Responses route requires a right"
    return caller


OPERATIONS: list[Operation] = [
    # (handler, route below the prefix, method, right, request-body model)
    (create_response, "responses", "POST", Right.INFERENCE, ResponsesRequest),
    (retrieve_response, "responses/{response_id}", "GET", Right.READ, None),
    (delete_response, "responses/{response_id}", "DELETE", Right.ACTION, None),
    (list_response_input_items, "responses/{response_id}/input_items", "GET", Right.READ, None),
]
bp = func.Blueprint()
register_openai_routes(bp, OPERATIONS)
