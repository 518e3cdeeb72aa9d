"""`python -m bench.dedup`: what dropping near-duplicate prompts costs a dataset build.

Seeds stored completions into Azurite (one in ten a light rewording of an earlier prompt), then
builds the same selection twice, each build in its own process so its peak RSS is its own:
- a plain distillation build (`dedup` off, no validation split: no prompt filter at all), and
- a build with `dedup: {"mode": "near"}` and a 10% validation split (exact and MinHash LSH
  near-duplicate drops, plus the train/validation leakage check).
It prints each build's time, completions/s, peak RSS and what it dropped, and the ratios.

`--filter-only` measures the filter alone, without storage, on the same prompts: one process runs
the build's per-example prompt step with the filter off, another with `near` and the leakage check
(the work the dedup build adds), each timed with its peak RSS. On a small box where seeding and
building 100k completions through Azurite takes most of an hour, this gives the 100k figure in a
minute or two.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import subprocess
import sys
import time
import uuid
from typing import Any

from local_host.azurite import start_azurite
from shared.datasets.builder import BuildLimits, DatasetJobs
from shared.datasets.dedup import DedupParams, PromptFilter
from shared.datasets.job import DatasetJob, DatasetJobMessage, DatasetParams, DatasetStatus, new_dataset_id
from shared.datasets.membership import DatasetMembership
from shared.datasets.records import DatasetRecords
from shared.platform.settings import Settings
from shared.services import Services
from shared.store import ids
from shared.store.completion_index import CompletionIndex, IndexEntry
from shared.store.stored_completion import StoredCompletion

IN_FLIGHT = 32
TAG = {"bench": "dedup"}
TOPICS = ["rotate the access keys", "enable soft delete", "move blobs to the archive tier", "set a lifecycle rule"]


def prompt(number: int) -> str:
    """Unique questions, except every tenth: a rewording of the question ten before it."""
    if number % 10 == 9:
        return f"Please tell me: {prompt(number - 9)}"
    topic = TOPICS[number % len(TOPICS)]
    return f"Question {number}: how do I {topic} of storage account acct{number} in region r{number % 31}?"


def completion(number: int, now_us: int) -> StoredCompletion:
    return StoredCompletion(
        id=ids.new_completion_id(now_us=now_us),
        created=now_us // 1_000_000,
        deployment="gpt-4o",
        model="gpt-4o-2024-08-06",
        metadata=TAG,
        request={
            "model": "gpt-4o",
            "messages": [
                {"role": "system", "content": "You are a support assistant for a cloud storage product."},
                {"role": "user", "content": prompt(number)},
            ],
        },
        response={
            "object": "chat.completion",
            "model": "gpt-4o-2024-08-06",
            "choices": [
                {
                    "index": 0,
                    "message": {
                        "role": "assistant",
                        "content": f"Answer {number}: open the portal, then follow the steps.",
                    },
                    "finish_reason": "stop",
                }
            ],
        },
    )


def services_for(connection_string: str, suffix: str) -> Services:
    return Services(
        Settings(  # type: ignore[call-arg]
            AzureWebJobsStorage=connection_string,
            COMPLETIONS_CONTAINER=f"bench{suffix}",
            COMPLETION_INDEX_TABLE=f"bench{suffix}",
            DATASETS_CONTAINER=f"datasets{suffix}",
        )
    )


async def seed(services: Services, count: int) -> None:
    """The blobs and rows `CompletionStore.put` writes, batched, so 100k take minutes on Azurite."""
    start_us = time.time_ns() // 1000 - 10_000_000_000
    entries: list[IndexEntry] = []
    slots = asyncio.Semaphore(64)

    async def upload(name: str, document: bytes) -> None:
        async with slots:
            await services.completions_container.upload_blob(name, document, overwrite=True)

    uploads = []
    for number in range(count):
        item = completion(number, start_us + number)
        document = item.model_dump_json().encode()
        uploads.append(upload(f"{item.id}.json", document))
        entries.append(
            IndexEntry(id=item.id, deployment=item.deployment, model=item.model, metadata=TAG, size_bytes=len(document))
        )
    await asyncio.gather(*uploads)
    await CompletionIndex(services.index_table).add_many(entries, in_flight=16)


async def build(connection_string: str, suffix: str, dedup: bool) -> dict[str, Any]:
    """One build in this process: its time, counts and this process's peak RSS."""
    services = services_for(connection_string, suffix)
    try:
        jobs = DatasetJobs(
            records=DatasetRecords(container=services.datasets_container),
            store=services.store,
            membership=DatasetMembership(services.index_table),
            job_queue=services.job_queue,
            queue_name="unused",
            limits=BuildLimits(chunk_seconds=1e9, chunk_completions=10**9, read_concurrency=IN_FLIGHT),
        )
        request = DatasetParams.model_validate(
            {"kind": "distillation", "filter": {"metadata": TAG}}
            | ({"dedup": {"mode": "near"}, "validation_fraction": 0.1} if dedup else {"validation_fraction": 0})
        )
        job = DatasetJob.queued(new_dataset_id(), request)
        await jobs.records.create(job)
        started = time.perf_counter()
        await jobs.run(DatasetJobMessage(version=1, job_id=job.id, request=request))
        seconds = time.perf_counter() - started
        done, _ = await jobs.records.read(job.id)
        assert done.status is DatasetStatus.SUCCEEDED, done.error
        peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return {
            "seconds": seconds,
            "selected": done.counts.selected,
            "written": done.counts.written,
            "skipped": done.counts.skipped,
            "peak_mb": peak_kb / 1024,
        }
    finally:
        await services.blob_service.close()
        await services.table_service.close()


def filter_alone(count: int, dedup: bool) -> dict[str, Any]:
    """The prompt step of `count` examples in this process (one in ten to the validation split)."""
    params = DedupParams(mode="near") if dedup else DedupParams()
    prompts = PromptFilter(params, check_leakage=dedup)
    dropped: dict[str, int] = {}
    started = time.perf_counter()
    for number in range(count):
        messages = completion(number, 0).request["messages"]
        reason = prompts.admit(messages, split=int(number % 10 == 0))
        if reason is not None:
            dropped[reason.value] = dropped.get(reason.value, 0) + 1
    seconds = time.perf_counter() - started
    saved = len(prompts.saved())
    peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"seconds": seconds, "skipped": dropped, "peak_mb": peak_kb / 1024, "state_mb": saved / 1e6}


def main_filter_only(count: int) -> None:
    runs = {}
    for kind in ("plain", "dedup"):
        command = [sys.executable, "-m", "bench.dedup", "--filter-child", kind, "--count", str(count)]
        output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
        runs[kind] = json.loads(output.strip().splitlines()[-1])
    plain, deduped = runs["plain"], runs["dedup"]
    print(f"prompt step alone, {count:,} examples, {os.cpu_count()} cores, no storage:")
    for label, run in (("filter off", plain), ("near + leakage", deduped)):
        print(
            f"{label:>15}: {run['seconds']:7.1f} s | {count / run['seconds']:8,.0f} examples/s"
            f" | peak RSS {run['peak_mb']:6.0f} MB | saved state {run['state_mb']:5.1f} MB | skipped {run['skipped']}"
        )
    print(
        f"dedup adds {deduped['seconds'] - plain['seconds']:.1f} s ({(deduped['seconds'] - plain['seconds']) / count * 1e6:.0f} µs"
        f" an example) and {deduped['peak_mb'] - plain['peak_mb']:.0f} MB peak RSS for {count:,} examples"
    )


def child(connection_string: str, suffix: str, dedup: bool) -> dict[str, Any]:
    command = [sys.executable, "-m", "bench.dedup", "--child", "dedup" if dedup else "plain", "--suffix", suffix]
    env = {**os.environ, "BENCH_AZURITE": connection_string}
    output = subprocess.run(command, env=env, check=True, capture_output=True, text=True).stdout
    return dict(json.loads(output.strip().splitlines()[-1]))


async def prepare(connection_string: str, suffix: str, count: int) -> None:
    services = services_for(connection_string, suffix)
    try:
        await services.ensure_storage()
        started = time.perf_counter()
        await seed(services, count)
        print(f"seeded {count:,} completions in {time.perf_counter() - started:,.0f} s", flush=True)
    finally:
        await services.blob_service.close()
        await services.table_service.close()


def main(count: int) -> None:
    azurite = start_azurite()
    suffix = uuid.uuid4().hex[:8]
    try:
        asyncio.run(prepare(azurite.connection_string, suffix, count))
        plain = child(azurite.connection_string, suffix, dedup=False)
        deduped = child(azurite.connection_string, suffix, dedup=True)
    finally:
        azurite.stop()
    for label, run in (("plain build", plain), ("dedup near + leakage", deduped)):
        print(
            f"{label:>21}: {run['seconds']:7.1f} s | {run['selected'] / run['seconds']:6,.0f} completions/s"
            f" | peak RSS {run['peak_mb']:6.0f} MB | written {run['written']:,} | skipped {run['skipped']}"
        )
    print(
        f"dedup build / plain build: time x{deduped['seconds'] / plain['seconds']:.2f},"
        f" peak RSS x{deduped['peak_mb'] / plain['peak_mb']:.2f}"
        f" (+{deduped['peak_mb'] - plain['peak_mb']:.0f} MB for {count:,} completions)"
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m bench.dedup", description=__doc__)
    parser.add_argument("--count", type=int, default=100_000, help="completions in the selection")
    parser.add_argument("--child", choices=["plain", "dedup"], help=argparse.SUPPRESS)
    parser.add_argument("--suffix", help=argparse.SUPPRESS)
    parser.add_argument("--filter-only", action="store_true", help="time the prompt filter alone, without storage")
    parser.add_argument("--filter-child", choices=["plain", "dedup"], help=argparse.SUPPRESS)
    arguments = parser.parse_args()
    if arguments.filter_child:
        print(json.dumps(filter_alone(arguments.count, arguments.filter_child == "dedup")))
    elif arguments.filter_only:
        main_filter_only(arguments.count)
    elif arguments.child:
        result = asyncio.run(build(os.environ["BENCH_AZURITE"], arguments.suffix, arguments.child == "dedup"))
        print(json.dumps(result))
    else:
        main(arguments.count)
