"""Scores: judgements attached to a stored completion (a number, a yes/no, or a label), and the
conditions a selection puts on them (`scores.helpful=true`, `scores.quality>=4`)."""

from __future__ import annotations

import math
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, field_validator, model_validator

from shared.platform.errors import InvalidRequest

MAX_SCORES_PER_COMPLETION = 32
MAX_SCORE_CONDITIONS = 8
MAX_LABEL_CHARS = 128
MAX_COMMENT_CHARS = 2048

ScoreName = Annotated[str, StringConstraints(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.:-]+$")]
"""Letters, digits and `_ . : -`: never `=`, `<` or `>`, so `scores.<name>>=4` reads one way only."""
ScoreValue = bool | float | str
"""A number, a boolean (thumbs up/down) or a label; each kind is compared only with its own kind."""
ScoreSource = Literal["human", "model", "rule"]


def _checked_value(value: Any) -> ScoreValue:
    """JSON's `true`, `4` and `"good"` kept as the kind they were sent as (never `"4"` as a number)."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int | float):
        if not math.isfinite(value):
            raise ValueError("a score must be a finite number, a boolean or a label")
        return float(value)
    if isinstance(value, str):
        if not 1 <= len(value) <= MAX_LABEL_CHARS:
            raise ValueError(f"a label must be 1 to {MAX_LABEL_CHARS} characters")
        return value
    raise ValueError("a score must be a number, a boolean or a label (a string)")


class ScoreParams(BaseModel):
    """What a caller sends to score one completion."""

    model_config = ConfigDict(extra="forbid")

    name: ScoreName
    value: ScoreValue
    """A number, a boolean or a label (a string of up to 128 characters)."""
    comment: Annotated[str, StringConstraints(max_length=MAX_COMMENT_CHARS)] | None = None
    source: ScoreSource = "human"
    """Who judged: a person, a model (a grader) or a rule."""

    @field_validator("value", mode="before")
    @classmethod
    def _value_kind(cls, value: Any) -> ScoreValue:
        return _checked_value(value)


class BatchScoreParams(ScoreParams):
    completion_id: str


class BatchScoresParams(BaseModel):
    """Many completions scored in one request (a grader's or a labelling tool's output)."""

    model_config = ConfigDict(extra="forbid")

    scores: list[BatchScoreParams] = Field(min_length=1, max_length=100)


class Score(BaseModel):
    """A kept score: one per name on a completion, a new one replacing the old."""

    name: ScoreName
    value: ScoreValue
    comment: str | None = None
    source: ScoreSource = "human"
    author: str
    """The stable owner id of the caller who scored (`key:<name>`, `entra:<tenant>/<object id>`)."""
    created_at: int

    @field_validator("value", mode="before")
    @classmethod
    def _value_kind(cls, value: Any) -> ScoreValue:
        return _checked_value(value)

    def view(self, completion_id: str) -> dict[str, Any]:
        return {"object": "chat.completion.score", "completion_id": completion_id, **self.model_dump()}


def same_kind_equal(left: ScoreValue, right: ScoreValue) -> bool:
    """`True` is not `1.0` and `"4"` is not `4.0`: a value matches only its own kind."""
    return type(left) is type(right) and left == right


class ScoreCondition(BaseModel):
    """What one score must be: equal to a value, and/or within numeric bounds. A completion without
    that score never matches."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    eq: ScoreValue | None = None
    gt: float | None = None
    gte: float | None = None
    lt: float | None = None
    lte: float | None = None

    @model_validator(mode="before")
    @classmethod
    def _bare_value_is_eq(cls, data: Any) -> Any:
        if isinstance(data, dict):
            if "eq" in data and data["eq"] is not None:
                data = {**data, "eq": _checked_value(data["eq"])}
            return data
        return {"eq": _checked_value(data)}

    @model_validator(mode="after")
    def _some_test(self) -> ScoreCondition:
        bounds = (self.gt, self.gte, self.lt, self.lte)
        if self.eq is None and all(bound is None for bound in bounds):
            raise ValueError("a score condition needs 'eq', 'gt', 'gte', 'lt' or 'lte'")
        if any(bound is not None and not math.isfinite(bound) for bound in bounds):
            raise ValueError("score bounds must be finite numbers")
        return self

    def bounds(self) -> list[tuple[str, float]]:
        """The numeric bounds as (OData operator, value)."""
        named = (("gt", self.gt), ("ge", self.gte), ("lt", self.lt), ("le", self.lte))
        return [(operator, bound) for operator, bound in named if bound is not None]

    def accepts(self, value: ScoreValue | None) -> bool:
        if value is None:
            return False
        if self.eq is not None and not same_kind_equal(value, self.eq):
            return False
        if self.bounds() and (isinstance(value, bool) or not isinstance(value, float)):
            return False
        return all(_compare(value, operator, bound) for operator, bound in self.bounds())  # type: ignore[arg-type]


ScoreConditions = Annotated[dict[ScoreName, ScoreCondition], Field(max_length=MAX_SCORE_CONDITIONS)]


def _compare(value: float, operator: str, bound: float) -> bool:
    return {"gt": value > bound, "ge": value >= bound, "lt": value < bound, "le": value <= bound}[operator]


def parse_score_query(name: str, value: str) -> tuple[str, dict[str, Any]]:
    """One `scores.…` query parameter as (score name, condition fields).

    `scores.quality>=4` arrives as the pair (`scores.quality>`, `4`), `scores.quality>4` as
    (`scores.quality>4`, ``); `scores.helpful=true` as (`scores.helpful`, `true`).
    """
    rest = name[len("scores.") :]
    if rest.endswith(">"):
        return rest[:-1], {"gte": _query_number(name, value)}
    if rest.endswith("<"):
        return rest[:-1], {"lte": _query_number(name, value)}
    if value == "" and ">" in rest:
        score, _, bound = rest.partition(">")
        return score, {"gt": _query_number(name, bound)}
    if value == "" and "<" in rest:
        score, _, bound = rest.partition("<")
        return score, {"lt": _query_number(name, bound)}
    return rest, {"eq": _query_value(value)}


def _query_value(text: str) -> ScoreValue:
    if text in ("true", "false"):
        return text == "true"
    try:
        number = float(text)
    except ValueError:
        return text
    return number if math.isfinite(number) and text.strip() == text else text


def _query_number(name: str, text: str) -> float:
    try:
        number = float(text)
    except ValueError:
        number = math.nan
    if not math.isfinite(number):
        raise InvalidRequest(f"'{name}' must compare with a finite number.", param=name, code="invalid_value")
    return number
