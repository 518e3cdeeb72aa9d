"""The index derived from stored documents: batched from blob-created events, counted once, repaired
by the sweep, reconciled by the quota report; and its partitions sharded with list order unchanged."""

from __future__ import annotations

import json
import time

from local_host.blob_events import blob_created_event
from shared.services import Services
from shared.store import completion_index, ids
from shared.store.completion_filter import CompletionFilter
from tests.conftest import ServicesFactory
from tests.shared.seed import completion, listed


def events(services: Services, completion_ids: list[str]) -> list[str]:
    container = services.settings.completions_container
    return [json.dumps(blob_created_event(container, f"{completion_id}.json")) for completion_id in completion_ids]


async def counted(services: Services) -> tuple[int, int]:
    usage = await services.usage.totals(max_age_seconds=0)
    return usage.completion_bytes, usage.completion_count


async def test_a_capture_is_one_document_and_its_event_indexes_and_counts_it_once(
    make_services: ServicesFactory, tag: str
) -> None:
    services = await make_services()
    kept = [completion(metadata={"tag": tag}) for _ in range(5)]
    sizes = [await services.store.capture(one) for one in kept]
    assert [c.id for c in (await services.store.list(CompletionFilter(metadata={"tag": tag}))).data] == []
    assert (await services.store.get(kept[0].id)).id == kept[0].id  # retrievable at once
    assert await counted(services) == (0, 0)

    foreign = json.dumps(blob_created_event("elsewhere", f"{kept[0].id}.json"))
    assert await services.indexer.index_events([*events(services, [c.id for c in kept]), foreign, "not json"]) == 5
    page = await services.store.list(CompletionFilter(metadata={"tag": tag}))
    assert [c.id for c in page.data] == [c.id for c in kept]
    assert await counted(services) == (sum(sizes), 5)

    assert await services.indexer.index_events(events(services, [c.id for c in kept])) == 0  # redelivered
    assert await counted(services) == (sum(sizes), 5)


async def test_a_completion_deleted_before_its_event_is_never_indexed_nor_counted(
    make_services: ServicesFactory, tag: str
) -> None:
    services = await make_services()
    doomed, kept = completion(metadata={"tag": tag}), completion(metadata={"tag": tag})
    for one in (doomed, kept):
        await services.store.capture(one)
    assert await services.store.delete(doomed.id)
    assert await services.indexer.index_events(events(services, [doomed.id, kept.id])) == 1
    assert [c.id for c in (await services.store.list(CompletionFilter(metadata={"tag": tag}))).data] == [kept.id]
    assert await counted(services) == await listed(services.completions_container)


async def test_one_message_may_hold_an_array_of_events(make_services: ServicesFactory, tag: str) -> None:
    """As Event Grid batches webhook deliveries and the local stand-in posts what was captured meanwhile."""
    services = await make_services()
    kept = [completion(metadata={"tag": tag}) for _ in range(3)]
    for one in kept:
        await services.store.capture(one)
    container = services.settings.completions_container
    batch = json.dumps([blob_created_event(container, f"{c.id}.json") for c in kept[:2]])
    assert await services.indexer.index_events([batch, *events(services, [kept[2].id]), "[1]"]) == 3
    page = await services.store.list(CompletionFilter(metadata={"tag": tag}))
    assert [c.id for c in page.data] == [c.id for c in kept]


async def test_the_sweep_indexes_what_no_event_announced_then_moves_on(make_services: ServicesFactory) -> None:
    services = await make_services(INDEX_SWEEP_GRACE_SECONDS="0")
    lost = [completion(), completion(days_ago=30 / 86_400)]
    for one in lost:
        await services.store.capture(one)
    first = await services.indexer.sweep()
    assert first.repaired == 2
    assert {c.id for c in (await services.store.list(CompletionFilter())).data} == {c.id for c in lost}
    assert await counted(services) == await listed(services.completions_container)
    later = completion()
    await services.store.capture(later)
    second = await services.indexer.sweep()
    assert second.repaired == 1 and second.checked_from == first.checked_to


async def test_the_quota_report_reconciles_counts_a_crash_left_behind(make_services: ServicesFactory) -> None:
    services = await make_services()
    kept = [completion() for _ in range(3)]
    for one in kept:
        await services.store.capture(one)
    # The worker died between the index rows and the counter update: rows, no counts.
    entries = [await services.store.indexable(c.id) for c in kept]
    await services.store.index.add_many([entry for entry in entries if entry is not None])
    assert await services.indexer.index_events(events(services, [c.id for c in kept])) == 0
    assert await counted(services) == (0, 0)
    report = await services.quota_reporter.run()
    assert report.counters.corrected and report.completion_count == 3
    assert await counted(services) == await listed(services.completions_container)


async def test_rows_spread_over_shards_and_lists_page_in_one_order(make_services: ServicesFactory, tag: str) -> None:
    services = await make_services()
    start_us = time.time_ns() // 1000 - 10_000_000
    kept = []
    for n in range(48):
        one = completion(metadata={"tag": tag})
        completion_id = ids.new_completion_id(now_us=start_us + n * 1000)
        kept.append(one.model_copy(update={"id": completion_id, "created": start_us // 1_000_000}))
    for one in kept:
        await services.store.put(one)

    partitions: dict[str, int] = {}
    async for row in services.index_table.query_entities("id ne ''", select=["PartitionKey"]):
        partitions[row["PartitionKey"]] = partitions.get(row["PartitionKey"], 0) + 1
    alls = {key: count for key, count in partitions.items() if key.startswith("all-")}
    assert len(alls) > completion_index.SHARDS // 2 and max(partitions.values()) < 2 * len(kept)

    expected = sorted(c.id for c in kept)
    for order, wanted in (("asc", expected), ("desc", expected[::-1])):
        for selection in (CompletionFilter(metadata={"tag": tag}), CompletionFilter(model="gpt-4o")):
            seen: list[str] = []
            after = None
            while True:
                page = await services.store.list(selection, order=order, after=after, limit=7)  # type: ignore[arg-type]
                seen += [c.id for c in page.data]
                if not page.has_more:
                    break
                after = seen[-1]
            assert [cid for cid in seen if cid in set(expected)] == wanted


async def test_a_batch_with_an_indexed_document_counts_only_the_new_and_rewrites_the_old(
    make_services: ServicesFactory, tag: str
) -> None:
    services = await make_services()
    old = completion(metadata={"tag": tag, "v": "1"})
    await services.store.capture(old)
    assert await services.indexer.index([old.id]) == 1
    # The document is written again with other metadata (its event comes again); a new one shares
    # its `all` partition, so their rows meet in one transaction whose insert finds the old row.
    rewritten = old.model_copy(update={"metadata": {"tag": tag, "v": "2"}})
    await services.completions_container.upload_blob(f"{old.id}.json", rewritten.model_dump_json(), overwrite=True)
    new = next(
        c for c in iter(completion, None) if completion_index.shard_of(c.id) == completion_index.shard_of(old.id)
    )
    new = new.model_copy(update={"metadata": {"tag": tag, "v": "2"}})
    await services.store.capture(new)

    assert await services.indexer.index_events(events(services, [old.id, new.id])) == 1
    assert (await counted(services))[1] == 2
    listed_now = await services.store.list(CompletionFilter(metadata={"tag": tag, "v": "2"}), order="asc")
    assert [c.id for c in listed_now.data] == [old.id, new.id]
    assert (await services.store.list(CompletionFilter(metadata={"v": "1"}))).data == []
