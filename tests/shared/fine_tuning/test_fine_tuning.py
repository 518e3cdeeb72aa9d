"""Distill on Azurite with the fake upstream's files and fine-tuning API: upload, wait, create, track,
cancel; redeliveries that upload nothing twice and adopt a job already created; refusals and the
upstream's errors explained in words; and the lineage from dataset to eval run."""

from __future__ import annotations

import time
import uuid
from typing import Any

import pytest
from azure.storage.queue.aio import QueueClient

from local_host.azurite import Azurite
from shared.datasets.job import DatasetParams
from shared.evals.params import EvalCreateParams, RunCreateParams
from shared.fine_tuning.jobs import FineTuningParams, FineTuningRecord, parse_fine_tuning_params
from shared.platform.errors import InvalidRequest
from shared.services import Services
from tests.conftest import ServicesFactory
from tests.fakes import FakeUpstream, Reply
from tests.shared.datasets.conftest import seed, stored
from tests.shared.queues import take_message


@pytest.fixture
async def services(azurite: Azurite, make_services: ServicesFactory, fake_upstream: FakeUpstream) -> Services:
    made = await make_services(OPENAI_BASE_URL=fake_upstream.base_url, FINE_TUNING_DELIVERY_SECONDS="30")
    for queue_name in (made.settings.dataset_jobs_queue, made.settings.fine_tuning_jobs_queue):
        async with QueueClient.from_connection_string(azurite.connection_string, queue_name) as queue:
            await queue.create_queue()
    return made


async def receive(services: Services, queue_name: str) -> bytes | None:
    return await take_message(services, queue_name)


async def dataset(services: Services, *, kind: str = "distillation", count: int = 24) -> str:
    """A built dataset of `count` fresh stored completions (about a fifth of them for validation)."""
    tag = {"batch": uuid.uuid4().hex}
    await seed(services, [stored(f"question {n}", metadata={**tag, "user": f"u{n}"}) for n in range(count)])
    params: dict[str, Any] = {"kind": kind, "filter": {"metadata": tag}}
    if kind == "distillation":  # split by user with a fixed seed: the same examples go to validation every run
        params.update(validation_fraction=0.2, seed=1, group_by="user")
    job = await services.dataset_jobs.submit(DatasetParams.model_validate(params))
    while (body := await receive(services, services.settings.dataset_jobs_queue)) is not None:
        await services.dataset_jobs.handle(body, delivery_count=1)
    return job.id


async def deliver(services: Services) -> int:
    delivered = 0
    while (body := await receive(services, services.settings.fine_tuning_jobs_queue)) is not None:
        await services.fine_tuning.handle(body, delivery_count=1)
        delivered += 1
    return delivered


def uploads(fake: FakeUpstream) -> list[dict[str, Any]]:
    return [r for r in fake.requests if r["url"].endswith("/v1/files") and r["body"] is not None]


PARAMS = FineTuningParams(model="gpt-4.1-mini-2025-04-14", suffix="support", seed=7, method={"type": "supervised"})


async def test_distill_uploads_creates_and_tracks_to_a_fine_tuned_model(
    services: Services, fake_upstream: FakeUpstream
) -> None:
    dataset_id = await dataset(services)
    record = await services.fine_tuning.create(dataset_id, PARAMS, owner=None)
    assert (record.status, record.stage) == ("preparing", "queued")
    assert record.dataset["counts"]["written"] == 24  # lineage: the manifest's facts

    await deliver(services)
    prepared = await services.fine_tuning.get(record.id, owner=None, refresh=False)
    assert set(prepared.files) == {"train.jsonl", "validation.jsonl"}
    assert [u["body"]["purpose"] for u in uploads(fake_upstream)] == ["fine-tune", "fine-tune"]
    uploaded = {file["filename"]: file["content"] for file in fake_upstream.files.values()}
    _, chunks = await services.dataset_jobs.records.open_file(dataset_id, "train.jsonl")
    assert uploaded[f"{record.id}-train.jsonl"] == b"".join([chunk async for chunk in chunks])  # no BOM: not Azure
    (upstream_job,) = fake_upstream.jobs.values()
    assert upstream_job["metadata"] == {"distillery_job": record.id, "distillery_dataset": dataset_id}
    assert upstream_job["training_file"] == prepared.files["train.jsonl"]
    created = next(r["body"] for r in fake_upstream.requests if r["url"].endswith("/fine_tuning/jobs") and r["body"])
    assert (created["suffix"], created["seed"], created["method"]) == ("support", 7, {"type": "supervised"})
    assert "trainingType" not in created  # only Azure OpenAI takes it

    statuses = [(await services.fine_tuning.get(record.id, owner=None)).status for _ in range(3)]
    assert statuses[-1] == "succeeded"
    done = await services.fine_tuning.get(record.id, owner=None)
    assert done.fine_tuned_model == f"ft:gpt-4.1-mini-2025-04-14:distillery::{prepared.upstream_job_id}"
    assert done.checkpoints and done.events and done.trained_tokens == 1234
    assert await services.fine_tuning.track() == 0  # nothing unfinished left for the timer
    # The job ended: its files are deleted upstream (a resource keeps 100 at most), still named in the lineage.
    assert sorted(fake_upstream.deleted_files) == sorted(prepared.files.values()) and fake_upstream.files == {}
    assert done.files_deleted_at is not None and done.view()["lineage"]["files"] == prepared.files

    # Lineage: an eval run of the fine-tuned model links back to the job, and so to the dataset.
    evaluation = await services.evals.create_eval(
        EvalCreateParams.model_validate(
            {
                "data_source_config": {
                    "type": "custom",
                    "item_schema": {"type": "object"},
                    "include_sample_schema": True,
                },
                "testing_criteria": [
                    {
                        "type": "string_check",
                        "name": "s",
                        "input": "{{sample.output_text}}",
                        "reference": "x",
                        "operation": "like",
                    }
                ],
            }
        ),
        owner=None,
    )
    run_params = RunCreateParams.model_validate(
        {
            "data_source": {
                "type": "completions",
                "model": done.fine_tuned_model,
                "source": {"type": "file_content", "content": [{"item": {"q": "hi"}}]},
                "input_messages": {"type": "template", "template": [{"role": "user", "content": "hi"}]},
            }
        }
    )
    run, _ = await services.evals.create_run(evaluation.id, run_params, owner=None, report_base="http://t")
    assert run.lineage.fine_tuning_job_id == record.id


async def test_a_redelivery_uploads_nothing_twice_and_adopts_the_job_it_created(
    services: Services, fake_upstream: FakeUpstream
) -> None:
    dataset_id = await dataset(services)
    record = await services.fine_tuning.create(dataset_id, PARAMS, owner=None)
    body = await receive(services, services.settings.fine_tuning_jobs_queue)
    assert body is not None
    await services.fine_tuning.handle(body, delivery_count=1)
    await services.fine_tuning.handle(body, delivery_count=2)
    assert len(uploads(fake_upstream)) == 2 and len(fake_upstream.jobs) == 1

    # A delivery cut off after creating the upstream job, before recording it: the next one adopts it.
    raw, etag = await services.fine_tuning.blobs.get(f"{record.id}.json", missing="")
    lost = FineTuningRecord.model_validate_json(raw).model_copy(update={"upstream_job_id": None, "status": "preparing"})
    await services.fine_tuning.blobs.put(f"{record.id}.json", lost.model_dump_json(), etag=etag)
    await services.fine_tuning.handle(body, delivery_count=3)
    again = await services.fine_tuning.get(record.id, owner=None, refresh=False)
    assert again.upstream_job_id == next(iter(fake_upstream.jobs)) and len(fake_upstream.jobs) == 1
    assert len(uploads(fake_upstream)) == 2


async def test_upstream_errors_are_explained_in_words(services: Services, fake_upstream: FakeUpstream) -> None:
    dataset_id = await dataset(services)
    missing_type = {
        "error": {"code": "invalidPayload", "message": "The specified trainingType is not supported for this model."}
    }
    fake_upstream.script(Reply(status=400, body=missing_type, for_path="/fine_tuning/jobs"))
    record = await services.fine_tuning.create(dataset_id, PARAMS, owner=None)
    await deliver(services)
    failed = await services.fine_tuning.get(record.id, owner=None)
    assert failed.status == "failed" and failed.error is not None
    assert "needs to know where to train" in failed.error.message and "trainingType" in failed.error.message
    assert failed.error.hint is not None and "'globalstandard'" in failed.error.hint


async def test_a_429_on_upload_is_waited_out(services: Services, fake_upstream: FakeUpstream) -> None:
    dataset_id = await dataset(services)
    busy = {"error": {"message": "Too many requests", "code": "429"}}
    fake_upstream.script(Reply(status=429, body=busy, headers={"retry-after-ms": "50"}, for_path="/v1/files"))
    record = await services.fine_tuning.create(dataset_id, PARAMS.model_copy(update={"validation": False}), owner=None)
    await deliver(services)
    prepared = await services.fine_tuning.get(record.id, owner=None, refresh=False)
    assert set(prepared.files) == {"train.jsonl"} and prepared.upstream_job_id is not None
    assert len(uploads(fake_upstream)) == 2  # the refused try and the one that worked


async def test_cancel_before_the_upstream_job_sends_nothing(services: Services, fake_upstream: FakeUpstream) -> None:
    dataset_id = await dataset(services)
    record = await services.fine_tuning.create(dataset_id, PARAMS, owner=None)
    cancelled = await services.fine_tuning.cancel(record.id, owner=None)
    assert cancelled.status == "cancelled"
    await deliver(services)
    assert uploads(fake_upstream) == [] and fake_upstream.jobs == {}


async def test_cancel_after_reaches_the_upstream(services: Services, fake_upstream: FakeUpstream) -> None:
    record = await services.fine_tuning.create(await dataset(services), PARAMS, owner=None)
    await deliver(services)
    cancelled = await services.fine_tuning.cancel(record.id, owner=None)
    assert cancelled.status == "cancelled"
    assert next(iter(fake_upstream.jobs.values()))["status"] == "cancelled"


async def test_what_cannot_be_fine_tuned_is_refused_before_anything_is_sent(
    services: Services, make_services: ServicesFactory, fake_upstream: FakeUpstream
) -> None:
    evaluation_set = await dataset(services, kind="evaluation")
    too_small = await dataset(services, count=5)  # the build itself fails: fewer than 10 examples
    cases = [
        (evaluation_set, "not_a_distillation_dataset"),
        (too_small, "dataset_not_ready"),
    ]
    for dataset_id, code in cases:
        with pytest.raises(InvalidRequest) as raised:
            await services.fine_tuning.create(dataset_id, PARAMS, owner=None)
        assert raised.value.code == code
    offline = await make_services()
    with pytest.raises(InvalidRequest) as raised:
        await offline.fine_tuning.create(evaluation_set, PARAMS, owner=None)
    assert raised.value.code == "fine_tuning_unavailable" and "offline" in raised.value.message
    assert fake_upstream.requests == []


async def test_azure_openai_gets_developer_tier_spelled_its_way_and_files_with_a_bom(
    azurite: Azurite, make_services: ServicesFactory, fake_upstream: FakeUpstream
) -> None:
    azure = await make_services(
        AZURE_OPENAI_ENDPOINT=fake_upstream.url, AZURE_OPENAI_API_KEY="test-key", FINE_TUNING_DELIVERY_SECONDS="30"
    )
    for queue_name in (azure.settings.dataset_jobs_queue, azure.settings.fine_tuning_jobs_queue):
        async with QueueClient.from_connection_string(azurite.connection_string, queue_name) as queue:
            await queue.create_queue()
    dataset_id = await dataset(azure)
    record = await azure.fine_tuning.create(
        dataset_id, PARAMS.model_copy(update={"training_type": "developer"}), owner=None
    )
    await deliver(azure)
    created = next(r for r in fake_upstream.requests if r["url"].endswith("/openai/v1/fine_tuning/jobs"))
    assert created["body"]["trainingType"] == "developerTier"
    assert created["headers"]["api-key"] == "test-key"
    uploaded = {file["filename"]: file["content"] for file in fake_upstream.files.values()}
    _, chunks = await azure.dataset_jobs.records.open_file(dataset_id, "train.jsonl")
    assert uploaded[f"{record.id}-train.jsonl"] == b"\xef\xbb\xbf" + b"".join([chunk async for chunk in chunks])


def test_a_suffix_with_a_dot_is_refused() -> None:
    with pytest.raises(InvalidRequest) as raised:
        parse_fine_tuning_params({"model": "gpt-4.1-mini", "suffix": "support.v2"})
    assert raised.value.param == "suffix" and "'.'" in raised.value.message
    assert parse_fine_tuning_params({"model": "gpt-4.1-mini", "suffix": "support-v2"}).suffix == "support-v2"


async def test_files_over_one_gigabyte_in_all_are_refused(services: Services, fake_upstream: FakeUpstream) -> None:
    dataset_id = await dataset(services)
    # The stored dataset says what its files weigh: make them 500 MB each, and one byte more.
    job, etag = await services.dataset_jobs.records.read(dataset_id)
    sizes = {"train.jsonl": 500_000_000, "validation.jsonl": 500_000_001}
    job.files = [file.model_copy(update={"bytes": sizes.get(file.name, file.bytes)}) for file in job.files]
    await services.dataset_jobs.records.save(job, etag)
    with pytest.raises(InvalidRequest) as raised:
        await services.fine_tuning.create(dataset_id, PARAMS, owner=None)
    assert raised.value.code == "files_too_large" and "1 GB" in raised.value.message
    # Without its validation file the same dataset fits.
    accepted = await services.fine_tuning.create(
        dataset_id, PARAMS.model_copy(update={"validation": False}), owner=None
    )
    assert accepted.status == "preparing" and fake_upstream.requests == []


async def test_a_failed_preparation_deletes_what_it_uploaded(services: Services, fake_upstream: FakeUpstream) -> None:
    dataset_id = await dataset(services)
    refused = {"error": {"code": "invalidPayload", "message": "The specified base model does not support fine-tuning."}}
    fake_upstream.script(Reply(status=400, body=refused, for_path="/fine_tuning/jobs"))
    record = await services.fine_tuning.create(dataset_id, PARAMS, owner=None)
    await deliver(services)
    failed = await services.fine_tuning.get(record.id, owner=None)
    assert failed.status == "failed" and len(failed.files) == 2
    assert sorted(fake_upstream.deleted_files) == sorted(failed.files.values()) and fake_upstream.files == {}
    assert failed.files_deleted_at is not None


async def test_a_delivery_whose_time_is_spent_starts_nothing_and_goes_on_in_a_new_message(
    services: Services, fake_upstream: FakeUpstream
) -> None:
    record = await services.fine_tuning.create(await dataset(services), PARAMS, owner=None)
    body = await receive(services, services.settings.fine_tuning_jobs_queue)
    assert body is not None
    budget = services.settings.fine_tuning_delivery_seconds
    # A delivery that began longer ago than its budget (it waited on a slow worker): it uploads nothing.
    await services.fine_tuning.handle(body, delivery_count=1, started=time.monotonic() - budget - 1)
    assert uploads(fake_upstream) == []
    waiting = await services.fine_tuning.get(record.id, owner=None, refresh=False)
    assert waiting.status == "preparing" and waiting.files == {}
    assert await deliver(services) == 1  # the continuation it queued does the work
    assert len(uploads(fake_upstream)) == 2 and len(fake_upstream.jobs) == 1
    # The first message delivered again (Service Bus delivers at least once): nothing is uploaded twice.
    await services.fine_tuning.handle(body, delivery_count=2)
    assert len(uploads(fake_upstream)) == 2 and len(fake_upstream.jobs) == 1


async def test_an_upload_made_but_not_recorded_is_found_by_name_not_made_again(
    services: Services, fake_upstream: FakeUpstream
) -> None:
    record = await services.fine_tuning.create(await dataset(services), PARAMS, owner=None)
    body = await receive(services, services.settings.fine_tuning_jobs_queue)
    assert body is not None
    await services.fine_tuning.handle(body, delivery_count=1)
    prepared = await services.fine_tuning.get(record.id, owner=None, refresh=False)
    # A delivery cut off after its uploads, before it recorded them or created the job.
    raw, etag = await services.fine_tuning.blobs.get(f"{record.id}.json", missing="")
    cut = FineTuningRecord.model_validate_json(raw).model_copy(
        update={"files": {}, "upstream_job_id": None, "status": "preparing", "stage": "uploading"}
    )
    await services.fine_tuning.blobs.put(f"{record.id}.json", cut.model_dump_json(), etag=etag)
    fake_upstream.jobs.clear()
    await services.fine_tuning.handle(body, delivery_count=2)
    again = await services.fine_tuning.get(record.id, owner=None, refresh=False)
    assert len(uploads(fake_upstream)) == 2 and again.files == prepared.files and again.upstream_job_id is not None
