"""Evals, runs and output items as JSON blobs in one container (`EVALS_CONTAINER`).

    <eval id>/eval.json                           the eval
    <eval id>/runs/<run id>/request.json          what the run was asked (immutable)
    <eval id>/runs/<run id>/run.json              its state: status, counts, usage, checkpoint
    <eval id>/runs/<run id>/items.jsonl           the data-source items, fixed when the run starts
    <eval id>/runs/<run id>/output/<start>-<end>.jsonl
                                                  graded items start..end-1, one JSON line each
    <eval id>/runs/<run id>/forgotten/<id>.json   completion ids an erasure looked for (see `note_forgotten`)

Ids start with inverted time, so listings come newest first; state writes are conditional on the
ETag read, so two deliveries of one message never both advance a run. Graded items are written in
groups of consecutive indexes (one blob write per group, not per item); only the groups the run's
state lists in `output_groups` count — a group written by a delivery that died before saving the
state is counted by the next delivery, a group that lost a race is ignored.
"""

from __future__ import annotations

import bisect
import json
import re
import secrets
import time
from collections.abc import AsyncIterator
from enum import StrEnum
from typing import Any, Literal

from azure.storage.blob.aio import ContainerClient
from pydantic import BaseModel, Field

from shared.evals.graders import GradeResult, TestingCriterion
from shared.evals.params import RunCreateParams
from shared.platform.access import OwnerId, same_owner
from shared.store.json_blobs import JsonBlobs, Superseded

_TIME_DIGITS = 14
_TIME_SPAN = 16**_TIME_DIGITS


def new_id(prefix: str) -> str:
    """`<prefix>_` + 14 hex digits of inverted creation time + 18 random: names sort newest first."""
    micros = time.time_ns() // 1000
    return f"{prefix}_{_TIME_SPAN - 1 - micros:0{_TIME_DIGITS}x}{secrets.token_hex(9)}"


def created_micros(record_id: str) -> int:
    """The creation time (µs) a `new_id` carries."""
    digits = record_id.partition("_")[2][:_TIME_DIGITS]
    return _TIME_SPAN - 1 - int(digits, 16)


class RunStatus(StrEnum):
    QUEUED = "queued"
    IN_PROGRESS = "in_progress"
    COMPLETED = "completed"
    CANCELED = "canceled"
    FAILED = "failed"


FINISHED = frozenset({RunStatus.COMPLETED, RunStatus.CANCELED, RunStatus.FAILED})


class EvalRecord(BaseModel):
    id: str
    name: str
    created_at: int
    metadata: dict[str, str] = Field(default_factory=dict)
    data_source_config: dict[str, Any]
    """The view: type, schema, and for stored completions the metadata filter."""
    item_schema: dict[str, Any] | None
    sample_in_schema: bool
    testing_criteria: list[TestingCriterion]
    owner: OwnerId = None
    changed_us: int | None = None
    """Microseconds since the epoch of the last name or metadata change (None: never changed)."""

    @property
    def last_change(self) -> int:
        """What `evals.list(order_by="updated_at")` sorts by: the last change, else the creation (in µs)."""
        return self.changed_us or created_micros(self.id)

    def view(self) -> dict[str, Any]:
        return {
            "object": "eval",
            "id": self.id,
            "name": self.name,
            "created_at": self.created_at,
            "metadata": self.metadata,
            "data_source_config": self.data_source_config,
            "testing_criteria": [criterion.model_dump(exclude_none=True) for criterion in self.testing_criteria],
        }

    def visible_to(self, owner: str | None) -> bool:
        return owner is None or same_owner(self.owner, owner)


class RunError(BaseModel):
    code: str
    message: str


class CriterionCounts(BaseModel):
    passed: int = 0
    failed: int = 0


class ModelUsage(BaseModel):
    invocation_count: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0
    cached_tokens: int = 0


class ResultCounts(BaseModel):
    total: int = 0
    passed: int = 0
    failed: int = 0
    errored: int = 0


class Lineage(BaseModel):
    """Where a run's items came from and what answered them, so a pass rate traces back to completions."""

    dataset_id: str | None = None
    file_id: str | None = None
    """An uploaded eval file (`files.create(purpose="evals")`) the items were read from."""
    completion_filter: dict[str, Any] | None = None
    completion_ids_digest: str | None = None
    """sha256 over the graded stored completions' ids in order (stored-completions sources)."""
    model: str | None = None
    fine_tuning_job_id: str | None = None


class RunRecord(BaseModel):
    """A run's state (`run.json`); its request lives beside it in `request.json`."""

    id: str
    eval_id: str
    name: str
    created_at: int
    status: RunStatus = RunStatus.QUEUED
    model: str
    """The candidate deployment, or `stored` when the source's own answers are graded."""
    metadata: dict[str, str] = Field(default_factory=dict)
    owner: OwnerId = None
    report_url: str
    error: RunError | None = None
    result_counts: ResultCounts = Field(default_factory=ResultCounts)
    per_criterion: dict[str, CriterionCounts] = Field(default_factory=dict)
    per_model_usage: dict[str, ModelUsage] = Field(default_factory=dict)
    token_cap: int
    tokens_used: int = 0
    items_total: int | None = None
    """Set when the items are fixed (the run's first delivery)."""
    next_index: int = 0
    """Items before this one are graded and counted."""
    part: int = 0
    """The message part that runs next (continuations count up)."""
    cancel_requested: bool = False
    lineage: Lineage = Field(default_factory=Lineage)
    deliveries: int = 0
    output_groups: list[int] = Field(default_factory=list)
    """End index (exclusive) of each counted output group, ascending; each starts where the last ended."""
    delivery_open: bool = False
    """A delivery started and has not ended (nor checkpointed): seen by the next one, it was killed."""
    last_failure: str | None = None
    """Why the last delivery failed (for the run's error when the queue gives up)."""
    erased: list[int] = Field(default_factory=list)
    """Items whose completion was deleted: out of the counts (taken out, or never put in), each once."""
    scores_author: str | None = None
    """`write_scores`: who the written-back scores are by (the run's creator); None: none are written."""

    @property
    def finished(self) -> bool:
        return self.status in FINISHED

    def group_of(self, index: int) -> tuple[int, int] | None:
        """The counted output group (start, end) holding `index`, if any."""
        position = bisect.bisect_right(self.output_groups, index)
        if position == len(self.output_groups):
            return None
        return (self.output_groups[position - 1] if position else 0), self.output_groups[position]

    def groups(self) -> list[tuple[int, int]]:
        return list(zip([0, *self.output_groups[:-1]], self.output_groups, strict=True))

    def view(self, request: RunCreateParams) -> dict[str, Any]:
        return {
            "object": "eval.run",
            "id": self.id,
            "eval_id": self.eval_id,
            "name": self.name,
            "created_at": self.created_at,
            "status": self.status.value,
            "model": self.model,
            "metadata": self.metadata,
            "data_source": request.data_source.model_dump(exclude_none=True),
            "error": (self.error or RunError(code="", message="")).model_dump(),
            "result_counts": self.result_counts.model_dump(),
            "per_testing_criteria_results": [
                {"testing_criteria": name, **counts.model_dump()} for name, counts in self.per_criterion.items()
            ],
            "per_model_usage": [
                {"model_name": model, **usage.model_dump()} for model, usage in self.per_model_usage.items()
            ],
            "report_url": self.report_url,
            "distillery": {
                "items_total": self.items_total,
                "items_graded": self.next_index,
                "tokens_used": self.tokens_used,
                "token_cap": self.token_cap,
                "write_scores": self.scores_author is not None,
                "lineage": self.lineage.model_dump(exclude_none=True),
            },
        }


class OutputItem(BaseModel):
    """One graded item (`output/<index>.json`)."""

    index: int
    run_id: str
    eval_id: str
    created_at: int
    item: dict[str, Any]
    sample: dict[str, Any] | None
    results: list[GradeResult]
    sample_error: str | None = None

    @property
    def status(self) -> Literal["pass", "fail", "error"]:
        if self.sample_error is not None or any(result.error for result in self.results):
            return "error"
        return "pass" if all(result.passed for result in self.results) else "fail"

    @property
    def id(self) -> str:
        return output_item_id(self.run_id, self.index)

    def view(self) -> dict[str, Any]:
        sample = dict(self.sample or {})
        error = {"code": "sample_failed", "message": self.sample_error} if self.sample_error else None
        view_sample = {
            "input": sample.get("input", []),
            "output": sample.get("output", []),
            "model": sample.get("model", ""),
            "finish_reason": sample.get("finish_reason", ""),
            "usage": {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0, "cached_tokens": 0}
            | sample.get("usage", {}),
            "error": error or {"code": "", "message": ""},
            "max_completion_tokens": sample.get("max_completion_tokens", 0),
            "seed": sample.get("seed", 0),
            "temperature": sample.get("temperature", 1.0),
            "top_p": sample.get("top_p", 1.0),
        }
        return {
            "object": "eval.run.output_item",
            "id": self.id,
            "run_id": self.run_id,
            "eval_id": self.eval_id,
            "created_at": self.created_at,
            "status": self.status,
            "datasource_item_id": self.index,
            "datasource_item": self.item,
            "results": [result.model_dump(exclude={"usage"}, exclude_none=True) for result in self.results],
            "sample": view_sample,
        }


def output_item_id(run_id: str, index: int) -> str:
    return f"outputitem_{run_id.removeprefix('evalrun_')}{index:08d}"


def output_item_index(run_id: str, item_id: str) -> int | None:
    prefix = output_item_id(run_id, 0)[:-8]
    digits = item_id.removeprefix(prefix)
    return int(digits) if item_id.startswith(prefix) and len(digits) == 8 and digits.isdecimal() else None


class EvalStore:
    def __init__(self, *, container: ContainerClient) -> None:
        self.blobs = JsonBlobs(container=container, label="eval")

    async def create_eval(self, record: EvalRecord) -> None:
        await self.blobs.put(f"{record.id}/eval.json", record.model_dump_json(), create=True)

    async def read_eval(self, eval_id: str) -> tuple[EvalRecord, str]:
        raw, etag = await self.blobs.get(f"{eval_id}/eval.json", missing=f"No eval found with id '{eval_id}'.")
        return EvalRecord.model_validate_json(raw), etag

    async def save_eval(self, record: EvalRecord, etag: str) -> None:
        await self.blobs.put(f"{record.id}/eval.json", record.model_dump_json(), etag=etag)

    async def create_run(self, record: RunRecord, request: RunCreateParams) -> None:
        base = f"{record.eval_id}/runs/{record.id}"
        await self.blobs.put(f"{base}/request.json", request.model_dump_json(exclude_none=True), create=True)
        await self.blobs.put(f"{base}/run.json", record.model_dump_json(), create=True)

    async def read_run(self, eval_id: str, run_id: str) -> tuple[RunRecord, str]:
        raw, etag = await self.blobs.get(
            f"{eval_id}/runs/{run_id}/run.json", missing=f"No run found with id '{run_id}'."
        )
        return RunRecord.model_validate_json(raw), etag

    async def read_request(self, eval_id: str, run_id: str) -> RunCreateParams:
        raw, _ = await self.blobs.get(
            f"{eval_id}/runs/{run_id}/request.json", missing=f"No run found with id '{run_id}'."
        )
        return RunCreateParams.model_validate_json(raw)

    async def save_run(self, record: RunRecord, etag: str) -> str:
        """Replace the state only if it is still the version read; returns the new ETag."""
        return await self.blobs.put(f"{record.eval_id}/runs/{record.id}/run.json", record.model_dump_json(), etag=etag)

    async def write_items(self, eval_id: str, run_id: str, lines: bytes) -> bool:
        """Fix the run's items once; False when an earlier delivery already did (its items stand)."""
        try:
            await self.blobs.put(f"{eval_id}/runs/{run_id}/items.jsonl", lines, create=True)
        except Superseded:
            return False
        return True

    async def read_items(self, eval_id: str, run_id: str) -> bytes:
        return (await self.read_items_versioned(eval_id, run_id))[0]

    async def read_items_versioned(self, eval_id: str, run_id: str) -> tuple[bytes, str]:
        return await self.blobs.get(f"{eval_id}/runs/{run_id}/items.jsonl", missing=f"Run '{run_id}' has no items yet.")

    async def open_items(self, eval_id: str, run_id: str) -> tuple[int, AsyncIterator[bytes], str]:
        """The items' size (for the read budget), their bytes in chunks, and the version being read."""
        return await self.blobs.open_versioned(
            f"{eval_id}/runs/{run_id}/items.jsonl", missing=f"Run '{run_id}' has no items yet."
        )

    async def items_version(self, eval_id: str, run_id: str) -> str:
        """The items' ETag: a delivery compares it with the version it read to see an erasure land."""
        return await self.blobs.etag(f"{eval_id}/runs/{run_id}/items.jsonl", missing=f"Run '{run_id}' has no items.")

    async def note_forgotten(self, eval_id: str, run_id: str, completion_ids: list[str]) -> None:
        """Leave the deleted ids an erasure is about to look for, before it reads the items: a run still
        collecting its items (it read a document before the delete) erases them once its items are fixed."""
        name = f"{eval_id}/runs/{run_id}/forgotten/{new_id('erasure')}.json"
        await self.blobs.put(name, json.dumps(sorted(completion_ids)), create=True)

    async def forgotten(self, eval_id: str, run_id: str) -> set[str]:
        """Every id `note_forgotten` left for this run."""
        found: set[str] = set()
        for name in await self.blobs.names(f"{eval_id}/runs/{run_id}/forgotten/"):
            raw, _ = await self.blobs.get(name, missing="An erasure note is missing.")
            found.update(json.loads(raw))
        return found

    async def replace_items(self, eval_id: str, run_id: str, lines: bytes, etag: str) -> None:
        """Rewrite the items (erasure), only if unchanged since read."""
        await self.blobs.put(f"{eval_id}/runs/{run_id}/items.jsonl", lines, etag=etag)

    async def read_group(self, eval_id: str, run_id: str, start: int, end: int) -> tuple[bytes, str]:
        """A group's bytes and ETag (erasure rewrites a group)."""
        return await self.blobs.get(_group_name(eval_id, run_id, start, end), missing="An output group is missing.")

    async def replace_group(self, eval_id: str, run_id: str, start: int, end: int, data: bytes, etag: str) -> None:
        """Rewrite a group (erasure), only if unchanged since read."""
        await self.blobs.put(_group_name(eval_id, run_id, start, end), data, etag=etag)

    async def all_groups(self, eval_id: str, run_id: str) -> list[tuple[int, int]]:
        """Every output group written, (start, end), counted or not (a lost race's too)."""
        prefix = f"{eval_id}/runs/{run_id}/output/"
        found = []
        for name in await self.blobs.names(prefix):
            match = _GROUP.fullmatch(name[len(prefix) :])
            if match is not None:
                found.append((int(match.group(1)), int(match.group(2))))
        return sorted(found)

    async def write_group(self, eval_id: str, run_id: str, start: int, end: int, data: bytes) -> None:
        """Write graded items start..end-1 once; `Superseded` when a delivery already wrote that range."""
        await self.blobs.put(_group_name(eval_id, run_id, start, end), data, create=True)

    async def open_group(self, eval_id: str, run_id: str, start: int, end: int) -> tuple[int, AsyncIterator[bytes]]:
        """A group's size (known before its bytes are fetched, for the read budget) and its bytes."""
        return await self.blobs.open(_group_name(eval_id, run_id, start, end), missing="An output group is missing.")

    async def written_groups(self, eval_id: str, run_id: str) -> dict[int, int]:
        """start -> end of the output groups written (counted or not); the shortest when two start alike."""
        prefix = f"{eval_id}/runs/{run_id}/output/"
        groups: dict[int, int] = {}
        for name in await self.blobs.names(prefix):
            match = _GROUP.fullmatch(name[len(prefix) :])
            if match is not None:
                start, end = int(match.group(1)), int(match.group(2))
                groups[start] = min(end, groups.get(start, end))
        return groups

    async def ids(self, prefix: str) -> list[str]:
        """The ids directly under `prefix` (evals at '', runs at '<eval id>/runs/'), newest first."""
        return await self.blobs.children(prefix)

    async def delete_tree(self, prefix: str) -> None:
        await self.blobs.delete_tree(prefix)


_GROUP = re.compile(r"(\d{8})-(\d{8})\.jsonl")


def _group_name(eval_id: str, run_id: str, start: int, end: int) -> str:
    return f"{eval_id}/runs/{run_id}/output/{start:08d}-{end:08d}.jsonl"
