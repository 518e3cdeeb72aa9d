"""The eval service the HTTP functions and the eval queue trigger call.

A run is graded on the job queue, a batch of `concurrency` items at a time: each item is answered
by the candidate deployment (or keeps the answer its source holds), graded by every criterion and
written once as `output/<index>.json`; then the run's counts advance, conditional on the ETag read.
A delivery that outlives its time budget checkpoints and queues a continuation; a redelivered
message finds the items already written and counts them exactly once; a delivery that keeps
failing marks the run failed on its last try, and the queue dead-letters the message.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, ValidationError

from shared.datasets import formats
from shared.datasets.records import DatasetRecords
from shared.evals.compare import compare_runs
from shared.evals.graders import (
    LabelModelGrader,
    ScoreModelGrader,
    TextSimilarityGrader,
    check_templates,
    grade,
    make_sample,
    parse_testing_criteria,
    stored_sample,
)
from shared.evals.params import (
    DATASET_FILE_ID,
    MAX_RUN_ITEM_BYTES,
    MAX_RUN_ITEMS,
    CompletionsRunDataSource,
    CustomDataSourceConfig,
    EvalCreateParams,
    EvalUpdateParams,
    FileContentSource,
    FileIdSource,
    ItemReferenceInputMessages,
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
    new_id,
    output_item_index,
)
from shared.evals.templates import check_variables, content_text, render_messages
from shared.platform.errors import DistilleryError, InvalidRequest, NotFound
from shared.platform.job_queue import JobQueue
from shared.platform.telemetry import JobChunk, job_chunk
from shared.store.completion_filter import CompletionFilter
from shared.store.completion_store import CompletionStore
from shared.store.json_blobs import Superseded
from shared.upstream.model_calls import ModelCalls, UpstreamCallFailed

log = logging.getLogger(__name__)

EVAL_ID = re.compile(r"eval_[0-9a-f]{32}")
RUN_ID = re.compile(r"evalrun_[0-9a-f]{32}")
FINE_TUNING_JOB_METADATA = "fine_tuning_job"
"""Run metadata key linking a run to the fine-tuning job whose model its deployment serves (Azure
deploys a fine-tuned model under a deployment name of its own)."""
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
        calls: ModelCalls,
        job_queue: JobQueue,
        queue_name: str,
        limits: EvalLimits,
        fine_tuning_job_of: Callable[[str, str | None], Awaitable[str | None]] | None = None,
    ) -> None:
        self.store = store
        self._fine_tuning_job_of = fine_tuning_job_of
        self._completions = completions
        self._datasets = datasets
        self._calls = calls
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
                "type": "stored_completions",
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
            with contextlib.suppress(Superseded):
                await self.store.save_eval(record, etag)
                return record

    async def delete_eval(self, eval_id: str, *, owner: str | None) -> None:
        await self._visible_eval(eval_id, owner)
        await self.store.delete_tree(f"{eval_id}/")

    async def list_evals(
        self, *, after: str | None, limit: int, order: str, owner: str | None
    ) -> tuple[list[EvalRecord], bool]:
        ids = await self.store.ids("")
        page: list[EvalRecord] = []
        for eval_id in _after(ids if order == "desc" else ids[::-1], after):
            if not EVAL_ID.fullmatch(eval_id):
                continue
            with contextlib.suppress(NotFound):
                record, _ = await self.store.read_eval(eval_id)
                if record.visible_to(owner):
                    if len(page) == limit:
                        return page, True
                    page.append(record)
        return page, False

    # Runs.

    async def create_run(
        self, eval_id: str, params: RunCreateParams, *, owner: str | None, report_base: str
    ) -> tuple[RunRecord, RunCreateParams]:
        record, _ = await self._visible_eval(eval_id, owner)
        source = params.data_source.source
        model = params.data_source.model if isinstance(params.data_source, CompletionsRunDataSource) else None
        lineage = Lineage(model=model)
        if model is not None and self._fine_tuning_job_of is not None:
            named = (params.metadata or {}).get(FINE_TUNING_JOB_METADATA)
            lineage.fine_tuning_job_id = await self._fine_tuning_job_of(named or model, owner)
            if named and lineage.fine_tuning_job_id is None:
                raise InvalidRequest(
                    f"metadata.{FINE_TUNING_JOB_METADATA} names no fine-tuning job: '{named}'.",
                    param=f"metadata.{FINE_TUNING_JOB_METADATA}",
                )
        if isinstance(source, FileIdSource):
            lineage.dataset_id = await self._check_dataset_file(source, owner)
        elif isinstance(source, StoredCompletionsSource):
            lineage.completion_filter = _completion_filter(source, record, owner).model_dump(exclude_none=True)
        self._check_run_templates(record, params)
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
        """Stop a run: at once when it has not started, else after the batch in flight (results kept)."""
        await self._visible_run(eval_id, run_id, owner)
        while True:
            run, etag = await self.store.read_run(eval_id, run_id)
            if run.finished:
                return run
            if run.status is RunStatus.QUEUED:
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
        await self._visible_run(eval_id, run_id, owner)
        indexes = await self.store.output_indexes(eval_id, run_id)
        if order == "desc":
            indexes.reverse()
        if after is not None:
            position = output_item_index(run_id, after)
            if position is None:
                raise InvalidRequest("'after' is not an output item id of this run.", param="after")
            indexes = [i for i in indexes if (i > position if order == "asc" else i < position)]
        page: list[OutputItem] = []
        for index in indexes:
            item = await self.store.read_output(eval_id, run_id, index)
            if status is None or item.status == status:
                if len(page) == limit:
                    return page, True
                page.append(item)
        return page, False

    async def output_item(self, eval_id: str, run_id: str, item_id: str, *, owner: str | None) -> OutputItem:
        await self._visible_run(eval_id, run_id, owner)
        index = output_item_index(run_id, item_id)
        if index is None:
            raise NotFound(f"No output item found with id '{item_id}'.", param="output_item_id")
        return await self.store.read_output(eval_id, run_id, index)

    async def compare(self, eval_id: str, run_ids: list[str], *, owner: str | None) -> dict[str, Any]:
        """Per criterion, over the items both runs graded: wins, losses, ties and the pass-rate delta (b - a)."""
        if len(run_ids) != 2 or run_ids[0] == run_ids[1]:
            raise InvalidRequest("'runs' must name two different runs of this eval: runs=<a>,<b>.", param="runs")
        record, _ = await self._visible_eval(eval_id, owner)
        runs = [await self._visible_run(eval_id, run_id, owner) for run_id in run_ids]
        for run in runs:
            if not run.finished:
                raise InvalidRequest(f"Run '{run.id}' is still {run.status}; compare finished runs.", param="runs")
        outputs = [await self._all_outputs(eval_id, run.id) for run in runs]
        return compare_runs(record, runs, outputs)

    # The queue.

    async def handle(self, body: bytes, *, delivery_count: int) -> None:
        """One queue delivery; raising makes the queue retry, and finally dead-letter, the message."""
        try:
            message = EvalJobMessage.model_validate_json(body)
        except ValidationError as exc:
            log.error("Invalid eval job message: %s", exc.errors(include_input=False, include_url=False)[:3])
            raise
        try:
            with job_chunk("eval_run", message.run_id, part=message.part) as chunk:
                chunk.span.set_attribute("distillery.eval_id", message.eval_id)
                await self._run(message, chunk)
        except Superseded:
            log.info("Eval run %s: another delivery advanced, cancelled or deleted it", message.run_id)
        except Exception as exc:
            final = delivery_count >= self.limits.max_delivery_count
            reason = exc.message if isinstance(exc, DistilleryError) else f"unexpected {type(exc).__name__}"
            log.warning(
                "Eval run %s: delivery %s failed (final: %s): %s", message.run_id, delivery_count, final, reason
            )
            if final:
                error = RunError(code="run_failed", message=f"The run failed {delivery_count} times: {reason}")
                await self._settle_failure(message.eval_id, message.run_id, error)
            raise

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
        record, _ = await self.store.read_eval(run.eval_id)
        request = await self.store.read_request(run.eval_id, run.id)
        if run.status is RunStatus.QUEUED:
            run.status = RunStatus.IN_PROGRESS
        run.deliveries += 1
        etag = await self.store.save_run(run, etag)
        items = await self._items(run, record, request)
        if run.items_total is None:
            run.items_total = len(items)
            run.lineage.completion_ids_digest = _ids_digest(items) if run.lineage.completion_filter else None
            etag = await self.store.save_run(run, etag)
        graded = set(await self.store.output_indexes(run.eval_id, run.id))  # by deliveries cut off before counting
        started, first = time.monotonic(), run.next_index
        while run.next_index < len(items):
            if run.cancel_requested:
                return await self._finish(run, etag, RunStatus.CANCELED)
            if run.tokens_used >= run.token_cap:
                message_text = (
                    f"The run used {run.tokens_used} tokens, reaching its cap of {run.token_cap}: it stopped after "
                    f"{run.next_index} of {len(items)} items, whose results are kept."
                )
                run.error = RunError(code="token_cap_reached", message=message_text)
                return await self._finish(run, etag, RunStatus.FAILED)
            batch = range(run.next_index, min(len(items), run.next_index + self.limits.concurrency))
            outputs = await asyncio.gather(
                *(self._output(run, record, request, index, items[index], index in graded) for index in batch)
            )
            run, etag = await self._advance(run, etag, batch, outputs)
            chunk.items = run.next_index - first
            if run.next_index < len(items) and time.monotonic() - started > self.limits.chunk_seconds:
                run.part += 1
                await self.store.save_run(run, etag)
                await self._send(message.model_copy(update={"part": run.part}))
                return None
        return await self._finish(run, etag, RunStatus.CANCELED if run.cancel_requested else RunStatus.COMPLETED)

    async def _finish(self, run: RunRecord, etag: str, status: RunStatus) -> None:
        run.status = status
        await self.store.save_run(run, etag)
        log.info("Eval run %s %s: %s", run.id, status, run.result_counts.model_dump())

    async def _advance(
        self, run: RunRecord, etag: str, batch: range, outputs: list[OutputItem]
    ) -> tuple[RunRecord, str]:
        """Count a graded batch exactly once: only onto the state that still ends where the batch starts."""
        while True:
            if run.next_index != batch.start or run.finished:
                raise Superseded(run.id)
            updated = run.model_copy(deep=True)
            for output in outputs:
                _count(updated, output)
            updated.next_index = batch.stop
            try:
                return updated, await self.store.save_run(updated, etag)
            except Superseded:
                run, etag = await self.store.read_run(run.eval_id, run.id)  # a cancel landed: count onto it

    async def _output(
        self, run: RunRecord, record: EvalRecord, request: RunCreateParams, index: int, line: bytes, graded: bool
    ) -> OutputItem:
        if graded:
            return await self.store.read_output(run.eval_id, run.id, index)
        row = json.loads(line)
        item, given_sample = row["item"], row.get("sample")
        sample: dict[str, Any] | None
        sample_error = None
        source = request.data_source
        if isinstance(source, CompletionsRunDataSource) and source.model is not None:
            sample, sample_error = await self._answer(source, item)
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
                    calls=self._calls,
                    embeddings_deployment=self.limits.embeddings_deployment,
                )
                for criterion in record.testing_criteria
            )
        )
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
        return await self.store.write_output(output)

    async def _answer(
        self, source: CompletionsRunDataSource, item: dict[str, Any]
    ) -> tuple[dict[str, Any], str | None]:
        """The candidate's sample for an item, or the sample of an error when the upstream refused."""
        assert source.model is not None
        messages = _input_messages(source, item)
        body: dict[str, Any] = {"messages": messages}
        if source.sampling_params is not None:
            body.update(source.sampling_params.model_dump(exclude_none=True))
        try:
            completion = await self._calls.chat(deployment=source.model, body=body)
        except UpstreamCallFailed as exc:
            error = f"The candidate call failed (HTTP {exc.upstream_status}, {exc.code}): {exc.message}"
            return make_sample(input_messages=messages, completion=None, error=error), error
        sample = make_sample(input_messages=messages, completion=completion)
        params = source.sampling_params
        if params is not None:
            sample.update(params.model_dump(include={"seed", "temperature", "top_p", "max_completion_tokens"}))
        return sample, None

    async def _items(self, run: RunRecord, record: EvalRecord, request: RunCreateParams) -> list[bytes]:
        """The run's items, fixed on its first delivery (so later deliveries grade the same ones)."""
        if run.items_total is None:
            lines = await self._collect_items(record, request, run.owner)
            await self.store.write_items(run.eval_id, run.id, b"".join(lines))
        return (await self.store.read_items(run.eval_id, run.id)).splitlines()

    async def _collect_items(self, record: EvalRecord, request: RunCreateParams, owner: str | None) -> list[bytes]:
        source = request.data_source.source
        if isinstance(source, FileContentSource):
            return [formats.jsonl_line(row.model_dump(exclude_none=True)) for row in source.content]
        if isinstance(source, FileIdSource):
            return await self._dataset_rows(source)
        selection = _completion_filter(source, record, owner)
        lines: list[bytes] = []
        size = 0
        # One document at a time, its bytes held from the store's read budget while it is parsed.
        async for entry in self._completions.index.walk(selection):
            if len(lines) == (source.limit or MAX_RUN_ITEMS):
                break
            try:
                completion = await self._completions.get(entry.id)
            except NotFound:
                continue
            output = formats.assistant_output(completion)
            if isinstance(output, dict) and selection.matches(
                created=completion.created,
                deployment=completion.deployment,
                model=completion.model,
                metadata=completion.metadata,
                owner=completion.owner,
                scores=completion.score_values(),
            ):
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

    async def _all_outputs(self, eval_id: str, run_id: str) -> dict[int, OutputItem]:
        gate = asyncio.Semaphore(32)

        async def read(index: int) -> OutputItem:
            async with gate:
                return await self.store.read_output(eval_id, run_id, index)

        indexes = await self.store.output_indexes(eval_id, run_id)
        return {item.index: item for item in await asyncio.gather(*(read(index) for index in indexes))}

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

    async def _check_deployments(self, record: EvalRecord, model: str | None) -> None:
        """Every deployment the run will call answers (a 404 is a 400 now, not errors on every item later)."""
        probe = replace(self._calls, max_attempts=1)
        wanted: dict[str, str] = {}
        if model is not None:
            wanted[model] = "data_source.model"
        for position, criterion in enumerate(record.testing_criteria):
            if isinstance(criterion, LabelModelGrader | ScoreModelGrader):
                wanted.setdefault(criterion.model, f"testing_criteria[{position}].model")
        ping = {"messages": [{"role": "user", "content": "ping"}], "max_tokens": 1}
        checks: list[tuple[str, str, Any]] = [
            (name, param, probe.chat(deployment=name, body=ping)) for name, param in wanted.items()
        ]
        if any(
            isinstance(c, TextSimilarityGrader) and c.evaluation_metric == "cosine" for c in record.testing_criteria
        ):
            deployment = self.limits.embeddings_deployment
            checks.append(
                (deployment, "EVAL_EMBEDDINGS_DEPLOYMENT", probe.embed(deployment=deployment, texts=["ping"]))
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


def _schema(item_schema: dict[str, Any], *, sample: bool) -> dict[str, Any]:
    properties = {"item": item_schema} | ({"sample": SAMPLE_SCHEMA} if sample else {})
    return {"type": "object", "properties": properties, "required": list(properties)}


def _completion_filter(source: StoredCompletionsSource, record: EvalRecord, owner: str | None) -> CompletionFilter:
    metadata = source.metadata if source.metadata is not None else record.data_source_config.get("metadata") or {}
    try:
        return CompletionFilter(
            metadata=metadata,
            scores=source.scores or {},
            model=source.model,
            created_after=source.created_after,
            created_before=source.created_before,
            owner=owner,
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
    text = given.get("output_text")
    inputs = item["input"] if isinstance(item.get("input"), list) else []
    return {
        **stored_sample(input_messages=inputs, output_text=str(text or ""), model=str(given.get("model", ""))),
        **given,
    }


def _count(run: RunRecord, output: OutputItem) -> None:
    counts = run.result_counts
    counts.total += 1
    status = output.status
    counts.passed += status == "pass"
    counts.failed += status == "fail"
    counts.errored += status == "error"
    for result in output.results:
        criterion = run.per_criterion.setdefault(result.name, CriterionCounts())
        if result.error is None:
            criterion.passed += result.passed
            criterion.failed += not result.passed
    sample_usage = (output.sample or {}).get("usage") if run.model != STORED_ANSWERS_MODEL else None
    if isinstance(sample_usage, dict):
        _add_usage(run, run.model, sample_usage)
    for result in output.results:
        for model, usage in result.usage.items():
            _add_usage(run, model, usage)


def _add_usage(run: RunRecord, model: str, usage: dict[str, Any]) -> None:
    total = run.per_model_usage.setdefault(model, ModelUsage())
    total.invocation_count += 1
    for key in ("prompt_tokens", "completion_tokens", "total_tokens", "cached_tokens"):
        setattr(total, key, getattr(total, key) + int(usage.get(key) or 0))
    run.tokens_used += int(usage.get("total_tokens") or 0)


def _after(ids: list[str], after: str | None) -> list[str]:
    if after is None:
        return ids
    return ids[ids.index(after) + 1 :] if after in ids else []


def _ids_digest(items: list[bytes]) -> str:
    digest = hashlib.sha256()
    for line in items:
        digest.update(str(json.loads(line)["item"].get("completion_id", "")).encode() + b"\n")
    return digest.hexdigest()


def _json_object(line: bytes) -> dict[str, Any] | None:
    try:
        value = json.loads(line)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None
