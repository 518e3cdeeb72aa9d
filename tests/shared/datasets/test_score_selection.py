"""A dataset selected by scores holds exactly the completions whose scores pass."""

from __future__ import annotations

import json

from shared.datasets.job import DatasetParams, DatasetStatus
from shared.services import Services
from shared.store.scores import Score
from tests.shared.datasets.conftest import download, drain, read_job, seed, stored


async def test_distillation_keeps_only_well_scored_completions(services: Services) -> None:
    tag = {"category": "scored-test"}
    ids = await seed(services, [stored(f"q{n}", metadata=tag) for n in range(14)])
    for n, completion_id in enumerate(ids):
        quality = Score(name="quality", value=float(n % 5), author="key:default", created_at=1)
        await services.store.add_scores(completion_id, [quality])
    request = DatasetParams.model_validate(
        {"kind": "distillation", "filter": {"metadata": tag, "scores": {"quality": {"gte": 3}}}}
    )
    job = await services.dataset_jobs.submit(request)
    await drain(services)
    job = await read_job(services, job.id)
    assert job.status is DatasetStatus.FAILED, "5 well-scored completions are fewer than the 10 a dataset needs"
    assert job.error is not None and "Only 5 usable" in job.error.message

    for completion_id in ids[:8]:
        await services.store.add_scores(
            completion_id, [Score(name="quality", value=4.5, author="key:default", created_at=2)]
        )
    job = await services.dataset_jobs.submit(request)
    await drain(services)
    job = await read_job(services, job.id)
    assert job.status is DatasetStatus.SUCCEEDED, job.error
    written = [
        json.loads(line) for file in job.files for line in (await download(services, job.id, file.name)).splitlines()
    ]
    expected = {f"q{n}" for n in range(14) if n < 8 or n % 5 >= 3}
    assert {example["messages"][0]["content"] for example in written} == expected
