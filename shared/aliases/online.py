"""Online evals: grade a sampled share of an alias's live calls, off the request path.

The capture path does nothing for them. The completion indexer, which runs after the fact on
blob-created events, hands each batch of newly indexed calls to `sample`: a call made through an alias
with online evals is picked when a hash of its id falls under the alias's `sample_rate` (so a
redelivered batch picks the same calls), and one message per alias and batch goes to
ONLINE_EVALS_QUEUE. `handle` grades those calls with the alias's graders and adds the verdicts to
hourly tallies per serving deployment (`online/<alias>.json`, the message id recorded with them, so a
redelivery counts nothing twice). When the alias sets an alert and a deployment other than the
fallback passes less than its threshold over the alert window, the alias is rolled back, recorded in
its history as an automatic rollback with the reason.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import time
from collections import defaultdict
from collections.abc import Iterable
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from shared.aliases.records import AliasRecord, OnlineEval, RollbackParams
from shared.aliases.routes import tallies_blob_name
from shared.aliases.service import Aliases
from shared.datasets import formats
from shared.evals.graders import (
    LabelModelGrader,
    ScoreModelGrader,
    TestingCriterion,
    TextSimilarityGrader,
    grade,
    stored_sample,
)
from shared.evals.metrics import TextMetrics
from shared.platform.access import Caller
from shared.platform.errors import Conflict, NotFound, StorageUnavailable
from shared.platform.job_queue import JobQueue
from shared.platform.telemetry import ALIAS, DEPLOYMENT, online_graded, online_pass_rates
from shared.store import ids
from shared.store.completion_index import IndexEntry
from shared.store.completion_store import CompletionStore
from shared.store.json_blobs import JsonBlobs, Superseded
from shared.upstream.model_calls import ModelCalls

log = logging.getLogger(__name__)

BUCKET_SECONDS = 3600
KEPT_BUCKETS = 30 * 24
"""Hourly buckets kept per deployment (30 days)."""
KEPT_MESSAGES = 500
"""Message ids remembered per alias, so a redelivery is not counted again."""
MAX_CALLS_PER_MESSAGE = 100
GRADING_CONCURRENCY = 8
AUTOMATIC = "online-eval"
"""Who an automatic rollback is recorded as."""
Outcome = Literal["passed", "failed", "errored"]


class OnlineEvalMessage(BaseModel):
    """The online-evals queue's message body (JSON): calls of one alias to grade."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    version: Literal[1] = 1
    alias: str
    completion_ids: list[str] = Field(min_length=1, max_length=MAX_CALLS_PER_MESSAGE)

    @property
    def message_id(self) -> str:
        digest = hashlib.sha256("\0".join([self.alias, *self.completion_ids]).encode()).hexdigest()
        return f"online-{digest[:40]}"


class Bucket(BaseModel):
    """One hour (by capture time) of one serving deployment's graded calls."""

    start: int
    deployment: str
    passed: int = 0
    failed: int = 0
    errored: int = 0
    """Calls a grader could not grade (a grader model failed): neither passed nor failed."""


class Tallies(BaseModel):
    """`online/<alias>.json` in ALIASES_CONTAINER."""

    alias: str
    buckets: list[Bucket] = Field(default_factory=list)
    messages: list[str] = Field(default_factory=list)


def sampled(completion_id: str, rate: float) -> bool:
    """Whether this call is in the graded share (the same answer every time for the same id)."""
    point = int.from_bytes(hashlib.sha256(completion_id.encode()).digest()[:8], "big") / 2**64
    return point < rate


def bucket_start(at: int) -> int:
    return at - at % BUCKET_SECONDS


def pass_rate(passed: int, failed: int) -> float | None:
    return None if passed + failed == 0 else passed / (passed + failed)


class OnlineEvals:
    def __init__(
        self,
        *,
        aliases: Aliases,
        blobs: JsonBlobs,
        completions: CompletionStore,
        job_queue: JobQueue,
        queue_name: str,
        calls: ModelCalls,
        metrics: TextMetrics,
        embeddings_deployment: str,
    ) -> None:
        self._aliases = aliases
        self._blobs = blobs
        self._completions = completions
        self._queue = job_queue
        self._queue_name = queue_name
        self._calls = calls
        self._metrics = metrics
        self._embeddings_deployment = embeddings_deployment

    def require_caller_may_grade(self, online: OnlineEval, caller: Caller) -> None:
        """Grading online spends inference on the grader models: setting it up needs what an eval run
        calling them needs (the `inference` right, and a key's allow-list covering them)."""
        called: dict[str, str] = {}
        for position, criterion in enumerate(online.criteria()):
            if isinstance(criterion, LabelModelGrader | ScoreModelGrader):
                called.setdefault(criterion.model, f"online_eval.testing_criteria[{position}].model")
            elif isinstance(criterion, TextSimilarityGrader) and criterion.evaluation_metric == "cosine":
                called.setdefault(self._embeddings_deployment, "EVAL_EMBEDDINGS_DEPLOYMENT")
        caller.require_calls(called, needed_by="online grading")

    async def sample(self, entries: Iterable[IndexEntry]) -> int:
        """Queue the sampled share of these newly indexed calls for grading; returns how many were picked.

        A queue that cannot be reached loses this batch's samples (logged): grading is a sample anyway,
        and the index must not wait on it."""
        picked: dict[str, list[str]] = defaultdict(list)
        for entry in entries:
            if entry.served_by is None:  # not made through an alias
                continue
            record = await self._aliases.routes.alias(entry.deployment)
            if (
                record is not None
                and record.online_eval is not None
                and sampled(entry.id, record.online_eval.sample_rate)
            ):
                picked[entry.deployment].append(entry.id)
        for alias, completion_ids in picked.items():
            for first in range(0, len(completion_ids), MAX_CALLS_PER_MESSAGE):
                message = OnlineEvalMessage(
                    alias=alias, completion_ids=completion_ids[first : first + MAX_CALLS_PER_MESSAGE]
                )
                try:
                    await self._queue.send(self._queue_name, message.model_dump_json(), message_id=message.message_id)
                except StorageUnavailable as exc:
                    log.warning(
                        "%s sampled calls of alias '%s' not graded: %s", len(message.completion_ids), alias, exc
                    )
        return sum(map(len, picked.values()))

    async def handle(self, body: bytes) -> None:
        """One queue delivery: grade the calls, count the verdicts, roll back when the alert says so."""
        try:
            message = OnlineEvalMessage.model_validate_json(body)
        except ValidationError as exc:
            log.error("Invalid online eval message: %s", exc.errors(include_input=False, include_url=False)[:3])
            raise
        try:
            record = await self._aliases.get(message.alias)
        except NotFound:
            log.info("Online eval message for alias '%s', which no longer exists: dropped", message.alias)
            return
        if record.online_eval is None:
            return
        criteria = record.online_eval.criteria()
        gate = asyncio.Semaphore(GRADING_CONCURRENCY)

        async def one(completion_id: str) -> tuple[str, int, Outcome] | None:
            async with gate:
                return await self._grade(completion_id, criteria)

        counts: dict[tuple[str, int], dict[Outcome, int]] = defaultdict(lambda: defaultdict(int))
        for verdict in await asyncio.gather(*map(one, message.completion_ids)):
            if verdict is not None:
                deployment, start, outcome = verdict
                counts[deployment, start][outcome] += 1
        tallies, added = await self._add(message, counts)
        if added:
            for (deployment, _), outcomes in counts.items():
                for outcome, count in outcomes.items():
                    online_graded.add(count, {ALIAS: record.name, DEPLOYMENT: deployment, "outcome": outcome})
        await self._check_alert(record, tallies)

    async def view(self, name: str, *, hours: int) -> dict[str, Any]:
        """Pass rate per serving deployment over the last `hours` hourly buckets, and bucket by bucket."""
        record = await self._aliases.get(name)
        tallies = await self._read(name)
        since = bucket_start(int(time.time())) - (hours - 1) * BUCKET_SECONDS
        per_deployment: dict[str, list[Bucket]] = defaultdict(list)
        for bucket in tallies.buckets:
            if bucket.start >= since:
                per_deployment[bucket.deployment].append(bucket)
        data = []
        for deployment, buckets in sorted(per_deployment.items()):
            passed, failed, errored = (
                sum(getattr(b, field) for b in buckets) for field in ("passed", "failed", "errored")
            )
            data.append(
                {
                    "deployment": deployment,
                    "passed": passed,
                    "failed": failed,
                    "errored": errored,
                    "pass_rate": pass_rate(passed, failed),
                    "buckets": [
                        {**b.model_dump(exclude={"deployment"}), "pass_rate": pass_rate(b.passed, b.failed)}
                        for b in sorted(buckets, key=lambda b: b.start)
                    ],
                }
            )
        online = record.online_eval
        return {
            "object": "alias.online_evals",
            "alias": name,
            "hours": hours,
            "sample_rate": None if online is None else online.sample_rate,
            "alert": None if online is None or online.alert is None else online.alert.model_dump(),
            "data": data,
        }

    async def _grade(self, completion_id: str, criteria: list[TestingCriterion]) -> tuple[str, int, Outcome] | None:
        try:
            completion = await self._completions.get(completion_id)
        except NotFound:
            return None  # deleted since it was captured
        output = formats.assistant_output(completion)
        if not isinstance(output, dict):
            return None  # nothing to grade (cut off, filtered, empty)
        line = formats.evaluation_line(completion, output)
        item = line["item"]
        sample = stored_sample(
            input_messages=item["input"], output_text=line["sample"]["output_text"], model=completion.model
        )
        results = await asyncio.gather(
            *(
                grade(
                    criterion,
                    item=item,
                    sample=sample,
                    calls=self._calls,
                    metrics=self._metrics,
                    embeddings_deployment=self._embeddings_deployment,
                )
                for criterion in criteria
            )
        )
        outcome: Outcome
        if any(result.error is not None for result in results):
            outcome = "errored"
        else:
            outcome = "passed" if all(result.passed for result in results) else "failed"
        start = bucket_start(ids.captured_at_us(completion_id) // 1_000_000)
        return completion.served_by or completion.deployment, start, outcome

    async def _read(self, name: str) -> Tallies:
        try:
            data, _ = await self._blobs.get(tallies_blob_name(name), missing=name)
        except NotFound:
            return Tallies(alias=name)
        return Tallies.model_validate_json(data)

    async def _add(
        self, message: OnlineEvalMessage, counts: dict[tuple[str, int], dict[Outcome, int]]
    ) -> tuple[Tallies, bool]:
        """Add the verdicts to the alias's tallies once (False when a delivery before this one did)."""
        blob = tallies_blob_name(message.alias)
        while True:
            try:
                data, etag = await self._blobs.get(blob, missing=message.alias)
                tallies: Tallies = Tallies.model_validate_json(data)
            except NotFound:
                tallies, etag = Tallies(alias=message.alias), None
            if message.message_id in tallies.messages:
                return tallies, False
            buckets = {(b.deployment, b.start): b for b in tallies.buckets}
            for (deployment, start), outcomes in counts.items():
                bucket = buckets.setdefault((deployment, start), Bucket(start=start, deployment=deployment))
                for outcome, count in outcomes.items():
                    setattr(bucket, outcome, getattr(bucket, outcome) + count)
            oldest = bucket_start(int(time.time())) - KEPT_BUCKETS * BUCKET_SECONDS
            tallies.buckets = sorted(
                (b for b in buckets.values() if b.start > oldest), key=lambda b: (b.start, b.deployment)
            )
            tallies.messages = [*tallies.messages, message.message_id][-KEPT_MESSAGES:]
            with contextlib.suppress(Superseded):
                await self._blobs.put(blob, tallies.model_dump_json(), create=etag is None, etag=etag)
                return tallies, True

    async def _check_alert(self, record: AliasRecord, tallies: Tallies) -> None:
        online = record.online_eval
        assert online is not None
        hours = online.alert.window_hours if online.alert is not None else 1
        since = bucket_start(int(time.time())) - (hours - 1) * BUCKET_SECONDS
        window: dict[str, list[int]] = defaultdict(lambda: [0, 0])
        for bucket in tallies.buckets:
            if bucket.start >= since:
                window[bucket.deployment][0] += bucket.passed
                window[bucket.deployment][1] += bucket.failed
        for deployment, (passed, failed) in window.items():
            rate = pass_rate(passed, failed)
            if rate is not None:
                online_pass_rates.rates[record.name, deployment] = rate
        alert = online.alert
        if alert is None:
            return
        for target in record.targets:
            passed, failed = window.get(target.deployment, (0, 0))
            rate = pass_rate(passed, failed)
            if target.deployment == record.fallback or rate is None or passed + failed < alert.min_samples:
                continue
            if rate < alert.min_pass_rate:
                reason = (
                    f"online pass rate of '{target.deployment}' is {rate * 100:.1f}% over {passed + failed} graded "
                    f"calls in the last {hours} h, under the alert threshold of {alert.min_pass_rate * 100:.1f}%"
                )
                with contextlib.suppress(Conflict):
                    await self._aliases.rollback(
                        record.name,
                        RollbackParams(reason=reason),
                        by=AUTOMATIC,
                        automatic=True,
                        unless_gone=target.deployment,
                    )
                    log.warning("Alias '%s' rolled back automatically: %s", record.name, reason)
