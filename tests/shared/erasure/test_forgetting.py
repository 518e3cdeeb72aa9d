"""Right to be forgotten in datasets: a deleted completion (API, purge, retention) never stays in a
dataset file, even when the delete races the build."""

from __future__ import annotations

import pytest
from azure.data.tables.aio import TableClient

from local_host.azurite import Azurite
from shared.datasets.builder import BuildLimits, DatasetJobs
from shared.datasets.job import DatasetParams, DatasetStatus
from shared.datasets.membership import DatasetMembership
from shared.erasure.forgetting import Forgetting
from shared.erasure.purge import parse_purge_params
from shared.platform.errors import NotFound, StorageUnavailable
from shared.services import Services
from shared.store.completion_index import IndexEntry
from tests.shared.datasets.conftest import download, drain, read_job, receive, seed, stored

TAG = {"category": "forget-test"}


def evaluation() -> DatasetParams:
    return DatasetParams.model_validate({"kind": "evaluation", "filter": {"metadata": TAG}})


async def files_of(services: Services, dataset_id: str) -> list[str]:
    prefix = f"{dataset_id}/"
    return [
        name.removeprefix(prefix) async for name in services.datasets_container.list_blob_names(name_starts_with=prefix)
    ]


async def built(services: Services, jobs: DatasetJobs | None = None) -> str:
    job = await (jobs or services.dataset_jobs).submit(evaluation())
    await drain(services, jobs)
    return job.id


async def test_a_deleted_completion_is_removed_from_its_dataset(services: Services) -> None:
    ids = await seed(
        services, [stored(f"keep {n}", metadata=TAG) for n in range(3)] + [stored("forget me", metadata=TAG)]
    )
    dataset_id = await built(services)
    assert b"forget me" in await download(services, dataset_id, "eval.jsonl")

    await services.forgetting.delete(ids[-1])

    rebuilding = await read_job(services, dataset_id)
    assert (rebuilding.status, rebuilding.rebuilds, rebuilding.files) == (DatasetStatus.QUEUED, 1, [])
    assert await files_of(services, dataset_id) == ["job.json"]  # the old file is gone at once
    await drain(services)
    rebuilt = await read_job(services, dataset_id)
    assert rebuilt.status is DatasetStatus.SUCCEEDED and rebuilt.counts.written == 3
    data = await download(services, dataset_id, "eval.jsonl")
    assert b"forget me" not in data and data.count(b"\n") == 3
    assert sorted(await files_of(services, dataset_id)) == ["job.json", "r1/eval.jsonl", "r1/manifest.json"]


async def test_deleting_a_deleted_completion_again_changes_nothing(services: Services) -> None:
    ids = await seed(services, [stored("keep", metadata=TAG), stored("forget me", metadata=TAG)])
    dataset_id = await built(services)
    await services.forgetting.delete(ids[-1])
    await drain(services)
    before = await read_job(services, dataset_id)
    assert (before.status, before.rebuilds) == (DatasetStatus.SUCCEEDED, 1)

    with pytest.raises(NotFound):
        await services.forgetting.delete(ids[-1])

    assert await read_job(services, dataset_id) == before  # no rebuild queued, same files
    assert await receive(services) is None


async def test_a_delete_retried_after_its_datasets_step_failed_still_rebuilds(
    services: Services, azurite: Azurite
) -> None:
    """The document went but its datasets could not be looked up: the client's retry (a 404) finishes the job."""
    ids = await seed(services, [stored("keep", metadata=TAG), stored("forget me", metadata=TAG)])
    dataset_id = await built(services)
    async with TableClient.from_connection_string(azurite.connection_string, "nosuchtable") as missing:
        unreadable = DatasetJobs(
            records=services.dataset_jobs.records,
            store=services.store,
            membership=DatasetMembership(missing),
            job_queue=services.job_queue,
            queue_name=services.settings.dataset_jobs_queue,
            limits=services.dataset_jobs.limits,
        )
        with pytest.raises(StorageUnavailable):
            await Forgetting(
                store=services.store, datasets=unreadable, evals=services.evals, fine_tuning=services.fine_tuning
            ).delete(ids[-1])
    assert (await read_job(services, dataset_id)).rebuilds == 0

    with pytest.raises(NotFound):
        await services.forgetting.delete(ids[-1])

    await drain(services)
    rebuilt = await read_job(services, dataset_id)
    assert (rebuilt.status, rebuilt.rebuilds, rebuilt.counts.written) == (DatasetStatus.SUCCEEDED, 1, 1)
    assert b"forget me" not in await download(services, dataset_id, "eval.jsonl")


async def test_a_dataset_without_the_completion_is_left_alone(services: Services) -> None:
    await seed(services, [stored(f"keep {n}", metadata=TAG) for n in range(2)])
    [other] = await seed(services, [stored("elsewhere", metadata={"category": "else"})])
    dataset_id = await built(services)

    await services.forgetting.delete(other)

    assert (await read_job(services, dataset_id)).rebuilds == 0


async def test_a_purge_reaches_datasets(services: Services) -> None:
    ids = await seed(services, [stored(f"keep {n}", metadata=TAG) for n in range(2)])
    [doomed] = await seed(services, [stored("purge me", metadata={**TAG, "user": "u-9"})])
    dataset_id = await built(services)

    params = parse_purge_params({"filter": {"metadata": {"user": "u-9"}}})
    await services.purges.run((await services.purges.submit(params, requested_by="default")).id)

    assert (await read_job(services, dataset_id)).rebuilds == 1
    await drain(services)
    job = await read_job(services, dataset_id)
    assert job.status is DatasetStatus.SUCCEEDED and job.counts.written == len(ids)
    assert b"purge me" not in await download(services, dataset_id, "eval.jsonl")
    assert not await services.store.exists(doomed)


async def test_a_delete_racing_a_build_is_not_in_the_finished_dataset(services: Services) -> None:
    """The build has already read (and staged) the completion when it is deleted; the dataset must not keep it."""
    ids = await seed(
        services, [stored("forget me", metadata=TAG)] + [stored(f"keep {n}", metadata=TAG) for n in range(4)]
    )
    chunked = DatasetJobs(
        records=services.dataset_jobs.records,
        store=services.store,
        membership=services.dataset_jobs.membership,
        job_queue=services.job_queue,
        queue_name=services.settings.dataset_jobs_queue,
        limits=BuildLimits(chunk_completions=2),
    )
    job = await chunked.submit(evaluation())
    first = await receive(services)
    assert first is not None
    await chunked.handle(first, delivery_count=1)  # part 0 read "forget me" into a staged block
    assert (await read_job(services, job.id)).checkpoint.walked == 2

    await services.forgetting.delete(ids[0])
    await drain(services, chunked)  # the stale part 1 and the rebuild's part

    done = await read_job(services, job.id)
    assert done.status is DatasetStatus.SUCCEEDED and done.counts.written == 4, done
    assert b"forget me" not in await download(services, job.id, "eval.jsonl")


async def test_a_stale_index_row_is_never_trusted_by_a_build(services: Services) -> None:
    """A failed metadata update once left a row under the old value; the build re-reads the document."""
    await seed(services, [stored(f"keep {n}", metadata=TAG) for n in range(2)])
    moved = stored("moved away", metadata={"category": "elsewhere"})
    await seed(services, [moved])
    stale = IndexEntry(id=moved.id, deployment=moved.deployment, model=moved.model, metadata=TAG)
    await services.store.index.add(stale)

    job = await read_job(services, await built(services))

    assert job.counts.written == 2 and job.counts.skipped == {"no_longer_matches": 1}
    assert b"moved away" not in await download(services, job.id, "eval.jsonl")
