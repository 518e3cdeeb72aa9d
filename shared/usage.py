"""Running usage of the store, kept in the index table so the capture path can check the cap without
a scan.

Completion bytes and counts live in a few *shard* rows of the index table's `usage` partition. Each
worker adds to one shard, chosen at random, with an ETag-guarded merge: one round trip while no
other worker touched that shard, and a re-read plus retry when one did, so no update is lost and
workers rarely contend. Concurrent adds within a worker are folded into one write. Dataset bytes
have one row, set by the quota report, which also reconciles the shards against what is stored:
its correction goes to one `correction` row (counted like a shard) written only if that row is
unchanged since the report began, so two reports running at once never both correct one drift.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from azure.core import MatchConditions
from azure.core.exceptions import AzureError, ResourceExistsError, ResourceModifiedError, ResourceNotFoundError
from azure.data.tables import EdmType, EntityProperty, UpdateMode
from azure.data.tables.aio import TableClient

from shared.errors import StorageUnavailable

log = logging.getLogger(__name__)

SHARDS = 8
PARTITION = "usage"
_DATASETS_ROW = "datasets"
_CORRECTION_ROW = "correction"
_SHARD_PREFIX = "shard-"
_MAX_ATTEMPTS = 8


@dataclass(frozen=True)
class Usage:
    """What the store holds, as far as the counters know."""

    completion_bytes: int = 0
    completion_count: int = 0
    dataset_bytes: int = 0
    dataset_count: int = 0

    @property
    def used_bytes(self) -> int:
        return self.completion_bytes + self.dataset_bytes


@dataclass(frozen=True)
class CorrectionTicket:
    """The correction row as a report found it before reading the counters: its values and ETag."""

    bytes: int
    count: int
    etag: str | None


@dataclass
class _Shard:
    bytes: int
    count: int
    etag: str | None


class UsageCounter:
    """Adds to the running totals on every store write and answers the totals from a short-lived cache."""

    def __init__(
        self,
        *,
        table: TableClient,
        shards: int = SHARDS,
        refresh_seconds: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._table = table
        self._row = f"{_SHARD_PREFIX}{random.randrange(shards):02d}"
        self._shard: _Shard | None = None
        self._pending = (0, 0)
        self._lock = asyncio.Lock()
        self._refresh_seconds = refresh_seconds
        self._clock = clock
        self._snapshot: Usage | None = None
        self._snapshot_at = 0.0
        self._local = (0, 0)
        """What this worker added since the snapshot was read, so it sees its own writes at once."""

    async def add(self, bytes_delta: int, count_delta: int) -> None:
        """Durably add to this worker's shard; a failure is logged, and the next quota report corrects it."""
        self._local = (self._local[0] + bytes_delta, self._local[1] + count_delta)
        self._pending = (self._pending[0] + bytes_delta, self._pending[1] + count_delta)
        async with self._lock:
            delta, self._pending = self._pending, (0, 0)
            if delta == (0, 0):
                return  # an earlier holder of the lock wrote this delta with its own
            try:
                await self._merge(delta)
            except AzureError as exc:
                self._shard = None
                log.warning(
                    "Usage counter %s not updated by %s bytes: %s; the next quota report corrects it",
                    self._row,
                    delta[0],
                    type(exc).__name__,
                )

    async def totals(self, *, max_age_seconds: float | None = None) -> Usage:
        """The running totals, re-read from the table when the cached ones are older than `max_age_seconds`."""
        max_age = self._refresh_seconds if max_age_seconds is None else max_age_seconds
        if self._snapshot is None or self._clock() - self._snapshot_at >= max_age:
            self._local = (0, 0)
            self._snapshot = await self._read()
            self._snapshot_at = self._clock()
        return Usage(
            completion_bytes=self._snapshot.completion_bytes + self._local[0],
            completion_count=self._snapshot.completion_count + self._local[1],
            dataset_bytes=self._snapshot.dataset_bytes,
            dataset_count=self._snapshot.dataset_count,
        )

    async def correction_ticket(self) -> CorrectionTicket:
        """Read before the totals: a correction made after this read makes `correct` refuse."""
        try:
            row = await self._table.get_entity(PARTITION, _CORRECTION_ROW)
        except ResourceNotFoundError:
            return CorrectionTicket(bytes=0, count=0, etag=None)
        except AzureError as exc:
            raise StorageUnavailable("The usage counters are unavailable.") from exc
        return CorrectionTicket(
            bytes=_number(row.get("bytes", 0)), count=_number(row.get("count", 0)), etag=row.metadata["etag"]
        )

    async def correct(self, ticket: CorrectionTicket, bytes_delta: int, count_delta: int) -> bool:
        """Add a drift correction unless another report corrected since `ticket` was read (then False)."""
        values = {"bytes": _int64(ticket.bytes + bytes_delta), "count": ticket.count + count_delta}
        row: dict[str, Any] = {"PartitionKey": PARTITION, "RowKey": _CORRECTION_ROW, **values}
        try:
            if ticket.etag is None:
                await self._table.create_entity(row)
            else:
                await self._table.update_entity(
                    row, mode=UpdateMode.REPLACE, etag=ticket.etag, match_condition=MatchConditions.IfNotModified
                )
        except (ResourceModifiedError, ResourceExistsError, ResourceNotFoundError):
            return False
        except AzureError as exc:
            raise StorageUnavailable("The usage counters are unavailable.") from exc
        self._snapshot = None
        return True

    async def record_datasets(self, *, bytes_total: int, count: int) -> None:
        """Set the dataset totals (the quota report lists the datasets container; it is their only writer)."""
        row = {"PartitionKey": PARTITION, "RowKey": _DATASETS_ROW, "bytes": _int64(bytes_total), "count": count}
        try:
            await self._table.upsert_entity(row, mode=UpdateMode.REPLACE)
        except AzureError as exc:
            raise StorageUnavailable("The usage counters are unavailable.") from exc
        self._snapshot = None

    async def _read(self) -> Usage:
        totals = {"completion_bytes": 0, "completion_count": 0, "dataset_bytes": 0, "dataset_count": 0}
        try:
            async for row in self._table.query_entities("PartitionKey eq @p", parameters={"p": PARTITION}):
                kind = "dataset" if row["RowKey"] == _DATASETS_ROW else "completion"
                totals[f"{kind}_bytes"] += _number(row.get("bytes", 0))
                totals[f"{kind}_count"] += _number(row.get("count", 0))
        except AzureError as exc:
            raise StorageUnavailable("The usage counters are unavailable.") from exc
        return Usage(**totals)

    async def _merge(self, delta: tuple[int, int]) -> None:
        for _ in range(_MAX_ATTEMPTS):
            if self._shard is None:
                self._shard = await self._load_shard()
            shard = self._shard
            values = {"bytes": _int64(shard.bytes + delta[0]), "count": shard.count + delta[1]}
            row: dict[str, Any] = {"PartitionKey": PARTITION, "RowKey": self._row, **values}
            try:
                if shard.etag is None:
                    written = await self._table.create_entity(row)
                else:
                    written = await self._table.update_entity(
                        row, mode=UpdateMode.MERGE, etag=shard.etag, match_condition=MatchConditions.IfNotModified
                    )
            except (ResourceModifiedError, ResourceExistsError, ResourceNotFoundError):
                self._shard = None  # another worker wrote this shard first: re-read and add again
                continue
            self._shard = _Shard(bytes=shard.bytes + delta[0], count=shard.count + delta[1], etag=written["etag"])
            return
        raise ResourceModifiedError(f"usage shard {self._row} kept changing under {_MAX_ATTEMPTS} attempts")

    async def _load_shard(self) -> _Shard:
        try:
            row = await self._table.get_entity(PARTITION, self._row)
        except ResourceNotFoundError:
            return _Shard(bytes=0, count=0, etag=None)
        return _Shard(bytes=_number(row.get("bytes", 0)), count=_number(row.get("count", 0)), etag=row.metadata["etag"])


def _int64(value: int) -> EntityProperty:
    """Byte totals pass 2**31, so they are stored as Edm.Int64 explicitly."""
    return EntityProperty(value, EdmType.INT64)


def _number(value: Any) -> int:
    """An Int64 column reads back as an `EntityProperty`; an Int32 one as a plain int."""
    return int(getattr(value, "value", value))
