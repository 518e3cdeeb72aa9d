"""The Responses API's items as Distillery reads them: a request's `input`, and the conversation a
stored response holds, both as the API's own items and as chat messages for datasets.

Only message, function-call, function-call-output and reasoning items have a chat form; any other
item (a built-in tool call, a computer action) makes the conversation inexpressible as chat
messages, and a dataset skips it with a counted reason instead of training on part of it.
"""

from __future__ import annotations

import json
from typing import Any

CHAT_EXPRESSIBLE = frozenset({"message", "function_call", "function_call_output", "reasoning"})


def input_items(value: Any) -> list[dict[str, Any]]:
    """A request's `input` as a list of items: a string is one user message; an easy message
    (`{"role", "content"}`) gets its `type`, and string content becomes one text part."""
    if value is None:
        return []
    if isinstance(value, str):
        value = [{"role": "user", "content": value}]
    items: list[dict[str, Any]] = []
    for item in value if isinstance(value, list) else []:
        if not isinstance(item, dict):
            continue
        item = dict(item)
        if "role" in item and item.get("type", "message") == "message":
            item["type"] = "message"
            if isinstance(item.get("content"), str):
                part = "output_text" if item["role"] == "assistant" else "input_text"
                item["content"] = [{"type": part, "text": item["content"]}]
        items.append(item)
    return items


def text_of(item: dict[str, Any]) -> str:
    """A message item's text parts joined (empty for other items)."""
    content = item.get("content")
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        return ""
    return "".join(
        str(part.get("text", "")) for part in content if isinstance(part, dict) and isinstance(part.get("text"), str)
    )


def output_text(response: dict[str, Any]) -> str | None:
    """The response's assistant text (its `output_text`), None when it said nothing."""
    texts = [text_of(item) for item in response.get("output") or [] if item.get("type") == "message"]
    joined = "".join(texts)
    return joined or None


def unsupported_items(items: list[dict[str, Any]]) -> list[str]:
    """Types of the items that have no chat form."""
    return sorted({str(item.get("type")) for item in items if item.get("type") not in CHAT_EXPRESSIBLE})


def chat_messages(instructions: Any, items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Items as chat messages: function calls become an assistant message's `tool_calls` (calls in a
    row share one message), function outputs `tool` messages; reasoning items are left out."""
    messages: list[dict[str, Any]] = []
    if isinstance(instructions, str) and instructions:
        messages.append({"role": "system", "content": instructions})
    for item in items:
        kind = item.get("type")
        if kind == "message":
            messages.append({"role": item.get("role", "user"), "content": text_of(item)})
        elif kind == "function_call":
            call = {
                "id": item.get("call_id") or item.get("id"),
                "type": "function",
                "function": {"name": item.get("name"), "arguments": item.get("arguments", "")},
            }
            last = messages[-1] if messages else None
            if last is not None and last["role"] == "assistant" and "tool_calls" in last:
                last["tool_calls"].append(call)
            else:
                messages.append({"role": "assistant", "tool_calls": [call]})
        elif kind == "function_call_output":
            output = item.get("output")
            content = output if isinstance(output, str) else json.dumps(output, ensure_ascii=False)
            messages.append({"role": "tool", "tool_call_id": item.get("call_id"), "content": content})
    return messages


def chat_tools(tools: Any) -> list[dict[str, Any]]:
    """Function tools in the chat shape (`{"type": "function", "function": {...}}`); others have none."""
    chat = []
    for tool in tools if isinstance(tools, list) else []:
        if isinstance(tool, dict) and tool.get("type") == "function":
            function = {key: tool[key] for key in ("name", "description", "parameters") if key in tool}
            chat.append({"type": "function", "function": function})
    return chat
