"""Retention: stored completions captured longer ago than `RETENTION_DAYS` are deleted, document and
index rows together, by the same deletion loop purges use; datasets holding them are rebuilt.

The same daily sweep removes orphans, documents with no index row left by a delete that died between
its two steps, whatever `RETENTION_DAYS` says: they are already deleted as far as the API knows.
An orphan with no deletion record is a capture whose rows were never written (older than the index
sweep reaches, or from before the index was sharded): it is indexed again.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta

from pydantic import BaseModel

from shared.erasure.purge import ORPHAN_GRACE, DeletedHook, delete_completions
from shared.evals.service import EvalService
from shared.store.completion_filter import CompletionFilter
from shared.store.completion_indexer import CompletionIndexer
from shared.store.completion_store import CompletionStore

log = logging.getLogger(__name__)

_BATCH = 500


class RetentionResult(BaseModel):
    retention_days: int
    cutoff: datetime | None
    """Completions captured before this instant were deleted; null when retention is off."""
    deleted_count: int
    orphans_deleted: int = 0
    """Documents found with no index row (older than an hour) and deleted."""
    orphans_indexed: int = 0
    """Documents found with no index row and no deletion record, and indexed again."""
    eval_runs_deleted: int = 0
    """Eval runs and eval files created before the cutoff, deleted with their items and outputs."""


class RetentionSweep:
    def __init__(
        self,
        *,
        store: CompletionStore,
        indexer: CompletionIndexer,
        retention_days: int,
        on_deleted: DeletedHook | None = None,
        evals: EvalService | None = None,
    ) -> None:
        self._store = store
        self._indexer = indexer
        self._evals = evals
        self._retention_days = retention_days
        self._on_deleted = on_deleted

    async def run(self, *, now: datetime | None = None) -> RetentionResult:
        now = now or datetime.now(UTC)
        orphans, indexed = await self._settle_orphans(older_than=now - ORPHAN_GRACE)
        if self._retention_days == 0:
            log.info("Retention is off (RETENTION_DAYS=0): nothing deleted but %s orphans", orphans)
            return RetentionResult(
                retention_days=0, cutoff=None, deleted_count=0, orphans_deleted=orphans, orphans_indexed=indexed
            )
        cutoff = now - timedelta(days=self._retention_days)
        selection = CompletionFilter(created_before=int(cutoff.timestamp()))
        deleted = 0
        batch: list[str] = []
        # Deleting rows already read does not disturb the walk: its continuation is the next key.
        async for entry in self._store.index.walk(selection, page_size=_BATCH):
            batch.append(entry.id)
            if len(batch) == _BATCH:
                deleted += await delete_completions(self._store, batch, on_deleted=self._on_deleted)
                batch = []
        deleted += await delete_completions(self._store, batch, on_deleted=self._on_deleted)
        cutoff_us = int(cutoff.timestamp() * 1_000_000)
        eval_runs = await self._evals.sweep(created_before_us=cutoff_us) if self._evals is not None else 0
        log.info(
            "Retention deleted %s stored completions and %s eval runs/files from before %s",
            deleted,
            eval_runs,
            cutoff.isoformat(),
        )
        return RetentionResult(
            retention_days=self._retention_days,
            cutoff=cutoff,
            deleted_count=deleted,
            orphans_deleted=orphans,
            orphans_indexed=indexed,
            eval_runs_deleted=eval_runs,
        )

    async def _settle_orphans(self, *, older_than: datetime) -> tuple[int, int]:
        """Orphans whose deletion was recorded (`forgotten` row) are deleted: a delete that died halfway.

        An orphan with no such record is indexed again, never deleted: deleting documents only because
        rows are missing would empty the store if the index table were ever lost. Returns both counts.
        """
        deleted = indexed = 0
        doomed: list[str] = []
        unindexed: list[str] = []
        async for orphan_id in self._store.orphans(older_than=older_than):
            if await self._store.index.is_forgotten(orphan_id):
                doomed.append(orphan_id)
            else:
                unindexed.append(orphan_id)
            if len(doomed) == _BATCH:
                deleted += await delete_completions(self._store, doomed, on_deleted=self._on_deleted)
                doomed = []
            if len(unindexed) == _BATCH:
                await self._indexer.index(unindexed)
                indexed, unindexed = indexed + len(unindexed), []
        deleted += await delete_completions(self._store, doomed, on_deleted=self._on_deleted)
        if unindexed:
            await self._indexer.index(unindexed)
            indexed += len(unindexed)
        if deleted:
            log.warning("Retention sweep deleted %s orphan documents (deleted, but their delete died halfway)", deleted)
        if indexed:
            log.warning("Retention sweep indexed %s documents that had no index rows and no deletion record", indexed)
        return deleted, indexed
