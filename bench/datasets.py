"""`python -m bench.datasets`: dataset builds beside a bare list-and-download, one slice and fanned out.

Seeds stored completions straight into Azurite, then, in the same run and on the same documents,
runs each of these in fresh worker processes (so each peak RSS is the worker's own; each freezes its
start-up objects, as function_app.py does):
- bare: walk the index for the selection and download every document (32 in flight, bytes dropped);
  before that, the same worker times a walk of the index alone and of the one shard a plan walks;
- one slice: the build with fan-out off (slices larger than the selection), one worker: the plan
  (one shard's keys), index walk, membership rows, 32 reads in flight, conversion, format check,
  token counts, dedupe, staged blocks, commit, sha256 of the committed files, manifest;
- fanned out: the same build in slices of `--slice` completions, `--workers` worker processes taking
  the messages from one queue (as Flex instances take them from Service Bus).
It prints the times and ratios side by side, the peak RSS and CPU time per worker, the per-slice
throughput, and from those (and Azure Storage's documented targets) the expected time for 1M
completions on Flex Consumption (see the README).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import resource
import subprocess
import sys
import time
import uuid
from collections.abc import Coroutine
from typing import Any

from azure.storage.queue.aio import QueueClient

from local_host.azurite import ROOT, start_azurite
from shared.datasets.builder import BuildLimits, plan_shards
from shared.datasets.job import DatasetJob, DatasetJobMessage, DatasetParams, DatasetStatus, new_dataset_id
from shared.platform.job_queue import read_local_message
from shared.platform.runtime import freeze_start_up_objects
from shared.platform.settings import Settings
from shared.services import Services
from shared.store import ids
from shared.store.completion_filter import CompletionFilter
from shared.store.completion_index import SHARDS, CompletionIndex, IndexEntry
from shared.store.stored_completion import StoredCompletion

IN_FLIGHT = 32
SYSTEM = "You are a support assistant for a cloud storage product. Answer briefly and cite the doc page. " * 3
TAG = {"bench": "1"}
FLEX_MAX_INSTANCES = 40
"""`maximumInstanceCount` in infra/main.bicep (Flex Consumption allows up to 1,000)."""
SERVICE_BUS_CALLS_PER_INSTANCE = 4
"""host.json `extensions.serviceBus.maxConcurrentCalls`: target-based scaling's executions per instance."""
PROJECTED = 1_000_000
TABLE_PARTITION_ENTITIES_PER_S = 2_000
"""Azure Table's target per partition (README, Performance): it bounds the plan's one-shard walk, and
the membership rows, whose partitions are a ~19-hour capture bucket's 16 index shards (1M captured in
a day: 16 partitions)."""
SLICE_COMPLETIONS = Settings.model_fields["dataset_slice_completions"].default
PLAN_SHARDS = plan_shards(BuildLimits(slice_completions=SLICE_COMPLETIONS))
"""Index shards a plan with the default slice size walks (1 of 16)."""


def completion(number: int, now_us: int) -> StoredCompletion:
    """A ~1.5 KB stored completion, unique text so no line is a duplicate and no prompt a near-duplicate
    of another (builds check train/validation leakage: near-duplicate prompts would measure that)."""
    question = f"Question {number} from team{number} project{number}: how do I rotate the keys of acct{number}?"
    answer = f"Answer {number}: open the account, choose Access keys, rotate key1, update clients, then key2. " * 4
    return StoredCompletion(
        id=ids.new_completion_id(now_us=now_us),
        created=now_us // 1_000_000,
        deployment="gpt-4o",
        model="gpt-4o-2024-08-06",
        metadata=TAG,
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


async def seed(services: Services, size: int) -> None:
    """Write exactly the blobs and rows `CompletionStore.put` writes, only batched (100-row
    transactions per partition), so 100k completions take minutes rather than an hour on Azurite."""
    start_us = time.time_ns() // 1000 - 10_000_000_000
    started = time.perf_counter()
    entries: list[IndexEntry] = []
    uploads: list[tuple[str, bytes]] = []
    for number in range(size):
        item = completion(number, start_us + number)
        document = item.model_dump_json().encode()
        uploads.append((f"{item.id}.json", document))
        entries.append(
            IndexEntry(id=item.id, deployment=item.deployment, model=item.model, metadata=TAG, size_bytes=len(document))
        )
    await in_flight([services.completions_container.upload_blob(n, d, overwrite=True) for n, d in uploads], 64)
    await CompletionIndex(services.index_table).add_many(entries, in_flight=16)
    print(f"seeded {size:,} completions in {time.perf_counter() - started:,.0f} s", flush=True)


async def in_flight(operations: list[Coroutine[Any, Any, Any]], limit: int) -> None:
    pending = iter(operations)

    async def worker() -> None:
        for operation in pending:
            await operation

    await asyncio.gather(*(worker() for _ in range(limit)))


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def cpu_seconds() -> float:
    """The worker process's CPU time so far (user + system): on a shared box, what a run really costs."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def bare_worker() -> dict[str, Any]:
    """Walk the index alone, and the sample a plan walks (3 times: it is short), then walk the index
    again feeding 32 downloads: the floor a build is held to."""
    services = Services(Settings())  # type: ignore[call-arg]
    index, container = services.store.index, services.completions_container
    started = time.perf_counter()
    walked = sum([1 async for _ in index.walk(CompletionFilter(metadata=TAG), page_size=1000)])
    walk_seconds = time.perf_counter() - started
    samples = []
    for _ in range(3):
        started = time.perf_counter()
        sampled = sum(
            [1 async for _ in index.sample_ids(CompletionFilter(metadata=TAG), shards=PLAN_SHARDS, after=None)]
        )
        samples.append(time.perf_counter() - started)
    names: asyncio.Queue[str | None] = asyncio.Queue(maxsize=1000)

    async def lister() -> None:
        async for entry in index.walk(CompletionFilter(metadata=TAG), page_size=1000):
            await names.put(f"{entry.id}.json")
        for _ in range(IN_FLIGHT):
            await names.put(None)

    async def reader() -> None:
        while (name := await names.get()) is not None:
            await (await container.download_blob(name)).readall()

    started = time.perf_counter()
    await asyncio.gather(lister(), *(reader() for _ in range(IN_FLIGHT)))
    seconds = time.perf_counter() - started
    await services.close()
    return {
        "seconds": seconds,
        "walk_seconds": walk_seconds,
        "count": walked,
        "sampled": sampled,
        "sample_seconds": sorted(samples)[1],
        "rss_mb": peak_rss_mb(),
        "cpu_seconds": cpu_seconds(),
    }


async def build_worker(job_id: str) -> dict[str, Any]:
    """Take dataset messages from the queue one at a time until the job is finished."""
    services = Services(Settings())  # type: ignore[call-arg]
    jobs, settings = services.dataset_jobs, services.settings
    connection = os.environ["AzureWebJobsStorage"]
    deliveries = []
    async with QueueClient.from_connection_string(connection, settings.dataset_jobs_queue) as queue:
        print("ready", flush=True)
        while True:
            received = [m async for m in queue.receive_messages(max_messages=1, visibility_timeout=900)]
            if not received:
                job, _ = await jobs.records.read(job_id)
                if job.finished:
                    break
                await asyncio.sleep(0.02)
                continue
            body = read_local_message(received[0].content)[0].encode()
            started, wall_start = time.perf_counter(), time.time()
            await jobs.handle(body, delivery_count=received[0].dequeue_count)
            seconds, wall_end = time.perf_counter() - started, time.time()
            await queue.delete_message(received[0])
            slice_number = DatasetJobMessage.model_validate_json(body).slice
            deliveries.append({"slice": slice_number, "seconds": seconds, "start": wall_start, "end": wall_end})
    await services.close()
    return {"deliveries": deliveries, "rss_mb": peak_rss_mb(), "cpu_seconds": cpu_seconds()}


def worker_env(names: dict[str, str], connection: str, slice_completions: int) -> dict[str, str]:
    return {
        **os.environ,
        **names,
        "AzureWebJobsStorage": connection,
        "DATASET_SLICE_COMPLETIONS": str(slice_completions),
    }


def run_workers(env: dict[str, str], args: list[str], count: int, on_ready: Any = None) -> list[dict[str, Any]]:
    """Start `count` workers, call `on_ready` once all are up, and collect their JSON reports."""
    command = [sys.executable, "-m", "bench.datasets", *args]
    workers = [subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, text=True) for _ in range(count)]
    for worker in workers:
        assert worker.stdout is not None
        if on_ready is not None:
            assert worker.stdout.readline().strip() == "ready"
    if on_ready is not None:
        on_ready()
    reports = []
    for worker in workers:
        out, _ = worker.communicate()
        assert worker.returncode == 0, out
        reports.append(json.loads(out.strip().splitlines()[-1]))
    return reports


async def timed_build(services: Services, env: dict[str, str], workers: int) -> dict[str, Any]:
    """One build on fresh workers: `seconds` from its first delivery's start to its last one's end
    (like the bare run, the work only), `elapsed` from sending the message to the workers' exit."""
    request = DatasetParams(kind="distillation", filter=CompletionFilter(metadata=TAG), validation_fraction=0.1)  # type: ignore[arg-type]
    job_id = new_dataset_id()
    message = DatasetJobMessage(version=1, job_id=job_id, request=request)
    await services.dataset_jobs.records.create(DatasetJob.queued(job_id, request))
    started: list[float] = []

    def submit() -> None:
        started.append(time.perf_counter())
        asyncio.run(send(services.settings, message))

    reports = await asyncio.to_thread(run_workers, env, ["--worker", "build", "--job", job_id], workers, submit)
    elapsed = time.perf_counter() - started[0]
    job, _ = await services.dataset_jobs.records.read(job_id)
    assert job.status is DatasetStatus.SUCCEEDED, job.error
    deliveries = [delivery for report in reports for delivery in report["deliveries"]]
    seconds = max(d["end"] for d in deliveries) - min(d["start"] for d in deliveries)
    return {"seconds": seconds, "elapsed": elapsed, "job": job, "reports": reports}


async def send(settings: Settings, message: DatasetJobMessage) -> None:
    services = Services(settings)
    await services.job_queue.send(settings.dataset_jobs_queue, message.model_dump_json(), message_id=message.message_id)
    await services.job_queue.close()


async def hash_read_mb_per_s(services: Services, job: DatasetJob) -> float:
    """How fast the finisher reads a committed file back to hash it (one pass)."""
    started = time.perf_counter()
    total = 0
    for file in job.files:
        _, chunks = await services.dataset_jobs.records.open_file(job.id, file.name)
        async for chunk in chunks:
            total += len(chunk)
    return total / 1e6 / (time.perf_counter() - started)


def median_by(runs: list[Any], key: Any) -> Any:
    return sorted(runs, key=key)[len(runs) // 2]


async def main(size: int, slice_size: int, workers: int, rounds: int) -> None:
    azurite = start_azurite()
    suffix = uuid.uuid4().hex[:8]
    names = {
        "COMPLETIONS_CONTAINER": f"bench{suffix}",
        "COMPLETION_INDEX_TABLE": f"bench{suffix}",
        "DATASETS_CONTAINER": f"datasets{suffix}",
        "DATASET_JOBS_QUEUE": f"datasets{suffix}",
    }
    services = Services(Settings(AzureWebJobsStorage=azurite.connection_string, **names))  # type: ignore[call-arg]
    try:
        await services.ensure_storage()
        async with QueueClient.from_connection_string(azurite.connection_string, names["DATASET_JOBS_QUEUE"]) as queue:
            await queue.create_queue()
        await seed(services, size)
        one_env = worker_env(names, azurite.connection_string, slice_completions=10**9)  # the plan never cuts
        fan_env = worker_env(names, azurite.connection_string, slice_completions=slice_size)
        bares, ones, fans = [], [], []
        for _ in range(rounds):  # interleaved, so a busy moment on the box hits every kind alike
            [bare] = await asyncio.to_thread(run_workers, one_env, ["--worker", "bare"], 1)
            bares.append(bare)
            ones.append(await timed_build(services, one_env, 1))
            fans.append(await timed_build(services, fan_env, workers))
            assert [f.sha256 for f in fans[-1]["job"].files] == [f.sha256 for f in ones[-1]["job"].files], (
                "bytes differ"
            )
        bare = median_by(bares, lambda report: report["seconds"])
        one, fan = median_by(ones, lambda build: build["seconds"]), median_by(fans, lambda build: build["seconds"])
        one_s, one_job, [one_report] = one["seconds"], one["job"], one["reports"]
        fan_s, fan_reports = fan["seconds"], fan["reports"]
        hash_rate = await hash_read_mb_per_s(services, one_job)
    finally:
        await services.close()
        azurite.stop()

    slices = [d for report in fan_reports for d in report["deliveries"] if d["slice"] is not None]
    per_slice = size / sum(d["seconds"] for d in slices) if slices else float("nan")  # per second of slice delivery
    bare_s = bare["seconds"]
    print(
        f"\n{size:,} completions, {os.cpu_count()} cores, Azurite, median of {rounds} interleaved rounds;"
        " times in seconds (ratio = bare time / build time)"
    )
    print(f"  bare list-and-download  {bare_s:8.1f}  {size / bare_s:7,.0f}/s  peak RSS {bare['rss_mb']:5.0f} MB")
    print(
        f"  one-slice build         {one_s:8.1f}  {size / one_s:7,.0f}/s  ratio {bare_s / one_s:5.2f}"
        f"  peak RSS {one_report['rss_mb']:5.0f} MB"
    )
    print(
        f"  fanned out: {len({d['slice'] for d in slices})} slices on {workers} workers {fan_s:5.1f}  {size / fan_s:7,.0f}/s"
        f"  ratio {bare_s / fan_s:5.2f}  vs one slice {one_s / fan_s:4.2f}x"
        f"  peak RSS {max(r['rss_mb'] for r in fan_reports):5.0f} MB per worker"
    )
    print("  same bytes: the fanned-out files' sha256 equal the one-slice build's")
    print(
        "  build times run from the first delivery's start to the last one's end; from sending the message to"
        f" the workers' exit: one slice {one['elapsed']:.1f} s (ratio {bare_s / one['elapsed']:.2f}),"
        f" fanned out {fan['elapsed']:.1f} s (ratio {bare_s / fan['elapsed']:.2f})"
    )
    print(
        "  one-slice ratio per round: "
        + ", ".join(f"{b['seconds'] / o['seconds']:.2f}" for b, o in zip(bares, ones, strict=True))
    )

    # Expected time for 1M on Flex Consumption, from what was measured here.
    walk_rate = bare["count"] / bare["walk_seconds"]
    plan_rate = bare["sampled"] / bare["sample_seconds"]
    one_rate = size / one_s
    out_bytes = sum(f.bytes for f in one_job.files) / size
    slice_count = math.ceil(PROJECTED / SLICE_COMPLETIONS)
    instances = min(FLEX_MAX_INSTANCES, math.ceil(slice_count / SERVICE_BUS_CALLS_PER_INSTANCE))
    plan_rows = PROJECTED * PLAN_SHARDS // SHARDS
    plan_s = max(plan_rows / plan_rate, plan_rows / PLAN_SHARDS / TABLE_PARTITION_ENTITIES_PER_S)
    build_s = PROJECTED / (instances * one_rate)
    membership_s = PROJECTED / SHARDS / TABLE_PARTITION_ENTITIES_PER_S  # every id's row: 16 partitions at worst
    slices_s = max(build_s, membership_s)
    hash_s = PROJECTED * out_bytes / 1e6 / hash_rate  # a block blob's target is the account's egress: no cap
    print(
        f"\nCPU seconds per 1,000 completions: bare {bare['cpu_seconds'] / size * 1000:.2f},"
        f" one-slice build {one_report['cpu_seconds'] / size * 1000:.2f}"
        f" (fanned out, all workers: {sum(r['cpu_seconds'] for r in fan_reports) / size * 1000:.2f})"
    )
    print(
        f"per-slice throughput {per_slice:,.0f}/s with {workers} workers sharing {os.cpu_count()} cores;"
        f" one worker alone {one_rate:,.0f}/s; index walk {walk_rate:,.0f} rows/s;"
        f" plan walk ({PLAN_SHARDS} shard of {SHARDS}, keys only) {plan_rate:,.0f} rows/s; hash read {hash_rate:,.0f} MB/s"
    )
    print(
        f"1M on Flex Consumption: {slice_count} slices -> {instances} instances"
        f" (ceil(slices / {SERVICE_BUS_CALLS_PER_INSTANCE} calls per instance), at most {FLEX_MAX_INSTANCES})"
        f" at {one_rate:,.0f}/s each: plan {plan_rows:,} rows {plan_s:.0f} s + slices {slices_s:.0f} s"
        f" + hash {hash_s:.0f} s = {(plan_s + slices_s + hash_s) / 60:.1f} min"
        " (upper bound: slices start while the plan runs)"
    )
    print(
        f"  plan: the slower of the measured walk and {TABLE_PARTITION_ENTITIES_PER_S:,} entities/s per partition;"
        f" slices: the slower of compute ({build_s:.0f} s) and the membership rows at"
        f" {TABLE_PARTITION_ENTITIES_PER_S:,}/s in each of {SHARDS} partitions ({membership_s:.0f} s, 1M captured"
        " within ~19 h)"
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m bench.datasets", description=__doc__)
    parser.add_argument("--size", type=int, default=20_000, help="completions seeded and built")
    parser.add_argument("--slice", type=int, default=2_500, help="completions per slice in the fanned-out build")
    parser.add_argument("--workers", type=int, default=3, help="worker processes sharing the queue")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds; medians are printed")
    parser.add_argument("--worker", choices=["bare", "build"], help=argparse.SUPPRESS)
    parser.add_argument("--job", help=argparse.SUPPRESS)
    arguments = parser.parse_args()
    if arguments.worker is not None:
        freeze_start_up_objects()  # both workers, as function_app.py does once its imports are done
    if arguments.worker == "bare":
        print(json.dumps(asyncio.run(bare_worker())))
    elif arguments.worker == "build":
        print(json.dumps(asyncio.run(build_worker(arguments.job))))
    else:
        asyncio.run(main(arguments.size, arguments.slice, arguments.workers, arguments.rounds))
