"""A deleted completion reaches fine-tuning: files uploaded from a dataset that held it are deleted
upstream at once, not when their job ends."""

from __future__ import annotations

import uuid

from shared.datasets.job import DatasetParams
from shared.services import Services
from tests.fakes import FakeUpstream
from tests.shared.datasets.conftest import seed, stored
from tests.shared.fine_tuning.test_fine_tuning import PARAMS, deliver, receive, services

__all__ = ["services"]


async def test_deleting_a_completion_deletes_the_uploads_that_held_it(
    services: Services, fake_upstream: FakeUpstream
) -> None:
    tag = {"batch": uuid.uuid4().hex}
    ids = await seed(services, [stored(f"question {n}", metadata=tag) for n in range(24)])
    job = await services.dataset_jobs.submit(
        DatasetParams.model_validate({"kind": "distillation", "filter": {"metadata": tag}, "validation_fraction": 0.2})
    )
    while (body := await receive(services, services.settings.dataset_jobs_queue)) is not None:
        await services.dataset_jobs.handle(body, delivery_count=1)
    record = await services.fine_tuning.create(job.id, PARAMS, owner=None)
    await deliver(services)
    prepared = await services.fine_tuning.get(record.id, owner=None, refresh=False)
    assert prepared.files and fake_upstream.deleted_files == []  # training: its files are still upstream

    await services.forgetting.delete(ids[0])

    assert sorted(fake_upstream.deleted_files) == sorted(prepared.files.values())
    after = await services.fine_tuning.get(record.id, owner=None, refresh=False)
    assert after.files_deleted_at is not None
