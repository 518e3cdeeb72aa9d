"""The mechanics of a chunked job over a filter selection, shared by purges and bulk actions.

Both record the job as a JSON blob (ETag-guarded), walk the index from a checkpoint a batch at a
time within a row and time budget, work a batch a few rows at a time, and mark the job failed on
the queue's last delivery. What each does to a match, and what it keeps as progress, stays its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Generic, TypeVar

from pydantic import BaseModel, ValidationError

from shared.platform.access import same_owner
from shared.platform.errors import DistilleryError, InvalidRequest, NotFound, StorageUnavailable
from shared.store.completion_filter import CompletionFilter
from shared.store.completion_index import IndexEntry
from shared.store.json_blobs import JsonBlobs, Superseded

MAX_DELIVERY_COUNT = 5
"""The maintenance (purge) queue's `maxDeliveryCount` (infra/app/servicebus.bicep): the last delivery marks a failure."""
CONCURRENCY = 16
"""Rows of one batch worked at once."""
FAIL_ATTEMPTS = 3

_T = TypeVar("_T")
_R = TypeVar("_R")


_J = TypeVar("_J", bound=BaseModel)


class JobRecords(Generic[_J]):
    """One kind of job's records: `<folder>/<prefix><24 hex>.json`, read and written with their ETag."""

    def __init__(self, records: JsonBlobs, *, model: type[_J], prefix: str, folder: str, noun: str, param: str):
        self._records = records
        self._model = model
        self._prefix = prefix
        self._folder = folder
        self._noun = noun
        self._param = param

    def new_id(self) -> str:
        return self._prefix + secrets.token_hex(12)

    def not_found(self, job_id: str) -> NotFound:
        return NotFound(f"No {self._noun} found with id '{job_id[:80]}'.", param=self._param)

    async def submit(self, job: _J, send: Callable[[], Awaitable[None]], *, failed: _J) -> None:
        """Record and queue a job; when the queue refuses, the record says `failed` (never `queued` forever)."""
        etag = await self._records.put(self._name(_id(job)), job.model_dump_json(), create=True)
        try:
            await send()
        except StorageUnavailable:
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
        if owner_scope is not None and not same_owner(str(getattr(job, "requested_by")), owner_scope):  # noqa: B009
            raise self.not_found(job_id)
        return job

    async def save(self, job: _J, etag: str) -> str:
        return await self._records.put(self._name(_id(job)), job.model_dump_json(), etag=etag)

    async def mark_failed(self, job_id: str, fail: Callable[[_J], None]) -> None:
        """Apply `fail` and save, unless the job finished meanwhile (re-read on a conflict)."""
        for _ in range(FAIL_ATTEMPTS):
            job, etag = await self.read(job_id)
            if _finished(job):
                return
            fail(job)
            try:
                await self.save(job, etag)
                return
            except Superseded:
                continue

    def _name(self, job_id: str) -> str:
        return f"{self._folder}/{job_id}.json"


def _id(job: BaseModel) -> str:
    return str(getattr(job, "id"))  # noqa: B009  # every job model has an `id`


def _finished(job: BaseModel) -> bool:
    return bool(getattr(job, "finished"))  # noqa: B009  # every job model has `finished`


async def deliver(run: Awaitable[object], *, delivery_count: int, fail: Callable[[str], Awaitable[None]]) -> None:
    """One queue delivery; raises so the queue retries, and on the last delivery calls `fail` with the reason
    (in words safe to keep on the record)."""
    try:
        await run
    except Exception as exc:
        if delivery_count >= MAX_DELIVERY_COUNT:
            await fail(exc.message if isinstance(exc, DistilleryError) else f"unexpected {type(exc).__name__}")
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
