"""A fanned-out dataset build on three local hosts sharing one queue: the slices spread over the
hosts, a host killed mid-slice has its slices redone by the others, and the files are byte for byte
those of a one-host build, with no line twice."""

from __future__ import annotations

import json
import re
import secrets
import time
import uuid
from contextlib import ExitStack
from pathlib import Path

import pytest

from local_host.azurite import Azurite
from shared.datasets.builder import BuildLimits, DatasetJobs, source_digest
from shared.datasets.job import DatasetParams
from tests.conftest import RunningHost, ServicesFactory, start_host
from tests.e2e.polling import wait_until
from tests.shared.datasets.conftest import download, drain, read_job, seed, stored

SLICE = 40
COMPLETIONS = 5 * SLICE + 7
_SLICE_START = re.compile(r"Dataset (dataset-\w+): slice (\d+) part \d+ starts")


def slice_starts(host: RunningHost, dataset_id: str) -> list[int]:
    return [int(n) for job, n in _SLICE_START.findall(host.log()) if job == dataset_id]


@pytest.mark.timeout(300)  # three hosts start, and one is killed and its slice waits out its lock
async def test_three_hosts_build_the_slices_and_a_killed_host_is_redone(
    azurite: Azurite, make_services: ServicesFactory, tmp_path_factory: pytest.TempPathFactory
) -> None:
    suffix = uuid.uuid4().hex[:10]
    shared_storage = {
        "COMPLETIONS_CONTAINER": f"completions{suffix}",
        "COMPLETION_INDEX_TABLE": f"index{suffix}",
        "DATASETS_CONTAINER": f"datasets{suffix}",
        "DATASET_JOBS_QUEUE": f"dataset{suffix}",
    }
    services = await make_services(**shared_storage)
    tag = {"tag": suffix}
    ids = await seed(services, [stored(f"q{n}", metadata={**tag, "user": f"u{n % 9}"}) for n in range(COMPLETIONS)])
    request = {"kind": "distillation", "filter": {"metadata": tag}, "validation_fraction": 0.25, "seed": 2}

    settings = {
        **shared_storage,
        "DISTILLERY_API_KEY": secrets.token_urlsafe(16),
        "DATASET_SLICE_COMPLETIONS": str(SLICE),
        "DATASET_READ_CONCURRENCY": "1",  # slow slices, so one is caught running
        "LOCAL_LOCK_SECONDS": "2",  # a killed host's messages come back after 2 s
    }
    logs = tmp_path_factory.mktemp("slice-hosts")
    with ExitStack() as hosts:
        first, second, third = (
            hosts.enter_context(start_host(azurite.connection_string, logs, **settings)) for _ in range(3)
        )
        with first.http() as http:
            created = http.post("/api/datasets", json=request)
            assert created.status_code == 202, created.text
            dataset_id = created.json()["id"]
            victim = wait_for_a_slice_start([first, second, third], dataset_id)
            victim.process.kill()  # no delivery on it settles: its messages come back when their locks run out
            victim.process.wait()
            survivor = next(host for host in (first, second, third) if host is not victim)
        with survivor.http() as http:
            done = wait_until(
                http, f"/api/datasets/{dataset_id}", lambda b: b["status"] in ("succeeded", "failed"), 120
            )
            assert done["status"] == "succeeded", done["error"]
            files = {
                f["name"]: http.get(f"/api/datasets/{dataset_id}/files/{f['name']}").content for f in done["files"]
            }
            manifest = http.get(f"/api/datasets/{dataset_id}/files/manifest.json").json()
        ran_slices = {host.log_path.name: slice_starts(host, dataset_id) for host in (first, second, third)}

    slices = COMPLETIONS // SLICE + 1
    assert sum(1 for started in ran_slices.values() if started) >= 2, ran_slices  # spread over hosts
    assert {n for started in ran_slices.values() for n in started} == set(range(slices))
    assert done["progress"]["runs"] > 1 + slices  # the plan, each slice once, and the killed ones again
    assert done["counts"]["selected"] == done["counts"]["written"] == COMPLETIONS
    assert manifest["source"]["ids_digest"] == source_digest(ids)
    contents = [line for data in files.values() for line in data.splitlines()]
    assert len(contents) == len(set(contents)) == COMPLETIONS  # no line twice, none missing

    # The same selection built by one host in one slice.
    one_host = DatasetJobs(
        records=services.dataset_jobs.records,
        store=services.store,
        membership=services.dataset_jobs.membership,
        job_queue=services.job_queue,
        queue_name=services.settings.dataset_jobs_queue,
        limits=BuildLimits(slice_completions=10**9),
    )
    whole = await one_host.submit(DatasetParams.model_validate(request))
    await drain(services, one_host)
    reference = await read_job(services, whole.id)
    assert {file.name: await download(services, whole.id, file.name) for file in reference.files} == files
    assert [file.model_dump() for file in reference.files] == done["files"]
    assert json.dumps(reference.counts.model_dump(), sort_keys=True) == json.dumps(done["counts"], sort_keys=True)


def wait_for_a_slice_start(hosts: list[RunningHost], dataset_id: str) -> RunningHost:
    """The first host whose log shows it started a slice of the dataset."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        for host in hosts:
            if slice_starts(host, dataset_id):
                return host
        time.sleep(0.01)
    raise AssertionError("no host started a slice: " + "\n".join(Path(h.log_path).read_text()[-2000:] for h in hosts))
