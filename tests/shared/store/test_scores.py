"""Scores on Azurite: kept on the document, indexed so filters by them read only matching rows."""

from __future__ import annotations

import pytest

from shared.platform.errors import InvalidRequest, NotFound
from shared.store.completion_filter import CompletionFilter
from shared.store.completion_store import CompletionStore
from shared.store.scores import MAX_SCORES_PER_COMPLETION, Score, ScoreCondition
from tests.shared.seed import completion


def score(name: str, value: bool | float | str, author: str = "key:default") -> Score:
    return Score(name=name, value=value, author=author, created_at=1)


async def _ids(store: CompletionStore, selection: CompletionFilter) -> list[str]:
    return [c.id for c in (await store.list(selection, limit=100)).data]


async def _seeded(store: CompletionStore, tag: str, count: int) -> list[str]:
    made = [completion(metadata={"tag": tag}) for _ in range(count)]
    for one in made:
        await store.put(one)
    return [one.id for one in made]


async def test_filters_by_boolean_number_and_label(store: CompletionStore) -> None:
    a, b, c, d = await _seeded(store, "t", 4)
    await store.add_scores(a, [score("helpful", True)])
    await store.add_scores(a, [score("quality", 5)])
    await store.add_scores(b, [score("helpful", False)])
    await store.add_scores(b, [score("quality", 3.5)])
    await store.add_scores(c, [score("quality", 1.0)])
    await store.add_scores(c, [score("tone", "friendly")])
    await store.add_scores(d, [score("quality", "1")])  # a label, never the number 1

    def where(**scores: object) -> CompletionFilter:
        return CompletionFilter.model_validate({"scores": scores})

    assert await _ids(store, where(helpful=True)) == [a]
    assert await _ids(store, where(helpful=False)) == [b]
    assert await _ids(store, where(quality={"gte": 3.5})) == [a, b]
    assert await _ids(store, where(quality={"gt": 3.5})) == [a]
    assert await _ids(store, where(quality={"lte": 1})) == [c], "1.0 is a bound, not `true`"
    assert await _ids(store, where(quality=1)) == [c]
    assert await _ids(store, where(quality="1")) == [d]
    assert await _ids(store, where(quality={"gte": 2, "lt": 5})) == [b]
    assert await _ids(store, where(tone="friendly", quality={"lt": 2})) == [c]
    assert await _ids(store, where(helpful=True, quality={"lt": 5})) == []
    assert (
        await _ids(store, CompletionFilter.model_validate({"metadata": {"tag": "t"}, "scores": {"helpful": 1}})) == []
    )
    assert await store.index.count(where(quality={"gte": 1})) == 3
    assert await store.index.count(CompletionFilter(metadata={"tag": "t"})) == 4


async def test_a_new_score_of_a_name_replaces_the_old_and_moves_its_rows(store: CompletionStore) -> None:
    (one,) = await _seeded(store, "r", 1)
    await store.add_scores(one, [score("helpful", True)])
    updated = await store.add_scores(one, [score("helpful", False, author="key:bob")])
    assert [(s.name, s.value, s.author) for s in updated.scores] == [("helpful", False, "key:bob")]
    assert await store.index.count(CompletionFilter.model_validate({"scores": {"helpful": True}})) == 0
    assert await _ids(store, CompletionFilter.model_validate({"scores": {"helpful": False}})) == [one]
    removed = await store.remove_score(one, "helpful")
    assert removed.scores == []
    assert await store.index.count(CompletionFilter.model_validate({"scores": {"helpful": False}})) == 0
    with pytest.raises(NotFound):
        await store.remove_score(one, "helpful")


async def test_a_completion_holds_a_bounded_number_of_scores(store: CompletionStore) -> None:
    (one,) = await _seeded(store, "b", 1)
    for n in range(MAX_SCORES_PER_COMPLETION):
        await store.add_scores(one, [score(f"s{n}", n)])
    with pytest.raises(InvalidRequest, match="at most"):
        await store.add_scores(one, [score("one-more", 1)])
    await store.add_scores(one, [score("s0", 10)])  # replacing is still allowed


async def test_owner_scope_applies_to_scores(store: CompletionStore) -> None:
    mine = completion(owner="key:alice")
    await store.put(mine)
    with pytest.raises(NotFound):
        await store.add_scores(mine.id, [score("helpful", True)], owner="key:bob")
    await store.add_scores(mine.id, [score("helpful", True)], owner="key:alice")
    scoped = CompletionFilter.model_validate({"scores": {"helpful": True}, "owner": "key:bob"})
    assert await store.index.count(scoped) == 0


def test_conditions_compare_only_values_of_their_own_kind() -> None:
    assert ScoreCondition.model_validate(True).accepts(True)
    assert not ScoreCondition.model_validate(True).accepts(1.0)
    assert not ScoreCondition.model_validate(1).accepts(True)
    assert not ScoreCondition.model_validate({"gte": 0}).accepts(True)
    assert not ScoreCondition.model_validate({"gte": 0}).accepts("5")
    assert not ScoreCondition.model_validate({"gte": 0}).accepts(None)
    with pytest.raises(ValueError, match="needs"):
        ScoreCondition.model_validate({})
    with pytest.raises(ValueError):
        ScoreCondition.model_validate({"eq": [1]})
