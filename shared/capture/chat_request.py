"""The chat-completions request as Distillery reads it: only the fields it acts on are typed.

Everything else (tools, temperature, response_format, fields newer than this code) passes through to
the upstream untouched, so Distillery never narrows what a deployment accepts.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from shared.platform.request_body import Metadata, parse_model


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="allow")

    include_usage: bool | None = None


class ChatRequest(BaseModel):
    """A `POST …/chat/completions` body."""

    model_config = ConfigDict(extra="allow", strict=True)

    messages: list[dict[str, Any]] = Field(min_length=1)
    model: str | None = None
    store: bool | None = None
    """Keep this completion; omitted or false keeps nothing."""
    metadata: Metadata | None = None
    """Pairs to filter by later; accepted and ignored when `store` is not true."""
    stream: bool | None = None
    stream_options: StreamOptions | None = None

    def upstream_body(self, *, model: str | None) -> dict[str, Any]:
        """The body to forward: Distillery's own fields removed, so the upstream never stores twice."""
        body = self.model_dump(exclude={"store", "metadata"}, exclude_none=False, exclude_unset=True)
        if model is not None:
            body["model"] = model
        return body


def parse_chat_request(body: dict[str, Any]) -> ChatRequest:
    return parse_model(ChatRequest, body)
