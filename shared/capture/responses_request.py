"""The Responses API request as Distillery reads it: only the fields it acts on are typed.

Everything else (tools, reasoning, text format, fields newer than this code) passes through to the
upstream untouched. Unlike chat completions, `store` defaults to true, as OpenAI documents it.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict

from shared.platform.request_body import Metadata, parse_model


class ResponsesRequest(BaseModel):
    """A `POST …/responses` body."""

    model_config = ConfigDict(extra="allow", strict=True)

    model: str | None = None
    input: str | list[dict[str, Any]] | None = None
    store: bool | None = None
    """Keep this response; omitted means true (the API's default), false keeps nothing."""
    metadata: Metadata | None = None
    stream: bool | None = None
    previous_response_id: str | None = None
    """An earlier response: ours is resolved from the store and sent as context; any other passes on."""
    background: bool | None = None
    """Answered at once as `queued`; kept when a poll finds it finished (`shared/capture/background`)."""

    @property
    def storing(self) -> bool:
        return self.store is not False

    def upstream_body(self, *, model: str | None, history: list[dict[str, Any]] | None = None) -> dict[str, Any]:
        """The body to forward: not stored upstream (Distillery keeps it) unless it runs in the background,
        which OpenAI and Azure OpenAI allow only for stored responses; the chain it resolved sent as input
        items in place of `previous_response_id` (the upstream cannot know our ids)."""
        body = self.model_dump(exclude={"metadata"}, exclude_none=False, exclude_unset=True)
        body["store"] = bool(self.background) and self.storing
        if model is not None:
            body["model"] = model
        if history is not None:
            body.pop("previous_response_id", None)
            given = [{"role": "user", "content": self.input}] if isinstance(self.input, str) else self.input or []
            body["input"] = [*history, *given]
        return body


def parse_responses_request(body: dict[str, Any]) -> ResponsesRequest:
    return parse_model(ResponsesRequest, body)
