"""Bulk actions on a filter: set or remove metadata, add or remove scores, on every match.

Run like a purge: recorded, queued on the maintenance (purge) queue, walked through the index in
chunks from a checkpoint, each match re-checked against its document before it is changed. A
change is idempotent (it states the end result: "tag=x set", "score quality=4 by this author at
this time"), so a redelivered chunk rewrites nothing twice, and a dry run walks the same way
without writing, to say how many would change before anything does.
"""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from shared.platform.errors import Conflict, DocumentTooLarge, InvalidRequest, NotFound
from shared.platform.job_queue import JobQueue
from shared.platform.request_body import MAX_METADATA_PAIRS, Metadata, MetadataKey, validation_error
from shared.store.completion_filter import CompletionFilter
from shared.store.completion_index import IndexEntry
from shared.store.completion_store import CompletionStore
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
from shared.store.json_blobs import JsonBlobs
from shared.store.scores import MAX_SCORES_PER_COMPLETION, Score, ScoreName, ScoreParams
from shared.store.stored_completion import StoredCompletion

log = logging.getLogger(__name__)

CONFLICT_ATTEMPTS = 3
"""A document another writer changed meanwhile is re-read and changed again this many times."""
_ID_PREFIX = "bulk_"


class BulkLimits(BaseModel):
    batch: int = 200
    """Index rows checked and changed together."""
    chunk_rows: int = 50_000
    """Index rows one delivery walks before it hands over to a continuation."""
    chunk_seconds: float = 240.0


class BulkChanges(BaseModel):
    """What happens to each match; at least one of the four."""

    model_config = ConfigDict(extra="forbid")

    set_metadata: Metadata = Field(default_factory=dict)
    """Pairs set on each match (a key it has gets the new value); a match would then hold at most 16."""
    remove_metadata: list[MetadataKey] = Field(default_factory=list, max_length=MAX_METADATA_PAIRS)
    add_scores: list[ScoreParams] = Field(default_factory=list, max_length=MAX_SCORES_PER_COMPLETION)
    """Scores added to each match (replacing its score of the same name); the author is the requester."""
    remove_scores: list[ScoreName] = Field(default_factory=list, max_length=MAX_SCORES_PER_COMPLETION)

    @model_validator(mode="after")
    def _clear(self) -> BulkChanges:
        if not (self.set_metadata or self.remove_metadata or self.add_scores or self.remove_scores):
            raise ValueError("give at least one of set_metadata, remove_metadata, add_scores, remove_scores")
        if both := sorted(set(self.set_metadata) & set(self.remove_metadata)):
            raise ValueError(f"metadata key '{both[0]}' is both set and removed")
        added = [score.name for score in self.add_scores]
        if len(set(added)) != len(added):
            raise ValueError("add_scores names a score twice")
        if both := sorted(set(added) & set(self.remove_scores)):
            raise ValueError(f"score '{both[0]}' is both added and removed")
        return self


class BulkActionParams(BulkChanges):
    """`POST /api/bulk_actions` body: the selection (as a purge takes it) and the changes."""

    filter: CompletionFilter | None = None
    """The list API's selection: `metadata`, `scores`, `model`, `created_after`, `created_before`."""
    all: bool = False
    """Must be true, with no filter, to change every stored completion."""
    dry_run: bool = False
    """Walk and count what would change; write nothing."""

    @model_validator(mode="after")
    def _explicit_scope(self) -> BulkActionParams:
        require_explicit_scope(self.filter, self.all, doing="change")
        return self


def parse_bulk_action_params(body: dict[str, Any]) -> BulkActionParams:
    try:
        return BulkActionParams.model_validate(body)
    except ValidationError as exc:
        error = exc.errors()[0]
        field = error["loc"][0] if error["loc"] else None
        if field == "set_metadata" and error["type"] == "too_long" and len(error["loc"]) == 1:
            raise InvalidRequest(
                f"Invalid 'set_metadata': too many properties. Expected at most {MAX_METADATA_PAIRS} pairs.",
                param="set_metadata",
                code="invalid_value",
            ) from None
        if field in ("set_metadata", "remove_metadata", "add_scores", "remove_scores"):
            raise validation_error(exc) from None
        raise invalid_body(exc, "bulk action", code="invalid_value") from None


class SkipReason(StrEnum):
    METADATA_LIMIT = "metadata_limit"
    """The match would hold more than 16 metadata pairs."""
    SCORE_LIMIT = "score_limit"
    """The match would hold more than 32 scores."""
    DOCUMENT_TOO_LARGE = "document_too_large"


class BulkProgress(WalkProgress):
    matched: int = 0
    """Matches confirmed against their documents."""
    updated: int = 0
    """Matches rewritten (a dry run: that would be); a chunk redelivered counts its rewrites as unchanged."""
    unchanged: int = 0
    """Matches already as asked."""
    skipped: dict[SkipReason, int] = Field(default_factory=dict)


class BulkReceipt(BaseModel):
    matched_count: int
    updated_count: int
    unchanged_count: int
    skipped: dict[SkipReason, int]
    completed_at: datetime


class BulkAction(FilterJob):
    object: Literal["bulk_action"] = "bulk_action"
    set_metadata: dict[str, str]
    remove_metadata: list[str]
    add_scores: list[Score]
    """As they are written: author the requester, `created_at` the submission time (so reruns match)."""
    remove_scores: list[str]
    dry_run: bool = False
    progress: BulkProgress = Field(default_factory=BulkProgress)
    receipt: BulkReceipt | None = None

    def view(self) -> dict[str, Any]:
        return self.model_dump(mode="json", exclude={"progress": {"after", "part"}})


class BulkActionMessage(BaseModel):
    """The maintenance queue's message for a bulk action (`bulk_action` tells it from a purge's)."""

    bulk_action: str
    part: int = Field(0, ge=0)

    @property
    def message_id(self) -> str:
        return part_message_id(self.bulk_action, self.part)


def bulk_action_message(body: bytes) -> BulkActionMessage | None:
    """The bulk action a maintenance-queue message carries; None for any other message."""
    try:
        value: Any = json.loads(body)
        return BulkActionMessage.model_validate(value) if isinstance(value, dict) and "bulk_action" in value else None
    except (ValueError, ValidationError):
        return None


class _Skip(Exception):
    def __init__(self, reason: SkipReason) -> None:
        self.reason = reason


def changed(completion: StoredCompletion, job: BulkAction) -> StoredCompletion | None:
    """The completion as the action wants it; None when it already is (raises `_Skip` past a limit)."""
    metadata = {k: v for k, v in completion.metadata.items() if k not in job.remove_metadata} | job.set_metadata
    dropped = set(job.remove_scores) | {score.name for score in job.add_scores}
    scores = [score for score in completion.scores if score.name not in dropped] + job.add_scores
    if metadata == completion.metadata and _same_scores(scores, completion.scores):
        return None
    if len(metadata) > MAX_METADATA_PAIRS:
        raise _Skip(SkipReason.METADATA_LIMIT)
    if len(scores) > MAX_SCORES_PER_COMPLETION:
        raise _Skip(SkipReason.SCORE_LIMIT)
    return completion.model_copy(update={"metadata": metadata, "scores": scores})


def _same_scores(left: list[Score], right: list[Score]) -> bool:
    """The same judgements, whenever they were made: a score given again is not a change."""

    def judgements(scores: list[Score]) -> dict[str, dict[str, Any]]:
        return {score.name: score.model_dump(exclude={"created_at"}) for score in scores}

    return judgements(left) == judgements(right)


class BulkActions(ChunkedJobs[BulkAction]):
    """Records, queues and runs bulk actions."""

    def __init__(
        self,
        *,
        store: CompletionStore,
        records: JsonBlobs,
        queue: JobQueue,
        queue_name: str,
        limits: BulkLimits | None = None,
    ) -> None:
        self._store = store
        self._records = JobRecords(
            records,
            model=BulkAction,
            prefix=_ID_PREFIX,
            folder="bulk_actions",
            noun="bulk action",
            param="bulk_action_id",
        )
        self._queue = queue
        self._queue_name = queue_name
        self.limits = limits or BulkLimits()

    async def submit(
        self, params: BulkActionParams, *, requested_by: str, owner_scope: str | None = None
    ) -> BulkAction:
        """Record and queue the action; when the queue refuses, the record says `failed` (nothing changed)."""
        now = datetime.now(UTC)
        scores = [
            Score(**score.model_dump(), author=requested_by, created_at=int(now.timestamp()))
            for score in params.add_scores
        ]
        job = BulkAction(
            id=self._records.new_id(),
            status=JobStatus.QUEUED,
            filter=params.filter,
            all=params.all,
            set_metadata=await self._store.metadata_as_kept(params.set_metadata),
            remove_metadata=params.remove_metadata,
            add_scores=scores,
            remove_scores=params.remove_scores,
            requested_by=requested_by,
            owner_scope=owner_scope,
            dry_run=params.dry_run,
            created_at=now,
        )
        await self._records.submit(job, lambda: self._send_part(job.id, 0), untouched="nothing changed")
        log.info("Bulk action %s%s queued by %s", job.id, " (dry run)" if job.dry_run else "", requested_by)
        return job

    async def handle(self, message: BulkActionMessage, *, delivery_count: int) -> None:
        """One queue delivery; raises so the queue retries, and on the last delivery marks the action failed."""
        run = self.run(message.bulk_action, part=message.part)
        await deliver(self._records, message.bulk_action, run, delivery_count=delivery_count, code="bulk_action_failed")

    async def run(self, action_id: str, *, part: int = 0) -> BulkAction:
        """Advance the action by one chunk, or finish it; a stale or repeated message changes nothing."""
        job, etag = await self._records.read(action_id)
        if job.finished:
            return job
        return await self._advance(job, etag, part=part)

    async def _finish(self, job: BulkAction, etag: str) -> BulkAction:
        progress = job.progress
        job.receipt = BulkReceipt(
            matched_count=progress.matched,
            updated_count=progress.updated,
            unchanged_count=progress.unchanged,
            skipped=progress.skipped,
            completed_at=datetime.now(UTC),
        )
        job.status, progress.after = JobStatus.SUCCEEDED, None
        await self._records.save(job, etag)
        log.info("Bulk action %s: %s matched, %s updated", job.id, progress.matched, progress.updated)
        return job

    async def _chunk(self, job: BulkAction, etag: str) -> tuple[BulkAction, str, bool]:
        progress = job.progress
        selection = scoped(job.filter or CompletionFilter(), job.owner_scope)
        budget = ChunkBudget(rows=self.limits.chunk_rows, seconds=self.limits.chunk_seconds)
        async for rows in batches(self._store.index.walk(selection, after=progress.after), self.limits.batch):
            outcomes = await bounded(rows, lambda row: self._apply(row, selection, job))
            for outcome in outcomes:
                if outcome is None:
                    continue
                progress.matched += 1
                if isinstance(outcome, SkipReason):
                    progress.skipped[outcome] = progress.skipped.get(outcome, 0) + 1
                elif outcome:
                    progress.updated += 1
                else:
                    progress.unchanged += 1
            progress.walked += len(rows)
            progress.after = rows[-1].id
            etag = await self._records.save(job, etag)
            if budget.spent(len(rows)):
                return job, etag, False
        return job, etag, True

    async def _apply(self, row: IndexEntry, selection: CompletionFilter, job: BulkAction) -> bool | SkipReason | None:
        """True: rewritten (or would be, in a dry run); False: already as asked; None: not a match."""
        for attempt in range(CONFLICT_ATTEMPTS):
            completion = await self._store.confirm(row, selection)
            if completion is None:
                return None
            try:
                wanted = changed(completion, job)
                if wanted is None or job.dry_run:
                    return wanted is not None
                written = await self._store.revise(
                    completion.id, lambda latest: changed(latest, job), owner=job.owner_scope
                )
                return written is not None
            except _Skip as skip:
                return skip.reason
            except DocumentTooLarge:
                return SkipReason.DOCUMENT_TOO_LARGE
            except NotFound:
                return None
            except Conflict:
                if attempt == CONFLICT_ATTEMPTS - 1:
                    raise
        return None  # pragma: no cover  # the loop returns or raises

    def _counted(self, job: BulkAction) -> int:
        return job.progress.walked

    async def _send_part(self, action_id: str, part: int) -> None:
        message = BulkActionMessage(bulk_action=action_id, part=part)
        await self._queue.send(self._queue_name, message.model_dump_json(), message_id=message.message_id)
