"""`python -m bench.aliases`: does the alias lookup cost a `store: false` call anything measurable?

The same `store: false` chat completion goes through the app's own `ChatCapture` in process (no HTTP
server in between, so the host's noise is out of the picture) to the zero-latency upstream, in four
variants interleaved call by call (in a fresh random order each round): with no alias routing at all (twice: the second is the control, its
difference from the first is what this machine's noise alone makes), with routing and a plain
deployment name (the lookup misses, as for most calls), and through an alias (the lookup hits and
picks the deployment). It prints each variant's median and p99 time per call and its difference
from the first: the lookup adds no measurable overhead when those differences are within the
control's. Then one lookup alone, in process, hit and miss (`bench.capture`'s measurement).
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import subprocess
import sys
import time
import uuid

from bench.capture import BODY, _wait_ready, alias_lookup_cost, percentile
from local_host.azurite import free_port, start_azurite
from shared.aliases.records import AliasParams
from shared.capture.chat_request import ChatRequest, parse_chat_request
from shared.capture.proxy import ChatCapture
from shared.platform.access import Caller, Right
from shared.platform.settings import Settings
from shared.services import Services

MODEL = str(BODY["model"])
CALLER = Caller(name="bench", owner="key:bench", rights=frozenset(Right))


async def measure(connection_string: str, upstream_url: str, calls: int) -> None:
    suffix = uuid.uuid4().hex[:8]
    settings = Settings(
        AzureWebJobsStorage=connection_string,
        OPENAI_BASE_URL=upstream_url,
        COMPLETIONS_CONTAINER=f"bench{suffix}",
        ALIASES_CONTAINER=f"benchaliases{suffix}",
        COMPLETION_INDEX_TABLE=f"bench{suffix}",
    )
    services = Services(settings)
    await services.ensure_storage()
    try:
        alias = AliasParams.model_validate({"targets": [{"deployment": MODEL, "share": 100}]})
        await services.aliases.put("bench-alias", alias, by="bench")
        routed = services.capture
        unrouted = ChatCapture(upstream=services.upstream, store=services.store, store_enabled=True, route=None)
        plain = parse_chat_request({**BODY, "store": False})
        via_alias = parse_chat_request({**BODY, "model": "bench-alias", "store": False})
        variants = {
            "no alias routing": (unrouted, plain, MODEL),
            "no alias routing (control)": (unrouted, plain, MODEL),
            "routing, plain name (miss)": (routed, plain, MODEL),
            "routing, via an alias (hit)": (routed, via_alias, "bench-alias"),
        }
        timings: dict[str, list[float]] = {name: [] for name in variants}
        for _ in range(100):  # warm the connections and the lookup cache
            for capture, request, deployment in variants.values():
                await _call(capture, request, deployment)
        names = list(variants)
        shuffle = random.Random(7).shuffle
        for _ in range(calls):
            shuffle(names)  # a fresh order each round: whatever a position pays, all variants pay alike
            for name in names:
                capture, request, deployment = variants[name]
                timings[name].append(await _call(capture, request, deployment))
    finally:
        await services.aliases.delete("bench-alias")
        await services.close()

    base = statistics.median(timings["no alias routing"])
    print(f"\nstore=false through ChatCapture in process, {calls} calls per variant, interleaved call by call")
    print(f"{'variant':<30}{'p50 µs':>10}{'p99 µs':>10}{'p50 vs first':>14}")
    for name, values in timings.items():
        p50 = statistics.median(values)
        print(f"{name:<30}{p50:>10.1f}{percentile(values, 0.99):>10.1f}{p50 - base:>+14.1f}")


async def _call(capture: ChatCapture, request: ChatRequest, deployment: str) -> float:
    began = time.perf_counter()
    reply = await capture.complete(request, deployment=deployment, caller=CALLER)
    elapsed = (time.perf_counter() - began) * 1e6
    assert reply.status == 200, reply.body
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=2000, help="calls per variant")
    args = parser.parse_args()
    azurite = start_azurite()
    port = free_port()
    upstream = subprocess.Popen([sys.executable, "-m", "bench.zero_upstream", str(port)])
    upstream_url = f"http://127.0.0.1:{port}/v1"
    try:
        asyncio.run(_wait_ready(f"{upstream_url}/chat/completions"))
        asyncio.run(measure(azurite.connection_string, upstream_url, args.calls))
        asyncio.run(alias_lookup_cost(azurite))
    finally:
        upstream.terminate()
        upstream.wait()
        azurite.stop()


if __name__ == "__main__":
    main()
