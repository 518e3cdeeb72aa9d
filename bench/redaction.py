"""`python -m bench.redaction`: capture overhead with `REDACTION=pseudonymize` (offline detector) beside `off`.

Two local hosts on one Azurite and one zero-latency upstream, one with redaction off and one with
`pseudonymize` (Presidio's recognizers, no Azure AI Language), take the same `store: true` support
conversation with personal data in it, interleaved round by round so machine noise hits both alike.
Prints p50 / p99 of the proxy's own overhead (`x-distillery-overhead-ms`: request time minus upstream
time, the store write included) and of the client's latency, and what the redaction step alone takes
in process on the same document.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from local_host.azurite import free_port, start_azurite
from local_host.process import RunningHost, start_host
from shared.platform.settings import DEFAULT_REDACTION_ENTITIES, EntityKind, RedactionMode
from shared.redaction.detectors import OfflineDetector
from shared.redaction.redactor import Redactor
from shared.store.stored_completion import StoredCompletion

KEY = "bench-redaction-key-32-characters"
MESSAGES = [
    {"role": "system", "content": "You are the support assistant of Contoso Bank. Answer briefly and politely."},
    {
        "role": "user",
        "content": "Hi, I'm locked out. My e-mail is jane.doe@example.com and my phone is +1 212-555-0143; "
        "the card ending 1111 (4111 1111 1111 1111) was refused yesterday at a shop in Seattle. "
        "Can you move the refund to my IBAN DE89370400440532013000 instead?",
    },
    {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {
                "id": "call_1",
                "type": "function",
                "function": {"name": "find_customer", "arguments": '{"email": "jane.doe@example.com"}'},
            }
        ],
    },
    {
        "role": "tool",
        "tool_call_id": "call_1",
        "content": '{"customer_id": "C-20931", "last_login_ip": "203.0.113.42", "status": "locked"}',
    },
    {"role": "user", "content": "Also, please confirm the new address you have for me."},
]
BODY = {"model": "m", "store": True, "messages": MESSAGES}


def _p(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def _sequential(client: httpx.AsyncClient, n: int) -> tuple[list[float], list[float]]:
    overheads, latencies = [], []
    for _ in range(n):
        started = time.perf_counter()
        response = await client.post("/openai/v1/chat/completions", json=BODY)
        latencies.append((time.perf_counter() - started) * 1000)
        response.raise_for_status()
        assert response.headers["x-distillery-stored"] == "true", response.headers
        overheads.append(float(response.headers["x-distillery-overhead-ms"]))
    return overheads, latencies


async def _redaction_alone(n: int) -> list[float]:
    kinds = [EntityKind(name) for name in DEFAULT_REDACTION_ENTITIES.split(",")]
    redactor = Redactor(detector=OfflineDetector(), mode=RedactionMode.PSEUDONYMIZE, kinds=kinds, key=KEY.encode())
    document = StoredCompletion(
        id="chatcmpl-bench",
        created=0,
        deployment="m",
        model="m",
        request=BODY,
        response={
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "Sure, jane.doe@example.com."}}]
        },
    )
    await redactor.redact(document)  # builds the analyzer
    times = []
    for _ in range(n):
        started = time.perf_counter()
        await redactor.redact(document)
        times.append((time.perf_counter() - started) * 1000)
    return times


async def run(off: RunningHost, on: RunningHost, n: int, rounds: int) -> None:
    async with (
        httpx.AsyncClient(base_url=off.url, headers={"api-key": off.key}, timeout=60) as plain,
        httpx.AsyncClient(base_url=on.url, headers={"api-key": on.key}, timeout=60) as redacting,
    ):
        await _sequential(plain, 20)  # warm up (the redacting host builds its analyzer here)
        await _sequential(redacting, 20)
        results: dict[str, tuple[list[float], list[float]]] = {"off": ([], []), "pseudonymize": ([], [])}
        for _ in range(rounds):
            for name, client in (("off", plain), ("pseudonymize", redacting)):
                overheads, latencies = await _sequential(client, n)
                results[name][0].extend(overheads)
                results[name][1].extend(latencies)
    alone = await _redaction_alone(n)
    for name, (overheads, latencies) in results.items():
        print(
            f"REDACTION={name:<12} overhead p50 {statistics.median(overheads):6.2f} ms  p99 {_p(overheads, 0.99):6.2f} ms"
            f"   latency p50 {statistics.median(latencies):6.2f} ms"
        )
    base, redacted = statistics.median(results["off"][0]), statistics.median(results["pseudonymize"][0])
    print(f"pseudonymize adds {redacted - base:.2f} ms to the p50 overhead ({redacted / base:.2f}x off)")
    print(f"redaction step alone, in process: p50 {statistics.median(alone):.2f} ms  p99 {_p(alone, 0.99):.2f} ms")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=100, help="sequential requests per host per round")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    azurite = start_azurite()
    port = free_port()
    upstream = subprocess.Popen([sys.executable, "-m", "bench.zero_upstream", str(port)])
    try:
        with tempfile.TemporaryDirectory() as logs:
            base_url = f"http://127.0.0.1:{port}/v1"
            off = start_host(azurite.connection_string, Path(logs), OPENAI_BASE_URL=base_url, REDACTION="off")
            on = start_host(
                azurite.connection_string,
                Path(logs),
                OPENAI_BASE_URL=base_url,
                REDACTION="pseudonymize",
                REDACTION_KEY=KEY,
            )
            with off, on:
                asyncio.run(run(off, on, args.requests, args.rounds))
    finally:
        upstream.terminate()
        azurite.stop()


if __name__ == "__main__":
    main()
