"""Dataset jobs: submit, and run one queue delivery of a job (a chunk), safe under at-least-once delivery.

A delivery walks the selection from the checkpoint, reads stored completions (a bounded number in
flight, order kept), and stages JSONL blocks, invisible until committed. When its budget (time or
completions) is used up it saves the checkpoint (the walk cursor, the staged block ids, counts) with
an ETag condition and queues a continuation; the delivery that reaches the end commits the block
lists, hashes the committed files and writes the manifest. A delivery that dies leaves only
uncommitted blocks with its own random run id, which no commit ever lists: the redelivered message
resumes from the last checkpoint, so no line is lost or written twice.

A filter selection over more than one slice's worth of completions fans out: the first delivery
plans (walks index rows only, no documents) and sends one message per slice as soon as its id range
is known, so Service Bus spreads the slices over instances. Each slice stages blocks of the same
output blobs and keeps its own checkpoint record; the delivery that finds every slice done lists
all their blocks in selection order in one commit (no byte is copied), hashes the committed files
and writes the manifest, so the files are byte for byte those of a one-slice build.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import math
import secrets
import time
from array import array
from collections import deque
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass, field

from azure.core.exceptions import AzureError
from azure.storage.blob import BlobBlock, ContentSettings
from pydantic import ValidationError

from shared.datasets import formats
from shared.datasets.check import check_example
from shared.datasets.dedup import PromptFilter, dedup_report
from shared.datasets.job import (
    MESSAGE_VERSION,
    MIN_DISTILLATION_EXAMPLES,
    Checkpoint,
    DatasetCounts,
    DatasetFile,
    DatasetJob,
    DatasetJobMessage,
    DatasetKind,
    DatasetParams,
    DatasetStatus,
    JobError,
    Plan,
    SliceRecord,
    StagedBlock,
    is_dataset_id,
    new_dataset_id,
)
from shared.datasets.membership import DatasetMembership
from shared.datasets.records import WORK_PREFIX, DatasetRecords, JobSuperseded
from shared.datasets.tokens import TOKEN_COUNT_METHOD, count_messages
from shared.platform.access import same_owner
from shared.platform.errors import DistilleryError, NotFound, StorageUnavailable
from shared.platform.job_queue import JobQueue
from shared.platform.telemetry import job_chunk
from shared.reports.quota import QuotaGate
from shared.store import ids, table_transactions
from shared.store.completion_index import SHARDS
from shared.store.completion_store import CompletionStore, in_selection
from shared.store.stored_completion import StoredCompletion

log = logging.getLogger(__name__)

MANIFEST_FILE = "manifest.json"
MANIFEST_VERSION = 1
_DIGEST_MODULUS = 2**256
_JSONL = ContentSettings(content_type="application/jsonl")
_WALK_PAGE = 1000
"""Index rows per query page: the most Table Storage returns at once."""
_MEMBERSHIP_PAGE = SHARDS * table_transactions.MAX_ROWS
"""Selected ids recorded as members before their documents are read, at most: spread over the 16
membership partitions, about one full transaction each (pages of 100 made 16 transactions of ~6 rows)."""
_FIRST_MEMBERSHIP_PAGE = 100
"""The first page, so reads start after 100 ids are walked and recorded, not 1,600; each next page doubles."""
_SIZE_LOOKUPS = 64
"""Index point reads in flight for the sizes of an `ids` selection."""


class InvalidJobMessage(Exception):
    """A queue message that is not a valid dataset job message; raised so it dead-letters."""


@dataclass(frozen=True)
class BuildLimits:
    chunk_seconds: float = 240.0
    chunk_completions: int = 100_000
    read_concurrency: int = 32
    max_example_tokens: int = 65_536
    max_delivery_count: int = 5
    slice_completions: int = 10_000
    """A filter selection with more completions than this is built in slices of this many, in parallel."""
    plan_rows_per_slice: int = 256
    """Index rows the plan reads at least per slice: it walks the fewest shards that give this many
    (one shard for 10,000-completion slices). Fewer rows read, less even slices (±1/√rows)."""
    block_bytes: int = 1024 * 1024
    """Staged block size: the memory an output file holds; 50,000 blocks cap a file at 48 GiB,
    far above the fine-tuning services' 512 MB file limit."""


class DatasetJobs:
    """The dataset service the HTTP functions and the queue trigger call."""

    def __init__(
        self,
        *,
        records: DatasetRecords,
        store: CompletionStore,
        membership: DatasetMembership,
        job_queue: JobQueue,
        queue_name: str,
        limits: BuildLimits,
        quota: QuotaGate | None = None,
    ) -> None:
        self._quota = quota
        self.records = records
        self._store = store
        self.membership = membership
        self._queue = job_queue
        self._queue_name = queue_name
        self.limits = limits

    async def submit(self, request: DatasetParams, *, requested_by: str | None = None) -> DatasetJob:
        """Record a queued job and send its message (message id = job id); refused while the store, or the
        requester's own quota, is full (a dataset adds files to the store)."""
        if self._quota is not None:
            await self._quota.require_room(owner=requested_by, what="the dataset")
        job = DatasetJob.queued(new_dataset_id(), request)
        await self.records.create(job)
        try:
            await self._send(DatasetJobMessage(version=MESSAGE_VERSION, job_id=job.id, request=request))
        except StorageUnavailable:
            error = JobError(code="queue_unavailable", message="The job could not be queued; create the dataset again.")
            await self._settle_failure(job.id, error, final=True)
            raise
        return job

    async def handle(self, body: bytes, *, delivery_count: int) -> None:
        """One queue delivery. Raises to make the queue retry, and finally dead-letter, the message."""
        message = await self._parse(body)
        try:
            await self.run(message)
        except JobSuperseded:
            log.info(
                "Dataset %s: another delivery advanced, rebuilt or deleted the job; this one stops", message.job_id
            )
            with contextlib.suppress(NotFound):
                job, _ = await self.records.read(message.job_id, include_deleted=True)
                if job.status is DatasetStatus.DELETED:
                    await self.records.delete_files(job.id)  # what this delivery wrote after the delete
                else:
                    await self.records.delete_other_generations(job)  # what it wrote for a replaced generation
        except Exception as exc:
            final = delivery_count >= self.limits.max_delivery_count
            log.warning("Dataset %s: delivery %s failed (final: %s)", message.job_id, delivery_count, final)
            await self._settle_failure(message.job_id, _job_error(exc, delivery_count, self.limits), final=final)
            raise

    async def run(self, message: DatasetJobMessage) -> None:
        """Advance the job by one chunk, or finish it; a stale or repeated message changes nothing."""
        job, etag = await self._load_or_create(message)
        if job.finished:
            log.info("Dataset %s is already %s; message part %s ignored", job.id, job.status, message.part)
            return
        if message.slice is not None:
            await self._run_slice(job, message)
            return
        checkpoint = job.checkpoint
        if message.part < checkpoint.part:
            # A redelivery of a part that already ran: make sure its continuation was sent.
            await self._send(message.model_copy(update={"part": checkpoint.part}))
            return
        if message.part > checkpoint.part:
            log.warning(
                "Dataset %s: message part %s is ahead of the job (%s); ignored", job.id, message.part, checkpoint.part
            )
            return
        if job.status is DatasetStatus.QUEUED:
            job.status, job.started_at = DatasetStatus.RUNNING, int(time.time())
        job.runs += 1
        job.error = None
        etag = await self.records.save(job, etag)
        if self._plans(job):
            etag, fanned_out = await self._plan(job, etag, message)
            if fanned_out:
                return
        if not checkpoint.walk_done:
            walked = checkpoint.walked
            with job_chunk("dataset", job.id, part=checkpoint.part) as chunk:
                try:
                    await _Chunk(self, job).run()
                finally:
                    chunk.items = checkpoint.walked - walked
            if not checkpoint.walk_done:
                checkpoint.part += 1
            etag = await self.records.save(job, etag)
            if not checkpoint.walk_done:
                await self._send(message.model_copy(update={"part": checkpoint.part}))
                return
        await self._finish(job, etag)

    def _plans(self, job: DatasetJob) -> bool:
        """Filter selections are planned (and maybe fanned out); `ids` selections stay one slice (5,000 at most)."""
        assert job.request is not None
        started_unplanned = job.plan is None and (job.checkpoint.walked > 0 or job.checkpoint.walk_done)
        return job.request.filter is not None and not started_unplanned and not (job.plan and job.plan.done)

    async def _plan(self, job: DatasetJob, etag: str, message: DatasetJobMessage) -> tuple[str, bool]:
        """Walk a sample of the selection's index rows (`Plan`), ending a slice every `slice_completions`
        completions it stands for and sending its message at once; the new ETag, and whether this
        delivery is done (fanned out or continued).

        Each bound is saved before its message is sent, and a redelivery resends every known slice:
        a resent slice finds its record done and changes nothing.
        """
        assert job.request is not None and job.request.filter is not None
        plan = job.plan = job.plan or Plan(shards=plan_shards(self.limits))
        for number in range(len(plan.bounds)):
            await self._send_slice(job, number)
        size, deadline = self.limits.slice_completions, time.monotonic() + self.limits.chunk_seconds
        rows = self._store.index.sample_ids(
            job.request.filter, shards=plan.shards, after=plan.cursor, page_size=_WALK_PAGE
        )
        async for completion_id in rows:
            # The rows walked so far fill one more slice: it ends before this one. Counted against the saved
            # bounds, so a delivery that died after saving a bound (and resumes with it as its cursor) adds no empty slice.
            if plan.counted * SHARDS >= (len(plan.bounds) + 1) * size * plan.shards:
                assert plan.cursor is not None
                plan.bounds.append(plan.cursor)
                etag = await self.records.save(job, etag)
                await self._send_slice(job, len(plan.bounds) - 1)
            plan.counted += 1
            plan.cursor = completion_id
            if time.monotonic() >= deadline:
                job.checkpoint.part += 1
                etag = await self.records.save(job, etag)
                await self._send(message.model_copy(update={"part": job.checkpoint.part}))
                return etag, True
        plan.done = True
        etag = await self.records.save(job, etag)
        if not plan.fanned_out:
            return etag, False
        log.info(
            "Dataset %s: about %s completions planned as %s slices",
            job.id,
            plan.counted * SHARDS // plan.shards,
            len(plan.bounds) + 1,
        )
        await self._send_slice(job, len(plan.bounds))
        await self._try_finish(job.id)
        return etag, True

    async def _send_slice(self, job: DatasetJob, number: int) -> None:
        assert job.request is not None
        message = DatasetJobMessage(
            version=MESSAGE_VERSION, job_id=job.id, request=job.request, slice=number, generation=job.generation
        )
        await self._send(message)

    async def _run_slice(self, job: DatasetJob, message: DatasetJobMessage) -> None:
        """Build one slice by one chunk, or finish the job when it was the last slice to end."""
        number, plan = message.slice, job.plan
        assert number is not None
        if message.generation != job.generation or plan is None or number > len(plan.bounds):
            log.info("Dataset %s: slice %s of generation %s is stale; ignored", job.id, number, message.generation)
            return
        record, etag = await self.records.read_slice(job, number)
        checkpoint = record.checkpoint
        if etag is None:
            checkpoint.after = plan.slice_range(number).after
        if message.part < checkpoint.part:
            await self._send(message.model_copy(update={"part": checkpoint.part}))  # its continuation may be lost
            return
        if message.part > checkpoint.part:
            log.warning("Dataset %s: slice %s part %s is ahead of it; ignored", job.id, number, message.part)
            return
        if not checkpoint.walk_done:
            record.runs += 1
            etag = await self.records.save_slice(job, number, record, etag)
            log.info("Dataset %s: slice %s part %s starts (run %s)", job.id, number, checkpoint.part, record.runs)
            await self._build_slice(job, number, record)
            if not checkpoint.walk_done:
                checkpoint.part += 1
            etag = await self.records.save_slice(job, number, record, etag)
            if not checkpoint.walk_done:
                await self._send(message.model_copy(update={"part": checkpoint.part}))
                return
        await self._try_finish(job.id)

    async def _build_slice(self, job: DatasetJob, number: int, record: SliceRecord, *, bounded: bool = True) -> None:
        """Run one chunk of a slice on its own checkpoint and counts (updated in place)."""
        assert job.plan is not None
        view = job.model_copy(update={"checkpoint": record.checkpoint, "counts": record.counts})
        walked = record.checkpoint.walked
        with job_chunk("dataset", job.id, part=record.checkpoint.part) as chunk:
            try:
                await _Chunk(self, view, upto=job.plan.slice_range(number).upto, bounded=bounded).run()
            finally:
                chunk.items = record.checkpoint.walked - walked

    async def _try_finish(self, job_id: str) -> None:
        """Finish a fanned-out build once every slice is done: the delivery that sees it first does.

        Each slice saves its own record before it reads the others' (and the planner saves `done`
        before it does), so at least one delivery sees them all done; two that both do commit the
        same block list and the second's ETag'd save of the job record stops it.
        """
        job, etag = await self.records.read(job_id, include_deleted=True)
        if job.finished or job.plan is None or not job.plan.fanned_out:
            return
        slices = list(await asyncio.gather(*(self.records.read_slice(job, n) for n in range(len(job.plan.bounds) + 1))))
        if not all(record.checkpoint.walk_done for record, _ in slices):
            return
        await self._drop_duplicates_across_slices(job, slices)
        checkpoint, counts = job.checkpoint, job.counts
        for record, _ in slices:
            counts.selected += record.counts.selected
            counts.written += record.counts.written
            for reason, n in record.counts.skipped.items():
                counts.skipped[reason] = counts.skipped.get(reason, 0) + n
            checkpoint.walked += record.checkpoint.walked
            checkpoint.source_digest = (checkpoint.source_digest + record.checkpoint.source_digest) % _DIGEST_MODULUS
            for name, blocks in record.checkpoint.blocks.items():
                checkpoint.blocks.setdefault(name, []).extend(blocks)
            job.runs += record.runs
        checkpoint.walk_done = True
        await self._finish(job, etag)

    async def _drop_duplicates_across_slices(
        self, job: DatasetJob, slices: list[tuple[SliceRecord, str | None]]
    ) -> None:
        """Keep each example's first occurrence in selection order, as a one-slice build does.

        Slices dedupe (examples, and prompts: duplicates, near-duplicates, train/validation leakage)
        only within themselves. A slice holding an example or admitting a prompt that the earlier
        slices' state would have dropped is built again here, seeded with that state, so the files
        are byte for byte a one-slice build's. A slice without such a conflict would be built the same
        seeded or not: it is kept.
        """
        assert job.request is not None
        request = job.request
        prompts = PromptFilter(request.dedup, check_leakage=_checks_leakage(request))
        distillation = request.kind is DatasetKind.DISTILLATION
        if not distillation and not prompts.active:
            return
        seen, earlier, earlier_prompts = FingerprintSet(), list[str](), list[str]()
        for number, (record, etag) in enumerate(slices):
            fingerprints = await self.fingerprints(job.id, record.checkpoint.fingerprint_runs)
            admitted = await self.prompt_states(job.id, record.checkpoint.prompt_runs)
            if any(fingerprint in seen for fingerprint in fingerprints) or any(map(prompts.rejects_any, admitted)):
                log.info("Dataset %s: slice %s repeats earlier examples or prompts; building it again", job.id, number)
                assert job.plan is not None
                seeded = Checkpoint(
                    after=job.plan.slice_range(number).after,
                    fingerprint_runs=list(earlier),
                    prompt_runs=list(earlier_prompts),
                )
                fresh = SliceRecord(checkpoint=seeded, runs=record.runs + 1)
                await self._build_slice(job, number, fresh, bounded=False)
                fresh.checkpoint.fingerprint_runs = fresh.checkpoint.fingerprint_runs[len(earlier) :]
                fresh.checkpoint.prompt_runs = fresh.checkpoint.prompt_runs[len(earlier_prompts) :]
                await self.records.save_slice(job, number, fresh, etag)
                slices[number] = record, _ = fresh, None
                fingerprints = await self.fingerprints(job.id, record.checkpoint.fingerprint_runs)
                admitted = await self.prompt_states(job.id, record.checkpoint.prompt_runs)
            for fingerprint in fingerprints:
                seen.add(fingerprint)
            for state in admitted:
                prompts.load(state)
            earlier.extend(record.checkpoint.fingerprint_runs)
            earlier_prompts.extend(record.checkpoint.prompt_runs)

    async def prompt_states(self, job_id: str, runs: list[str]) -> list[bytes]:
        """The prompt-filter states these runs saved (`<id>/work/prompts-<run>.bin`)."""
        return await self._work_files(job_id, "prompts", runs)

    async def fingerprints(self, job_id: str, runs: list[str]) -> array[int]:
        """The example fingerprints these runs saved (`<id>/work/fingerprints-<run>.bin`)."""
        found = array("Q")
        for saved in await self._work_files(job_id, "fingerprints", runs):
            found.frombytes(saved)
        return found

    async def _work_files(self, job_id: str, kind: str, runs: list[str]) -> list[bytes]:
        files = []
        for run_id in runs:
            blob = self.records.blob(job_id, f"{WORK_PREFIX}{kind}-{run_id}.bin")
            try:
                files.append(await (await blob.download_blob()).readall())
            except AzureError as exc:
                raise StorageUnavailable("The dataset store is unavailable.") from exc
        return files

    async def _parse(self, body: bytes) -> DatasetJobMessage:
        try:
            return DatasetJobMessage.model_validate_json(body)
        except ValidationError as exc:
            problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'body'}: {e['msg']}" for e in exc.errors()[:5])
            log.error("Invalid dataset job message: %s", problems)
            job_id = _job_id_of(body)
            if job_id is not None:
                error = JobError(code="invalid_message", message=f"The job message is invalid: {problems}")
                await self._settle_failure(job_id, error, final=True)
            raise InvalidJobMessage(problems) from None

    async def _load_or_create(self, message: DatasetJobMessage) -> tuple[DatasetJob, str]:
        """The job's record; a producer that queued the message directly has none yet."""
        try:
            return await self.records.read(message.job_id, include_deleted=True)
        except NotFound:
            job = DatasetJob.queued(message.job_id, message.request)
            with contextlib.suppress(DistilleryError):
                await self.records.create(job)
            return await self.records.read(message.job_id, include_deleted=True)

    async def _settle_failure(self, job_id: str, error: JobError, *, final: bool) -> None:
        """Show the failure on the record: `failed` when no retry is left, else the last error."""
        try:
            job, etag = await self.records.read(job_id, include_deleted=True)
        except NotFound:
            if not final:
                return
            job, etag = DatasetJob(id=job_id, kind=None, request=None, created_at=int(time.time())), None
        if job.finished:
            return
        job.error = error
        if final:
            job.status, job.finished_at = DatasetStatus.FAILED, int(time.time())
        with contextlib.suppress(JobSuperseded, DistilleryError):
            await (self.records.save(job, etag) if etag else self.records.create(job))

    async def forget_completions(self, completion_ids: list[str]) -> list[str]:
        """Rebuild every dataset that holds (or is reading) any of these deleted completions; their ids."""
        holders = sorted(h for h in await self.membership.holders(completion_ids) if h.startswith("dataset-"))
        rebuilt = [dataset_id for dataset_id in holders if await self.rebuild(dataset_id)]
        if rebuilt:
            log.info("Deleted completions were in %s dataset(s); rebuilding %s", len(rebuilt), ", ".join(rebuilt))
        if holders:
            await self.membership.release(completion_ids)
        return rebuilt

    async def rebuild(self, dataset_id: str) -> bool:
        """Start the dataset over as a new generation: its files go at once, the build runs again.

        A delivery still building the old generation is superseded at its next save (ETag), and what it
        wrote lives under the old generation's names, which are deleted. False when there is no such job.
        """
        for _ in range(5):
            try:
                job, etag = await self.records.read(dataset_id, include_deleted=True)
            except NotFound:
                return False
            if job.status in (DatasetStatus.DELETED, DatasetStatus.FAILED) or job.request is None:
                return False  # gone, or failed with no files: nothing holds the completion
            reset = job.model_copy(
                update={
                    "status": DatasetStatus.QUEUED,
                    "generation": job.generation + 1,
                    "rebuilds": job.rebuilds + 1,
                    "checkpoint": Checkpoint(part=job.checkpoint.part + 1),
                    "counts": DatasetCounts(),
                    "files": [],
                    "error": None,
                    "started_at": None,
                    "finished_at": None,
                    "token_count_method": None,
                    "plan": None,
                }
            )
            try:
                await self.records.save(reset, etag)
            except JobSuperseded:
                continue
            await self.records.delete_other_generations(reset)
            message = DatasetJobMessage(
                version=MESSAGE_VERSION, job_id=reset.id, part=reset.checkpoint.part, request=job.request
            )
            try:
                await self._send(message)
            except StorageUnavailable:
                error = JobError(code="queue_unavailable", message="The rebuild could not be queued; create it again.")
                await self._settle_failure(reset.id, error, final=True)
                raise
            return True
        raise StorageUnavailable("The dataset kept changing; its rebuild was not started.")

    async def _send(self, message: DatasetJobMessage) -> None:
        await self._queue.send(self._queue_name, message.model_dump_json(), message_id=message.message_id)

    async def _finish(self, job: DatasetJob, etag: str) -> None:
        assert job.request is not None
        written, minimum = job.counts.written, _minimum(job.request.kind)
        if written < minimum:
            skipped = ", ".join(f"{n} {reason}" for reason, n in sorted(job.counts.skipped.items())) or "none"
            job.error = JobError(
                code="too_few_examples",
                message=(
                    f"Only {written} usable completion(s) found ({job.counts.selected} selected; skipped: {skipped}). "
                    f"A {job.request.kind} dataset needs at least {minimum}: widen the filter or store more completions."
                ),
            )
            job.status = DatasetStatus.FAILED
        else:
            job.files = [
                await self._commit(job, name) for name, blocks in sorted(job.checkpoint.blocks.items()) if blocks
            ]
            await self._write_manifest(job)
            job.status, job.token_count_method = DatasetStatus.SUCCEEDED, TOKEN_COUNT_METHOD
        job.finished_at = int(time.time())
        await self.records.save(job, etag)
        await self.records.delete_files(job.id, under=WORK_PREFIX)
        log.info("Dataset %s %s: %s written of %s selected", job.id, job.status, written, job.counts.selected)

    async def _commit(self, job: DatasetJob, name: str) -> DatasetFile:
        blocks = job.checkpoint.blocks[name]
        try:
            await self.records.blob(job.id, job.file_path(name)).commit_block_list(
                [BlobBlock(block_id=b.id) for b in blocks], content_settings=_JSONL
            )
        except AzureError as exc:
            raise StorageUnavailable("The dataset store is unavailable.") from exc
        sha256 = hashlib.sha256()
        _, chunks = await self.records.open_file(job.id, name)
        async for chunk in chunks:
            sha256.update(chunk)
        return DatasetFile(
            name=name,
            bytes=sum(block.bytes for block in blocks),
            lines=sum(block.lines for block in blocks),
            tokens=sum(block.tokens for block in blocks),
            sha256=sha256.hexdigest(),
        )

    async def _write_manifest(self, job: DatasetJob) -> None:
        view = job.view()
        manifest = {
            "format_version": MANIFEST_VERSION,
            "dataset_id": job.id,
            "kind": job.kind,
            "name": job.name,
            "created_at": job.created_at,
            "selection": {
                key: view[key] for key in ("filter", "ids_count", "validation_fraction", "seed", "group_by", "dedup")
            },
            "source": {
                "completions": job.counts.written,
                "ids_digest": f"{job.checkpoint.source_digest:064x}",
                "ids_digest_method": "sum of sha256(completion id) over written completions, mod 2**256",
            },
            "counts": job.counts.model_dump(),
            "dedup": dedup_report(job.request.dedup, job.counts.skipped, leakage_checked=job.request.fraction > 0)
            if job.request is not None
            else None,
            "files": [file.model_dump() for file in job.files],
            "tokens": sum(file.tokens for file in job.files),
            "token_count_method": TOKEN_COUNT_METHOD,
        }
        try:
            await self.records.blob(job.id, job.file_path(MANIFEST_FILE)).upload_blob(
                json.dumps(manifest, indent=2), overwrite=True, content_settings=ContentSettings("application/json")
            )
        except AzureError as exc:
            raise StorageUnavailable("The dataset store is unavailable.") from exc


def source_digest(completion_ids: list[str]) -> str:
    """The manifest's `ids_digest` for these ids, to check a dataset against a selection."""
    total = sum(_id_digest(completion_id) for completion_id in completion_ids) % _DIGEST_MODULUS
    return f"{total:064x}"


def _id_digest(completion_id: str) -> int:
    return int.from_bytes(hashlib.sha256(completion_id.encode()).digest(), "big")


def _walk_position(completion_id: str) -> tuple[int, str]:
    """Where an id comes in the index walk: capture time, then id."""
    return ids.captured_at_us(completion_id), completion_id


def plan_shards(limits: BuildLimits) -> int:
    """The fewest index shards whose rows give the plan `plan_rows_per_slice` rows a slice."""
    return min(SHARDS, max(1, math.ceil(SHARDS * limits.plan_rows_per_slice / limits.slice_completions)))


def _checks_leakage(request: DatasetParams) -> bool:
    """Distillation with a validation split: no validation prompt may be a near-duplicate of a training one."""
    return request.kind is DatasetKind.DISTILLATION and request.fraction > 0


def _minimum(kind: DatasetKind) -> int:
    return MIN_DISTILLATION_EXAMPLES if kind is DatasetKind.DISTILLATION else 1


def _job_error(exc: Exception, delivery_count: int, limits: BuildLimits) -> JobError:
    reason = (
        exc.message if isinstance(exc, DistilleryError) else f"unexpected {type(exc).__name__}; see the function logs"
    )
    if delivery_count >= limits.max_delivery_count:
        return JobError(code="build_failed", message=f"The build failed {delivery_count} times: {reason}")
    return JobError(
        code="retrying",
        message=f"Attempt {delivery_count} of {limits.max_delivery_count} failed ({reason}); it will be retried.",
    )


def _job_id_of(body: bytes) -> str | None:
    """The job id of an invalid message, if it names a well-formed one."""
    with contextlib.suppress(ValueError, UnicodeDecodeError):
        value = json.loads(body)
        job_id = value.get("job_id") if isinstance(value, dict) else None
        if isinstance(job_id, str) and is_dataset_id(job_id):
            return job_id
    return None


class FingerprintSet:
    """Exact-duplicate detection in 8 bytes a slot: open addressing over an array of 64-bit fingerprints."""

    def __init__(self) -> None:
        self._slots = array("Q", bytes(8 * 1024))
        self._count = 0

    def __contains__(self, fingerprint: int) -> bool:
        fingerprint = fingerprint or 1
        mask = len(self._slots) - 1
        slot = fingerprint & mask
        while (held := self._slots[slot]) != 0:
            if held == fingerprint:
                return True
            slot = (slot + 1) & mask
        return False

    def add(self, fingerprint: int) -> bool:
        """True when the fingerprint is new."""
        fingerprint = fingerprint or 1  # 0 marks an empty slot
        mask = len(self._slots) - 1
        slot = fingerprint & mask
        while (held := self._slots[slot]) != 0:
            if held == fingerprint:
                return False
            slot = (slot + 1) & mask
        self._slots[slot] = fingerprint
        self._count += 1
        if self._count * 5 > len(self._slots) * 4:
            self._grow()
        return True

    def _grow(self) -> None:
        old = self._slots
        self._slots, self._count = array("Q", bytes(16 * len(old))), 0
        for fingerprint in old:
            if fingerprint:
                self.add(fingerprint)


@dataclass
class _Buffer:
    lines: list[bytes] = field(default_factory=list)
    bytes: int = 0
    tokens: int = 0


class _Chunk:
    """One delivery's share of the walk; updates `job` (checkpoint and counts) in memory only."""

    def __init__(self, jobs: DatasetJobs, job: DatasetJob, *, upto: str | None = None, bounded: bool = True) -> None:
        assert job.request is not None
        self._jobs, self._job, self._request = jobs, job, job.request
        self._upto = None if upto is None else _walk_position(upto)
        """A slice's last id: the walk stops after it."""
        self._bounded = bounded
        """False: run to the end of the selection whatever the chunk budget (a slice rebuilt while finishing)."""
        self._run_id = secrets.token_hex(8)
        self._blocks_staged = 0
        self._buffers: dict[str, _Buffer] = {}
        self._fingerprints = FingerprintSet()
        self._new_fingerprints = array("Q")
        self._prompts = PromptFilter(self._request.dedup, check_leakage=_checks_leakage(self._request))
        self._superseded: set[str] = set()
        """`prefer_relabel`: relabeled answers whose selected original carries them."""

    async def run(self) -> None:
        limits, checkpoint = self._jobs.limits, self._job.checkpoint
        distillation = self._request.kind is DatasetKind.DISTILLATION
        if distillation:
            await self._load_fingerprints()
        await self._load_prompts()
        deadline = time.monotonic() + limits.chunk_seconds
        taken = 0
        exhausted = True
        async with contextlib.aclosing(self._read_in_order()) as reads:
            async for completion_id, completion in reads:
                self._consume(completion_id, completion)
                taken += 1
                await self._stage_full_buffers()
                if self._bounded and (taken >= limits.chunk_completions or time.monotonic() >= deadline):
                    exhausted = False
                    break
        for name in list(self._buffers):
            await self._stage(name)
        if distillation and self._new_fingerprints:
            await self._save_fingerprints()
        await self._save_prompts()
        checkpoint.walk_done = exhausted

    def _consume(self, completion_id: str, completion: StoredCompletion | None) -> None:
        job, request, checkpoint = self._job, self._request, self._job.checkpoint
        checkpoint.walked += 1
        checkpoint.after = completion_id
        job.counts.selected += 1
        if completion is None or (request.owner is not None and not same_owner(completion.owner, request.owner)):
            return self._skip(formats.SkipReason.NOT_FOUND)
        if completion_id in self._superseded:
            return self._skip(formats.SkipReason.RELABELED)
        if request.filter is not None and not in_selection(completion, request.filter):
            return self._skip(formats.SkipReason.NO_LONGER_MATCHES)
        output = formats.assistant_output(completion)
        if isinstance(output, formats.SkipReason):
            return self._skip(output)
        if request.kind is DatasetKind.EVALUATION:
            line_value = formats.evaluation_line(completion, output)
            item = line_value["item"]
            tokens = count_messages([*item["input"], output], item.get("tools"))
            name = formats.EVAL_FILE
        else:
            line_value = formats.distillation_example(completion, output)
            checked = check_example(line_value, max_tokens=self._jobs.limits.max_example_tokens)
            if not checked.ok:
                log.info("Dataset %s: %s skipped: %s", job.id, completion_id, checked.problems[0].rule)
                return self._skip(formats.SkipReason.INVALID_FORMAT)
            tokens = checked.tokens
            validation = formats.in_validation(
                formats.group_key(completion, request.group_by), seed=request.seed, fraction=request.fraction
            )
            name = formats.VALIDATION_FILE if validation else formats.TRAIN_FILE
        line = formats.jsonl_line(line_value)
        if request.kind is DatasetKind.DISTILLATION:
            fingerprint = formats.line_fingerprint(line)
            if not self._fingerprints.add(fingerprint):
                return self._skip(formats.SkipReason.DUPLICATE)
            self._new_fingerprints.append(fingerprint or 1)
        dropped = self._prompts.admit(formats.prompt_messages(completion), split=int(name == formats.VALIDATION_FILE))
        if dropped is not None:
            return self._skip(dropped)
        buffer = self._buffers.setdefault(name, _Buffer())
        buffer.lines.append(line)
        buffer.bytes += len(line)
        buffer.tokens += tokens
        job.counts.written += 1
        checkpoint.source_digest = (checkpoint.source_digest + _id_digest(completion_id)) % _DIGEST_MODULUS
        return None

    def _skip(self, reason: formats.SkipReason) -> None:
        skipped = self._job.counts.skipped
        skipped[reason.value] = skipped.get(reason.value, 0) + 1

    async def _read_in_order(self) -> AsyncGenerator[tuple[str, StoredCompletion | None]]:
        """Stored completions in selection order, `read_concurrency` reads in flight.

        Reads run ahead of the consumer by a window of several times the concurrency, so one slow
        read at the head does not idle the other slots. The window is bounded by bytes too: each
        read holds its document's (index) size from the store's read budget until it is consumed,
        taken in selection order; when the budget is full the head is consumed first, so the
        build never waits on bytes it holds itself.
        """
        store = self._jobs._store
        budget = store.budget
        limit = asyncio.Semaphore(self._jobs.limits.read_concurrency)
        window = 4 * self._jobs.limits.read_concurrency
        pending: deque[tuple[str, int, asyncio.Task[StoredCompletion | None]]] = deque()

        async def read(completion_id: str, reserved: int) -> StoredCompletion | None:
            async with limit:
                completion = await store.read_reserved(completion_id, reserved=reserved)
                if completion is not None and self._request.prefer_relabel:
                    completion = await self._preferred(completion)
                return completion

        try:
            async with contextlib.aclosing(self._selection_ahead()) as selection:
                async for completion_id, size in selection:
                    while pending and (len(pending) >= window or not budget.fits(size)):
                        first_id, reserved, first = pending.popleft()
                        try:
                            yield first_id, await first
                        finally:
                            budget.release(reserved)
                    reserved = await budget.acquire(size)
                    pending.append((completion_id, reserved, asyncio.create_task(read(completion_id, reserved))))
            while pending:
                first_id, reserved, first = pending.popleft()
                try:
                    yield first_id, await first
                finally:
                    budget.release(reserved)
        finally:
            for _, _, task in pending:
                task.cancel()
            await asyncio.gather(*(task for _, _, task in pending), return_exceptions=True)
            for _, reserved, _ in pending:
                budget.release(reserved)

    async def _preferred(self, completion: StoredCompletion) -> StoredCompletion:
        """`prefer_relabel`: an original answered by its latest relabel still stored; a relabel whose
        original is selected too is marked to skip (its original carries the answer)."""
        store = self._jobs._store
        if completion.relabel_of is not None:
            original = await store.read_reserved(completion.relabel_of, reserved=0)
            if original is not None and completion.id in original.relabels and self._selects(original):
                self._superseded.add(completion.id)
            return completion
        for relabel_id in reversed(completion.relabels):
            relabel = await store.read_reserved(relabel_id, reserved=0)
            if relabel is not None:
                return completion.model_copy(update={"response": relabel.response})
        return completion

    def _selects(self, completion: StoredCompletion) -> bool:
        request = self._request
        if request.filter is not None:
            return in_selection(completion, request.filter)
        return completion.id in (request.ids or [])

    async def _selection_ahead(self) -> AsyncGenerator[tuple[str, int]]:
        """The selection, with the next index page fetched while the current one is read."""
        ahead: asyncio.Queue[tuple[str, int] | Exception | None] = asyncio.Queue(maxsize=_WALK_PAGE)

        async def fill() -> None:
            try:
                async for item in self._selection():
                    await ahead.put(item)
                await ahead.put(None)
            except Exception as exc:  # noqa: BLE001 - handed to the consumer, which raises it
                await ahead.put(exc)

        filler = asyncio.create_task(fill())
        try:
            while (item := await ahead.get()) is not None:
                if isinstance(item, Exception):
                    raise item
                yield item
        finally:
            filler.cancel()
            await asyncio.gather(filler, return_exceptions=True)

    async def _selection(self) -> AsyncIterator[tuple[str, int]]:
        """Selected ids with their sizes, each recorded as a member of the dataset before its document is read."""
        page: list[tuple[str, int]] = []
        size = _FIRST_MEMBERSHIP_PAGE
        async for selected in self._selected():
            page.append(selected)
            if len(page) == size:
                await self._jobs.membership.record(self._job.id, [completion_id for completion_id, _ in page])
                for member in page:
                    yield member
                page, size = [], min(2 * size, _MEMBERSHIP_PAGE)
        await self._jobs.membership.record(self._job.id, [completion_id for completion_id, _ in page])
        for member in page:
            yield member

    async def _selected(self) -> AsyncIterator[tuple[str, int]]:
        """Selected ids with their document sizes as the index recorded them (0 when it has no row)."""
        checkpoint = self._job.checkpoint
        index = self._jobs._store.index
        if self._request.ids is not None:
            remaining = self._request.ids[checkpoint.walked :]
            for start in range(0, len(remaining), _SIZE_LOOKUPS):
                batch = remaining[start : start + _SIZE_LOOKUPS]
                sizes = await asyncio.gather(*(index.size_of(completion_id) for completion_id in batch))
                for completion_id, size in zip(batch, sizes, strict=True):
                    yield completion_id, size or 0
        else:
            assert self._request.filter is not None
            async for entry in index.walk(self._request.filter, after=checkpoint.after, page_size=_WALK_PAGE):
                if self._upto is not None and _walk_position(entry.id) > self._upto:
                    return
                yield entry.id, entry.size_bytes

    async def _stage_full_buffers(self) -> None:
        for name, buffer in list(self._buffers.items()):
            if buffer.bytes >= self._jobs.limits.block_bytes:
                await self._stage(name)

    async def _stage(self, name: str) -> None:
        buffer = self._buffers.pop(name)
        block_id = f"{self._run_id}{self._blocks_staged:06d}"
        try:
            blob = self._jobs.records.blob(self._job.id, self._job.file_path(name))
            await blob.stage_block(block_id, b"".join(buffer.lines))
        except AzureError as exc:
            raise StorageUnavailable("The dataset store is unavailable.") from exc
        self._blocks_staged += 1
        staged = StagedBlock(id=block_id, bytes=buffer.bytes, lines=len(buffer.lines), tokens=buffer.tokens)
        self._job.checkpoint.blocks.setdefault(name, []).append(staged)

    async def _load_fingerprints(self) -> None:
        for fingerprint in await self._jobs.fingerprints(self._job.id, self._job.checkpoint.fingerprint_runs):
            self._fingerprints.add(fingerprint)

    async def _load_prompts(self) -> None:
        for state in await self._jobs.prompt_states(self._job.id, self._job.checkpoint.prompt_runs):
            self._prompts.load(state)

    async def _save_prompts(self) -> None:
        saved = self._prompts.saved()
        if not saved:
            return
        blob = self._jobs.records.blob(self._job.id, f"{WORK_PREFIX}prompts-{self._run_id}.bin")
        try:
            await blob.upload_blob(saved, overwrite=True)
        except AzureError as exc:
            raise StorageUnavailable("The dataset store is unavailable.") from exc
        self._job.checkpoint.prompt_runs.append(self._run_id)

    async def _save_fingerprints(self) -> None:
        blob = self._jobs.records.blob(self._job.id, f"{WORK_PREFIX}fingerprints-{self._run_id}.bin")
        try:
            await blob.upload_blob(self._new_fingerprints.tobytes(), overwrite=True)
        except AzureError as exc:
            raise StorageUnavailable("The dataset store is unavailable.") from exc
        self._job.checkpoint.fingerprint_runs.append(self._run_id)
