"""Running usage of the store, kept in the index table so the capture path can check the cap without
a scan.

Completion bytes and counts live in a few *shard* rows of the index table's `usage` partition. Each
worker adds to one shard, chosen at random, with an ETag-guarded merge: one round trip while no
other worker touched that shard, and a re-read plus retry when one did, so no update is lost and
workers rarely contend. Concurrent adds within a worker are folded into one write. Dataset bytes
have one row, set by the quota report, which also reconciles the shards against what is stored:
its correction goes to one `correction` row (counted like a shard) written only if that row is
unchanged since the report began, so two reports running at once never both correct one drift.

With per-owner quotas on (`OWNER_QUOTA_BYTES`), each owner also has one row (`owner-<hash>`) that
every write of that owner's completions adds to the same way; the quota report resets those rows
to what the index holds.
"""

from __future__ import annotations

import asyncio
import hashlib
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

from shared.platform.errors import StorageUnavailable

log = logging.getLogger(__name__)

SHARDS = 8
PARTITION = "usage"
_DATASETS_ROW = "datasets"
_CORRECTION_ROW = "correction"
_SHARD_PREFIX = "shard-"
_OWNER_PREFIX = "owner-"
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
        per_owner: bool = False,
    ) -> None:
        self._table = table
        self.per_owner = per_owner
        """Whether each owner's bytes are counted too (per-owner quotas)."""
        self._owners: dict[str, tuple[float, int]] = {}
        """Per owner: when its bytes were read, and its bytes then plus this worker's adds since."""
        self._row = f"{_SHARD_PREFIX}{random.randrange(shards):02d}"
        self._shard: _Shard | None = None
        self._pending = (0, 0)
        self._lock = asyncio.Lock()
        self._refresh_seconds = refresh_seconds
        self._clock = clock
        self._snapshot: Usage | None = None
        self._snapshot_at = 0.0
        self._refreshing: asyncio.Task[None] | None = None
        self._local = (0, 0)
        """What this worker added since the snapshot was read, so it sees its own writes at once."""

    async def add(self, bytes_delta: int, count_delta: int, *, owner: str | None = None) -> None:
        """Durably add to this worker's shard (and the owner's row, when counted); a failure is logged,
        and the next quota report corrects it."""
        if self.per_owner and owner is not None:
            await asyncio.gather(
                self._add_shard(bytes_delta, count_delta), self._add_owner(owner, bytes_delta, count_delta)
            )
        else:
            await self._add_shard(bytes_delta, count_delta)

    async def owner_bytes(self, owner: str, *, max_age_seconds: float | None = None) -> int:
        """An owner's stored completion bytes, from a cache of `refresh_seconds` plus this worker's adds."""
        max_age = self._refresh_seconds if max_age_seconds is None else max_age_seconds
        cached = self._owners.get(owner)
        if cached is not None and self._clock() - cached[0] < max_age:
            return cached[1]
        try:
            row = await self._table.get_entity(PARTITION, _owner_row(owner))
            used = _number(row.get("bytes", 0))
        except ResourceNotFoundError:
            used = 0
        except AzureError as exc:
            raise StorageUnavailable("The usage counters are unavailable.") from exc
        if len(self._owners) > 10_000:
            self._owners.clear()
        self._owners[owner] = (self._clock(), used)
        return used

    async def record_owners(self, totals: dict[str, tuple[int, int]]) -> None:
        """Set every owner's row to what the index holds (bytes, count); rows of owners with nothing go to 0."""
        rows: dict[str, dict[str, Any]] = {}
        try:
            query = "PartitionKey eq @p and RowKey ge @lo and RowKey lt @hi"
            bounds = {"p": PARTITION, "lo": _OWNER_PREFIX, "hi": _OWNER_PREFIX[:-1] + "."}
            async for row in self._table.query_entities(query, parameters=bounds, select=["RowKey", "owner"]):
                rows[row["RowKey"]] = {"owner": row.get("owner", ""), "bytes": _int64(0), "count": 0}
            for owner, (bytes_total, count) in totals.items():
                rows[_owner_row(owner)] = {"owner": owner, "bytes": _int64(bytes_total), "count": count}
            for row_key, values in rows.items():
                entity = {"PartitionKey": PARTITION, "RowKey": row_key, **values}
                await self._table.upsert_entity(entity, mode=UpdateMode.REPLACE)
        except AzureError as exc:
            raise StorageUnavailable("The usage counters are unavailable.") from exc
        self._owners.clear()

    async def _add_owner(self, owner: str, bytes_delta: int, count_delta: int) -> None:
        cached = self._owners.get(owner)
        if cached is not None:
            self._owners[owner] = (cached[0], cached[1] + bytes_delta)
        row_key = _owner_row(owner)
        try:
            for _ in range(_MAX_ATTEMPTS):
                try:
                    row = await self._table.get_entity(PARTITION, row_key)
                except ResourceNotFoundError:
                    fresh = {"PartitionKey": PARTITION, "RowKey": row_key, "owner": owner}
                    try:
                        await self._table.create_entity({**fresh, "bytes": _int64(bytes_delta), "count": count_delta})
                        return
                    except ResourceExistsError:
                        continue
                values = {
                    "PartitionKey": PARTITION,
                    "RowKey": row_key,
                    "bytes": _int64(_number(row.get("bytes", 0)) + bytes_delta),
                    "count": _number(row.get("count", 0)) + count_delta,
                }
                try:
                    await self._table.update_entity(
                        values,
                        mode=UpdateMode.MERGE,
                        etag=row.metadata["etag"],
                        match_condition=MatchConditions.IfNotModified,
                    )
                    return
                except (ResourceModifiedError, ResourceNotFoundError):
                    continue
            raise ResourceModifiedError(f"usage row of an owner kept changing under {_MAX_ATTEMPTS} attempts")
        except AzureError as exc:
            log.warning(
                "Owner usage not updated by %s bytes: %s; the next quota report corrects it",
                bytes_delta,
                type(exc).__name__,
            )

    async def _add_shard(self, bytes_delta: int, count_delta: int) -> None:
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
        """The running totals, re-read from the table when the cached ones are older than `max_age_seconds`.

        Without `max_age_seconds` (the capture path's quota check), a stale snapshot is still answered
        while one background read refreshes it: only a worker's first check waits for storage.
        """
        if self._snapshot is None:
            await asyncio.shield(self._refresh())
        elif max_age_seconds is not None:
            if self._clock() - self._snapshot_at >= max_age_seconds:
                await asyncio.shield(self._refresh())
        elif self._clock() - self._snapshot_at >= self._refresh_seconds:
            self._refresh()
        snapshot = self._snapshot
        assert snapshot is not None
        return Usage(
            completion_bytes=snapshot.completion_bytes + self._local[0],
            completion_count=snapshot.completion_count + self._local[1],
            dataset_bytes=snapshot.dataset_bytes,
            dataset_count=snapshot.dataset_count,
        )

    def _refresh(self) -> asyncio.Task[None]:
        """The one read of the totals in flight in this worker (started when there is none)."""
        if self._refreshing is None:
            self._refreshing = asyncio.get_running_loop().create_task(self._reload())
            self._refreshing.add_done_callback(self._reloaded)
        return self._refreshing

    async def _reload(self) -> None:
        self._local = (0, 0)
        self._snapshot = await self._read()
        self._snapshot_at = self._clock()

    def _reloaded(self, task: asyncio.Task[None]) -> None:
        self._refreshing = None
        if not task.cancelled() and task.exception() is not None:
            log.warning("Usage totals not refreshed: %s; the last ones stay in use", task.exception())

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
                if row["RowKey"].startswith(_OWNER_PREFIX):
                    continue  # per-owner rows count the same bytes again, by owner
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


def _owner_row(owner: str) -> str:
    """Owners are user text: the row key is a hash of it (the owner itself is a column)."""
    return _OWNER_PREFIX + hashlib.sha256(owner.encode("utf-8", "surrogatepass")).hexdigest()[:40]


def _int64(value: int) -> EntityProperty:
    """Byte totals pass 2**31, so they are stored as Edm.Int64 explicitly."""
    return EntityProperty(value, EdmType.INT64)


def _number(value: Any) -> int:
    """An Int64 column reads back as an `EntityProperty`; an Int32 one as a plain int."""
    return int(getattr(value, "value", value))
