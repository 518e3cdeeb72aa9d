"""The stored completion: what Distillery keeps for one `store: true` call, and its API views."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field

from shared.platform.access import OwnerId
from shared.store.scores import Score, ScoreValue

FORMAT_VERSION: Literal[1] = 1
PREVIEW_CHARS = 200
"""The longest `distillery.preview` a list item carries: enough for a table cell, never a whole prompt."""


class StoredCompletion(BaseModel):
    """One kept conversation; serialised as the blob `<id>.json`."""

    format_version: Literal[1] = FORMAT_VERSION
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
    """The `chat.completion` returned to the caller (assembled from chunks when streamed)."""

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
        """The `chat.completion` a list returns: the retrieve view plus a short preview of the question,
        so a table of completions needs no request per row for its input, and its scores' values."""
        view = self.as_chat_completion()
        view["distillery"]["preview"] = self.preview()
        view["distillery"]["scores"] = self.score_values()
        return view

    def score_values(self) -> dict[str, ScoreValue]:
        """Each score's name and value: what selections filter on and what the index holds."""
        return {score.name: score.value for score in self.scores}

    def preview(self) -> str | None:
        """The first user message's text (its text parts joined), whitespace collapsed, at most
        `PREVIEW_CHARS` characters; None when the request has no user message."""
        for index, message in enumerate(self.request["messages"]):
            if message.get("role") == "user":
                text = " ".join(str(_store_message(self.id, index, message)["content"] or "").split())
                return text if len(text) <= PREVIEW_CHARS else text[: PREVIEW_CHARS - 1] + "…"
        return None

    def input_messages(self) -> list[dict[str, Any]]:
        """Request messages in the `messages.list` shape, ids `<completion_id>-<index>`."""
        return [_store_message(self.id, index, message) for index, message in enumerate(self.request["messages"])]

    def output_text(self) -> str | None:
        choices = self.response.get("choices") or []
        if not choices:
            return None
        content = (choices[0].get("message") or {}).get("content")
        return content if isinstance(content, str) else None


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
