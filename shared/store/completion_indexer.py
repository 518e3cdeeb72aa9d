"""The completion index, derived from the stored documents after the fact.

A capture's answer waits for one write, its document. Every blob write raises a blob-created event:
in Azure, Event Grid's storage system topic sends `Microsoft.Storage.BlobCreated` for the
completions container to a Service Bus queue (infra/app/events.bicep); locally the local host posts
the same event to an Azurite queue after each capture. The `index_completions` function takes those
events in batches (a message holds one event, or an array of them as Event Grid sends webhooks
and the local stand-in posts) and writes the index rows of every document in the batch at once, grouped per
partition across captures (`CompletionIndex.add_many`), then adds the batch's bytes and count to the
usage counters in one update per owner.

Nothing is lost if a worker dies between the document and its rows: an undelivered event is
delivered again (Service Bus locks; Event Grid retries for 24 hours), and the `index_sweep` timer
lists the documents captured since its last run and indexes any that still have no row. Indexing is
idempotent; a document counts towards usage only when its rows were new (its `all` rows go in last,
as inserts, so a fresh batch needs no read to know), and the quota report reconciles whatever a
crash between rows and counters left.

Event schema: https://learn.microsoft.com/azure/event-grid/event-schema-blob-storage
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable, Iterable
from datetime import UTC, datetime

from azure.core.exceptions import AzureError, ResourceNotFoundError
from azure.data.tables import UpdateMode
from azure.data.tables.aio import TableClient
from pydantic import BaseModel, TypeAdapter, ValidationError

from shared.platform.errors import StorageUnavailable
from shared.store import ids
from shared.store.completion_filter import CompletionFilter
from shared.store.completion_index import IndexEntry
from shared.store.completion_store import CompletionStore
from shared.store.usage import UsageCounter

log = logging.getLogger(__name__)

BLOB_CREATED = "Microsoft.Storage.BlobCreated"
_SWEEP_PARTITION = "sweep"
_SWEEP_ROW = "watermark"
_FIRST_SWEEP_US = 3600 * 1_000_000
"""With no watermark yet, the sweep looks this far back (older documents: the daily retention sweep)."""
_US = 1_000_000


class BlobCreatedEvent(BaseModel):
    """The fields of an Event Grid `Microsoft.Storage.BlobCreated` event the indexer reads."""

    eventType: str
    subject: str
    """`/blobServices/default/containers/<container>/blobs/<blob name>`"""


_EVENTS = TypeAdapter(BlobCreatedEvent | list[BlobCreatedEvent])


class IndexSweepResult(BaseModel):
    checked_from: datetime
    checked_to: datetime
    repaired: int
    """Documents that had no index rows and were indexed by the sweep."""


class CompletionIndexer:
    """Writes the index rows (and usage counts) of documents already stored."""

    def __init__(
        self,
        *,
        store: CompletionStore,
        table: TableClient,
        container_name: str,
        usage: UsageCounter | None,
        sweep_grace_seconds: int = 60,
        after: Callable[[list[IndexEntry]], Awaitable[object]] | None = None,
    ) -> None:
        self._after = after
        """Told of each batch's newly indexed documents (online evals sample them, off the request path)."""
        self._store = store
        self._table = table
        self._subject_prefix = f"/blobServices/default/containers/{container_name}/blobs/"
        self._usage = usage
        self._grace_us = sweep_grace_seconds * _US

    def completion_ids(self, bodies: Iterable[bytes | str]) -> list[str]:
        """The completion ids a batch of event bodies names; anything else is logged and skipped."""
        found: set[str] = set()
        for body in bodies:
            try:
                parsed = _EVENTS.validate_json(body)
            except ValidationError:
                log.warning("Skipped a message on the completion events queue: not an Event Grid event")
                continue
            for event in parsed if isinstance(parsed, list) else [parsed]:
                blob = event.subject.removeprefix(self._subject_prefix)
                completion_id = blob.removesuffix(".json")
                if event.eventType != BLOB_CREATED or blob == event.subject or not ids.is_completion_id(completion_id):
                    log.warning("Skipped an event for %s (%s): not a stored completion", event.subject, event.eventType)
                    continue
                found.add(completion_id)
        return sorted(found)

    async def index_events(self, bodies: Iterable[bytes | str]) -> int:
        """Index the documents a batch of blob-created events names; returns how many were new."""
        return await self.index(self.completion_ids(bodies))

    async def index(self, completion_ids: Iterable[str]) -> int:
        """Index these documents in one batched write; returns how many had no row before.

        Raises `StorageUnavailable` when the rows could not be written, so the events are redelivered.
        """
        wanted = sorted(set(completion_ids))
        if not wanted:
            return 0
        forgotten = await self._store.index.forgotten_among(wanted)
        # A deleted id (or a delete that died halfway) is never revived; a document gone since is skipped.
        entries = await self._store.indexables(
            [completion_id for completion_id in wanted if completion_id not in forgotten]
        )
        added = await self._store.index.add_many(entries)
        new = [entry for entry in entries if entry.id in added]
        await self._count(new)
        if self._after is not None and new:
            await self._after(new)
        return len(new)

    async def _count(self, entries: list[IndexEntry]) -> None:
        """One counter update per owner for the whole batch; a failure is the quota report's to correct."""
        if self._usage is None or not entries:
            return
        by_owner: dict[str | None, list[int]] = defaultdict(lambda: [0, 0])
        for entry in entries:
            by_owner[entry.owner][0] += entry.size_bytes
            by_owner[entry.owner][1] += 1
        await asyncio.gather(*(self._usage.add(size, count, owner=owner) for owner, (size, count) in by_owner.items()))

    async def sweep(self, *, now_us: int | None = None) -> IndexSweepResult:
        """Index the documents captured since the last sweep (up to `grace` ago) that have no row.

        The event path indexes within seconds; this finds what a lost event or a killed worker left,
        by merging the blob listing of the time range with the index's rows for it.
        """
        now_us = time.time_ns() // 1000 if now_us is None else now_us
        end_us = now_us - self._grace_us
        start_us = await self._watermark(default=end_us - _FIRST_SWEEP_US)
        repaired = 0
        if end_us > start_us:
            selection = CompletionFilter(created_after=start_us // _US, created_before=end_us // _US + 1)
            indexed = {entry.id async for entry in self._store.index.walk(selection, page_size=1000)}
            missing = [cid async for cid in self._store.captured_between(start_us, end_us) if cid not in indexed]
            for first in range(0, len(missing), 500):
                await self.index(missing[first : first + 500])
            repaired = len(missing)
            if repaired:
                log.warning(
                    "Index sweep indexed %s documents whose blob-created event was lost or undelivered", repaired
                )
            await self._advance(end_us)
        return IndexSweepResult(
            checked_from=datetime.fromtimestamp(start_us / _US, UTC),
            checked_to=datetime.fromtimestamp(max(start_us, end_us) / _US, UTC),
            repaired=repaired,
        )

    async def _watermark(self, *, default: int) -> int:
        try:
            row = await self._table.get_entity(_SWEEP_PARTITION, _SWEEP_ROW)
        except ResourceNotFoundError:
            return default
        except AzureError as exc:
            raise StorageUnavailable("The completion index is unavailable.") from exc
        return int(row["until_us"])

    async def _advance(self, until_us: int) -> None:
        """Move the watermark on (timers run on one instance at a time; a lost race only re-checks)."""
        row = {"PartitionKey": _SWEEP_PARTITION, "RowKey": _SWEEP_ROW, "until_us": str(until_us)}
        try:
            await self._table.upsert_entity(row, mode=UpdateMode.REPLACE)
        except AzureError as exc:
            raise StorageUnavailable("The completion index is unavailable.") from exc
