"""`python -m bench.datasets`: dataset build throughput and peak memory, beside a bare download.

Seeds stored completions straight into Azurite (documents and index rows, many writes in flight),
then for each size measures, in the same run and on the same documents:
- a bare concurrent download of every document (32 in flight, bytes read and dropped), and
- a distillation build through `DatasetJobs.run` (index walk, 32 reads in flight, conversion, format
  check, token counts, dedupe, staged blocks, commit, sha256 of the committed files, manifest).
It prints completions/s for both and their ratio, then the build's peak traced Python memory
(tracemalloc, in a second build so tracing does not slow the timed one) and how 100k compares to 10k.
"""

from __future__ import annotations

import argparse
import asyncio
import time
import tracemalloc
import uuid
from collections.abc import Coroutine
from typing import Any

from local_host.azurite import start_azurite
from shared.datasets.builder import BuildLimits, DatasetJobs
from shared.datasets.job import DatasetJob, DatasetJobMessage, DatasetParams, DatasetStatus, new_dataset_id
from shared.datasets.membership import DatasetMembership
from shared.datasets.records import DatasetRecords
from shared.platform.settings import Settings
from shared.services import Services
from shared.store import ids
from shared.store.completion_filter import CompletionFilter
from shared.store.completion_index import CompletionIndex, IndexEntry
from shared.store.stored_completion import StoredCompletion

IN_FLIGHT = 32
SYSTEM = "You are a support assistant for a cloud storage product. Answer briefly and cite the doc page. " * 3


def completion(number: int, now_us: int, metadata: dict[str, str]) -> StoredCompletion:
    """A ~1.5 KB stored completion, unique text so no line is a duplicate."""
    question = f"Question {number}: how do I rotate the access keys of storage account acct{number % 997}?"
    answer = f"Answer {number}: open the account, choose Access keys, rotate key1, update clients, then key2. " * 4
    return StoredCompletion(
        id=ids.new_completion_id(now_us=now_us),
        created=now_us // 1_000_000,
        deployment="gpt-4o",
        model="gpt-4o-2024-08-06",
        metadata=metadata,
        request={
            "model": "gpt-4o",
            "messages": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": question}],
        },
        response={
            "object": "chat.completion",
            "model": "gpt-4o-2024-08-06",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": answer}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 90, "completion_tokens": 80, "total_tokens": 170},
        },
    )


async def seed(services: Services, sizes: list[int]) -> list[str]:
    """Bulk-load the largest size; the first `size` completions carry `upto<size>: 1`.

    Writes exactly the blobs and rows `CompletionStore.put` writes, only batched (100-row transactions
    per partition), so 100k completions take minutes rather than an hour on Azurite.
    """
    start_us = time.time_ns() // 1000 - 10_000_000_000
    total = max(sizes)
    started = time.perf_counter()
    made: list[str] = []
    entries: list[IndexEntry] = []
    uploads: list[tuple[str, bytes]] = []
    for number in range(total):
        metadata = {f"upto{size}": "1" for size in sizes if number < size}
        item = completion(number, start_us + number, metadata)
        made.append(item.id)
        document = item.model_dump_json().encode()
        uploads.append((f"{item.id}.json", document))
        entries.append(
            IndexEntry(
                id=item.id, deployment=item.deployment, model=item.model, metadata=metadata, size_bytes=len(document)
            )
        )
    await in_flight([services.completions_container.upload_blob(n, d, overwrite=True) for n, d in uploads], 64)
    await CompletionIndex(services.index_table).add_many(entries, in_flight=16)
    print(f"seeded {total:,} completions in {time.perf_counter() - started:,.0f} s", flush=True)
    return made


async def in_flight(operations: list[Coroutine[Any, Any, Any]], limit: int) -> None:
    pending = iter(operations)

    async def worker() -> None:
        for operation in pending:
            await operation

    await asyncio.gather(*(worker() for _ in range(limit)))


async def bare_download(services: Services, completion_ids: list[str]) -> float:
    container = services.completions_container
    names = iter(completion_ids)

    async def reader() -> None:
        for completion_id in names:
            await (await container.download_blob(f"{completion_id}.json")).readall()

    started = time.perf_counter()
    await asyncio.gather(*(reader() for _ in range(IN_FLIGHT)))
    return time.perf_counter() - started


async def build(jobs: DatasetJobs, size: int) -> tuple[float, DatasetJob]:
    request = DatasetParams(
        kind="distillation",  # type: ignore[arg-type]
        filter=CompletionFilter(metadata={f"upto{size}": "1"}),
        validation_fraction=0.1,
    )
    job = DatasetJob.queued(new_dataset_id(), request)
    await jobs.records.create(job)
    started = time.perf_counter()
    await jobs.run(DatasetJobMessage(version=1, job_id=job.id, request=request))
    elapsed = time.perf_counter() - started
    done, _ = await jobs.records.read(job.id)
    assert done.status is DatasetStatus.SUCCEEDED and done.counts.written == size, done.error
    return elapsed, done


async def main(sizes: list[int]) -> None:
    azurite = start_azurite()
    suffix = uuid.uuid4().hex[:8]
    services = Services(
        Settings(  # type: ignore[call-arg]
            AzureWebJobsStorage=azurite.connection_string,
            COMPLETIONS_CONTAINER=f"bench{suffix}",
            COMPLETION_INDEX_TABLE=f"bench{suffix}",
            DATASETS_CONTAINER=f"datasets{suffix}",
        )
    )
    try:
        await services.ensure_storage()
        completion_ids = await seed(services, sizes)
        jobs = DatasetJobs(
            records=DatasetRecords(container=services.datasets_container),
            store=services.store,
            membership=DatasetMembership(services.index_table),
            job_queue=services.job_queue,
            queue_name="unused",
            limits=BuildLimits(chunk_seconds=1e9, chunk_completions=10**9, read_concurrency=IN_FLIGHT),
        )
        rows = []
        for size in sizes:
            download_s = await bare_download(services, completion_ids[:size])
            build_s, job = await build(jobs, size)
            tracemalloc.start()
            await build(jobs, size)
            _, peak = tracemalloc.get_traced_memory()
            tracemalloc.stop()
            megabytes = sum(file.bytes for file in job.files) / 1e6
            rows.append((size, size / download_s, size / build_s, peak, megabytes))
            print(
                f"{size:>8,} completions: bare download {size / download_s:7,.0f}/s | build {size / build_s:7,.0f}/s"
                f" | ratio {download_s / build_s:4.0%} | build peak memory {peak / 1e6:6.1f} MB | output {megabytes:,.1f} MB",
                flush=True,
            )
        small, large = rows[0], rows[-1]
        growth = large[3] / small[3] - 1
        print(
            f"peak memory at {large[0]:,} is {growth:+.0%} vs {small[0]:,} "
            f"({'within' if growth <= 0.10 else 'NOT within'} 10%)"
        )
    finally:
        await services.blob_service.close()
        await services.table_service.close()
        azurite.stop()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m bench.datasets", description=__doc__)
    parser.add_argument("--sizes", default="10000,100000", help="comma-separated completion counts")
    arguments = parser.parse_args()
    asyncio.run(main(sorted(int(size) for size in arguments.sizes.split(","))))
