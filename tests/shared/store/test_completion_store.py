"""The store and its index on Azurite: filters, orders, cursors, ranges and consistency."""

from __future__ import annotations

import json

import pytest
from azure.core.pipeline import PipelineResponse
from azure.data.tables.aio import TableClient

from local_host.azurite import Azurite
from shared.platform.errors import NotFound, StorageUnavailable
from shared.store import ids
from shared.store.completion_filter import CompletionFilter
from shared.store.completion_index import SHARDS, CompletionIndex, IndexEntry
from shared.store.completion_store import CompletionStore
from shared.store.stored_completion import StoredCompletion

BASE_US = 1_750_000_000 * 1_000_000


def completion(
    offset_s: float, *, deployment: str = "dep", model: str = "m1", owner: str = "o", **metadata: str
) -> StoredCompletion:
    completion_id = ids.new_completion_id(now_us=BASE_US + int(offset_s * 1_000_000))
    return StoredCompletion(
        id=completion_id,
        created=ids.captured_at_us(completion_id) // 1_000_000,
        deployment=deployment,
        model=model,
        metadata=metadata,
        owner=owner,
        request={"messages": [{"role": "user", "content": "q"}]},
        response={"choices": [{"index": 0, "message": {"role": "assistant", "content": "a"}, "finish_reason": "stop"}]},
    )


async def put_all(store: CompletionStore, *items: StoredCompletion) -> list[str]:
    for item in items:
        await store.put(item)
    return [item.id for item in items]


async def listed(store: CompletionStore, selection: CompletionFilter, **options: object) -> list[str]:
    page = await store.list(selection, **options)  # type: ignore[arg-type]
    return [c.id for c in page.data]


async def test_filters_combine_as_and(store: CompletionStore) -> None:
    a, b, c, d = await put_all(
        store,
        completion(1, user="u1", topic="x"),
        completion(2, user="u1", topic="y", deployment="dep2"),
        completion(3, user="u2", topic="x", model="m2"),
        completion(4, user="u1", topic="x", model="m2"),
    )
    assert await listed(store, CompletionFilter(metadata={"user": "u1"})) == [a, b, d]
    assert await listed(store, CompletionFilter(metadata={"user": "u1", "topic": "x"})) == [a, d]
    assert await listed(store, CompletionFilter(metadata={"user": "u1"}, model="m2")) == [d]
    assert await listed(store, CompletionFilter(model="dep2")) == [b]
    assert await listed(store, CompletionFilter(model="m2"), order="desc") == [d, c]
    assert await listed(store, CompletionFilter(owner="someone-else")) == []


async def test_created_range_is_half_open_in_both_orders(store: CompletionStore) -> None:
    stored = await put_all(store, *(completion(s) for s in (0, 1, 2, 3)))
    start = BASE_US // 1_000_000
    window = CompletionFilter(created_after=start + 1, created_before=start + 3)
    assert await listed(store, window) == stored[1:3]
    assert await listed(store, window, order="desc") == stored[2:0:-1]


async def test_cursor_pages_without_gaps_or_repeats(store: CompletionStore) -> None:
    stored = await put_all(store, *(completion(i / 10, tag="p") for i in range(7)))
    for order, expected in (("asc", stored), ("desc", stored[::-1])):
        seen, after = [], None
        while True:
            page = await store.list(CompletionFilter(metadata={"tag": "p"}), order=order, after=after, limit=3)
            seen += [c.id for c in page.data]
            if not page.has_more:
                break
            after = page.data[-1].id
        assert seen == expected


async def test_a_page_reads_at_most_limit_plus_one_rows_per_shard(store: CompletionStore, azurite: Azurite) -> None:
    """A page costs the same whatever the store's size: limit + 1 rows from each shard of its term."""
    await put_all(store, *(completion(i / 100, tag="many") for i in range(100)))
    rows_read: list[int] = []

    def count(response: PipelineResponse) -> None:
        rows_read.append(len(json.loads(response.http_response.body()).get("value", [])))

    table_name = store.index._table.table_name
    async with TableClient.from_connection_string(
        azurite.connection_string, table_name, raw_response_hook=count
    ) as table:
        entries, has_more = await CompletionIndex(table).page(
            CompletionFilter(metadata={"tag": "many"}), order="desc", after=None, limit=2
        )
    assert len(entries) == 2 and has_more
    assert 0 < sum(rows_read) <= SHARDS * 3 < 100


async def test_update_moves_rows_and_delete_removes_everything(store: CompletionStore) -> None:
    [completion_id] = await put_all(store, completion(0, stage="draft", team="t"))
    await store.update_metadata(completion_id, {"stage": "final", "team": "t"})
    assert await listed(store, CompletionFilter(metadata={"stage": "draft"})) == []
    assert await listed(store, CompletionFilter(metadata={"stage": "final"})) == [completion_id]
    assert await listed(store, CompletionFilter(metadata={"team": "t"})) == [completion_id]
    await store.delete(completion_id)
    with pytest.raises(NotFound):
        await store.get(completion_id)
    assert await listed(store, CompletionFilter()) == []
    rows = [row async for row in store.index._table.list_entities()]
    assert rows == [{"PartitionKey": "forgotten", "RowKey": completion_id}]  # the id only, so it is never reused


async def test_delete_removes_the_index_rows_of_a_document_already_gone(store: CompletionStore) -> None:
    """The lifecycle rule (or a crash) removed the blob: metadata and owner must not outlive it in the index."""
    gone = completion(0, owner="alice", user="u-1", team="t")
    await put_all(store, gone)
    await store._container.delete_blob(f"{gone.id}.json")

    with pytest.raises(NotFound):
        await store.delete(gone.id, owner="bob")  # another owner still learns nothing
    assert await store.delete(gone.id, owner="alice") is False

    rows = [row async for row in store.index._table.list_entities()]
    assert rows == [{"PartitionKey": "forgotten", "RowKey": gone.id}]
    with pytest.raises(NotFound):
        await store.delete(gone.id)


async def test_a_walk_removes_rows_no_document_backs(store: CompletionStore) -> None:
    """A failed metadata update leaves rows under the old value; a purge walk drops them, never trusts them."""
    item = completion(0, stage="final")
    await put_all(store, item)
    stale = IndexEntry(id=item.id, deployment=item.deployment, model=item.model, metadata={"stage": "draft"})
    await store.index.add(stale)
    [row] = [entry async for entry in store.index.walk(CompletionFilter(metadata={"stage": "draft"}))]

    assert await store.confirm(row, CompletionFilter(metadata={"stage": "draft"})) is None

    assert (await store.get(item.id)).metadata == {"stage": "final"}
    assert [e.id async for e in store.index.walk(CompletionFilter(metadata={"stage": "draft"}))] == []
    assert [e.id async for e in store.index.walk(CompletionFilter(metadata={"stage": "final"}))] == [item.id]


async def test_a_failed_metadata_update_leaves_no_row_disagreeing_with_its_document(
    store: CompletionStore, azurite: Azurite
) -> None:
    """The document was rewritten but the index could not follow: the document goes back, so rows stay true."""
    [completion_id] = await put_all(store, completion(0, user="u-1"))
    async with TableClient.from_connection_string(azurite.connection_string, "missing" + completion_id[-12:]) as gone:
        broken = CompletionStore(container=store._container, index=CompletionIndex(gone))
        with pytest.raises(StorageUnavailable):
            await broken.update_metadata(completion_id, {"user": "u-2"})

    assert (await store.get(completion_id)).metadata == {"user": "u-1"}
    assert await listed(store, CompletionFilter(metadata={"user": "u-1"})) == [completion_id]
    assert await listed(store, CompletionFilter(metadata={"user": "u-2"})) == []


async def test_a_stale_index_row_is_never_served(store: CompletionStore) -> None:
    """A crash between index and document writes leaves a row; lists re-check the document."""
    kept, orphan = completion(0, tag="s"), completion(1, tag="s")
    await put_all(store, kept, orphan)
    await store._container.delete_blob(f"{orphan.id}.json")
    assert await listed(store, CompletionFilter(metadata={"tag": "s"})) == [kept.id]


async def test_a_page_is_never_empty_while_more_exist(store: CompletionStore) -> None:
    """Blobs deleted under their rows (the lifecycle rule) must not yield an empty page with has_more."""
    gone, kept = [completion(i, tag="lc") for i in range(2)], completion(3, tag="lc")
    await put_all(store, *gone, kept)
    for item in gone:
        await store._container.delete_blob(f"{item.id}.json")
    page = await store.list(CompletionFilter(metadata={"tag": "lc"}), limit=2)
    assert ([c.id for c in page.data], page.has_more) == ([kept.id], False)


async def test_owner_scoped_reads_hide_other_owners(store: CompletionStore) -> None:
    [completion_id] = await put_all(store, completion(0, owner="alice"))
    assert (await store.get(completion_id, owner="alice")).id == completion_id
    with pytest.raises(NotFound):
        await store.get(completion_id, owner="bob")


async def test_bulk_loaded_rows_list_like_added_ones(store: CompletionStore) -> None:
    items = [completion(i / 10, tag="bulk", user=f"u{i % 2}") for i in range(250)]
    for item in items:
        await store._container.upload_blob(f"{item.id}.json", item.model_dump_json())
    await store.index.add_many(
        IndexEntry(id=i.id, deployment=i.deployment, model=i.model, metadata=i.metadata, owner=i.owner) for i in items
    )
    page = await store.list(CompletionFilter(metadata={"tag": "bulk", "user": "u1"}), order="desc", limit=100)
    assert [c.id for c in page.data] == [i.id for i in items if i.metadata["user"] == "u1"][::-1][:100]
    assert page.has_more


async def test_owners_written_before_stable_ids_are_migrated_on_read(store: CompletionStore) -> None:
    """A document and index rows holding the bare key name `alice` belong to `key:alice` (and only to it);
    the next write stores the stable id."""
    legacy = completion(1, tag="legacy").model_copy(update={"owner": "alice"})  # model_copy: as written back then
    document = legacy.model_dump_json().encode()
    assert b'"owner":"alice"' in document
    await store._container.upload_blob(f"{legacy.id}.json", document)
    entry = IndexEntry.model_construct(
        id=legacy.id, deployment="dep", model="m1", metadata={"tag": "legacy"}, owner="alice", size_bytes=len(document)
    )
    await store.index.add(entry)
    for selection in (CompletionFilter(metadata={"tag": "legacy"}), CompletionFilter()):
        mine = await store.list(selection.model_copy(update={"owner": "key:alice"}))
        assert [(c.id, c.owner) for c in mine.data] == [(legacy.id, "key:alice")]
        for other in ("entra:72f988bf-86f1-41af-91ab-2d7cd011db47/alice", "key:bob"):
            assert (await store.list(selection.model_copy(update={"owner": other}))).data == []
    assert (await store.get(legacy.id, owner="key:alice")).owner == "key:alice"
    with pytest.raises(NotFound):
        await store.get(legacy.id, owner="entra:72f988bf-86f1-41af-91ab-2d7cd011db47/alice")

    await store.update_metadata(legacy.id, {"tag": "legacy", "checked": "yes"}, owner="key:alice")
    stored = json.loads(await (await store._container.download_blob(f"{legacy.id}.json")).readall())
    assert stored["owner"] == "key:alice"
    rows = [row async for row in store.index._table.query_entities("id eq @id", parameters={"id": legacy.id})]
    assert rows and {row["owner"] for row in rows} == {"key:alice"}
