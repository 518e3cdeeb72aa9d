"""Duplicate and near-duplicate prompts dropped from builds, and no validation item a near-duplicate
of a training example: the filter on its own, then whole builds (chunked too) with their manifests."""

from __future__ import annotations

import itertools
import json
import random

import numpy as np
from datasketch import MinHash

from shared.datasets.builder import BuildLimits, DatasetJobs
from shared.datasets.dedup import NUM_PERM, DedupParams, PromptFilter, prompt_text
from shared.datasets.formats import SkipReason, in_validation
from shared.datasets.job import DatasetParams, DatasetStatus
from shared.services import Services
from tests.shared.datasets.conftest import download, drain, read_job, seed, stored

BASE = "how do i rotate the access keys of my storage account without downtime for the web app"


def ask(text: str, system: str = "You are terse.") -> list[dict[str, str]]:
    return [{"role": "system", "content": system}, {"role": "user", "content": text}]


def test_exact_near_and_leakage_verdicts() -> None:
    near = PromptFilter(DedupParams(mode="near", threshold=0.7), check_leakage=False)
    assert near.admit(ask(BASE), split=0) is None
    assert near.admit(ask("  " + BASE.upper(), system="Other system prompt"), split=0) is SkipReason.DUPLICATE_PROMPT
    assert near.admit(ask(BASE + " please"), split=0) is SkipReason.NEAR_DUPLICATE
    assert near.admit(ask("what is the weather in oslo today and tomorrow"), split=0) is None

    exact = PromptFilter(DedupParams(mode="exact"), check_leakage=False)
    assert exact.admit(ask(BASE), split=0) is None
    assert exact.admit(ask(BASE + " please"), split=0) is None

    leakage = PromptFilter(DedupParams(), check_leakage=True)  # dedup off: only across splits
    assert leakage.admit(ask(BASE), split=0) is None
    assert leakage.admit(ask(BASE), split=0) is None, "the same split: dedup is off"
    assert leakage.admit(ask(BASE + " please"), split=1) is SkipReason.EVAL_LEAKAGE
    assert leakage.admit(ask("a different question about billing entirely"), split=1) is None

    off = PromptFilter(DedupParams(), check_leakage=False)
    assert not off.active and off.admit(ask(BASE), split=0) is None and off.saved() == b""


def test_saved_state_carries_to_the_next_chunk() -> None:
    first = PromptFilter(DedupParams(mode="near"), check_leakage=True)
    assert first.admit(ask(BASE), split=1) is None
    later = PromptFilter(DedupParams(mode="near"), check_leakage=True)
    later.load(first.saved())
    assert later.admit(ask(BASE), split=1) is SkipReason.DUPLICATE_PROMPT
    assert later.admit(ask(BASE + " please"), split=0) is SkipReason.EVAL_LEAKAGE


def test_signatures_are_the_values_datasketch_computes() -> None:
    """Saved states of earlier chunks and the LSH band keys hold datasketch's own MinHash values: the
    filter's must equal `MinHash.update_batch` over the prompt's word pairs (the whole prompt when it
    is one word), for every kind of prompt."""
    rng = random.Random(17)
    vocabulary = ["rotate", "keys", "acct42", "?", "naïve", "ünïcödé", "日本語の質問", "emoji🙂", "ÆØÅ", "x" * 300, "é"]
    texts = ["", "one", "日本", "🙂", "  spaced   out \n words ", "same same same same"]
    texts += [" ".join(rng.choices(vocabulary, k=rng.randint(1, 60))) for _ in range(300)]
    texts += [" ".join(rng.choices(vocabulary, k=5_000)), " ".join(f"w{n}" for n in range(3_000))]
    prompts = PromptFilter(DedupParams(mode="near"), check_leakage=True)
    for text in texts:
        words = text.split()
        reference = MinHash(num_perm=NUM_PERM)
        reference.update_batch([f"{a} {b}".encode() for a, b in itertools.pairwise(words)] or [text.encode()])
        signature = prompts._signature(text)
        assert signature.hashvalues.dtype == reference.hashvalues.dtype, "the band keys are the values' bytes"
        assert np.array_equal(signature.hashvalues, reference.hashvalues), text[:80]
        assert (signature.seed, signature.scheme) == (reference.seed, reference.scheme)


def test_the_prompt_leaves_out_system_messages_and_keeps_tool_arguments() -> None:
    call = {"id": "c", "type": "function", "function": {"name": "f", "arguments": '{"City": "Oslo"}'}}
    messages = [
        {"role": "developer", "content": "rules"},
        {"role": "user", "content": [{"type": "text", "text": "Weather  THERE?"}]},
        {"role": "assistant", "content": None, "tool_calls": [call]},
    ]
    assert prompt_text(messages) == 'user: weather there? assistant: {"city": "oslo"}'


async def test_a_near_dedup_build_drops_and_counts_in_the_manifest(services: Services) -> None:
    tag = {"category": "dedup-near"}
    unique = [f"question number {n} about topic {n * 7} with its own words w{n}" for n in range(12)]
    texts = [*unique, unique[0], unique[1] + " please", unique[2] + " thanks"]
    await seed(services, [stored(text, metadata=tag) for text in texts])
    request = DatasetParams.model_validate(
        {"kind": "distillation", "filter": {"metadata": tag}, "validation_fraction": 0, "dedup": {"mode": "near"}}
    )
    job = await services.dataset_jobs.submit(request)
    await drain(services)
    job = await read_job(services, job.id)
    assert job.status is DatasetStatus.SUCCEEDED, job.error
    assert job.counts.written == 12
    assert job.counts.skipped == {"duplicate": 1, "near_duplicate": 2}, "an identical line stays a `duplicate`"
    manifest = json.loads(await download(services, job.id, "manifest.json"))
    assert manifest["selection"]["dedup"] == {"mode": "near", "threshold": 0.8}
    assert manifest["dedup"] == {
        "mode": "near",
        "threshold": 0.8,
        "exact_duplicates_dropped": 0,
        "near_duplicates_dropped": 2,
        "leakage": {"checked": False, "found": 0, "removed": 0},
    }


async def test_every_split_build_removes_leakage_across_chunks(services: Services) -> None:
    """Dedup off, a validation split: near-duplicates in different groups end up in different files
    unless the leakage check drops them, also when they are read by different chunks."""
    tag = {"category": "dedup-leak"}
    groups = [f"g{n}" for n in range(200)]
    train = [g for g in groups if not in_validation("m:" + g, seed=0, fraction=0.3)][:12]
    validation = [g for g in groups if in_validation("m:" + g, seed=0, fraction=0.3)][:3]
    completions = [
        stored(f"question {n} on its own subject number {n}", metadata={**tag, "g": g}) for n, g in enumerate(train)
    ]
    completions += [stored(BASE + f" variant {n}", metadata={**tag, "g": g}) for n, g in enumerate(validation[:2])]
    completions.append(stored(BASE + " variant 9", metadata={**tag, "g": train[0]}))  # train: leaks
    completions.append(stored(BASE + " variant 7", metadata={**tag, "g": train[1]}))  # train: leaks
    completions.append(stored(BASE + " variant 8", metadata={**tag, "g": validation[0]}))  # same split: kept
    await seed(services, completions)
    chunked = DatasetJobs(
        records=services.dataset_jobs.records,
        store=services.store,
        membership=services.dataset_jobs.membership,
        job_queue=services.job_queue,
        queue_name=services.settings.dataset_jobs_queue,
        limits=BuildLimits(chunk_completions=5),
    )
    request = DatasetParams.model_validate(
        {"kind": "distillation", "filter": {"metadata": tag}, "validation_fraction": 0.3, "group_by": "g"}
    )
    job = await chunked.submit(request)
    await drain(services, chunked)
    job = await read_job(services, job.id)
    assert job.status is DatasetStatus.SUCCEEDED, job.error
    assert job.runs > 1, "the build ran in several chunks"
    assert job.counts.skipped == {"eval_leakage": 2}
    manifest = json.loads(await download(services, job.id, "manifest.json"))
    assert manifest["dedup"]["leakage"] == {"checked": True, "found": 2, "removed": 2}
    validation_prompts = [
        json.loads(line)["messages"][0]["content"]
        for line in (await download(services, job.id, "validation.jsonl")).splitlines()
    ]
    assert validation_prompts == [BASE + " variant 0", BASE + " variant 1", BASE + " variant 8"]
