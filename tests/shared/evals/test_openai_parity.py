"""Definitions copied from OpenAI's Evals docs and cookbooks grade as they do there: graders whose
message content is a part or a list of parts, a score schema Azure OpenAI's strict mode accepts, and
an empty text that resembles nothing without an embeddings call."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from shared.evals.graders import check_templates, grade, parse_testing_criteria
from shared.upstream.client import HttpUpstream, openai_compatible_url
from shared.upstream.model_calls import ModelCalls
from tests.fakes import FakeUpstream, Reply
from tests.shared.evals.test_graders import METRICS

ITEM = {"question": "What is the capital of France?"}
SAMPLE = {"output_text": "Paris", "model": "m", "output": [{"role": "assistant", "content": "Paris"}]}
STRICT_FORBIDDEN = {"minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "multipleOf"}


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
        yield ModelCalls(upstream=upstream, max_attempts=1)


def keys(schema: Any) -> set[str]:
    if isinstance(schema, dict):
        return set(schema) | {key for value in schema.values() for key in keys(value)}
    if isinstance(schema, list):
        return {key for value in schema for key in keys(value)}
    return set()


async def test_score_model_schema_is_strict_mode_safe_and_the_range_still_holds(
    calls: ModelCalls, fake_upstream: FakeUpstream
) -> None:
    (criterion,) = parse_testing_criteria(
        [
            {
                "type": "score_model",
                "name": "quality",
                "model": "grader",
                "input": [{"role": "user", "content": "Rate {{sample.output_text}}"}],
                "range": [1, 5],
            }
        ]
    )
    fake_upstream.script(Reply(message={"role": "assistant", "content": '{"steps": [], "score": 7}'}))
    result = await grade(criterion, item=ITEM, sample=SAMPLE, calls=calls, metrics=METRICS, embeddings_deployment="e")
    (request,) = fake_upstream.requests
    response_format = request["body"]["response_format"]["json_schema"]
    assert response_format["strict"] is True and not keys(response_format["schema"]) & STRICT_FORBIDDEN
    assert "1 to 5" in response_format["schema"]["properties"]["score"]["description"]
    assert result.error is not None and not result.passed  # 7 is outside [1, 5]: the code checks it


@pytest.mark.parametrize(
    "content",
    [
        {"type": "input_text", "text": "Q: {{item.question}} A: {{sample.output_text}}"},
        [
            {"type": "input_text", "text": "Q: {{item.question}}"},
            {"type": "input_text", "text": " A: {{sample.output_text}}"},
        ],
    ],
)
async def test_grader_content_as_a_part_or_parts(calls: ModelCalls, fake_upstream: FakeUpstream, content: Any) -> None:
    criteria = parse_testing_criteria(
        [
            {
                "type": "label_model",
                "name": "judge",
                "model": "grader",
                "input": [{"type": "message", "role": "developer", "content": content}],
                "labels": ["good", "bad"],
                "passing_labels": ["good"],
            }
        ]
    )
    check_templates(criteria, item_schema=None, sample_available=True)
    fake_upstream.script(Reply(message={"role": "assistant", "content": '{"steps": [], "label": "good"}'}))
    result = await grade(criteria[0], item=ITEM, sample=SAMPLE, calls=calls, metrics=METRICS, embeddings_deployment="e")
    assert result.passed and result.error is None
    (request,) = fake_upstream.requests
    assert request["body"]["messages"] == [
        {"role": "developer", "content": "Q: What is the capital of France? A: Paris"}
    ]


@pytest.mark.parametrize(("hypothesis", "reference"), [("", "Paris"), ("Paris", "  "), ("", "")])
async def test_cosine_of_an_empty_text_is_zero_without_an_embeddings_call(
    calls: ModelCalls, fake_upstream: FakeUpstream, hypothesis: str, reference: str
) -> None:
    (criterion,) = parse_testing_criteria(
        [
            {
                "type": "text_similarity",
                "name": "cos",
                "input": hypothesis,
                "reference": reference,
                "evaluation_metric": "cosine",
                "pass_threshold": 0.5,
            }
        ]
    )
    result = await grade(criterion, item=ITEM, sample=SAMPLE, calls=calls, metrics=METRICS, embeddings_deployment="e")
    assert (result.score, result.passed, result.error) == (0.0, False, None)
    assert fake_upstream.requests == []
