"""Per-owner limits: the storage cap and the optional per-owner quota, at capture and at dataset creation."""

from __future__ import annotations

import json

import pytest

from shared.capture.chat_request import parse_chat_request
from shared.capture.proxy import NOT_STORED_REASON_HEADER, STORED_HEADER
from shared.datasets.job import DatasetParams
from shared.platform.access import Caller, Right
from shared.platform.errors import QuotaExceeded
from shared.services import Services
from tests.conftest import ServicesFactory
from tests.shared.queues import local_queue
from tests.shared.seed import completion, listed

ALICE = Caller(name="alice", owner="key:alice", rights=frozenset(Right))
BOB = Caller(name="bob", owner="key:bob", rights=frozenset(Right))
REQUEST = {"model": "m", "store": True, "messages": [{"role": "user", "content": "hi"}]}
DATASET = DatasetParams.model_validate({"kind": "evaluation", "filter": {"metadata": {"k": "v"}}})


async def with_queue(services: Services) -> Services:
    async with local_queue(services, services.settings.dataset_jobs_queue) as queue:
        await queue.create_queue()
    return services


async def queued(services: Services) -> int:
    async with local_queue(services, services.settings.dataset_jobs_queue) as queue:
        return (await queue.get_queue_properties()).approximate_message_count


async def stored_as(services: Services, caller: Caller) -> tuple[str, str | None]:
    """Capture one call, then deliver its blob-created event (counting follows from the index)."""
    reply = await services.capture.complete(parse_chat_request(REQUEST), deployment="m", caller=caller)
    assert reply.status == 200
    if reply.headers[STORED_HEADER] == "true":
        await services.indexer.index([json.loads(reply.body)["id"]])
    return reply.headers[STORED_HEADER], reply.headers.get(NOT_STORED_REASON_HEADER)


@pytest.mark.parametrize("mode", ["serve_unstored", "reject"])
async def test_dataset_creation_is_refused_at_the_storage_cap(make_services: ServicesFactory, mode: str) -> None:
    services = await with_queue(await make_services(STORAGE_QUOTA_BYTES="1000", STORAGE_QUOTA_MODE=mode))
    await services.store.put(completion(text="x" * 1000))

    with pytest.raises(QuotaExceeded) as refused:
        await services.dataset_jobs.submit(DATASET, requested_by="alice")
    error = refused.value
    assert (error.status, error.code, error.param, error.type) == (
        429,
        "storage_quota_exceeded",
        None,
        "insufficient_quota",
    )
    assert "the dataset was not started" in error.message and "STORAGE_QUOTA_BYTES" in error.message
    assert error.headers["x-should-retry"] == "false"
    assert (await services.dataset_jobs.records.list(after=None, limit=10))[0] == []
    assert await queued(services) == 0


async def test_owner_quota_stops_one_owner_storing_and_creating_datasets(make_services: ServicesFactory) -> None:
    own = completion(text="x" * 1000, owner=ALICE.owner)
    cap = len(own.model_dump_json()) + 100
    services = await with_queue(await make_services(OWNER_QUOTA_BYTES=str(cap)))
    await services.store.put(own)
    assert await stored_as(services, ALICE) == ("true", None)  # under the cap until this one lands

    assert await stored_as(services, ALICE) == ("false", "owner_quota_exceeded")
    assert await stored_as(services, BOB) == ("true", None)
    with pytest.raises(QuotaExceeded) as refused:
        await services.dataset_jobs.submit(DATASET, requested_by=ALICE.owner)
    assert (refused.value.status, refused.value.code) == (429, "owner_quota_exceeded")
    assert "OWNER_QUOTA_BYTES" in refused.value.message
    assert (await services.dataset_jobs.submit(DATASET, requested_by=BOB.owner)).status == "queued"

    # Owner rows are not counted twice in the store's totals, and deleting frees the owner's room.
    usage = await services.usage.totals(max_age_seconds=0)
    assert (usage.completion_bytes, usage.completion_count) == await listed(services.completions_container)
    await services.store.delete(own.id)
    assert await stored_as(services, ALICE) == ("true", None)


async def test_reject_mode_answers_429_owner_quota_exceeded(make_services: ServicesFactory) -> None:
    services = await make_services(OWNER_QUOTA_BYTES="100", STORAGE_QUOTA_MODE="reject")
    await services.store.put(completion(text="x" * 200, owner="alice"))
    with pytest.raises(QuotaExceeded) as refused:
        await services.capture.complete(parse_chat_request(REQUEST), deployment="m", caller=ALICE)
    assert (refused.value.code, refused.value.param) == ("owner_quota_exceeded", "store")
    assert await stored_as(services, BOB) == ("true", None)


async def test_quota_report_resets_owner_counters_to_the_index(make_services: ServicesFactory) -> None:
    services = await make_services(OWNER_QUOTA_BYTES="100000")
    sizes = [await services.store.put(completion(text="x" * n, owner="key:alice")) for n in (10, 500)]
    await services.usage.add(777_777, 3, owner="key:alice")  # drift: a write the index never saw
    await services.usage.add(5, 1, owner="ghost")
    assert await services.usage.owner_bytes("key:alice", max_age_seconds=0) == sum(sizes) + 777_777

    await services.quota_reporter.run()
    assert await services.usage.owner_bytes("key:alice", max_age_seconds=0) == sum(sizes)
    assert await services.usage.owner_bytes("ghost", max_age_seconds=0) == 0


async def test_without_owner_quota_no_owner_rows_are_written(make_services: ServicesFactory) -> None:
    services = await make_services()
    await services.store.put(completion(owner="alice"))
    rows = [row async for row in services.index_table.query_entities("PartitionKey eq 'usage'")]
    assert rows and not any(row["RowKey"].startswith("owner-") for row in rows)
