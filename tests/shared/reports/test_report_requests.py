"""No full scan inside an HTTP request: purge dry runs and first report calls run from the queue."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from shared.erasure.purge import parse_purge_params
from shared.platform.job_queue import read_local_message
from shared.reports.report_requests import REQUEUE_AFTER, ReportKind, report_request
from shared.services import Services
from shared.store.filter_jobs import JobStatus
from tests.conftest import ServicesFactory
from tests.shared.queues import local_queue
from tests.shared.seed import completion


async def take_messages(services: Services) -> list[bytes]:
    async with local_queue(services, services.settings.purge_jobs_queue) as queue:
        taken = [message async for message in queue.receive_messages(max_messages=32)]
        for message in taken:
            await queue.delete_message(message)
    return [read_local_message(message.content)[0].encode() for message in taken]


async def test_a_dry_run_is_queued_and_counts_without_deleting(make_services: ServicesFactory, tag: str) -> None:
    services = await make_services()
    matching = [completion(metadata={"tag": tag}) for _ in range(3)]
    for item in [*matching, completion(metadata={"tag": "else"})]:
        await services.store.put(item)

    job = await services.purges.submit(
        parse_purge_params({"filter": {"metadata": {"tag": tag}}, "dry_run": True}), requested_by="default"
    )
    assert (job.status, job.dry_run, job.matched_count) == (JobStatus.QUEUED, True, None)
    [message] = await take_messages(services)
    assert report_request(message) is None  # a purge message, not a report request

    done = await services.purges.run(job.id)
    assert (done.status, done.matched_count, done.receipt) == (JobStatus.SUCCEEDED, 3, None)
    assert await services.purges.get(job.id) == done
    for item in matching:
        assert await services.store.exists(item.id)


async def test_a_report_asked_for_before_it_exists_is_queued_once_and_built_from_the_queue(
    make_services: ServicesFactory,
) -> None:
    services = await make_services()
    await services.store.put(completion())
    requests = services.report_requests
    now = datetime.now(UTC)

    first = await requests.request(ReportKind.QUOTA, now=now)
    again = await requests.request(ReportKind.QUOTA, now=now + timedelta(seconds=30))
    assert again == first and first.object == "report.pending"
    assert await services.quota_reporter.latest() is None  # nothing was built inside the request
    [message] = await take_messages(services)
    assert report_request(message) is ReportKind.QUOTA

    await requests.run(ReportKind.QUOTA)
    report = await services.quota_reporter.latest()
    assert report is not None and report.completion_count == 1
    assert [b.name async for b in services.reports_container.list_blobs(name_starts_with="quota/pending")] == []

    stale = await requests.request(ReportKind.PERMISSIONS, now=now - REQUEUE_AFTER - timedelta(seconds=1))
    renewed = await requests.request(ReportKind.PERMISSIONS, now=now)
    assert renewed.requested_at > stale.requested_at
    assert [report_request(body) for body in await take_messages(services)] == [ReportKind.PERMISSIONS] * 2
