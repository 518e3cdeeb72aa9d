"""The eval service the HTTP functions and the eval queue trigger call.

A run is graded on the job queue by a continuous window of items (`_Window`): each item is
answered by the candidate deployment (or keeps the answer its source holds) and graded by every
criterion; consecutive graded items are written as one group blob and counted with one state
write, conditional on the ETag read. A delivery that outlives its time budget checkpoints and
queues a continuation; a redelivered message counts the groups a killed delivery wrote exactly
once; the queue's last delivery of a failing message marks the run failed with the reason.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import re
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, replace
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, TypeAdapter, ValidationError

from shared.datasets import formats
from shared.datasets.membership import DatasetMembership
from shared.datasets.records import DatasetRecords
from shared.evals.compare import RunComparison
from shared.evals.files import EvalFiles
from shared.evals.graders import (
    GradeResult,
    LabelModelGrader,
    ScoreModelGrader,
    TextSimilarityGrader,
    check_templates,
    grade,
    make_sample,
    parse_testing_criteria,
    stored_sample,
)
from shared.evals.metering import MeteredCalls, TokenCapReached, TokenMeter
from shared.evals.metrics import TextMetrics
from shared.evals.params import (
    DATASET_FILE_ID,
    FILE_ID,
    MAX_RUN_ITEM_BYTES,
    MAX_RUN_ITEMS,
    CompletionsRunDataSource,
    CustomDataSourceConfig,
    EvalCreateParams,
    EvalUpdateParams,
    FileContentSource,
    FileIdSource,
    ItemReferenceInputMessages,
    ResponsesSource,
    RunCreateParams,
    StoredCompletionsSource,
)
from shared.evals.records import (
    CriterionCounts,
    EvalRecord,
    EvalStore,
    Lineage,
    ModelUsage,
    OutputItem,
    RunError,
    RunRecord,
    RunStatus,
    created_micros,
    new_id,
    output_item_index,
)
from shared.evals.templates import check_variables, content_text, render_messages
from shared.platform.access import Caller
from shared.platform.errors import DistilleryError, InvalidRequest, NotFound
from shared.platform.job_queue import JobQueue
from shared.platform.telemetry import JobChunk, job_chunk
from shared.store.completion_filter import CompletionFilter
from shared.store.completion_index import IndexEntry
from shared.store.completion_store import CompletionStore, in_selection
from shared.store.json_blobs import RewrittenWhileRead, Superseded
from shared.store.read_budget import ByteBudget
from shared.store.scores import Score, ScoreName
from shared.upstream.model_calls import ModelCalls, UpstreamCallFailed

log = logging.getLogger(__name__)

EVAL_ID = re.compile(r"eval_[0-9a-f]{32}")
RUN_ID = re.compile(r"evalrun_[0-9a-f]{32}")
FINE_TUNING_JOB_METADATA = "fine_tuning_job"
"""Run metadata key linking a run to the fine-tuning job whose model its deployment serves (Azure
deploys a fine-tuned model under a deployment name of its own)."""
ERASED = "erased"
"""An item line holding only `{"erased": true}`: the stored completion it copied was deleted."""
_MEMBERSHIP_BATCH = 100
STORED_ANSWERS_MODEL = "stored"
"""A run's `model` when it grades the answers its source already holds."""

STORED_COMPLETION_ITEM_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "input": {"type": "array", "items": {"type": "object"}, "description": "The request's messages."},
        "reference": {"type": "string", "description": "The stored answer (text, or tool calls as JSON)."},
        "completion_id": {"type": "string"},
        "metadata": {"type": "object"},
        "tools": {"type": "array"},
    },
    "required": ["input", "reference", "completion_id", "metadata"],
}
SAMPLE_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "model": {"type": "string"},
        "choices": {"type": "array"},
        "output_text": {"type": "string"},
        "output_json": {"type": "object"},
        "output_tools": {"type": "array"},
    },
    "required": ["model", "output_text"],
}


@dataclass(frozen=True)
class EvalLimits:
    concurrency: int = 8
    """Items answered and graded at once."""
    chunk_seconds: float = 240.0
    max_delivery_count: int = 5
    default_token_cap: int = 2_000_000
    embeddings_deployment: str = "text-embedding-3-large"
    save_every_items: int = 100
    """Graded items written as one group and counted with one state write, at most..."""
    save_every_seconds: float = 2.0
    """...or at least this often (so a killed delivery loses little and a cancel is seen soon)..."""
    group_max_bytes: int = 4 * 1024 * 1024
    """...or once a group holds this many bytes (a reader holds a whole group from its budget)."""
    overrun_seconds: float = 60.0
    """Items still in flight this long after `chunk_seconds` are stopped: 300 s by default, inside
    the queue's 5-minute message lock even before any renewal."""


class EvalJobMessage(BaseModel):
    """The eval queue's message body (JSON)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    version: Literal[1] = 1
    eval_id: str
    run_id: str
    part: int = 0

    @property
    def message_id(self) -> str:
        return self.run_id if self.part == 0 else f"{self.run_id}-part{self.part}"


class EvalService:
    def __init__(
        self,
        *,
        store: EvalStore,
        completions: CompletionStore,
        datasets: DatasetRecords,
        membership: DatasetMembership,
        files: EvalFiles,
        calls: ModelCalls,
        metrics: TextMetrics,
        budget: ByteBudget,
        job_queue: JobQueue,
        queue_name: str,
        limits: EvalLimits,
        fine_tuning_job_of: Callable[[str, str | None], Awaitable[str | None]] | None = None,
    ) -> None:
        self.store = store
        self._fine_tuning_job_of = fine_tuning_job_of
        self._completions = completions
        self._datasets = datasets
        self._membership = membership
        self._files = files
        self.calls = calls
        self._metrics = metrics
        self.budget = budget
        """The worker's read budget (`DOCUMENT_READ_BUDGET_BYTES`): items in flight and output groups read."""
        self._queue = job_queue
        self._queue_name = queue_name
        self.limits = limits

    # Evals.

    async def create_eval(self, params: EvalCreateParams, *, owner: str | None) -> EvalRecord:
        criteria = parse_testing_criteria(params.testing_criteria)
        config = params.data_source_config
        if isinstance(config, CustomDataSourceConfig):
            item_schema, with_sample = config.item_schema, config.include_sample_schema
            view: dict[str, Any] = {"type": "custom", "schema": _schema(item_schema, sample=with_sample)}
        else:
            item_schema, with_sample = STORED_COMPLETION_ITEM_SCHEMA, True
            view = {
                "type": config.type,  # `logs` stays `logs`, as OpenAI answers
                "metadata": config.metadata,
                "schema": _schema(item_schema, sample=True),
            }
        check_templates(criteria, item_schema=item_schema, sample_available=with_sample)
        record = EvalRecord(
            id=new_id("eval"),
            name=params.name or "eval",
            created_at=int(time.time()),
            metadata=params.metadata or {},
            data_source_config=view,
            item_schema=item_schema,
            sample_in_schema=with_sample,
            testing_criteria=criteria,
            owner=owner,
        )
        await self.store.create_eval(record)
        return record

    async def get_eval(self, eval_id: str, *, owner: str | None) -> EvalRecord:
        return (await self._visible_eval(eval_id, owner))[0]

    async def update_eval(self, eval_id: str, params: EvalUpdateParams, *, owner: str | None) -> EvalRecord:
        while True:
            record, etag = await self._visible_eval(eval_id, owner)
            if params.name is not None:
                record.name = params.name
            if params.metadata is not None:
                record.metadata = params.metadata
            record.changed_us = time.time_ns() // 1000
            with contextlib.suppress(Superseded):
                await self.store.save_eval(record, etag)
                return record

    async def delete_eval(self, eval_id: str, *, owner: str | None) -> None:
        await self._visible_eval(eval_id, owner)
        await self.store.delete_tree(f"{eval_id}/")

    async def list_evals(
        self, *, after: str | None, limit: int, order: str, owner: str | None, order_by: str = "created_at"
    ) -> tuple[list[EvalRecord], bool]:
        ids = [eval_id for eval_id in await self.store.ids("") if EVAL_ID.fullmatch(eval_id)]  # newest first
        if order_by == "updated_at":
            return await self._list_by_change(ids, after=after, limit=limit, order=order, owner=owner)
        page: list[EvalRecord] = []
        for eval_id in _after(ids if order == "desc" else ids[::-1], after):
            with contextlib.suppress(NotFound):
                record, _ = await self.store.read_eval(eval_id)
                if record.visible_to(owner):
                    if len(page) == limit:
                        return page, True
                    page.append(record)
        return page, False

    async def _list_by_change(
        self, ids: list[str], *, after: str | None, limit: int, order: str, owner: str | None
    ) -> tuple[list[EvalRecord], bool]:
        """Ids do not sort by last change: every visible eval is read, then sorted (ties in creation order)."""
        records: list[EvalRecord] = []
        for eval_id in reversed(ids):
            with contextlib.suppress(NotFound):
                record, _ = await self.store.read_eval(eval_id)
                if record.visible_to(owner):
                    records.append(record)
        records.sort(key=lambda record: record.last_change)  # stable: equal times keep creation order
        if order == "desc":
            records.reverse()
        start = 0 if after is None else next((n + 1 for n, r in enumerate(records) if r.id == after), len(records))
        return records[start : start + limit], len(records) > start + limit

    # Runs.

    async def create_run(
        self,
        eval_id: str,
        params: RunCreateParams,
        *,
        owner: str | None,
        report_base: str,
        caller: Caller | None = None,
    ) -> tuple[RunRecord, RunCreateParams]:
        record, _ = await self._visible_eval(eval_id, owner)
        source = params.data_source.source
        model = params.data_source.model if isinstance(params.data_source, CompletionsRunDataSource) else None
        self._check_caller_may_call(record, model, caller)
        lineage = Lineage(model=model)
        if model is not None and self._fine_tuning_job_of is not None:
            named = (params.metadata or {}).get(FINE_TUNING_JOB_METADATA)
            lineage.fine_tuning_job_id = await self._fine_tuning_job_of(named or model, owner)
            if named and lineage.fine_tuning_job_id is None:
                raise InvalidRequest(
                    f"metadata.{FINE_TUNING_JOB_METADATA} names no fine-tuning job: '{named}'.",
                    param=f"metadata.{FINE_TUNING_JOB_METADATA}",
                )
        if isinstance(source, FileIdSource) and FILE_ID.fullmatch(source.id):
            await self._check_eval_file(source, owner)
            lineage.file_id = source.id
        elif isinstance(source, FileIdSource):
            lineage.dataset_id = await self._check_dataset_file(source, owner)
        elif isinstance(source, StoredCompletionsSource):
            lineage.completion_filter = _completion_filter(source, record, owner).model_dump(exclude_none=True)
        self._check_run_templates(record, params)
        if params.write_scores:
            _check_score_writing(record)
        await self._check_deployments(record, model)
        run_id = new_id("evalrun")
        run = RunRecord(
            id=run_id,
            eval_id=eval_id,
            name=params.name or f"{model or STORED_ANSWERS_MODEL} run",
            created_at=int(time.time()),
            model=model or STORED_ANSWERS_MODEL,
            metadata=params.metadata or {},
            owner=owner,
            report_url=f"{report_base.rstrip('/')}/api/evals/{eval_id}/runs/{run_id}",
            token_cap=params.max_total_tokens or self.limits.default_token_cap,
            per_criterion={criterion.name: CriterionCounts() for criterion in record.testing_criteria},
            lineage=lineage,
            scores_author=(caller.owner if caller is not None else owner or "distillery")
            if params.write_scores
            else None,
        )
        await self.store.create_run(run, params)
        try:
            await self._send(EvalJobMessage(eval_id=eval_id, run_id=run_id))
        except DistilleryError as exc:
            await self._settle_failure(eval_id, run_id, RunError(code="queue_unavailable", message=exc.message))
            raise
        return run, params

    async def get_run(self, eval_id: str, run_id: str, *, owner: str | None) -> tuple[RunRecord, RunCreateParams]:
        run = await self._visible_run(eval_id, run_id, owner)
        return run, await self.store.read_request(eval_id, run_id)

    async def list_runs(
        self, eval_id: str, *, after: str | None, limit: int, order: str, status: str | None, owner: str | None
    ) -> tuple[list[tuple[RunRecord, RunCreateParams]], bool]:
        await self._visible_eval(eval_id, owner)
        ids = await self.store.ids(f"{eval_id}/runs/")
        page: list[tuple[RunRecord, RunCreateParams]] = []
        for run_id in _after(ids if order == "desc" else ids[::-1], after):
            with contextlib.suppress(NotFound):
                run, _ = await self.store.read_run(eval_id, run_id)
                if status is None or run.status == status:
                    if len(page) == limit:
                        return page, True
                    page.append((run, await self.store.read_request(eval_id, run_id)))
        return page, False

    async def cancel_run(self, eval_id: str, run_id: str, *, owner: str | None) -> RunRecord:
        """Stop a run and answer it `canceled`, as OpenAI does: no batch starts after this; the one in
        flight (if any) is still counted, its results kept."""
        await self._visible_run(eval_id, run_id, owner)
        while True:
            run, etag = await self.store.read_run(eval_id, run_id)
            if run.finished:
                return run
            run.status = RunStatus.CANCELED
            run.cancel_requested = True
            with contextlib.suppress(Superseded):
                await self.store.save_run(run, etag)
                return run

    async def delete_run(self, eval_id: str, run_id: str, *, owner: str | None) -> None:
        await self._visible_run(eval_id, run_id, owner)
        await self.store.delete_tree(f"{eval_id}/runs/{run_id}/")

    async def output_items(
        self,
        eval_id: str,
        run_id: str,
        *,
        after: str | None,
        limit: int,
        order: str,
        status: str | None,
        owner: str | None,
    ) -> tuple[list[OutputItem], bool]:
        run = await self._visible_run(eval_id, run_id, owner)
        position = None
        if after is not None:
            position = output_item_index(run_id, after)
            if position is None:
                raise InvalidRequest("'after' is not an output item id of this run.", param="after")
        groups = run.groups()
        if order == "desc":
            groups.reverse()
        page: list[OutputItem] = []
        page_bytes = 0
        for start, end in groups:
            if position is not None and (end <= position + 1 if order == "asc" else start >= position):
                continue
            async with self._group_lines(run, start, end) as lines:
                for line in reversed(lines) if order == "desc" else lines:
                    item = OutputItem.model_validate_json(line)
                    if position is not None and (item.index <= position if order == "asc" else item.index >= position):
                        continue
                    if status is None or item.status == status:
                        # A page also ends once its items fill half the read budget (page on with `after`).
                        if len(page) == limit or (page and page_bytes + len(line) > self.budget.capacity // 2):
                            return page, True
                        page.append(item)
                        page_bytes += len(line)
        return page, False

    async def output_item(self, eval_id: str, run_id: str, item_id: str, *, owner: str | None) -> OutputItem:
        run = await self._visible_run(eval_id, run_id, owner)
        index = output_item_index(run_id, item_id)
        group = run.group_of(index) if index is not None else None
        if index is not None and group is not None:
            prefix = b'{"index":%d,' % index
            async with self._group_lines(run, *group) as lines:
                for line in lines:
                    if line.startswith(prefix):  # only the wanted line is parsed
                        return OutputItem.model_validate_json(line)
        raise NotFound(f"No output item found with id '{item_id}'.", param="output_item_id")

    async def compare(self, eval_id: str, run_ids: list[str], *, owner: str | None) -> dict[str, Any]:
        """Per criterion, over the items both runs graded: wins, losses, ties and the pass-rate delta (b - a)."""
        if len(run_ids) != 2 or run_ids[0] == run_ids[1]:
            raise InvalidRequest("'runs' must name two different runs of this eval: runs=<a>,<b>.", param="runs")
        record, _ = await self._visible_eval(eval_id, owner)
        runs = [await self._visible_run(eval_id, run_id, owner) for run_id in run_ids]
        for run in runs:
            if not run.finished:
                raise InvalidRequest(f"Run '{run.id}' is still {run.status}; compare finished runs.", param="runs")
        comparison = RunComparison(record, runs)
        async with (
            contextlib.aclosing(self._outputs(runs[0], first=True)) as first,
            contextlib.aclosing(self._outputs(runs[1], first=False)) as second,
        ):
            a, b = await anext(first, None), await anext(second, None)
            while a is not None and b is not None:
                if a.index == b.index:
                    comparison.add(a, b)
                if a.index <= b.index:
                    a = await anext(first, None)
                else:
                    b = await anext(second, None)
        return comparison.result()

    async def _outputs(self, run: RunRecord, *, first: bool) -> AsyncGenerator[OutputItem]:
        """`first`: this reader's first group waits for room in the budget; after that (and for the
        other run's reader) the two readers each hold one group and add the next without waiting,
        as waiting on bytes the other reader holds would deadlock."""
        for position, (start, end) in enumerate(run.groups()):
            async with self._group_lines(run, start, end, first=first and position == 0) as lines:
                for line in lines:
                    yield OutputItem.model_validate_json(line)

    # Erasure.

    async def forget_completions(self, completion_ids: list[str]) -> int:
        """Rewrite every run that copied any of these deleted completions without them: its item becomes an
        erased line (so item positions stay) and its output item is deleted and uncounted. Runs rewritten."""
        rewritten = 0
        for holder, held in sorted((await self._membership.holdings(completion_ids)).items()):
            eval_id, _, run_id = holder.partition(".")
            if EVAL_ID.fullmatch(eval_id) and RUN_ID.fullmatch(run_id):
                rewritten += await self._erase_from_run(eval_id, run_id, held, note=True)
        if rewritten:
            log.info("Deleted completions were in %s eval run(s); erased from them", rewritten)
        return rewritten

    async def _erase_from_run(self, eval_id: str, run_id: str, wanted: set[str], *, note: bool) -> bool:
        """Erase the items copying `wanted` and their output items.

        `note`: first leave the ids in the run's `forgotten/` notes, and only then read the items. A run
        that read a document before its delete but fixes its items after this read finds the note
        (`_fix_items`); one that fixed them before is found here. Either way the copy goes."""
        if note:
            try:
                await self.store.read_run(eval_id, run_id)
            except NotFound:
                return False  # run deleted: a note would leave a stray blob where it was
            await self.store.note_forgotten(eval_id, run_id, sorted(wanted))
        while True:
            try:
                size, chunks, etag = await self.store.open_items(eval_id, run_id)
            except NotFound:
                return False  # its items not fixed yet: the run reads the note when it fixes them
            async with self.budget.hold(size):
                try:
                    lines = b"".join([chunk async for chunk in chunks]).splitlines(keepends=True)
                except RewrittenWhileRead:
                    continue  # another erasure rewrote them meanwhile: read the new version
                hits = [index for index, line in enumerate(lines) if _completion_id(line) in wanted]
                if not hits:
                    return False
                for index in hits:
                    lines[index] = formats.jsonl_line({ERASED: True})
                with contextlib.suppress(Superseded):
                    await self.store.replace_items(eval_id, run_id, b"".join(lines), etag)
                    break
        for index in hits:
            await self._erase_output(eval_id, run_id, index)
        return True

    async def _erase_output(self, eval_id: str, run_id: str, index: int) -> None:
        """Take a graded item out of every output group holding it (rewritten without its line), then out
        of the run's counts (`_uncount`). Safe to run twice and alongside the run's own delivery."""
        prefix = b'{"index":%d,' % index
        removed: dict[tuple[int, int], OutputItem] = {}
        for start, end in await self.store.all_groups(eval_id, run_id):
            if not start <= index < end:
                continue
            while True:
                try:
                    raw, group_etag = await self.store.read_group(eval_id, run_id, start, end)
                except NotFound:
                    break
                lines = [line for line in raw.split(b"\n") if line.strip()]
                kept = [line for line in lines if not line.startswith(prefix)]
                if len(kept) == len(lines):
                    break
                erased = OutputItem.model_validate_json(next(line for line in lines if line.startswith(prefix)))
                with contextlib.suppress(Superseded):
                    await self.store.replace_group(eval_id, run_id, start, end, b"\n".join(kept), group_etag)
                    removed[(start, end)] = erased
                    break
        await self._uncount(eval_id, run_id, index, removed)

    async def _uncount(self, eval_id: str, run_id: str, index: int, removed: dict[tuple[int, int], OutputItem]) -> None:
        """Take an erased item out of the run's counts exactly once (the tokens stay spent).

        The state lists the item in `erased` as it is taken out. Once its group is counted, only the
        eraser that removed its line from that group (`removed`) takes it out; before, any eraser lists
        it, and counting the group then leaves it out (`_count_group`)."""
        while True:
            try:
                run, etag = await self.store.read_run(eval_id, run_id)
            except NotFound:
                return  # deleted meanwhile
            if index in run.erased:
                return
            group = run.group_of(index)
            if group is not None:
                if group not in removed:
                    return  # another eraser removed the counted line, and takes it out
                _tally(removed[group]).count(run, sign=-1)
            run.erased.append(index)
            with contextlib.suppress(Superseded):
                await self.store.save_run(run, etag)
                return

    async def sweep(self, *, created_before_us: int) -> int:
        """Retention: delete the runs (items, outputs) and eval files created before the cutoff; the eval
        definitions stay (they hold no completion). The number deleted."""
        deleted = 0
        for eval_id in await self.store.ids(""):
            if not EVAL_ID.fullmatch(eval_id):
                continue
            for run_id in await self.store.ids(f"{eval_id}/runs/"):
                if RUN_ID.fullmatch(run_id) and created_micros(run_id) < created_before_us:
                    await self.store.delete_tree(f"{eval_id}/runs/{run_id}/")
                    deleted += 1
        return deleted + await self._files.sweep(created_before_us=created_before_us)

    # The queue.

    async def handle(self, body: bytes, *, delivery_count: int) -> None:
        """One queue delivery; raising makes the queue retry, and finally dead-letter, the message.

        The queue's last delivery of a message that failed before does not try again: it ends the
        run `failed` with the last failure's reason (or says the last delivery was interrupted). A
        worker killed on the last try could otherwise leave the run `in_progress` forever.
        """
        try:
            message = EvalJobMessage.model_validate_json(body)
        except ValidationError as exc:
            log.error("Invalid eval job message: %s", exc.errors(include_input=False, include_url=False)[:3])
            raise
        final = delivery_count >= self.limits.max_delivery_count
        if final and delivery_count > 1:
            return await self._give_up(message, delivery_count)
        try:
            with job_chunk("eval_run", message.run_id, part=message.part) as chunk:
                chunk.span.set_attribute("distillery.eval_id", message.eval_id)
                await self._run(message, chunk)
        except Superseded:
            log.info("Eval run %s: another delivery advanced, cancelled or deleted it", message.run_id)
        except Exception as exc:
            reason = exc.message if isinstance(exc, DistilleryError) else f"unexpected {type(exc).__name__}"
            log.warning(
                "Eval run %s: delivery %s failed (final: %s): %s", message.run_id, delivery_count, final, reason
            )
            if final:
                error = RunError(code="run_failed", message=f"The run failed {delivery_count} times: {reason}")
                await self._settle_failure(message.eval_id, message.run_id, error)
            else:
                await self._note_failure(message.eval_id, message.run_id, reason)
            raise

    async def _give_up(self, message: EvalJobMessage, delivery_count: int) -> None:
        with contextlib.suppress(NotFound, Superseded, DistilleryError):
            run, _ = await self.store.read_run(message.eval_id, message.run_id)
            if run.finished or message.part != run.part:
                return
            if run.delivery_open:
                reason = (
                    f"delivery {delivery_count - 1} stopped without finishing (the worker was stopped, or it ran "
                    f"out of time) after {run.next_index} of {run.items_total} items were counted"
                )
            else:
                reason = run.last_failure or "the queue delivered it again without a recorded failure"
            message_text = f"The run failed {delivery_count - 1} times: {reason}."
            log.warning("Eval run %s: last delivery, marking it failed: %s", run.id, reason)
            await self._settle_failure(run.eval_id, run.id, RunError(code="run_failed", message=message_text))

    async def _note_failure(self, eval_id: str, run_id: str, reason: str) -> None:
        with contextlib.suppress(NotFound, Superseded, DistilleryError):
            run, etag = await self.store.read_run(eval_id, run_id)
            if not run.finished:
                run.last_failure, run.delivery_open = reason, False
                await self.store.save_run(run, etag)

    async def _run(self, message: EvalJobMessage, chunk: JobChunk) -> None:
        try:
            run, etag = await self.store.read_run(message.eval_id, message.run_id)
        except NotFound:
            log.info("Eval run %s was deleted; message ignored", message.run_id)
            return
        if run.finished or message.part > run.part:
            return
        if message.part < run.part:  # a redelivery of a part that already ran: make sure its continuation was sent
            await self._send(message.model_copy(update={"part": run.part}))
            return
        started = time.monotonic()
        record, _ = await self.store.read_eval(run.eval_id)
        request = await self.store.read_request(run.eval_id, run.id)
        if run.status is RunStatus.QUEUED:
            run.status = RunStatus.IN_PROGRESS
        run.deliveries += 1
        run.delivery_open = True
        etag = await self.store.save_run(run, etag)
        if run.items_total is None:
            total, digest = await self._fix_items(run, record, request)
            run, etag = await self._save_state(
                run, etag, lambda state: _set_items(state, total, digest if state.lineage.completion_filter else None)
            )
        items = await _ItemLines.open(self.store, run)
        run, etag = await self._recover(run, etag)
        first = run.next_index
        window = _Window(self, run, etag, record, request, items, started)
        total = run.items_total or 0
        try:
            stop = await window.grade()
        finally:
            chunk.items = window.run.next_index - first
        run, etag = window.run, window.etag
        if run.next_index >= total:
            return await self._finish(run, etag, RunStatus.CANCELED if run.cancel_requested else RunStatus.COMPLETED)
        if stop == "canceled":
            return await self._finish(run, etag, RunStatus.CANCELED)
        if stop == "token_cap":
            message_text = (
                f"The run used {run.tokens_used} tokens, reaching its cap of {run.token_cap}: it stopped after "
                f"{run.next_index} of {total} items, whose results are kept."
            )
            error = RunError(code="token_cap_reached", message=message_text)
            return await self._finish(run, etag, RunStatus.FAILED, error=error)
        run, etag = await self._save_state(run, etag, _next_part)
        await self._send(message.model_copy(update={"part": run.part}))

    async def _finish(self, run: RunRecord, etag: str, status: RunStatus, *, error: RunError | None = None) -> None:
        def finish(state: RunRecord) -> None:
            state.status = status
            state.delivery_open = False
            if error is not None:
                state.error = error

        run, _ = await self._save_state(run, etag, finish)
        log.info("Eval run %s %s: %s", run.id, status, run.result_counts.model_dump())

    async def _save_state(
        self, run: RunRecord, etag: str, change: Callable[[RunRecord], None]
    ) -> tuple[RunRecord, str]:
        """Save a change this delivery makes to the state. An erasure or a cancel may have saved the
        state meanwhile: the change is made again on theirs. Another delivery having moved the run on
        (`Superseded`) ends this one."""
        while True:
            updated = run.model_copy(deep=True)
            change(updated)
            try:
                return updated, await self.store.save_run(updated, etag)
            except Superseded:
                current, etag = await self.store.read_run(run.eval_id, run.id)
                moved = (current.part, current.next_index, current.deliveries) != (
                    run.part,
                    run.next_index,
                    run.deliveries,
                )
                if moved or (current.finished and current.status is not RunStatus.CANCELED):
                    raise
                run = current

    async def _fix_items(self, run: RunRecord, record: EvalRecord, request: RunCreateParams) -> tuple[int, str]:
        """Fix the run's items on its first delivery (so later deliveries grade the same ones): their
        number and the digest of the completion ids they copy, read back a chunk at a time.

        An erasure that ran while they were collected (a document read before its delete) left a note,
        read here after the items are written: those ids are erased before any is graded."""
        lines = await self._collect_items(run, record, request)
        await self.store.write_items(run.eval_id, run.id, b"".join(lines))
        del lines
        forgotten = await self.store.forgotten(run.eval_id, run.id)
        if forgotten:
            await self._erase_from_run(run.eval_id, run.id, forgotten, note=False)
        while True:
            with contextlib.suppress(RewrittenWhileRead):  # an erasure landed while read: read it again
                return await self._count_items(run)

    async def _count_items(self, run: RunRecord) -> tuple[int, str]:
        _, chunks, _ = await self.store.open_items(run.eval_id, run.id)
        total, digest, partial = 0, hashlib.sha256(), b""
        async for chunk in chunks:
            async with self.budget.hold(len(chunk)):
                *complete, partial = (partial + chunk).split(b"\n")
                for line in complete:
                    total += 1
                    digest.update((_completion_id(line) or "").encode() + b"\n")
        if partial:
            total += 1
            digest.update((_completion_id(partial) or "").encode() + b"\n")
        return total, digest.hexdigest()

    async def _recover(self, run: RunRecord, etag: str) -> tuple[RunRecord, str]:
        """Count the groups a killed delivery wrote but did not count, in order: no upstream call again."""
        written = await self.store.written_groups(run.eval_id, run.id)
        while run.next_index in written:
            start, end = run.next_index, written[run.next_index]
            candidate = run.model if run.model != STORED_ANSWERS_MODEL else None
            async with self._group_lines(run, start, end) as lines:
                tallies = [_tally(OutputItem.model_validate_json(line), candidate) for line in lines]
            usage: dict[str, dict[str, int]] = {}
            for tally in tallies:
                for model, spent in tally.usage:
                    total = usage.setdefault(model, {"invocation_count": 0})
                    for key, value in spent.items():
                        total[key] = total.get(key, 0) + value
                    total["invocation_count"] += 1
            log.info("Eval run %s: counting items %s-%s a stopped delivery wrote", run.id, start, end - 1)
            run, etag = await self._count_group(run, etag, start, end, tallies, usage)
        return run, etag

    async def _count_group(
        self,
        run: RunRecord,
        etag: str,
        start: int,
        end: int,
        tallies: list[_Tally],
        usage: dict[str, dict[str, int]],
    ) -> tuple[RunRecord, str]:
        """Count a written group exactly once: only onto the state that still ends where it starts."""
        while True:
            if run.next_index != start or (run.finished and run.status is not RunStatus.CANCELED):
                await self._add_usage_only(run, usage)
                raise Superseded(run.id)
            updated = run.model_copy(deep=True)
            for tally in tallies:
                if tally.index not in updated.erased:  # an erasure landed before the count: keep it out
                    tally.count(updated)
            _add_usage(updated, usage)
            updated.next_index = end
            updated.output_groups.append(end)
            try:
                return updated, await self.store.save_run(updated, etag)
            except Superseded:
                run, etag = await self.store.read_run(run.eval_id, run.id)  # a cancel landed: count onto it

    async def _add_usage_only(self, run: RunRecord, usage: dict[str, dict[str, int]]) -> None:
        """Tokens spent on items another delivery counted still count toward the cap."""
        if not usage:
            return
        while True:
            current, etag = await self.store.read_run(run.eval_id, run.id)
            _add_usage(current, usage)
            with contextlib.suppress(Superseded):
                await self.store.save_run(current, etag)
                return

    @contextlib.asynccontextmanager
    async def _group_lines(
        self, run: RunRecord, start: int, end: int, *, first: bool = True
    ) -> AsyncIterator[list[bytes]]:
        """A group's items (JSON lines, unparsed), its bytes held from the read budget inside the block.

        `first` False: the caller already holds part of the budget (it compares two runs), so the
        group's bytes are added without waiting."""
        size, chunks = await self.store.open_group(run.eval_id, run.id, start, end)
        held = await self.budget.acquire(size) if first else self.budget.force(size)
        try:
            raw = b"".join([chunk async for chunk in chunks])
            yield [line for line in raw.split(b"\n") if line.strip()]
        finally:
            self.budget.release(held)

    async def _grade_item(
        self, run: RunRecord, record: EvalRecord, request: RunCreateParams, index: int, line: bytes, calls: ModelCalls
    ) -> tuple[bytes, _Tally] | None:
        """An item graded and serialized (its parsed form is dropped here); None when the token cap left
        no room for its candidate call (the item stays ungraded)."""
        row = json.loads(line)
        if row.get(ERASED):
            return _ERASED_ITEM
        item, given_sample = row["item"], row.get("sample")
        sample: dict[str, Any] | None
        sample_error = None
        source = request.data_source
        if isinstance(source, CompletionsRunDataSource) and source.model is not None:
            try:
                sample, sample_error = await self._answer(source, item, calls)
            except TokenCapReached:
                return None
        elif isinstance(given_sample, dict):
            sample = given_sample if "output" in given_sample else _as_sample(item, given_sample)
        else:
            sample = None
        results = await asyncio.gather(
            *(
                grade(
                    criterion,
                    item=item,
                    sample=sample,
                    calls=calls,
                    metrics=self._metrics,
                    embeddings_deployment=self.limits.embeddings_deployment,
                )
                for criterion in record.testing_criteria
            )
        )
        completion_id = item.get("completion_id") if isinstance(item, dict) else None
        if run.scores_author is not None and isinstance(completion_id, str):
            await self._write_scores(run, completion_id, results)
        output = OutputItem(
            index=index,
            run_id=run.id,
            eval_id=run.eval_id,
            created_at=int(time.time()),
            item=item,
            sample=sample,
            results=list(results),
            sample_error=sample_error,
        )
        return output.model_dump_json().encode(), _tally(output)

    async def _write_scores(self, run: RunRecord, completion_id: str, results: list[GradeResult]) -> None:
        """The model graders' verdicts as scores on the graded completion (one document write); a completion
        gone or changed meanwhile keeps the run going (logged): the run's own results are what it reports."""
        assert run.scores_author is not None
        scores = [
            Score(
                name=result.name,
                value=result.score if result.type == "score_model" else (result.sample or {})["label"],
                comment=f"eval {run.eval_id} run {run.id}",
                source="model",
                author=run.scores_author,
                created_at=int(time.time()),
            )
            for result in results
            if result.type in SCORE_WRITING_GRADERS and result.error is None
        ]
        if not scores:
            return
        try:
            await self._completions.add_scores(completion_id, scores, owner=run.owner)
        except DistilleryError as exc:
            log.warning("Eval run %s: scores not written to %s (%s)", run.id, completion_id, exc.code)

    async def _answer(
        self, source: CompletionsRunDataSource, item: dict[str, Any], calls: ModelCalls
    ) -> tuple[dict[str, Any], str | None]:
        """The candidate's sample for an item, or the sample of an error when the upstream refused."""
        assert source.model is not None
        messages = _input_messages(source, item)
        body: dict[str, Any] = {"messages": messages}
        if source.sampling_params is not None:
            body.update(source.sampling_params.model_dump(exclude_none=True))
        try:
            if source.type == "responses":  # the run asks for the Responses API: its own names for the same settings
                completion = await calls.respond(deployment=source.model, body=_responses_body(body))
            else:
                completion = await calls.chat(deployment=source.model, body=body)
        except TokenCapReached:
            raise
        except UpstreamCallFailed as exc:
            error = f"The candidate call failed (HTTP {exc.upstream_status}, {exc.code}): {exc.message}"
            return make_sample(input_messages=messages, completion=None, error=error), error
        sample = make_sample(input_messages=messages, completion=completion)
        params = source.sampling_params
        if params is not None:
            sample.update(params.model_dump(include={"seed", "temperature", "top_p", "max_completion_tokens"}))
        return sample, None

    async def _collect_items(self, run: RunRecord, record: EvalRecord, request: RunCreateParams) -> list[bytes]:
        source = request.data_source.source
        holder = _holder(run)
        if isinstance(source, FileContentSource):
            return [formats.jsonl_line(row.model_dump(exclude_none=True)) for row in source.content]
        if isinstance(source, FileIdSource) and FILE_ID.fullmatch(source.id):
            content = await self._files.content(source.id, owner=run.owner)  # checked on upload
            return [line + b"\n" for line in content.removeprefix(b"\xef\xbb\xbf").splitlines() if line.strip()]
        if isinstance(source, FileIdSource):
            rows = await self._dataset_rows(source)
            await self._membership.record(holder, filter(None, (_completion_id(row) for row in rows)))
            return rows
        selection = _completion_filter(source, record, run.owner)
        lines: list[bytes] = []
        size = 0
        # Each id is recorded as held by this run before its document is read (so a delete racing this
        # finds the run, as it finds datasets); one document at a time, its bytes from the read budget.
        entries = self._completions.index.walk(selection)
        recorded: list[str] = []
        while len(lines) < (source.limit or MAX_RUN_ITEMS):
            if not recorded:
                recorded = [entry.id async for entry in _take(entries, _MEMBERSHIP_BATCH)][::-1]
                if not recorded:
                    break
                await self._membership.record(holder, recorded)
            try:
                completion = await self._completions.get(recorded.pop())
            except NotFound:
                continue
            output = formats.assistant_output(completion)
            wanted = not isinstance(source, ResponsesSource) or source.accepts(completion.request)
            if isinstance(output, dict) and in_selection(completion, selection) and wanted:
                line = formats.jsonl_line(formats.evaluation_line(completion, output))
                size += len(line)
                if size > MAX_RUN_ITEM_BYTES:
                    log.warning(
                        "Eval items stop at %s completions: more would pass %s bytes", len(lines), MAX_RUN_ITEM_BYTES
                    )
                    break
                lines.append(line)
        return lines

    async def _dataset_rows(self, source: FileIdSource) -> list[bytes]:
        match = DATASET_FILE_ID.fullmatch(source.id)
        assert match is not None
        size, chunks = await self._datasets.open_file(match.group(1), match.group(2))
        if size > MAX_RUN_ITEM_BYTES:
            raise InvalidRequest(
                f"'{source.id}' holds {size} bytes, more than the {MAX_RUN_ITEM_BYTES} bytes of items one run grades."
            )
        content = b"".join([chunk async for chunk in chunks])
        rows = []
        for number, line in enumerate(content.removeprefix(b"\xef\xbb\xbf").splitlines(), start=1):
            if not line.strip():
                continue
            row = _json_object(line)
            if row is None or not isinstance(row.get("item"), dict):
                raise InvalidRequest(f"Line {number} of '{source.id}' is not an object with an 'item'.")
            rows.append(formats.jsonl_line(row))
            if len(rows) > MAX_RUN_ITEMS:
                raise InvalidRequest(f"'{source.id}' has more than {MAX_RUN_ITEMS} rows, the most one run grades.")
        return rows

    # Checks before a run is queued.

    def _check_run_templates(self, record: EvalRecord, params: RunCreateParams) -> None:
        source = params.data_source
        generates = isinstance(source, CompletionsRunDataSource) and source.model is not None
        rows_have_samples = (
            isinstance(source.source, FileContentSource) and all(row.sample for row in source.source.content)
        ) or isinstance(source.source, FileIdSource | StoredCompletionsSource)
        check_templates(
            record.testing_criteria,
            item_schema=record.item_schema,
            sample_available=generates or rows_have_samples or record.sample_in_schema,
        )
        if isinstance(source, CompletionsRunDataSource) and source.input_messages is not None:
            messages = source.input_messages
            texts = (
                [content_text(message.content) for message in messages.template]
                if not isinstance(messages, ItemReferenceInputMessages)
                else ["{{" + messages.item_reference + "}}"]
            )
            check_variables(
                texts,
                item_schema=record.item_schema,
                sample_available=False,
                param="data_source.input_messages",
            )

    def _called_deployments(self, record: EvalRecord, model: str | None) -> tuple[dict[str, str], str | None]:
        """The chat deployments a run calls (name -> the parameter naming it), and its embeddings deployment."""
        chat: dict[str, str] = {}
        if model is not None:
            chat[model] = "data_source.model"
        for position, criterion in enumerate(record.testing_criteria):
            if isinstance(criterion, LabelModelGrader | ScoreModelGrader):
                chat.setdefault(criterion.model, f"testing_criteria[{position}].model")
        cosine = any(
            isinstance(c, TextSimilarityGrader) and c.evaluation_metric == "cosine" for c in record.testing_criteria
        )
        return chat, self.limits.embeddings_deployment if cosine else None

    def _check_caller_may_call(self, record: EvalRecord, model: str | None, caller: Caller | None) -> None:
        """A run that calls a model spends inference: it needs that right, and the key's deployment allow-list
        covers its candidate, grader and embeddings deployments as it covers chat completions."""
        chat, embeddings = self._called_deployments(record, model)
        called = dict(chat) | ({embeddings: "EVAL_EMBEDDINGS_DEPLOYMENT"} if embeddings else {})
        if caller is not None:
            caller.require_calls(called, needed_by="this run")

    async def _check_deployments(self, record: EvalRecord, model: str | None) -> None:
        """Every deployment the run will call answers (a 404 is a 400 now, not errors on every item later)."""
        probe = replace(self.calls, max_attempts=1)
        wanted, embeddings = self._called_deployments(record, model)
        # `max_completion_tokens`: o-series models refuse `max_tokens`.
        ping = {"messages": [{"role": "user", "content": "ping"}], "max_completion_tokens": 1}
        checks: list[tuple[str, str, Any]] = [
            (name, param, probe.chat(deployment=name, body=ping)) for name, param in wanted.items()
        ]
        if embeddings is not None:
            checks.append(
                (embeddings, "EVAL_EMBEDDINGS_DEPLOYMENT", probe.embed(deployment=embeddings, texts=["ping"]))
            )
        for name, param, call in checks:
            try:
                await call
            except UpstreamCallFailed as exc:
                if exc.upstream_status == 404:
                    raise InvalidRequest(
                        f"The deployment '{name}' does not exist on the upstream ({exc.message})",
                        param=param,
                        code="model_not_found",
                    ) from None
                if exc.upstream_status != 429:  # busy is fine: it exists
                    raise

    async def _check_eval_file(self, source: FileIdSource, owner: str | None) -> None:
        try:
            await self._files.get(source.id, owner=owner)
        except NotFound:
            raise InvalidRequest(
                f"No file '{source.id}'.", param="data_source.source.id", code="file_not_found"
            ) from None

    async def _check_dataset_file(self, source: FileIdSource, owner: str | None) -> str:
        match = DATASET_FILE_ID.fullmatch(source.id)
        assert match is not None
        dataset_id, name = match.groups()
        try:
            job, _ = await self._datasets.read(dataset_id)
        except NotFound:
            job = None
        if job is None or not job.visible_to(owner) or name not in {file.name for file in job.files}:
            raise InvalidRequest(
                f"No dataset file '{source.id}'.", param="data_source.source.id", code="file_not_found"
            )
        return dataset_id

    # Records.

    async def _visible_eval(self, eval_id: str, owner: str | None) -> tuple[EvalRecord, str]:
        missing = NotFound(f"No eval found with id '{eval_id}'.", param="eval_id")
        if not EVAL_ID.fullmatch(eval_id):
            raise missing
        record, etag = await self.store.read_eval(eval_id)
        if not record.visible_to(owner):
            raise missing
        return record, etag

    async def _visible_run(self, eval_id: str, run_id: str, owner: str | None) -> RunRecord:
        await self._visible_eval(eval_id, owner)
        if not RUN_ID.fullmatch(run_id):
            raise NotFound(f"No run found with id '{run_id}'.", param="run_id")
        run, _ = await self.store.read_run(eval_id, run_id)
        return run

    async def _settle_failure(self, eval_id: str, run_id: str, error: RunError) -> None:
        with contextlib.suppress(NotFound, Superseded, DistilleryError):
            run, etag = await self.store.read_run(eval_id, run_id)
            if not run.finished:
                run.status, run.error = RunStatus.FAILED, error
                await self.store.save_run(run, etag)

    async def _send(self, message: EvalJobMessage) -> None:
        await self._queue.send(self._queue_name, message.model_dump_json(), message_id=message.message_id)


SCORE_WRITING_GRADERS = ("label_model", "score_model")
_SCORE_NAME: TypeAdapter[str] = TypeAdapter(ScoreName)


def _check_score_writing(record: EvalRecord) -> None:
    """`write_scores` needs a model grader, and each model grader's name must be a valid score name."""
    writers = [criterion for criterion in record.testing_criteria if criterion.type in SCORE_WRITING_GRADERS]
    if not writers:
        raise InvalidRequest(
            "write_scores needs a label_model or score_model testing criterion: only their verdicts are written back.",
            param="write_scores",
        )
    for criterion in writers:
        try:
            _SCORE_NAME.validate_python(criterion.name)
        except ValidationError:
            raise InvalidRequest(
                f"write_scores: the criterion name '{criterion.name[:80]}' cannot be a score name (1-64 letters, "
                "digits and _ . : -); rename the criterion.",
                param="write_scores",
            ) from None


def _schema(item_schema: dict[str, Any], *, sample: bool) -> dict[str, Any]:
    properties = {"item": item_schema} | ({"sample": SAMPLE_SCHEMA} if sample else {})
    return {"type": "object", "properties": properties, "required": list(properties)}


def _responses_body(chat: dict[str, Any]) -> dict[str, Any]:
    """A candidate call's chat body as a Responses body: messages as input, the sampling parameters
    under the Responses API's names (it has no `seed`)."""
    body: dict[str, Any] = {"input": chat["messages"]}
    for key in ("temperature", "top_p"):
        if key in chat:
            body[key] = chat[key]
    if "tools" in chat:  # chat's function tools nest their definition; the Responses API's do not
        body["tools"] = [
            {"type": "function", **tool["function"]} if tool.get("type") == "function" and "function" in tool else tool
            for tool in chat["tools"]
        ]
    if "max_completion_tokens" in chat:
        body["max_output_tokens"] = chat["max_completion_tokens"]
    if "reasoning_effort" in chat:
        body["reasoning"] = {"effort": chat["reasoning_effort"]}
    if "response_format" in chat:
        given = chat["response_format"]
        schema = given.get("json_schema") if given.get("type") == "json_schema" else None
        body["text"] = {"format": {"type": "json_schema", **schema} if schema else {"type": given.get("type")}}
    return body


def _completion_filter(source: StoredCompletionsSource, record: EvalRecord, owner: str | None) -> CompletionFilter:
    """The run's selection, in the eval owner's scope: whoever starts the run (an all-owners key too), its
    items become readable by that owner, so they hold only that owner's completions."""
    metadata = source.metadata if source.metadata is not None else record.data_source_config.get("metadata") or {}
    try:
        return CompletionFilter(
            kind="response" if isinstance(source, ResponsesSource) else None,
            metadata=metadata,
            scores=source.scores or {},
            model=source.model,
            created_after=source.created_after,
            created_before=source.created_before,
            owner=record.owner if record.owner is not None else owner,
        )
    except ValidationError as exc:
        raise InvalidRequest(
            f"Invalid stored-completions source: {exc.errors()[0]['msg']}.", param="data_source.source"
        ) from None


def _input_messages(source: CompletionsRunDataSource, item: dict[str, Any]) -> list[dict[str, Any]]:
    messages = source.input_messages
    if messages is None or isinstance(messages, ItemReferenceInputMessages):
        path = messages.item_reference if messages is not None else "item.input"
        value: Any = item
        for key in path.split(".")[1:]:
            value = value.get(key) if isinstance(value, dict) else None
        if not isinstance(value, list) or not all(isinstance(m, dict) and "role" in m for m in value):
            return [{"role": "user", "content": "" if value is None else str(value)}]
        return value
    return render_messages([m.model_dump(exclude_none=True) for m in messages.template], item=item, sample=None)


def _as_sample(item: dict[str, Any], given: dict[str, Any]) -> dict[str, Any]:
    """A row's own sample; a ChatCompletion (OpenAI's cookbooks pass `completion.model_dump()`) answers
    with its first choice's message."""
    text = given.get("output_text")
    if text is None:
        text = content_text(_first_message(given).get("content"))
    inputs = item["input"] if isinstance(item.get("input"), list) else []
    return {
        **stored_sample(input_messages=inputs, output_text=str(text or ""), model=str(given.get("model", ""))),
        **given,
    }


def _first_message(completion: dict[str, Any]) -> dict[str, Any]:
    choices = completion.get("choices")
    first = choices[0] if isinstance(choices, list) and choices and isinstance(choices[0], dict) else {}
    message = first.get("message")
    return message if isinstance(message, dict) else {}


@dataclass(frozen=True)
class _Tally:
    """What counting one graded item needs, kept instead of the item itself (which may be megabytes)."""

    index: int
    status: str
    criteria: tuple[tuple[str, bool | None], ...]
    """(criterion, passed), None when it errored."""
    usage: tuple[tuple[str, dict[str, int]], ...]
    """(model, usage) of each call the item records (for counting a group a stopped delivery wrote)."""

    def count(self, run: RunRecord, *, sign: int = 1) -> None:
        """Add the item to the run's counts; `sign=-1` takes an erased one out. An erased line counts nothing."""
        if self.status == ERASED:
            return
        counts = run.result_counts
        counts.total += sign
        counts.passed += sign * (self.status == "pass")
        counts.failed += sign * (self.status == "fail")
        counts.errored += sign * (self.status == "error")
        for name, passed in self.criteria:
            criterion = run.per_criterion.setdefault(name, CriterionCounts())
            if passed is not None:
                criterion.passed += sign * passed
                criterion.failed += sign * (not passed)


_ERASED_ITEM = (b"", _Tally(index=-1, status=ERASED, criteria=(), usage=()))
"""An item whose completion was erased: nothing written, nothing counted, its position passed."""


def _tally(output: OutputItem, candidate: str | None = None) -> _Tally:
    """`candidate`: the deployment that answered the item, whose usage its sample records."""
    usage: list[tuple[str, dict[str, int]]] = []
    sample_usage = (output.sample or {}).get("usage")
    if candidate is not None and isinstance(sample_usage, dict) and output.sample_error is None:
        usage.append((candidate, {key: int(value or 0) for key, value in sample_usage.items()}))
    for result in output.results:
        usage.extend((name, dict(spent)) for name, spent in result.usage.items())
    return _Tally(
        index=output.index,
        status=output.status,
        criteria=tuple((r.name, None if r.error is not None else r.passed) for r in output.results),
        usage=tuple(usage),
    )


def _add_usage(run: RunRecord, usage: dict[str, dict[str, int]]) -> None:
    for model, spent in usage.items():
        total = run.per_model_usage.setdefault(model, ModelUsage())
        total.invocation_count += spent.get("invocation_count", 0)
        for key in ("prompt_tokens", "completion_tokens", "total_tokens", "cached_tokens"):
            setattr(total, key, getattr(total, key) + int(spent.get(key) or 0))
        run.tokens_used += int(spent.get("total_tokens") or 0)


def _set_items(run: RunRecord, total: int, digest: str | None) -> None:
    run.items_total = total
    run.lineage.completion_ids_digest = digest


def _next_part(run: RunRecord) -> None:
    """A delivery checkpoints: its continuation runs the next part."""
    run.part += 1
    run.delivery_open = False


def _after(ids: list[str], after: str | None) -> list[str]:
    if after is None:
        return ids
    return ids[ids.index(after) + 1 :] if after in ids else []


def _completion_id(line: bytes) -> str | None:
    """The stored completion an item line copies (None for other items and erased lines)."""
    row = _json_object(line) or {}
    item = row.get("item")
    value = item.get("completion_id") if isinstance(item, dict) else None
    return value if isinstance(value, str) else None


def _holder(run: RunRecord) -> str:
    """The run's name in the completion membership rows (datasets use their id; a run `<eval id>.<run id>`)."""
    return f"{run.eval_id}.{run.id}"


async def _take(entries: AsyncIterator[IndexEntry], count: int) -> AsyncIterator[IndexEntry]:
    for _ in range(count):
        entry = await anext(entries, None)
        if entry is None:
            return
        yield entry


def _json_object(line: bytes) -> dict[str, Any] | None:
    try:
        value = json.loads(line)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


class _ItemLines:
    """A delivery's view of the run's `items.jsonl`, read forward a chunk at a time.

    Only the lines from the run's counted point on are kept (the window holds each from the read
    budget while it grades it), so a delivery never holds the whole file (up to MAX_RUN_ITEM_BYTES).
    An erasure rewrites the file in place (an erased line per item), so `refresh` reads the new
    version and says which kept lines it erased.
    """

    def __init__(self, store: EvalStore, run: RunRecord) -> None:
        self._store, self._eval_id, self._run_id = store, run.eval_id, run.id
        self.total = run.items_total or 0
        self.version = ""
        self.erased: set[int] = set()
        """Kept lines an erasure rewrote after this delivery read them (their graded copies must go)."""
        self._keep_from = run.next_index
        self._lines: dict[int, bytes] = {}
        self._read = 0
        """Lines read from the current version so far (the index of the next)."""
        self._chunks: AsyncIterator[bytes] = _no_chunks()
        self._partial = b""

    @classmethod
    async def open(cls, store: EvalStore, run: RunRecord) -> _ItemLines:
        items = cls(store, run)
        await items._reopen(until=0)
        return items

    async def get(self, index: int) -> bytes:
        while self._read <= index:
            if not await self._next_lines():
                raise NotFound(f"Run '{self._run_id}' has fewer items than its state counts.")
        return self._lines[index]

    def size(self, index: int) -> int:
        """A kept line's size, 0 when it is not read yet."""
        return len(self._lines.get(index, b""))

    def drop_before(self, index: int) -> None:
        """Forget lines before the run's counted point: they are graded and written."""
        for old in range(self._keep_from, index):
            self._lines.pop(old, None)
        self._keep_from = max(self._keep_from, index)

    async def refresh(self) -> None:
        """Read the current version up to where this one was read; kept lines now erased are noted."""
        await self._reopen(until=self._read)

    async def _reopen(self, *, until: int) -> None:
        _, self._chunks, self.version = await self._store.open_items(self._eval_id, self._run_id)
        self._partial, read, self._read = b"", self._read, 0
        while self._read < until and await self._next_lines(replacing=read):
            pass

    async def _next_lines(self, *, replacing: int = 0) -> bool:
        """Read one more chunk's lines; False at the end. Lines below `replacing` were read before."""
        try:
            chunk = await anext(self._chunks, None)
        except RewrittenWhileRead:  # an erasure rewrote the items: read on in the new version
            await self._reopen(until=self._read)
            return True
        if chunk is None:
            if not self._partial:
                return False
            complete, self._partial = [self._partial], b""
        else:
            *complete, self._partial = (self._partial + chunk).split(b"\n")
        for line in complete:
            index, self._read = self._read, self._read + 1
            if index < self._keep_from:
                continue
            changed = index < replacing and index in self._lines and line != self._lines[index]
            if changed and (_json_object(line) or {}).get(ERASED):
                self.erased.add(index)
            self._lines[index] = line
        return True


async def _no_chunks() -> AsyncIterator[bytes]:
    return
    yield


class _Window:
    """One delivery's grading: a continuous window of items in flight, counted in groups.

    Up to twice `concurrency` items are in flight (their model calls share `concurrency` slots), a
    new one starting as soon as one ends, each holding its bytes from the read budget until it is
    written. Items end out of order; the longest run of consecutive ended items from the counted
    point is written as one group and counted (one blob write and one state write) every
    `save_every_items` items or `save_every_seconds`, or when its bytes reach `group_max_bytes`.
    A killed delivery loses only the items not yet written, which the next delivery grades again.

    No item starts after `chunk_seconds` from the delivery's start; items still in flight at
    `overrun_seconds` after that are stopped (not written), so a delivery ends well inside its
    message lock and two deliveries never grade at once.
    """

    def __init__(
        self,
        service: EvalService,
        run: RunRecord,
        etag: str,
        record: EvalRecord,
        request: RunCreateParams,
        items: _ItemLines,
        started: float,
    ) -> None:
        self.service, self.run, self.etag = service, run, etag
        self.record, self.request, self.items = record, request, items
        limits = service.limits
        self.limits = limits
        self.soft_deadline = started + limits.chunk_seconds
        self.hard_deadline = started + limits.chunk_seconds + limits.overrun_seconds
        self.meter = TokenMeter(cap=run.token_cap, used=run.tokens_used)
        self.calls = MeteredCalls(
            upstream=service.calls.upstream,
            max_attempts=service.calls.max_attempts,
            max_wait_seconds=service.calls.max_wait_seconds,
            backoff_seconds=service.calls.backoff_seconds,
            meter=self.meter,
            gate=asyncio.Semaphore(limits.concurrency),
        )
        self.in_flight: dict[asyncio.Task[tuple[bytes, _Tally] | None], tuple[int, int]] = {}
        self.ended: dict[int, tuple[tuple[bytes, _Tally] | None, int]] = {}
        """index -> (graded item or None when the cap refused it, budget bytes held)."""

    async def grade(self) -> Literal["done", "canceled", "token_cap", "time"]:
        budget = self.service.budget
        window = 2 * self.limits.concurrency
        ahead = window + self.limits.save_every_items
        next_start = first = self.run.next_index
        stop: Literal["done", "canceled", "token_cap", "time"] | None = None
        last_save = time.monotonic()
        try:
            while True:
                while stop is None and next_start < self.items.total and len(self.in_flight) < window:
                    if next_start >= self.run.next_index + ahead:
                        break  # a slow item holds the counted point: do not run far past it
                    if time.monotonic() >= self.soft_deadline and next_start > first:  # one item at least
                        stop = "time"
                    elif self.meter.exhausted:
                        stop = "token_cap"
                    elif self.run.cancel_requested:
                        stop = "canceled"
                    if stop is not None:
                        break
                    line = await self.items.get(next_start)
                    if not budget.fits(len(line)) and (self.in_flight or self.ended):
                        break  # wait for our own items to end and be written first
                    held = await budget.acquire(len(line))
                    task = asyncio.create_task(
                        self.service._grade_item(self.run, self.record, self.request, next_start, line, self.calls)
                    )
                    self.in_flight[task] = (next_start, held)
                    next_start += 1
                if not self.in_flight and not self.ended:
                    return stop or "done"
                now = time.monotonic()
                if self.in_flight:
                    wake = self.hard_deadline
                    if self._prefix_end() > self.run.next_index:  # something to write when it is time
                        wake = min(last_save + self.limits.save_every_seconds, wake)
                    finished, _ = await asyncio.wait(
                        self.in_flight, timeout=max(0.0, wake - now), return_when=asyncio.FIRST_COMPLETED
                    )
                    for task in finished:
                        index, held = self.in_flight.pop(task)
                        self.ended[index] = (task.result(), held)
                    if time.monotonic() >= self.hard_deadline and self.in_flight:
                        await self._stop_in_flight()
                        stop = "time"
                refused = await self._write_if_due(last_save, force=not self.in_flight or stop is not None)
                if refused is not None:
                    last_save = refused
                if self.run.cancel_requested and stop is None:
                    stop = "canceled"
                if self.meter.exhausted and stop is None:
                    stop = "token_cap"
                if not self.in_flight and self._prefix_end() == self.run.next_index:
                    # nothing runs, nothing more to write: what ended past a refused item is dropped
                    self._drop_ended()
                    if stop is not None or next_start >= self.items.total:
                        return stop or "done"
                    next_start = self.run.next_index
        finally:
            if self.in_flight:
                await self._stop_in_flight()
            self._drop_ended()
            usage = self.meter.take_usage()
            if usage:  # spent by items that were never written: still counted toward the cap
                with contextlib.suppress(DistilleryError, NotFound):
                    await self.service._add_usage_only(self.run, usage)

    def _prefix_end(self) -> int:
        end = self.run.next_index
        while end in self.ended and self.ended[end][0] is not None:
            end += 1
        return end

    async def _write_if_due(self, last_save: float, *, force: bool) -> float | None:
        """Write and count the consecutive ended items if it is time; returns when it wrote."""
        start, end = self.run.next_index, self._prefix_end()
        if end == start:
            return None
        graded = [item for index in range(start, end) if (item := self.ended[index][0]) is not None]
        size = sum(len(data) for data, _ in graded)
        due = (
            force
            or end - start >= self.limits.save_every_items
            or time.monotonic() - last_save >= self.limits.save_every_seconds
            or size >= self.limits.group_max_bytes
            or not self.service.budget.fits(self.items.size(end))
        )
        if not due:
            return None
        data = b"\n".join(item[0] for item in graded if item[0])
        store = self.service.store
        try:
            await store.write_group(self.run.eval_id, self.run.id, start, end, data)
        except Superseded:  # another delivery wrote this range: it is running, so this one stops
            raise
        finally:
            for index in range(start, end):
                self.service.budget.release(self.ended.pop(index)[1])
        tallies = [item[1] for item in graded]
        self.run, self.etag = await self.service._count_group(
            self.run, self.etag, start, end, tallies, self.meter.take_usage()
        )
        self.meter.used = max(self.meter.used, self.run.tokens_used)
        await self._erase_late(start, end)
        self.items.drop_before(self.run.next_index)
        return time.monotonic()

    async def _erase_late(self, start: int, end: int) -> None:
        """Erase from the group just written the items an erasure rewrote after this delivery read them.

        The erasure rewrites the items first and looks for output groups after, so a group written
        after it looked was written before the check here (one HEAD request per group), which then
        sees the new version. Both may erase the same item: the later one finds nothing to do."""
        store = self.service.store
        if await store.items_version(self.run.eval_id, self.run.id) != self.items.version:
            await self.items.refresh()
        late = sorted(index for index in self.items.erased if start <= index < end)
        if not late:
            return
        for index in late:
            await self.service._erase_output(self.run.eval_id, self.run.id, index)
        self.run, self.etag = await store.read_run(self.run.eval_id, self.run.id)

    async def _stop_in_flight(self) -> None:
        tasks = list(self.in_flight)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for task in tasks:
            self.service.budget.release(self.in_flight.pop(task)[1])

    def _drop_ended(self) -> None:
        for index in list(self.ended):
            self.service.budget.release(self.ended.pop(index)[1])
