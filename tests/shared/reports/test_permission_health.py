"""Permission probes against real Azurite resources: real successes, real failures and their fixes."""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta

import pytest
from azure.storage.blob import AccountSasPermissions, ResourceTypes, generate_account_sas
from azure.storage.blob.aio import BlobServiceClient
from azure.storage.queue.aio import QueueClient

from local_host.azurite import ACCOUNT, ACCOUNT_KEY, Azurite
from shared.reports.permission_health import PermissionChecker, ProbeStatus
from tests.conftest import ServicesFactory
from tests.fakes import FakeUpstream


async def test_every_probe_passes_on_a_healthy_set_up(
    make_services: ServicesFactory, azurite: Azurite, upstream: FakeUpstream, fake_upstream: FakeUpstream
) -> None:
    services = await make_services(
        OPENAI_BASE_URL=upstream.base_url, PERMISSION_PROBE_DEPLOYMENT="gpt-4o", DISTILLERY_API_KEY="k"
    )

    report = await services.permission_checker.run()

    statuses = {probe.name: probe.status for probe in report.probes}
    settings = services.settings
    assert statuses == {
        f"blob_container:{settings.completions_container}": ProbeStatus.OK,
        f"blob_container:{settings.datasets_container}": ProbeStatus.OK,
        f"blob_container:{settings.reports_container}": ProbeStatus.OK,
        f"blob_container:{settings.evals_container}": ProbeStatus.OK,
        f"blob_container:{settings.fine_tuning_container}": ProbeStatus.OK,
        f"blob_container:{settings.aliases_container}": ProbeStatus.OK,
        f"table:{settings.completion_index_table}": ProbeStatus.OK,
        f"queue:{settings.dataset_jobs_queue}": ProbeStatus.OK,
        f"queue:{settings.purge_jobs_queue}": ProbeStatus.OK,
        f"queue:{settings.eval_jobs_queue}": ProbeStatus.OK,
        f"queue:{settings.fine_tuning_jobs_queue}": ProbeStatus.OK,
        f"queue:{settings.online_evals_queue}": ProbeStatus.OK,
        "upstream:token": ProbeStatus.SKIPPED,
        "upstream:call": ProbeStatus.OK,
        "redaction:canary": ProbeStatus.SKIPPED,  # REDACTION is off
    }
    assert report.healthy
    assert fake_upstream.requests[-1]["body"]["max_tokens"] == 1
    assert [(i.name, i.kind) for i in report.identities] == [("default", "key")]
    assert report.readers == report.actors == ["default"]
    # Probes leave nothing behind, and no probe message is ever delivered.
    assert [blob.name async for blob in services.completions_container.list_blobs()] == []
    async with QueueClient.from_connection_string(azurite.connection_string, settings.purge_jobs_queue) as queue:
        assert [m async for m in queue.receive_messages()] == []
    assert (await services.permission_checker.latest()) == report


async def test_a_missing_container_fails_with_a_fix(
    make_services: ServicesFactory, caplog: pytest.LogCaptureFixture
) -> None:
    services = await make_services()
    await services.datasets_container.delete_container()  # as if it was never deployed

    with caplog.at_level(logging.ERROR, logger="shared.reports.permission_health"):
        report = await services.permission_checker.run()

    name = services.settings.datasets_container
    failed = [probe for probe in report.probes if probe.status is ProbeStatus.FAILED]
    assert [probe.name for probe in failed] == [f"blob_container:{name}"]
    assert (failed[0].operations, failed[0].error_code) == (["write"], "ContainerNotFound")
    assert failed[0].error == "The specified container does not exist."
    assert f"Create the blob container '{name}'" in (failed[0].fix or "") and "DATASETS_CONTAINER" in (
        failed[0].fix or ""
    )
    assert not report.healthy
    assert f"blob_container:{name} failed at write" in caplog.text
    skipped = {probe.name: probe.fix for probe in report.probes if probe.status is ProbeStatus.SKIPPED}
    assert set(skipped) == {"upstream:token", "upstream:call", "redaction:canary"}


async def test_a_read_only_credential_fails_with_the_role_to_assign(
    make_services: ServicesFactory, azurite: Azurite
) -> None:
    writable = await make_services()
    sas = generate_account_sas(
        ACCOUNT,
        ACCOUNT_KEY,
        resource_types=ResourceTypes(service=True, container=True, object=True),
        permission=AccountSasPermissions(read=True, list=True),
        expiry=datetime.now(UTC) + timedelta(hours=1),
    )
    blob_endpoint = next(part for part in azurite.connection_string.split(";") if part.startswith("BlobEndpoint="))
    name = writable.settings.completions_container
    async with BlobServiceClient.from_connection_string(f"{blob_endpoint};SharedAccessSignature={sas}") as read_only:
        checker = PermissionChecker(
            containers=[(read_only.get_container_client(name), "COMPLETIONS_CONTAINER")],
            table=writable.index_table,
            table_setting="COMPLETION_INDEX_TABLE",
            queues=[],
            queue_probe=writable.queue_probe,
            token=None,
            upstream=writable.upstream,
            probe_deployment=None,
            identities=[],
            reports=writable.report_store,
        )
        report = await checker.run()

    probe = report.probes[0]
    assert (probe.name, probe.status, probe.operations) == (f"blob_container:{name}", ProbeStatus.FAILED, ["write"])
    assert probe.error_code == "AuthorizationPermissionMismatch"
    assert probe.fix is not None and "Assign 'Storage Blob Data Contributor'" in probe.fix
    assert "managed identity" in probe.fix
    assert report.probes[1].status is ProbeStatus.OK and not report.healthy
    assert report.readers == report.actors == []
