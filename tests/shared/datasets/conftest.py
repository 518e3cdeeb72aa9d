"""Stored completions and dataset jobs as the dataset tests seed and read them."""

from __future__ import annotations

import itertools
import time
from typing import Any

from shared.datasets.builder import DatasetJobs
from shared.datasets.job import DatasetJob
from shared.services import Services
from shared.store import ids
from shared.store.stored_completion import StoredCompletion
from tests.shared.queues import take_message

_clock = itertools.count(time.time_ns() // 1000)


def stored(
    text: str,
    *,
    metadata: dict[str, str] | None = None,
    messages: list[dict[str, Any]] | None = None,
    output: dict[str, Any] | None = None,
    finish_reason: str = "stop",
    tools: list[dict[str, Any]] | None = None,
    choices: bool = True,
) -> StoredCompletion:
    """A stored completion as capture writes it; ids are strictly increasing in creation order."""
    now_us = next(_clock)
    request: dict[str, Any] = {"model": "gpt-4o", "messages": messages or [{"role": "user", "content": text}]}
    if tools:
        request["tools"] = tools
    message = output or {"role": "assistant", "content": f"answer to {text}", "refusal": None}
    response: dict[str, Any] = {
        "object": "chat.completion",
        "model": "gpt-4o-2024-08-06",
        "choices": [{"index": 0, "message": message, "finish_reason": finish_reason}] if choices else [],
    }
    return StoredCompletion(
        id=ids.new_completion_id(now_us=now_us),
        created=now_us // 1_000_000,
        deployment="gpt-4o",
        model="gpt-4o-2024-08-06",
        metadata=metadata or {},
        request=request,
        response=response,
    )


async def seed(services: Services, completions: list[StoredCompletion]) -> list[str]:
    for completion in completions:
        await services.store.put(completion)
    return [completion.id for completion in completions]


async def receive(services: Services) -> bytes | None:
    """Take the next dataset queue message, if any (a test delivers it by hand)."""
    return await take_message(services, services.settings.dataset_jobs_queue)


async def drain(services: Services, jobs: DatasetJobs | None = None) -> None:
    """Deliver every queued dataset message, continuations included, to `jobs` (default: the app's)."""
    while (body := await receive(services)) is not None:
        await (jobs or services.dataset_jobs).handle(body, delivery_count=1)


async def read_job(services: Services, job_id: str) -> DatasetJob:
    job, _ = await services.dataset_jobs.records.read(job_id)
    return job


async def download(services: Services, job_id: str, name: str) -> bytes:
    _, chunks = await services.dataset_jobs.records.open_file(job_id, name)
    return b"".join([chunk async for chunk in chunks])
