"""Which datasets hold which stored completions, so deleting a completion reaches its datasets.

A build records each selected id *before* it reads the document (one row per completion and
dataset in the completion index table: partition `ds-` + the id's capture-time bucket + its index
shard, row key `<completion id>:<dataset id>`, no other column). The shard (a hash of the id, as the
index's) spreads a large build's rows over 16 partitions, so a million completions captured in one
day are not a million rows into one partition at Azure Table's 2,000 entities/s. Every delete path removes the document first and
looks the rows up after, so a build that read a document before its deletion is always found,
however the two interleave. A row for a completion the build then skipped only causes an
unnecessary rebuild. Once the holders are rebuilding, the deleted ids' rows are dropped, so
deleting an id twice rebuilds nothing the second time.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable

from azure.core.exceptions import AzureError
from azure.data.tables import TableTransactionError
from azure.data.tables.aio import TableClient

from shared.platform.errors import StorageUnavailable
from shared.store import ids, table_transactions
from shared.store.completion_index import shard_of

_PARTITION_PREFIX = "ds-"
_IN_FLIGHT = 16
"""Transactions sent at once: one per membership partition of a capture-time bucket."""
_BUCKET_DIGITS = 5
"""The id's 5 leading time digits: 16**9 microseconds, about 19 hours of captures per partition."""


def _partition(completion_id: str) -> str:
    return f"{_legacy_partition(completion_id)}-{shard_of(completion_id):02d}"


def _legacy_partition(completion_id: str) -> str:
    """Where rows were recorded before they were sharded: still read, so a delete reaches datasets built then."""
    return _PARTITION_PREFIX + ids.digits(completion_id)[:_BUCKET_DIGITS]


class DatasetMembership:
    def __init__(self, table: TableClient) -> None:
        self._table = table

    async def record(self, dataset_id: str, completion_ids: Iterable[str]) -> None:
        """Note that a dataset is about to read these completions (upserts: safe to repeat); the
        partitions' transactions go `_IN_FLIGHT` at a time (an eval run records a whole file's ids at once)."""
        rows = [{"PartitionKey": _partition(member), "RowKey": f"{member}:{dataset_id}"} for member in completion_ids]
        try:
            await table_transactions.upsert_grouped(self._table, rows, in_flight=_IN_FLIGHT)
        except AzureError as exc:
            raise StorageUnavailable("The completion index is unavailable.") from exc

    async def holders(self, completion_ids: Iterable[str]) -> set[str]:
        """The datasets that recorded any of these completions: one range query per partition they fall in."""
        return set(await self.holdings(completion_ids))

    async def holdings(self, completion_ids: Iterable[str]) -> dict[str, set[str]]:
        """Each holder that recorded any of these completions, with the ones it recorded."""
        held: dict[str, set[str]] = defaultdict(set)
        for _, row_key, holder in await self._rows(completion_ids):
            held[holder].add(row_key.partition(":")[0])
        return dict(held)

    async def release(self, completion_ids: Iterable[str]) -> None:
        """Drop the rows of deleted completions once their datasets are rebuilding without them.

        A second delete of the same id then finds no holder and rebuilds nothing. A build that records
        one of these ids after its rows were read can no longer read the document, so its row is moot.
        """
        by_partition: dict[str, list[str]] = defaultdict(list)
        for partition, row_key, _ in await self._rows(completion_ids):
            by_partition[partition].append(row_key)
        try:
            for partition, row_keys in by_partition.items():
                for start in range(0, len(row_keys), table_transactions.MAX_ROWS):
                    operations = [
                        ("delete", {"PartitionKey": partition, "RowKey": row_key})
                        for row_key in row_keys[start : start + table_transactions.MAX_ROWS]
                    ]
                    try:
                        await self._table.submit_transaction(operations)
                    except TableTransactionError:  # a concurrent delete took a row first: go one by one
                        for _, entity in operations:
                            await self._table.delete_entity(partition, entity["RowKey"])  # a 404 is ignored
        except AzureError as exc:
            raise StorageUnavailable("The completion index is unavailable.") from exc

    async def _rows(self, completion_ids: Iterable[str]) -> list[tuple[str, str, str]]:
        """(partition, row key, dataset id) of every row these completions have."""
        by_partition: dict[str, set[str]] = defaultdict(set)
        for completion_id in completion_ids:
            by_partition[_partition(completion_id)].add(completion_id)
            by_partition[_legacy_partition(completion_id)].add(completion_id)
        found: list[tuple[str, str, str]] = []
        try:
            for partition, wanted in by_partition.items():
                query = "PartitionKey eq @p and RowKey ge @low and RowKey lt @high"
                # ';' sorts just after ':': every row of an id lies in [id + ':', id + ';').
                parameters = {"p": partition, "low": min(wanted) + ":", "high": max(wanted) + ";"}
                async for row in self._table.query_entities(query, parameters=parameters, select=["RowKey"]):
                    row_key = str(row["RowKey"])
                    completion_id, _, dataset_id = row_key.partition(":")
                    if completion_id in wanted:
                        found.append((partition, row_key, dataset_id))
        except AzureError as exc:
            raise StorageUnavailable("The completion index is unavailable.") from exc
        return found
