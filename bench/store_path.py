"""`python -m bench.store_path`: what `store: true` costs over `store: false`, side by side in one run.

Prints p50 of both through the local host (Azurite, zero-latency upstream), the floor (one blob write
of a stored document, same Azurite), overhead / floor, throughput at 16 in flight both ways, the
CPU per request both ways (read from /proc: what a loaded shared box distorts least), and the index
lag: time from the answer until lists show the completion (p50 / p99).

Two hosts share one store, as Flex Consumption runs them: one serves HTTP and delivers no queue
messages, the other runs the `index_completions` trigger (Flex scales a Service Bus function on
instances of its own, apart from the HTTP group). With `--one-host`, one host does both; with
`--no-index`, nothing indexes (no lag measured): the request path alone, without the indexer's
load on the one Azurite process that serves every storage request here.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import httpx
from azure.storage.blob.aio import ContainerClient

from local_host.azurite import free_port, start_azurite
from local_host.process import start_host

BODY = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
_STORAGE_NAME_SUFFIXES = ("_CONTAINER", "_TABLE", "_QUEUE")


def _p(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def _sequential(client: httpx.AsyncClient, store: bool, n: int) -> list[float]:
    times = []
    for _ in range(n):
        started = time.perf_counter()
        (await client.post("/openai/v1/chat/completions", json={**BODY, "store": store})).raise_for_status()
        times.append((time.perf_counter() - started) * 1000)
    return times


async def _throughput(client: httpx.AsyncClient, store: bool, n: int, width: int = 16) -> float:
    left = n

    async def worker() -> None:
        nonlocal left
        while left > 0:
            left -= 1
            (await client.post("/openai/v1/chat/completions", json={**BODY, "store": store})).raise_for_status()

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(width)))
    return n / (time.perf_counter() - started)


def _cpu_seconds(pid: int) -> float:
    """User + system CPU a process has used (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def _floor(connection: str, document: bytes, n: int) -> list[float]:
    async with ContainerClient.from_connection_string(connection, f"floor{uuid.uuid4().hex[:8]}") as container:
        await container.create_container()
        times = []
        for _ in range(n):
            started = time.perf_counter()
            await container.upload_blob(f"chatcmpl-{uuid.uuid4().hex}.json", document, overwrite=True)
            times.append((time.perf_counter() - started) * 1000)
        return times


async def _lag(client: httpx.AsyncClient, n: int) -> list[float]:
    lags = []
    for _ in range(n):
        tag = uuid.uuid4().hex
        answer = await client.post("/openai/v1/chat/completions", json={**BODY, "store": True, "metadata": {"t": tag}})
        answered = time.perf_counter()
        while True:  # polling the list is the measurement itself
            listed = await client.get("/openai/v1/chat/completions", params={"metadata[t]": tag})
            if listed.json()["data"]:
                break
            if time.perf_counter() - answered > 120:
                raise RuntimeError("a completion was not listed within 120 s: is the indexer running?")
            await asyncio.sleep(0.01)
        lags.append((time.perf_counter() - answered) * 1000)
        answer.raise_for_status()
    return lags


async def run(
    host_url: str, key: str, connection: str, n: int, rounds: int, pids: tuple[int, int], *, lag: bool
) -> None:
    async with httpx.AsyncClient(base_url=host_url, headers={"api-key": key}, timeout=60) as client:
        await _sequential(client, True, 20)  # warm up
        document = (await client.post("/openai/v1/chat/completions", json={**BODY, "store": True})).content
        off: list[float] = []
        on: list[float] = []
        floor: list[float] = []
        cpu = {(store, pid): 0.0 for store in (False, True) for pid in pids}
        for _ in range(rounds):
            for store, times in ((False, off), (True, on)):
                before = {pid: _cpu_seconds(pid) for pid in set(pids)}
                times += await _sequential(client, store, n)
                for pid in set(pids):
                    cpu[store, pid] += _cpu_seconds(pid) - before[pid]
            floor += await _floor(connection, document, n)
        rate_off = await _throughput(client, False, n * 2)
        rate_on = await _throughput(client, True, n * 2)
        lags = await _lag(client, max(20, n // 5)) if lag else []
    overhead = statistics.median(on) - statistics.median(off)
    print(f"store=false p50 {statistics.median(off):.2f} ms   store=true p50 {statistics.median(on):.2f} ms")
    print(
        f"blob-write floor p50 {statistics.median(floor):.2f} ms   overhead {overhead:.2f} ms = "
        f"{overhead / statistics.median(floor):.2f}x the floor (goal <= 1.5x)"
    )
    print(
        f"16 in flight: store=false {rate_off:.0f} req/s, store=true {rate_on:.0f} req/s = "
        f"{100 * rate_on / rate_off:.0f} % (goal >= 50 %)"
    )
    proxy, indexer = pids
    print(
        f"proxy host CPU per request: store=false {1000 * cpu[False, proxy] / len(off):.2f} ms, "
        f"store=true {1000 * cpu[True, proxy] / len(on):.2f} ms"
        + (
            ""
            if proxy == indexer
            else f"; indexer host, per store=true request: {1000 * cpu[True, indexer] / len(on):.2f} ms"
        )
    )
    if lags:
        print(f"index lag (answer -> listed): p50 {statistics.median(lags):.0f} ms, p99 {_p(lags, 0.99):.0f} ms")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=200, help="sequential requests per target per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--one-host", action="store_true", help="serve HTTP and index in one host process")
    parser.add_argument("--no-index", action="store_true", help="run no indexer: the request path alone")
    args = parser.parse_args()
    azurite = start_azurite()
    port = free_port()
    upstream = subprocess.Popen([sys.executable, "-m", "bench.zero_upstream", str(port)])
    try:
        with tempfile.TemporaryDirectory() as logs:
            upstream_url = f"http://127.0.0.1:{port}/v1"
            only_http = () if args.one_host else ("--no-queue-triggers",)
            host = start_host(azurite.connection_string, Path(logs), *only_http, OPENAI_BASE_URL=upstream_url)
            names = {name: value for name, value in host.env.items() if name.endswith(_STORAGE_NAME_SUFFIXES)}
            indexer = (
                host
                if args.one_host or args.no_index
                else start_host(azurite.connection_string, Path(logs), OPENAI_BASE_URL=upstream_url, **names)
            )
            try:
                pids = (host.process.pid, indexer.process.pid)
                asyncio.run(
                    run(
                        host.url,
                        host.key,
                        azurite.connection_string,
                        args.requests,
                        args.rounds,
                        pids,
                        lag=not args.no_index,
                    )
                )
            finally:
                host.stop()
                indexer.stop()
    finally:
        upstream.terminate()
        azurite.stop()


if __name__ == "__main__":
    main()
