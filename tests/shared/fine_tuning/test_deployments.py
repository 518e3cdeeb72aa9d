"""Deploy the student through a stand-in of Azure's control plane (the real management SDK and the real
managed-identity credential talk to it): create -> Creating -> Succeeded, a failed provisioning, a quota
refusal, delete; and upstreams without a control plane, where a deployment is registered by hand."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from azure.storage.queue.aio import QueueClient

from local_host.azurite import Azurite
from shared.fine_tuning.control_plane import ControlPlaneRefused
from shared.fine_tuning.deployments import DeploymentParams, parse_deployment_params
from shared.platform.errors import InvalidRequest
from shared.services import Services
from tests.conftest import ServicesFactory
from tests.fake_control_plane import ACCOUNT_ID, FakeControlPlane
from tests.fakes import FakeUpstream
from tests.shared.fine_tuning.test_fine_tuning import PARAMS, dataset, deliver


@pytest.fixture(scope="module")
def control_plane_server() -> Iterator[FakeControlPlane]:
    fake = FakeControlPlane().start()
    yield fake
    fake.stop()


@pytest.fixture
def control_plane(control_plane_server: FakeControlPlane, monkeypatch: pytest.MonkeyPatch) -> FakeControlPlane:
    """The stand-in, fresh; the process looks like an App Service with a managed identity."""
    control_plane_server.reset()
    for name, value in control_plane_server.identity.environment.items():
        monkeypatch.setenv(name, value)
    return control_plane_server


async def with_queues(azurite: Azurite, services: Services) -> Services:
    for queue_name in (services.settings.dataset_jobs_queue, services.settings.fine_tuning_jobs_queue):
        async with QueueClient.from_connection_string(azurite.connection_string, queue_name) as queue:
            await queue.create_queue()
    return services


@pytest.fixture
async def azure(
    azurite: Azurite, make_services: ServicesFactory, fake_upstream: FakeUpstream, control_plane: FakeControlPlane
) -> Services:
    made = await make_services(
        AZURE_OPENAI_ENDPOINT=fake_upstream.url,
        AZURE_OPENAI_API_KEY="data-plane-key",
        AZURE_OPENAI_RESOURCE_ID=ACCOUNT_ID,
        AZURE_RESOURCE_MANAGER_ENDPOINT=control_plane.url,
        DISTILLERY_CREDENTIAL="managed_identity",
        FINE_TUNING_DELIVERY_SECONDS="30",
    )
    return await with_queues(azurite, made)


async def succeeded_job(services: Services) -> str:
    record = await services.fine_tuning.create(await dataset(services), PARAMS, owner=None)
    await deliver(services)
    while (await services.fine_tuning.get(record.id, owner=None)).status != "succeeded":
        pass  # each read moves the fake upstream's job one status on
    return record.id


async def test_a_student_is_deployed_followed_to_succeeded_and_deleted(
    azure: Services, control_plane: FakeControlPlane
) -> None:
    job_id = await succeeded_job(azure)
    model = (await azure.fine_tuning.get(job_id, owner=None)).fine_tuned_model
    deployments = azure.student_deployments

    created = await deployments.create(job_id, DeploymentParams(), owner=None)
    assert (created.name, created.provisioning_state, created.managed) == (f"support-{job_id[-8:]}", "Creating", True)
    (put,) = [r for r in control_plane.requests if r["method"] == "PUT"]
    assert put["body"] == {
        "sku": {"name": "DeveloperTier", "capacity": 50},
        "properties": {"model": {"format": "OpenAI", "name": model, "version": "1"}},
    }
    assert put["headers"]["authorization"].startswith("Bearer ")  # the managed identity's token, not the API key

    ready = await deployments.get(job_id, created.name, owner=None)
    assert ready.provisioning_state == "Succeeded"
    lineage = (await azure.fine_tuning.get(job_id, owner=None)).view()["lineage"]
    assert lineage["fine_tuned_model"] == model and lineage["deployments"] == [created.name]

    deleted = await deployments.delete(job_id, created.name, owner=None)
    assert deleted.provisioning_state == "Deleted" and control_plane.deployments == {}
    assert [r["method"] for r in control_plane.requests][-1] == "DELETE"


async def test_the_timer_follows_a_failed_provisioning(azure: Services, control_plane: FakeControlPlane) -> None:
    job_id = await succeeded_job(azure)
    control_plane.failing_models.add(str((await azure.fine_tuning.get(job_id, owner=None)).fine_tuned_model))
    created = await azure.student_deployments.create(job_id, DeploymentParams(name="student-a"), owner=None)
    assert created.provisioning_state == "Creating"
    assert await azure.student_deployments.track() == 1
    assert await azure.student_deployments.track() == 0  # nothing left provisioning
    (failed,) = (await azure.fine_tuning.get(job_id, owner=None)).deployments
    assert failed.provisioning_state == "Failed" and failed.error is not None
    assert failed.error.code == "deployment_failed"


async def test_a_quota_refusal_passes_through_and_records_nothing(
    azure: Services, control_plane: FakeControlPlane
) -> None:
    job_id = await succeeded_job(azure)
    control_plane.quota["developertier"] = 10
    with pytest.raises(ControlPlaneRefused) as raised:
        await azure.student_deployments.create(job_id, DeploymentParams(), owner=None)
    assert raised.value.status == 400 and raised.value.code == "InsufficientQuota"
    assert "bigger than the current available capacity 10" in raised.value.message
    assert "smaller capacity" in raised.value.message  # and what to do about it
    assert (await azure.fine_tuning.get(job_id, owner=None)).deployments == []
    # A capacity that fits is accepted.
    fits = await azure.student_deployments.create(job_id, DeploymentParams(capacity=10), owner=None)
    assert fits.capacity == 10 and control_plane.deployments[fits.name]["sku"]["capacity"] == 10


async def test_a_job_not_yet_succeeded_has_nothing_to_deploy(azure: Services, control_plane: FakeControlPlane) -> None:
    record = await azure.fine_tuning.create(await dataset(azure), PARAMS, owner=None)
    with pytest.raises(InvalidRequest) as raised:
        await azure.student_deployments.create(record.id, DeploymentParams(), owner=None)
    assert raised.value.code == "model_not_ready" and control_plane.requests == []


async def test_without_a_control_plane_a_deployment_is_registered_by_hand(
    azurite: Azurite, make_services: ServicesFactory, fake_upstream: FakeUpstream, control_plane: FakeControlPlane
) -> None:
    compatible = await with_queues(
        azurite,
        await make_services(OPENAI_BASE_URL=fake_upstream.base_url, FINE_TUNING_DELIVERY_SECONDS="30"),
    )
    job_id = await succeeded_job(compatible)
    with pytest.raises(InvalidRequest) as raised:
        await compatible.student_deployments.create(job_id, DeploymentParams(), owner=None)
    assert raised.value.code == "deployment_unavailable" and raised.value.param == "existing"
    assert "OPENAI_BASE_URL" in raised.value.message and '"existing": true' in raised.value.message

    registered = await compatible.student_deployments.create(
        job_id, parse_deployment_params({"name": "my-student", "existing": True}), owner=None
    )
    assert (registered.managed, registered.provisioning_state) == (False, "Succeeded")
    assert [d.name for d in await compatible.student_deployments.list(job_id, owner=None)] == ["my-student"]
    assert (
        await compatible.student_deployments.delete(job_id, "my-student", owner=None)
    ).provisioning_state == "Deleted"
    assert control_plane.requests == []  # nothing was ever asked of a control plane

    with pytest.raises(InvalidRequest) as unnamed:
        parse_deployment_params({"existing": True})
    assert "name" in unnamed.value.message

    azure_without_account = await make_services(AZURE_OPENAI_ENDPOINT=fake_upstream.url, AZURE_OPENAI_API_KEY="k")
    assert "AZURE_OPENAI_RESOURCE_ID" in azure_without_account.student_deployments._missing_control_plane
