"""A deleted stored completion (API delete, purge, retention) leaves no copy in an eval run: its item
is erased from `items.jsonl`, its output item deleted and taken out of the counts."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from shared.erasure.retention import RetentionSweep
from shared.evals.params import EvalCreateParams, RunCreateParams
from shared.evals.records import RunRecord, RunStatus
from shared.services import Services
from tests.shared.evals.test_service import drain, output_indexes, services, state
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
