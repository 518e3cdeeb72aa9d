"""Relabel with a stronger teacher: answer the selected completions' requests again on deployment X
and keep each answer as a new stored completion linked to its original (`relabel_of`).

Run like a bulk action: recorded, queued on the maintenance (purge) queue, walked in chunks from a
checkpoint. Calls run a few at a time through `ModelCalls`, which honours the upstream's
`retry-after`. The run stops cleanly at its token cap. A new answer's id is derived from the job
and its original, so a redelivered chunk finds what it already stored instead of paying twice.

`"mode": "batch"` sends the whole selection through the upstream's Batch API instead (half price on
Azure OpenAI global batch): one input file, one batch, polled by delayed queue messages until it
completes; its answers are then stored exactly as direct ones are.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, Literal

from openai.types.chat import ChatCompletion
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from shared.fine_tuning.api import FineTuningApi, FineTuningUpstreamError
from shared.platform.errors import Conflict, InvalidRequest, NotFound
from shared.platform.job_queue import JobQueue
from shared.platform.telemetry import job_chunk
from shared.store import ids
from shared.store.completion_filter import CompletionFilter
from shared.store.completion_store import CompletionStore, in_selection
from shared.store.filter_jobs import (
    FilterJob,
    JobError,
    JobRecords,
    JobStatus,
    WalkProgress,
    deliver,
    invalid_body,
    part_message_id,
    scoped,
)
from shared.store.json_blobs import JsonBlobs, Superseded
from shared.store.stored_completion import StoredCompletion
from shared.upstream.model_calls import ModelCalls, UpstreamCallFailed

log = logging.getLogger(__name__)

MAX_IDS = 5000
_ID_PREFIX = "relabel_"
_NOT_REPLAYED = frozenset({"model", "stream", "stream_options", "store", "metadata", "n"})
"""Request fields a relabel does not send again: the deployment is the job's, and one whole answer is kept."""


class RelabelLimits(BaseModel):
    concurrency: int = 8
    """Upstream calls in flight at once."""
    batch: int = 32
    """Completions taken together; the checkpoint is saved after each batch."""
    chunk_seconds: float = 240.0
    batch_poll_seconds: float = 60.0
    """Batch mode: the wait between two looks at the upstream batch."""
    batch_default_max_tokens: int = 4096
    """Batch mode: what a request that names no max_tokens / max_completion_tokens reserves for its answer."""


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
    mode: Literal["direct", "batch"] = "direct"
    """`batch`: through the upstream's Batch API (at most MAX_IDS completions; the token cap is reserved up front)."""

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
        raise invalid_body(exc, "relabel request", code="invalid_value") from None


class RelabelSkip(StrEnum):
    IS_RELABEL = "is_relabel"
    """The selected completion is itself a relabeled answer."""
    UPSTREAM_ERROR = "upstream_error"
    """The deployment refused the request for good (after its retries)."""
    NOT_FOUND = "not_found"


class RelabelProgress(WalkProgress):
    relabeled: int = 0
    """New answers stored (a redelivered chunk finds its earlier ones and counts them once)."""
    skipped: dict[RelabelSkip, int] = Field(default_factory=dict)
    tokens_used: int = 0


class RelabelReceipt(BaseModel):
    relabeled_count: int
    skipped: dict[RelabelSkip, int]
    tokens_used: int
    stopped: Literal["done", "token_cap"]
    completed_at: datetime


class RelabelBatch(BaseModel):
    """Batch mode: what was reserved and sent, and the upstream batch that answers it."""

    reserved_tokens: int
    originals: dict[str, str]
    """The answer's derived id (the batch line's `custom_id`) -> its original's id."""
    id: str | None = None
    input_file_id: str | None = None
    status: str | None = None
    """The upstream batch's own status (`validating`, `in_progress`, `completed`, ...)."""


class RelabelJob(FilterJob):
    object: Literal["relabel"] = "relabel"
    deployment: str
    token_cap: int
    ids: list[str] | None = None
    mode: Literal["direct", "batch"] = "direct"
    batch: RelabelBatch | None = None
    progress: RelabelProgress = Field(default_factory=RelabelProgress)
    receipt: RelabelReceipt | None = None

    def view(self) -> dict[str, Any]:
        return self.model_dump(
            mode="json", exclude={"progress": {"after", "part"}, "ids": True, "batch": {"originals"}}
        )


class RelabelMessage(BaseModel):
    relabel: str
    part: int = Field(0, ge=0)

    @property
    def message_id(self) -> str:
        return part_message_id(self.relabel, self.part)


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
        batches: FineTuningApi | None = None,
        limits: RelabelLimits | None = None,
    ) -> None:
        self._store = store
        self._calls = calls
        self._records = JobRecords(
            records, model=RelabelJob, prefix=_ID_PREFIX, folder="relabels", noun="relabel job", param="relabel_id"
        )
        self._queue = queue
        self._queue_name = queue_name
        self._batches = batches
        """The upstream's files and batch API; None for the offline model."""
        self.limits = limits or RelabelLimits()

    async def submit(self, params: RelabelParams, *, requested_by: str, owner_scope: str | None = None) -> RelabelJob:
        job = RelabelJob(
            id=self._records.new_id(),
            status=JobStatus.QUEUED,
            deployment=params.deployment,
            token_cap=params.max_total_tokens,
            filter=params.filter,
            ids=params.ids,
            all=params.all,
            mode=params.mode,
            requested_by=requested_by,
            owner_scope=owner_scope,
            created_at=datetime.now(UTC),
        )
        if job.mode == "batch":
            await self._reserve(job)
        await self._records.submit(job, lambda: self._send(RelabelMessage(relabel=job.id)), untouched="nothing ran")
        log.info("Relabel %s on %s queued by %s", job.id, job.deployment, requested_by)
        return job

    async def get(self, relabel_id: str, *, owner_scope: str | None = None) -> RelabelJob:
        return await self._records.get(relabel_id, owner_scope=owner_scope)

    async def handle(self, message: RelabelMessage, *, delivery_count: int) -> None:
        run = self.run(message.relabel, part=message.part)
        await deliver(self._records, message.relabel, run, delivery_count=delivery_count, code="relabel_failed")

    async def run(self, relabel_id: str, *, part: int = 0) -> RelabelJob:
        """Advance the job by one chunk, or finish it; a stale or repeated message changes nothing."""
        job, etag = await self._records.read(relabel_id)
        if job.finished:
            return job
        if part < job.progress.part:
            await self._send(RelabelMessage(relabel=relabel_id, part=job.progress.part))
            return job
        if part > job.progress.part:
            return job
        job.status, job.runs, job.error = JobStatus.RUNNING, job.runs + 1, None
        job.started_at = job.started_at or datetime.now(UTC)
        try:
            etag = await self._records.save(job, etag)
            if job.mode == "batch":
                with job_chunk("relabel", relabel_id, part=part):
                    return await self._advance_batch(job, etag)
            with job_chunk("relabel", relabel_id, part=part) as chunk:
                walked_before = job.progress.walked
                job, etag, stop = await self._chunk(job, etag)
                chunk.items = job.progress.walked - walked_before
            if stop == "time":
                job.progress.part += 1
                etag = await self._records.save(job, etag)
                await self._send(RelabelMessage(relabel=relabel_id, part=job.progress.part))
                return job
            return await self._succeed(job, etag, stop)
        except Superseded:
            return (await self._records.read(relabel_id))[0]

    async def _succeed(self, job: RelabelJob, etag: str, stop: Literal["done", "token_cap"]) -> RelabelJob:
        progress = job.progress
        job.receipt = RelabelReceipt(
            relabeled_count=progress.relabeled,
            skipped=progress.skipped,
            tokens_used=progress.tokens_used,
            stopped=stop,
            completed_at=datetime.now(UTC),
        )
        job.status, progress.after = JobStatus.SUCCEEDED, None
        await self._records.save(job, etag)
        log.info("Relabel %s: %s answers, %s tokens (%s)", job.id, progress.relabeled, progress.tokens_used, stop)
        return job

    async def _reserve(self, job: RelabelJob) -> None:
        """Batch mode, at submission: resolve the selection and reserve each request's answer tokens.

        A batch is paid for as a whole once sent, so the cap is held up front rather than met on the
        way: each request reserves its prompt (the original's usage) plus its max_tokens (or
        max_completion_tokens, else `batch_default_max_tokens`); over the cap, nothing is queued."""
        if self._batches is None:
            raise InvalidRequest(
                'A "batch" relabel needs an upstream with a Batch API (AZURE_OPENAI_ENDPOINT or OPENAI_BASE_URL); '
                'the offline model has none. Use "mode": "direct".',
                param="mode",
                code="batch_unavailable",
            )
        selected: list[str] = []
        async for completion_id in self._selection(job):
            selected.append(completion_id)
            if len(selected) > MAX_IDS:
                raise InvalidRequest(
                    f"A batch relabel takes at most {MAX_IDS} completions; narrow the selection.",
                    param="filter",
                    code="too_many_completions",
                )
        originals: dict[str, str] = {}
        reserved = 0
        slots = asyncio.Semaphore(self.limits.concurrency)

        async def one(completion_id: str) -> None:
            nonlocal reserved
            async with slots:
                original = await self._eligible(job, completion_id)
            if isinstance(original, RelabelSkip):
                job.progress.skipped[original] = job.progress.skipped.get(original, 0) + 1
            elif original is not None:
                originals[_relabel_id(job, original.id)] = original.id
                reserved += self._reservation(original)

        await asyncio.gather(*(one(completion_id) for completion_id in selected))
        if reserved > job.token_cap:
            raise InvalidRequest(
                f"This batch relabel reserves {reserved} tokens for its {len(originals)} requests (each its prompt "
                f"and its max tokens, {self.limits.batch_default_max_tokens} where it names none), over "
                f"max_total_tokens {job.token_cap}. Raise max_total_tokens or narrow the selection.",
                param="max_total_tokens",
                code="token_cap_exceeded",
            )
        job.progress.walked = len(selected)
        job.batch = RelabelBatch(reserved_tokens=reserved, originals=originals)

    def _reservation(self, original: StoredCompletion) -> int:
        request = original.request
        answer = request.get("max_completion_tokens") or request.get("max_tokens")
        if not isinstance(answer, int) or answer < 1:
            answer = self.limits.batch_default_max_tokens
        usage = original.response.get("usage")
        prompt = usage.get("prompt_tokens") if isinstance(usage, dict) else None
        return answer + (prompt if isinstance(prompt, int) else 0)

    async def _advance_batch(self, job: RelabelJob, etag: str) -> RelabelJob:
        """Batch mode, one step: send the batch, or look at it again later, or store its answers."""
        assert job.batch is not None and self._batches is not None
        state, api = job.batch, self._batches
        if state.id is None:
            if state.input_file_id is None:
                lines = [
                    # The Batch API's input line: https://learn.microsoft.com/azure/ai-foundry/openai/how-to/batch
                    # ("Prepare your batch file"): on Azure OpenAI `body.model` is the global batch deployment's name.
                    json.dumps({"custom_id": answer_id, "method": "POST", "url": "/chat/completions", "body": body})
                    for answer_id, body in await self._batch_bodies(job)
                ]
                if not lines:  # everything was answered by an earlier delivery
                    return await self._succeed(job, etag, "done")
                uploaded = await api.upload_batch_input(f"{job.id}.jsonl", ("\n".join(lines) + "\n").encode())
                state.input_file_id = str(uploaded["id"])
                etag = await self._records.save(
                    job, etag
                )  # from here on a redelivery finds the batch it made: never two
            try:
                created = await api.batch_for(state.input_file_id) or await api.create_batch(state.input_file_id)
            except FineTuningUpstreamError as exc:
                if exc.upstream_status not in (404, 405):
                    raise
                job = await self._fail_now(
                    job,
                    etag,
                    f"The upstream has no Batch API (/batches answered HTTP {exc.upstream_status}: "
                    f'{exc.message}). Relabel with "mode": "direct" instead.',
                    code="batch_unavailable",
                )
                await self._clean_up(state.input_file_id)
                return job
            state.id, state.status = str(created["id"]), created.get("status")
            return await self._poll_later(job, etag)
        batch = await api.batch(state.id)
        state.status = str(batch.get("status"))
        if state.status in ("validating", "in_progress", "finalizing", "cancelling"):
            return await self._poll_later(job, etag)
        files = (state.input_file_id, batch.get("output_file_id"), batch.get("error_file_id"))
        if state.status != "completed":
            errors = (batch.get("errors") or {}).get("data") or []
            reasons = "; ".join(str(error.get("message") or error.get("code")) for error in errors[:3])
            message = f"The upstream batch {state.id} ended {state.status}" + (f": {reasons}" if reasons else ".")
            job = await self._fail_now(job, etag, message)
        else:
            await self._store_batch(job, batch)
            job = await self._succeed(job, etag, "done")
        await self._clean_up(*files)  # once the outcome is saved: a redelivery before then still reads the output
        return job

    async def _clean_up(self, *file_ids: str | None) -> None:
        """Delete a finished batch's files on the upstream (Azure OpenAI limits how many a resource keeps)."""
        assert self._batches is not None
        for file_id in file_ids:
            if file_id:
                try:
                    await self._batches.delete_file(file_id)
                except FineTuningUpstreamError as exc:  # left behind, not worth failing the answers for
                    log.warning("Relabel batch file %s not deleted (%s)", file_id, exc.message)

    async def _batch_bodies(self, job: RelabelJob) -> list[tuple[str, dict[str, Any]]]:
        """The reserved requests still unanswered, each as it is sent again on the teacher."""
        assert job.batch is not None
        bodies: list[tuple[str, dict[str, Any]]] = []
        for answer_id, original_id in job.batch.originals.items():
            if await self._store.exists(answer_id):
                continue
            with contextlib.suppress(NotFound):
                original = await self._store.get(original_id, owner=job.owner_scope)
                bodies.append((answer_id, {**replayed_request(original.request), "model": job.deployment}))
        return bodies

    async def _store_batch(self, job: RelabelJob, batch: dict[str, Any]) -> None:
        """Keep each answer of a completed batch; a refused line (in the output or the error file) is skipped."""
        assert job.batch is not None and self._batches is not None
        progress, originals = job.progress, job.batch.originals
        answered: list[tuple[str, ChatCompletion]] = []
        failed = 0
        if batch.get("error_file_id"):
            errors = await self._batches.file_content(str(batch["error_file_id"]))
            failed += sum(1 for line in errors.splitlines() if line.strip())
        if batch.get("output_file_id"):
            for line in (await self._batches.file_content(str(batch["output_file_id"]))).splitlines():
                if not line.strip():
                    continue
                result = json.loads(line)
                response = result.get("response") or {}
                if result.get("custom_id") not in originals or response.get("status_code") != 200:
                    failed += 1
                    continue
                try:
                    answered.append((result["custom_id"], ChatCompletion.model_validate(response.get("body"))))
                except ValidationError:
                    failed += 1
        slots = asyncio.Semaphore(self.limits.concurrency)

        async def one(answer_id: str, answer: ChatCompletion) -> None:
            async with slots:
                try:
                    original = await self._store.get(originals[answer_id], owner=job.owner_scope)
                except NotFound:
                    progress.skipped[RelabelSkip.NOT_FOUND] = progress.skipped.get(RelabelSkip.NOT_FOUND, 0) + 1
                    return
                if not await self._store.exists(answer_id):
                    progress.tokens_used += answer.usage.total_tokens if answer.usage else 0
                    await self._keep(job, original, replayed_request(original.request), answer)
                await self._link(original.id, answer_id)
                progress.relabeled += 1

        await asyncio.gather(*(one(answer_id, answer) for answer_id, answer in answered))
        if failed:
            progress.skipped[RelabelSkip.UPSTREAM_ERROR] = progress.skipped.get(RelabelSkip.UPSTREAM_ERROR, 0) + failed

    async def _poll_later(self, job: RelabelJob, etag: str) -> RelabelJob:
        job.progress.part += 1
        await self._records.save(job, etag)
        await self._send(RelabelMessage(relabel=job.id, part=job.progress.part), delay=self.limits.batch_poll_seconds)
        return job

    async def _fail_now(self, job: RelabelJob, etag: str, message: str, *, code: str = "relabel_failed") -> RelabelJob:
        job.status, job.error = JobStatus.FAILED, JobError(code=code, message=message)
        await self._records.save(job, etag)
        log.warning("Relabel %s failed: %s", job.id, message)
        return job

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
        return await self._records.save(
            job, etag
        ), "token_cap" if capped or progress.tokens_used >= job.token_cap else None

    async def _eligible(self, job: RelabelJob, completion_id: str) -> StoredCompletion | RelabelSkip | None:
        """The original to answer again; a skip reason; None: not part of the selection, not counted."""
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
        return original

    async def _relabel(self, job: RelabelJob, completion_id: str) -> bool | RelabelSkip | None:
        """True: a new answer stored (now or by an earlier delivery); a skip reason; None: not counted."""
        original = await self._eligible(job, completion_id)
        if not isinstance(original, StoredCompletion):
            return original
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
            await self._keep(job, original, body, answer)
        await self._link(original.id, relabel_id)
        return True

    async def _keep(
        self, job: RelabelJob, original: StoredCompletion, body: dict[str, Any], answer: ChatCompletion
    ) -> None:
        """Store the teacher's answer as a new completion under its derived id, linked to its original."""
        relabel_id = _relabel_id(job, original.id)
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
        selection = scoped(job.filter or CompletionFilter(), job.owner_scope)
        async for row in self._store.index.walk(selection, after=job.progress.after):
            yield row.id  # each is checked against its document when it is relabeled, a batch at once

    async def _send(self, message: RelabelMessage, *, delay: float = 0.0) -> None:
        await self._queue.send(self._queue_name, message.model_dump_json(), message_id=message.message_id, delay=delay)


def _relabel_id(job: RelabelJob, original_id: str) -> str:
    """The id of the job's answer to an original: the job's submission time, and a digest of both ids."""
    return ids.derived_completion_id(at_us=int(job.created_at.timestamp() * 1_000_000), key=f"{job.id}/{original_id}")
