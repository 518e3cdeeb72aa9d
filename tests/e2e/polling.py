"""Waiting on the running host: poll a route until its answer says the work is done (never a fixed sleep)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import Any

import httpx
import openai

from shared.store import ids


def wait_until(
    http: httpx.Client, path: str, done: Callable[[dict[str, Any]], bool], seconds: float = 60
) -> dict[str, Any]:
    """The first answer of `GET path` that `done` accepts; fails with the last answer after `seconds`."""
    deadline = time.monotonic() + seconds
    body: dict[str, Any] = {}
    while time.monotonic() < deadline:
        body = http.get(path).json()
        if done(body):
            return body
        time.sleep(0.1)
    raise AssertionError(f"{path} never got there: {body}")


def wait_listed(client: openai.OpenAI, completion_ids: Iterable[str], seconds: float = 15) -> float:
    """Wait until lists show every one of these stored completions (their index rows are written
    after the answer, from the blob-created event); returns the seconds it took."""
    wanted = set(completion_ids)
    times = [ids.captured_at_us(completion_id) for completion_id in wanted] or [0]
    window = {"created_after": min(times) // 1_000_000, "created_before": max(times) // 1_000_000 + 1, "kind": "all"}
    started = time.monotonic()
    listed: set[str] = set()
    while time.monotonic() - started < seconds:
        listed = {kept.id for kept in client.chat.completions.list(limit=100, extra_query=window)}
        if wanted <= listed:
            return time.monotonic() - started
        time.sleep(0.05)
    raise AssertionError(f"not listed after {seconds} s: {sorted(wanted - listed)}")
