"""Scoring stored completions: one at a time from the pane or a script, or many at once from a grader."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from pydantic import ValidationError

from shared.platform.errors import DistilleryError, InvalidRequest
from shared.platform.request_body import parse_model
from shared.store import ids
from shared.store.completion_store import CompletionStore
from shared.store.scores import BatchScoresParams, Score, ScoreParams

BATCH_IN_FLIGHT = 8
"""Documents rewritten at once by a batch: each is a read and an ETag-guarded write."""


def parse_score_params(body: dict[str, Any]) -> ScoreParams:
    return parse_model(ScoreParams, body)


def parse_batch_score_params(body: dict[str, Any]) -> BatchScoresParams:
    return parse_model(BatchScoresParams, body)


class Scoring:
    """Adds, lists and removes scores; the author is always the caller, never a field of the body."""

    def __init__(self, *, store: CompletionStore) -> None:
        self._store = store

    async def add(self, completion_id: str, params: ScoreParams, *, author: str, owner: str | None) -> dict[str, Any]:
        score = _score(params, author)
        await self._store.add_scores(completion_id, [score], owner=owner)
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
        """A result per item, in order, errors in the OpenAI shape. Each completion's items are one
        document write (so they never race each other), and succeed or fail together."""
        by_completion: dict[str, list[int]] = {}
        for position, item in enumerate(params.scores):
            by_completion.setdefault(item.completion_id, []).append(position)
        results: list[dict[str, Any]] = [{} for _ in params.scores]
        slots = asyncio.Semaphore(BATCH_IN_FLIGHT)

        async def one(completion_id: str, positions: list[int]) -> None:
            scores = [_score(params.scores[position], author) for position in positions]
            async with slots:
                try:
                    await self._store.add_scores(ids.require_completion_id(completion_id), scores, owner=owner)
                    views = [score.view(completion_id) for score in scores]
                except DistilleryError as error:
                    failure = {"object": "chat.completion.score", "completion_id": completion_id, **error.body()}
                    views = [failure] * len(positions)
            for position, view in zip(positions, views, strict=True):
                results[position] = view

        await asyncio.gather(*(one(completion_id, positions) for completion_id, positions in by_completion.items()))
        failed = sum(1 for result in results if "error" in result)
        return {"object": "list", "data": results, "succeeded": len(results) - failed, "failed": failed}


def _score(params: ScoreParams, author: str) -> Score:
    fields = params.model_dump(include={"name", "value", "comment", "source"})
    return Score(**fields, author=author, created_at=int(time.time()))


def require_score_name(name: str) -> str:
    """A path's score name, checked like a body's (a 400, not a 404, for one that can never exist)."""
    try:
        ScoreParams.model_validate({"name": name, "value": True})
    except ValidationError:
        raise InvalidRequest(f"Invalid score name '{name}'.", param="name", code="invalid_value") from None
    return name
