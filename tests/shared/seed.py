"""Stored completions for tests, captured at any time (the id carries the capture time)."""

from __future__ import annotations

import time

from azure.storage.blob.aio import ContainerClient

from shared.store import ids
from shared.store.stored_completion import StoredCompletion


def completion(
    *,
    days_ago: float = 0,
    model: str = "gpt-4o",
    metadata: dict[str, str] | None = None,
    text: str = "hello",
    owner: str = "default",
) -> StoredCompletion:
    captured_us = int((time.time() - days_ago * 86_400) * 1_000_000)
    completion_id = ids.new_completion_id(now_us=captured_us)
    return StoredCompletion(
        id=completion_id,
        created=captured_us // 1_000_000,
        deployment=model,
        model=model,
        metadata=metadata or {},
        owner=owner,
        request={"model": model, "messages": [{"role": "user", "content": text}]},
        response={
            "id": completion_id,
            "object": "chat.completion",
            "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
        },
    )


async def listed(container: ContainerClient) -> tuple[int, int]:
    """(bytes, count) of every blob in the container, as storage lists them."""
    sizes = [blob.size async for blob in container.list_blobs()]
    return sum(sizes), len(sizes)
