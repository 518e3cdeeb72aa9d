"""Which datasets hold which stored completions, so deleting a completion reaches its datasets.

A build records each selected id *before* it reads the document (one row per completion and
dataset in the completion index table: partition `ds-` + the id's capture-time bucket, row key
`<completion id>:<dataset id>`, no other column). Every delete path removes the document first and
looks the rows up after, so a build that read a document before its deletion is always found,
however the two interleave. A row for a completion the build then skipped only causes an
unnecessary rebuild.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable

from azure.core.exceptions import AzureError, ServiceRequestError, ServiceResponseError
from azure.data.tables import UpdateMode
from azure.data.tables.aio import TableClient

from shared.platform.errors import StorageUnavailable
from shared.store import ids

_PARTITION_PREFIX = "ds-"
_BUCKET = slice(len(ids.PREFIX), len(ids.PREFIX) + 5)
"""The id's 5 leading time digits: 16**9 microseconds, about 19 hours of captures per partition."""
_TRANSACTION = 100


def _partition(completion_id: str) -> str:
    return _PARTITION_PREFIX + completion_id[_BUCKET]


class DatasetMembership:
    def __init__(self, table: TableClient) -> None:
        self._table = table

    async def record(self, dataset_id: str, completion_ids: Iterable[str]) -> None:
        """Note that a dataset is about to read these completions (upserts: safe to repeat)."""
        by_partition: dict[str, list[str]] = defaultdict(list)
        for completion_id in completion_ids:
            by_partition[_partition(completion_id)].append(completion_id)
        try:
            for partition, members in by_partition.items():
                for start in range(0, len(members), _TRANSACTION):
                    operations = [
                        (
                            "upsert",
                            {"PartitionKey": partition, "RowKey": f"{member}:{dataset_id}"},
                            {"mode": UpdateMode.REPLACE},
                        )
                        for member in members[start : start + _TRANSACTION]
                    ]
                    try:
                        await self._table.submit_transaction(operations)
                    except (ServiceRequestError, ServiceResponseError):
                        await self._table.submit_transaction(operations)  # idempotent: a dropped connection is retried
        except AzureError as exc:
            raise StorageUnavailable("The completion index is unavailable.") from exc

    async def holders(self, completion_ids: Iterable[str]) -> set[str]:
        """The datasets that recorded any of these completions: one range query per capture-time bucket."""
        by_partition: dict[str, set[str]] = defaultdict(set)
        for completion_id in completion_ids:
            by_partition[_partition(completion_id)].add(completion_id)
        found: set[str] = set()
        try:
            for partition, wanted in by_partition.items():
                query = "PartitionKey eq @p and RowKey ge @low and RowKey lt @high"
                # ';' sorts just after ':': every row of an id lies in [id + ':', id + ';').
                parameters = {"p": partition, "low": min(wanted) + ":", "high": max(wanted) + ";"}
                async for row in self._table.query_entities(query, parameters=parameters, select=["RowKey"]):
                    completion_id, _, dataset_id = str(row["RowKey"]).partition(":")
                    if completion_id in wanted:
                        found.add(dataset_id)
        except AzureError as exc:
            raise StorageUnavailable("The completion index is unavailable.") from exc
        return found
