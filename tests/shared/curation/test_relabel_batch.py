"""Relabel through the upstream's Batch API (the stand-in's Files and Batches routes): answers stored
linked to their originals, a redelivered poll that stores nothing twice, a failed batch that fails
the job with its reason, and token reservations over the cap refused before anything is sent."""

from __future__ import annotations

import json
from typing import Any

import pytest
from azure.storage.queue.aio import QueueClient

from local_host.azurite import Azurite
from shared.curation.relabel import (
    RelabelJob,
    RelabelLimits,
    Relabels,
    RelabelSkip,
    parse_relabel_params,
)
from shared.platform.errors import InvalidRequest
from shared.services import Services
from shared.store.filter_jobs import JobStatus
from shared.store.json_blobs import JsonBlobs
from tests.conftest import ServicesFactory
from tests.fakes import FakeUpstream, Reply
from tests.shared.datasets.conftest import seed, stored

TEACHER = "teacher-batch"


@pytest.fixture
async def services(azurite: Azurite, make_services: ServicesFactory, fake_upstream: FakeUpstream) -> Services:
    return await make_services(OPENAI_BASE_URL=fake_upstream.base_url)


def relabels(services: Services) -> Relabels:
    return Relabels(
        store=services.store,
        calls=services.model_calls,
        records=JsonBlobs(container=services.reports_container, label="relabel"),
        queue=services.job_queue,
        queue_name=services.settings.purge_jobs_queue,
        batches=services.fine_tuning.api,
        limits=RelabelLimits(batch_poll_seconds=0),
    )


async def originals(services: Services, tag: str, *texts: str) -> list[str]:
    made = [stored(text, metadata={"tag": tag}) for text in texts]
    for completion in made:
        completion.request["max_tokens"] = 100
    return await seed(services, made)


async def run_to_end(job: Relabels, relabel_id: str) -> RelabelJob:
    """Deliver each poll the job queues, in order, until it finishes (the queue's delay is not waited out)."""
    done = await job.get(relabel_id)
    for _ in range(10):
        done = await job.run(relabel_id, part=done.progress.part)
        if done.finished:
            return done
    raise AssertionError(f"relabel still {done.status} after 10 polls")


def batch_body(tag: str, cap: int = 1000) -> dict[str, Any]:
    return {"deployment": TEACHER, "max_total_tokens": cap, "filter": {"metadata": {"tag": tag}}, "mode": "batch"}


async def test_a_batch_relabel_stores_each_answer_linked_to_its_original(
    services: Services, fake_upstream: FakeUpstream, tag: str
) -> None:
    ids = await originals(services, tag, "q0", "q1", "[refuse] q2")
    job = relabels(services)
    submitted = await job.submit(parse_relabel_params(batch_body(tag)), requested_by="key:ann")
    assert submitted.batch is not None and submitted.batch.reserved_tokens == 300

    done = await run_to_end(job, submitted.id)

    assert done.status is JobStatus.SUCCEEDED and done.receipt is not None, done.error
    assert done.receipt.relabeled_count == 2 and done.receipt.skipped == {RelabelSkip.UPSTREAM_ERROR: 1}
    assert done.receipt.tokens_used == 20 and done.progress.part == 2  # sent; polled in_progress; completed
    assert not [r for r in fake_upstream.requests if r["url"].endswith("/chat/completions")]  # no direct calls
    [batch] = fake_upstream.batches.values()
    assert (batch["endpoint"], batch["completion_window"]) == ("/chat/completions", "24h")
    [upload] = [r["body"] for r in fake_upstream.requests if r["url"].endswith("/files")]
    assert upload == {"purpose": "batch", "filename": f"{done.id}.jsonl"}
    lines = [json.loads(line) for line in batch["input"].decode().splitlines()]
    assert {(line["method"], line["url"], line["body"]["model"]) for line in lines} == {
        ("POST", "/chat/completions", TEACHER)
    }
    assert done.batch is not None and {line["custom_id"] for line in lines} == set(done.batch.originals)
    for original_id, text in zip(ids[:2], ["q0", "q1"], strict=True):
        [answer_id] = (await services.store.get(original_id)).relabels
        answer = await services.store.get(answer_id)
        assert (answer.relabel_of, answer.deployment, answer.output_text()) == (original_id, TEACHER, f"fake: {text}")
    assert (await services.store.get(ids[2])).relabels == []
    finished = {batch["input_file_id"], batch["output_file_id"], batch["error_file_id"]}
    assert set(fake_upstream.deleted_files) == finished  # the upstream keeps none of the batch's files
    assert done.view()["batch"] == {
        "reserved_tokens": 300,
        "id": batch["id"],
        "input_file_id": batch["input_file_id"],
        "status": "completed",
    }


async def test_a_redelivered_poll_stores_nothing_twice(
    services: Services, fake_upstream: FakeUpstream, tag: str
) -> None:
    ids = await originals(services, tag, "q0", "q1")
    job = relabels(services)
    submitted = await job.submit(parse_relabel_params(batch_body(tag)), requested_by="key:ann")
    records = JsonBlobs(container=services.reports_container, label="relabel")
    polled = await job.run(submitted.id)
    polled = await job.run(submitted.id, part=polled.progress.part)  # in_progress: the next look completes it
    before_last, _ = await records.get(f"relabels/{submitted.id}.json", missing="")

    first = await job.run(submitted.id, part=polled.progress.part)
    # As if that delivery died after storing the answers, before it saved its outcome (or deleted the files).
    _, etag = await records.get(f"relabels/{submitted.id}.json", missing="")
    await records.put(f"relabels/{submitted.id}.json", before_last, etag=etag)
    [batch] = fake_upstream.batches.values()
    fake_upstream.files[batch["output_file_id"]] = {"content": batch["output"], "purpose": "batch_output"}
    again = await job.run(submitted.id, part=polled.progress.part)

    assert first.receipt is not None and again.receipt is not None
    assert first.receipt.relabeled_count == again.receipt.relabeled_count == 2
    assert again.receipt.tokens_used == 0  # both answers were already stored: nothing counted twice
    assert [len((await services.store.get(original_id)).relabels) for original_id in ids] == [1, 1]
    assert len(fake_upstream.batches) == 1


async def test_a_redelivered_submission_finds_its_batch_and_makes_no_second(
    services: Services, fake_upstream: FakeUpstream, tag: str
) -> None:
    await originals(services, tag, "q0")
    job = relabels(services)
    submitted = await job.submit(parse_relabel_params(batch_body(tag)), requested_by="key:ann")
    records = JsonBlobs(container=services.reports_container, label="relabel")
    sent = await job.run(submitted.id)
    raw, etag = await records.get(f"relabels/{submitted.id}.json", missing="")
    died = RelabelJob.model_validate_json(raw)  # as if the delivery died after creating the batch, unsaved
    assert died.batch is not None and died.batch.id is not None
    died.batch.id, died.batch.status, died.progress.part = None, None, 0
    await records.put(f"relabels/{submitted.id}.json", died.model_dump_json(), etag=etag)

    done = await run_to_end(job, submitted.id)

    assert done.status is JobStatus.SUCCEEDED and done.batch is not None and sent.batch is not None
    assert done.batch.id == sent.batch.id and len(fake_upstream.batches) == 1
    assert len([r for r in fake_upstream.requests if r["url"].endswith("/files")]) == 1


async def test_a_failed_batch_fails_the_job_with_its_reason(
    services: Services, fake_upstream: FakeUpstream, tag: str
) -> None:
    await originals(services, tag, "q0")
    fake_upstream.batch_failure = {"code": "invalid_json_line", "message": "Line 1 is not valid JSON.", "line": 1}
    job = relabels(services)
    submitted = await job.submit(parse_relabel_params(batch_body(tag)), requested_by="key:ann")

    done = await run_to_end(job, submitted.id)

    assert done.status is JobStatus.FAILED and done.error is not None
    assert "ended failed: Line 1 is not valid JSON." in done.error.message


async def test_an_upstream_without_batches_fails_the_job_naming_it(
    services: Services, fake_upstream: FakeUpstream, tag: str
) -> None:
    await originals(services, tag, "q0")
    missing = {"error": {"message": "Resource not found", "type": "invalid_request_error", "code": "404"}}
    fake_upstream.script(Reply(status=404, body=missing, for_path="/batches"))
    job = relabels(services)
    submitted = await job.submit(parse_relabel_params(batch_body(tag)), requested_by="key:ann")

    done = await run_to_end(job, submitted.id)

    assert done.status is JobStatus.FAILED and done.error is not None
    assert done.error.code == "batch_unavailable" and "no Batch API" in done.error.message


async def test_a_reservation_over_the_token_cap_is_refused_before_anything_is_sent(
    services: Services, fake_upstream: FakeUpstream, tag: str
) -> None:
    await originals(services, tag, "q0", "q1", "q2")
    with pytest.raises(InvalidRequest) as refused:
        await relabels(services).submit(parse_relabel_params(batch_body(tag, cap=299)), requested_by="key:ann")
    assert (refused.value.status, refused.value.code) == (400, "token_cap_exceeded")
    assert "reserves 300 tokens" in refused.value.message and "max_total_tokens 299" in refused.value.message
    assert fake_upstream.files == {} and fake_upstream.batches == {}


async def test_the_offline_model_refuses_a_batch_relabel(make_services: ServicesFactory, tag: str) -> None:
    services = await make_services()
    with pytest.raises(InvalidRequest) as refused:
        await services.relabels.submit(parse_relabel_params(batch_body(tag)), requested_by="key:ann")
    assert (refused.value.status, refused.value.code) == (400, "batch_unavailable")


async def test_a_delayed_job_message_stays_hidden_until_its_time(services: Services, azurite: Azurite) -> None:
    queue_name = services.settings.purge_jobs_queue
    await services.job_queue.send(queue_name, '{"later": 1}', message_id="later", delay=3600)
    async with QueueClient.from_connection_string(azurite.connection_string, queue_name) as queue:
        visible = [message.content async for message in queue.receive_messages(visibility_timeout=1)]
    assert not any("later" in content for content in visible)
