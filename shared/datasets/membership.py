"""Which datasets hold which stored completions, so deleting a completion reaches its datasets.

A build records each selected id *before* it reads the document (one row per completion and
dataset in the completion index table: partition `ds-` + the id's capture-time bucket, row key
`<completion id>:<dataset id>`, no other column). Every delete path removes the document first and
looks the rows up after, so a build that read a document before its deletion is always found,
however the two interleave. A row for a completion the build then skipped only causes an
unnecessary rebuild. Once the holders are rebuilding, the deleted ids' rows are dropped, so
deleting an id twice rebuilds nothing the second time.
"""

from __future__ import annotations

import json
import re
import uuid
from collections import defaultdict
from collections.abc import Iterable
from urllib.parse import quote

from azure.core.exceptions import AzureError, HttpResponseError, ServiceRequestError, ServiceResponseError
from azure.core.rest import HttpRequest
from azure.data.tables import TableTransactionError
from azure.data.tables.aio import TableClient

from shared.platform.errors import StorageUnavailable
from shared.store import ids

_PARTITION_PREFIX = "ds-"
_BUCKET_DIGITS = 5
"""The id's 5 leading time digits: 16**9 microseconds, about 19 hours of captures per partition."""
_TRANSACTION = 100
_PART_STATUS = re.compile(rb"^HTTP/1\.1 (\d{3}) ", re.MULTILINE)
"""The status line of each part of a transaction's answer."""


def _key(value: str) -> str:
    """A key as an entity URL carries it: quotes doubled (OData), then percent-encoded."""
    return quote(value.replace("'", "''"), safe="")


def _partition(completion_id: str) -> str:
    return _PARTITION_PREFIX + ids.digits(completion_id)[:_BUCKET_DIGITS]


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
                    row_keys = [f"{member}:{dataset_id}" for member in members[start : start + _TRANSACTION]]
                    try:
                        await self._upsert_keys(partition, row_keys)
                    except (ServiceRequestError, ServiceResponseError):
                        await self._upsert_keys(partition, row_keys)  # idempotent: a dropped connection is retried
        except AzureError as exc:
            raise StorageUnavailable("The completion index is unavailable.") from exc

    async def _upsert_keys(self, partition: str, row_keys: list[str]) -> None:
        """Insert-or-replace rows with only their keys, as one entity-group transaction.

        The transaction's multipart body is written here rather than by `submit_transaction`, which
        builds and parses it with the `email` package: about 1.5 ms of CPU a row, more than a dataset
        build spends converting the row's document. The request goes through the client's own pipeline
        (authentication, retries), byte for byte in the format the SDK writes (Microsoft's "Performing
        entity group transactions"); an answer other than 202 with every part 2xx raises.
        """
        table = self._table
        base = f"{table.scheme}://{table._primary_hostname}"  # the SDK's batch URL base
        changeset, batch = f"changeset_{uuid.uuid4()}", f"batch_{uuid.uuid4()}"
        entity = f"{base}/{table.table_name}(PartitionKey='{_key(partition)}',RowKey='"
        parts = [
            f"--{batch}\r\nContent-Type: multipart/mixed; boundary={changeset}\r\n\r\n",
        ]
        for number, row_key in enumerate(row_keys):
            body = json.dumps({"PartitionKey": partition, "RowKey": row_key})
            parts.append(
                f"--{changeset}\r\nContent-Type: application/http\r\nContent-Transfer-Encoding: binary\r\n"
                f"Content-ID: {number}\r\n\r\n"
                f"PUT {entity}{_key(row_key)}') HTTP/1.1\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(body)}\r\nx-ms-version: {table.api_version}\r\nDataServiceVersion: 3.0\r\n"
                f"Accept: application/json\r\n\r\n{body}\r\n"
            )
        parts.append(f"--{changeset}--\r\n\r\n--{batch}--\r\n")
        request = HttpRequest(
            "POST",
            f"{base}/$batch",
            headers={
                "x-ms-version": table.api_version,
                "DataServiceVersion": "3.0",
                "MaxDataServiceVersion": "3.0;NetFx",
                "Content-Type": f"multipart/mixed; boundary={batch}",
                "Accept": "application/json",
            },
            content="".join(parts).encode(),
        )
        response = await table._client.send_request(request, stream=True)
        answer = await response.read()
        failed = [int(status) for status in _PART_STATUS.findall(answer) if not 200 <= int(status) < 300]
        if response.status_code != 202 or failed:
            raise HttpResponseError(
                message=f"The membership transaction failed: HTTP {response.status_code}, parts {failed[:3]}",
                response=response,
            )

    async def holders(self, completion_ids: Iterable[str]) -> set[str]:
        """The datasets that recorded any of these completions: one range query per capture-time bucket."""
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
                for start in range(0, len(row_keys), _TRANSACTION):
                    operations = [
                        ("delete", {"PartitionKey": partition, "RowKey": row_key})
                        for row_key in row_keys[start : start + _TRANSACTION]
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
