"""Deleting stored completions everywhere they are: document, index rows, and the datasets and eval
runs holding them.

The API delete, purges and the retention sweep all end here, so a deleted completion never stays
in a dataset file or an eval run: each dataset that recorded it (see `shared.datasets.membership`)
is rebuilt without it (and files uploaded from it for fine-tuning are deleted upstream), each eval
run that recorded it has its item and output item erased. Datasets are looked up after the
documents are gone, which is what makes a build racing the delete safe.
"""

from __future__ import annotations

import logging

from shared.datasets.builder import DatasetJobs
from shared.evals.service import EvalService
from shared.fine_tuning.jobs import FineTuningJobs
from shared.platform.errors import NotFound
from shared.store import ids
from shared.store.completion_store import CompletionStore

log = logging.getLogger(__name__)


class Forgetting:
    def __init__(
        self, *, store: CompletionStore, datasets: DatasetJobs, evals: EvalService, fine_tuning: FineTuningJobs
    ) -> None:
        self._store = store
        self._fine_tuning = fine_tuning
        self._datasets = datasets
        self._evals = evals

    async def delete(self, completion_id: str, *, owner: str | None = None) -> None:
        """Delete one completion (404 when unknown or another owner's) and rebuild the datasets that held it."""
        try:
            await self._store.delete(ids.require_completion_id(completion_id), owner=owner)
        except NotFound:
            # A retry after the datasets step failed finishes it; once it succeeded, no dataset holds the id any more.
            if await self._store.index.is_forgotten(completion_id):
                await self.deleted([completion_id])
            raise
        await self.deleted([completion_id])

    async def deleted(self, completion_ids: list[str]) -> None:
        """Called after documents are deleted (purge and retention batches): their datasets are rebuilt, their
        eval runs rewritten."""
        # Eval runs first: the datasets step drops the ids' membership rows, eval runs' as well.
        await self._evals.forget_completions(completion_ids)
        rebuilt = await self._datasets.forget_completions(completion_ids)
        await self._fine_tuning.forget_datasets(rebuilt)
