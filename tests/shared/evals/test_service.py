"""The eval run engine on Azurite with the fake upstream: exactly-once counting across killed and
repeated deliveries, continuations, the token cap, cancel, 429s mid-run, poison messages, and the
comparison's arithmetic."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from typing import Any

import pytest
from azure.storage.queue.aio import QueueClient

from local_host.azurite import Azurite
from shared.evals.params import EvalCreateParams, RunCreateParams
from shared.evals.records import EvalRecord, RunRecord, RunStatus
from shared.evals.service import EvalJobMessage, EvalService
from shared.services import Services
from tests.conftest import ServicesFactory
from tests.fakes import FakeUpstream, Reply
from tests.shared.queues import take_message

ECHOES = {
    "type": "string_check",
    "name": "echoes",
    "input": "{{sample.output_text}}",
    "reference": "{{item.q}}",
    "operation": "like",
}
CONFIG = {
    "type": "custom",
    "item_schema": {"type": "object", "properties": {"q": {"type": "string"}}},
    "include_sample_schema": True,
}


@pytest.fixture
async def services(azurite: Azurite, make_services: ServicesFactory, fake_upstream: FakeUpstream) -> Services:
    made = await make_services(OPENAI_BASE_URL=fake_upstream.base_url, EVAL_CONCURRENCY="2")
    async with QueueClient.from_connection_string(azurite.connection_string, made.settings.eval_jobs_queue) as queue:
        await queue.create_queue()
    return made


def with_limits(services: Services, **limits: Any) -> EvalService:
    """The run engine of `services` with other limits (a delivery's time, how often it saves)."""
    return EvalService(
        store=services.evals.store,
        completions=services.store,
        datasets=services.dataset_jobs.records,
        calls=services.model_calls,
        metrics=services.text_metrics,
        budget=services.store.budget,
        job_queue=services.job_queue,
        queue_name=services.settings.eval_jobs_queue,
        limits=replace(services.evals.limits, **limits),
    )


async def output_indexes(services: Services, run: RunRecord) -> list[int]:
    items, _ = await services.evals.output_items(
        run.eval_id, run.id, after=None, limit=100, order="asc", status=None, owner=None
    )
    return [item.index for item in items]


async def receive(services: Services) -> bytes | None:
    return await take_message(services, services.settings.eval_jobs_queue)


async def drain(services: Services, evals: EvalService | None = None) -> int:
    deliveries = 0
    while (body := await receive(services)) is not None:
        await (evals or services.evals).handle(body, delivery_count=1)
        deliveries += 1
    return deliveries


async def new_eval(services: Services, criteria: list[dict[str, Any]] | None = None) -> EvalRecord:
    params = EvalCreateParams.model_validate({"data_source_config": CONFIG, "testing_criteria": criteria or [ECHOES]})
    return await services.evals.create_eval(params, owner=None)


def rerun(count: int, **extra: Any) -> RunCreateParams:
    return RunCreateParams.model_validate(
        {
            "data_source": {
                "type": "completions",
                "model": "student",
                "source": {"type": "file_content", "content": [{"item": {"q": f"q{n}"}} for n in range(count)]},
                "input_messages": {"type": "template", "template": [{"role": "user", "content": "{{item.q}}"}]},
            },
            **extra,
        }
    )


async def start(services: Services, record: EvalRecord, params: RunCreateParams) -> RunRecord:
    run, _ = await services.evals.create_run(record.id, params, owner=None, report_base="http://test")
    return run


async def state(services: Services, run: RunRecord) -> RunRecord:
    return (await services.evals.store.read_run(run.eval_id, run.id))[0]


def candidate_calls(fake: FakeUpstream) -> list[str]:
    return [r["body"]["messages"][0]["content"] for r in fake.requests if r["body"]["messages"][0]["content"] != "ping"]


async def test_a_run_grades_every_item_once(services: Services, fake_upstream: FakeUpstream) -> None:
    record = await new_eval(services)
    run = await start(services, record, rerun(5))
    await drain(services)
    done = await state(services, run)
    assert done.status is RunStatus.COMPLETED and done.items_total == 5 and done.next_index == 5
    assert done.result_counts.model_dump() == {"total": 5, "passed": 5, "failed": 0, "errored": 0}
    assert done.per_model_usage["student"].invocation_count == 5 and done.tokens_used == 50
    assert sorted(candidate_calls(fake_upstream)) == [f"q{n}" for n in range(5)]

    again = EvalJobMessage(eval_id=run.eval_id, run_id=run.id).model_dump_json().encode()
    await services.evals.handle(again, delivery_count=2)  # a duplicate delivery changes nothing
    assert (await state(services, run)).model_dump() == done.model_dump()
    assert len(candidate_calls(fake_upstream)) == 5


async def test_a_killed_delivery_resumes_and_counts_exactly_once(
    services: Services, fake_upstream: FakeUpstream
) -> None:
    record = await new_eval(services)
    fake_upstream.script(*[Reply(delay_seconds=0.05)] * 40)
    run = await start(services, record, rerun(12))
    body = await receive(services)
    assert body is not None
    evals = with_limits(services, save_every_items=2)
    killed = asyncio.create_task(evals.handle(body, delivery_count=1))
    for _ in range(500):
        if (await state(services, run)).next_index >= 4 or killed.done():
            break
        await asyncio.sleep(0.01)
    assert not killed.done(), "the delivery finished before it could be interrupted"
    killed.cancel()
    with pytest.raises(asyncio.CancelledError):
        await killed
    interrupted = await state(services, run)
    assert interrupted.status is RunStatus.IN_PROGRESS and 4 <= interrupted.next_index < 12

    await evals.handle(body, delivery_count=2)  # the redelivery
    done = await state(services, run)
    assert done.status is RunStatus.COMPLETED
    assert done.result_counts.model_dump() == {"total": 12, "passed": 12, "failed": 0, "errored": 0}
    indexes = await output_indexes(services, run)
    assert indexes == list(range(12))
    calls = candidate_calls(fake_upstream)
    assert set(calls) == {f"q{n}" for n in range(12)}
    # only the items not yet written at the kill are asked again: the window and one unsaved group
    assert len(calls) <= 12 + 2 * evals.limits.concurrency + evals.limits.save_every_items
    # every answered call counts, even those of items written by no one; only calls cut off mid-flight
    # by the kill (at most one per concurrency slot) have no answer to count
    counted = done.per_model_usage["student"].invocation_count
    assert len(calls) - evals.limits.concurrency <= counted <= len(calls) and done.tokens_used == 10 * counted


async def test_a_delivery_out_of_time_continues_in_the_next_message(
    services: Services, fake_upstream: FakeUpstream
) -> None:
    record = await new_eval(services)
    hurried = with_limits(services, chunk_seconds=0.0)
    run = await start(services, record, rerun(5))
    deliveries = await drain(services, hurried)
    done = await state(services, run)
    assert done.status is RunStatus.COMPLETED and done.result_counts.total == 5
    assert deliveries == 5 and done.part == 4  # out of time at once: one item per delivery


async def test_the_token_cap_stops_the_run_cleanly(services: Services, fake_upstream: FakeUpstream) -> None:
    record = await new_eval(services)
    run = await start(services, record, rerun(10, max_total_tokens=35))  # 10 tokens per fake call
    await drain(services)
    done = await state(services, run)
    assert done.status is RunStatus.FAILED and done.error is not None and done.error.code == "token_cap_reached"
    assert done.result_counts.total == 4 == done.next_index  # batches of 2: 20, 40 >= 35 stops
    assert done.tokens_used == 40 and "35" in done.error.message
    assert await output_indexes(services, run) == [0, 1, 2, 3]


async def test_429_mid_run_is_waited_out(services: Services, fake_upstream: FakeUpstream) -> None:
    record = await new_eval(services)
    run = await start(services, record, rerun(2))
    fake_upstream.script(Reply(status=429, body={"error": {"message": "slow down"}}, headers={"retry-after-ms": "100"}))
    await drain(services)
    done = await state(services, run)
    assert done.result_counts.model_dump() == {"total": 2, "passed": 2, "failed": 0, "errored": 0}
    assert len(candidate_calls(fake_upstream)) == 3


async def test_an_upstream_that_keeps_failing_errors_the_item_not_the_run(
    services: Services, fake_upstream: FakeUpstream
) -> None:
    record = await new_eval(services)
    run = await start(services, record, rerun(1))
    fake_upstream.script(
        *[Reply(status=400, body={"error": {"message": "content filtered", "code": "content_filter"}})]
    )
    await drain(services)
    done = await state(services, run)
    assert done.status is RunStatus.COMPLETED and done.result_counts.errored == 1
    (item,) = (
        await services.evals.output_items(
            run.eval_id, run.id, after=None, limit=10, order="asc", status=None, owner=None
        )
    )[0]
    assert item.status == "error" and "content filtered" in (item.sample_error or "")
    assert "HTTP 400" in item.view()["sample"]["error"]["message"]


async def test_cancel_stops_a_queued_run_at_once(services: Services) -> None:
    record = await new_eval(services)
    run = await start(services, record, rerun(3))
    canceled = await services.evals.cancel_run(run.eval_id, run.id, owner=None)
    assert canceled.status is RunStatus.CANCELED
    await drain(services)
    assert (await state(services, run)).result_counts.total == 0


async def test_a_poison_message_fails_the_run_on_its_last_delivery(services: Services) -> None:
    record = await new_eval(services)
    run = await start(services, record, rerun(1))
    await receive(services)
    await services.evals.store.delete_tree(f"{run.eval_id}/runs/{run.id}/request.json")
    body = EvalJobMessage(eval_id=run.eval_id, run_id=run.id).model_dump_json().encode()
    for delivery in (1, 4):
        with pytest.raises(Exception, match="run"):
            await services.evals.handle(body, delivery_count=delivery)
        assert not (await state(services, run)).finished
    await services.evals.handle(body, delivery_count=5)  # the last: it does not try again, it settles
    after = await state(services, run)
    assert after.status is RunStatus.FAILED and after.error is not None
    assert after.error.message.startswith("The run failed 4 times") and run.id in after.error.message
    with pytest.raises(ValueError):
        await services.evals.handle(b'{"nonsense": true}', delivery_count=1)


async def test_comparison_counts_wins_ties_and_the_pass_rate_delta(services: Services) -> None:
    exact = {
        "type": "string_check",
        "name": "exact",
        "input": "{{sample.output_text}}",
        "reference": "{{item.q}}",
        "operation": "eq",
    }
    record = await new_eval(services, [exact])
    teacher_answers = ["a", "b", "c", "x", "e"]  # passes items 0, 1, 2, 4
    student_answers = ["a", "y", "c", "d", "z"]  # passes items 0, 2, 3
    runs = []
    for answers in (teacher_answers, student_answers):
        rows = [
            {"item": {"q": q}, "sample": {"output_text": answer}} for q, answer in zip("abcde", answers, strict=True)
        ]
        params = RunCreateParams.model_validate(
            {"data_source": {"type": "jsonl", "source": {"type": "file_content", "content": rows}}}
        )
        runs.append(await start(services, record, params))
    await drain(services)
    comparison = await services.evals.compare(record.id, [runs[0].id, runs[1].id], owner=None)
    (criterion,) = comparison["per_testing_criteria"]
    assert criterion["wins"] == {runs[0].id: 2, runs[1].id: 1}  # items 1, 4 vs item 3
    assert criterion["ties"] == 2 and criterion["errored"] == 0
    assert criterion["pass_rate"] == {runs[0].id: 0.8, runs[1].id: 0.6}
    assert criterion["pass_rate_delta"] == pytest.approx(-0.2)


async def test_a_worker_killed_on_its_delivery_still_ends_the_run_failed_on_the_last(
    services: Services, fake_upstream: FakeUpstream
) -> None:
    record = await new_eval(services)
    fake_upstream.script(*[Reply(delay_seconds=5)] * 4)
    run = await start(services, record, rerun(3))
    body = await receive(services)
    assert body is not None
    killed = asyncio.create_task(services.evals.handle(body, delivery_count=4))
    for _ in range(1000):
        if candidate_calls(fake_upstream):
            break
        await asyncio.sleep(0.01)
    killed.cancel()  # the worker dies mid-call: nothing after this line of its code runs
    with pytest.raises(asyncio.CancelledError):
        await killed
    assert (await state(services, run)).status is RunStatus.IN_PROGRESS

    await services.evals.handle(body, delivery_count=5)
    after = await state(services, run)
    assert after.status is RunStatus.FAILED and after.error is not None and after.error.code == "run_failed"
    assert "delivery 4 stopped without finishing" in after.error.message and "0 of 3" in after.error.message
    assert len(candidate_calls(fake_upstream)) <= 2  # the last delivery asked nothing more


async def test_a_group_written_before_a_crash_is_counted_once_without_asking_again(
    services: Services, fake_upstream: FakeUpstream
) -> None:
    record = await new_eval(services)
    run = await start(services, record, rerun(7))
    evals = with_limits(services, save_every_items=3)
    await drain(services, evals)
    done = await state(services, run)
    assert done.status is RunStatus.COMPLETED and done.output_groups[-1] == 7 and len(done.output_groups) >= 2
    # The worker died after writing every group but before saving any count: rewind the state to then.
    rewound, etag = await services.evals.store.read_run(run.eval_id, run.id)
    fresh = RunRecord.model_validate(
        rewound.model_dump(exclude={"result_counts", "per_model_usage", "tokens_used", "next_index", "output_groups"})
        | {"status": RunStatus.IN_PROGRESS, "delivery_open": True, "per_criterion": {"echoes": {}}}
    )
    await services.evals.store.save_run(fresh, etag)
    asked = len(candidate_calls(fake_upstream))

    body = EvalJobMessage(eval_id=run.eval_id, run_id=run.id).model_dump_json().encode()
    await evals.handle(body, delivery_count=2)
    again = await state(services, run)
    assert len(candidate_calls(fake_upstream)) == asked  # counted from the written groups, nothing re-asked
    assert again.status is RunStatus.COMPLETED and again.output_groups == done.output_groups
    assert again.result_counts == done.result_counts and again.per_criterion == done.per_criterion
    assert again.per_model_usage == done.per_model_usage and again.tokens_used == done.tokens_used == 70
    assert await output_indexes(services, run) == list(range(7))


async def test_a_token_cap_of_one_with_many_criteria_spends_a_bounded_number_of_calls(
    services: Services, fake_upstream: FakeUpstream
) -> None:
    """Was: `max_total_tokens: 1` with 300 criteria spent 252,000 tokens in 2,400 calls."""
    judges = [
        {
            "type": "label_model",
            "name": f"judge{n}",
            "model": "grader",
            "input": [{"role": "user", "content": "{{sample.output_text}}"}],
            "labels": ["good", "bad"],
            "passing_labels": ["good"],
        }
        for n in range(50)
    ]
    record = await new_eval(services, judges)
    run = await start(services, record, rerun(20, max_total_tokens=1))
    await drain(services)
    done = await state(services, run)
    assert done.status is RunStatus.FAILED and done.error is not None and done.error.code == "token_cap_reached"
    spent = candidate_calls(fake_upstream)
    assert 1 <= len(spent) <= services.evals.limits.concurrency  # only calls that started before the cap was met
    assert done.tokens_used == 10 * len(spent)


async def test_grading_pages_and_compare_hold_their_bytes_from_the_read_budget(
    azurite: Azurite, make_services: ServicesFactory, fake_upstream: FakeUpstream
) -> None:
    """Was: eight 3.8 MB items made a run add 830 MB, a compare 1.36 GB, an output-items page 850 MB."""
    small = await make_services(
        OPENAI_BASE_URL=fake_upstream.base_url, EVAL_CONCURRENCY="4", DOCUMENT_READ_BUDGET_BYTES=str(64 * 1024)
    )
    async with QueueClient.from_connection_string(azurite.connection_string, small.settings.eval_jobs_queue) as queue:
        await queue.create_queue()
    budget = small.store.budget
    record = await new_eval(small, [{**ECHOES, "input": "{{sample.output_text}}", "reference": "x"}])
    runs = []
    for answer in ("x", "y"):
        rows = [{"item": {"q": f"{n}" + "z" * 30_000}, "sample": {"output_text": answer}} for n in range(6)]
        params = RunCreateParams.model_validate(
            {"data_source": {"type": "jsonl", "source": {"type": "file_content", "content": rows}}}
        )
        runs.append(await start(small, record, params))
    budget.peak = 0
    await drain(small)
    assert 30_000 <= budget.peak <= budget.capacity  # one 30 KB item in flight at a time, never more than it allows
    assert [(await state(small, run)).result_counts.total for run in runs] == [6, 6]

    budget.peak = 0
    page, has_more = await small.evals.output_items(
        runs[0].eval_id, runs[0].id, after=None, limit=100, order="asc", status=None, owner=None
    )
    assert has_more and 1 <= len(page) < 6  # the page ended early: its items filled half the budget
    assert budget.peak <= budget.capacity and budget.in_flight == 0
    rest, _ = await small.evals.output_items(
        runs[0].eval_id, runs[0].id, after=page[-1].id, limit=100, order="asc", status=None, owner=None
    )
    assert rest[0].index == page[-1].index + 1

    budget.peak = 0
    comparison = await small.evals.compare(record.id, [run.id for run in runs], owner=None)
    assert comparison["items_compared"] == 6
    assert comparison["per_testing_criteria"][0]["wins"] == {runs[0].id: 6, runs[1].id: 0}
    assert budget.peak <= 2 * budget.capacity and budget.in_flight == 0  # one group of each run at a time
    await small.close()
