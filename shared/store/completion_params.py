"""Inputs of the stored-completions API (list, messages, update), validated with OpenAI's rules."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from shared.platform.errors import InvalidRequest
from shared.platform.request_body import Metadata, parse_model, validation_error
from shared.store import ids
from shared.store.completion_filter import CompletionFilter, Order
from shared.store.scores import parse_score_query

MAX_PAGE = 100
IGNORED_QUERY = frozenset({"api-version"})
MAX_CREATED = 10**12
"""The largest `created_after` / `created_before` (Unix seconds) a query may name; the index clamps it further."""


class CompletionListParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    filter: CompletionFilter
    after: str | None = None
    limit: int = Field(20, ge=1, le=MAX_PAGE)
    order: Order = "asc"


class MessageListParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    after: str | None = None
    limit: int = Field(20, ge=1, le=MAX_PAGE)
    order: Order = "asc"


class CompletionUpdateParams(BaseModel):
    """Only `metadata` can change; any other field is refused rather than silently ignored."""

    model_config = ConfigDict(extra="forbid", strict=True)

    metadata: Metadata | None


def parse_completion_list_params(
    query: Iterable[tuple[str, str]], *, default_kind: str | None = None
) -> CompletionListParams:
    """A list page's query. `kind=all` lists both kinds; without `kind`, `default_kind` (the
    chat-completions route lists chat completions only, as the SDK's `chat.completions.list` expects)."""
    query = list(query)
    if default_kind is not None and not any(name == "kind" for name, _ in query):
        query.append(("kind", default_kind))
    return _parse_list_query(query, paging=True)


def parse_completion_count_params(query: Iterable[tuple[str, str]]) -> CompletionFilter:
    """The list's filter parameters alone (`metadata[…]`, `scores.…`, `model`, `created_…`)."""
    return _parse_list_query(query, paging=False).filter


def _parse_list_query(query: Iterable[tuple[str, str]], *, paging: bool) -> CompletionListParams:
    metadata: dict[str, str] = {}
    scores: dict[str, dict[str, Any]] = {}
    fields: dict[str, Any] = {}
    filter_fields: dict[str, Any] = {}
    for name, value in query:
        if name.startswith("metadata[") and name.endswith("]"):
            metadata[name[len("metadata[") : -1]] = value
        elif name.startswith("scores."):
            score, condition = parse_score_query(name, value)
            scores.setdefault(score, {}).update(condition)
        elif name in ("created_after", "created_before"):
            filter_fields[name] = query_integer(name, value, low=0, high=MAX_CREATED)
        elif name == "kind" and value == "all":
            filter_fields.pop(name, None)
        elif name in ("model", "kind"):
            filter_fields[name] = value
        elif name == "limit" and paging:
            fields[name] = query_integer(name, value, low=1, high=MAX_PAGE)
        elif name in ("after", "order") and paging:
            fields[name] = value
        elif name not in IGNORED_QUERY:
            raise InvalidRequest(f"Unrecognized query parameter: '{name}'.", param=name)
    try:
        selection = CompletionFilter.model_validate({"metadata": metadata, "scores": scores, **filter_fields})
        params = CompletionListParams.model_validate({"filter": selection, **fields})
    except ValidationError as exc:
        raise _query_error(exc) from None
    if params.after is not None:
        ids.require_cursor_id(params.after)
    return params


def parse_message_list_params(query: Iterable[tuple[str, str]], *, completion_id: str) -> MessageListParams:
    fields: dict[str, Any] = {}
    for name, value in query:
        if name == "limit":
            fields[name] = query_integer(name, value, low=1, high=MAX_PAGE)
        elif name in ("after", "order"):
            fields[name] = value
        elif name not in IGNORED_QUERY:
            raise InvalidRequest(f"Unrecognized query parameter: '{name}'.", param=name)
    try:
        params = MessageListParams.model_validate(fields)
    except ValidationError as exc:
        raise _query_error(exc) from None
    if params.after is not None and not params.after.startswith(f"{completion_id}-"):
        raise InvalidRequest("'after' must be a message id of this chat completion.", param="after")
    return params


def parse_input_item_params(query: Iterable[tuple[str, str]]) -> MessageListParams:
    """`input_items.list`'s query: `after` (an item id), `limit`, `order` (newest first by default, as
    OpenAI's), and `include` (accepted: stored items are returned whole)."""
    fields: dict[str, Any] = {"order": "desc"}
    for name, value in query:
        if name == "limit":
            fields[name] = query_integer(name, value, low=1, high=MAX_PAGE)
        elif name in ("after", "order"):
            fields[name] = value
        elif name not in IGNORED_QUERY and name not in ("include", "include[]"):
            raise InvalidRequest(f"Unrecognized query parameter: '{name}'.", param=name)
    try:
        return MessageListParams.model_validate(fields)
    except ValidationError as exc:
        raise _query_error(exc) from None


def parse_update_params(body: dict[str, Any]) -> CompletionUpdateParams:
    return parse_model(CompletionUpdateParams, body)


def query_integer(name: str, value: str, *, low: int, high: int) -> int:
    """A numeric query parameter: plain ASCII digits within [low, high], else a 400 naming it.

    `str.isdigit` and `int` accept `²`, `٣`, `+5`, ` 5` and `1_0` (or raise on some of them, a 500);
    only what a client means as a number passes, and the length check keeps `int` off huge strings.
    """
    if not (value.isascii() and value.isdecimal()) or len(value) > len(str(high)) or not low <= int(value) <= high:
        raise InvalidRequest(f"'{name}' must be an integer from {low} to {high}.", param=name, code="invalid_value")
    return int(value)


def list_object(data: list[dict[str, Any]], *, has_more: bool) -> dict[str, Any]:
    """The OpenAI list envelope the SDK's cursor pages read."""
    return {
        "object": "list",
        "data": data,
        "first_id": data[0]["id"] if data else None,
        "last_id": data[-1]["id"] if data else None,
        "has_more": has_more,
    }


def _query_error(exc: ValidationError) -> InvalidRequest:
    first = exc.errors()[0]
    loc = [str(part) for part in first["loc"] if part != "filter"]
    param = loc[0] if loc else "query"
    if param == "limit":
        return InvalidRequest(f"'limit' must be an integer from 1 to {MAX_PAGE}.", param="limit", code="invalid_value")
    if param == "order":
        return InvalidRequest("'order' must be 'asc' or 'desc'.", param="order", code="invalid_value")
    if param == "metadata":
        return validation_error(exc)
    if param == "scores":
        where = "scores." + loc[1] if len(loc) > 1 else "scores"
        return InvalidRequest(f"Invalid score filter '{where}': {first['msg']}.", param=where, code="invalid_value")
    return InvalidRequest(f"Invalid value for '{param}': {first['msg']}.", param=param, code="invalid_value")
