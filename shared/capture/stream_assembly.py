"""Rebuild the `chat.completion` a stream amounts to, so a streamed call is stored like any other."""

from __future__ import annotations

from typing import Any


class CompletionAssembler:
    """Folds `chat.completion.chunk` objects into one `chat.completion` (content, tool calls, usage)."""

    def __init__(self) -> None:
        self._head: dict[str, Any] = {}
        self._choices: dict[int, dict[str, Any]] = {}
        self._usage: dict[str, Any] | None = None
        self.failed = False
        """The stream carried an error event; such a call is not stored."""

    def add(self, chunk: dict[str, Any]) -> None:
        if "error" in chunk:
            self.failed = True
            return
        for key in ("id", "created", "model", "system_fingerprint", "service_tier"):
            if chunk.get(key) is not None:
                self._head[key] = chunk[key]
        if chunk.get("usage"):
            self._usage = chunk["usage"]
        for choice in chunk.get("choices") or []:
            self._add_choice(choice)

    def _add_choice(self, choice: dict[str, Any]) -> None:
        index = int(choice.get("index", 0))
        state = self._choices.setdefault(
            index, {"index": index, "message": {"role": "assistant", "content": None}, "finish_reason": None}
        )
        message = state["message"]
        delta = choice.get("delta") or {}
        if delta.get("role"):
            message["role"] = delta["role"]
        for text_field in ("content", "refusal"):
            if delta.get(text_field) is not None:
                message[text_field] = (message.get(text_field) or "") + delta[text_field]
        for call in delta.get("tool_calls") or []:
            _merge_tool_call(message.setdefault("tool_calls", []), call)
        if choice.get("logprobs") is not None:
            state.setdefault("logprobs", {"content": []})
            state["logprobs"]["content"] += (choice["logprobs"] or {}).get("content") or []
        if choice.get("finish_reason") is not None:
            state["finish_reason"] = choice["finish_reason"]

    def completion(self) -> dict[str, Any]:
        completion: dict[str, Any] = {
            "object": "chat.completion",
            **self._head,
            "choices": [self._choices[index] for index in sorted(self._choices)],
        }
        if self._usage is not None:
            completion["usage"] = self._usage
        return completion


def _merge_tool_call(calls: list[dict[str, Any]], delta: dict[str, Any]) -> None:
    index = int(delta.get("index", len(calls)))
    while len(calls) <= index:
        calls.append({"id": None, "type": "function", "function": {"name": "", "arguments": ""}})
    call = calls[index]
    if delta.get("id"):
        call["id"] = delta["id"]
    if delta.get("type"):
        call["type"] = delta["type"]
    function = delta.get("function") or {}
    if function.get("name"):
        call["function"]["name"] += function["name"]
    if function.get("arguments"):
        call["function"]["arguments"] += function["arguments"]


_FINAL_EVENTS = frozenset({"response.completed", "response.incomplete", "response.failed"})


class ResponseAssembler:
    """Follows a Responses event stream to its final `response`.

    The event that ends the stream carries the whole response; output items seen done on the way
    stand in when an upstream sends that response without its output.
    """

    def __init__(self) -> None:
        self._final: dict[str, Any] | None = None
        self._items: dict[int, dict[str, Any]] = {}
        self.done = False
        """True once the event that ends the stream (`response.completed`, `.incomplete`, `.failed`) arrived."""

    def add(self, event: dict[str, Any]) -> None:
        kind = event.get("type")
        if kind == "response.output_item.done" and isinstance(event.get("item"), dict):
            self._items[int(event.get("output_index", len(self._items)))] = event["item"]
        elif kind in _FINAL_EVENTS and isinstance(event.get("response"), dict):
            self._final = event["response"]
            self.done = True

    def response(self) -> dict[str, Any] | None:
        """The final response (None when the stream ended without one, or it failed)."""
        if self._final is None or self._final.get("status") == "failed":
            return None
        final = dict(self._final)
        if not final.get("output") and self._items:
            final["output"] = [self._items[index] for index in sorted(self._items)]
        return final
