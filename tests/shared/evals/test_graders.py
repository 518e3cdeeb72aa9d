"""Graders on known pairs, templates, and model calls against the fake upstream (429s, garbage, failures)."""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
import sacrebleu
from nltk.translate.gleu_score import sentence_gleu
from rapidfuzz.distance import Indel
from rouge_score import rouge_scorer

from shared.evals.graders import (
    MAX_TESTING_CRITERIA,
    GradeResult,
    check_templates,
    grade,
    make_sample,
    parse_testing_criteria,
)
from shared.evals.metrics import TextMetrics
from shared.evals.templates import MAX_TEMPLATE_CHARS, check_variables, render, render_messages, variables
from shared.platform.errors import InvalidRequest
from shared.upstream.client import HttpUpstream, openai_compatible_url
from shared.upstream.model_calls import ModelCalls, UpstreamCallFailed
from shared.upstream.offline_model import OfflineModel
from tests.fakes import FakeUpstream, Reply, letter_embedding

ITEM = {"question": "What is the capital of France?", "answer": "Paris", "tags": ["geo", "easy"]}
EMBEDDINGS = "embed-deployment"
METRICS = TextMetrics(max_chars=20_000, timeout_seconds=30)


@pytest.fixture
async def calls(fake_upstream: FakeUpstream) -> AsyncIterator[ModelCalls]:
    async with aiohttp.ClientSession() as session:

        async def no_auth() -> dict[str, str]:
            return {}

        upstream = HttpUpstream(
            session=session,
            url_for=openai_compatible_url(fake_upstream.base_url),
            auth_headers=no_auth,
            model_for=lambda deployment: deployment,
        )
        yield ModelCalls(upstream=upstream, max_attempts=3, backoff_seconds=0.01)


async def grade_one(criterion: dict[str, Any], calls: ModelCalls, sample: dict[str, Any] | None = None) -> GradeResult:
    (parsed,) = parse_testing_criteria([criterion])
    return await grade(parsed, item=ITEM, sample=sample, calls=calls, metrics=METRICS, embeddings_deployment=EMBEDDINGS)


def sample_of(text: str) -> dict[str, Any]:
    return {"output_text": text, "model": "m", "output": [{"role": "assistant", "content": text}]}


def test_templates_fill_item_and_sample_paths() -> None:
    sample = {"output_text": "Paris!", "output_json": {"city": "Paris"}}
    text = "Q: {{item.question}} A: {{ sample.output_text }} J: {{sample.output_json.city}} T: {{item.tags.1}} {{item.tags}}"
    assert render(text, item=ITEM, sample=sample) == (
        'Q: What is the capital of France? A: Paris! J: Paris T: easy ["geo", "easy"]'
    )
    assert render("{{item.missing}}|{{sample.output_text}}", item=ITEM, sample=None) == "|"
    messages = render_messages(
        [
            {"role": "system", "content": "Be brief."},
            {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "{{item.question}}"}]},
        ],
        item=ITEM,
        sample=None,
    )
    assert messages == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "What is the capital of France?"},
    ]


def test_unclosed_braces_are_scanned_in_linear_time() -> None:
    """`{{` plus spaces took 8.7 s at 2,500 characters with the old pattern (cubic): at 25 times that
    length a linear scan still takes milliseconds, so a generous bound tells the two apart."""
    started = time.perf_counter()
    for text in ("{{" + " " * 2_500, "{{" + " " * 60_000, "{{ a" * 15_000, "{{" + " " * 30_000 + "}"):
        assert variables(text) == []
        assert render(text, item=ITEM, sample=None) == text
    assert time.perf_counter() - started < 2.0
    assert variables("{{  item.answer  }} {{sample.output_text}}") == ["item.answer", "sample.output_text"]


def test_an_over_long_template_is_a_400() -> None:
    check_variables(["x" * MAX_TEMPLATE_CHARS], item_schema=None, sample_available=True, param="p")
    with pytest.raises(InvalidRequest) as refused:
        check_variables(["{{" + " " * MAX_TEMPLATE_CHARS], item_schema=None, sample_available=True, param="p")
    assert refused.value.code == "template_too_long" and str(MAX_TEMPLATE_CHARS) in refused.value.message
    with pytest.raises(InvalidRequest, match="characters"):
        parse_and_check = parse_testing_criteria(
            [{"type": "string_check", "name": "s", "input": "a" * 70_000, "reference": "b", "operation": "eq"}]
        )
        check_templates(parse_and_check, item_schema=None, sample_available=True)


@pytest.mark.parametrize(
    ("text", "sample_available", "problem"),
    [
        ("{{item.nope}}", True, "item schema declares answer, question"),
        ("{{sample.output_text}}", False, "has none"),
        ("{{sample.bogus}}", True, "a sample offers"),
        ("{{ctx.x}}", True, "Unknown template variable"),
    ],
)
def test_unknown_template_variables_are_refused(text: str, sample_available: bool, problem: str) -> None:
    schema = {"type": "object", "properties": {"question": {}, "answer": {}}}
    with pytest.raises(InvalidRequest) as raised:
        check_variables([text], item_schema=schema, sample_available=sample_available, param="p")
    assert problem in raised.value.message and raised.value.code == "invalid_template"


@pytest.mark.parametrize(
    ("criteria", "param", "code"),
    [
        (
            [{"type": "python", "name": "p", "source": "def grade(s, i): return 1"}],
            "testing_criteria[0].type",
            "unsupported_grader",
        ),
        (
            [{"type": "string_check", "name": "s", "input": "a", "reference": "b", "operation": "regex"}],
            "testing_criteria[0].operation",
            "invalid_value",
        ),
        (
            [{"type": "string_check", "name": "s", "input": "a", "reference": "b"}],
            "testing_criteria[0].operation",
            "invalid_value",
        ),
        ([{"type": "telepathy", "name": "t"}], "testing_criteria[0]", "invalid_value"),
        (
            [{"type": "text_similarity", "name": "t", "input": "a", "reference": "b", "evaluation_metric": "bleu"}],
            "testing_criteria[0].pass_threshold",
            "invalid_value",
        ),
        (
            [
                {
                    "type": "label_model",
                    "name": "l",
                    "model": "m",
                    "input": [{"role": "user", "content": "x"}],
                    "labels": ["a"],
                    "passing_labels": ["b"],
                }
            ],
            "testing_criteria[0]",
            "invalid_value",
        ),
        (
            [{"type": "string_check", "name": "same", "input": "a", "reference": "b", "operation": "eq"}] * 2,
            "testing_criteria",
            None,
        ),
        ([], "testing_criteria", None),
    ],
)
def test_bad_criteria_are_400s_naming_the_field(criteria: list[Any], param: str, code: str | None) -> None:
    with pytest.raises(InvalidRequest) as raised:
        parse_testing_criteria(criteria)
    assert raised.value.param == param
    if code:
        assert raised.value.code == code


def test_criteria_templates_are_checked_against_the_schema() -> None:
    criteria = parse_testing_criteria(
        [
            {
                "type": "string_check",
                "name": "s",
                "input": "{{sample.output_text}}",
                "reference": "{{item.answr}}",
                "operation": "eq",
            }
        ]
    )
    schema = {"type": "object", "properties": {"answer": {}}}
    with pytest.raises(InvalidRequest) as raised:
        check_templates(criteria, item_schema=schema, sample_available=True)
    assert raised.value.param == "testing_criteria[0]" and "answr" in raised.value.message


@pytest.mark.parametrize(
    ("operation", "output", "passed"),
    [
        ("eq", "Paris", True),
        ("eq", "paris", False),
        ("ne", "Lyon", True),
        ("ne", "Paris", False),
        ("like", "It is Paris.", True),
        ("like", "It is paris.", False),
        ("ilike", "IT IS PARIS.", True),
        ("ilike", "Lyon", False),
    ],
)
async def test_string_check(calls: ModelCalls, operation: str, output: str, passed: bool) -> None:
    criterion = {
        "type": "string_check",
        "name": "s",
        "input": "{{sample.output_text}}",
        "reference": "{{item.answer}}",
        "operation": operation,
    }
    result = await grade_one(criterion, calls, sample_of(output))
    assert (result.passed, result.score, result.error) == (passed, float(passed), None)


HYPOTHESIS = "the cat sat on a mat near the door"
REFERENCE = "the cat sat on the mat by the door"


def _independent(metric: str) -> float:
    """The metric computed straight from its library, as the tests' oracle."""
    if metric == "fuzzy_match":
        return Indel.normalized_similarity(HYPOTHESIS, REFERENCE)
    if metric == "bleu":
        return sacrebleu.sentence_bleu(HYPOTHESIS, [REFERENCE]).score / 100
    if metric == "gleu":
        return sentence_gleu([REFERENCE.split()], HYPOTHESIS.split())
    kind = {"rouge_l": "rougeL"}.get(metric, metric.replace("_", ""))
    return rouge_scorer.RougeScorer([kind], use_stemmer=True).score(REFERENCE, HYPOTHESIS)[kind].fmeasure


@pytest.mark.parametrize(
    "metric", ["fuzzy_match", "bleu", "gleu", "rouge_1", "rouge_2", "rouge_3", "rouge_4", "rouge_5", "rouge_l"]
)
async def test_text_similarity_matches_its_library(calls: ModelCalls, metric: str) -> None:
    expected = _independent(metric)
    assert 0 < expected < 1 or metric in ("rouge_4", "rouge_5")
    for threshold, passed in ((expected, True), (min(1.0, expected + 0.01), False)):
        criterion = {
            "type": "text_similarity",
            "name": metric,
            "input": "{{sample.output_text}}",
            "reference": REFERENCE,
            "evaluation_metric": metric,
            "pass_threshold": threshold,
        }
        result = await grade_one(criterion, calls, sample_of(HYPOTHESIS))
        assert result.score == pytest.approx(expected) and result.passed is passed


def similarity(metric: str, hypothesis: str, reference: str, threshold: float = 0.5) -> dict[str, Any]:
    return {
        "type": "text_similarity",
        "name": metric,
        "input": hypothesis,
        "reference": reference,
        "evaluation_metric": metric,
        "pass_threshold": threshold,
    }


async def test_meteor_scores_exact_and_stemmed_matches(calls: ModelCalls) -> None:
    same = await grade_one(similarity("meteor", REFERENCE, REFERENCE), calls)
    stemmed = await grade_one(similarity("meteor", "the cats sitting", "the cat sits"), calls)
    unrelated = await grade_one(similarity("meteor", "blue whale", "the cat sits"), calls)
    assert same.score > 0.99 and same.passed
    assert 0.5 < stemmed.score < same.score
    assert unrelated.score == 0 and not unrelated.passed


async def test_cosine_uses_the_upstream_embeddings(calls: ModelCalls, fake_upstream: FakeUpstream) -> None:
    first, second = letter_embedding(HYPOTHESIS), letter_embedding(REFERENCE)
    expected = sum(a * b for a, b in zip(first, second, strict=True)) / (
        math.sqrt(sum(a * a for a in first)) * math.sqrt(sum(b * b for b in second))
    )
    criterion = {
        "type": "text_similarity",
        "name": "c",
        "input": HYPOTHESIS,
        "reference": REFERENCE,
        "evaluation_metric": "cosine",
        "pass_threshold": 0.9,
    }
    result = await grade_one(criterion, calls)
    assert result.score == pytest.approx(expected) and result.passed is (expected >= 0.9)
    (request,) = fake_upstream.requests
    assert request["url"].endswith("/v1/embeddings") and request["body"]["model"] == EMBEDDINGS


LABEL = {
    "type": "label_model",
    "name": "judge",
    "model": "grader-4o",
    "input": [
        {"role": "system", "content": "Is the answer right?"},
        {"role": "user", "content": "{{item.question}} / {{sample.output_text}}"},
    ],
    "labels": ["correct", "incorrect"],
    "passing_labels": ["correct"],
}
SCORE = {
    "type": "score_model",
    "name": "quality",
    "model": "grader-4o",
    "input": [{"role": "user", "content": "Rate {{sample.output_text}} from 1 to 5"}],
    "range": [1, 5],
    "pass_threshold": 4,
}


def answer(content: str) -> Reply:
    return Reply(message={"role": "assistant", "content": content})


@pytest.mark.parametrize(
    ("criterion", "reply", "score", "passed"),
    [
        (LABEL, '{"steps": [], "label": "correct"}', 1.0, True),
        (LABEL, '{"steps": [], "label": "incorrect"}', 0.0, False),
        (SCORE, '{"steps": ["ok"], "score": 4.5}', 4.5, True),
        (SCORE, '{"steps": [], "score": 2}', 2.0, False),
    ],
)
async def test_model_graders(
    calls: ModelCalls, fake_upstream: FakeUpstream, criterion: dict[str, Any], reply: str, score: float, passed: bool
) -> None:
    fake_upstream.script(answer(reply))
    result = await grade_one(criterion, calls, sample_of("Paris"))
    assert (result.score, result.passed, result.error) == (score, passed, None)
    (request,) = fake_upstream.requests
    body = request["body"]
    assert body["model"] == "grader-4o" and body["response_format"]["type"] == "json_schema"
    assert body["messages"][-1]["content"] in ("What is the capital of France? / Paris", "Rate Paris from 1 to 5")
    assert result.usage == {"grader-4o": {"prompt_tokens": 7, "completion_tokens": 3, "total_tokens": 10}}


@pytest.mark.parametrize(
    ("criterion", "reply"), [(LABEL, "It is correct!"), (LABEL, '{"label": "maybe"}'), (SCORE, '{"score": 9}')]
)
async def test_a_grader_answer_outside_its_schema_is_an_error_not_a_pass(
    calls: ModelCalls, fake_upstream: FakeUpstream, criterion: dict[str, Any], reply: str
) -> None:
    fake_upstream.script(answer(reply))
    result = await grade_one(criterion, calls, sample_of("Paris"))
    assert result.passed is False and result.error is not None and "did not answer" in result.error


async def test_429_is_retried_after_the_upstreams_retry_after(calls: ModelCalls, fake_upstream: FakeUpstream) -> None:
    busy = {"error": {"message": "Rate limit", "type": "rate_limit", "code": "429"}}
    fake_upstream.script(
        Reply(status=429, body=busy, headers={"retry-after-ms": "150"}), answer('{"steps": [], "label": "correct"}')
    )
    loop = asyncio.get_running_loop()
    started = loop.time()
    result = await grade_one(LABEL, calls, sample_of("Paris"))
    assert result.passed and len(fake_upstream.requests) == 2
    assert loop.time() - started >= 0.15


async def test_a_failing_upstream_is_reported_with_its_status(calls: ModelCalls, fake_upstream: FakeUpstream) -> None:
    broken = {"error": {"message": "deployment is broken", "type": "server_error", "code": "boom"}}
    fake_upstream.script(*[Reply(status=500, body=broken)] * 3)
    result = await grade_one(LABEL, calls, sample_of("Paris"))
    assert result.passed is False and "deployment is broken" in (result.error or "")
    assert len(fake_upstream.requests) == 3  # max_attempts
    fake_upstream.script(Reply(status=400, body={"error": {"message": "bad", "code": "invalid"}}))
    with pytest.raises(UpstreamCallFailed) as raised:
        await calls.chat(deployment="x", body={"messages": []})
    assert (raised.value.upstream_status, raised.value.code) == (400, "invalid")
    assert len(fake_upstream.requests) == 4  # a 400 is not retried


async def test_offline_embeddings_are_deterministic_and_graded() -> None:
    offline = ModelCalls(upstream=OfflineModel())
    first, again, other = await offline.embed(deployment="any", texts=["red apple", "red apple", "blue sky"])
    assert first == again and first != other
    criterion = parse_testing_criteria(
        [
            {
                "type": "text_similarity",
                "name": "c",
                "input": "red apple",
                "reference": "red apple",
                "evaluation_metric": "cosine",
                "pass_threshold": 0.99,
            }
        ]
    )[0]
    result = await grade(criterion, item={}, sample=None, calls=offline, metrics=METRICS, embeddings_deployment="any")
    assert result.passed and result.score == pytest.approx(1.0)


def test_sample_from_a_completion() -> None:
    from openai.types.chat import ChatCompletion

    completion = ChatCompletion.model_validate(
        {
            "id": "c",
            "object": "chat.completion",
            "created": 1,
            "model": "gpt-x",
            "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": '{"a": 1}'}}],
            "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5},
        }
    )
    sample = make_sample(input_messages=[{"role": "user", "content": "hi"}], completion=completion)
    assert sample["output_text"] == '{"a": 1}' and sample["output_json"] == {"a": 1}
    assert sample["usage"]["total_tokens"] == 5 and sample["model"] == "gpt-x"
    assert sample["input"] == [{"role": "user", "content": "hi"}]


async def test_a_redirecting_upstream_is_neither_followed_nor_retried(
    calls: ModelCalls, fake_upstream: FakeUpstream
) -> None:
    fake_upstream.script(Reply(status=307, headers={"location": f"{fake_upstream.base_url}/chat/completions"}))
    with pytest.raises(UpstreamCallFailed) as raised:
        await calls.chat(deployment="x", body={"messages": [{"role": "user", "content": "hi"}]})
    assert (raised.value.upstream_status, raised.value.code) == (307, "upstream_redirect")
    assert len(fake_upstream.requests) == 1


def words(count: int, seed: int) -> str:
    vocabulary = [
        "the",
        "quick",
        "brown",
        "fox",
        "jumps",
        "over",
        "a",
        "lazy",
        "dog",
        "near",
        "river",
        "bank",
        "today",
        "while",
        "birds",
        "sing",
    ]
    return " ".join(vocabulary[(n * 7 + seed * 3 + n // 5) % len(vocabulary)] for n in range(count))


async def test_an_over_long_pair_is_an_error_result_not_a_frozen_worker(calls: ModelCalls) -> None:
    long_text = "word " * 5_000  # 25,000 characters: over the 20,000 cap
    started = time.perf_counter()
    result = await grade_one(similarity("rouge_l", long_text, "word"), calls)
    assert time.perf_counter() - started < 1.0  # refused, not scored (scoring takes minutes)
    assert result.error is not None and result.passed is False and result.score == 0
    assert "25000 and 4 characters" in result.error and "EVAL_MAX_COMPARED_CHARS" in result.error


async def test_a_score_past_its_timeout_is_an_error_and_the_pool_recovers(calls: ModelCalls) -> None:
    metrics = TextMetrics(max_chars=20_000, timeout_seconds=0.3, processes=1)
    try:
        (slow,) = parse_testing_criteria([similarity("rouge_l", words(3_000, 1), words(3_000, 2))])
        result = await grade(slow, item={}, sample=None, calls=calls, metrics=metrics, embeddings_deployment="e")
        assert result.error is not None and "longer than 0.3 s" in result.error
        metrics.timeout_seconds = 60
        (fine,) = parse_testing_criteria([similarity("rouge_l", words(300, 1), words(300, 1))])
        again = await grade(fine, item={}, sample=None, calls=calls, metrics=metrics, embeddings_deployment="e")
        assert again.error is None and again.score == pytest.approx(1.0)
    finally:
        metrics.close()


async def test_chat_calls_keep_flowing_while_big_rows_are_graded(
    calls: ModelCalls, fake_upstream: FakeUpstream
) -> None:
    """ROUGE on a row near the cap takes seconds of CPU: in the pool, the event loop stays free."""
    metrics = TextMetrics(max_chars=20_000, timeout_seconds=120, processes=2)
    rows = [parse_testing_criteria([similarity("rouge_l", words(1_300, n), words(1_300, n + 1))])[0] for n in range(4)]
    latencies: list[float] = []
    grading = asyncio.gather(
        *(grade(row, item={}, sample=None, calls=calls, metrics=metrics, embeddings_deployment="e") for row in rows)
    )
    try:
        started = time.perf_counter()
        while not grading.done():
            asked = time.perf_counter()
            await calls.chat(deployment="chat", body={"messages": [{"role": "user", "content": "hi"}]})
            latencies.append(time.perf_counter() - asked)
        graded_in = time.perf_counter() - started
        assert all(result.error is None for result in grading.result())
    finally:
        metrics.close()
    # Inline, each row would hold the loop for its whole score (over a second here): no call could
    # answer faster than that. Off the loop, calls keep answering within a fraction of it.
    assert graded_in > 1.0, "the rows graded too fast to show anything"
    assert len(latencies) >= 10 and max(latencies) < graded_in / 2


def test_more_testing_criteria_than_the_cap_is_a_400() -> None:
    criterion = {"type": "string_check", "input": "a", "reference": "a", "operation": "eq"}
    parse_testing_criteria([{**criterion, "name": f"c{n}"} for n in range(MAX_TESTING_CRITERIA)])
    with pytest.raises(InvalidRequest) as refused:
        parse_testing_criteria([{**criterion, "name": f"c{n}"} for n in range(MAX_TESTING_CRITERIA + 1)])
    assert refused.value.code == "too_many_testing_criteria" and refused.value.param == "testing_criteria"
