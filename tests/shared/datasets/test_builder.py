"""Dataset jobs on Azurite: formats, rules, determinism, and at-least-once delivery."""

from __future__ import annotations

import asyncio
import hashlib
import json

import pytest

from local_host.azurite import Azurite
from shared.datasets.builder import BuildLimits, DatasetJobs, InvalidJobMessage, source_digest
from shared.datasets.check import check_lines
from shared.datasets.job import DatasetJob, DatasetJobMessage, DatasetParams, DatasetStatus, new_dataset_id
from shared.datasets.records import DatasetRecords
from shared.platform.errors import NotFound
from shared.services import Services
from tests.shared.datasets.conftest import download, drain, read_job, receive, seed, stored

TAG = {"category": "docs-test"}


def distillation(**fields: object) -> DatasetParams:
    return DatasetParams.model_validate({"kind": "distillation", "filter": {"metadata": TAG}, **fields})


def lines(data: bytes) -> list[dict]:
    return [json.loads(line) for line in data.splitlines()]


async def build(services: Services, request: DatasetParams) -> str:
    job = await services.dataset_jobs.submit(request)
    await drain(services)
    return job.id


async def test_distillation_files_manifest_and_checksums(services: Services) -> None:
    ids = await seed(services, [stored(f"q{n}", metadata=TAG) for n in range(30)])
    await seed(services, [stored("other", metadata={"category": "else"})])
    job = await read_job(services, await build(services, distillation(validation_fraction=0.3, seed=3)))

    assert job.status is DatasetStatus.SUCCEEDED, job.error
    assert job.counts.selected == job.counts.written == 30
    assert [file.name for file in job.files] == ["train.jsonl", "validation.jsonl"]
    manifest = json.loads(await download(services, job.id, "manifest.json"))
    assert manifest["files"] == [file.model_dump() for file in job.files]
    assert manifest["source"]["ids_digest"] == source_digest(ids)
    assert manifest["token_count_method"] == "tiktoken:cl100k_base"
    written = []
    for file in job.files:
        data = await download(services, job.id, file.name)
        assert hashlib.sha256(data).hexdigest() == file.sha256
        assert (len(data), data.count(b"\n")) == (file.bytes, file.lines)
        assert list(check_lines(data.splitlines())) == []
        written += [example["messages"][0]["content"] for example in lines(data)]
    assert sorted(written) == sorted(f"q{n}" for n in range(30))
    assert 0 < job.files[1].lines < 30


async def test_fewer_than_ten_usable_fails_with_a_clear_message(services: Services) -> None:
    await seed(services, [stored(f"q{n}", metadata=TAG) for n in range(9)])
    await seed(services, [stored("cut", metadata=TAG, finish_reason="length")])
    job = await read_job(services, await build(services, distillation()))
    assert job.status is DatasetStatus.FAILED
    assert job.error is not None and job.error.code == "too_few_examples"
    assert job.error.message.startswith(
        "Only 9 usable completion(s) found (10 selected; skipped: 1 finish_reason_length)"
    )
    assert "at least 10" in job.error.message
    assert job.files == []
    assert [name async for name in services.datasets_container.list_blob_names()] == [f"{job.id}/job.json"]


async def test_unusable_skipped_by_reason_and_duplicates_written_once(services: Services) -> None:
    await seed(services, [stored(f"q{n}", metadata=TAG) for n in range(10)])
    await seed(
        services,
        [
            stored("q1", metadata=TAG),
            stored("q2", metadata=TAG),
            stored("x", metadata=TAG, choices=False),
            stored("y", metadata=TAG, finish_reason="content_filter"),
            stored("z", metadata=TAG, output={"role": "assistant", "content": ""}),
            stored("w " * 200, metadata=TAG),
        ],
    )
    dataset_jobs = DatasetJobs(
        records=services.dataset_jobs.records,
        store=services.store,
        membership=services.dataset_jobs.membership,
        job_queue=services.job_queue,
        queue_name=services.settings.dataset_jobs_queue,
        limits=BuildLimits(max_example_tokens=100),
    )
    job = await dataset_jobs.submit(distillation(validation_fraction=0))
    await drain(services, dataset_jobs)
    done = await read_job(services, job.id)
    assert done.status is DatasetStatus.SUCCEEDED, done.error
    assert done.counts.written == 10
    assert done.counts.skipped == {
        "duplicate": 2,
        "no_choices": 1,
        "finish_reason_content_filter": 1,
        "empty_output": 1,
        "invalid_format": 1,
    }
    assert [file.name for file in done.files] == ["train.jsonl"]


async def test_split_is_deterministic_and_keeps_each_group_in_one_file(services: Services) -> None:
    await seed(services, [stored(f"q{n}", metadata={**TAG, "user": f"u{n % 8}"}) for n in range(40)])
    request = distillation(validation_fraction=0.4, seed=11, group_by="user")
    first, second = await build(services, request), await build(services, request)
    users_by_file = {}
    for name in ("train.jsonl", "validation.jsonl"):
        data = await download(services, first, name)
        assert data == await download(services, second, name)
        users_by_file[name] = {int(e["messages"][0]["content"][1:]) % 8 for e in lines(data)}
    assert users_by_file["train.jsonl"].isdisjoint(users_by_file["validation.jsonl"])
    assert users_by_file["train.jsonl"] | users_by_file["validation.jsonl"] == set(range(8))


async def test_duplicate_delivery_gives_one_dataset_with_identical_bytes(services: Services) -> None:
    await seed(services, [stored(f"q{n}", metadata=TAG) for n in range(25)])
    job_id = new_dataset_id()
    body = DatasetJobMessage(version=1, job_id=job_id, request=distillation()).model_dump_json().encode()
    # Two deliveries at once (a resend Service Bus did not catch), then a late third one.
    await asyncio.gather(*(services.dataset_jobs.handle(body, delivery_count=1) for _ in range(2)))
    await drain(services)
    done = await read_job(services, job_id)
    assert done.status is DatasetStatus.SUCCEEDED
    files = {file.name: await download(services, job_id, file.name) for file in done.files}
    await services.dataset_jobs.handle(body, delivery_count=1)
    await drain(services)
    again = await read_job(services, job_id)
    assert again.model_dump() == done.model_dump()
    assert {f.name: await download(services, job_id, f.name) for f in again.files} == files
    assert sum(file.lines for file in done.files) == 25


async def test_killed_delivery_resumes_without_duplicate_or_missing_lines(services: Services) -> None:
    ids = await seed(services, [stored(f"q{n}", metadata=TAG) for n in range(40)])
    chunked = DatasetJobs(
        records=services.dataset_jobs.records,
        store=services.store,
        membership=services.dataset_jobs.membership,
        job_queue=services.job_queue,
        queue_name=services.settings.dataset_jobs_queue,
        limits=BuildLimits(chunk_completions=15, block_bytes=300, read_concurrency=4),
    )
    request = DatasetParams(kind="evaluation", filter={"metadata": TAG})  # type: ignore[arg-type]
    job = await chunked.submit(request)
    body = await receive_one(services)
    await chunked.handle(body, delivery_count=1)  # part 0: 15 completions, then a continuation is queued
    after_first = await read_job(services, job.id)
    assert (after_first.checkpoint.part, after_first.checkpoint.walked) == (1, 15)
    continuation = await receive_one(services)

    # Kill the delivery of part 1 once it has staged blocks of its own.
    blob = services.dataset_jobs.records.blob(job.id, "eval.jsonl")
    killed = asyncio.create_task(chunked.handle(continuation, delivery_count=1))
    staged_before = len((await blob.get_block_list("uncommitted"))[1])
    for _ in range(500):
        if len((await blob.get_block_list("uncommitted"))[1]) > staged_before + 1 or killed.done():
            break
        await asyncio.sleep(0.01)
    assert not killed.done(), "the delivery finished before it could be interrupted"
    killed.cancel()
    with pytest.raises(asyncio.CancelledError):
        await killed
    assert not await blob.exists()  # staged blocks are invisible

    await chunked.handle(continuation, delivery_count=2)  # the redelivery
    await drain(services, chunked)
    done = await read_job(services, job.id)
    assert done.status is DatasetStatus.SUCCEEDED
    data = await download(services, job.id, "eval.jsonl")
    assert [row["item"]["completion_id"] for row in lines(data)] == ids
    whole = await read_job(services, await build(services, request))
    assert data == await download(services, whole.id, "eval.jsonl")
    assert done.files[0].sha256 == whole.files[0].sha256


async def test_ids_selection_keeps_order_and_counts_missing(services: Services) -> None:
    ids = await seed(services, [stored(f"q{n}") for n in range(3)])
    missing = ids[0][:-4] + "ffff"
    request = DatasetParams.model_validate({"kind": "evaluation", "ids": [ids[2], missing, ids[0]]})
    job = await read_job(services, await build(services, request))
    assert job.status is DatasetStatus.SUCCEEDED
    assert job.counts.model_dump() == {"selected": 3, "written": 2, "skipped": {"not_found": 1}}
    data = await download(services, job.id, "eval.jsonl")
    assert [row["item"]["completion_id"] for row in lines(data)] == [ids[2], ids[0]]


async def test_invalid_message_fails_its_record_and_raises(services: Services) -> None:
    job_id = new_dataset_id()
    with pytest.raises(InvalidJobMessage):
        await services.dataset_jobs.handle(json.dumps({"version": 9, "job_id": job_id}).encode(), delivery_count=1)
    job = await read_job(services, job_id)
    assert job.status is DatasetStatus.FAILED
    assert job.error is not None and job.error.code == "invalid_message" and "version" in job.error.message
    with pytest.raises(InvalidJobMessage):
        await services.dataset_jobs.handle(b"not json", delivery_count=1)


async def test_records_list_newest_first_with_cursor(azurite: Azurite, services: Services) -> None:
    await seed(services, [stored(f"q{n}", metadata=TAG) for n in range(10)])
    made = [(await services.dataset_jobs.submit(distillation())).id for _ in range(3)]
    records: DatasetRecords = services.dataset_jobs.records
    page, more = await records.list(after=None, limit=2)
    assert [job.id for job in page] == made[::-1][:2] and more
    page, more = await records.list(after=page[-1].id, limit=2)
    assert [job.id for job in page] == [made[0]] and not more
    await records.delete(made[1])
    assert [job.id for job in (await records.list(after=None, limit=5))[0]] == [made[2], made[0]]


async def test_deleting_a_queued_job_stops_its_message(services: Services) -> None:
    await seed(services, [stored(f"q{n}", metadata=TAG) for n in range(10)])
    job = await services.dataset_jobs.submit(distillation())
    await services.dataset_jobs.records.delete(job.id)
    await drain(services)
    with pytest.raises(NotFound):
        await read_job(services, job.id)
    assert [name async for name in services.datasets_container.list_blob_names()] == [f"{job.id}/job.json"]
    assert (await services.dataset_jobs.records.list(after=None, limit=5))[0] == []


async def receive_one(services: Services) -> bytes:
    body = await receive(services)
    assert body is not None, "no message queued"
    return body


async def test_owner_scoped_dataset_uses_only_the_owners_completions(services: Services) -> None:
    """Under owner scoping a caller's dataset holds its own completions only, by filter and by ids."""
    mine = [stored(f"mine{n}", metadata=TAG).model_copy(update={"owner": "alice"}) for n in range(10)]
    theirs = [stored(f"theirs{n}", metadata=TAG).model_copy(update={"owner": "bob"}) for n in range(3)]
    await seed(services, [*mine, *theirs])

    by_filter = await read_job(services, await build(services, distillation(validation_fraction=0).scoped_to("alice")))
    assert by_filter.status is DatasetStatus.SUCCEEDED, by_filter.error
    assert by_filter.counts.written == 10
    written = [
        example["messages"][0]["content"] for example in lines(await download(services, by_filter.id, "train.jsonl"))
    ]
    assert sorted(written) == sorted(f"mine{n}" for n in range(10))

    by_ids = DatasetParams.model_validate({"kind": "evaluation", "ids": [c.id for c in [*mine, *theirs]]}).scoped_to(
        "alice"
    )
    job = await read_job(services, await build(services, by_ids))
    assert (job.counts.selected, job.counts.written) == (13, 10)
    assert job.visible_to("alice") and not job.visible_to("bob") and job.visible_to(None)


async def test_a_scoped_caller_pages_through_to_its_own_datasets(services: Services) -> None:
    """Other owners' newer datasets come first in storage order; a scoped list skips them, page after page."""
    records: DatasetRecords = services.dataset_jobs.records
    alices = [await _record(records, "key:alice") for _ in range(3)]
    others = [await _record(records, owner) for owner in ["key:bob"] * 5 + [None] * 2]
    assert len(others) == 7
    pages, after = [], None
    while True:
        page, more = await records.list(after=after, limit=2, owner_scope="key:alice")
        assert page, "a page is never empty while has_more is true"
        pages.append([job.id for job in page])
        if not more:
            break
        after = page[-1].id
    assert pages == [alices[::-1][:2], alices[::-1][2:]]
    assert [job.id for job in (await records.list(after=None, limit=20, owner_scope="key:carol"))[0]] == []
    everyone, more = await records.list(after=None, limit=20)
    assert len(everyone) == 10 and not more


async def _record(records: DatasetRecords, owner: str | None) -> str:
    params = DatasetParams.model_validate({"kind": "evaluation", "ids": ["chatcmpl-" + "0" * 32]})
    job = DatasetJob.queued(new_dataset_id(), params.model_copy(update={"owner": owner}))
    await records.create(job)
    return job.id
