"""`python -m bench.evals`: items graded per second, beside the raw upstream call rate.

Against the zero-latency upstream (`bench.zero_upstream`, its own process), interleaved round by
round so machine noise hits every variant alike, it measures with `EVAL_CONCURRENCY`-style
concurrency (8):

- the raw rate of whole chat calls through `ModelCalls` (the ceiling of any re-running run);
- `grade()` alone per grader: `string_check` and each `text_similarity` metric but `cosine`
  (no upstream: the grader's own cost);
- whole runs on Azurite through `EvalService` (items fixed, candidate re-run, graded, written and
  counted): a `string_check` run and a `rouge_l` run — the goal is >= 0.3x the raw call rate;
- the p99 latency of chat calls made on the same worker (event loop) while it grades rows of 1 MB
  (over `EVAL_MAX_COMPARED_CHARS`: refused) and rows at that cap (scored in the metric pool) with
  `rouge_l`, beside the same p99 on an idle worker;
- in a fresh process, the peak RSS a run over eight 3.8 MB items adds, beside the read budget.

It prints the median items/s of the rounds and each as a ratio of the raw call rate.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import statistics
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

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
                            c,
                            item=item,
                            sample=sample,
                            calls=calls,
                            metrics=services.text_metrics,
                            embeddings_deployment="none",
                        ),
                    )
                )
            for name in ("string_check", "rouge_l"):
                results.setdefault(f"whole run, re-run + {name}", []).append(
                    await whole_run(services, graders[name], items)
                )
        latencies = await chat_latency_while_grading(services, calls, rounds)
        await services.close()
    raw = statistics.median(results["raw upstream chat call"])
    print(f"{items} items per measurement, {CONCURRENCY} at a time, median of {rounds} rounds")
    print(f"{'variant':<40}{'items/s':>12}{'x raw calls':>14}")
    for label, values in results.items():
        median = statistics.median(values)
        print(f"{label:<40}{median:>12.0f}{median / raw:>14.2f}")
    idle = latencies.pop("idle")
    print(f"\nchat-call p99 on the worker (ms), {CHAT_CALLS} calls one after another:")
    print(f"{'while':<40}{'p99 ms':>12}{'x idle':>14}")
    print(f"{'idle':<40}{idle * 1000:>12.2f}{1:>14.2f}")
    for label, value in latencies.items():
        print(f"{label:<40}{value * 1000:>12.2f}{value / idle:>14.2f}")


CHAT_CALLS = 400


def p99(values: list[float]) -> float:
    return sorted(values)[min(len(values) - 1, int(len(values) * 0.99))]


async def chat_latency_while_grading(services: Services, calls: ModelCalls, rounds: int) -> dict[str, float]:
    """p99 of chat calls on this event loop: idle, and while rouge_l grades big rows beside them."""
    body = {"messages": [{"role": "user", "content": "hi"}]}
    cap = services.settings.eval_max_compared_chars
    vocabulary = TEXT.split()

    def text(chars: int, seed: int) -> str:
        words: list[str] = []
        size = 0
        while size < chars:
            word = vocabulary[(len(words) * 7 + seed + len(words) // 3) % len(vocabulary)]
            words.append(word)
            size += len(word) + 1
        return " ".join(words)[:chars]

    async def chats(until: asyncio.Future[Any] | None) -> list[float]:
        latencies: list[float] = []
        while len(latencies) < CHAT_CALLS or (until is not None and not until.done()):
            started = time.perf_counter()
            await calls.chat(deployment="bench", body=body)
            latencies.append(time.perf_counter() - started)
        return latencies

    criterion = parse_testing_criteria([similarity("rouge_l")])[0]
    variants = {"1 MB rows (refused by the cap)": 1_000_000, f"rows at the cap ({cap} chars, pool)": cap}
    row_count = {1_000_000: CONCURRENCY, cap: 2}
    results: dict[str, list[float]] = {"idle": []}
    for _ in range(rounds):
        results["idle"].append(p99(await chats(None)))
        for label, chars in variants.items():
            rows = [
                ({"reference": text(chars, n)}, {"output_text": text(chars, n + 1)}) for n in range(row_count[chars])
            ]
            grading = asyncio.ensure_future(
                asyncio.gather(
                    *(
                        grade(
                            criterion,
                            item=item,
                            sample=sample,
                            calls=calls,
                            metrics=services.text_metrics,
                            embeddings_deployment="none",
                        )
                        for item, sample in rows
                    )
                )
            )
            measured = await chats(grading)
            await grading
            results.setdefault(label, []).append(p99(measured))
    return {label: statistics.median(values) for label, values in results.items()}


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


DOCUMENT_BYTES = 3_800_000


def rss_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


async def run_memory(connection_string: str) -> None:
    """In a fresh process: the RSS a run over eight 3.8 MB items adds at its peak."""
    services = Services(
        Settings(
            AzureWebJobsStorage=connection_string,  # type: ignore[call-arg]
            EVALS_CONTAINER=f"bench{uuid.uuid4().hex[:8]}",
            EVAL_JOBS_QUEUE=f"bench{uuid.uuid4().hex[:8]}",
        )
    )
    await services.ensure_storage()
    evals = services.evals
    record = await evals.create_eval(
        EvalCreateParams.model_validate(
            {
                "data_source_config": {"type": "custom", "item_schema": {"type": "object"}},
                "testing_criteria": [
                    {
                        "type": "string_check",
                        "name": "s",
                        "input": "{{item.text}}",
                        "reference": "a",
                        "operation": "like",
                    }
                ],
            }
        ),
        owner=None,
    )
    rows = [{"item": {"n": n, "text": f"{n} " + "word " * (DOCUMENT_BYTES // 5)}} for n in range(8)]
    params = RunCreateParams.model_validate(
        {"data_source": {"type": "jsonl", "source": {"type": "file_content", "content": rows}}}
    )
    run, _ = await evals.create_run(record.id, params, owner=None, report_base="http://bench")
    del rows, params
    gc.collect()
    baseline = peak = rss_bytes()
    sampling = True

    def sample() -> None:
        nonlocal peak
        while sampling:
            peak = max(peak, rss_bytes())
            time.sleep(0.002)

    sampler = threading.Thread(target=sample)
    sampler.start()
    await evals.handle(EvalJobMessage(eval_id=record.id, run_id=run.id).model_dump_json().encode(), delivery_count=1)
    page, _ = await evals.output_items(record.id, run.id, after=None, limit=100, order="asc", status=None, owner=None)
    sampling = False
    sampler.join()
    done, _ = await evals.store.read_run(record.id, run.id)
    assert done.result_counts.total == 8, done.result_counts
    budget = services.settings.document_read_budget_bytes
    print(
        f"run over 8 items of 3.8 MB, then an output-items page ({len(page)} items): RSS +{(peak - baseline) / 1e6:.0f} MB "
        f"at peak, read budget {budget / 1e6:.0f} MB ({(peak - baseline) / budget:.1f}x)"
    )
    await services.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--items", type=int, default=400)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--memory-child", metavar="CONNECTION_STRING", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_child:
        asyncio.run(run_memory(args.memory_child))
        return
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
        subprocess.run([sys.executable, "-m", "bench.evals", "--memory-child", azurite.connection_string], check=True)
    finally:
        azurite.stop()
        upstream.terminate()
        upstream.wait(timeout=10)


if __name__ == "__main__":
    main()
