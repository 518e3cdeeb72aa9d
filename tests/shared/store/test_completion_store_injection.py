"""Hostile metadata on Azurite: quotes, slashes, OData words, unicode and control characters are
stored, filtered and deleted exactly, and never widen a filter."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import pytest

from local_host.azurite import Azurite
from shared.platform.errors import NotFound
from shared.platform.settings import Settings
from shared.services import Services
from shared.store.completion_filter import CompletionFilter
from shared.store.completion_store import CompletionStore
from shared.store.ids import new_completion_id
from shared.store.stored_completion import StoredCompletion

HOSTILE = [
    "it's",
    "''",
    'say "hi"',
    "a/b/../c",
    "back\\slash",
    "100%25 %",
    "x eq x",
    "' or PartitionKey ne '",
    "@v0",
    "é漢字🙂",
    "\u202eevil",
    "nul\x00byte",
    "ctl\x01\x1f\x7f",
    "c1\x85\x9f",
    "line\u2028sep\r\n",
    "\ufeff\ufffe",
    "",
    " ",
    "x" * 510,
]


@pytest.fixture(scope="module")
async def store(azurite: Azurite) -> AsyncIterator[CompletionStore]:
    suffix = uuid.uuid4().hex[:10]
    settings = Settings(  # type: ignore[call-arg]
        AzureWebJobsStorage=azurite.connection_string,
        COMPLETIONS_CONTAINER=f"inject{suffix}",
        COMPLETION_INDEX_TABLE=f"inject{suffix}",
    )
    services = Services(settings)
    await services.ensure_storage()
    yield services.store
    await services.blob_service.close()
    await services.table_service.close()


def completion(**metadata: str) -> StoredCompletion:
    completion_id = new_completion_id()
    return StoredCompletion(
        id=completion_id,
        created=0,
        deployment="d",
        model="m",
        metadata=metadata,
        owner="o'wner/\\",
        request={"messages": [{"role": "user", "content": "hi"}]},
        response={"choices": []},
    )


async def ids(store: CompletionStore, **metadata: str) -> list[str]:
    page = await store.list(CompletionFilter(metadata=metadata), limit=100)
    return [c.id for c in page.data]


@pytest.mark.parametrize("value", HOSTILE, ids=[repr(v)[:20] for v in HOSTILE])
async def test_hostile_values_filter_exactly(store: CompletionStore, tag: str, value: str) -> None:
    target = completion(tag=tag, value=value, **{f"k{value}"[:64]: value})
    decoy = completion(tag=tag, value=value + "'", other=value)
    for kept in (target, decoy):
        await store.put(kept)
    assert await ids(store, value=value, tag=tag) == [target.id]
    assert await ids(store, tag=tag, value=value) == [target.id]  # the value as a column filter, not a partition
    assert await ids(store, **{f"k{value}"[:64]: value}) == [target.id]
    assert await ids(store, tag=tag, other=value) == [decoy.id]
    assert await ids(store, tag=tag, value="' or '1' eq '1") == []
    scoped = await store.list(CompletionFilter(metadata={"tag": tag}, owner="o'wner/\\"), limit=100)
    assert [c.id for c in scoped.data] == [target.id, decoy.id]
    assert (await store.get(target.id)).metadata == target.metadata
    await store.update_metadata(target.id, {"tag": tag, "value": value + "2"})
    assert await ids(store, tag=tag, value=value + "2") == [target.id]
    assert await ids(store, tag=tag, value=value) == []
    for kept in (target, decoy):
        await store.delete(kept.id, owner="o'wner/\\")
    assert await ids(store, tag=tag) == []


async def test_owner_filter_is_exact(store: CompletionStore, tag: str) -> None:
    kept = completion(tag=tag)
    await store.put(kept)
    for wrong in ("o'wner/", "O'WNER/\\", "' or owner ne '", ""):
        with pytest.raises(NotFound):
            await store.get(kept.id, owner=wrong)
        page = await store.list(CompletionFilter(metadata={"tag": tag}, owner=wrong), limit=10)
        assert page.data == []
    await store.delete(kept.id)
