"""Relabel with a stronger teacher against the upstream stand-in: new answers linked to their
originals, idempotent redelivery (no second call), the token cap, retry-after honoured, refusals
skipped, and datasets that prefer the relabeled answer."""

from __future__ import annotations

import json
from typing import Any

import pytest
from azure.storage.queue.aio import QueueClient

from local_host.azurite import Azurite
from shared.curation.bulk import parse_bulk_action_params
from shared.curation.relabel import (
    RelabelJob,
    RelabelLimits,
    Relabels,
    RelabelSkip,
    parse_relabel_params,
)
from shared.datasets.job import DatasetParams, DatasetStatus
from shared.platform.errors import InvalidRequest
from shared.services import Services
from shared.store.completion_filter import CompletionFilter
from shared.store.filter_jobs import JobStatus
from shared.store.json_blobs import JsonBlobs
from tests.conftest import ServicesFactory
from tests.fakes import FakeUpstream, Reply
from tests.shared.datasets.conftest import download, drain, read_job, seed, stored

TEACHER = "teacher-xl"


@pytest.fixture
async def services(azurite: Azurite, make_services: ServicesFactory, fake_upstream: FakeUpstream) -> Services:
    made = await make_services(OPENAI_BASE_URL=fake_upstream.base_url, MODEL_CALL_MAX_ATTEMPTS="3")
    async with QueueClient.from_connection_string(azurite.connection_string, made.settings.dataset_jobs_queue) as queue:
        await queue.create_queue()
    return made


def relabels(services: Services, **limits: Any) -> Relabels:
    return Relabels(
        store=services.store,
        calls=services.model_calls,
        records=JsonBlobs(container=services.reports_container, label="relabel"),
        queue=services.job_queue,
        queue_name=services.settings.purge_jobs_queue,
        limits=RelabelLimits(**limits),
    )


def teacher_calls(fake: FakeUpstream) -> list[dict[str, Any]]:
    return [request["body"] for request in fake.requests if request["body"].get("model") == TEACHER]


async def relabeled(services: Services, job: Relabels, body: dict[str, Any]) -> RelabelJob:
    submitted = await job.submit(parse_relabel_params(body), requested_by="key:ann")
    return await job.run(submitted.id)


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        ({"deployment": TEACHER, "max_total_tokens": 10}, "exactly one of"),
        ({"deployment": TEACHER, "max_total_tokens": 10, "filter": {}}, "exactly one of"),
        ({"deployment": TEACHER, "max_total_tokens": 10, "all": True, "ids": ["chatcmpl-" + "0" * 32]}, "exactly one"),
        ({"deployment": TEACHER, "filter": {"model": "m"}}, "max_total_tokens"),
        ({"deployment": TEACHER, "max_total_tokens": 0, "filter": {"model": "m"}}, "max_total_tokens"),
        ({"deployment": TEACHER, "max_total_tokens": 9, "ids": ["not-an-id"]}, "not a chat completion id"),
        ({"deployment": "", "max_total_tokens": 9, "all": True}, "deployment"),
    ],
)
def test_bad_requests_are_refused(body: dict[str, Any], fragment: str) -> None:
    with pytest.raises(InvalidRequest) as refused:
        parse_relabel_params(body)
    assert refused.value.status == 400 and fragment in refused.value.message


async def test_answers_again_on_the_teacher_and_links_each_to_its_original(
    services: Services, fake_upstream: FakeUpstream, tag: str
) -> None:
    originals = [stored(f"q{n}", metadata={"tag": tag}) for n in range(3)]
    originals[0].request.update(temperature=0.2, store=True, metadata={"tag": tag}, stream=True)
    await seed(services, originals)
    job = relabels(services)

    done = await relabeled(
        services, job, {"deployment": TEACHER, "max_total_tokens": 1000, "filter": {"metadata": {"tag": tag}}}
    )

    assert done.status is JobStatus.SUCCEEDED and done.receipt is not None
    assert (done.receipt.relabeled_count, done.receipt.tokens_used, done.receipt.stopped) == (3, 30, "done")
    assert done.receipt.skipped == {}  # its own new answers, met at the end of the walk, are not counted
    sent = teacher_calls(fake_upstream)
    assert sorted(body["messages"][0]["content"] for body in sent) == ["q0", "q1", "q2"]
    first = next(body for body in sent if body["messages"][0]["content"] == "q0")
    assert first["temperature"] == 0.2 and "store" not in first and "metadata" not in first and first["stream"] is False
    for original in originals:
        kept = await services.store.get(original.id)
        [answer_id] = kept.relabels
        answer = await services.store.get(answer_id)
        assert (answer.relabel_of, answer.deployment, answer.metadata) == (original.id, TEACHER, {"tag": tag})
        assert answer.output_text() == f"fake: {original.request['messages'][0]['content']}"
        assert answer.as_chat_completion()["distillery"]["relabel_of"] == original.id
    listed = await services.store.list(CompletionFilter(model=TEACHER, metadata={"tag": tag}), limit=10)
    assert len(listed.data) == 3  # indexed: lists see them by the teacher's name


async def test_a_redelivered_job_finds_its_answers_and_calls_nothing_again(
    services: Services, fake_upstream: FakeUpstream, tag: str
) -> None:
    originals = [stored(f"q{n}", metadata={"tag": tag}) for n in range(2)]
    await seed(services, originals)
    job = relabels(services)
    done = await relabeled(
        services, job, {"deployment": TEACHER, "max_total_tokens": 1000, "ids": [o.id for o in originals]}
    )
    records = JsonBlobs(container=services.reports_container, label="relabel")
    raw, etag = await records.get(f"relabels/{done.id}.json", missing="")
    died = RelabelJob.model_validate_json(raw)  # as if the delivery died before its checkpoint
    died.status, died.receipt, died.progress.walked, died.progress.relabeled = JobStatus.RUNNING, None, 0, 0
    await records.put(f"relabels/{done.id}.json", died.model_dump_json(), etag=etag)
    calls = len(teacher_calls(fake_upstream))

    again = await job.run(done.id)

    assert len(teacher_calls(fake_upstream)) == calls == 2
    assert again.receipt is not None and again.receipt.relabeled_count == 2
    assert [len((await services.store.get(o.id)).relabels) for o in originals] == [1, 1]


async def test_stops_at_the_token_cap(services: Services, fake_upstream: FakeUpstream, tag: str) -> None:
    await seed(services, [stored(f"q{n}", metadata={"tag": tag}) for n in range(5)])
    job = relabels(services, concurrency=1, batch=2)
    done = await relabeled(
        services, job, {"deployment": TEACHER, "max_total_tokens": 15, "filter": {"metadata": {"tag": tag}}}
    )
    assert done.receipt is not None
    assert (done.receipt.relabeled_count, done.receipt.tokens_used, done.receipt.stopped) == (2, 20, "token_cap")
    assert len(teacher_calls(fake_upstream)) == 2


async def test_retry_after_is_honoured_and_a_refusal_is_skipped(
    services: Services, fake_upstream: FakeUpstream, tag: str
) -> None:
    [one, two] = await seed(services, [stored(f"q{n}", metadata={"tag": tag}) for n in range(2)])
    busy = {"error": {"message": "Too many requests", "type": "rate_limit", "code": "429"}}
    bad = {"error": {"message": "Bad request", "type": "invalid_request_error", "code": "bad"}}
    fake_upstream.script(
        Reply(status=429, body=busy, headers={"retry-after-ms": "20"}, for_model=TEACHER),
        Reply(status=200, for_model=TEACHER),
        Reply(status=400, body=bad, for_model=TEACHER),
    )
    job = relabels(services, concurrency=1)
    done = await relabeled(services, job, {"deployment": TEACHER, "max_total_tokens": 100, "ids": [one, two]})
    assert done.receipt is not None
    assert (done.receipt.relabeled_count, done.receipt.skipped) == (1, {RelabelSkip.UPSTREAM_ERROR: 1})
    assert len(teacher_calls(fake_upstream)) == 3  # the 429 was retried once, the 400 not at all
    assert len((await services.store.get(one)).relabels) == 1 and (await services.store.get(two)).relabels == []


async def test_a_dataset_prefers_the_relabeled_answer(
    services: Services, fake_upstream: FakeUpstream, tag: str
) -> None:
    originals = [stored(f"q{n}", metadata={"tag": tag}) for n in range(10)]
    await seed(services, originals)
    await relabeled(
        services,
        relabels(services),
        {"deployment": TEACHER, "max_total_tokens": 1000, "filter": {"metadata": {"tag": tag}}},
    )

    async def answers(prefer: bool) -> tuple[list[str], dict[str, int]]:
        params = DatasetParams.model_validate(
            {
                "kind": "distillation",
                "filter": {"metadata": {"tag": tag}},
                "validation_fraction": 0,
                "prefer_relabel": prefer,
            }
        )
        job = await services.dataset_jobs.submit(params)
        await drain(services)
        built = await read_job(services, job.id)
        assert built.status is DatasetStatus.SUCCEEDED, built.error
        lines = (await download(services, job.id, "train.jsonl")).splitlines()
        return sorted(json.loads(line)["messages"][-1]["content"] for line in lines), built.counts.skipped

    preferred, skipped = await answers(True)
    assert preferred == sorted(f"fake: q{n}" for n in range(10)) and skipped == {"relabeled": 10}
    both, _ = await answers(False)
    assert both == sorted([f"answer to q{n}" for n in range(10)] + [f"fake: q{n}" for n in range(10)])


async def test_under_redaction_a_relabel_and_a_bulk_tag_keep_no_personal_data(
    make_services: ServicesFactory, fake_upstream: FakeUpstream, tag: str
) -> None:
    """The teacher's answer is redacted like a capture; a bulk action's metadata like an update's."""
    services = await make_services(OPENAI_BASE_URL=fake_upstream.base_url, REDACTION="mask", REDACTION_METADATA="true")
    [original] = await seed(services, [stored("hello", metadata={"tag": tag})])
    leak = {"role": "assistant", "content": "Write to john@example.org"}
    fake_upstream.script(Reply(message=leak, for_model=TEACHER))
    done = await relabeled(
        services, relabels(services), {"deployment": TEACHER, "max_total_tokens": 100, "ids": [original]}
    )
    assert done.receipt is not None and done.receipt.relabeled_count == 1
    [answer_id] = (await services.store.get(original)).relabels
    assert (await services.store.get(answer_id)).output_text() == "Write to [EMAIL]"

    body = {"filter": {"metadata": {"tag": tag}}, "set_metadata": {"contact": "john@example.org"}}
    job = await services.bulk_actions.submit(parse_bulk_action_params(body), requested_by="default")
    assert job.set_metadata == {"contact": "[EMAIL]"}  # the record never holds it either
    await services.bulk_actions.run(job.id)
    assert (await services.store.get(original)).metadata == {"tag": tag, "contact": "[EMAIL]"}
