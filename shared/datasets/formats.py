"""Stored completion -> dataset line: the fine-tuning chat format and the Evals `file_content` item.

A stored response becomes the same chat form: its whole conversation (earlier turns of its chain
included), function calls as `tool_calls` and their outputs as `tool` messages. A response whose
conversation has items with no chat form, or whose earlier turns were not captured, is skipped with
its reason counted, never trained on in part.

Lines are compact JSON with sorted keys, so a line is its own canonical form: two completions with
the same conversation give byte-identical lines, which is how exact duplicates are found.
"""

from __future__ import annotations

import hashlib
import json
from enum import StrEnum
from typing import Any

from shared.datasets.check import MESSAGE_KEYS
from shared.store import response_items
from shared.store.stored_completion import StoredCompletion

TRAIN_FILE = "train.jsonl"
VALIDATION_FILE = "validation.jsonl"
EVAL_FILE = "eval.jsonl"
_INPUT_KEYS = MESSAGE_KEYS - {"weight"}
_EXAMPLE_REQUEST_KEYS = ("tools", "parallel_tool_calls", "functions")


class SkipReason(StrEnum):
    """Why a selected completion is not in the dataset (the `counts.skipped` keys)."""

    NOT_FOUND = "not_found"
    """Deleted after it was selected."""
    NO_LONGER_MATCHES = "no_longer_matches"
    """Its metadata changed after it was selected."""
    NO_CHOICES = "no_choices"
    """The upstream call failed or returned no choice."""
    EMPTY_OUTPUT = "empty_output"
    FINISH_REASON_LENGTH = "finish_reason_length"
    """Cut off by max_tokens: training on it teaches truncated answers."""
    FINISH_REASON_CONTENT_FILTER = "finish_reason_content_filter"
    INVALID_FORMAT = "invalid_format"
    """Fails the fine-tuning format check (e.g. longer than the token limit)."""
    DUPLICATE = "duplicate"
    """Exactly the same conversation as an earlier line."""
    RELABELED = "relabeled"
    """`prefer_relabel`: a relabeled answer whose original is selected too, and carries it."""
    DUPLICATE_PROMPT = "duplicate_prompt"
    """The same prompt as an earlier example (dedup `exact` or `near`)."""
    NEAR_DUPLICATE = "near_duplicate"
    """A near-duplicate of an earlier example's prompt (dedup `near`)."""
    EVAL_LEAKAGE = "eval_leakage"
    """A near-duplicate of an example in the other split (train vs validation): always dropped."""
    UNSUPPORTED_RESPONSE_ITEM = "unsupported_response_item"
    """A response whose conversation holds an item with no chat form (a built-in tool call, a computer action)."""
    INCOMPLETE_CONVERSATION = "incomplete_conversation"
    """A response whose earlier turns (`previous_response_id`) were not captured: its context is missing."""


def assistant_output(completion: StoredCompletion) -> dict[str, Any] | SkipReason:
    """The stored answer as the final assistant message, or why it must not be used."""
    if completion.kind == "response":
        return _response_output(completion)
    choices = completion.response.get("choices") or []
    if not choices or not isinstance(choices[0], dict):
        return SkipReason.NO_CHOICES
    choice = choices[0]
    if choice.get("finish_reason") == "length":
        return SkipReason.FINISH_REASON_LENGTH
    if choice.get("finish_reason") == "content_filter":
        return SkipReason.FINISH_REASON_CONTENT_FILTER
    message = choice.get("message") or {}
    content = message.get("content")
    tool_calls = [_tool_call(call) for call in message.get("tool_calls") or []]
    output: dict[str, Any] = {"role": "assistant"}
    if isinstance(content, str) and content.strip():
        output["content"] = content
    if tool_calls:
        output["tool_calls"] = tool_calls
    if message.get("function_call"):
        output["function_call"] = message["function_call"]
    return output if len(output) > 1 else SkipReason.EMPTY_OUTPUT


def input_messages(completion: StoredCompletion, *, keep_roles: bool = False) -> list[dict[str, Any]]:
    """The request's messages in the fine-tuning shape: `developer` becomes `system` (unless `keep_roles`:
    an eval's `{{item.input}}` replays them to models that know `developer`), extra keys go."""
    messages = []
    for message in prompt_messages(completion):
        kept = {key: value for key, value in message.items() if key in _INPUT_KEYS}
        if kept.get("role") == "developer" and not keep_roles:
            kept["role"] = "system"
        if kept.get("content") is None and (kept.get("tool_calls") or kept.get("function_call")):
            kept.pop("content", None)
        messages.append(kept)
    return messages


def prompt_messages(completion: StoredCompletion) -> list[dict[str, Any]]:
    """The conversation before the answer as chat messages (a response's: instructions, earlier turns, input)."""
    if completion.kind != "response":
        return list(completion.request.get("messages", []))
    items = [*completion.history, *response_items.input_items(completion.request.get("input"))]
    return response_items.chat_messages(completion.request.get("instructions"), items)


def request_tools(completion: StoredCompletion) -> list[dict[str, Any]] | None:
    """The tools the request offered, in the chat shape (a response's function tools converted)."""
    if completion.kind == "response":
        return response_items.chat_tools(completion.request.get("tools")) or None
    tools = completion.request.get("tools")
    return tools if tools else None


def distillation_example(completion: StoredCompletion, output: dict[str, Any]) -> dict[str, Any]:
    """`{"messages": [...inputs, output], "tools"?: [...]}`, one fine-tuning example."""
    example: dict[str, Any] = {"messages": [*input_messages(completion), output]}
    if completion.kind == "response":
        tools = request_tools(completion)
        if tools:
            example["tools"] = tools
        if tools and completion.request.get("parallel_tool_calls") is not None:
            example["parallel_tool_calls"] = completion.request["parallel_tool_calls"]
        return example
    for key in _EXAMPLE_REQUEST_KEYS:
        if completion.request.get(key) is not None:
            example[key] = completion.request[key]
    return example


def evaluation_line(completion: StoredCompletion, output: dict[str, Any]) -> dict[str, Any]:
    """An Evals `file_content` row: the item to grade against, and the stored answer as the sample."""
    reference = output.get("content") or json.dumps(output.get("tool_calls") or output.get("function_call"))
    item: dict[str, Any] = {
        "input": input_messages(completion, keep_roles=True),
        "reference": reference,
        "completion_id": completion.id,
        "metadata": completion.metadata,
    }
    tools = request_tools(completion)
    if tools:
        item["tools"] = tools
    return {"item": item, "sample": {"output_text": reference, "model": completion.model}}


def jsonl_line(value: dict[str, Any]) -> bytes:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"), sort_keys=True).encode() + b"\n"


def line_fingerprint(line: bytes) -> int:
    """64 bits of the line's sha256 (collision odds about 1 in 10^7 at a million lines)."""
    return int.from_bytes(hashlib.sha256(line).digest()[:8], "big")


def group_key(completion: StoredCompletion, group_by: str | None) -> str:
    """What keeps examples together in one file: a metadata value, else the completion itself."""
    if group_by is not None and group_by in completion.metadata:
        return "m:" + completion.metadata[group_by]
    return "c:" + completion.id


def in_validation(key: str, *, seed: int, fraction: float) -> bool:
    """Deterministic: the same key, seed and fraction always land in the same file."""
    if fraction <= 0:
        return False
    digest = hashlib.sha256(f"{seed}\0{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") < fraction * 2**64


def _response_output(completion: StoredCompletion) -> dict[str, Any] | SkipReason:
    """A response's output as one assistant message: its text, and its function calls as `tool_calls`."""
    if not completion.history_complete:
        return SkipReason.INCOMPLETE_CONVERSATION
    if response_items.unsupported_items(completion.conversation_items()):
        return SkipReason.UNSUPPORTED_RESPONSE_ITEM
    response = completion.response
    if response.get("status") == "failed":
        return SkipReason.NO_CHOICES
    if response.get("status") == "incomplete":
        reason = (response.get("incomplete_details") or {}).get("reason")
        return (
            SkipReason.FINISH_REASON_CONTENT_FILTER if reason == "content_filter" else SkipReason.FINISH_REASON_LENGTH
        )
    output: dict[str, Any] = {"role": "assistant"}
    text = response_items.output_text(response)
    if text and text.strip():
        output["content"] = text
    calls = [
        call
        for message in response_items.chat_messages(None, completion.response_output())
        for call in message.get("tool_calls", [])
    ]
    if calls:
        output["tool_calls"] = calls
    return output if len(output) > 1 else SkipReason.EMPTY_OUTPUT


def _tool_call(call: dict[str, Any]) -> dict[str, Any]:
    function = call.get("function") or {}
    return {
        "id": call.get("id"),
        "type": call.get("type", "function"),
        "function": {"name": function.get("name"), "arguments": function.get("arguments", "")},
    }
