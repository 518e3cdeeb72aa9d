"""Rows of one table partition inserted (or inserted or replaced) as one entity-group transaction, cheaply;
rows of many partitions upserted as one transaction per partition and `MAX_ROWS`, a few at a time.

The Tables SDK's `submit_transaction` builds and parses the transaction's multipart body with the
`email` package: about 2 ms of CPU per transaction on this project's machines, more than the index
rows or membership rows it carries are worth (the indexer writes one small transaction per term and
shard of a batch, several per captured document). Here the body is written as text, byte for byte in
the format the SDK sends (Microsoft's "Performing entity group transactions",
https://learn.microsoft.com/rest/api/storageservices/performing-entity-group-transactions), and
sent through the table client's own pipeline, so authentication, retries and logging are the SDK's.
The pipeline is reached through the client's `_client` attribute, the one private name used here;
`tests/shared/store/test_table_transactions.py` pins what this relies on.
"""

from __future__ import annotations

import asyncio
import json
import math
import re
import uuid
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from typing import Any
from urllib.parse import quote

from azure.core.exceptions import HttpResponseError, ResourceExistsError, ServiceRequestError, ServiceResponseError
from azure.core.rest import HttpRequest
from azure.data.tables.aio import TableClient

MAX_ROWS = 100
"""Entities one transaction may hold (the service's limit)."""
_PART_STATUS = re.compile(rb"^HTTP/1\.1 (\d{3}) ", re.MULTILINE)
"""The status line of each part of a transaction's answer."""
_INT32 = range(-(2**31), 2**31)
_NON_FINITE = {"nan": "NaN", "inf": "Infinity", "-inf": "-Infinity"}


def _key(value: str) -> str:
    """A key as an entity URL carries it: quotes doubled (OData), then percent-encoded."""
    return quote(value.replace("'", "''"), safe="")


def entity_json(row: Mapping[str, Any]) -> str:
    """A row as the service's JSON entity, typed as the SDK types it (a row read back is the same)."""
    properties: dict[str, Any] = {}
    for name, value in row.items():
        if value is None:
            continue
        if isinstance(value, bool | str):
            properties[name] = value
        elif isinstance(value, int):
            if value in _INT32:
                properties[name] = value
            else:
                properties[name], properties[f"{name}@odata.type"] = str(value), "Edm.Int64"
        elif isinstance(value, float):
            properties[name] = value if math.isfinite(value) else _NON_FINITE[str(value)]
            properties[f"{name}@odata.type"] = "Edm.Double"
        else:
            raise TypeError(f"A table row cannot hold {type(value).__name__} ({name})")
    return json.dumps(properties)  # ASCII: no line separator inside the multipart body


async def upsert_rows(table: TableClient, rows: Sequence[Mapping[str, Any]]) -> None:
    """Insert or replace rows of one partition (at most `MAX_ROWS`) all together or not at all.

    An answer other than 202 with every part 2xx raises `HttpResponseError`.
    """
    await _sent_once_more_if_dropped(table, rows, insert=False)


async def upsert_grouped(table: TableClient, rows: Iterable[Mapping[str, Any]], *, in_flight: int) -> None:
    """Insert or replace rows of any partitions: one transaction per partition and `MAX_ROWS` rows,
    `in_flight` of them at a time. Every transaction is awaited; then the first failure is raised."""
    by_partition: dict[str, list[Mapping[str, Any]]] = defaultdict(list)
    for row in rows:
        by_partition[row["PartitionKey"]].append(row)
    gate = asyncio.Semaphore(in_flight)

    async def send(transaction: Sequence[Mapping[str, Any]]) -> None:
        async with gate:
            await upsert_rows(table, transaction)

    results = await asyncio.gather(
        *(
            send(partition[start : start + MAX_ROWS])
            for partition in by_partition.values()
            for start in range(0, len(partition), MAX_ROWS)
        ),
        return_exceptions=True,
    )
    for result in results:
        if isinstance(result, BaseException):
            raise result


async def insert_rows(table: TableClient, rows: Sequence[Mapping[str, Any]]) -> None:
    """Insert rows of one partition all together, or none when any of them exists already
    (`ResourceExistsError`; other refusals raise `HttpResponseError`).

    If a dropped connection hid that the first attempt landed, the retry meets its own rows and
    raises `ResourceExistsError`: a caller must take that as "already there", not as an error.
    """
    await _sent_once_more_if_dropped(table, rows, insert=True)


async def _sent_once_more_if_dropped(table: TableClient, rows: Sequence[Mapping[str, Any]], *, insert: bool) -> None:
    """The SDK does not retry a POST whose connection broke (a server closing an idle pooled
    connection does that, and a flooded emulator); one more attempt is safe for both operations."""
    try:
        await _send(table, rows, insert=insert)
    except (ServiceRequestError, ServiceResponseError):
        await _send(table, rows, insert=insert)


async def _send(table: TableClient, rows: Sequence[Mapping[str, Any]], *, insert: bool) -> None:
    if not rows or len(rows) > MAX_ROWS or len({row["PartitionKey"] for row in rows}) != 1:
        raise ValueError(f"A transaction holds 1 to {MAX_ROWS} rows of one partition")
    base = table.url.split("?", 1)[0]
    changeset, batch = f"changeset_{uuid.uuid4()}", f"batch_{uuid.uuid4()}"
    parts = [f"--{batch}\r\nContent-Type: multipart/mixed; boundary={changeset}\r\n\r\n"]
    for number, row in enumerate(rows):
        body = entity_json(row).encode()
        keys = f"(PartitionKey='{_key(row['PartitionKey'])}',RowKey='{_key(row['RowKey'])}')"
        operation = f"POST {base}/{table.table_name}" if insert else f"PUT {base}/{table.table_name}{keys}"
        parts.append(
            f"--{changeset}\r\nContent-Type: application/http\r\nContent-Transfer-Encoding: binary\r\n"
            f"Content-ID: {number}\r\n\r\n"
            f"{operation} HTTP/1.1\r\nContent-Type: application/json\r\nPrefer: return-no-content\r\n"
            f"Content-Length: {len(body)}\r\nx-ms-version: {table.api_version}\r\nDataServiceVersion: 3.0\r\n"
            f"Accept: application/json\r\n\r\n{body.decode()}\r\n"
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
    if response.status_code == 202 and failed and set(failed) == {409}:
        raise ResourceExistsError(message="A row of the transaction exists already", response=response)
    if response.status_code != 202 or failed:
        raise HttpResponseError(
            message=f"A table transaction failed: HTTP {response.status_code}, parts {failed[:3]}",
            response=response,
        )
