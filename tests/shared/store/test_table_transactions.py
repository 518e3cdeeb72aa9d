"""The hand-written entity-group transaction: what it stores reads back as the SDK's own upsert would
have stored it, it replaces, and it is all or nothing."""

from __future__ import annotations

import math
import uuid

import pytest
from azure.core.exceptions import HttpResponseError, ResourceExistsError
from azure.data.tables import EdmType, UpdateMode
from azure.data.tables.aio import TableClient

from shared.services import Services
from shared.store.table_transactions import MAX_ROWS, insert_rows, upsert_rows

ROW = {
    "text": "naïve 'quoted' \"json\" — ✓ line\u2028sep\r\n",
    "small": 7,
    "negative": -(2**31),
    "large": 2**40,
    "ratio": 0.25,
    "whole": 4.0,
    "flag": True,
    "off": False,
}


def _partition() -> str:
    return f"p{uuid.uuid4().hex}"


async def _read(table: TableClient, partition: str, row_key: str) -> dict[str, object]:
    entity = await table.get_entity(partition, row_key)
    return {name: (value, type(value)) for name, value in entity.items()}


async def test_rows_read_back_as_the_sdks_own_upsert_stores_them(services: Services) -> None:
    table, partition = services.index_table, _partition()
    as_sdk = {**ROW, "large": (ROW["large"], EdmType.INT64)}  # the SDK takes ints past 32 bits only so
    await table.upsert_entity({"PartitionKey": partition, "RowKey": "by-sdk", **as_sdk}, mode=UpdateMode.REPLACE)
    await upsert_rows(table, [{"PartitionKey": partition, "RowKey": "by us: it's 1 & 2 ✓", **ROW}])

    ours = await _read(table, partition, "by us: it's 1 & 2 ✓")
    theirs = await _read(table, partition, "by-sdk")
    assert ours.pop("RowKey") == ("by us: it's 1 & 2 ✓", str)
    theirs.pop("RowKey")
    assert ours == theirs
    assert ours["large"][0] == (2**40, EdmType.INT64) and ours["text"][0] == ROW["text"]


async def test_non_finite_doubles_and_missing_values(services: Services) -> None:
    table, partition = services.index_table, _partition()
    await upsert_rows(
        table, [{"PartitionKey": partition, "RowKey": "r", "nan": math.nan, "inf": -math.inf, "gone": None}]
    )
    entity = await table.get_entity(partition, "r")
    assert math.isnan(entity["nan"]) and entity["inf"] == -math.inf and "gone" not in entity


async def test_an_upsert_replaces_the_whole_row(services: Services) -> None:
    table, partition = services.index_table, _partition()
    await upsert_rows(table, [{"PartitionKey": partition, "RowKey": "r", "a": "1", "b": "2"}])
    await upsert_rows(table, [{"PartitionKey": partition, "RowKey": "r", "a": "3"}])
    entity = await table.get_entity(partition, "r")
    assert entity["a"] == "3" and "b" not in entity


async def test_a_refused_row_writes_none_of_its_transaction(services: Services) -> None:
    table, partition = services.index_table, _partition()
    rows = [{"PartitionKey": partition, "RowKey": f"r{number:03d}"} for number in range(MAX_ROWS - 1)]
    with pytest.raises(HttpResponseError, match="transaction failed"):
        await upsert_rows(table, [*rows, {"PartitionKey": partition, "RowKey": "bad/key"}])  # '/' is refused
    assert [entity async for entity in table.query_entities("PartitionKey eq @p", parameters={"p": partition})] == []

    await upsert_rows(table, rows)
    stored = [
        entity["RowKey"] async for entity in table.query_entities("PartitionKey eq @p", parameters={"p": partition})
    ]
    assert stored == [row["RowKey"] for row in rows]


@pytest.mark.parametrize(
    "rows",
    [
        [],
        [{"PartitionKey": "a", "RowKey": str(number)} for number in range(MAX_ROWS + 1)],
        [{"PartitionKey": "a", "RowKey": "1"}, {"PartitionKey": "b", "RowKey": "1"}],
    ],
    ids=["empty", "too many", "two partitions"],
)
async def test_a_transaction_the_service_would_refuse_is_not_sent(
    services: Services, rows: list[dict[str, str]]
) -> None:
    with pytest.raises(ValueError, match="one partition"):
        await upsert_rows(services.index_table, rows)


async def test_a_value_tables_cannot_hold_is_named(services: Services) -> None:
    with pytest.raises(TypeError, match=r"list \(tags\)"):
        await upsert_rows(services.index_table, [{"PartitionKey": "a", "RowKey": "1", "tags": ["x"]}])


async def test_an_insert_meeting_an_existing_row_writes_nothing(services: Services) -> None:
    table, partition = services.index_table, _partition()
    await insert_rows(table, [{"PartitionKey": partition, "RowKey": "a", "v": "first"}])
    with pytest.raises(ResourceExistsError):
        await insert_rows(
            table,
            [{"PartitionKey": partition, "RowKey": "b"}, {"PartitionKey": partition, "RowKey": "a", "v": "second"}],
        )
    rows = [entity async for entity in table.query_entities("PartitionKey eq @p", parameters={"p": partition})]
    assert [(row["RowKey"], row.get("v")) for row in rows] == [("a", "first")]
