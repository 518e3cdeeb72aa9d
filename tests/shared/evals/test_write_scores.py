"""Grader write-back: a run with `write_scores` leaves each label_model / score_model verdict as a score
on the stored completion it graded, filterable like any score; without it nothing is written."""

from __future__ import annotations

import json
from typing import Any

import pytest
from azure.storage.queue.aio import QueueClient

from local_host.azurite import Azurite
from shared.evals.params import EvalCreateParams, RunCreateParams
from shared.evals.records import RunStatus
from shared.platform.access import Caller, Right
from shared.platform.errors import InvalidRequest
from shared.services import Services
from shared.store.completion_filter import CompletionFilter
from tests.conftest import ServicesFactory
from tests.fakes import FakeUpstream, Reply
from tests.shared.evals.test_service import drain, state
from tests.shared.seed import completion

JUDGE_INPUT = [{"role": "user", "content": "Grade: {{sample.output_text}}"}]
TONE = {
    "type": "label_model",
    "name": "tone",
    "model": "judge",
    "input": JUDGE_INPUT,
    "labels": ["friendly", "curt"],
    "passing_labels": ["friendly"],
}
QUALITY = {"type": "score_model", "name": "quality", "model": "judge", "input": JUDGE_INPUT, "range": [1, 5]}
CALLER = Caller(name="ann", owner="key:ann", rights=frozenset({Right.ACTION, Right.READ, Right.INFERENCE}))


@pytest.fixture
async def services(azurite: Azurite, make_services: ServicesFactory, fake_upstream: FakeUpstream) -> Services:
    made = await make_services(OPENAI_BASE_URL=fake_upstream.base_url)
    async with QueueClient.from_connection_string(azurite.connection_string, made.settings.eval_jobs_queue) as queue:
        await queue.create_queue()
    return made


async def graded(services: Services, criterion: dict[str, Any], tag: str, **run: Any) -> Any:
    config = {"type": "stored_completions", "metadata": {"tag": tag}}
    record = await services.evals.create_eval(
        EvalCreateParams.model_validate({"data_source_config": config, "testing_criteria": [criterion]}), owner=None
    )
    params = RunCreateParams.model_validate(
        {"data_source": {"type": "completions", "source": {"type": "stored_completions"}}, **run}
    )
    made, _ = await services.evals.create_run(record.id, params, owner=None, report_base="http://t", caller=CALLER)
    return made


def answers(fake: FakeUpstream, answer: dict[str, Any], count: int) -> None:
    fake.script(*[Reply(message={"role": "assistant", "content": json.dumps({"steps": [], **answer})})] * count)


async def test_label_and_score_verdicts_become_scores(
    services: Services, fake_upstream: FakeUpstream, tag: str
) -> None:
    items = [completion(metadata={"tag": tag}) for _ in range(2)]
    for item in items:
        await services.store.put(item)

    labelled = await graded(services, TONE, tag, write_scores=True)
    answers(fake_upstream, {"label": "friendly"}, 2)  # after the run's creation, whose check pings the judge
    await drain(services)
    assert (await state(services, labelled)).status is RunStatus.COMPLETED
    scored = await graded(services, QUALITY, tag, write_scores=True)
    answers(fake_upstream, {"score": 4}, 2)
    await drain(services)
    done = await state(services, scored)
    assert (
        done.status is RunStatus.COMPLETED
        and done.view(
            RunCreateParams.model_validate(
                {"data_source": {"type": "completions", "source": {"type": "stored_completions"}}}
            )
        )["distillery"]["write_scores"]
        is True
    )

    for item in items:
        kept = {score.name: score for score in (await services.store.get(item.id)).scores}
        assert (kept["tone"].value, kept["quality"].value) == ("friendly", 4.0)
        assert (kept["quality"].source, kept["quality"].author) == ("model", "key:ann")
        assert kept["quality"].comment == f"eval {scored.eval_id} run {scored.id}"
    selection = CompletionFilter.model_validate(
        {"metadata": {"tag": tag}, "scores": {"quality": {"gte": 4}, "tone": "friendly"}}
    )
    assert await services.store.index.count(selection) == 2  # indexed like any score


async def test_without_write_scores_nothing_is_written(
    services: Services, fake_upstream: FakeUpstream, tag: str
) -> None:
    item = completion(metadata={"tag": tag})
    await services.store.put(item)
    await graded(services, QUALITY, tag)
    answers(fake_upstream, {"score": 5}, 1)
    await drain(services)
    assert (await services.store.get(item.id)).scores == []


@pytest.mark.parametrize(
    ("criterion", "fragment"),
    [
        (
            {
                "type": "string_check",
                "name": "echo",
                "input": "{{sample.output_text}}",
                "reference": "x",
                "operation": "eq",
            },
            "needs a label_model",
        ),
        ({**QUALITY, "name": "answer quality"}, "cannot be a score name"),
    ],
)
async def test_write_scores_refuses_what_it_cannot_write(
    services: Services, tag: str, criterion: dict[str, Any], fragment: str
) -> None:
    with pytest.raises(InvalidRequest) as refused:
        await graded(services, criterion, tag, write_scores=True)
    assert fragment in refused.value.message and refused.value.param == "write_scores"
