"""Reports asked for over HTTP before their timer has run: queued, never built inside the request.

The quota report walks the whole index and lists every blob; the permission report probes every
resource. Neither belongs in an HTTP request, so the first `GET` of a report that does not exist yet
leaves a pending marker and queues the report on the purge queue (the app's maintenance queue);
the caller gets 202 and polls the same route until the report is there. While a marker is fresh,
further first calls queue nothing more.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any, Literal

from azure.core.exceptions import AzureError, ResourceNotFoundError
from pydantic import BaseModel, ValidationError

from shared.platform.job_queue import JobQueue
from shared.reports.report_store import ReportStore

log = logging.getLogger(__name__)

RETRY_AFTER_SECONDS = 5
REQUEUE_AFTER = timedelta(minutes=10)
"""A pending report older than this is queued again (its message was lost or failed for good)."""


class ReportKind(StrEnum):
    QUOTA = "quota"
    PERMISSIONS = "permissions"


class PendingReport(BaseModel):
    """What the first call of a report route answers (202) while the report is built on the queue."""

    object: Literal["report.pending"] = "report.pending"
    report: ReportKind
    requested_at: datetime
    retry_after_seconds: int = RETRY_AFTER_SECONDS


class ReportRequestMessage(BaseModel):
    report: ReportKind


def report_request(body: bytes) -> ReportKind | None:
    """The report a maintenance-queue message asks for; None for any other message (a purge)."""
    try:
        value: Any = json.loads(body)
        return (
            ReportRequestMessage.model_validate(value).report if isinstance(value, dict) and "report" in value else None
        )
    except (ValueError, ValidationError):
        return None


class ReportRequests:
    """Queues reports asked for before they exist, and builds them when their message arrives."""

    def __init__(
        self,
        *,
        reports: ReportStore,
        queue: JobQueue,
        queue_name: str,
        builders: dict[ReportKind, Callable[[], Awaitable[object]]],
    ) -> None:
        self._reports = reports
        self._queue = queue
        self._queue_name = queue_name
        self._builders = builders

    async def request(self, kind: ReportKind, *, now: datetime | None = None) -> PendingReport:
        """Queue the report unless a recent request already did; the pending marker says since when."""
        now = now or datetime.now(UTC)
        pending = await self._reports.load(_marker(kind), PendingReport)
        if pending is not None and now - pending.requested_at < REQUEUE_AFTER:
            return pending
        pending = PendingReport(report=kind, requested_at=now)
        await self._reports.save(_marker(kind), pending)
        message_id = f"report-{kind.value}-{int(now.timestamp())}"
        await self._queue.send(
            self._queue_name, ReportRequestMessage(report=kind).model_dump_json(), message_id=message_id
        )
        log.info("The %s report was asked for before it existed: queued", kind.value)
        return pending

    async def run(self, kind: ReportKind) -> None:
        """Build the report (as its timer would) and clear the pending marker."""
        await self._builders[kind]()
        try:
            await self._reports.container.delete_blob(_marker(kind))
        except ResourceNotFoundError:
            pass
        except AzureError as exc:  # harmless: the report exists now, so the marker is never read
            log.warning("Pending marker of the %s report not removed: %s", kind.value, type(exc).__name__)


def _marker(kind: ReportKind) -> str:
    return f"{kind.value}/pending.json"
