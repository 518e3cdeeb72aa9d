"""Distill end to end through HTTP: completions stored with the `openai` SDK, a distillation dataset,
then a fine-tuning job that the host's queue prepares and the fake upstream trains, tracked to its
fine-tuned model; and the requests refused before anything is sent."""

from __future__ import annotations

from typing import Any

import httpx

from tests.conftest import RunningHost
from tests.e2e.polling import wait_listed, wait_until
from tests.e2e.test_datasets import wait_for
from tests.fakes import FakeUpstream


def wait_for_job(http: httpx.Client, job_id: str, seconds: float = 60) -> dict[str, Any]:
    finished = ("succeeded", "failed", "cancelled")
    return wait_until(http, f"/api/fine_tuning_jobs/{job_id}", lambda job: job["status"] in finished, seconds)


def test_distill_a_dataset_into_a_fine_tuned_model(host: RunningHost, fake_upstream: FakeUpstream, tag: str) -> None:
    client = host.openai_client()
    created = [
        client.chat.completions.create(
            model="teacher", store=True, metadata={"tag": tag}, messages=[{"role": "user", "content": f"q{n}"}]
        ).id
        for n in range(12)
    ]
    wait_listed(client, created)
    with host.http() as http:
        started = http.post(
            "/api/datasets",
            json={"kind": "distillation", "filter": {"metadata": {"tag": tag}}, "validation_fraction": 0},
        )
        dataset = wait_for(http, started.json()["id"], "succeeded", "failed")
        assert dataset["status"] == "succeeded", dataset

        bad = http.post(f"/api/datasets/{dataset['id']}/fine_tuning_jobs", json={"model": "m", "epochs": 3})
        assert bad.status_code == 400 and bad.json()["error"]["param"] == "epochs"
        unknown = http.post("/api/datasets/dataset-" + "0" * 32 + "/fine_tuning_jobs", json={"model": "m"})
        assert unknown.status_code == 404

        created = http.post(
            f"/api/datasets/{dataset['id']}/fine_tuning_jobs", json={"model": "gpt-4.1-mini", "suffix": "docs"}
        )
        assert created.status_code == 202, created.text
        job = wait_for_job(http, created.json()["id"])
        assert job["status"] == "succeeded" and job["fine_tuned_model"].startswith("ft:gpt-4.1-mini:")
        assert job["lineage"]["dataset"]["dataset_id"] == dataset["id"]
        assert job["training_file"] in fake_upstream.deleted_files and job["validation_file"] is None
        listed = http.get(f"/api/datasets/{dataset['id']}/fine_tuning_jobs").json()
        assert [j["id"] for j in listed["data"]] == [job["id"]]
