"""Relabel with a stronger teacher: answer the selected completions' requests again on deployment X
and keep each answer as a new stored completion linked to its original (`relabel_of`).

Run like a bulk action: recorded, queued on the maintenance (purge) queue, walked in chunks from a
checkpoint. Calls run a few at a time through `ModelCalls`, which honours the upstream's
`retry-after`. The run stops cleanly at its token cap. A new answer's id is derived from the job
and its original, so a redelivered chunk finds what it already stored instead of paying twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, model_validator

from shared.platform.access import OwnerId, same_owner, stable_owner
from shared.platform.errors import Conflict, DistilleryError, InvalidRequest, NotFound, StorageUnavailable
from shared.platform.job_queue import JobQueue
from shared.platform.telemetry import job_chunk
from shared.store import ids
from shared.store.completion_filter import CompletionFilter
from shared.store.completion_store import CompletionStore, in_selection
from shared.store.json_blobs import JsonBlobs, Superseded
from shared.store.stored_completion import StoredCompletion
from shared.upstream.model_calls import ModelCalls, UpstreamCallFailed

log = logging.getLogger(__name__)

MAX_IDS = 5000
MAX_DELIVERY_COUNT = 5
_ID_PREFIX = "relabel_"
_NOT_REPLAYED = frozenset({"model", "stream", "stream_options", "store", "metadata", "n"})
"""Request fields a relabel does not send again: the deployment is the job's, and one whole answer is kept."""


class RelabelLimits(BaseModel):
    concurrency: int = 8
    """Upstream calls in flight at once."""
    batch: int = 32
    """Completions taken together; the checkpoint is saved after each batch."""
    chunk_seconds: float = 240.0


class RelabelParams(BaseModel):
    """`POST /api/relabels` body."""

    model_config = ConfigDict(extra="forbid")

    deployment: str = Field(min_length=1, max_length=256)
    """The stronger deployment that answers again."""
    max_total_tokens: int = Field(ge=1)
    """The job stops once its calls used this many tokens (calls in flight then still finish)."""
    filter: CompletionFilter | None = None
    """The list API's selection; or `ids`; or `"all": true`."""
    ids: list[str] | None = Field(None, min_length=1, max_length=MAX_IDS)
    all: bool = False

    @model_validator(mode="after")
    def _one_selection(self) -> RelabelParams:
        given = [self.filter is not None and not self.filter.is_empty(), self.ids is not None, self.all]
        if sum(given) != 1:
            raise ValueError('give exactly one of a non-empty filter, ids, or "all": true')
        if self.filter is not None and self.filter.owner is not None:
            raise ValueError("'owner' cannot be set in a filter")
        for completion_id in self.ids or []:
            if not ids.is_completion_id(completion_id):
                raise ValueError(f"'{completion_id[:80]}' is not a chat completion id")
        return self


def parse_relabel_params(body: dict[str, Any]) -> RelabelParams:
    try:
        return RelabelParams.model_validate(body)
    except ValidationError as exc:
        error = exc.errors()[0]
        where = ".".join(str(part) for part in error["loc"]) or None
        message = error["msg"].removeprefix("Value error, ")
        raise InvalidRequest(
            f"Invalid relabel request: {message}" + (f" ({where})" if where else ""), param=where, code="invalid_value"
        ) from None


class RelabelStatus(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"


class RelabelSkip(StrEnum):
    IS_RELABEL = "is_relabel"
    """The selected completion is itself a relabeled answer."""
    UPSTREAM_ERROR = "upstream_error"
    """The deployment refused the request for good (after its retries)."""
    NOT_FOUND = "not_found"


class RelabelProgress(BaseModel):
    part: int = 0
    walked: int = 0
    relabeled: int = 0
    """New answers stored (a redelivered chunk finds its earlier ones and counts them once)."""
    skipped: dict[RelabelSkip, int] = Field(default_factory=dict)
    tokens_used: int = 0
    after: str | None = None


class RelabelReceipt(BaseModel):
    relabeled_count: int
    skipped: dict[RelabelSkip, int]
    tokens_used: int
    stopped: Literal["done", "token_cap"]
    completed_at: datetime


class RelabelError(BaseModel):
    code: str
    message: str


class RelabelJob(BaseModel):
    id: str
    object: Literal["relabel"] = "relabel"
    status: RelabelStatus
    deployment: str
    token_cap: int
    filter: CompletionFilter | None
    ids: list[str] | None = None
    all: bool
    requested_by: Annotated[str, BeforeValidator(stable_owner)]
    owner_scope: OwnerId = None
    created_at: datetime
    started_at: datetime | None = None
    runs: int = 0
    progress: RelabelProgress = Field(default_factory=RelabelProgress)
    receipt: RelabelReceipt | None = None
    error: RelabelError | None = None

    @property
    def finished(self) -> bool:
        return self.status in (RelabelStatus.SUCCEEDED, RelabelStatus.FAILED)

    def view(self) -> dict[str, Any]:
        return self.model_dump(mode="json", exclude={"progress": {"after", "part"}, "ids": True})


class RelabelMessage(BaseModel):
    relabel: str
    part: int = Field(0, ge=0)

    @property
    def message_id(self) -> str:
        return self.relabel if self.part == 0 else f"{self.relabel}-part{self.part}"


def relabel_message(body: bytes) -> RelabelMessage | None:
    """The relabel job a maintenance-queue message carries; None for any other message."""
    try:
        message = RelabelMessage.model_validate_json(body)
    except ValidationError:
        return None
    return message


def replayed_request(request: dict[str, Any]) -> dict[str, Any]:
    """The original request as it is sent again: the same messages, tools and sampling parameters."""
    return {key: value for key, value in request.items() if key not in _NOT_REPLAYED}


class Relabels:
    """Records, queues and runs relabel jobs."""

    def __init__(
        self,
        *,
        store: CompletionStore,
        calls: ModelCalls,
        records: JsonBlobs,
        queue: JobQueue,
        queue_name: str,
        limits: RelabelLimits | None = None,
    ) -> None:
        self._store = store
        self._calls = calls
        self._records = records
        self._queue = queue
        self._queue_name = queue_name
        self.limits = limits or RelabelLimits()

    async def submit(self, params: RelabelParams, *, requested_by: str, owner_scope: str | None = None) -> RelabelJob:
        job = RelabelJob(
            id=_ID_PREFIX + secrets.token_hex(12),
            status=RelabelStatus.QUEUED,
            deployment=params.deployment,
            token_cap=params.max_total_tokens,
            filter=params.filter,
            ids=params.ids,
            all=params.all,
            requested_by=requested_by,
            owner_scope=owner_scope,
            created_at=datetime.now(UTC),
        )
        etag = await self._records.put(_record(job.id), job.model_dump_json(), create=True)
        try:
            await self._send(RelabelMessage(relabel=job.id))
        except StorageUnavailable:
            error = RelabelError(code="queue_unavailable", message="The relabel job could not be queued; nothing ran.")
            failed = job.model_copy(update={"status": RelabelStatus.FAILED, "error": error})
            with contextlib.suppress(Superseded, StorageUnavailable):
                await self._records.put(_record(job.id), failed.model_dump_json(), etag=etag)
            raise
        log.info("Relabel %s on %s queued by %s", job.id, job.deployment, requested_by)
        return job

    async def get(self, relabel_id: str, *, owner_scope: str | None = None) -> RelabelJob:
        job, _ = await self._read(relabel_id)
        if owner_scope is not None and not same_owner(job.requested_by, owner_scope):
            raise _not_found(relabel_id)
        return job

    async def handle(self, message: RelabelMessage, *, delivery_count: int) -> None:
        try:
            await self.run(message.relabel, part=message.part)
        except Exception as exc:
            if delivery_count >= MAX_DELIVERY_COUNT:
                reason = exc.message if isinstance(exc, DistilleryError) else f"unexpected {type(exc).__name__}"
                await self._fail(message.relabel, f"The relabel job failed {delivery_count} times ({reason}).")
            raise

    async def run(self, relabel_id: str, *, part: int = 0) -> RelabelJob:
        """Advance the job by one chunk, or finish it; a stale or repeated message changes nothing."""
        job, etag = await self._read(relabel_id)
        if job.finished:
            return job
        if part < job.progress.part:
            await self._send(RelabelMessage(relabel=relabel_id, part=job.progress.part))
            return job
        if part > job.progress.part:
            return job
        job.status, job.runs, job.error = RelabelStatus.RUNNING, job.runs + 1, None
        job.started_at = job.started_at or datetime.now(UTC)
        try:
            etag = await self._save(job, etag)
            with job_chunk("relabel", relabel_id, part=part) as chunk:
                walked_before = job.progress.walked
                job, etag, stop = await self._chunk(job, etag)
                chunk.items = job.progress.walked - walked_before
            if stop == "time":
                job.progress.part += 1
                etag = await self._save(job, etag)
                await self._send(RelabelMessage(relabel=relabel_id, part=job.progress.part))
                return job
            progress = job.progress
            job.receipt = RelabelReceipt(
                relabeled_count=progress.relabeled,
                skipped=progress.skipped,
                tokens_used=progress.tokens_used,
                stopped=stop,
                completed_at=datetime.now(UTC),
            )
            job.status, progress.after = RelabelStatus.SUCCEEDED, None
            await self._save(job, etag)
            log.info("Relabel %s: %s answers, %s tokens (%s)", job.id, progress.relabeled, progress.tokens_used, stop)
            return job
        except Superseded:
            return (await self._read(relabel_id))[0]

    async def _chunk(self, job: RelabelJob, etag: str) -> tuple[RelabelJob, str, Literal["done", "token_cap", "time"]]:
        deadline = time.monotonic() + self.limits.chunk_seconds
        slots = asyncio.Semaphore(self.limits.concurrency)
        progress = job.progress
        batch: list[str] = []
        async for completion_id in self._selection(job):
            batch.append(completion_id)
            if len(batch) < self.limits.batch:
                continue
            etag, stop = await self._batch(job, etag, batch, slots)
            batch = []
            if stop is not None:
                return job, etag, stop
            if time.monotonic() >= deadline:
                return job, etag, "time"
        if batch:
            etag, stop = await self._batch(job, etag, batch, slots)
            if stop is not None:
                return job, etag, stop
        return job, etag, "done" if progress.tokens_used < job.token_cap else "token_cap"

    async def _batch(
        self, job: RelabelJob, etag: str, batch: list[str], slots: asyncio.Semaphore
    ) -> tuple[str, Literal["token_cap"] | None]:
        """Relabel one batch; the checkpoint moves past it only when every one was done (or the cap met)."""
        progress = job.progress
        done: list[str] = []

        async def one(completion_id: str) -> None:
            async with slots:
                if progress.tokens_used >= job.token_cap:
                    return
                outcome = await self._relabel(job, completion_id)
                if isinstance(outcome, RelabelSkip):
                    progress.skipped[outcome] = progress.skipped.get(outcome, 0) + 1
                elif outcome is True:
                    progress.relabeled += 1
                done.append(completion_id)

        await asyncio.gather(*(one(completion_id) for completion_id in batch))
        capped = len(done) < len(batch)
        if not capped:
            progress.walked += len(batch)
            progress.after = batch[-1]
        else:  # the cap stopped it mid-batch: count only what was done, in walk order
            finished = set(done)
            for completion_id in batch:
                if completion_id not in finished:
                    break
                progress.walked += 1
                progress.after = completion_id
        return await self._save(job, etag), "token_cap" if capped or progress.tokens_used >= job.token_cap else None

    async def _relabel(self, job: RelabelJob, completion_id: str) -> bool | RelabelSkip | None:
        """True: a new answer stored (now or by an earlier delivery); a skip reason; None: not counted."""
        try:
            original = await self._store.get(completion_id, owner=job.owner_scope)
        except NotFound:
            return RelabelSkip.NOT_FOUND
        if job.filter is not None and not in_selection(original, job.filter):
            return None  # an index row its document no longer backs: not part of the selection
        if original.relabel_of is not None:
            if original.id == _relabel_id(job, original.relabel_of):
                return None  # this job's own answer, met later in the walk
            return RelabelSkip.IS_RELABEL
        relabel_id = _relabel_id(job, original.id)
        if not await self._store.exists(relabel_id):
            body = replayed_request(original.request)
            try:
                answer = await self._calls.chat(deployment=job.deployment, body=body)
            except UpstreamCallFailed as exc:
                log.warning(
                    "Relabel %s: %s not relabeled (HTTP %s, %s)", job.id, original.id, exc.upstream_status, exc.code
                )
                return RelabelSkip.UPSTREAM_ERROR
            job.progress.tokens_used += answer.usage.total_tokens if answer.usage else 0
            response = answer.model_dump(mode="json", exclude_unset=True)
            await self._store.put(
                StoredCompletion(
                    id=relabel_id,
                    created=int(time.time()),
                    deployment=job.deployment,
                    model=answer.model or job.deployment,
                    metadata=original.metadata,
                    owner=original.owner,
                    request={**body, "model": job.deployment},
                    response=response | {"id": relabel_id},
                    relabel_of=original.id,
                ),
                redact=True,  # the teacher's answer is kept as a capture would be: never unredacted
            )
        await self._link(original.id, relabel_id)
        return True

    async def _link(self, original_id: str, relabel_id: str) -> None:
        """Name the new answer on its original (once), so a dataset build finds it."""

        def linked(completion: StoredCompletion) -> StoredCompletion | None:
            if relabel_id in completion.relabels:
                return None
            return completion.model_copy(update={"relabels": [*completion.relabels, relabel_id]})

        for attempt in range(3):
            try:
                await self._store.revise(original_id, linked)
                return
            except NotFound:
                return  # the original was deleted meanwhile: its answer stays, unlinked
            except Conflict:
                if attempt == 2:
                    raise

    async def _selection(self, job: RelabelJob) -> AsyncIterator[str]:
        """The ids to relabel from the checkpoint on: the listed ids, or the index walk of the filter."""
        if job.ids is not None:
            for completion_id in job.ids[job.progress.walked :]:
                yield completion_id
            return
        selection = job.filter or CompletionFilter()
        if job.owner_scope is not None:
            selection = selection.model_copy(update={"owner": job.owner_scope})
        async for row in self._store.index.walk(selection, after=job.progress.after):
            yield row.id  # each is checked against its document when it is relabeled, a batch at once

    async def _fail(self, relabel_id: str, message: str) -> None:
        for _ in range(3):
            job, etag = await self._read(relabel_id)
            if job.finished:
                return
            job.status, job.error = RelabelStatus.FAILED, RelabelError(code="relabel_failed", message=message)
            try:
                await self._save(job, etag)
                return
            except Superseded:
                continue

    async def _read(self, relabel_id: str) -> tuple[RelabelJob, str]:
        suffix = relabel_id.removeprefix(_ID_PREFIX)
        if (
            not relabel_id.startswith(_ID_PREFIX)
            or len(suffix) != 24
            or any(c not in "0123456789abcdef" for c in suffix)
        ):
            raise _not_found(relabel_id)
        raw, etag = await self._records.get(_record(relabel_id), missing=_not_found(relabel_id).message)
        return RelabelJob.model_validate_json(raw), etag

    async def _save(self, job: RelabelJob, etag: str) -> str:
        return await self._records.put(_record(job.id), job.model_dump_json(), etag=etag)

    async def _send(self, message: RelabelMessage) -> None:
        await self._queue.send(self._queue_name, message.model_dump_json(), message_id=message.message_id)


def _relabel_id(job: RelabelJob, original_id: str) -> str:
    """The id of the job's answer to an original: the job's submission time, and a digest of both ids."""
    return ids.derived_completion_id(at_us=int(job.created_at.timestamp() * 1_000_000), key=f"{job.id}/{original_id}")


def _not_found(relabel_id: str) -> NotFound:
    return NotFound(f"No relabel job found with id '{relabel_id[:80]}'.", param="relabel_id")


def _record(relabel_id: str) -> str:
    return f"relabels/{relabel_id}.json"
