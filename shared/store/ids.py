"""Stored-completion ids: time-ordered, fixed-format, safe to use as blob names and table keys.

A kind's prefix (`chatcmpl-` for chat completions, `resp_` for responses, as OpenAI names them) +
14 hex digits of capture time in microseconds + 18 random hex digits. Because the time is part of
the id, a list cursor (`after=<id>`) maps to an index position with no look-up; within one kind, id
order is capture order.
"""

from __future__ import annotations

import hashlib
import re
import secrets
import time
from typing import Literal

from shared.platform.errors import InvalidRequest, NotFound

Kind = Literal["chat.completion", "response"]
"""What a stored record is: a chat completion or a Responses API response (its `object`)."""

PREFIX = "chatcmpl-"
RESPONSE_PREFIX = "resp_"
PREFIXES: dict[Kind, str] = {"chat.completion": PREFIX, "response": RESPONSE_PREFIX}
TIME_DIGITS = 14
_ID_PATTERN = re.compile(r"(?:chatcmpl-|resp_)[0-9a-f]{32}")


def new_completion_id(*, now_us: int | None = None, kind: Kind = "chat.completion") -> str:
    micros = time.time_ns() // 1000 if now_us is None else now_us
    return f"{PREFIXES[kind]}{micros:0{TIME_DIGITS}x}{secrets.token_hex(9)}"


def derived_completion_id(*, at_us: int, key: str) -> str:
    """An id fixed by `key` (a job and the completion it derives from): made again, it is the same id,
    so a job redelivered finds what it already stored."""
    return f"{PREFIX}{at_us:0{TIME_DIGITS}x}{hashlib.sha256(key.encode()).hexdigest()[:18]}"


def is_completion_id(value: str) -> bool:
    """One of our ids, of either kind."""
    return _ID_PATTERN.fullmatch(value) is not None


def kind_of(completion_id: str) -> Kind:
    return "response" if completion_id.startswith(RESPONSE_PREFIX) else "chat.completion"


def digits(completion_id: str) -> str:
    """The id without its kind's prefix: capture time first, so these sort in capture order."""
    return completion_id.removeprefix(PREFIXES[kind_of(completion_id)])


def captured_at_us(completion_id: str) -> int:
    """Capture time in microseconds, read back from the id."""
    return int(digits(completion_id)[:TIME_DIGITS], 16)


def require_completion_id(value: str, *, kind: Kind | None = None) -> str:
    """Reject anything that is not one of our ids (of `kind`, when given) before it reaches storage.

    Unknown-format ids answer 404 like unknown ids do: the caller learns nothing about our naming.
    """
    if not is_completion_id(value) or (kind is not None and kind_of(value) != kind):
        noun = "response" if kind == "response" else "chat completion"
        raise NotFound(f"No {noun} found with id '{_printable(value)}'.", param="completion_id")
    return value


def require_cursor_id(value: str, *, param: str = "after") -> str:
    """A list cursor must be one of our ids; anything else is a bad request."""
    if not is_completion_id(value):
        raise InvalidRequest(
            f"'{param}' must be a stored completion or response id such as 'chatcmpl-…' or 'resp_…'.", param=param
        )
    return value


def _printable(value: str, limit: int = 80) -> str:
    shown = "".join(ch if ch.isprintable() else "?" for ch in value[:limit])
    return shown + ("…" if len(value) > limit else "")
