"""Bulk purge by filter (the right to be forgotten), and the deletion loop retention shares.

A purge is recorded, queued, then run by a Service Bus-triggered function. The first run writes the
sorted list of matching ids next to the record, so a redelivered message deletes the same set again
(deleting what is already gone is a no-op) and produces the same receipt: safe to run twice.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import secrets
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, Literal

from azure.core.exceptions import AzureError, ResourceNotFoundError
from pydantic import BaseModel, ConfigDict, ValidationError, model_validator

from shared.completion_filter import CompletionFilter
from shared.completion_store import CompletionStore
from shared.errors import InvalidRequest, NotFound, StorageUnavailable
from shared.job_queue import JobQueue
from shared.report_store import ReportStore
from shared.telemetry import job_chunk

log = logging.getLogger(__name__)

DELETE_CONCURRENCY = 16
_ID_PREFIX = "purge_"


class PurgeParams(BaseModel):
    """`POST /api/purges` body: what to remove, or only how much would go."""

    model_config = ConfigDict(extra="forbid")

    filter: CompletionFilter | None = None
    """The same selection the list API takes: `metadata`, `model`, `created_after`, `created_before`."""
    all: bool = False
    """Must be true, with no filter, to purge every stored completion."""
    dry_run: bool = False

    @model_validator(mode="after")
    def _explicit_scope(self) -> PurgeParams:
        empty = self.filter is None or self.filter.is_empty()
        if self.filter is not None and self.filter.owner is not None:
            raise ValueError("'owner' cannot be set in a purge filter")
        if empty and not self.all:
            raise ValueError('the filter is empty: give one, or send "all": true to purge every stored completion')
        if self.all and not empty:
            raise ValueError('"all": true purges everything, so it cannot be combined with a filter')
        return self

    @property
    def selection(self) -> CompletionFilter:
        return self.filter or CompletionFilter()


def parse_purge_params(body: dict[str, Any]) -> PurgeParams:
    try:
        return PurgeParams.model_validate(body)
    except ValidationError as exc:
        error = exc.errors()[0]
        where = ".".join(str(part) for part in error["loc"]) or None
        message = error["msg"].removeprefix("Value error, ")
        raise InvalidRequest(
            f"Invalid purge request: {message}" + (f" ({where})" if where else ""), param=where
        ) from None


class PurgeStatus(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"


class PurgeReceipt(BaseModel):
    """Proof of what a purge removed, without keeping what it removed."""

    deleted_count: int
    ids_sha256: str
    """sha256 of the sorted deleted ids joined by newlines."""
    completed_at: datetime


class PurgeJob(BaseModel):
    id: str
    object: Literal["purge"] = "purge"
    status: PurgeStatus
    filter: CompletionFilter | None
    all: bool
    requested_by: str
    owner_scope: str | None = None
    """Set when the requester sees only its own completions (owner scoping): only those are purged."""
    created_at: datetime
    started_at: datetime | None = None
    receipt: PurgeReceipt | None = None


class PurgeCount(BaseModel):
    object: Literal["purge.dry_run"] = "purge.dry_run"
    filter: CompletionFilter | None
    all: bool
    matched_count: int


class PurgeService:
    """Counts, records, queues and runs purges."""

    def __init__(self, *, store: CompletionStore, reports: ReportStore, queue: JobQueue, queue_name: str) -> None:
        self._store = store
        self._reports = reports
        self._queue = queue
        self._queue_name = queue_name

    async def count(self, params: PurgeParams, *, owner_scope: str | None = None) -> PurgeCount:
        matched = 0
        async for _ in self._store.index.walk(_scoped(params.selection, owner_scope)):
            matched += 1
        return PurgeCount(filter=params.filter, all=params.all, matched_count=matched)

    async def submit(self, params: PurgeParams, *, requested_by: str, owner_scope: str | None = None) -> PurgeJob:
        job = PurgeJob(
            id=_ID_PREFIX + secrets.token_hex(12),
            status=PurgeStatus.QUEUED,
            filter=params.filter,
            all=params.all,
            requested_by=requested_by,
            owner_scope=owner_scope,
            created_at=datetime.now(UTC),
        )
        await self._reports.save(_record(job.id), job)
        await self._queue.send(self._queue_name, job.model_dump_json(include={"id"}), message_id=job.id)
        log.info("Purge %s queued by %s", job.id, requested_by)
        return job

    async def get(self, purge_id: str, *, owner_scope: str | None = None) -> PurgeJob:
        """A purge record; a scoped caller sees only its own purges (another's answers 404)."""
        job = await self._reports.load(_record(purge_id), PurgeJob) if _is_purge_id(purge_id) else None
        if job is None or (owner_scope is not None and job.requested_by != owner_scope):
            raise NotFound(f"No purge found with id '{purge_id[:80]}'.", param="purge_id")
        return job

    async def run(self, purge_id: str) -> PurgeJob:
        """Delete the purge's matches and write its receipt; a second run finds it done or redoes the same set."""
        job = await self.get(purge_id)
        if job.status is PurgeStatus.SUCCEEDED:
            log.info("Purge %s already done; nothing to do", purge_id)
            return job
        with job_chunk("purge", purge_id) as chunk:
            selected = await self._selected_ids(job)
            job = job.model_copy(update={"status": PurgeStatus.RUNNING, "started_at": datetime.now(UTC)})
            await self._reports.save(_record(purge_id), job)
            await delete_completions(self._store, selected)
            chunk.items = len(selected)
        digest = hashlib.sha256("\n".join(selected).encode()).hexdigest()
        receipt = PurgeReceipt(deleted_count=len(selected), ids_sha256=digest, completed_at=datetime.now(UTC))
        job = job.model_copy(update={"status": PurgeStatus.SUCCEEDED, "receipt": receipt})
        await self._reports.save(_record(purge_id), job)
        log.info("Purge %s deleted %s stored completions (ids sha256 %s)", purge_id, len(selected), digest)
        return job

    async def _selected_ids(self, job: PurgeJob) -> list[str]:
        """The ids chosen on the first run, kept so every later run works on exactly the same set."""
        blob = self._reports.container.get_blob_client(_ids(job.id))
        try:
            download = await blob.download_blob()
            return (await download.readall()).decode().split()
        except ResourceNotFoundError:
            pass
        except AzureError as exc:
            raise StorageUnavailable("Could not read the purge's id list.") from exc
        selection = _scoped(job.filter or CompletionFilter(), job.owner_scope)
        indexed = sorted({entry.id async for entry in self._store.index.walk(selection)})
        selected = await _confirmed(self._store, indexed, selection)
        try:
            await blob.upload_blob("\n".join(selected).encode(), overwrite=True)
        except AzureError as exc:
            raise StorageUnavailable("Could not write the purge's id list.") from exc
        return selected


async def delete_completions(store: CompletionStore, completion_ids: list[str]) -> int:
    """Delete documents and their index rows, a few at a time; an id already gone is skipped."""
    deleted = 0
    semaphore = asyncio.Semaphore(DELETE_CONCURRENCY)

    async def delete(completion_id: str) -> None:
        nonlocal deleted
        async with semaphore:
            try:
                await store.delete(completion_id)
                deleted += 1
            except NotFound:
                pass

    await asyncio.gather(*(delete(completion_id) for completion_id in completion_ids))
    return deleted


async def _confirmed(store: CompletionStore, completion_ids: list[str], selection: CompletionFilter) -> list[str]:
    """The ids whose documents match too: an index row can be stale, and purge never trusts one alone."""
    semaphore = asyncio.Semaphore(DELETE_CONCURRENCY)

    async def check(completion_id: str) -> bool:
        async with semaphore:
            return await store.matches(completion_id, selection)

    verdicts = await asyncio.gather(*(check(completion_id) for completion_id in completion_ids))
    return [completion_id for completion_id, keep in zip(completion_ids, verdicts, strict=True) if keep]


def _scoped(selection: CompletionFilter, owner_scope: str | None) -> CompletionFilter:
    return selection if owner_scope is None else selection.model_copy(update={"owner": owner_scope})


def _is_purge_id(value: str) -> bool:
    suffix = value.removeprefix(_ID_PREFIX)
    return value.startswith(_ID_PREFIX) and len(suffix) == 24 and all(c in "0123456789abcdef" for c in suffix)


def _record(purge_id: str) -> str:
    return f"purges/{purge_id}.json"


def _ids(purge_id: str) -> str:
    return f"purges/{purge_id}.ids.txt"
