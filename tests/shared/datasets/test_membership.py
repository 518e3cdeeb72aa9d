"""Membership rows (which datasets and eval runs hold which completions), written as one hand-built
entity-group transaction per 100 rows of a partition."""

from __future__ import annotations

import pytest

from shared.datasets.membership import DatasetMembership
from shared.platform.errors import StorageUnavailable
from shared.services import Services
from shared.store import ids
from shared.store.completion_index import shard_of


async def test_recorded_rows_are_found_per_holder_and_released(services: Services) -> None:
    membership = DatasetMembership(services.index_table)
    completions = [ids.new_completion_id() for _ in range(250)]  # three transactions in one partition
    await membership.record("dataset-" + "a" * 32, completions)
    await membership.record("dataset-" + "a" * 32, completions[:10])  # upserts: safe to repeat
    await membership.record("eval_x.evalrun_y", completions[5:7])

    held = await membership.holdings(completions)
    assert held == {"dataset-" + "a" * 32: set(completions), "eval_x.evalrun_y": set(completions[5:7])}
    assert await membership.holders(completions[:1]) == {"dataset-" + "a" * 32}

    await membership.release(completions)
    assert await membership.holdings(completions) == {}


async def test_a_refused_transaction_is_storage_unavailable(services: Services) -> None:
    membership = DatasetMembership(services.index_table)
    with pytest.raises(StorageUnavailable):
        await membership.record("bad/holder", [ids.new_completion_id()])  # '/' is not allowed in a row key


async def test_a_large_builds_rows_spread_over_the_index_shards(services: Services) -> None:
    membership = DatasetMembership(services.index_table)
    start_us = ids.captured_at_us(ids.new_completion_id())
    completions = [ids.new_completion_id(now_us=start_us + n) for n in range(160)]  # one capture-time bucket
    await membership.record("dataset-" + "b" * 32, completions)

    rows = [
        row["PartitionKey"]
        async for row in services.index_table.query_entities(
            "RowKey ge @low and RowKey lt @high", parameters={"low": min(completions), "high": max(completions) + ";"}
        )
    ]
    assert len(rows) == 160
    assert len(set(rows)) == len({shard_of(completion_id) for completion_id in completions}) > 8


async def test_rows_recorded_before_sharding_are_still_found_and_released(services: Services) -> None:
    membership = DatasetMembership(services.index_table)
    old, new = ids.new_completion_id(), ids.new_completion_id()
    legacy = "ds-" + ids.digits(old)[:5]  # the unsharded partition builds recorded into before
    await services.index_table.upsert_entity({"PartitionKey": legacy, "RowKey": f"{old}:dataset-{'c' * 32}"})
    await membership.record("dataset-" + "d" * 32, [new])

    assert await membership.holdings([old, new]) == {"dataset-" + "c" * 32: {old}, "dataset-" + "d" * 32: {new}}
    await membership.release([old, new])
    assert await membership.holdings([old, new]) == {}
