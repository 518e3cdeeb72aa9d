"""`python -m bench.evals`: items graded per second, beside the raw upstream call rate.

Against the zero-latency upstream (`bench.zero_upstream`, its own process), interleaved round by
round so machine noise hits every variant alike, it measures with `EVAL_CONCURRENCY`-style
concurrency (8):

- the raw rate of whole chat calls through `ModelCalls` (the ceiling of any re-running run);
- `grade()` alone per grader: `string_check` and each `text_similarity` metric but `cosine`
  (no upstream: the grader's own cost);
- whole runs on Azurite through `EvalService` (items fixed, candidate re-run, graded, written and
  counted): a `string_check` run and a `rouge_l` run.

It prints the median items/s of the rounds and each as a ratio of the raw call rate.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Awaitable, Callable

import aiohttp
import httpx

from local_host.azurite import Azurite, free_port, start_azurite
from shared.evals.graders import grade, parse_testing_criteria
from shared.evals.params import EvalCreateParams, RunCreateParams
from shared.evals.service import EvalJobMessage
from shared.platform.settings import Settings
from shared.services import Services
from shared.upstream.client import HttpUpstream, openai_compatible_url
from shared.upstream.model_calls import ModelCalls

CONCURRENCY = 8
TEXT = "the quick brown fox jumps over the lazy dog near the river bank today"
REFERENCE = "a quick brown fox jumped over a lazy dog by the river bank"
METRICS = ["fuzzy_match", "bleu", "gleu", "meteor", "rouge_1", "rouge_2", "rouge_l"]


async def rate(items: int, work: Callable[[int], Awaitable[object]]) -> float:
    """Items per second doing `work(i)` for every item, `CONCURRENCY` at a time."""
    queue = iter(range(items))

    async def worker() -> None:
        for number in queue:
            await work(number)

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))
    return items / (time.perf_counter() - started)


def similarity(metric: str) -> dict[str, object]:
    return {
        "type": "text_similarity",
        "name": metric,
        "input": "{{sample.output_text}}",
        "reference": "{{item.reference}}",
        "evaluation_metric": metric,
        "pass_threshold": 0.5,
    }


async def measure(azurite: Azurite, base_url: str, items: int, rounds: int) -> None:
    results: dict[str, list[float]] = {}
    async with aiohttp.ClientSession() as session:

        async def no_auth() -> dict[str, str]:
            return {}

        calls = ModelCalls(
            upstream=HttpUpstream(
                session=session, url_for=openai_compatible_url(base_url), auth_headers=no_auth, model_for=lambda d: d
            )
        )
        body = {"messages": [{"role": "user", "content": "hi"}]}
        graders = {
            "string_check": {
                "type": "string_check",
                "name": "s",
                "input": "{{sample.output_text}}",
                "reference": "ok",
                "operation": "like",
            }
        }
        graders |= {metric: similarity(metric) for metric in METRICS}
        parsed = {name: parse_testing_criteria([criterion])[0] for name, criterion in graders.items()}
        item, sample = {"reference": REFERENCE}, {"output_text": TEXT}
        services = Services(
            Settings(
                AzureWebJobsStorage=azurite.connection_string,  # type: ignore[call-arg]
                OPENAI_BASE_URL=base_url,
                EVALS_CONTAINER=f"bench{uuid.uuid4().hex[:8]}",
                EVAL_JOBS_QUEUE=f"bench{uuid.uuid4().hex[:8]}",
                EVAL_CONCURRENCY=str(CONCURRENCY),
            )
        )
        await services.ensure_storage()
        for _ in range(rounds):
            results.setdefault("raw upstream chat call", []).append(
                await rate(items, lambda _n: calls.chat(deployment="bench", body=body))
            )
            for name, criterion in parsed.items():
                results.setdefault(f"grade() {name}", []).append(
                    await rate(
                        items,
                        lambda _n, c=criterion: grade(  # type: ignore[misc]
                            c, item=item, sample=sample, calls=calls, embeddings_deployment="none"
                        ),
                    )
                )
            for name in ("string_check", "rouge_l"):
                results.setdefault(f"whole run, re-run + {name}", []).append(
                    await whole_run(services, graders[name], items)
                )
        await services.close()
    raw = statistics.median(results["raw upstream chat call"])
    print(f"{items} items per measurement, {CONCURRENCY} at a time, median of {rounds} rounds")
    print(f"{'variant':<40}{'items/s':>12}{'x raw calls':>14}")
    for label, values in results.items():
        median = statistics.median(values)
        print(f"{label:<40}{median:>12.0f}{median / raw:>14.2f}")


async def whole_run(services: Services, criterion: dict[str, object], items: int) -> float:
    """Items/s of one run graded by the queue handler (delivered here, not through a queue)."""
    evals = services.evals
    record = await evals.create_eval(
        EvalCreateParams.model_validate(
            {
                "data_source_config": {
                    "type": "custom",
                    "item_schema": {"type": "object"},
                    "include_sample_schema": True,
                },
                "testing_criteria": [criterion],
            }
        ),
        owner=None,
    )
    params = RunCreateParams.model_validate(
        {
            "data_source": {
                "type": "completions",
                "model": "bench",
                "source": {
                    "type": "file_content",
                    "content": [{"item": {"reference": REFERENCE, "n": n}} for n in range(items)],
                },
                "input_messages": {"type": "template", "template": [{"role": "user", "content": "{{item.reference}}"}]},
            }
        }
    )
    run, _ = await evals.create_run(record.id, params, owner=None, report_base="http://bench")
    started = time.perf_counter()
    await evals.handle(EvalJobMessage(eval_id=record.id, run_id=run.id).model_dump_json().encode(), delivery_count=1)
    elapsed = time.perf_counter() - started
    done, _ = await evals.store.read_run(record.id, run.id)
    assert done.result_counts.total == items, done.result_counts
    return items / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--items", type=int, default=400)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    port = free_port()
    upstream = subprocess.Popen([sys.executable, "-m", "bench.zero_upstream", str(port)])
    azurite = start_azurite()
    try:
        base_url = f"http://127.0.0.1:{port}/v1"
        deadline = time.monotonic() + 30
        while True:
            try:
                httpx.post(f"{base_url}/chat/completions", json={"messages": []}, timeout=1)
                break
            except httpx.TransportError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        asyncio.run(measure(azurite, base_url, args.items, args.rounds))
    finally:
        azurite.stop()
        upstream.terminate()
        upstream.wait(timeout=10)


if __name__ == "__main__":
    main()
