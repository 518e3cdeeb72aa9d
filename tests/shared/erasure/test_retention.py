"""Retention deletes only what is older than RETENTION_DAYS, documents and index rows together."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from shared.store.completion_filter import CompletionFilter
from tests.conftest import ServicesFactory
from tests.shared.seed import completion, listed


async def test_retention_deletes_only_old_completions(make_services: ServicesFactory) -> None:
    services = await make_services(RETENTION_DAYS="30")
    old = [completion(days_ago=days, metadata={"user": "ann"}) for days in (31, 45, 400)]
    recent = [completion(days_ago=days, metadata={"user": "ann"}) for days in (29.9, 0)]
    for item in old + recent:
        await services.store.put(item)

    result = await services.retention.run()

    assert result.deleted_count == len(old)
    for item in old:
        assert not await services.store.exists(item.id)
    assert [(await services.store.get(item.id)).id for item in recent] == [item.id for item in recent]
    for selection in (CompletionFilter(), CompletionFilter(metadata={"user": "ann"}), CompletionFilter(model="gpt-4o")):
        assert [entry.id async for entry in services.store.index.walk(selection)] == [item.id for item in recent]
    usage = await services.usage.totals(max_age_seconds=0)
    assert (usage.completion_bytes, usage.completion_count) == await listed(services.completions_container)
    assert (await services.retention.run()).deleted_count == 0


async def test_retention_is_off_by_default(make_services: ServicesFactory) -> None:
    services = await make_services()
    item = completion(days_ago=4000)
    await services.store.put(item)
    result = await services.retention.run()
    assert (result.deleted_count, result.cutoff) == (0, None)
    assert (await services.store.get(item.id)).id == item.id


async def test_a_document_already_gone_still_loses_its_index_rows(make_services: ServicesFactory) -> None:
    """Blob gone first (lifecycle rule, crash): the sweep removes the rows from the index entry itself."""
    services = await make_services(RETENTION_DAYS="1")
    item = completion(days_ago=2, metadata={"user": "ann"}, owner="alice")
    await services.store.put(item)
    await services.completions_container.delete_blob(f"{item.id}.json")

    assert (await services.retention.run()).deleted_count == 0  # no document was left to delete

    for selection in (CompletionFilter(), CompletionFilter(metadata={"user": "ann"}), CompletionFilter(model="gpt-4o")):
        assert [entry.id async for entry in services.store.index.walk(selection)] == []
    assert await services.store.index.lookup(item.id) is None


async def test_the_sweep_removes_orphan_documents_even_with_retention_off(make_services: ServicesFactory) -> None:
    """A delete that died after removing the rows leaves a document lists cannot see: the daily sweep finishes it."""
    services = await make_services()
    kept, orphan = completion(metadata={"user": "ann"}), completion(metadata={"user": "ann"})
    for item in (kept, orphan):
        await services.store.put(item)
    unexplained = completion()
    await services.store.put(unexplained)
    for lost in (orphan, unexplained):
        await services.store.index.remove(await services.store.index.lookup(lost.id))  # type: ignore[arg-type]
    await services.store.index.forget(orphan.id)  # a delete that died after removing the rows

    young = await services.retention.run()
    assert young.orphans_deleted == 0 and await services.store.exists(orphan.id)  # may be a store still writing

    later = await services.retention.run(now=datetime.now(UTC) + timedelta(hours=2))

    assert (later.orphans_deleted, later.deleted_count) == (1, 0)
    assert not await services.store.exists(orphan.id)
    assert (await services.store.get(kept.id)).id == kept.id
    # No deletion record: a lost index never empties the store; the document is indexed again.
    assert later.orphans_indexed == 1 and await services.store.exists(unexplained.id)
    assert await services.store.index.lookup(unexplained.id) is not None
