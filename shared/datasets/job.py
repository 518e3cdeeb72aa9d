"""Dataset jobs: the request, the queue message (a public interface) and the job record.

The record is the JSON blob `<dataset id>/job.json` in the datasets container, next to the files it
describes. It is the single source of truth for status, counts and the checkpoint a continuation
resumes from; every write is conditional on the ETag read, so two deliveries of one message never
both advance a job.
"""

from __future__ import annotations

import re
import secrets
import time
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError, field_validator, model_validator

from shared.datasets.dedup import DedupParams
from shared.platform.access import OwnerId, same_owner
from shared.platform.errors import InvalidRequest, NotFound
from shared.platform.request_body import MetadataKey, validation_error
from shared.store import ids
from shared.store.completion_filter import CompletionFilter
from shared.store.completion_index import SHARDS

MESSAGE_VERSION = 1
MAX_IDS = 5_000
"""Explicit ids per job: keeps a job message under Service Bus Standard's 256 KB limit."""
MIN_DISTILLATION_EXAMPLES = 10
"""The fine-tuning service's minimum training examples (the hosted feature's minimum too)."""

_ID_TIME_DIGITS = 14
_ID_TIME_SPAN = 16**_ID_TIME_DIGITS
_ID_PATTERN = re.compile(r"dataset-[0-9a-f]{32}")
DatasetId = Annotated[str, StringConstraints(pattern=r"^dataset-[0-9a-f]{32}$")]


def new_dataset_id(*, now_us: int | None = None) -> str:
    """`dataset-` + 14 hex digits of *inverted* creation time + 18 random: names sort newest first."""
    micros = time.time_ns() // 1000 if now_us is None else now_us
    return f"dataset-{_ID_TIME_SPAN - 1 - micros:0{_ID_TIME_DIGITS}x}{secrets.token_hex(9)}"


def is_dataset_id(value: str) -> bool:
    return _ID_PATTERN.fullmatch(value) is not None


def require_dataset_id(value: str) -> str:
    if not is_dataset_id(value):
        raise NotFound("No dataset found with that id.", param="dataset_id")
    return value


class DatasetKind(StrEnum):
    DISTILLATION = "distillation"
    """Chat fine-tuning JSONL: `train.jsonl` and `validation.jsonl`."""
    EVALUATION = "evaluation"
    """OpenAI Evals `file_content` JSONL: `eval.jsonl`."""


class DatasetStatus(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    DELETED = "deleted"
    """Never shown: the tombstone of a job deleted while its message may still arrive."""


class DatasetParams(BaseModel):
    """What a caller asks for: the selection and how to shape it (the `POST /api/datasets` body)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: DatasetKind
    filter: CompletionFilter | None = None
    """Stored completions matching every condition, in capture order."""
    ids: list[str] | None = Field(None, min_length=1, max_length=MAX_IDS)
    """Or: exactly these stored completions, in this order."""
    validation_fraction: float | None = Field(None, ge=0, le=0.5)
    """Distillation only: share of groups written to `validation.jsonl` (default 0.1; 0 writes no file)."""
    seed: int = 0
    """Changes which groups land in validation; the same seed always gives the same split."""
    group_by: MetadataKey | None = None
    """Distillation only: metadata key whose value keeps a group in one file (default: each completion)."""
    name: str | None = Field(None, max_length=256)
    dedup: DedupParams = Field(default_factory=DedupParams)
    """Drop repeated prompts: `{"mode": "off" | "exact" | "near", "threshold": 0.8}`."""
    prefer_relabel: bool = False
    """Use an original's latest relabeled answer (a relabel job's, `relabel_of`) instead of its own; a
    relabeled answer whose original is selected too is then skipped (`relabeled`)."""
    owner: OwnerId = None
    """Set by the service under owner scoping (never by callers): only this owner's completions are used."""

    def scoped_to(self, owner: str | None) -> DatasetParams:
        """The request limited to one owner's completions (owner scoping); unchanged when `owner` is None."""
        if owner is None:
            return self
        selection = None if self.filter is None else self.filter.model_copy(update={"owner": owner})
        return self.model_copy(update={"owner": owner, "filter": selection})

    @field_validator("ids")
    @classmethod
    def _known_id_format(cls, value: list[str] | None) -> list[str] | None:
        for position, completion_id in enumerate(value or []):
            if not ids.is_completion_id(completion_id):
                raise ValueError(
                    f"ids[{position}] is not a stored completion or response id such as 'chatcmpl-…' or 'resp_…'"
                )
        return value

    @field_validator("filter")
    @classmethod
    def _not_everything(cls, value: CompletionFilter | None) -> CompletionFilter | None:
        if value is not None and value.is_empty():
            raise ValueError("set at least one of metadata, scores, model, created_after, created_before")
        return value

    @model_validator(mode="after")
    def _one_selection(self) -> DatasetParams:
        if (self.filter is None) == (self.ids is None):
            raise ValueError("give exactly one of 'filter' or 'ids'")
        if self.kind is DatasetKind.EVALUATION and (self.validation_fraction is not None or self.group_by):
            raise ValueError("'validation_fraction' and 'group_by' apply to distillation datasets only")
        return self

    @property
    def fraction(self) -> float:
        if self.kind is DatasetKind.EVALUATION:
            return 0.0
        return 0.1 if self.validation_fraction is None else self.validation_fraction


class DatasetJobMessage(BaseModel):
    """The dataset queue's message body (JSON); producers may send it directly to the queue."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    version: Literal[1]
    job_id: DatasetId
    """The dataset id; see `new_dataset_id` (any `dataset-` + 32 lowercase hex digits is accepted)."""
    part: int = Field(0, ge=0)
    """0 for a new job; continuations the worker sends count up (within a slice, the slice's own)."""
    request: DatasetParams
    slice: int | None = Field(None, ge=0)
    """Set by the worker only: this message builds slice n of a fanned-out build (see `Plan`)."""
    generation: int = Field(0, ge=0)
    """The job generation a slice message belongs to; a rebuild makes older slice messages stale."""

    @property
    def message_id(self) -> str:
        """The Service Bus message id: resends of the same part are duplicates Service Bus drops."""
        if self.slice is not None:
            return f"{self.job_id}-g{self.generation}-s{self.slice}-part{self.part}"
        return self.job_id if self.part == 0 else f"{self.job_id}-part{self.part}"


class Extent(BaseModel):
    """Size of a piece of JSONL output."""

    bytes: int
    lines: int
    tokens: int


class StagedBlock(Extent):
    """One staged (not yet committed) block of an output file."""

    id: str


class Checkpoint(BaseModel):
    """Where the next run resumes: everything up to `after` / `walked` is in the staged blocks."""

    part: int = 0
    """The message part that runs next."""
    walked: int = 0
    """Selected completions consumed (written or skipped)."""
    after: str | None = None
    """Last completion id consumed, the index walk's cursor (filter selections)."""
    blocks: dict[str, list[StagedBlock]] = Field(default_factory=dict)
    fingerprint_runs: list[str] = Field(default_factory=list)
    """Runs whose duplicate fingerprints are saved as `<id>/work/fingerprints-<run>.bin`."""
    prompt_runs: list[str] = Field(default_factory=list)
    """Runs whose admitted prompts (dedup and leakage state) are saved as `<id>/work/prompts-<run>.bin`."""
    source_digest: int = 0
    """Sum of sha256(id) of written completions, mod 2**256: order- and chunk-independent."""
    walk_done: bool = False


class DatasetFile(Extent):
    name: str
    sha256: str


class DatasetCounts(BaseModel):
    selected: int = 0
    written: int = 0
    skipped: dict[str, int] = Field(default_factory=dict)


class JobError(BaseModel):
    code: str
    message: str


class SliceRange(BaseModel):
    """The completions of one slice: the selection's walk after `after` up to and including `upto`."""

    after: str | None
    upto: str | None
    """None for the last slice: to the end of the selection."""


class Plan(BaseModel):
    """How a filter selection is split into slices, each built by its own queue message.

    The planning delivery walks index rows only (no documents), and only those of `shards` of the
    index's shards: ids are spread over the shards by a hash, so each walked row stands for
    `SHARDS / shards` completions of the selection. It ends a slice every `slice_completions`
    completions so counted; each slice message is sent as soon as its range is known. Slices are
    id ranges, so their sizes vary a little around `slice_completions`, and together they hold
    every id once.
    """

    bounds: list[str] = Field(default_factory=list)
    """The last id of each full slice, in walk order; slice n runs after bounds[n-1] up to bounds[n]."""
    cursor: str | None = None
    """The planning walk's position (a continuation of the planning resumes after it)."""
    shards: int = SHARDS
    """Shards of the selection's index term the planning walks (all of them in plans saved before this field)."""
    counted: int = 0
    """Index rows the planning walked."""
    done: bool = False
    """The walk reached the end: there are `len(bounds) + 1` slices, none empty."""

    @property
    def fanned_out(self) -> bool:
        return self.done and bool(self.bounds)

    def slice_range(self, number: int) -> SliceRange:
        return SliceRange(
            after=self.bounds[number - 1] if number > 0 else None,
            upto=self.bounds[number] if number < len(self.bounds) else None,
        )


class SliceRecord(BaseModel):
    """One slice's progress (`<id>/work/g<generation>-slice-<n>.json`), ETag'd like the job record."""

    checkpoint: Checkpoint = Field(default_factory=Checkpoint)
    counts: DatasetCounts = Field(default_factory=DatasetCounts)
    runs: int = 0
    """Deliveries that started work on the slice (more than one: a delivery died and was redone)."""


class DatasetJob(BaseModel):
    """The job record (`<id>/job.json`)."""

    id: str
    kind: DatasetKind | None
    name: str | None = None
    status: DatasetStatus = DatasetStatus.QUEUED
    request: DatasetParams | None
    """None only for a record made from a queue message that failed validation."""
    created_at: int
    started_at: int | None = None
    finished_at: int | None = None
    runs: int = 0
    counts: DatasetCounts = Field(default_factory=DatasetCounts)
    files: list[DatasetFile] = Field(default_factory=list)
    error: JobError | None = None
    token_count_method: str | None = None
    checkpoint: Checkpoint = Field(default_factory=Checkpoint)
    generation: int = 0
    """Bumped by each rebuild; the files of generation n > 0 live under `<id>/r<n>/`."""
    rebuilds: int = 0
    """Times the dataset was rebuilt because a completion it held was deleted (right to be forgotten)."""
    plan: Plan | None = None
    """A filter selection's split into slices; None until planned (and for `ids` selections)."""

    def file_path(self, name: str) -> str:
        """Where this generation's file `name` lives below `<id>/`: a stale build never writes over a rebuild."""
        return name if self.generation == 0 else f"r{self.generation}/{name}"

    @classmethod
    def queued(cls, job_id: str, request: DatasetParams) -> DatasetJob:
        return cls(id=job_id, kind=request.kind, name=request.name, request=request, created_at=int(time.time()))

    @property
    def finished(self) -> bool:
        return self.status in (DatasetStatus.SUCCEEDED, DatasetStatus.FAILED, DatasetStatus.DELETED)

    def visible_to(self, owner_scope: str | None) -> bool:
        """A scoped caller sees only the datasets it requested (they hold its completions only)."""
        return owner_scope is None or (self.request is not None and same_owner(self.request.owner, owner_scope))

    def view(self) -> dict[str, Any]:
        """The API shape: no checkpoint, and explicit ids only counted."""
        request = self.request
        return {
            "id": self.id,
            "object": "dataset",
            "kind": self.kind,
            "name": self.name,
            "status": self.status,
            "filter": request.filter.model_dump(exclude_none=True) if request and request.filter else None,
            "ids_count": len(request.ids) if request and request.ids else None,
            "validation_fraction": request.fraction if request else None,
            "seed": request.seed if request else None,
            "group_by": request.group_by if request else None,
            "dedup": request.dedup.model_dump() if request else None,
            "created_at": self.created_at,
            "started_at": self.started_at,
            "finished_at": self.finished_at,
            "progress": {
                "processed": self.checkpoint.walked,
                "total": len(request.ids) if request and request.ids else None,
                "runs": self.runs,
            },
            "counts": self.counts.model_dump(),
            "files": [file.model_dump() for file in self.files],
            "token_count_method": self.token_count_method,
            "rebuilds": self.rebuilds,
            "error": self.error.model_dump() if self.error else None,
        }


def parse_dataset_params(body: dict[str, Any]) -> DatasetParams:
    """Validate a `POST /api/datasets` body into OpenAI-shaped errors; `filter.owner` is the service's own."""
    try:
        params = DatasetParams.model_validate(body)
    except ValidationError as exc:
        first = exc.errors()[0]
        if first["type"] == "value_error":
            where = ".".join(str(part) for part in first["loc"])
            message = str(first["ctx"]["error"]) if "ctx" in first else first["msg"]
            raise InvalidRequest(
                f"Invalid '{where}': {message}." if where else f"Invalid request: {message}.",
                param=str(first["loc"][0]) if first["loc"] else None,
                code="invalid_value",
            ) from None
        raise validation_error(exc) from None
    if params.filter is not None and params.filter.owner is not None:
        raise InvalidRequest("Unrecognized request argument supplied: filter.owner", param="filter")
    if params.owner is not None:
        raise InvalidRequest("Unrecognized request argument supplied: owner", param="owner")
    return params
