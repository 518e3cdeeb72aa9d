"""The stored-completions API: list, retrieve, update metadata, delete, and list input messages.

Each operation is served under both route shapes: `/openai/...` (the `AzureOpenAI` client) and
`/openai/v1/...` (the `OpenAI` client). `OPERATIONS` is the one table of routes and their rights.
"""

from __future__ import annotations

from typing import Any

import azure.functions as func
from azurefunctions.extensions.http.fastapi import Request, Response

from blueprints.http_adapter import Operation, json_response, register_openai_routes
from shared.platform.access import Caller, Right
from shared.platform.request_body import parse_json_object
from shared.services import get_services
from shared.store import ids
from shared.store.completion_params import (
    CompletionUpdateParams,
    list_object,
    parse_completion_list_params,
    parse_message_list_params,
    parse_update_params,
)


async def list_chat_completions(req: Request, caller: Caller | None) -> Response:
    """List stored chat completions matching metadata, model and time filters, one page at a time
    (stored responses too with `kind=response` or `kind=all`)."""
    params = parse_completion_list_params(req.query_params.multi_items(), default_kind="chat.completion")
    selection = params.filter.model_copy(update={"owner": _caller(caller).scope})
    page = await get_services().store.list(selection, order=params.order, after=params.after, limit=params.limit)
    return json_response(list_object([c.as_list_item() for c in page.data], has_more=page.has_more))


async def retrieve_chat_completion(req: Request, caller: Caller | None) -> Response:
    """Get one stored chat completion."""
    completion_id = ids.require_completion_id(req.path_params["completion_id"], kind="chat.completion")
    completion = await get_services().store.get(completion_id, owner=_caller(caller).scope)
    return json_response(completion.as_chat_completion())


async def update_chat_completion(req: Request, caller: Caller | None) -> Response:
    """Replace a stored chat completion's metadata (the only field that can change)."""
    completion_id = ids.require_completion_id(req.path_params["completion_id"], kind="chat.completion")
    params = parse_update_params(parse_json_object(await req.body()))
    completion = await get_services().store.update_metadata(
        completion_id, params.metadata or {}, owner=_caller(caller).scope
    )
    return json_response(completion.as_chat_completion())


async def delete_chat_completion(req: Request, caller: Caller | None) -> Response:
    """Delete a stored chat completion, and rebuild the datasets that held it."""
    completion_id = ids.require_completion_id(req.path_params["completion_id"], kind="chat.completion")
    await get_services().forgetting.delete(completion_id, owner=_caller(caller).scope)
    return json_response({"id": completion_id, "object": "chat.completion.deleted", "deleted": True})


async def list_chat_completion_messages(req: Request, caller: Caller | None) -> Response:
    """List the input messages of a stored chat completion."""
    completion_id = ids.require_completion_id(req.path_params["completion_id"], kind="chat.completion")
    params = parse_message_list_params(req.query_params.multi_items(), completion_id=completion_id)
    completion = await get_services().store.get(completion_id, owner=_caller(caller).scope)
    messages: list[dict[str, Any]] = completion.input_messages()
    if params.order == "desc":
        messages.reverse()
    if params.after is not None:
        positions = [message["id"] for message in messages]
        messages = messages[positions.index(params.after) + 1 :] if params.after in positions else []
    return json_response(list_object(messages[: params.limit], has_more=len(messages) > params.limit))


def _caller(caller: Caller | None) -> Caller:
    assert caller is not None, "every stored-completions route requires a right"
    return caller


OPERATIONS: list[Operation] = [
    # (handler, route below the prefix, method, right, request-body model)
    (list_chat_completions, "chat/completions", "GET", Right.READ, None),
    (retrieve_chat_completion, "chat/completions/{completion_id}", "GET", Right.READ, None),
    (update_chat_completion, "chat/completions/{completion_id}", "POST", Right.ACTION, CompletionUpdateParams),
    (delete_chat_completion, "chat/completions/{completion_id}", "DELETE", Right.ACTION, None),
    (list_chat_completion_messages, "chat/completions/{completion_id}/messages", "GET", Right.READ, None),
]
bp = func.Blueprint()
register_openai_routes(bp, OPERATIONS)
