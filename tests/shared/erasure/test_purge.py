"""Purge scope rules, and a purge run twice deletes the same set and writes the same receipt."""

from __future__ import annotations

import hashlib
from datetime import timedelta
from typing import Any

import pytest

from shared.erasure.purge import (
    LEGACY_DIGEST_METHOD,
    PurgeJob,
    PurgeLimits,
    PurgeReceipt,
    PurgeService,
    ids_digest,
    parse_purge_params,
)
from shared.platform.errors import InvalidRequest, NotFound, StorageUnavailable
from shared.services import Services
from shared.store.completion_index import IndexEntry
from shared.store.filter_jobs import JobStatus
from shared.store.json_blobs import JsonBlobs
from shared.store.stored_completion import StoredCompletion
from tests.conftest import ServicesFactory
from tests.shared.seed import completion

BAD_QUEUE = "no_such-queue"
"""A queue name storage refuses (underscore): every send to it fails, as a Service Bus outage would."""


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        ({}, "the filter is empty"),
        ({"filter": {}}, "the filter is empty"),
        ({"filter": {"metadata": {}}, "dry_run": True}, "the filter is empty"),
        ({"all": True, "filter": {"model": "gpt-4o"}}, "cannot be combined"),
        ({"filter": {"owner": "someone"}}, "'owner' cannot be set"),
        ({"filter": {"colour": "red"}}, "Extra inputs are not permitted"),
    ],
)
def test_an_unclear_scope_is_rejected(body: dict[str, object], fragment: str) -> None:
    with pytest.raises(InvalidRequest) as rejected:
        parse_purge_params(body)
    assert fragment in rejected.value.message and rejected.value.status == 400


def test_all_must_be_explicit() -> None:
    params = parse_purge_params({"all": True})
    assert params.selection.is_empty()


async def test_a_purge_runs_twice_safely(make_services: ServicesFactory, tag: str) -> None:
    services = await make_services()
    doomed = [completion(metadata={"tag": tag}) for _ in range(3)]
    kept = completion(metadata={"tag": tag + "-other"})
    for item in [*doomed, kept]:
        await services.store.put(item)
    params = parse_purge_params({"filter": {"metadata": {"tag": tag}}})
    assert (await services.purges.count(params)).matched_count == 3

    job = await services.purges.submit(params, requested_by="default")
    first = await services.purges.run(job.id)
    again = await services.purges.run(job.id)

    assert first.status is JobStatus.SUCCEEDED and first.receipt is not None
    assert (first.receipt.deleted_count, first.receipt.ids_digest) == (3, ids_digest([item.id for item in doomed]))
    assert again == first
    for item in doomed:
        assert not await services.store.exists(item.id)
    assert (await services.store.get(kept.id)).id == kept.id
    with pytest.raises(NotFound):
        await services.purges.get("purge_" + "0" * 24)


async def test_a_scoped_caller_purges_and_sees_only_its_own(make_services: ServicesFactory, tag: str) -> None:
    """With owner scoping, a purge by a caller without all-owners touches only that caller's completions."""
    services = await make_services()
    mine = [completion(metadata={"tag": tag}, owner="alice") for _ in range(2)]
    theirs = completion(metadata={"tag": tag}, owner="bob")
    for item in [*mine, theirs]:
        await services.store.put(item)
    params = parse_purge_params({"filter": {"metadata": {"tag": tag}}})
    assert (await services.purges.count(params, owner_scope="alice")).matched_count == 2

    job = await services.purges.submit(params, requested_by="alice", owner_scope="alice")
    done = await services.purges.run(job.id)

    assert done.receipt is not None and done.receipt.deleted_count == 2
    assert (await services.store.get(theirs.id)).owner == "key:bob"
    assert (await services.purges.get(job.id, owner_scope="alice")).id == job.id
    with pytest.raises(NotFound):
        await services.purges.get(job.id, owner_scope="bob")


@pytest.mark.parametrize("order", ["asc", "desc"])
async def test_a_created_after_beyond_the_key_range_selects_nothing(
    make_services: ServicesFactory, tag: str, order: str
) -> None:
    """`created_after: 10000000000` is later than any row key; it must not wrap around and select everything."""
    services = await make_services()
    kept = completion(metadata={"tag": tag})
    await services.store.put(kept)
    params = parse_purge_params({"filter": {"metadata": {"tag": tag}, "created_after": 10_000_000_000}})

    listed = [entry.id async for entry in services.store.index.walk(params.selection, order=order)]  # type: ignore[arg-type]
    assert listed == []
    assert (await services.purges.count(params)).matched_count == 0
    done = await services.purges.run((await services.purges.submit(params, requested_by="default")).id)

    assert done.receipt is not None and done.receipt.deleted_count == 0
    assert (await services.store.get(kept.id)).id == kept.id


async def test_a_stale_index_row_is_not_trusted(make_services: ServicesFactory, tag: str) -> None:
    """An index row left behind by a failed metadata update says `tag`; the document says otherwise: kept."""
    services = await make_services()
    stale = completion(metadata={"tag": tag + "-now"})
    await services.store.put(stale)
    entry = IndexEntry(id=stale.id, deployment=stale.deployment, model=stale.model, metadata={"tag": tag})
    await services.store.index.add(entry)
    params = parse_purge_params({"filter": {"metadata": {"tag": tag}}})

    done = await services.purges.run((await services.purges.submit(params, requested_by="default")).id)

    assert done.receipt is not None and done.receipt.deleted_count == 0
    assert (await services.store.get(stale.id)).metadata == {"tag": tag + "-now"}


def purge_service(services: Services, *, queue_name: str | None = None, **limits: Any) -> PurgeService:
    """The app's purge service with small chunks, or sending to a queue that refuses every message."""
    return PurgeService(
        store=services.store,
        records=JsonBlobs(container=services.reports_container, label="purge"),
        queue=services.job_queue,
        queue_name=queue_name or services.settings.purge_jobs_queue,
        limits=PurgeLimits(**limits),
    )


async def seeded(services: Services, tag: str, count: int) -> list[StoredCompletion]:
    items = [completion(metadata={"tag": tag}) for _ in range(count)]
    for item in items:
        await services.store.put(item)
    return items


async def test_a_large_purge_runs_in_chunks_with_checkpoints(make_services: ServicesFactory, tag: str) -> None:
    """Each delivery walks a bounded share and queues the next part; the record never holds more than a batch."""
    services = await make_services()
    doomed = await seeded(services, tag, 7)
    purges = purge_service(services, batch=2, chunk_rows=4)
    job = await purges.submit(parse_purge_params({"filter": {"metadata": {"tag": tag}}}), requested_by="default")

    first = await purges.run(job.id)
    assert (first.status, first.progress.part, first.progress.walked, first.progress.deleted) == ("running", 1, 4, 4)
    assert len(first.progress.pending) == 0
    assert sum([not await services.store.exists(item.id) for item in doomed]) == 4
    assert (await purges.run(job.id)).progress.part == 1  # a redelivered part 0 changes nothing
    done = await purges.run(job.id, part=1)

    assert done.status is JobStatus.SUCCEEDED and done.receipt is not None
    assert (done.receipt.deleted_count, done.receipt.ids_digest) == (7, ids_digest([item.id for item in doomed]))
    assert [not await services.store.exists(item.id) for item in doomed] == [True] * 7


async def test_a_batch_left_pending_by_a_dead_delivery_is_finished_and_counted(
    make_services: ServicesFactory, tag: str
) -> None:
    """The delivery died after deleting a saved batch: the next one must still count it, exactly once."""
    services = await make_services()
    first, second = await seeded(services, tag, 2)
    purges = purge_service(services)
    job = await purges.submit(parse_purge_params({"filter": {"metadata": {"tag": tag}}}), requested_by="default")
    records = JsonBlobs(container=services.reports_container, label="purge")
    raw, etag = await records.get(f"purges/{job.id}.json", missing="")
    died = PurgeJob.model_validate_json(raw)
    died.status, died.progress.pending, died.progress.after = JobStatus.RUNNING, [first.id], first.id
    await records.put(f"purges/{job.id}.json", died.model_dump_json(), etag=etag)
    await services.store.delete(first.id)  # what the dead delivery got done

    done = await purges.run(job.id)

    assert done.receipt is not None
    assert (done.receipt.deleted_count, done.receipt.ids_digest) == (2, ids_digest([first.id, second.id]))
    assert not await services.store.exists(second.id)


async def test_a_purge_the_queue_refuses_is_failed_not_queued_forever(make_services: ServicesFactory, tag: str) -> None:
    services = await make_services()
    [kept] = await seeded(services, tag, 1)
    purges = purge_service(services, queue_name=BAD_QUEUE)

    with pytest.raises(StorageUnavailable):
        await purges.submit(parse_purge_params({"filter": {"metadata": {"tag": tag}}}), requested_by="default")

    [name] = [n async for n in services.reports_container.list_blob_names(name_starts_with="purges/")]
    failed = await purges.get(name.removeprefix("purges/").removesuffix(".json"))
    assert failed.status is JobStatus.FAILED and failed.error is not None
    assert failed.error.code == "queue_unavailable"
    assert await services.store.exists(kept.id)


async def test_the_last_failed_delivery_marks_the_purge_failed(make_services: ServicesFactory, tag: str) -> None:
    """A continuation that cannot be queued fails the delivery; Service Bus retries, and the last one says why."""
    services = await make_services()
    await seeded(services, tag, 3)
    job = await services.purges.submit(parse_purge_params({"filter": {"metadata": {"tag": tag}}}), requested_by="x")
    broken = purge_service(services, queue_name=BAD_QUEUE, batch=1, chunk_rows=1)
    body = b'{"id": "%s"}' % job.id.encode()

    with pytest.raises(StorageUnavailable):
        await broken.handle(body, delivery_count=1)
    assert (await broken.get(job.id)).status is JobStatus.RUNNING  # retried: not failed yet
    with pytest.raises(StorageUnavailable):
        await broken.handle(body, delivery_count=5)

    failed = await broken.get(job.id)
    assert failed.status is JobStatus.FAILED and failed.error is not None
    assert "failed 5 times" in failed.error.message and "queue" in failed.error.message


async def test_a_finished_purge_keeps_no_content(make_services: ServicesFactory, tag: str) -> None:
    """The receipt is a count and a digest; the record keeps metadata values only as sha256; no id list is left."""
    services = await make_services()
    await seeded(services, tag, 2)
    params = parse_purge_params({"filter": {"metadata": {"tag": tag}}})
    done = await services.purges.run((await services.purges.submit(params, requested_by="default")).id)

    assert done.filter is not None
    assert done.filter.metadata == {"tag": "sha256:" + hashlib.sha256(tag.encode()).hexdigest()}
    names = [n async for n in services.reports_container.list_blob_names(name_starts_with="purges/")]
    assert names == [f"purges/{done.id}.json"]
    saved = await (await services.reports_container.download_blob(names[0])).readall()
    assert tag.encode() not in saved


async def test_a_purge_finds_orphan_documents_the_index_lost(make_services: ServicesFactory, tag: str) -> None:
    """A delete that died after removing the rows leaves a document the index walk cannot see: purge it too."""
    services = await make_services()
    indexed, orphan = await seeded(services, tag, 2)
    other = completion(metadata={"tag": tag + "-other"})
    await services.store.put(other)
    for lost in (orphan, other):
        await services.store.index.remove(await services.store.index.lookup(lost.id))  # type: ignore[arg-type]
    purges = purge_service(services, orphan_grace=timedelta(0))
    params = parse_purge_params({"filter": {"metadata": {"tag": tag}}})

    done = await purges.run((await purges.submit(params, requested_by="default")).id)

    assert done.receipt is not None
    assert (done.receipt.deleted_count, done.receipt.ids_digest) == (2, ids_digest([indexed.id, orphan.id]))
    assert not await services.store.exists(orphan.id)
    assert await services.store.exists(other.id)  # an orphan outside the filter is the sweep's, not this purge's


def test_a_receipt_from_before_chunked_purges_still_reads() -> None:
    legacy = {"deleted_count": 2, "ids_sha256": "ab" * 32, "completed_at": "2026-11-23T21:40:02Z"}
    receipt = PurgeReceipt.model_validate(legacy)
    assert (receipt.ids_digest, receipt.ids_digest_method) == ("ab" * 32, LEGACY_DIGEST_METHOD)
