"""Purge scope rules, and a purge run twice deletes the same set and writes the same receipt."""

from __future__ import annotations

import hashlib

import pytest

from shared.completion_index import IndexEntry
from shared.errors import InvalidRequest, NotFound
from shared.purge import PurgeStatus, parse_purge_params
from tests.conftest import ServicesFactory
from tests.shared.seed import completion


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        ({}, "the filter is empty"),
        ({"filter": {}}, "the filter is empty"),
        ({"filter": {"metadata": {}}, "dry_run": True}, "the filter is empty"),
        ({"all": True, "filter": {"model": "gpt-4o"}}, "cannot be combined"),
        ({"filter": {"owner": "someone"}}, "'owner' cannot be set"),
        ({"filter": {"colour": "red"}}, "Extra inputs are not permitted"),
    ],
)
def test_an_unclear_scope_is_rejected(body: dict[str, object], fragment: str) -> None:
    with pytest.raises(InvalidRequest) as rejected:
        parse_purge_params(body)
    assert fragment in rejected.value.message and rejected.value.status == 400


def test_all_must_be_explicit() -> None:
    params = parse_purge_params({"all": True})
    assert params.selection.is_empty()


async def test_a_purge_runs_twice_safely(make_services: ServicesFactory, tag: str) -> None:
    services = await make_services()
    doomed = [completion(metadata={"tag": tag}) for _ in range(3)]
    kept = completion(metadata={"tag": tag + "-other"})
    for item in [*doomed, kept]:
        await services.store.put(item)
    params = parse_purge_params({"filter": {"metadata": {"tag": tag}}})
    assert (await services.purges.count(params)).matched_count == 3

    job = await services.purges.submit(params, requested_by="default")
    first = await services.purges.run(job.id)
    again = await services.purges.run(job.id)

    assert first.status is PurgeStatus.SUCCEEDED and first.receipt is not None
    expected = hashlib.sha256("\n".join(sorted(item.id for item in doomed)).encode()).hexdigest()
    assert (first.receipt.deleted_count, first.receipt.ids_sha256) == (3, expected)
    assert again == first
    for item in doomed:
        assert not await services.store.exists(item.id)
    assert (await services.store.get(kept.id)).id == kept.id
    with pytest.raises(NotFound):
        await services.purges.get("purge_" + "0" * 24)


async def test_a_scoped_caller_purges_and_sees_only_its_own(make_services: ServicesFactory, tag: str) -> None:
    """With owner scoping, a purge by a caller without all-owners touches only that caller's completions."""
    services = await make_services()
    mine = [completion(metadata={"tag": tag}, owner="alice") for _ in range(2)]
    theirs = completion(metadata={"tag": tag}, owner="bob")
    for item in [*mine, theirs]:
        await services.store.put(item)
    params = parse_purge_params({"filter": {"metadata": {"tag": tag}}})
    assert (await services.purges.count(params, owner_scope="alice")).matched_count == 2

    job = await services.purges.submit(params, requested_by="alice", owner_scope="alice")
    done = await services.purges.run(job.id)

    assert done.receipt is not None and done.receipt.deleted_count == 2
    assert (await services.store.get(theirs.id)).owner == "key:bob"
    assert (await services.purges.get(job.id, owner_scope="alice")).id == job.id
    with pytest.raises(NotFound):
        await services.purges.get(job.id, owner_scope="bob")


@pytest.mark.parametrize("order", ["asc", "desc"])
async def test_a_created_after_beyond_the_key_range_selects_nothing(
    make_services: ServicesFactory, tag: str, order: str
) -> None:
    """`created_after: 10000000000` is later than any row key; it must not wrap around and select everything."""
    services = await make_services()
    kept = completion(metadata={"tag": tag})
    await services.store.put(kept)
    params = parse_purge_params({"filter": {"metadata": {"tag": tag}, "created_after": 10_000_000_000}})

    listed = [entry.id async for entry in services.store.index.walk(params.selection, order=order)]  # type: ignore[arg-type]
    assert listed == []
    assert (await services.purges.count(params)).matched_count == 0
    done = await services.purges.run((await services.purges.submit(params, requested_by="default")).id)

    assert done.receipt is not None and done.receipt.deleted_count == 0
    assert (await services.store.get(kept.id)).id == kept.id


async def test_a_stale_index_row_is_not_trusted(make_services: ServicesFactory, tag: str) -> None:
    """An index row left behind by a failed metadata update says `tag`; the document says otherwise: kept."""
    services = await make_services()
    stale = completion(metadata={"tag": tag + "-now"})
    await services.store.put(stale)
    entry = IndexEntry(id=stale.id, deployment=stale.deployment, model=stale.model, metadata={"tag": tag})
    await services.store.index.add(entry)
    params = parse_purge_params({"filter": {"metadata": {"tag": tag}}})

    done = await services.purges.run((await services.purges.submit(params, requested_by="default")).id)

    assert done.receipt is not None and done.receipt.deleted_count == 0
    assert (await services.store.get(stale.id)).metadata == {"tag": tag + "-now"}
