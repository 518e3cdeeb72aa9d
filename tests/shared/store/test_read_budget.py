"""Memory bounded by bytes: the stored-document cap, and the read budget every many-document path
shares (lists, dataset builds, purges, retention, eval items)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from datetime import UTC, datetime, timedelta

import pytest

from shared.capture.chat_request import parse_chat_request
from shared.capture.proxy import NOT_STORED_REASON_HEADER, STORED_HEADER
from shared.datasets.builder import _Chunk
from shared.datasets.job import DatasetJob, DatasetParams, DatasetStatus, new_dataset_id
from shared.erasure.purge import delete_completions
from shared.platform.access import Caller, Right
from shared.platform.errors import DocumentTooLarge, NotFound
from shared.services import Services
from shared.store import ids
from shared.store.completion_filter import CompletionFilter
from shared.store.read_budget import ByteBudget
from shared.store.stored_completion import StoredCompletion
from tests.conftest import ServicesFactory
from tests.shared.datasets.conftest import drain, read_job
from tests.shared.queues import local_queue

BUDGET = 64 * 1024
DOC_TEXT = 20_000
"""Each test document is about 40 KB (the text is in the request and in the answer)."""
CALLER = Caller(name="default", owner="key:default", rights=frozenset(Right))


def large(tag: str, number: int, *, days_ago: float = 0) -> StoredCompletion:
    captured_us = int((time.time() - days_ago * 86_400) * 1_000_000) + number
    completion_id = ids.new_completion_id(now_us=captured_us)
    text = f"{number:04d}" + "x" * DOC_TEXT
    return StoredCompletion(
        id=completion_id,
        created=captured_us // 1_000_000,
        deployment="gpt-4o",
        model="gpt-4o",
        metadata={"tag": tag},
        owner="default",
        request={"model": "gpt-4o", "messages": [{"role": "user", "content": text}]},
        response={
            "object": "chat.completion",
            "model": "gpt-4o",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
        },
    )


async def budgeted(make_services: ServicesFactory, **settings: str) -> Services:
    return await make_services(DOCUMENT_READ_BUDGET_BYTES=str(BUDGET), **settings)


async def seeded(services: Services, tag: str, count: int, *, days_ago: float = 0) -> list[str]:
    items = [large(tag, number, days_ago=days_ago) for number in range(count)]
    await asyncio.gather(*(services.store.put(item) for item in items))
    return [item.id for item in items]


# The budget itself.


async def test_budget_waits_for_room_first_come_first_served() -> None:
    budget = ByteBudget(100)
    assert await budget.acquire(60) == 60
    order: list[str] = []

    async def take(name: str, size: int) -> None:
        amount = await budget.acquire(size)
        order.append(name)
        budget.release(amount)

    big = asyncio.create_task(take("big", 80))
    await asyncio.sleep(0)
    small = asyncio.create_task(take("small", 10))  # fits now, but queues behind the big one
    await asyncio.sleep(0)
    assert order == [] and budget.in_flight == 60
    budget.release(60)
    await asyncio.gather(big, small)
    assert order == ["big", "small"] and budget.in_flight == 0 and budget.peak == 90


async def test_budget_clamps_a_request_larger_than_itself_and_gives_back_cancelled_waits() -> None:
    budget = ByteBudget(100)
    assert await budget.acquire(10**9) == 100  # read alone, counted as the whole budget
    waiting = asyncio.create_task(budget.acquire(5))
    await asyncio.sleep(0)
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    budget.release(100)
    assert budget.in_flight == 0 and budget.fits(100)


# The document cap.


async def test_a_document_over_the_cap_is_refused_by_the_store_and_served_unstored(
    make_services: ServicesFactory,
) -> None:
    services = await make_services(MAX_STORED_DOCUMENT_BYTES="8192")
    with pytest.raises(DocumentTooLarge) as refused:
        await services.store.put(large("t", 0))
    assert refused.value.status == 413 and refused.value.code == "document_too_large"
    assert [blob async for blob in services.completions_container.list_blobs()] == []

    request = parse_chat_request({"model": "m", "store": True, "messages": [{"role": "user", "content": "y" * 9000}]})
    reply = await services.capture.complete(request, deployment="m", caller=CALLER)
    assert reply.status == 200 and b"y" * 9000 in reply.body  # the offline model echoes it
    assert reply.headers[STORED_HEADER] == "false"
    assert reply.headers[NOT_STORED_REASON_HEADER] == "document_too_large"
    assert [blob async for blob in services.completions_container.list_blobs()] == []

    small = parse_chat_request({"model": "m", "store": True, "messages": [{"role": "user", "content": "hi"}]})
    assert (await services.capture.complete(small, deployment="m", caller=CALLER)).headers[STORED_HEADER] == "true"


async def test_a_metadata_update_cannot_grow_a_document_past_the_cap(make_services: ServicesFactory) -> None:
    kept = large("t", 0)
    services = await make_services(MAX_STORED_DOCUMENT_BYTES=str(len(kept.model_dump_json()) + 1000))
    await services.store.put(kept)
    with pytest.raises(DocumentTooLarge):
        await services.store.update_metadata(kept.id, {f"k{n}": "v" * 500 for n in range(16)})
    assert (await services.store.get(kept.id)).metadata == {"tag": "t"}


# Paths that read many documents.


async def test_a_list_of_large_documents_stays_within_the_budget_and_pages_on(
    make_services: ServicesFactory, tag: str
) -> None:
    services = await budgeted(make_services)
    stored = await seeded(services, tag, 12)
    budget = services.store.budget
    selection = CompletionFilter(metadata={"tag": tag})

    page = await services.store.list(selection, limit=100)
    assert 0 < len(page.data) < 12 and page.has_more  # a page of 12 x 40 KB would pass 64 KiB
    assert 0 < budget.peak <= BUDGET and budget.in_flight == 0

    listed = [c.id for c in page.data]
    while page.has_more:
        page = await services.store.list(selection, limit=100, after=listed[-1])
        listed += [c.id for c in page.data]
    assert listed == sorted(stored)
    assert budget.peak <= BUDGET and budget.in_flight == 0


async def test_concurrent_lists_and_reads_share_one_budget(make_services: ServicesFactory, tag: str) -> None:
    services = await budgeted(make_services)
    stored = await seeded(services, tag, 8)
    selection = CompletionFilter(metadata={"tag": tag})
    pages = await asyncio.gather(
        *(services.store.list(selection, limit=100) for _ in range(4)),
        *(services.store.get(completion_id) for completion_id in stored),
    )
    assert all(item for item in pages)
    assert 0 < services.store.budget.peak <= BUDGET and services.store.budget.in_flight == 0


@pytest.mark.parametrize("by_ids", [False, True])
async def test_a_dataset_build_keeps_bytes_in_flight_within_the_budget(
    make_services: ServicesFactory, tag: str, by_ids: bool
) -> None:
    services = await budgeted(make_services)
    async with local_queue(services, services.settings.dataset_jobs_queue) as queue:
        await queue.create_queue()
    stored = await seeded(services, tag, 24)
    selection = {"ids": stored} if by_ids else {"filter": {"metadata": {"tag": tag}}}
    job = await services.dataset_jobs.submit(DatasetParams.model_validate({"kind": "evaluation", **selection}))
    await drain(services)

    finished = await read_job(services, job.id)
    assert finished.status is DatasetStatus.SUCCEEDED, finished.error
    assert finished.counts.written == 24
    budget = services.store.budget
    assert 40_000 < budget.peak <= BUDGET and budget.in_flight == 0


async def test_purge_and_retention_delete_within_the_budget(make_services: ServicesFactory, tag: str) -> None:
    services = await budgeted(make_services, RETENTION_DAYS="1")
    doomed = await seeded(services, tag, 10)
    old = await seeded(services, tag + "-old", 10, days_ago=3)
    budget = services.store.budget

    assert await delete_completions(services.store, doomed) == 10
    result = await services.retention.run(now=datetime.now(UTC) + timedelta(minutes=1))
    assert result.deleted_count == 10
    for completion_id in doomed + old:
        with pytest.raises(NotFound):
            await services.store.get(completion_id)
    assert 40_000 < budget.peak <= BUDGET and budget.in_flight == 0


async def test_a_wait_cancelled_while_room_is_made_leaves_the_budget_consistent() -> None:
    budget = ByteBudget(100)
    held = await budget.acquire(100)
    waiting = asyncio.create_task(budget.acquire(50))
    await asyncio.sleep(0)
    waiting.cancel()  # its future is cancelled at once; the release below sees it before the task does
    budget.release(held)
    with pytest.raises(asyncio.CancelledError):
        await waiting
    assert budget.in_flight == 0 and await budget.acquire(100) == 100


async def test_a_build_holds_each_document_until_it_is_consumed(make_services: ServicesFactory, tag: str) -> None:
    """Read-ahead is bounded by bytes held, not by a count of finished reads nobody accounts for."""
    services = await budgeted(make_services)
    stored = await seeded(services, tag, 12)
    params = DatasetParams.model_validate({"kind": "evaluation", "filter": {"metadata": {"tag": tag}}})
    chunk = _Chunk(services.dataset_jobs, DatasetJob.queued(new_dataset_id(), params))
    budget = services.store.budget
    seen = []
    async with contextlib.aclosing(chunk._read_in_order()) as reads:
        async for completion_id, completion in reads:
            assert completion is not None
            assert len(completion.model_dump_json()) <= budget.in_flight <= BUDGET  # still held while consumed
            seen.append(completion_id)
    assert seen == sorted(stored) and budget.in_flight == 0
