"""`python -m bench.capture`: the proxy's overhead and the cost of a filtered list.

Part 1 sends the same chat completion, interleaved round by round so machine noise hits all targets
alike, to: the zero-latency upstream directly, the proxy with store=false, and the proxy with
store=true (the answer returns after its one blob write; the host's own indexer writes the index
rows meanwhile, on the same Azurite: `bench.store_path` separates the two), then both again
on a host with telemetry on (`TELEMETRY_EXPORTER=console`, to its log file), and store=false through
an alias of the same deployment; then a Responses call (`/openai/v1/responses`) direct, with store=false
and with store=true (its default), beside them. It prints p50/p99 latency at one request in flight, requests/s at 16
in flight, and the p50 overhead; then what one alias lookup costs in process, hit and miss (every
proxied call pays one: the name is looked up whether or not it is an alias).

Part 2 grows the store to each size and times a metadata-filtered list (limit 20) through
`CompletionStore.list`, counting the index rows storage returned, beside a bare one-page partition
query and the same 20 document reads on the same Azurite (the emulator scans its tables
internally, so its own cost grows with size; the design's cost is the difference).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import tempfile
import time
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


def proxy_overhead(azurite: Azurite, requests: int, rounds: int) -> None:
    port = free_port()
    upstream = subprocess.Popen([sys.executable, "-m", "bench.zero_upstream", str(port)])
    upstream_url = f"http://127.0.0.1:{port}/v1"
    try:
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
    finally:
        upstream.terminate()
        upstream.wait()


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


async def storage_floor(azurite: Azurite, samples: int = 200) -> None:
    """What one stored completion costs Azurite alone: the floor under the store=true overhead."""
    name = f"floor{int(time.time())}"
    async with (
        ContainerClient.from_connection_string(azurite.connection_string, name) as container,
        TableClient.from_connection_string(azurite.connection_string, name) as table,
    ):
        await container.create_container()
        await table.create_table()
        store = CompletionStore(container=container, index=CompletionIndex(table))
        timings: dict[str, list[float]] = defaultdict(list)
        base_us = int(time.time() * 1_000_000)
        for number in range(samples):
            completion = _completion(number, base_us)
            cases = {
                "one blob upload": container.upload_blob(f"x{number}", completion.model_dump_json(), overwrite=True),
                "one 2-row table transaction": table.submit_transaction(
                    [("upsert", {"PartitionKey": "x", "RowKey": f"{o}{number}"}) for o in "ad"]
                ),
                "CompletionStore.put (blob + 5 partitions)": store.put(completion),
            }
            for label, operation in cases.items():
                began = time.perf_counter()
                await operation
                timings[label].append((time.perf_counter() - began) * 1000)
    print(f"\nStorage floor on this Azurite ({samples} samples, interleaved)")
    for label, values in timings.items():
        print(f"{label:<46}{statistics.median(values):>8.2f} ms p50")


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
    parser.add_argument("--sizes", default="1000,10000,100000", help="store sizes for the list benchmark")
    parser.add_argument("--samples", type=int, default=30)
    parser.add_argument("--skip", choices=["proxy", "list"], action="append", default=[])
    args = parser.parse_args()
    azurite = start_azurite()
    try:
        if "proxy" not in args.skip:
            proxy_overhead(azurite, args.requests, args.rounds)
            asyncio.run(storage_floor(azurite))
        if "list" not in args.skip:
            asyncio.run(list_cost(azurite, [int(size) for size in args.sizes.split(",")], args.samples))
    finally:
        azurite.stop()


if __name__ == "__main__":
    main()
