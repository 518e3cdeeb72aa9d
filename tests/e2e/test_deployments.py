"""Deploy the student end to end through HTTP: the host is configured like an Azure Function App on an
Azure OpenAI account (data plane: the fake upstream; control plane and managed identity: their stand-in),
distills a dataset, then creates, follows and deletes the fine-tuned model's deployment."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from local_host.azurite import Azurite
from tests.conftest import RunningHost, start_host
from tests.e2e.polling import wait_listed, wait_until
from tests.e2e.test_datasets import wait_for
from tests.e2e.test_fine_tuning import wait_for_job
from tests.fake_control_plane import ACCOUNT_ID, FakeControlPlane
from tests.fakes import FakeUpstream


@pytest.fixture(scope="module")
def control_plane() -> Iterator[FakeControlPlane]:
    fake = FakeControlPlane().start()
    yield fake
    fake.stop()


@pytest.fixture(scope="module")
def azure_host(
    azurite: Azurite, upstream: FakeUpstream, control_plane: FakeControlPlane, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningHost]:
    settings = {
        "AZURE_OPENAI_ENDPOINT": upstream.url,
        "AZURE_OPENAI_API_KEY": "data-plane-key",
        "AZURE_OPENAI_RESOURCE_ID": ACCOUNT_ID,
        "AZURE_RESOURCE_MANAGER_ENDPOINT": control_plane.url,
        "DISTILLERY_CREDENTIAL": "managed_identity",
        **control_plane.identity.environment,
    }
    log_dir: Path = tmp_path_factory.mktemp("azure-host")
    with start_host(azurite.connection_string, log_dir, **settings) as running:
        yield running


def test_deploy_follow_and_delete_the_student(
    azure_host: RunningHost, fake_upstream: FakeUpstream, control_plane: FakeControlPlane, tag: str
) -> None:
    client = azure_host.azure_client()
    created = [
        client.chat.completions.create(
            model="teacher", store=True, metadata={"tag": tag}, messages=[{"role": "user", "content": f"q{n}"}]
        ).id
        for n in range(12)
    ]
    wait_listed(client, created)
    with azure_host.http() as http:
        started = http.post(
            "/api/datasets",
            json={"kind": "distillation", "filter": {"metadata": {"tag": tag}}, "validation_fraction": 0},
        )
        dataset = wait_for(http, started.json()["id"], "succeeded", "failed")
        created = http.post(
            f"/api/datasets/{dataset['id']}/fine_tuning_jobs",
            json={"model": "gpt-4.1-mini", "suffix": "docs", "training_type": "developer"},
        )
        assert created.status_code == 202, created.text
        early = http.post(f"/api/fine_tuning_jobs/{created.json()['id']}/deployments", json={})
        assert early.status_code == 400 and early.json()["error"]["code"] == "model_not_ready"
        job = wait_for_job(http, created.json()["id"])
        assert job["status"] == "succeeded", job

        bad = http.post(f"/api/fine_tuning_jobs/{job['id']}/deployments", json={"name": "has space"})
        assert bad.status_code == 400 and bad.json()["error"]["param"] == "name"
        deployed = http.post(f"/api/fine_tuning_jobs/{job['id']}/deployments", json={"name": f"student-{tag}"})
        assert deployed.status_code == 202, deployed.text
        assert deployed.json()["provisioning_state"] == "Creating" and deployed.json()["sku"] == "DeveloperTier"
        path = f"/api/fine_tuning_jobs/{job['id']}/deployments/{deployed.json()['name']}"
        ready = wait_until(http, path, lambda d: d["provisioning_state"] == "Succeeded")
        assert ready["model"] == job["fine_tuned_model"]
        again = http.post(f"/api/fine_tuning_jobs/{job['id']}/deployments", json={"name": f"student-{tag}"})
        assert again.status_code == 409 and again.json()["error"]["code"] == "deployment_exists"

        listed = http.get(f"/api/fine_tuning_jobs/{job['id']}/deployments").json()
        assert [d["name"] for d in listed["data"]] == [f"student-{tag}"]
        lineage = http.get(f"/api/fine_tuning_jobs/{job['id']}").json()["lineage"]
        assert lineage["dataset"]["dataset_id"] == dataset["id"] and lineage["deployments"] == [f"student-{tag}"]

        deleted = http.delete(path)
        assert deleted.status_code == 200 and deleted.json()["provisioning_state"] == "Deleted"
        assert f"student-{tag}" not in control_plane.deployments
        missing = http.get(f"/api/fine_tuning_jobs/{job['id']}/deployments/nobody")
        assert missing.status_code == 404
