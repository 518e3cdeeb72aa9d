"""Distill: a finished distillation dataset becomes a fine-tuning job on the upstream.

`POST /api/datasets/{id}/fine_tuning_jobs` checks what it can at once (an upstream that fine-tunes,
a succeeded distillation dataset, at least 10 training examples, files under the size limits) and
queues the rest: each file is checked line by line, uploaded under a name holding our record id (its
upstream id recorded before anything else happens, and an upload an earlier delivery made but did
not record is found by that name, so a redelivery never uploads twice), awaited until the upstream
has processed it, and the job created with our record id in its metadata (so a redelivery finds the
job instead of creating a second). Every step starts only within the delivery's time budget,
counted from the delivery's start, so a delivery never outlives its Service Bus lock; what is left
goes on in a continuation message. The record then mirrors the upstream job, refreshed on request
and by a timer, and links dataset -> files -> job -> fine-tuned model -> deployments for lineage.
Once the job ends (or its preparation fails) its files are deleted upstream: Azure OpenAI keeps at
most 100 fine-tuning files, 1 GB in all, per resource.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Sequence
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from shared.datasets import formats
from shared.datasets.builder import MANIFEST_FILE
from shared.datasets.check import LineProblem, check_lines
from shared.datasets.job import MIN_DISTILLATION_EXAMPLES, DatasetKind, DatasetStatus
from shared.datasets.records import DatasetRecords
from shared.evals.records import new_id
from shared.fine_tuning.api import FineTuningApi, FineTuningUpstreamError, explain
from shared.fine_tuning.comparison import ComparisonPlan, ComparisonRuns
from shared.platform.access import OwnerId, same_owner
from shared.platform.errors import DistilleryError, InvalidRequest, NotFound
from shared.platform.job_queue import JobQueue
from shared.platform.request_body import parse_model
from shared.platform.telemetry import job_chunk
from shared.store.json_blobs import JsonBlobs, Superseded

log = logging.getLogger(__name__)
T = TypeVar("T")

MAX_FILE_BYTES = 512 * 1024 * 1024
"""The fine-tuning services' largest training file (Azure OpenAI and OpenAI: 512 MB)."""
MAX_TOTAL_BYTES = 1_000_000_000
"""Azure OpenAI's "total size of all files per resource (fine-tuning): 1 GB"
(learn.microsoft.com/azure/ai-foundry/openai/quotas-limits); one job's files must fit in it."""
TERMINAL = frozenset({"succeeded", "failed", "cancelled"})
TRAINING_TYPES = {"globalstandard": "globalstandard", "standard": "standard", "developer": "developerTier"}
"""Our `training_type` -> Azure OpenAI's `trainingType`. The Developer tier is spelled `developerTier`
(learn.microsoft.com/azure/foundry/openai/how-to/fine-tuning: `extra_body={"trainingType": "developerTier"}`)."""


class FineTuningParams(BaseModel):
    """The `POST /api/datasets/{id}/fine_tuning_jobs` body: the upstream job's own fields."""

    model_config = ConfigDict(extra="forbid")

    model: str = Field(min_length=1)
    """The base model, e.g. `gpt-4.1-mini-2025-04-14`."""
    suffix: str | None = Field(None, min_length=1, max_length=64)
    seed: int | None = None
    hyperparameters: dict[str, Any] | None = None
    method: dict[str, Any] | None = None
    training_type: Literal["globalstandard", "standard", "developer"] | None = None
    """Azure OpenAI's `trainingType`: where the model trains (ignored by other upstreams)."""
    validation: bool = True
    """Send the dataset's `validation.jsonl` too, when it has one."""
    comparison: ComparisonPlan | None = None
    """How the student is judged against its teacher once deployed (default: on, the default graders)."""

    @field_validator("suffix")
    @classmethod
    def _suffix_fits_a_model_name(cls, suffix: str | None) -> str | None:
        if suffix is not None and "." in suffix:
            raise ValueError("the suffix cannot contain '.': Azure OpenAI fine-tuned model names cannot hold it")
        return suffix

    @model_validator(mode="after")
    def _one_way_to_tune(self) -> FineTuningParams:
        if self.hyperparameters is not None and self.method is not None:
            raise ValueError("give 'method' (or the older 'hyperparameters'), not both")
        return self


class FineTuningError(BaseModel):
    code: str
    message: str
    hint: str | None = None


class StudentDeployment(BaseModel):
    """A deployment of the job's fine-tuned model: lineage job -> model -> deployment."""

    name: str
    model: str
    managed: bool
    """Created (and deleted) by Distillery through the control plane; False: an existing deployment
    registered by hand (nothing upstream is created or deleted for it)."""
    sku: str | None = None
    capacity: int | None = None
    provisioning_state: str
    """Azure's: Accepted, Creating, Succeeded, Failed...; `Deleted` once deleted here."""
    created_at: int
    updated_at: int
    error: FineTuningError | None = None
    comparison: ComparisonRuns | None = None
    """The automatic comparison with the teacher, started when the deployment became ready."""

    def view(self, job_id: str) -> dict[str, Any]:
        return {
            "object": "distillery.fine_tuning_deployment",
            "id": self.name,
            "name": self.name,
            "fine_tuning_job_id": job_id,
            "model": self.model,
            "managed": self.managed,
            "sku": self.sku,
            "capacity": self.capacity,
            "provisioning_state": self.provisioning_state,
            "created_at": self.created_at,
            "updated_at": self.updated_at,
            "error": self.error.model_dump() if self.error else None,
            "comparison": self.comparison.model_dump() if self.comparison else None,
        }


class FineTuningRecord(BaseModel):
    """`<id>.json` in the fine-tuning container."""

    id: str
    dataset_id: str
    owner: OwnerId = None
    created_at: int
    updated_at: int
    params: FineTuningParams
    status: str = "preparing"
    """`preparing` (ours: checking, uploading, waiting for files), then the upstream job's status."""
    stage: str | None = "queued"
    """While preparing: queued, validating_files, uploading, waiting_for_files, creating_job."""
    files: dict[str, str] = Field(default_factory=dict)
    """Dataset file name -> upstream file id (kept for lineage after the files are deleted upstream)."""
    files_checked: bool = False
    """Every file passed the line-by-line check (a continuation does not check them again)."""
    files_deleted_at: int | None = None
    """When the uploaded files were deleted upstream (the job ended or its preparation failed)."""
    upstream_job_id: str | None = None
    fine_tuned_model: str | None = None
    trained_tokens: int | None = None
    events: list[dict[str, Any]] = Field(default_factory=list)
    checkpoints: list[dict[str, Any]] = Field(default_factory=list)
    error: FineTuningError | None = None
    cancel_requested: bool = False
    deployments: list[StudentDeployment] = Field(default_factory=list)
    dataset: dict[str, Any] = Field(default_factory=dict)
    """Lineage: the dataset manifest's name, selection, counts and source digest."""

    @property
    def finished(self) -> bool:
        return self.status in TERMINAL

    def visible_to(self, owner: str | None) -> bool:
        return owner is None or same_owner(self.owner, owner)

    def view(self) -> dict[str, Any]:
        return {
            "object": "distillery.fine_tuning_job",
            "id": self.id,
            "dataset_id": self.dataset_id,
            "created_at": self.created_at,
            "updated_at": self.updated_at,
            "status": self.status,
            "stage": self.stage,
            "model": self.params.model,
            "params": self.params.model_dump(exclude_none=True),
            "training_file": self.files.get(formats.TRAIN_FILE),
            "validation_file": self.files.get(formats.VALIDATION_FILE),
            "upstream_job_id": self.upstream_job_id,
            "fine_tuned_model": self.fine_tuned_model,
            "trained_tokens": self.trained_tokens,
            "events": self.events,
            "checkpoints": self.checkpoints,
            "error": self.error.model_dump() if self.error else None,
            "files_deleted_at": self.files_deleted_at,
            "deployments": [deployment.view(self.id) for deployment in self.deployments],
            "lineage": {
                "dataset": self.dataset,
                "files": self.files,
                "upstream_job_id": self.upstream_job_id,
                "fine_tuned_model": self.fine_tuned_model,
                "deployments": [deployment.name for deployment in self.deployments],
                "comparisons": {
                    d.name: d.comparison.model_dump(exclude_none=True) for d in self.deployments if d.comparison
                },
            },
        }


class FineTuningMessage(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    version: Literal[1] = 1
    job_id: str
    part: int = 0

    @property
    def message_id(self) -> str:
        return self.job_id if self.part == 0 else f"{self.job_id}-part{self.part}"


class FineTuningJobs:
    def __init__(
        self,
        *,
        blobs: JsonBlobs,
        datasets: DatasetRecords,
        api: FineTuningApi | None,
        job_queue: JobQueue,
        queue_name: str,
        delivery_seconds: float,
        max_delivery_count: int,
    ) -> None:
        self.blobs = blobs
        self._datasets = datasets
        self.api = api
        self._queue = job_queue
        self._queue_name = queue_name
        self._delivery_seconds = delivery_seconds
        self._max_delivery_count = max_delivery_count

    async def create(self, dataset_id: str, params: FineTuningParams, *, owner: str | None) -> FineTuningRecord:
        """Check the dataset and queue the upload; 400 before anything is sent when it cannot work."""
        if self.api is None:
            raise InvalidRequest(
                "Fine-tuning needs an upstream that trains models: set AZURE_OPENAI_ENDPOINT (or OPENAI_BASE_URL). "
                "The offline model cannot fine-tune.",
                param="model",
                code="fine_tuning_unavailable",
            )
        job, _ = await self._datasets.read(dataset_id)
        if not job.visible_to(owner):
            raise NotFound(f"No dataset found with id '{dataset_id}'.", param="dataset_id")
        if job.kind is not DatasetKind.DISTILLATION:
            raise InvalidRequest(
                f"Dataset '{dataset_id}' is an {job.kind} dataset; fine-tuning needs a distillation dataset.",
                param="dataset_id",
                code="not_a_distillation_dataset",
            )
        if job.status is not DatasetStatus.SUCCEEDED:
            raise InvalidRequest(
                f"Dataset '{dataset_id}' is {job.status}; fine-tune it once it has succeeded.",
                param="dataset_id",
                code="dataset_not_ready",
            )
        files = {file.name: file for file in job.files}
        train = files.get(formats.TRAIN_FILE)
        if train is None or train.lines < MIN_DISTILLATION_EXAMPLES:
            raise InvalidRequest(
                f"The training file has {train.lines if train else 0} examples; fine-tuning needs at least "
                f"{MIN_DISTILLATION_EXAMPLES}. Build the dataset from more stored completions, or with a smaller "
                "validation_fraction.",
                param="dataset_id",
                code="too_few_examples",
            )
        sent = [train] + (
            [files[formats.VALIDATION_FILE]] if params.validation and formats.VALIDATION_FILE in files else []
        )
        for file in sent:
            if file.bytes > MAX_FILE_BYTES:
                raise InvalidRequest(
                    f"'{file.name}' is {file.bytes} bytes; the fine-tuning service takes files up to {MAX_FILE_BYTES}.",
                    param="dataset_id",
                    code="file_too_large",
                )
        if (total := sum(file.bytes for file in sent)) > MAX_TOTAL_BYTES:
            raise InvalidRequest(
                f"The training and validation files add up to {total} bytes; Azure OpenAI keeps at most "
                f"{MAX_TOTAL_BYTES} bytes (1 GB) of fine-tuning files per resource. Build the dataset from fewer "
                "stored completions, or send it without its validation file (validation: false).",
                param="dataset_id",
                code="files_too_large",
            )
        now = int(time.time())
        record = FineTuningRecord(
            id=new_id("ftjob"),
            dataset_id=dataset_id,
            owner=owner,
            created_at=now,
            updated_at=now,
            params=params,
            dataset=await self._manifest(dataset_id),
        )
        await self.blobs.put(_name(record.id), record.model_dump_json(), create=True)
        await self._send(FineTuningMessage(job_id=record.id))
        return record

    async def get(self, job_id: str, *, owner: str | None, refresh: bool = True) -> FineTuningRecord:
        record, etag = await self._read_visible(job_id, owner)
        if refresh and record.upstream_job_id and not record.finished and self.api is not None:
            with contextlib.suppress(Superseded):
                return await self._refresh(record, etag)
            record, _ = await self._read(job_id)
        return record

    async def list(
        self, *, after: str | None, limit: int, owner: str | None, dataset_id: str | None = None
    ) -> tuple[list[FineTuningRecord], bool]:
        names = [name.removesuffix(".json") for name in await self.blobs.names("")]
        if after is not None:
            names = names[names.index(after) + 1 :] if after in names else []
        page: list[FineTuningRecord] = []
        for job_id in names:
            with contextlib.suppress(NotFound):
                record, _ = await self._read(job_id)
                if record.visible_to(owner) and dataset_id in (None, record.dataset_id):
                    if len(page) == limit:
                        return page, True
                    page.append(record)
        return page, False

    async def cancel(self, job_id: str, *, owner: str | None) -> FineTuningRecord:
        while True:
            record, etag = await self._read_visible(job_id, owner)
            if record.finished:
                return record
            if record.upstream_job_id and self.api is not None:
                await self.api.cancel(record.upstream_job_id)
            else:
                record.status, record.stage = "cancelled", None
            record.cancel_requested, record.updated_at = True, int(time.time())
            with contextlib.suppress(Superseded):
                etag = await self.blobs.put(_name(record.id), record.model_dump_json(), etag=etag)
                if record.upstream_job_id:
                    return await self.get(job_id, owner=owner)
                if self.api is not None:
                    await self._delete_files(record, etag)
                return record

    async def track(self) -> int:
        """The timer: refresh every unfinished job that has an upstream job, and delete the files of
        finished ones whose deletion failed before; returns how many jobs it refreshed."""
        refreshed = 0
        for name in await self.blobs.names(""):
            with contextlib.suppress(NotFound):
                record, etag = await self._read(name.removesuffix(".json"))
                if self.api is None:
                    continue
                with contextlib.suppress(Superseded, FineTuningUpstreamError):
                    if record.upstream_job_id and not record.finished:
                        await self._refresh(record, etag)
                        refreshed += 1
                    elif record.finished and record.files_deleted_at is None:
                        await self._delete_files(record, etag)
        return refreshed

    async def job_of(self, model_or_job_id: str, owner: str | None) -> str | None:
        """For eval-run lineage: the id of the caller's job that is `model_or_job_id`, or produced that model."""
        if model_or_job_id.startswith("ftjob_"):
            with contextlib.suppress(NotFound):
                return (await self._read_visible(model_or_job_id, owner))[0].id
            return None
        for name in await self.blobs.names(""):
            with contextlib.suppress(NotFound):
                record, _ = await self._read(name.removesuffix(".json"))
                if record.fine_tuned_model == model_or_job_id and record.visible_to(owner):
                    return record.id
        return None

    # The queue: prepare the files and create the upstream job.

    async def handle(self, body: bytes, *, delivery_count: int, started: float | None = None) -> None:
        """One delivery of a preparation message; `started` is when the delivery began (`time.monotonic()`,
        now by default): no step starts, and none runs on, past `started` + the delivery budget."""
        message = FineTuningMessage.model_validate_json(body)
        deadline = (time.monotonic() if started is None else started) + self._delivery_seconds
        try:
            with job_chunk("fine_tuning", message.job_id):
                await self._prepare(message, deadline)
        except Superseded:
            log.info("Fine-tuning job %s changed under this delivery; it stops", message.job_id)
            await self._delete_files_if_ended(message.job_id)
        except _OutOfTime:
            log.info("Fine-tuning job %s goes on in a new delivery", message.job_id)
            await self._send(message.model_copy(update={"part": message.part + 1}))
        except FineTuningUpstreamError as exc:
            if exc.upstream_status in (429, 500, 502, 503, 504) and delivery_count < self._max_delivery_count:
                raise
            what, hint = explain(exc)
            await self._fail(
                message.job_id, FineTuningError(code=exc.code or "upstream_error", message=what, hint=hint)
            )
        except InvalidRequest as exc:
            await self._fail(message.job_id, FineTuningError(code=exc.code or "invalid_file", message=exc.message))
        except Exception as exc:
            if delivery_count >= self._max_delivery_count:
                reason = exc.message if isinstance(exc, DistilleryError) else f"unexpected {type(exc).__name__}"
                error = FineTuningError(code="preparation_failed", message=f"Failed {delivery_count} times: {reason}")
                await self._fail(message.job_id, error)
            raise

    async def _prepare(self, message: FineTuningMessage, deadline: float) -> None:
        assert self.api is not None
        record, etag = await self._read(message.job_id)
        if record.finished or record.upstream_job_id:
            return
        names = [formats.TRAIN_FILE] + (
            [formats.VALIDATION_FILE]
            if record.params.validation and formats.VALIDATION_FILE in await self._dataset_files(record)
            else []
        )
        if not record.files_checked:
            record, etag = await self._stage(record, etag, "validating_files")
            for name in names:
                await _within(deadline, self._check_file(record.dataset_id, name))
            record.files_checked = True
            etag = await self._save(record, etag)
        for name in names:
            if name not in record.files:
                record, etag = await self._stage(record, etag, "uploading")
                record.files[name] = await _within(deadline, self._upload(record, name))
                etag = await self._save(record, etag)
        record, etag = await self._stage(record, etag, "waiting_for_files")
        pending = set(record.files.values())
        while pending:
            for file_id in list(pending):
                upstream_file = await _within(deadline, self.api.file(file_id))
                status = upstream_file.get("status")
                if status == "processed":
                    pending.discard(file_id)
                elif status in ("error", "deleted"):
                    details = upstream_file.get("status_details") or "no details given"
                    raise InvalidRequest(
                        f"The upstream could not process file {file_id}: {details}", code="invalid_file"
                    )
            if pending:
                await _within(deadline, asyncio.sleep(1.0))
        record, etag = await self._stage(record, etag, "creating_job")
        upstream_job = await _within(deadline, self._adopt_or_create(record))
        record.upstream_job_id, record.stage = str(upstream_job["id"]), None
        await self._refresh(record, await self._save(record, etag), upstream_job)

    async def _upload(self, record: FineTuningRecord, name: str) -> str:
        """Upload one dataset file as `<record id>-<name>`; an upload an earlier delivery made but did
        not record (it was cut off in between) is found by that name and adopted instead."""
        assert self.api is not None
        upstream_name = f"{record.id}-{name}"
        for upstream_file in await self.api.files():
            if upstream_file.get("filename") == upstream_name and upstream_file.get("status") not in (
                "error",
                "deleted",
            ):
                return str(upstream_file["id"])
        uploaded = await self.api.upload(upstream_name, functools.partial(self._chunks, record.dataset_id, name))
        return str(uploaded["id"])

    async def forget_datasets(self, dataset_ids: Sequence[str]) -> int:
        """Erasure: the datasets were rebuilt without deleted completions, so the files uploaded from them
        are deleted upstream now, not when their jobs end (a job still training may fail for it). Jobs reached."""
        wanted: set[str] = set(dataset_ids)
        if not wanted or self.api is None:
            return 0
        reached = 0
        async for record, etag in self.records():
            if record.dataset_id in wanted and record.files_deleted_at is None:
                log.warning("Fine-tuning job %s read a deleted completion: deleting its uploaded files", record.id)
                await self._delete_files(record, etag)
                reached += 1
        return reached

    async def _delete_files_if_ended(self, job_id: str) -> None:
        """A job cancelled while this delivery uploaded: delete what it uploaded after the cancel's clean-up."""
        with contextlib.suppress(NotFound):
            record, etag = await self._read(job_id)
            if record.finished and self.api is not None:
                await self._delete_files(record, etag)

    async def _delete_files(self, record: FineTuningRecord, etag: str) -> None:
        """Delete the job's files upstream, recorded or not (an upload cut off before it was recorded
        carries our record id in its name), and note when; a failure is left for the timer to retry."""
        assert self.api is not None
        try:
            ids = set(record.files.values()) | {
                str(upstream_file["id"])
                for upstream_file in await self.api.files()
                if str(upstream_file.get("filename") or "").startswith(f"{record.id}-")
            }
            for file_id in sorted(ids):
                await self.api.delete_file(file_id)
        except FineTuningUpstreamError as exc:
            log.warning("Could not delete the files of fine-tuning job %s yet: %s", record.id, exc.message)
            return
        record.files_deleted_at = int(time.time())
        with contextlib.suppress(Superseded):
            await self._save(record, etag)

    async def _adopt_or_create(self, record: FineTuningRecord) -> dict[str, Any]:
        """The upstream job for this record: one an earlier delivery created, or a new one."""
        assert self.api is not None
        for upstream_job in await self.api.jobs():
            if (upstream_job.get("metadata") or {}).get("distillery_job") == record.id:
                return upstream_job
        params = record.params
        body: dict[str, Any] = {
            "model": params.model,
            "training_file": record.files[formats.TRAIN_FILE],
            "metadata": {"distillery_job": record.id, "distillery_dataset": record.dataset_id},
        }
        if formats.VALIDATION_FILE in record.files:
            body["validation_file"] = record.files[formats.VALIDATION_FILE]
        for key in ("suffix", "seed", "hyperparameters", "method"):
            if getattr(params, key) is not None:
                body[key] = getattr(params, key)
        if self.api.azure and params.training_type is not None:
            body["trainingType"] = TRAINING_TYPES[params.training_type]
        return await self.api.create_job(body)

    async def _refresh(
        self, record: FineTuningRecord, etag: str, upstream_job: dict[str, Any] | None = None
    ) -> FineTuningRecord:
        assert self.api is not None and record.upstream_job_id is not None
        upstream_job = upstream_job or await self.api.job(record.upstream_job_id)
        record.status = str(upstream_job.get("status") or record.status)
        record.fine_tuned_model = upstream_job.get("fine_tuned_model") or record.fine_tuned_model
        record.trained_tokens = upstream_job.get("trained_tokens") or record.trained_tokens
        record.events = await self.api.events(record.upstream_job_id)
        record.checkpoints = await self.api.checkpoints(record.upstream_job_id)
        if record.status == "failed" and upstream_job.get("error"):
            failure = upstream_job["error"]
            error = FineTuningUpstreamError(
                str(failure.get("message") or "The job failed."),
                upstream_status=200,
                code=str(failure.get("code") or "job_failed"),
                retry_after=None,
            )
            what, hint = explain(error)
            record.error = FineTuningError(code=error.code or "job_failed", message=what, hint=hint)
        record.updated_at = int(time.time())
        etag = await self._save(record, etag)
        if record.finished and record.files_deleted_at is None:
            await self._delete_files(record, etag)
        return record

    async def _check_file(self, dataset_id: str, name: str) -> None:
        problems = []
        async for problem in _streamed_problems(await self._chunks(dataset_id, name)):
            problems.append(f"line {problem.line}: {problem.problem.message}")
            if len(problems) == 5:
                break
        if problems:
            raise InvalidRequest(
                f"'{name}' would be refused by the fine-tuning service: " + "; ".join(problems),
                code="invalid_file",
            )

    async def _chunks(self, dataset_id: str, name: str) -> AsyncIterator[bytes]:
        _, chunks = await self._datasets.open_file(dataset_id, name)
        return chunks

    async def _dataset_files(self, record: FineTuningRecord) -> set[str]:
        job, _ = await self._datasets.read(record.dataset_id)
        return {file.name for file in job.files}

    async def _manifest(self, dataset_id: str) -> dict[str, Any]:
        _, chunks = await self._datasets.open_file(dataset_id, MANIFEST_FILE)
        manifest = json.loads(b"".join([chunk async for chunk in chunks]))
        keep = ("dataset_id", "name", "created_at", "selection", "source", "counts", "files")
        return {key: manifest[key] for key in keep if key in manifest}

    async def _stage(self, record: FineTuningRecord, etag: str, stage: str) -> tuple[FineTuningRecord, str]:
        if record.cancel_requested:
            raise Superseded(record.id)
        record.stage = stage
        return record, await self._save(record, etag)

    async def _save(self, record: FineTuningRecord, etag: str) -> str:
        record.updated_at = int(time.time())
        return await self.blobs.put(_name(record.id), record.model_dump_json(), etag=etag)

    async def _fail(self, job_id: str, error: FineTuningError) -> None:
        with contextlib.suppress(NotFound, Superseded, DistilleryError):
            record, etag = await self._read(job_id)
            if not record.finished:
                record.status, record.stage, record.error = "failed", None, error
                etag = await self._save(record, etag)
                if self.api is not None:
                    await self._delete_files(record, etag)

    async def read_visible(self, job_id: str, owner: str | None) -> tuple[FineTuningRecord, str]:
        """The caller's job record with its etag, as stored (for the deployments kept in it)."""
        return await self._read_visible(job_id, owner)

    async def save(self, record: FineTuningRecord, etag: str) -> str:
        """Write a record read with `read_visible`; `Superseded` when it changed in between."""
        return await self._save(record, etag)

    async def records(self) -> AsyncIterator[tuple[FineTuningRecord, str]]:
        """Every job record with its etag (for the timers)."""
        for name in await self.blobs.names(""):
            with contextlib.suppress(NotFound):
                yield await self._read(name.removesuffix(".json"))

    async def _read(self, job_id: str) -> tuple[FineTuningRecord, str]:
        raw, etag = await self.blobs.get(_name(job_id), missing=f"No fine-tuning job found with id '{job_id}'.")
        return FineTuningRecord.model_validate_json(raw), etag

    async def _read_visible(self, job_id: str, owner: str | None) -> tuple[FineTuningRecord, str]:
        missing = NotFound(f"No fine-tuning job found with id '{job_id}'.", param="fine_tuning_job_id")
        if not job_id.startswith("ftjob_") or not job_id[6:].isalnum():
            raise missing
        record, etag = await self._read(job_id)
        if not record.visible_to(owner):
            raise missing
        return record, etag

    async def _send(self, message: FineTuningMessage) -> None:
        await self._queue.send(self._queue_name, message.model_dump_json(), message_id=message.message_id)


class _OutOfTime(Exception):
    """The delivery's time budget is spent: the rest goes on in a continuation message."""


async def _within(deadline: float, step: Awaitable[T]) -> T:
    """Run one step of a delivery, cut off at the delivery's deadline (then `_OutOfTime`)."""
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        if asyncio.iscoroutine(step):
            step.close()
        raise _OutOfTime
    try:
        async with asyncio.timeout(remaining):
            return await step
    except TimeoutError:
        if time.monotonic() >= deadline:
            raise _OutOfTime from None
        raise


def parse_fine_tuning_params(body: dict[str, Any]) -> FineTuningParams:
    return parse_model(FineTuningParams, body)


async def _streamed_problems(chunks: AsyncIterator[bytes]) -> AsyncIterator[LineProblem]:
    """`check_lines` over a streamed file, one range in memory (a UTF-8 BOM at the start is accepted)."""
    buffered, seen, first = b"", 0, True
    async for chunk in chunks:
        buffered += chunk
        if first:
            buffered, first = buffered.removeprefix(b"\xef\xbb\xbf"), False
        *lines, buffered = buffered.split(b"\n")
        for problem in check_lines(lines):
            yield LineProblem(problem.line + seen, problem.problem)
        seen += len(lines)
    if buffered.strip():
        for problem in check_lines([buffered]):
            yield LineProblem(problem.line + seen, problem.problem)


def _name(job_id: str) -> str:
    return f"{job_id}.json"
