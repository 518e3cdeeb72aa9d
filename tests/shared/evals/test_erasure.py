"""A deleted stored completion (API delete, purge, retention) leaves no copy in an eval run: its item
is erased from `items.jsonl`, its output item deleted and taken out of the counts."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from shared.datasets.job import DatasetParams, DatasetStatus
from shared.erasure.retention import RetentionSweep
from shared.evals.params import EvalCreateParams, RunCreateParams
from shared.evals.records import RunRecord, RunStatus
from shared.evals.service import _ItemLines
from shared.services import Services
from tests.fakes import FakeUpstream, Reply
from tests.shared.evals.test_service import drain, output_indexes, receive, services, state, with_limits
from tests.shared.queues import take_message
from tests.shared.seed import completion

__all__ = ["services"]

SAME = {
    "type": "string_check",
    "name": "same",
    "input": "{{sample.output_text}}",
    "reference": "{{item.reference}}",
    "operation": "eq",
}


async def graded_run(
    services: Services, tag: str, texts: list[str], *, days_ago: float = 0
) -> tuple[list[str], RunRecord]:
    ids = []
    for text in texts:
        stored = completion(metadata={"tag": tag}, text=text, days_ago=days_ago)
        await services.store.put(stored)
        ids.append(stored.id)
    config = {"type": "stored_completions", "metadata": {"tag": tag}}
    record = await services.evals.create_eval(
        EvalCreateParams.model_validate({"data_source_config": config, "testing_criteria": [SAME]}), owner=None
    )
    source = {"type": "completions", "source": {"type": "stored_completions", "metadata": {"tag": tag}}}
    run, _ = await services.evals.create_run(
        record.id, RunCreateParams.model_validate({"data_source": source}), owner=None, report_base="http://t"
    )
    await drain(services)
    return ids, run


async def run_blobs(services: Services, run: RunRecord) -> bytes:
    prefix = f"{run.eval_id}/runs/{run.id}/"
    data = b""
    async for name in services.evals_container.list_blob_names(name_starts_with=prefix):
        data += await (await services.evals_container.download_blob(name)).readall()
    return data


async def test_a_deleted_completion_is_erased_from_eval_runs(services: Services, tag: str) -> None:
    ids, run = await graded_run(services, tag, ["keep one", "forget me", "keep two"])
    assert b"forget me" in await run_blobs(services, run)
    assert (await state(services, run)).result_counts.total == 3

    await services.forgetting.delete(ids[1])

    assert b"forget me" not in await run_blobs(services, run)
    done = await state(services, run)
    assert done.status is RunStatus.COMPLETED and done.items_total == 3
    assert done.result_counts.model_dump() == {"total": 2, "passed": 2, "failed": 0, "errored": 0}
    assert done.per_criterion["same"].passed == 2
    assert await output_indexes(services, run) == [0, 2]
    items = (await services.evals.store.read_items(run.eval_id, run.id)).splitlines()
    assert len(items) == 3 and items[1] == b'{"erased":true}'


async def test_retention_reaches_eval_runs(services: Services, tag: str) -> None:
    _, old_run = await graded_run(services, tag, ["ancient"], days_ago=400)
    assert b"ancient" in await run_blobs(services, old_run)
    sweep = RetentionSweep(
        store=services.store, indexer=services.indexer, retention_days=365, on_deleted=services.forgetting.deleted
    )
    result = await sweep.run()
    assert result.deleted_count >= 1
    assert b"ancient" not in await run_blobs(services, old_run)
    assert (await state(services, old_run)).result_counts.total == 0


async def test_an_item_erased_before_it_is_graded_is_skipped(services: Services, tag: str) -> None:
    config = {"type": "stored_completions", "metadata": {"tag": tag}}
    record = await services.evals.create_eval(
        EvalCreateParams.model_validate({"data_source_config": config, "testing_criteria": [SAME]}), owner=None
    )
    source = {"type": "completions", "source": {"type": "stored_completions", "metadata": {"tag": tag}}}
    run, _ = await services.evals.create_run(
        record.id, RunCreateParams.model_validate({"data_source": source}), owner=None, report_base="http://t"
    )
    kept = b'{"item":{"reference":"a","input":[],"completion_id":"x","metadata":{}},"sample":{"output_text":"a"}}\n'
    await services.evals.store.write_items(run.eval_id, run.id, b'{"erased":true}\n' + kept)  # as an erasure leaves it
    await drain(services)
    done = await state(services, run)
    assert done.status is RunStatus.COMPLETED and done.items_total == 2
    assert done.result_counts.model_dump() == {"total": 1, "passed": 1, "failed": 0, "errored": 0}
    assert await output_indexes(services, run) == [1]


async def test_retention_deletes_old_eval_runs_and_files(services: Services, tag: str) -> None:
    _, run = await graded_run(services, tag, ["recent"])
    uploaded = await services.eval_files.create(
        filename="rows.jsonl", content=b'{"item": {"q": "a"}}\n', purpose="evals", owner=None
    )
    keep = RetentionSweep(store=services.store, indexer=services.indexer, retention_days=30, evals=services.evals)
    assert (await keep.run()).eval_runs_deleted == 0
    later = datetime.now(UTC) + timedelta(days=31)  # the run and the file are now older than 30 days
    assert (await keep.run(now=later)).eval_runs_deleted == 2
    assert await services.evals.store.ids(f"{run.eval_id}/runs/") == []
    assert (await services.eval_files.list(after=None, limit=10, order="asc", owner=None))[0] == []
    assert uploaded.id


async def stored_completions_run(
    services: Services, tag: str, texts: list[str], *, model: str | None = None
) -> tuple[list[str], RunRecord]:
    """Stored completions tagged `tag` and a queued run over them (re-run by `model` when given)."""
    ids = []
    for text in texts:
        stored = completion(metadata={"tag": tag}, text=text)
        await services.store.put(stored)
        ids.append(stored.id)
    config = {"type": "stored_completions", "metadata": {"tag": tag}}
    record = await services.evals.create_eval(
        EvalCreateParams.model_validate({"data_source_config": config, "testing_criteria": [SAME]}), owner=None
    )
    source: dict[str, Any] = {"type": "completions", "source": {"type": "stored_completions", "metadata": {"tag": tag}}}
    if model is not None:
        source |= {"model": model, "input_messages": {"type": "item_reference", "item_reference": "item.input"}}
    run, _ = await services.evals.create_run(
        record.id, RunCreateParams.model_validate({"data_source": source}), owner=None, report_base="http://t"
    )
    return ids, run


async def until(condition: Callable[[], bool]) -> None:
    """Wait for a condition another task makes true (no fixed sleep)."""
    async with asyncio.timeout(30):
        while not condition():  # noqa: ASYNC110 - the fake upstream records its calls on its own thread
            await asyncio.sleep(0.01)


async def test_a_delete_while_the_run_grades_the_item_leaves_no_output(
    services: Services, tag: str, fake_upstream: FakeUpstream
) -> None:
    """The run read the item, its candidate call is out; the delete erases the item and finds no output
    group yet. The group the run writes when the call returns must not keep the deleted completion."""
    ids, run = await stored_completions_run(services, tag, ["keep one", "forget me"], model="student")
    answered = threading.Event()
    fake_upstream.script(Reply(hold=answered, for_model="student"), Reply(hold=answered, for_model="student"))

    def student_calls() -> int:
        return len([r for r in fake_upstream.requests if r["body"].get("model") == "student"])

    before = student_calls()
    body = await receive(services)
    assert body is not None
    delivery = asyncio.create_task(services.evals.handle(body, delivery_count=1))
    await until(lambda: student_calls() == before + 2)

    await services.forgetting.delete(ids[1])  # both items are being answered: no output group exists yet
    answered.set()
    await delivery
    await drain(services)

    assert b"forget me" not in await run_blobs(services, run)
    done = await state(services, run)
    assert done.status is RunStatus.COMPLETED and done.items_total == 2
    assert done.result_counts.total == 1 and done.erased == [1]
    assert await output_indexes(services, run) == [0]


class DeletesOnceRead:
    """The completion store, except that reading `target` deletes it at once: the delete lands while the
    run is still collecting its items, holding a copy it read before the delete."""

    def __init__(self, services: Services, target: str) -> None:
        self._services, self._target = services, target

    def __getattr__(self, name: str) -> Any:
        return getattr(self._services.store, name)

    async def get(self, completion_id: str, **options: Any) -> Any:
        document = await self._services.store.get(completion_id, **options)
        if completion_id == self._target:
            self._target = ""
            await self._services.forgetting.delete(completion_id)
        return document


async def test_a_delete_while_the_run_collects_its_items_leaves_no_copy(services: Services, tag: str) -> None:
    ids, run = await stored_completions_run(services, tag, ["keep one", "forget me", "keep two"])
    engine = with_limits(services)
    engine._completions = DeletesOnceRead(services, ids[1])  # type: ignore[assignment]
    await drain(services, engine)

    assert b"forget me" not in await run_blobs(services, run)
    done = await state(services, run)
    assert done.status is RunStatus.COMPLETED and done.items_total == 3
    assert done.result_counts.model_dump() == {"total": 2, "passed": 2, "failed": 0, "errored": 0}
    assert await output_indexes(services, run) == [0, 2]


async def test_a_completion_in_a_dataset_and_an_eval_run_leaves_both(services: Services, tag: str) -> None:
    """Dataset rebuilds drop the deleted ids' membership rows; the eval runs must have been found first."""
    ids, run = await graded_run(services, tag, ["keep one", "forget me"])
    dataset = await services.dataset_jobs.submit(
        DatasetParams.model_validate({"kind": "evaluation", "filter": {"metadata": {"tag": tag}}})
    )
    while (message := await take_message(services, services.settings.dataset_jobs_queue)) is not None:
        await services.dataset_jobs.handle(message, delivery_count=1)
    assert (await services.dataset_jobs.records.read(dataset.id))[0].status is DatasetStatus.SUCCEEDED

    await services.forgetting.delete(ids[1])

    assert b"forget me" not in await run_blobs(services, run)
    assert (await services.dataset_jobs.records.read(dataset.id))[0].rebuilds == 1


async def test_a_delivery_reads_its_items_a_chunk_at_a_time_and_sees_an_erasure_mid_read(
    services: Services, tag: str
) -> None:
    """items.jsonl (up to 64 MiB) is never held whole: lines are read forward in chunks, kept from the
    counted point on; an erasure rewriting it between two chunks is read on in the new version."""
    _, run = await stored_completions_run(services, tag, ["unused"])
    line = b'{"item":{"q":"%s"}}\n'
    lines = [line % (b"%04d" % n + b"x" * 8000) for n in range(600)]  # 4.8 MB: two 4 MiB download chunks
    await services.evals.store.write_items(run.eval_id, run.id, b"".join(lines))
    state_now = (await state(services, run)).model_copy(update={"items_total": 600, "next_index": 5})
    items = await _ItemLines.open(services.evals.store, state_now)
    assert await items.get(5) == lines[5].rstrip(b"\n")
    assert items.size(4) == 0 and items.size(599) == 0  # before the counted point / not read yet

    erased = list(lines)
    erased[10] = b'{"erased":true}\n'
    await services.evals.store.replace_items(
        run.eval_id, run.id, b"".join(erased), (await services.evals.store.read_items_versioned(run.eval_id, run.id))[1]
    )
    assert await items.get(599) == lines[599].rstrip(b"\n")  # the next chunk's read met the new version
    assert items.erased == {10} and await items.get(10) == b'{"erased":true}'
    items.drop_before(300)
    assert items.size(299) == 0 and items.size(300) > 0
