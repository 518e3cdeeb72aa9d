"""The stored completion: what Distillery keeps for one `store: true` call, and its API views."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field

from shared.platform.access import OwnerId
from shared.store import response_items
from shared.store.ids import Kind
from shared.store.scores import Score, ScoreValue

FORMAT_VERSION: Literal[1] = 1
PREVIEW_CHARS = 200
"""The longest `distillery.preview` a list item carries: enough for a table cell, never a whole prompt."""


class StoredCompletion(BaseModel):
    """One kept conversation (a chat completion or a Responses API response); serialised as the blob `<id>.json`."""

    format_version: Literal[1] = FORMAT_VERSION
    kind: Kind = "chat.completion"
    id: str
    created: int
    """Unix seconds when Distillery captured the call."""
    deployment: str
    """The deployment (Azure route) or model name (v1 route) the caller asked for: an alias, when it is one."""
    served_by: str | None = None
    """Behind an alias: the deployment the alias chose for this call (None: `deployment` served it)."""
    model: str
    """The model the upstream says answered."""
    metadata: dict[str, str] = Field(default_factory=dict)
    owner: OwnerId = None
    """Stable id of the caller identity that created it (`key:<name>`, `entra:<tenant>/<object id>`)."""
    scores: list[Score] = Field(default_factory=list)
    """Judgements of this completion, one per name (`POST /api/completions/{id}/scores`)."""
    relabel_of: str | None = None
    """Set on an answer a stronger deployment gave to this completion's request (a relabel job): the original's id."""
    relabels: list[str] = Field(default_factory=list)
    """On an original: the ids of its relabeled answers, oldest first (datasets may prefer the latest)."""
    streamed: bool = False
    request: dict[str, Any]
    """The request body as received (messages, tools and every parameter)."""
    response: dict[str, Any]
    """The `chat.completion` or `response` returned to the caller (assembled from the stream when streamed)."""
    history: list[dict[str, Any]] = Field(default_factory=list)
    """Responses: the earlier turns' items (their inputs and outputs) a `previous_response_id` chain
    stood for, resolved from the store, oldest first."""
    history_complete: bool = True
    """False when a turn of the chain was not in the store: the conversation lacks its context."""

    def as_response(self) -> dict[str, Any]:
        """The `response` object that `responses.retrieve` returns."""
        view = dict(self.response)
        view.update(id=self.id, object="response", metadata=self.metadata)
        view.setdefault("created_at", self.created)
        view.setdefault("model", self.model)
        view["distillery"] = {"deployment": self.deployment, "served_by": self.served_by or self.deployment}
        if not self.history_complete:
            view["distillery"]["history_complete"] = False
        return view

    def response_input_items(self) -> list[dict[str, Any]]:
        """Every item the response was answered from (earlier turns first), each with an id
        (`<response_id>-<index>` when the caller gave none): what `input_items.list` pages through."""
        items = [*self.history, *response_items.input_items(self.request.get("input"))]
        return [item if item.get("id") else {**item, "id": f"{self.id}-{n}"} for n, item in enumerate(items)]

    def conversation_items(self) -> list[dict[str, Any]]:
        """Responses: the whole conversation as items, earlier turns, this input, then the output."""
        return [*self.history, *response_items.input_items(self.request.get("input")), *self.response_output()]

    def response_output(self) -> list[dict[str, Any]]:
        return [item for item in self.response.get("output") or [] if isinstance(item, dict)]

    def as_chat_completion(self) -> dict[str, Any]:
        """The `chat.completion` object that `retrieve` and `list` return."""
        view = dict(self.response)
        view.update(id=self.id, object="chat.completion", metadata=self.metadata)
        view.setdefault("created", self.created)
        view.setdefault("model", self.model)
        for key in ("seed", "temperature", "top_p", "tool_choice", "tools"):
            if key in self.request and key not in view:
                view[key] = self.request[key]
        # Distillery's own fields sit in one namespace the SDK keeps as an extra and OpenAI never fills.
        view["distillery"] = {"deployment": self.deployment, "served_by": self.served_by or self.deployment}
        if self.relabel_of is not None:
            view["distillery"]["relabel_of"] = self.relabel_of
        if self.relabels:
            view["distillery"]["relabels"] = self.relabels
        return view

    def as_list_item(self) -> dict[str, Any]:
        """The `chat.completion` (or `response`) a list returns: the retrieve view plus a short preview
        of the question, so a table of completions needs no request per row for its input, and its scores' values."""
        view = self.as_response() if self.kind == "response" else self.as_chat_completion()
        view["distillery"]["preview"] = self.preview()
        view["distillery"]["scores"] = self.score_values()
        return view

    def score_values(self) -> dict[str, ScoreValue]:
        """Each score's name and value: what selections filter on and what the index holds."""
        return {score.name: score.value for score in self.scores}

    def preview(self) -> str | None:
        """The first user message's text (its text parts joined), whitespace collapsed, at most
        `PREVIEW_CHARS` characters; None when the request has no user message."""
        if self.kind == "response":
            items = response_items.input_items(self.request.get("input"))
            texts = [response_items.text_of(item) for item in items if item.get("role") == "user"]
            return _previewed(texts[0]) if texts else None
        for index, message in enumerate(self.request["messages"]):
            if message.get("role") == "user":
                return _previewed(str(_store_message(self.id, index, message)["content"] or ""))
        return None

    def input_messages(self) -> list[dict[str, Any]]:
        """Request messages in the `messages.list` shape, ids `<completion_id>-<index>`."""
        return [_store_message(self.id, index, message) for index, message in enumerate(self.request["messages"])]

    def output_text(self) -> str | None:
        if self.kind == "response":
            return response_items.output_text(self.response)
        choices = self.response.get("choices") or []
        if not choices:
            return None
        content = (choices[0].get("message") or {}).get("content")
        return content if isinstance(content, str) else None


def _previewed(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= PREVIEW_CHARS else text[: PREVIEW_CHARS - 1] + "…"


def _store_message(completion_id: str, index: int, message: dict[str, Any]) -> dict[str, Any]:
    item = {key: value for key, value in message.items() if key != "content"}
    content = message.get("content")
    if isinstance(content, list):
        item["content_parts"] = content
        texts = [part.get("text", "") for part in content if isinstance(part, dict) and part.get("type") == "text"]
        item["content"] = "".join(texts) if texts else None
    else:
        item["content"] = content
    item["id"] = f"{completion_id}-{index}"
    return item
