"""`python -m bench.capture`: what capture costs callers, and what a filtered list costs.

Part 1, **store=true at the cost of one write** (issue 17's goals): the same chat completion through
the local host with store=false and store=true, and one blob write of the same stored document
straight to the same Azurite (the floor), interleaved round by round so machine noise hits all
three alike (after each store=true phase the bench waits until the index has caught up, counting
the indexer's work to that phase, so store=false and the floor run on a quiet index); then both at
16 in flight, long enough that the indexer works in step, and the index lag (time from the answer
until lists show the completion, p50/p99). It prints store=true's p50 overhead as a multiple of the floor (goal
<= 1.5x), its throughput as a share of store=false's (goal >= 50 %), and the CPU each process spent
per request (read from /proc: what a loaded shared box distorts least). Two hosts share one store,
as Flex Consumption runs them: one serves HTTP and delivers no queue messages, the other runs the
`index_completions` trigger (Flex scales a Service Bus function on instances of its own, apart from
the HTTP group); both share two cores and one Azurite process here, which Azure does not.
`--one-host`: one host does both; `--no-index`: nothing indexes (the request path alone).

Part 2 sends the same chat completion to the zero-latency upstream directly, through the proxy with
store=false and store=true, both again on a host with telemetry on (`TELEMETRY_EXPORTER=console`, to
its log file), store=false through an alias of the same deployment, and a Responses call
(`/openai/v1/responses`) direct, with store=false and with store=true (its default). It prints p50/p99
latency at one request in flight, requests/s at 16 in flight, and the p50 overhead; then what one
alias lookup costs in process, hit and miss (every proxied call pays one: the name is looked up
whether or not it is an alias).

Part 3 grows the store to each size and times a metadata-filtered list (limit 20) through
`CompletionStore.list`, counting the index rows storage returned, beside a bare one-page partition
query and the same 20 document reads on the same Azurite (the emulator scans its tables
internally, so its own cost grows with size; the design's cost is the difference).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections import defaultdict
from pathlib import Path
from typing import Any

import httpx
from azure.core.pipeline import PipelineResponse
from azure.data.tables.aio import TableClient
from azure.storage.blob.aio import ContainerClient

from local_host.azurite import Azurite, free_port, start_azurite
from local_host.process import start_host
from shared.aliases.records import AliasParams
from shared.aliases.routes import AliasRoutes
from shared.aliases.service import Aliases
from shared.capture.chat_request import ChatRequest
from shared.store import ids
from shared.store.completion_filter import CompletionFilter
from shared.store.completion_index import CompletionIndex, IndexEntry
from shared.store.completion_store import CompletionStore
from shared.store.json_blobs import JsonBlobs
from shared.store.stored_completion import StoredCompletion

_STORAGE_NAME_SUFFIXES = ("_CONTAINER", "_TABLE", "_QUEUE")
"""The settings naming the host's storage: the indexer host is given the proxy host's."""
BODY = {"model": "bench", "messages": [{"role": "user", "content": "Say ok fifty times."}]}
RESPONSES_BODY = {"model": "bench", "input": "Say ok fifty times."}


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


async def sequential(
    client: httpx.AsyncClient, url: str, headers: dict[str, str], body: dict[str, Any], n: int
) -> list[float]:
    latencies = []
    for _ in range(n):
        started = time.perf_counter()
        response = await client.post(url, json=body, headers=headers)
        latencies.append((time.perf_counter() - started) * 1000)
        response.raise_for_status()
    return latencies


async def concurrent(
    client: httpx.AsyncClient, url: str, headers: dict[str, str], body: dict[str, Any], n: int, width: int
) -> float:
    remaining = iter(range(n))

    async def worker() -> None:
        for _ in remaining:
            (await client.post(url, json=body, headers=headers)).raise_for_status()

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(width)))
    return n / (time.perf_counter() - started)


def store_cost(
    azurite: Azurite, upstream_url: str, upstream_pid: int, requests: int, rounds: int, *, one_host: bool, index: bool
) -> None:
    with tempfile.TemporaryDirectory() as logs:
        only_http = () if one_host else ("--no-queue-triggers",)
        host = start_host(azurite.connection_string, Path(logs), *only_http, OPENAI_BASE_URL=upstream_url)
        names = {name: value for name, value in host.env.items() if name.endswith(_STORAGE_NAME_SUFFIXES)}
        indexer = (
            host
            if one_host or not index
            else start_host(azurite.connection_string, Path(logs), OPENAI_BASE_URL=upstream_url, **names)
        )
        try:
            processes = {"proxy host": host.process.pid, "Azurite": azurite.process.pid}
            if indexer is not host:
                processes["indexer host"] = indexer.process.pid
            processes |= {"upstream": upstream_pid, "this client": os.getpid()}
            url, headers = f"{host.url}/openai/v1/chat/completions", {"api-key": host.key}
            try:
                asyncio.run(
                    _store_rounds(
                        url, headers, azurite.connection_string, requests // rounds, rounds, processes, lag=index
                    )
                )
            except RuntimeError:
                for name, running in {"proxy host": host, "indexer host": indexer}.items():
                    print(f"The {name}'s log ends:\n{running.log()[-3000:]}")
                raise
        finally:
            host.stop()
            if indexer is not host:
                indexer.stop()


async def _store_rounds(
    url: str,
    headers: dict[str, str],
    connection: str,
    n: int,
    rounds: int,
    processes: dict[str, int],
    *,
    lag: bool,
) -> None:
    stored = {**BODY, "store": True}
    async with httpx.AsyncClient(timeout=60) as client:
        await sequential(client, url, headers, stored, 20)  # warm up
        document = (await client.post(url, json=stored, headers=headers)).content
        latencies: dict[bool, list[float]] = {False: [], True: []}
        floor: list[float] = []
        cpu = {(store, name): 0.0 for store in (False, True) for name in processes}
        # The indexer's work for a phase's captures is the store=true phase's: its CPU is counted until
        # the index has caught up (`drain`), and store=false and the floor run on a quiet index.
        indexing = {"indexer host", "Azurite"}
        for _ in range(rounds):
            for store, times in latencies.items():
                before = {name: _cpu_seconds(pid) for name, pid in processes.items()}
                times += await sequential(client, url, headers, {**BODY, "store": store}, n)
                after = {name: _cpu_seconds(pid) for name, pid in processes.items()}
                if store and lag:
                    await _until_listed(client, url, headers)
                    after |= {name: _cpu_seconds(pid) for name, pid in processes.items() if name in indexing}
                for name in processes:
                    cpu[store, name] += after[name] - before[name]
            floor += (await _blob_writes(connection, document, n))[0]
        _, floor_rate = await _blob_writes(connection, document, n * 10, 16)
        rates, busy = {}, {}
        for store in (False, True):  # long enough for the indexer to run in step, not after the phase
            before, started = {name: _cpu_seconds(pid) for name, pid in processes.items()}, time.perf_counter()
            rates[store] = await concurrent(client, url, headers, {**BODY, "store": store}, n * 10, 16)
            elapsed = time.perf_counter() - started
            busy[store] = {name: (_cpu_seconds(pid) - before[name]) / elapsed for name, pid in processes.items()}
        if lag:
            await _until_listed(client, url, headers)
        lags = await _index_lag(client, url, headers, max(20, n // 5)) if lag else []
    off, on = statistics.median(latencies[False]), statistics.median(latencies[True])
    overhead, floor_p50 = on - off, statistics.median(floor)
    print(f"\nstore=true at the cost of one write: {n * rounds} sequential requests each, {rounds} interleaved rounds")
    print(
        f"store=false p50 {off:.2f} ms   store=true p50 {on:.2f} ms   one blob write (the floor) p50 {floor_p50:.2f} ms"
    )
    print(f"store=true overhead {overhead:.2f} ms = {overhead / floor_p50:.2f}x the floor (goal <= 1.5x)")
    print(
        f"{n * 10} at 16 in flight: store=false {rates[False]:.0f} req/s, store=true {rates[True]:.0f} req/s = "
        f"{100 * rates[True] / rates[False]:.0f} % (goal >= 50 %); one blob write, 16 at a time: {floor_rate:.0f}/s"
    )
    print(
        "cores busy at 16 in flight, store=false / store=true: "
        + ", ".join(f"{name} {busy[False][name]:.2f} / {busy[True][name]:.2f}" for name in processes)
    )
    per_request = {key: 1000 * seconds / (n * rounds) for key, seconds in cpu.items()}
    print(
        "CPU per request, store=false / store=true: "
        + ", ".join(f"{name} {per_request[False, name]:.2f} / {per_request[True, name]:.2f} ms" for name in processes)
    )
    if lags:
        print(
            f"index lag (answer -> listed): p50 {statistics.median(lags):.0f} ms, p99 {percentile(lags, 0.99):.0f} ms"
        )


def _cpu_seconds(pid: int) -> float:
    """User + system CPU a process has used (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def _blob_writes(connection: str, document: bytes, n: int, width: int = 1) -> tuple[list[float], float]:
    """The floor: writes of a stored document as the capture makes them, `width` at a time, straight
    from this process to the same Azurite; each write's milliseconds, and writes per second."""
    async with ContainerClient.from_connection_string(connection, f"floor{uuid.uuid4().hex[:8]}") as container:
        await container.create_container()
        times: list[float] = []
        remaining = iter(range(n))

        async def writer() -> None:
            for _ in remaining:
                began = time.perf_counter()
                await container.upload_blob(f"chatcmpl-{uuid.uuid4().hex}.json", document, overwrite=True)
                times.append((time.perf_counter() - began) * 1000)

        started = time.perf_counter()
        await asyncio.gather(*(writer() for _ in range(width)))
        rate = n / (time.perf_counter() - started)
        await container.delete_container()
        return times, rate


async def _index_lag(client: httpx.AsyncClient, url: str, headers: dict[str, str], n: int) -> list[float]:
    return [await _until_listed(client, url, headers) for _ in range(n)]


async def _until_listed(client: httpx.AsyncClient, url: str, headers: dict[str, str]) -> float:
    """Store one tagged completion and wait until lists show it; milliseconds from its answer. Its
    event follows the others in order, so the index has then caught up with what came before."""
    tag = uuid.uuid4().hex
    answer = await client.post(url, json={**BODY, "store": True, "metadata": {"t": tag}}, headers=headers)
    answer.raise_for_status()
    answered = time.perf_counter()
    while True:  # polling the list is the measurement itself
        listed = await client.get(url, params={"metadata[t]": tag}, headers=headers)
        if listed.json()["data"]:
            return (time.perf_counter() - answered) * 1000
        if time.perf_counter() - answered > 120:
            raise RuntimeError("a completion was not listed within 120 s: is the indexer running?")
        await asyncio.sleep(0.01)


def proxy_overhead(azurite: Azurite, upstream_url: str, requests: int, rounds: int) -> None:
    with tempfile.TemporaryDirectory() as logs:
        asyncio.run(_wait_ready(f"{upstream_url}/chat/completions"))
        host = start_host(azurite.connection_string, Path(logs), OPENAI_BASE_URL=upstream_url)
        # The same with telemetry on: spans and metrics through the SDK, exported as JSON lines to its log file.
        traced = start_host(
            azurite.connection_string, Path(logs), OPENAI_BASE_URL=upstream_url, TELEMETRY_EXPORTER="console"
        )
        try:
            key = {"api-key": host.key}
            proxy = f"{host.url}/openai/v1/chat/completions"
            traced_proxy, traced_key = f"{traced.url}/openai/v1/chat/completions", {"api-key": traced.key}
            stored = {**BODY, "store": True, "metadata": {"bench": "capture"}}
            alias = {"targets": [{"deployment": BODY["model"], "share": 100}]}
            httpx.put(f"{host.url}/api/aliases/bench-alias", json=alias, headers=key).raise_for_status()
            targets = {
                "direct to upstream": (f"{upstream_url}/chat/completions", {}, BODY),
                "proxy, store=false": (proxy, key, BODY),
                "proxy, store=true": (proxy, key, stored),
                "+ telemetry, false": (traced_proxy, traced_key, BODY),
                "+ telemetry, true": (traced_proxy, traced_key, stored),
                "via alias, false": (proxy, key, {**BODY, "model": "bench-alias"}),
                "responses direct": (f"{upstream_url}/responses", {}, RESPONSES_BODY),
                "responses, false": (f"{host.url}/openai/v1/responses", key, {**RESPONSES_BODY, "store": False}),
                "responses, true": (
                    f"{host.url}/openai/v1/responses",
                    key,
                    {**RESPONSES_BODY, "metadata": {"bench": "capture"}},
                ),
            }
            asyncio.run(_measure_targets(targets, requests, rounds))
            asyncio.run(alias_lookup_cost(azurite))
        finally:
            host.stop()
            traced.stop()


async def _measure_targets(
    targets: dict[str, tuple[str, dict[str, str], dict[str, Any]]], requests: int, rounds: int
) -> None:
    latencies: dict[str, list[float]] = defaultdict(list)
    throughput: dict[str, list[float]] = defaultdict(list)
    limits = httpx.Limits(max_connections=32, max_keepalive_connections=32)
    async with httpx.AsyncClient(limits=limits, timeout=60) as client:
        for url, headers, body in targets.values():
            await sequential(client, url, headers, body, 50)  # warm connections, caches and the JIT-less paths
        for _ in range(rounds):
            for name, (url, headers, body) in targets.items():
                latencies[name] += await sequential(client, url, headers, body, requests // rounds)
            for name, (url, headers, body) in targets.items():
                throughput[name].append(await concurrent(client, url, headers, body, requests // rounds, 16))
    direct_p50 = statistics.median(latencies["direct to upstream"])
    responses_p50 = statistics.median(latencies["responses direct"])
    print(f"\nProxy overhead: {requests} sequential requests per target in {rounds} interleaved rounds")
    print(f"{'target':<22}{'p50 ms':>9}{'p99 ms':>9}{'overhead p50 ms':>17}{'req/s @16':>11}")
    for name in targets:
        p50 = statistics.median(latencies[name])
        baseline = responses_p50 if name.startswith("responses") else direct_p50
        print(
            f"{name:<22}{p50:>9.2f}{percentile(latencies[name], 0.99):>9.2f}"
            f"{p50 - baseline:>17.2f}{statistics.median(throughput[name]):>11.0f}"
        )


async def alias_lookup_cost(azurite: Azurite, calls: int = 100_000) -> None:
    """One alias lookup as the proxy makes it, after the first read: from the worker's memory."""
    async with ContainerClient.from_connection_string(azurite.connection_string, f"alias{int(time.time())}") as box:
        await box.create_container()
        blobs = JsonBlobs(container=box, label="alias")
        aliases = Aliases(blobs=blobs, routes=AliasRoutes(blobs=blobs, ttl_seconds=10), compare=_no_compare)
        await aliases.put(
            "bot", AliasParams.model_validate({"targets": [{"deployment": "bench", "share": 100}]}), by="bench"
        )
        request = ChatRequest.model_validate(BODY)
        print(f"\nAlias lookup in process ({calls} calls each, after the first read)")
        for name in ("bot", "not-an-alias"):
            await aliases.routes.route(name, request)
            began = time.perf_counter()
            for _ in range(calls):
                await aliases.routes.route(name, request)
            per_call_us = (time.perf_counter() - began) / calls * 1e6
            print(f"{'alias (hit)' if name == 'bot' else 'plain name (miss)':<22}{per_call_us:>9.2f} µs per call")
        await box.delete_container()


async def _no_compare(eval_id: str, run_ids: list[str]) -> dict[str, Any]:
    raise AssertionError("the benchmark promotes nothing")


async def _wait_ready(url: str) -> None:
    deadline = time.monotonic() + 30
    async with httpx.AsyncClient() as client:
        while time.monotonic() < deadline:
            try:
                await client.post(url, json=BODY)
                return
            except httpx.TransportError:
                await asyncio.sleep(0.05)
    raise RuntimeError(f"{url} did not start")


def _completion(number: int, base_us: int) -> StoredCompletion:
    completion_id = ids.new_completion_id(now_us=base_us + number * 1000)
    return StoredCompletion(
        id=completion_id,
        created=ids.captured_at_us(completion_id) // 1_000_000,
        deployment="bench",
        model="zero-latency",
        metadata={"tag": "needle" if number % 40 == 0 else f"hay-{number % 97}", "user": f"u{number % 13}"},
        owner="bench",
        request={"messages": [{"role": "user", "content": f"question {number} " + "x" * 400}]},
        response={
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "y" * 400}, "finish_reason": "stop"}]
        },
    )


async def seed(container: ContainerClient, table: TableClient, start: int, stop: int, base_us: int) -> None:
    """Bulk-load completions: index rows in 100-row transactions per partition (exactly the rows
    `CompletionIndex.add` writes, only batched), and the documents of the completions the benchmark
    lists (the needles). Azurite finds a blob by name whatever their number, while its table scans
    grow with the rows, so the rows are what must grow; this keeps seeding 100k to minutes.
    """
    gate = asyncio.Semaphore(32)

    async def upload(completion: StoredCompletion) -> None:
        async with gate:
            await container.upload_blob(f"{completion.id}.json", completion.model_dump_json(), overwrite=True)

    completions = [_completion(number, base_us) for number in range(start, stop)]
    await asyncio.gather(*(upload(c) for c in completions if c.metadata["tag"] == "needle"))
    entries = [
        IndexEntry(id=c.id, deployment=c.deployment, model=c.model, metadata=c.metadata, owner="bench")
        for c in completions
    ]
    await CompletionIndex(table).add_many(entries, in_flight=4)  # Azurite drops $batch bodies when flooded


async def list_cost(azurite: Azurite, sizes: list[int], samples: int) -> None:
    rows_read: list[int] = []

    def count_rows(response: PipelineResponse) -> None:
        if response.http_request.method == "GET":
            rows_read.append(len(json.loads(response.http_response.body() or b"{}").get("value", [])))

    name = f"bench{int(time.time())}"
    base_us = int(time.time() * 1_000_000) - 10**12
    async with (
        ContainerClient.from_connection_string(azurite.connection_string, name) as container,
        TableClient.from_connection_string(azurite.connection_string, name, raw_response_hook=count_rows) as table,
    ):
        await container.create_container()
        await table.create_table()
        store = CompletionStore(container=container, index=CompletionIndex(table))
        needle = CompletionFilter(metadata={"tag": "needle"})
        print(f"\nFiltered list (metadata tag=needle, 2.5% of completions, limit 20, desc), {samples} samples per size")
        print(
            f"{'stored':>8}{'seed s':>8}{'list p50 ms':>13}{'rows read':>11}{'bare query p50 ms':>19}{'20 blob reads p50 ms':>22}"
        )
        stored = 0
        for size in sizes:
            started = time.perf_counter()
            await seed(container, table, stored, size, base_us)
            seeded_in, stored = time.perf_counter() - started, size
            list_ms, bare_ms, reads_ms, rows = [], [], [], []
            for _ in range(samples):
                rows_read.clear()
                began = time.perf_counter()
                page = await store.list(needle, order="desc", limit=20)
                list_ms.append((time.perf_counter() - began) * 1000)
                rows.append(sum(rows_read))
                assert len(page.data) == 20
                began = time.perf_counter()
                await asyncio.gather(*(container.download_blob(f"{c.id}.json") for c in page.data))
                reads_ms.append((time.perf_counter() - began) * 1000)
                began = time.perf_counter()
                pages = table.query_entities("PartitionKey eq 'all'", results_per_page=21).by_page()
                [_ async for _ in await anext(pages)]
                bare_ms.append((time.perf_counter() - began) * 1000)
            print(
                f"{size:>8}{seeded_in:>8.0f}{statistics.median(list_ms):>13.1f}{max(rows):>11}"
                f"{statistics.median(bare_ms):>19.1f}{statistics.median(reads_ms):>22.1f}"
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=1000, help="sequential requests per target")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--one-host", action="store_true", help="part 1: serve HTTP and index in one host process")
    parser.add_argument("--no-index", action="store_true", help="part 1: run no indexer, the request path alone")
    parser.add_argument("--sizes", default="1000,10000,100000", help="store sizes for the list benchmark")
    parser.add_argument("--samples", type=int, default=30)
    parser.add_argument("--skip", choices=["store", "proxy", "list"], action="append", default=[])
    args = parser.parse_args()
    azurite = start_azurite()
    port = free_port()
    upstream = subprocess.Popen([sys.executable, "-m", "bench.zero_upstream", str(port)])
    upstream_url = f"http://127.0.0.1:{port}/v1"
    try:
        asyncio.run(_wait_ready(f"{upstream_url}/chat/completions"))
        if "store" not in args.skip:
            store_cost(
                azurite,
                upstream_url,
                upstream.pid,
                args.requests,
                args.rounds,
                one_host=args.one_host,
                index=not args.no_index,
            )
        if "proxy" not in args.skip:
            proxy_overhead(azurite, upstream_url, args.requests, args.rounds)
        if "list" not in args.skip:
            asyncio.run(list_cost(azurite, [int(size) for size in args.sizes.split(",")], args.samples))
    finally:
        upstream.terminate()
        upstream.wait()
        azurite.stop()


if __name__ == "__main__":
    main()
