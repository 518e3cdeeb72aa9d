"""The indexer's reads: a batch's index entries come from listings of the blob metadata each document's
one write carries, not one read per document; documents without it are read, gone ones left out."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import pytest
from azure.data.tables.aio import TableClient
from azure.storage.blob.aio import ContainerClient

from local_host.azurite import Azurite
from shared.store import ids
from shared.store.completion_index import CompletionIndex
from shared.store.completion_store import CompletionStore
from shared.store.stored_completion import StoredCompletion
from tests.shared.counting_transport import CountingTransport
from tests.shared.seed import completion


@pytest.fixture
async def counted_store(azurite: Azurite) -> AsyncIterator[tuple[CompletionStore, CountingTransport]]:
    name = f"t{uuid.uuid4().hex[:12]}"
    blobs = CountingTransport()
    async with (
        ContainerClient.from_connection_string(azurite.connection_string, name, transport=blobs) as container,
        TableClient.from_connection_string(azurite.connection_string, name) as table,
    ):
        await container.create_container()
        await table.create_table()
        yield CompletionStore(container=container, index=CompletionIndex(table)), blobs


def _at(one: StoredCompletion, captured_us: int, **update: object) -> StoredCompletion:
    completion_id = ids.new_completion_id(now_us=captured_us)
    return one.model_copy(update={"id": completion_id, **update})


def _reads(blobs: CountingTransport) -> list[str]:
    return [path.rsplit("/", 1)[1] for method, path in blobs.sent if method == "GET" and path.endswith(".json")]


async def test_a_batch_of_one_bucket_is_one_listing_and_equals_the_documents(
    counted_store: tuple[CompletionStore, CountingTransport],
) -> None:
    store, blobs = counted_store
    start_us = (ids.captured_at_us(ids.new_completion_id()) >> 16 << 16) + 10  # the start of a 65 ms bucket
    batch = [
        _at(completion(metadata={"user": f"ü{n}", "quote": 'say "hi"'}), start_us + n, served_by="gpt-4o-mini")
        for n in range(6)
    ]
    for one in batch:
        await store.capture(one)
    blobs.sent.clear()

    entries = await store.indexables([one.id for one in batch])

    assert _reads(blobs) == [] and len(blobs.sent) == 1  # one listing, no document read
    expected = [await store.indexable(one.id) for one in batch]
    assert entries == expected and entries[0] is not None and entries[0].metadata["user"] == "ü0"
    assert entries[0].served_by == "gpt-4o-mini" and entries[0].size_bytes > 0


async def test_documents_without_the_entry_are_read_and_gone_ones_left_out(
    counted_store: tuple[CompletionStore, CountingTransport],
) -> None:
    store, blobs = counted_store
    start_us = (ids.captured_at_us(ids.new_completion_id()) >> 16 << 16) + 10
    kept = [_at(completion(), start_us + n) for n in range(4)]
    for one in kept[:3]:
        await store.capture(one)
    # Written before documents carried their entry (or by hand): no metadata.
    await store._container.upload_blob(f"{kept[3].id}.json", kept[3].model_dump_json(), overwrite=True)
    too_long = _at(completion(metadata={f"k{n}": "v" * 500 for n in range(16)}), start_us + 5)  # 8 KB of metadata
    await store.capture(too_long)
    gone = _at(completion(), start_us + 6)
    scattered = _at(completion(), start_us + (1 << 20))  # alone in its bucket: read, not listed
    await store.capture(scattered)
    blobs.sent.clear()

    entries = await store.indexables([one.id for one in [*kept, too_long, gone, scattered]])

    assert [entry.id for entry in entries] == sorted(one.id for one in [*kept, too_long, scattered])
    assert sorted(_reads(blobs)) == sorted(f"{one.id}.json" for one in [kept[3], too_long, scattered])
    assert entries == [await store.indexable(entry.id) for entry in entries]


async def test_an_update_rewrites_the_entry_a_listing_gives(
    counted_store: tuple[CompletionStore, CountingTransport],
) -> None:
    store, blobs = counted_store
    start_us = (ids.captured_at_us(ids.new_completion_id()) >> 16 << 16) + 10
    batch = [_at(completion(metadata={"v": "1"}), start_us + n) for n in range(4)]
    for one in batch:
        await store.capture(one)
    await store.index.add_many([entry for entry in [await store.indexable(one.id) for one in batch] if entry])
    await store.revise(batch[0].id, lambda old: old.model_copy(update={"metadata": {"v": "2"}}))

    blobs.sent.clear()

    entries = await store.indexables([one.id for one in batch])
    assert [entry.metadata["v"] for entry in entries] == ["2", "1", "1", "1"]
    assert _reads(blobs) == []  # the rewrite carried its new entry
