"""Bulk purge by filter (the right to be forgotten), and the deletion loop retention shares.

A purge is recorded, queued, then run by a Service Bus-triggered function in chunks, like dataset
jobs: a delivery walks the index from the record's checkpoint, a batch at a time, and stops after a
time or row budget, saves the checkpoint and queues a continuation. Memory is one batch, whatever
the number of matches. Before a batch is deleted its confirmed ids are saved as `pending` (ETag
condition), so a delivery that dies mid-batch is finished by the next one with the same count and
digest: safe to run twice, and the receipt is exact.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from shared.platform.errors import NotFound
from shared.platform.job_queue import JobQueue
from shared.store.completion_filter import CompletionFilter
from shared.store.completion_store import CompletionStore, in_selection
from shared.store.filter_jobs import (
    ChunkBudget,
    ChunkedJobs,
    FilterJob,
    JobRecords,
    JobStatus,
    WalkProgress,
    batches,
    bounded,
    deliver,
    invalid_body,
    part_message_id,
    require_explicit_scope,
    scoped,
)
from shared.store.json_blobs import JsonBlobs, Superseded

log = logging.getLogger(__name__)

ORPHAN_GRACE = timedelta(hours=1)
"""A document younger than this with no index row may be a store still writing its rows: not an orphan yet."""
_ID_PREFIX = "purge_"
_DIGEST_MODULUS = 2**256
DIGEST_METHOD = "sum of sha256(completion id) over deleted completions, mod 2**256"
LEGACY_DIGEST_METHOD = "sha256 of the sorted deleted ids joined by newlines"

DeletedHook = Callable[[list[str]], Awaitable[None]]
"""Called with each batch of deleted ids (the datasets that hold them are rebuilt)."""


@dataclass(frozen=True)
class PurgeLimits:
    batch: int = 200
    """Index rows checked and deleted together; also the most ids a record keeps as `pending`."""
    chunk_rows: int = 50_000
    """Index rows one delivery walks before it hands over to a continuation."""
    chunk_seconds: float = 240.0
    orphan_grace: timedelta = ORPHAN_GRACE


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
        require_explicit_scope(self.filter, self.all, doing="purge")
        return self

    @property
    def selection(self) -> CompletionFilter:
        return self.filter or CompletionFilter()


def parse_purge_params(body: dict[str, Any]) -> PurgeParams:
    try:
        return PurgeParams.model_validate(body)
    except ValidationError as exc:
        raise invalid_body(exc, "purge request") from None


class PurgeReceipt(BaseModel):
    """Proof of what a purge removed, without keeping what it removed (no content, no id list)."""

    deleted_count: int
    ids_digest: str
    """Sum of sha256(id) over the deleted ids, mod 2**256, in hex: order- and chunk-independent."""
    ids_digest_method: str = DIGEST_METHOD
    completed_at: datetime

    @model_validator(mode="before")
    @classmethod
    def _legacy(cls, value: Any) -> Any:
        """Receipts written before chunked purges hold `ids_sha256` (of the sorted ids joined by newlines)."""
        if isinstance(value, dict) and "ids_sha256" in value and "ids_digest" not in value:
            legacy = dict(value)
            legacy.update(ids_digest=legacy.pop("ids_sha256"), ids_digest_method=LEGACY_DIGEST_METHOD)
            return legacy
        return value


class PurgeProgress(WalkProgress):
    """The record's own checkpoint: never ids beyond one batch."""

    deleted: int = 0
    ids_digest: str = "0" * 64
    pending: list[str] = Field(default_factory=list)
    """Confirmed matches of the batch being deleted; counted once they are gone."""


class PurgeJob(FilterJob):
    """A purge's record. Once it has succeeded, the filter's metadata values are kept only as
    `sha256:<hex>` of the value. A dry run only counts the matches (on the queue like a purge, so no
    scan runs inside a request)."""

    object: Literal["purge"] = "purge"
    dry_run: bool = False
    matched_count: int | None = None
    """A dry run's answer, once it has succeeded."""
    progress: PurgeProgress = Field(default_factory=PurgeProgress)
    receipt: PurgeReceipt | None = None

    def view(self) -> dict[str, Any]:
        """The API shape: progress without the cursor and pending ids."""
        return self.model_dump(mode="json", exclude={"progress": {"after", "pending", "part"}})


class PurgeMessage(BaseModel):
    """The purge queue's message body."""

    id: str
    part: int = Field(0, ge=0)

    @property
    def message_id(self) -> str:
        return part_message_id(self.id, self.part)


class PurgeCount(BaseModel):
    object: Literal["purge.dry_run"] = "purge.dry_run"
    filter: CompletionFilter | None
    all: bool
    matched_count: int


class PurgeService(ChunkedJobs[PurgeJob]):
    """Counts, records, queues and runs purges."""

    def __init__(
        self,
        *,
        store: CompletionStore,
        records: JsonBlobs,
        queue: JobQueue,
        queue_name: str,
        limits: PurgeLimits | None = None,
        on_deleted: DeletedHook | None = None,
    ) -> None:
        self._store = store
        self._records = JobRecords(
            records, model=PurgeJob, prefix=_ID_PREFIX, folder="purges", noun="purge", param="purge_id"
        )
        self._queue = queue
        self._queue_name = queue_name
        self.limits = limits or PurgeLimits()
        self._on_deleted = on_deleted

    async def count(self, params: PurgeParams, *, owner_scope: str | None = None) -> PurgeCount:
        """Walk the index for the matches (a full scan for a wide filter: run it from the queue, see `submit`)."""
        matched = 0
        async for _ in self._store.index.walk(scoped(params.selection, owner_scope)):
            matched += 1
        return PurgeCount(filter=params.filter, all=params.all, matched_count=matched)

    async def submit(self, params: PurgeParams, *, requested_by: str, owner_scope: str | None = None) -> PurgeJob:
        """Record and queue a purge; when the queue refuses, the record says `failed` (never `queued` forever)."""
        job = PurgeJob(
            id=self._records.new_id(),
            status=JobStatus.QUEUED,
            filter=params.filter,
            all=params.all,
            requested_by=requested_by,
            owner_scope=owner_scope,
            dry_run=params.dry_run,
            created_at=datetime.now(UTC),
        )
        await self._records.submit(job, lambda: self._send_part(job.id, 0), untouched="nothing was deleted")
        log.info("Purge %s%s queued by %s", job.id, " (dry run)" if job.dry_run else "", requested_by)
        return job

    async def handle(self, body: bytes, *, delivery_count: int) -> None:
        """One queue delivery; raises so the queue retries, and on the last delivery marks the purge failed."""
        message = PurgeMessage.model_validate_json(body)
        run = self.run(message.id, part=message.part)
        await deliver(
            self._records,
            message.id,
            run,
            delivery_count=delivery_count,
            code="purge_failed",
            advice="; submit it again",
        )

    async def run(self, purge_id: str, *, part: int = 0) -> PurgeJob:
        """Advance the purge by one chunk, or finish it; a stale or repeated message changes nothing."""
        job, etag = await self._records.read(purge_id)
        if job.finished:
            log.info("Purge %s is already %s; part %s ignored", purge_id, job.status, part)
            return job
        if job.dry_run:
            return await self._count_for(job, etag)
        return await self._advance(job, etag, part=part)

    async def _chunk(self, job: PurgeJob, etag: str) -> tuple[PurgeJob, str, bool]:
        progress = job.progress
        selection = scoped(job.filter or CompletionFilter(), job.owner_scope)
        etag = await self._settle_pending(job, etag)
        budget = ChunkBudget(rows=self.limits.chunk_rows, seconds=self.limits.chunk_seconds)
        async for rows in batches(self._store.index.walk(selection, after=progress.after), self.limits.batch):
            confirmed = await bounded(rows, lambda row: self._store.confirm(row, selection))
            progress.walked += len(rows)
            progress.after = rows[-1].id
            progress.pending = [completion.id for completion in confirmed if completion is not None]
            etag = await self._records.save(job, etag)
            etag = await self._settle_pending(job, etag, confirmed=True)
            if budget.spent(len(rows)):
                return job, etag, False
        return job, await self._orphans(job, etag, selection), True

    async def _orphans(self, job: PurgeJob, etag: str, selection: CompletionFilter) -> str:
        """Documents with no index row (a delete that died halfway) that match: the walk cannot see them.

        One streamed pass over the container merged with the index; those written in the last
        ORPHAN_GRACE may be stores still writing their rows, and are left to the daily sweep.
        """
        older_than = min(job.created_at, datetime.now(UTC) - self.limits.orphan_grace)
        batch: list[str] = []
        async for orphan_id in self._store.orphans(older_than=older_than):
            completion = await self._store.read_orphan(orphan_id)
            if completion is not None and in_selection(completion, selection):
                batch.append(orphan_id)
            if len(batch) == self.limits.batch:
                job.progress.pending, batch = batch, []
                etag = await self._settle_pending(job, await self._records.save(job, etag))
        if batch:
            job.progress.pending = batch
            etag = await self._settle_pending(job, await self._records.save(job, etag))
        return etag

    async def _settle_pending(self, job: PurgeJob, etag: str, *, confirmed: bool = False) -> str:
        """Delete the pending batch (an id already gone was deleted by an earlier delivery) and count it."""
        pending = job.progress.pending
        if not pending:
            return etag
        await delete_completions(self._store, pending, on_deleted=self._on_deleted)
        digest = int(job.progress.ids_digest, 16)
        for completion_id in pending:
            digest = (digest + _id_digest(completion_id)) % _DIGEST_MODULUS
        job.progress.ids_digest = f"{digest:064x}"
        job.progress.deleted += len(pending)
        job.progress.pending = []
        if confirmed:
            return etag  # the next batch's save (or the finish) records it with the new cursor
        return await self._records.save(job, etag)

    async def _finish(self, job: PurgeJob, etag: str) -> PurgeJob:
        progress = job.progress
        job.receipt = PurgeReceipt(
            deleted_count=progress.deleted, ids_digest=progress.ids_digest, completed_at=datetime.now(UTC)
        )
        job.status = JobStatus.SUCCEEDED
        job.filter = _redacted(job.filter)
        progress.after = None
        await self._records.save(job, etag)
        log.info(
            "Purge %s deleted %s stored completions (ids digest %s)", job.id, progress.deleted, progress.ids_digest
        )
        return job

    async def _count_for(self, job: PurgeJob, etag: str) -> PurgeJob:
        """A dry run: count the matches on the queue (a wide filter is a full scan, never run in a request)."""
        counted = await self.count(
            PurgeParams(filter=job.filter, all=job.all, dry_run=True), owner_scope=job.owner_scope
        )
        job.status, job.matched_count = JobStatus.SUCCEEDED, counted.matched_count
        job.started_at = job.started_at or datetime.now(UTC)
        job.filter = _redacted(job.filter)
        with contextlib.suppress(Superseded):  # a redelivery counted it already
            await self._records.save(job, etag)
        log.info("Purge dry run %s matched %s stored completions", job.id, counted.matched_count)
        return job

    def _counted(self, job: PurgeJob) -> int:
        return job.progress.deleted

    async def _send_part(self, purge_id: str, part: int) -> None:
        message = PurgeMessage(id=purge_id, part=part)
        await self._queue.send(self._queue_name, message.model_dump_json(), message_id=message.message_id)


async def delete_completions(
    store: CompletionStore, completion_ids: list[str], *, on_deleted: DeletedHook | None = None
) -> int:
    """Delete documents and their index rows, a few at a time; returns how many documents were removed.

    An id whose document is already gone still loses its index rows; an id unknown everywhere is skipped.
    """

    async def delete(completion_id: str) -> bool:
        try:
            return await store.delete(completion_id)
        except NotFound:
            return False

    removed = await bounded(completion_ids, delete)
    if on_deleted is not None and completion_ids:
        await on_deleted(sorted(completion_ids))
    return sum(removed)


def _id_digest(completion_id: str) -> int:
    return int.from_bytes(hashlib.sha256(completion_id.encode()).digest(), "big")


def ids_digest(completion_ids: list[str]) -> str:
    """A receipt's `ids_digest` for these ids, to check a purge against a list of ids."""
    return f"{sum(_id_digest(completion_id) for completion_id in completion_ids) % _DIGEST_MODULUS:064x}"


def _redacted(selection: CompletionFilter | None) -> CompletionFilter | None:
    """The filter without its metadata values (often a person's id): `sha256:<hex>` of each instead."""
    if selection is None:
        return None
    hashed = {
        key: value if value.startswith("sha256:") else "sha256:" + hashlib.sha256(value.encode()).hexdigest()
        for key, value in selection.metadata.items()
    }
    return selection.model_copy(update={"metadata": hashed})
