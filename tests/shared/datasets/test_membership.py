"""Membership rows (which datasets and eval runs hold which completions), written as one hand-built
entity-group transaction per 100 rows of a partition."""

from __future__ import annotations

import pytest

from shared.datasets.membership import DatasetMembership
from shared.platform.errors import StorageUnavailable
from shared.services import Services
from shared.store import ids


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
