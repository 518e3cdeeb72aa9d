"""The mechanics of a chunked job over a filter selection, shared by purges, bulk actions and relabel jobs.

All three record the job as a JSON blob (ETag-guarded) with one status and error shape, queue it on
the maintenance queue and mark it failed on the queue's last delivery. Purges and bulk actions also
run alike (`ChunkedJobs`): walk the index from a checkpoint a batch at a time within a row and time
budget, work a batch a few rows at a time, and hand over to a continuation message when the budget is
spent. What each does to a match, and what it counts as progress, stays its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated, Generic, TypeVar

from pydantic import BaseModel, BeforeValidator, Field, ValidationError

from shared.platform.access import OwnerId, same_owner, stable_owner
from shared.platform.errors import DistilleryError, InvalidRequest, NotFound, StorageUnavailable
from shared.platform.telemetry import job_chunk
from shared.store.completion_filter import CompletionFilter
from shared.store.completion_index import IndexEntry
from shared.store.json_blobs import JsonBlobs, Superseded

log = logging.getLogger(__name__)

MAX_DELIVERY_COUNT = 5
"""The maintenance (purge) queue's `maxDeliveryCount` (infra/app/servicebus.bicep): the last delivery marks a failure."""
CONCURRENCY = 16
"""Rows of one batch worked at once."""
FAIL_ATTEMPTS = 3

_T = TypeVar("_T")
_R = TypeVar("_R")


class JobStatus(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"


class JobError(BaseModel):
    code: str
    message: str


class WalkProgress(BaseModel):
    """The checkpoint a continuation resumes from; each kind of job adds what it counts."""

    part: int = 0
    """The message part that runs next."""
    walked: int = 0
    """Index rows read so far."""
    after: str | None = None
    """The last id walked: the index walk's cursor."""


class FilterJob(BaseModel):
    """What every job over a filter records; each kind adds what it does to a match and its receipt."""

    id: str
    object: str
    status: JobStatus
    filter: CompletionFilter | None
    all: bool
    requested_by: Annotated[str, BeforeValidator(stable_owner)]
    """The requester's stable owner id."""
    owner_scope: OwnerId = None
    """Set when the requester sees only its own completions (owner scoping): only those are touched."""
    created_at: datetime
    started_at: datetime | None = None
    runs: int = 0
    progress: WalkProgress = Field(default_factory=WalkProgress)
    error: JobError | None = None

    @property
    def finished(self) -> bool:
        return self.status in (JobStatus.SUCCEEDED, JobStatus.FAILED)


def part_message_id(job_id: str, part: int) -> str:
    """A continuation's Service Bus message id: a resend of the same part is dropped as a duplicate."""
    return job_id if part == 0 else f"{job_id}-part{part}"


_J = TypeVar("_J", bound=FilterJob)


class JobRecords(Generic[_J]):
    """One kind of job's records: `<folder>/<prefix><24 hex>.json`, read and written with their ETag."""

    def __init__(self, records: JsonBlobs, *, model: type[_J], prefix: str, folder: str, noun: str, param: str):
        self._records = records
        self._model = model
        self._prefix = prefix
        self._folder = folder
        self.noun = noun
        """What the job is called in messages: `purge`, `bulk action`."""
        self._param = param

    def new_id(self) -> str:
        return self._prefix + secrets.token_hex(12)

    def not_found(self, job_id: str) -> NotFound:
        return NotFound(f"No {self.noun} found with id '{job_id[:80]}'.", param=self._param)

    async def submit(self, job: _J, send: Callable[[], Awaitable[None]], *, untouched: str) -> None:
        """Record and queue a job; when the queue refuses, the record says `failed` (never `queued` forever)
        with `The <noun> could not be queued; <untouched>.`"""
        etag = await self._records.put(self._name(job.id), job.model_dump_json(), create=True)
        try:
            await send()
        except StorageUnavailable:
            message = f"The {self.noun} could not be queued; {untouched}."
            error = JobError(code="queue_unavailable", message=message)
            failed = job.model_copy(update={"status": JobStatus.FAILED, "error": error})
            with contextlib.suppress(Superseded, StorageUnavailable):
                await self.save(failed, etag)
            raise

    async def read(self, job_id: str) -> tuple[_J, str]:
        """The record and its ETag; an id of the wrong shape or unknown answers 404."""
        suffix = job_id.removeprefix(self._prefix)
        if not (job_id.startswith(self._prefix) and len(suffix) == 24 and all(c in "0123456789abcdef" for c in suffix)):
            raise self.not_found(job_id)
        raw, etag = await self._records.get(self._name(job_id), missing=self.not_found(job_id).message)
        return self._model.model_validate_json(raw), etag

    async def get(self, job_id: str, *, owner_scope: str | None) -> _J:
        """A job's record; a scoped caller sees only its own jobs (another's answers 404)."""
        job, _ = await self.read(job_id)
        if owner_scope is not None and not same_owner(job.requested_by, owner_scope):
            raise self.not_found(job_id)
        return job

    async def save(self, job: _J, etag: str) -> str:
        return await self._records.put(self._name(job.id), job.model_dump_json(), etag=etag)

    async def mark_failed(self, job_id: str, error: JobError) -> None:
        """Mark the job failed with `error`, unless it finished meanwhile (re-read on a conflict)."""
        for _ in range(FAIL_ATTEMPTS):
            job, etag = await self.read(job_id)
            if job.finished:
                return
            job.status, job.error = JobStatus.FAILED, error
            try:
                await self.save(job, etag)
                return
            except Superseded:
                continue

    def _name(self, job_id: str) -> str:
        return f"{self._folder}/{job_id}.json"


class ChunkedJobs(ABC, Generic[_J]):
    """Runs one kind of job a chunk per delivery; the kind says how a chunk walks, what it counts, how
    its next part is queued and how it finishes."""

    _records: JobRecords[_J]

    async def get(self, job_id: str, *, owner_scope: str | None = None) -> _J:
        """A job's record; a scoped caller sees only its own jobs (another's answers 404)."""
        return await self._records.get(job_id, owner_scope=owner_scope)

    async def _advance(self, job: _J, etag: str, *, part: int) -> _J:
        """Advance an unfinished job by one chunk from its checkpoint, then queue its next part or
        finish it; a stale or repeated message changes nothing."""
        if part < job.progress.part:
            await self._send_part(job.id, job.progress.part)  # its continuation may be lost
            return job
        name = self._records.noun.capitalize()
        if part > job.progress.part:
            log.warning("%s %s: part %s is ahead of the record (%s); ignored", name, job.id, part, job.progress.part)
            return job
        job.status, job.runs, job.error = JobStatus.RUNNING, job.runs + 1, None
        job.started_at = job.started_at or datetime.now(UTC)
        try:
            etag = await self._records.save(job, etag)
            with job_chunk(job.object, job.id, part=part) as chunk:
                before = self._counted(job)
                job, etag, walk_done = await self._chunk(job, etag)
                chunk.items = self._counted(job) - before
            if not walk_done:
                job.progress.part += 1
                etag = await self._records.save(job, etag)
                await self._send_part(job.id, job.progress.part)
                return job
            return await self._finish(job, etag)
        except Superseded:
            log.info("%s %s: another delivery advanced the record; this one stops", name, job.id)
            return (await self._records.read(job.id))[0]

    @abstractmethod
    async def _chunk(self, job: _J, etag: str) -> tuple[_J, str, bool]:
        """Walk and work one chunk from the checkpoint; True once the walk is done."""

    @abstractmethod
    def _counted(self, job: _J) -> int:
        """The job's work so far, as telemetry counts it."""

    @abstractmethod
    async def _send_part(self, job_id: str, part: int) -> None:
        """Queue the message that runs this part of the job."""

    @abstractmethod
    async def _finish(self, job: _J, etag: str) -> _J:
        """Write the receipt once the walk is done."""


async def deliver(
    records: JobRecords[_J], job_id: str, run: Awaitable[object], *, delivery_count: int, code: str, advice: str = ""
) -> None:
    """One queue delivery; raises so the queue retries, and on the last delivery marks the job failed with
    `code` and the reason (in words safe to keep on the record), followed by `advice`."""
    try:
        await run
    except Exception as exc:
        if delivery_count >= MAX_DELIVERY_COUNT:
            reason = exc.message if isinstance(exc, DistilleryError) else f"unexpected {type(exc).__name__}"
            message = f"The {records.noun} failed {delivery_count} times ({reason}){advice}."
            await records.mark_failed(job_id, JobError(code=code, message=message))
        raise


def invalid_body(exc: ValidationError, what: str, *, code: str | None = None) -> InvalidRequest:
    """The first problem in a job's request body: `Invalid <what>: <message> (<where>)`."""
    error = exc.errors()[0]
    where = ".".join(str(part) for part in error["loc"]) or None
    message = error["msg"].removeprefix("Value error, ")
    return InvalidRequest(f"Invalid {what}: {message}" + (f" ({where})" if where else ""), param=where, code=code)


def require_explicit_scope(selection: CompletionFilter | None, everything: bool, *, doing: str) -> None:
    """A job over a filter touches everything only when asked in so many words (`"all": true`, no
    filter); the owner is the caller's scope, never the body's. `doing` names the job's action."""
    empty = selection is None or selection.is_empty()
    if selection is not None and selection.owner is not None:
        raise ValueError("'owner' cannot be set in a filter")
    if empty and not everything:
        raise ValueError(f'the filter is empty: give one, or send "all": true to {doing} every stored completion')
    if everything and not empty:
        raise ValueError(f'"all": true would {doing} every stored completion, so it cannot be combined with a filter')


def scoped(selection: CompletionFilter, owner_scope: str | None) -> CompletionFilter:
    """The selection narrowed to one owner's completions when the requester sees only its own."""
    return selection if owner_scope is None else selection.model_copy(update={"owner": owner_scope})


class ChunkBudget:
    """How much one delivery walks before it hands over to a continuation."""

    def __init__(self, *, rows: int, seconds: float) -> None:
        self._rows = rows
        self._deadline = time.monotonic() + seconds
        self._walked = 0

    def spent(self, rows: int) -> bool:
        """Count `rows` walked; True once the rows or the time are used up."""
        self._walked += rows
        return self._walked >= self._rows or time.monotonic() >= self._deadline


async def bounded(items: list[_T], work: Callable[[_T], Awaitable[_R]]) -> list[_R]:
    """`work` over one batch, CONCURRENCY at a time, results in order (tasks for this batch only)."""
    semaphore = asyncio.Semaphore(CONCURRENCY)

    async def one(item: _T) -> _R:
        async with semaphore:
            return await work(item)

    return await asyncio.gather(*(one(item) for item in items))


async def batches(rows: AsyncIterator[IndexEntry], size: int) -> AsyncIterator[list[IndexEntry]]:
    batch: list[IndexEntry] = []
    async for row in rows:
        batch.append(row)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch
