"""Scoring stored completions: one at a time from the pane or a script, or many at once from a grader."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from pydantic import ValidationError

from shared.platform.errors import DistilleryError, InvalidRequest
from shared.platform.request_body import validation_error
from shared.store import ids
from shared.store.completion_store import CompletionStore
from shared.store.scores import BatchScoresParams, Score, ScoreParams

BATCH_IN_FLIGHT = 8
"""Documents rewritten at once by a batch: each is a read and an ETag-guarded write."""


def parse_score_params(body: dict[str, Any]) -> ScoreParams:
    try:
        return ScoreParams.model_validate(body)
    except ValidationError as exc:
        raise validation_error(exc) from None


def parse_batch_score_params(body: dict[str, Any]) -> BatchScoresParams:
    try:
        return BatchScoresParams.model_validate(body)
    except ValidationError as exc:
        raise validation_error(exc) from None


class Scoring:
    """Adds, lists and removes scores; the author is always the caller, never a field of the body."""

    def __init__(self, *, store: CompletionStore) -> None:
        self._store = store

    async def add(self, completion_id: str, params: ScoreParams, *, author: str, owner: str | None) -> dict[str, Any]:
        score = Score(**params.model_dump(), author=author, created_at=int(time.time()))
        await self._store.add_score(completion_id, score, owner=owner)
        return score.view(completion_id)

    async def list(self, completion_id: str, *, owner: str | None) -> dict[str, Any]:
        completion = await self._store.get(completion_id, owner=owner)
        return {"object": "list", "data": [score.view(completion.id) for score in completion.scores]}

    async def remove(self, completion_id: str, name: str, *, owner: str | None) -> dict[str, Any]:
        await self._store.remove_score(ids.require_completion_id(completion_id), name, owner=owner)
        return {
            "object": "chat.completion.score.deleted",
            "completion_id": completion_id,
            "name": name,
            "deleted": True,
        }

    async def add_many(self, params: BatchScoresParams, *, author: str, owner: str | None) -> dict[str, Any]:
        """Each item succeeds or fails on its own: a result per item, in order, errors in the OpenAI shape."""
        slots = asyncio.Semaphore(BATCH_IN_FLIGHT)

        async def one(item: Any) -> dict[str, Any]:
            async with slots:
                try:
                    ids.require_completion_id(item.completion_id)
                    fields = item.model_dump(exclude={"completion_id"})
                    return await self.add(item.completion_id, ScoreParams(**fields), author=author, owner=owner)
                except DistilleryError as error:
                    return {"object": "chat.completion.score", "completion_id": item.completion_id, **error.body()}

        results = await asyncio.gather(*(one(item) for item in params.scores))
        failed = sum(1 for result in results if "error" in result)
        return {"object": "list", "data": results, "succeeded": len(results) - failed, "failed": failed}


def require_score_name(name: str) -> str:
    """A path's score name, checked like a body's (a 400, not a 404, for one that can never exist)."""
    try:
        ScoreParams.model_validate({"name": name, "value": True})
    except ValidationError:
        raise InvalidRequest(f"Invalid score name '{name}'.", param="name", code="invalid_value") from None
    return name
