"""Fanned-out dataset builds: a filter selection split into slices, one queue message each, joined
by one commit of every slice's staged blocks."""

from __future__ import annotations

import asyncio
import json
from typing import Any
from urllib.parse import unquote

import pytest
from azure.core.exceptions import ResourceNotFoundError
from azure.core.pipeline import PipelineResponse
from azure.data.tables.aio import TableClient
from azure.storage.blob.aio import BlobClient, ContainerClient

from shared.datasets.builder import BuildLimits, DatasetJobs
from shared.datasets.job import DatasetJobMessage, DatasetParams, DatasetStatus
from shared.datasets.membership import DatasetMembership
from shared.datasets.records import DatasetRecords
from shared.platform.errors import StorageUnavailable
from shared.services import Services
from shared.store.completion_index import CompletionIndex, shard_of
from shared.store.completion_store import CompletionStore
from shared.store.stored_completion import StoredCompletion
from tests.shared.counting_transport import CountingTransport
from tests.shared.datasets.conftest import download, drain, read_job, receive, seed, stored

TAG = {"category": "slices-test"}


def jobs_with(
    services: Services,
    *,
    records: DatasetRecords | None = None,
    store: CompletionStore | None = None,
    membership: DatasetMembership | None = None,
    **limits: int,
) -> DatasetJobs:
    return DatasetJobs(
        records=records or services.dataset_jobs.records,
        store=store or services.store,
        membership=membership or services.dataset_jobs.membership,
        job_queue=services.job_queue,
        queue_name=services.settings.dataset_jobs_queue,
        limits=BuildLimits(**limits),  # type: ignore[arg-type]
    )


def index_table(services: Services, **options: Any) -> TableClient:
    """The index table through a client of the test's own: a response hook or a counting transport."""
    connection = services.settings.storage_connection_string
    assert connection is not None
    return TableClient.from_connection_string(
        connection.get_secret_value(), services.settings.completion_index_table, **options
    )


async def files_of(services: Services, job_id: str) -> dict[str, bytes]:
    job = await read_job(services, job_id)
    assert job.status is DatasetStatus.SUCCEEDED, job.error
    return {file.name: await download(services, job_id, file.name) for file in job.files}


async def test_sliced_build_has_the_bytes_counts_and_manifest_of_a_one_slice_build(services: Services) -> None:
    # q3 and q5 come back later (exact duplicate examples in later slices), so slices are built again.
    texts = [f"q{n}" for n in range(40)] + ["q3", "q5"] + [f"r{n}" for n in range(10)]
    await seed(services, [stored(text, metadata={**TAG, "user": f"u{n % 7}"}) for n, text in enumerate(texts)])
    request = DatasetParams.model_validate(
        {"kind": "distillation", "filter": {"metadata": TAG}, "validation_fraction": 0.3, "seed": 5}
    )
    one = jobs_with(services, block_bytes=400)
    whole = await one.submit(request)
    await drain(services, one)

    sliced = jobs_with(services, block_bytes=400, slice_completions=9)
    fanned = await sliced.submit(request)
    await sliced.handle(await receive_one(services), delivery_count=1)  # the plan: 6 slice messages queued
    planned = await read_job(services, fanned.id)
    assert planned.plan is not None and planned.plan.done and len(planned.plan.bounds) == 5
    await drain(services, sliced)

    done, reference = await read_job(services, fanned.id), await read_job(services, whole.id)
    assert await files_of(services, fanned.id) == await files_of(services, whole.id)
    assert done.files == reference.files
    assert done.counts == reference.counts and done.counts.skipped == {"duplicate": 2}
    manifests = [json.loads(await download(services, job_id, "manifest.json")) for job_id in (fanned.id, whole.id)]
    assert manifests[0]["source"] == manifests[1]["source"]
    assert not [
        name async for name in services.datasets_container.list_blob_names(name_starts_with=f"{fanned.id}/work/")
    ]


@pytest.mark.parametrize("dedup", ["near", "off"])
async def test_prompt_dedup_and_leakage_reach_across_slices(services: Services, dedup: str) -> None:
    """A prompt a later slice repeats (with another answer: not a duplicate example) is dropped as a
    one-slice build drops it: as a duplicate prompt (`near`), or as leakage when it lands in the other split."""
    texts = [f"topic{n} alpha{n} beta{n} gamma{n} delta{n}" for n in range(30)]  # no two alike
    texts += [texts[n] for n in (2, 4, 7, 11, 12, 15, 18)]  # later slices ask earlier prompts again
    completions = [
        stored(text, metadata={**TAG, "user": f"u{n}"}, output={"role": "assistant", "content": f"answer {n}"})
        for n, text in enumerate(texts)
    ]
    await seed(services, completions)
    request = DatasetParams.model_validate(
        {
            "kind": "distillation",
            "filter": {"metadata": TAG},
            "validation_fraction": 0.4,
            "seed": 3,
            "group_by": "user",  # splits by user, not by the run's fresh ids: 3 repeats land in the other split
            "dedup": {"mode": dedup},
        }
    )
    one = jobs_with(services)
    whole = await one.submit(request)
    await drain(services, one)
    reference = await read_job(services, whole.id)
    dropped = reference.counts.skipped
    assert dropped.get("duplicate_prompt" if dedup == "near" else "eval_leakage", 0) > 0, dropped

    sliced = jobs_with(services, slice_completions=8)
    fanned = await sliced.submit(request)
    await drain(services, sliced)
    assert await files_of(services, fanned.id) == await files_of(services, whole.id)
    assert (await read_job(services, fanned.id)).counts == reference.counts


LIMITS = {"block_bytes": 300, "slice_completions": 10, "read_concurrency": 2}


class HeldAfterBlocks(CountingTransport):
    """Holds every request after the first `blocks` staged blocks (`holding` is set once one waits)."""

    def __init__(self, blocks: int) -> None:
        super().__init__()
        self.blocks = blocks
        self.holding = asyncio.Event()

    async def send(self, request: Any, **kwargs: Any) -> Any:
        if self.blocks == 0:
            self.released.clear()
            self.holding.set()
        elif request.method == "PUT" and "comp=block" in request.url:
            self.blocks -= 1
        return await super().send(request, **kwargs)


async def test_killed_slice_is_redone_without_duplicates(services: Services) -> None:
    ids = await seed(services, [stored(f"q{n}", metadata=TAG) for n in range(30)])
    request = DatasetParams.model_validate({"kind": "evaluation", "filter": {"metadata": TAG}})
    sliced = jobs_with(services, **LIMITS)
    job = await sliced.submit(request)
    await sliced.handle(await receive_one(services), delivery_count=1)
    slices = [await receive_one(services) for _ in range(3)]
    assert [DatasetJobMessage.model_validate_json(body).slice for body in slices] == [0, 1, 2]

    # Kill slice 1's delivery once it has staged 2 blocks (its next dataset request is held, so it
    # cannot finish first); the others run meanwhile.
    settings = services.settings
    assert settings.storage_connection_string is not None
    held = HeldAfterBlocks(2)
    async with ContainerClient.from_connection_string(
        settings.storage_connection_string.get_secret_value(), settings.datasets_container, transport=held
    ) as container:
        dying = jobs_with(services, records=DatasetRecords(container=container), **LIMITS)
        killed = asyncio.create_task(dying.handle(slices[1], delivery_count=1))
        async with asyncio.timeout(30):
            await held.holding.wait()
        killed.cancel()
        with pytest.raises(asyncio.CancelledError):
            await killed
        held.released.set()
    assert await staged_blocks(sliced.records.blob(job.id, "eval.jsonl")) >= 2
    for body in (slices[0], slices[2]):
        await sliced.handle(body, delivery_count=1)
    assert (await read_job(services, job.id)).status is DatasetStatus.RUNNING
    await sliced.handle(slices[1], delivery_count=2)  # the redelivery finishes the job
    await sliced.handle(slices[1], delivery_count=3)  # a late duplicate changes nothing

    done = await read_job(services, job.id)
    assert done.status is DatasetStatus.SUCCEEDED
    assert done.runs == 1 + 3 + 1  # the plan, three slices and the redone one
    data = await download(services, job.id, "eval.jsonl")
    assert [json.loads(line)["item"]["completion_id"] for line in data.splitlines()] == ids
    assert done.counts.selected == done.counts.written == 30
    one = jobs_with(services)
    whole = await one.submit(request)
    await drain(services, one)
    assert data == await download(services, whole.id, "eval.jsonl")


async def test_a_planning_delivery_that_dies_after_saving_a_bound_adds_no_slice_when_redone(
    services: Services,
) -> None:
    await seed(services, [stored(f"q{n}", metadata=TAG) for n in range(25)])
    request = DatasetParams.model_validate({"kind": "evaluation", "filter": {"metadata": TAG}})
    sliced = jobs_with(services, slice_completions=10)
    job = await sliced.submit(request)
    planning = await receive_one(services)
    # The same builder, but its slice messages can't be sent: the delivery dies right after saving bound 0.
    dying = DatasetJobs(
        records=services.dataset_jobs.records,
        store=services.store,
        membership=services.dataset_jobs.membership,
        job_queue=services.job_queue,
        queue_name="Not_A_Queue",  # an invalid queue name: every send fails
        limits=BuildLimits(slice_completions=10),
    )
    with pytest.raises(StorageUnavailable):
        await dying.handle(planning, delivery_count=1)
    died = await read_job(services, job.id)
    assert died.plan is not None and died.plan.bounds and not died.plan.done

    await sliced.handle(planning, delivery_count=2)
    planned = await read_job(services, job.id)
    assert planned.plan is not None and planned.plan.done and len(planned.plan.bounds) == 2
    await drain(services, sliced)
    done = await read_job(services, job.id)
    assert done.status is DatasetStatus.SUCCEEDED
    assert done.counts.selected == done.counts.written == 25


async def test_a_rebuild_makes_the_old_generations_slice_messages_stale(services: Services) -> None:
    await seed(services, [stored(f"q{n}", metadata=TAG) for n in range(12)])
    request = DatasetParams.model_validate({"kind": "evaluation", "filter": {"metadata": TAG}})
    sliced = jobs_with(services, slice_completions=5)
    job = await sliced.submit(request)
    await sliced.handle(await receive_one(services), delivery_count=1)
    stale = [await receive_one(services) for _ in range(3)]
    assert await sliced.rebuild(job.id)
    for body in stale:
        await sliced.handle(body, delivery_count=1)
    assert (await read_job(services, job.id)).status is DatasetStatus.QUEUED
    await drain(services, sliced)
    done = await read_job(services, job.id)
    assert done.status is DatasetStatus.SUCCEEDED and done.generation == 1
    assert done.counts.written == 12


@pytest.mark.parametrize(("sampled", "others"), [(9, 150), (3, 60), (0, 80)])
async def test_the_plan_reads_one_shard_and_its_slices_hold_every_id_once(
    services: Services, sampled: int, others: int
) -> None:
    """Slices of 64 with at least 4 plan rows each: the plan walks one shard of the 16 and ends a slice
    every 4 of its rows. Every id lands in one slice, the ones after the last shard-0 id included, and
    a selection with too few shard-0 rows to fill a slice is built in one (however large it is)."""
    completions = selection(sampled=sampled, others=others)
    ids = await seed(services, completions)
    in_shard = [completion_id for completion_id in ids if shard_of(completion_id) == 0]
    assert len(in_shard) == sampled and shard_of(ids[-1]) != 0  # a tail after the last sampled id
    rows = RowsRead()
    async with index_table(services, raw_response_hook=rows) as table:
        counted_store = CompletionStore(container=services.completions_container, index=CompletionIndex(table))
        sliced = jobs_with(services, store=counted_store, slice_completions=64, plan_rows_per_slice=4)
        request = DatasetParams.model_validate({"kind": "evaluation", "filter": {"metadata": TAG}})
        job = await sliced.submit(request)
        await sliced.handle(await receive_one(services), delivery_count=1)
        bounds = in_shard[3:-1:4]  # a slice ends after each 4th sampled row
        # The plan reads the sampled rows only; without a bound, the same delivery builds, reading every row once.
        assert rows.read == (sampled if bounds else sampled + len(ids))
        planned = await read_job(services, job.id)
        assert planned.plan is not None and planned.plan.bounds == bounds and planned.plan.counted == sampled
        await drain(services, sliced)

    done = await read_job(services, job.id)
    assert done.status is DatasetStatus.SUCCEEDED
    assert done.runs == 1 + (len(bounds) + 1 if bounds else 0)
    data = await download(services, job.id, "eval.jsonl")
    assert [json.loads(line)["item"]["completion_id"] for line in data.splitlines()] == ids
    assert done.counts.selected == done.counts.written == len(ids)


async def test_a_build_records_its_members_in_one_transaction_per_partition(services: Services) -> None:
    """Members are recorded in pages of 100, 200, 400, ... up to 1,600 ids, one transaction per membership
    partition each, not 16 small transactions per 100 ids (a transaction costs more than its rows)."""
    ids = await seed(services, [stored(f"q{number}", metadata=TAG) for number in range(700)])
    transport = CountingTransport()
    async with index_table(services, transport=transport) as table:
        jobs = jobs_with(services, membership=DatasetMembership(table))
        job = await jobs.submit(DatasetParams.model_validate({"kind": "evaluation", "filter": {"metadata": TAG}}))
        await drain(services, jobs)
        transactions = [path for method, path in transport.sent if method == "POST" and path.endswith("$batch")]
    assert (await read_job(services, job.id)).counts.written == len(ids)
    pages = [ids[:100], ids[100:300], ids[300:]]
    assert len(transactions) == sum(len({shard_of(completion_id) for completion_id in page}) for page in pages)
    assert len(transactions) < 50  # pages of 100 would make ~16 transactions each: ~110
    assert await DatasetMembership(services.index_table).holders(ids) == {job.id}


def selection(*, sampled: int, others: int) -> list[StoredCompletion]:
    """`others` completions outside shard 0 with `sampled` in shard 0 among them, the last 3 outside."""
    chosen, in_shard, outside = [], 0, 0
    while in_shard < sampled or outside < others:
        completion = stored(f"q{len(chosen)}", metadata=TAG)
        if shard_of(completion.id) == 0:
            if in_shard < sampled:
                chosen.append(completion)
                in_shard += 1
        elif in_shard == sampled or outside < others - 3:
            chosen.append(completion)
            outside += 1
    return chosen


class RowsRead:
    """Counts the entities the index table's query answers carry (an azure-core response hook)."""

    def __init__(self) -> None:
        self.read = 0

    def __call__(self, response: PipelineResponse[Any, Any]) -> None:
        if response.http_request.method == "GET" and "$filter" in unquote(response.http_request.url):
            self.read += len(json.loads(response.http_response.text())["value"])


async def staged_blocks(blob: BlobClient) -> int:
    try:
        return len((await blob.get_block_list("uncommitted"))[1])
    except ResourceNotFoundError:  # nothing staged yet
        return 0


async def receive_one(services: Services) -> bytes:
    body = await receive(services)
    assert body is not None
    return body
