"""Testing criteria (graders) in the OpenAI Evals wire shapes, and grading one item with each.

- `string_check`: `eq` / `ne` compare exactly; `like` / `ilike` pass when the reference occurs in the
  input (case-sensitive / not). Score 1 or 0.
- `text_similarity`: a score in [0, 1] from a well-kept library, passing at `score >= pass_threshold`:
  `fuzzy_match` rapidfuzz's normalised Indel similarity; `bleu` sacreBLEU's sentence BLEU / 100;
  `gleu` NLTK's sentence GLEU; `meteor` NLTK's METEOR with exact and Porter-stem matches (no WordNet
  synonyms: WordNet's data needs a download this service does not make); `rouge_1`…`rouge_5`,
  `rouge_l` the F-measure of Google's rouge-score (stemming on); `cosine` the cosine similarity of
  the two texts' embeddings from the `EVAL_EMBEDDINGS_DEPLOYMENT` deployment. Texts longer than
  `EVAL_MAX_COMPARED_CHARS` are an `error` result; long pairs are scored off the event loop
  (`shared.evals.metrics`).
- `label_model` / `score_model`: a model (the criterion's `model`, a deployment) is asked with
  structured output for a label from `labels` / a number in `range`; an answer outside them is an
  error for that item, never a pass.
- `python` and `multi` are refused: running callers' code needs a sandbox this service does not have.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from typing import Annotated, Any, Literal

from openai.types.chat import ChatCompletion
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, model_validator

from shared.evals.metrics import MetricRefused, TextMetrics
from shared.evals.templates import check_variables, content_text, render, render_messages
from shared.platform.errors import InvalidRequest
from shared.upstream.model_calls import ModelCalls, UpstreamCallFailed

REFUSED_GRADERS = frozenset({"python", "multi"})
MAX_TESTING_CRITERIA = 50
"""Criteria one eval holds at most: each may call a model once per item."""


class _Grader(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=256)


class StringCheckGrader(_Grader):
    type: Literal["string_check"]
    input: str
    reference: str
    operation: Literal["eq", "ne", "like", "ilike"]


SimilarityMetric = Literal[
    "cosine", "fuzzy_match", "bleu", "gleu", "meteor", "rouge_1", "rouge_2", "rouge_3", "rouge_4", "rouge_5", "rouge_l"
]


class TextSimilarityGrader(_Grader):
    type: Literal["text_similarity"]
    input: str
    reference: str
    evaluation_metric: SimilarityMetric
    pass_threshold: float = Field(ge=0, le=1)


class GraderMessage(BaseModel):
    """A grader-model prompt message: `{role, content}` (content text or text parts), may hold templates."""

    model_config = ConfigDict(extra="forbid")

    role: Literal["user", "assistant", "system", "developer"]
    content: str | list[dict[str, Any]]
    type: Literal["message"] | None = None


class GraderSamplingParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    max_completions_tokens: int | None = Field(None, ge=1)
    seed: int | None = None
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, ge=0, le=1)
    reasoning_effort: str | None = None


class LabelModelGrader(_Grader):
    type: Literal["label_model"]
    model: str = Field(min_length=1)
    input: list[GraderMessage] = Field(min_length=1)
    labels: list[str] = Field(min_length=1)
    passing_labels: list[str] = Field(min_length=1)

    @model_validator(mode="after")
    def _passing_labels_are_labels(self) -> LabelModelGrader:
        unknown = set(self.passing_labels) - set(self.labels)
        if unknown:
            raise ValueError(f"passing_labels must be among labels; not a label: {', '.join(sorted(unknown))}")
        return self


class ScoreModelGrader(_Grader):
    type: Literal["score_model"]
    model: str = Field(min_length=1)
    input: list[GraderMessage] = Field(min_length=1)
    range: tuple[float, float] = (0.0, 1.0)
    pass_threshold: float | None = None
    """Passing scores are at least this; when unset, at least the middle of `range`."""
    sampling_params: GraderSamplingParams | None = None

    @model_validator(mode="after")
    def _threshold_in_range(self) -> ScoreModelGrader:
        low, high = self.range
        if low >= high:
            raise ValueError("range must be [low, high] with low < high")
        if self.pass_threshold is not None and not low <= self.pass_threshold <= high:
            raise ValueError("pass_threshold must lie within range")
        return self

    @property
    def threshold(self) -> float:
        low, high = self.range
        return (low + high) / 2 if self.pass_threshold is None else self.pass_threshold


TestingCriterion = Annotated[
    StringCheckGrader | TextSimilarityGrader | LabelModelGrader | ScoreModelGrader, Field(discriminator="type")
]
_CRITERIA = TypeAdapter(list[TestingCriterion])


class GradeResult(BaseModel):
    """One criterion's verdict on one item (an output item's `results[]` entry, plus `error`)."""

    name: str
    type: str
    score: float
    passed: bool
    sample: dict[str, Any] | None = None
    """Model graders: what the grader model was asked and answered."""
    usage: dict[str, dict[str, int]] = Field(default_factory=dict)
    """Grader model -> token usage of this grading."""
    error: str | None = None
    """Set when the item could not be graded by this criterion: counted as errored, not failed."""


def parse_testing_criteria(raw: Any) -> list[TestingCriterion]:
    """Validate `testing_criteria`; a 400 names the criterion and field (`testing_criteria[1].operation`)."""
    if not isinstance(raw, list) or not raw:
        raise InvalidRequest("'testing_criteria' must be a non-empty list of graders.", param="testing_criteria")
    if len(raw) > MAX_TESTING_CRITERIA:
        raise InvalidRequest(
            f"'testing_criteria' has {len(raw)} graders; an eval holds at most {MAX_TESTING_CRITERIA}.",
            param="testing_criteria",
            code="too_many_testing_criteria",
        )
    for position, criterion in enumerate(raw):
        kind = criterion.get("type") if isinstance(criterion, dict) else None
        if kind in REFUSED_GRADERS:
            raise InvalidRequest(
                f"testing_criteria[{position}]: '{kind}' graders run callers' code, and this service has no "
                "sandbox to run it safely. Use string_check, text_similarity, label_model or score_model.",
                param=f"testing_criteria[{position}].type",
                code="unsupported_grader",
            )
    try:
        criteria = _CRITERIA.validate_python(raw)
    except ValidationError as exc:
        raise _criterion_error(exc.errors()[0]) from None
    names = [criterion.name for criterion in criteria]
    if len(set(names)) != len(names):
        raise InvalidRequest("Testing criteria names must be unique.", param="testing_criteria")
    return criteria


def _criterion_error(error: Any) -> InvalidRequest:
    loc = error["loc"]
    where = f"testing_criteria[{loc[0]}]" + "".join(f".{part}" for part in loc[2:])
    kinds = "string_check, text_similarity, label_model or score_model"
    messages = {
        "missing": f"Missing required parameter: '{where}'.",
        "extra_forbidden": f"Unrecognized parameter: '{where}'.",
        "union_tag_invalid": f"{where}: unknown grader type; use {kinds}.",
        "union_tag_not_found": f"{where}: a grader needs a 'type': {kinds}.",
    }
    message = messages.get(error["type"], f"Invalid value for '{where}': {error['msg']}.")
    return InvalidRequest(message, param=where, code="invalid_value")


def check_templates(
    criteria: list[TestingCriterion], *, item_schema: dict[str, Any] | None, sample_available: bool
) -> None:
    for position, criterion in enumerate(criteria):
        texts: list[str]
        if isinstance(criterion, StringCheckGrader | TextSimilarityGrader):
            texts = [criterion.input, criterion.reference]
        else:
            texts = [content_text(message.content) for message in criterion.input]
        check_variables(
            texts,
            item_schema=item_schema,
            sample_available=sample_available,
            param=f"testing_criteria[{position}]",
        )


def make_sample(
    *, input_messages: list[dict[str, Any]], completion: ChatCompletion | None, error: str | None = None
) -> dict[str, Any]:
    """The output item's `sample`, plus `output_text` / `output_json` / `output_tools` for templates."""
    sample: dict[str, Any] = {"input": [_sample_message(message) for message in input_messages], "output": []}
    if completion is not None:
        choice = completion.choices[0] if completion.choices else None
        message = choice.message if choice is not None else None
        text = (message.content if message is not None else None) or ""
        usage = completion.usage
        sample.update(
            model=completion.model,
            finish_reason=choice.finish_reason if choice is not None else "",
            output=[{"role": "assistant", "content": text}],
            usage={
                "prompt_tokens": usage.prompt_tokens if usage else 0,
                "completion_tokens": usage.completion_tokens if usage else 0,
                "total_tokens": usage.total_tokens if usage else 0,
                "cached_tokens": (
                    usage.prompt_tokens_details.cached_tokens or 0 if usage and usage.prompt_tokens_details else 0
                ),
            },
        )
        sample["output_text"] = text
        if message is not None and message.tool_calls:
            sample["output_tools"] = [call.model_dump(exclude_none=True) for call in message.tool_calls]
        output_json = _json_or_none(text)
        if output_json is not None:
            sample["output_json"] = output_json
    if error is not None:
        sample["error"] = {"code": "sample_failed", "message": error}
    return sample


def stored_sample(*, input_messages: list[dict[str, Any]], output_text: str, model: str) -> dict[str, Any]:
    """A sample that is an answer already given (a stored completion's, or a data file's)."""
    sample: dict[str, Any] = {
        "input": [_sample_message(message) for message in input_messages],
        "output": [{"role": "assistant", "content": output_text}],
        "model": model,
        "output_text": output_text,
    }
    output_json = _json_or_none(output_text)
    if output_json is not None:
        sample["output_json"] = output_json
    return sample


async def grade(
    criterion: TestingCriterion,
    *,
    item: dict[str, Any],
    sample: dict[str, Any] | None,
    calls: ModelCalls,
    metrics: TextMetrics,
    embeddings_deployment: str,
) -> GradeResult:
    try:
        if isinstance(criterion, StringCheckGrader):
            score = _string_check(criterion, item, sample)
            return _result(criterion, score, passed=score == 1.0)
        if isinstance(criterion, TextSimilarityGrader):
            hypothesis = render(criterion.input, item=item, sample=sample)
            reference = render(criterion.reference, item=item, sample=sample)
            if criterion.evaluation_metric == "cosine":
                score = await _cosine(calls, embeddings_deployment, hypothesis, reference)
            else:
                score = await metrics.score(criterion.evaluation_metric, hypothesis, reference)
            return _result(criterion, score, passed=score >= criterion.pass_threshold)
        return await _grade_with_model(criterion, item, sample, calls)
    except UpstreamCallFailed as exc:
        return _result(criterion, 0.0, passed=False, error=f"The grader model call failed: {exc.message}")
    except MetricRefused as exc:
        return _result(criterion, 0.0, passed=False, error=str(exc))


def _result(criterion: TestingCriterion, score: float, *, passed: bool, **extra: Any) -> GradeResult:
    return GradeResult(name=criterion.name, type=criterion.type, score=score, passed=passed, **extra)


def _string_check(criterion: StringCheckGrader, item: dict[str, Any], sample: dict[str, Any] | None) -> float:
    value = render(criterion.input, item=item, sample=sample)
    reference = render(criterion.reference, item=item, sample=sample)
    checks: dict[str, Callable[[], bool]] = {
        "eq": lambda: value == reference,
        "ne": lambda: value != reference,
        "like": lambda: reference in value,
        "ilike": lambda: reference.casefold() in value.casefold(),
    }
    return 1.0 if checks[criterion.operation]() else 0.0


async def _cosine(calls: ModelCalls, deployment: str, hypothesis: str, reference: str) -> float:
    first, second = await calls.embed(deployment=deployment, texts=[hypothesis, reference])
    norms = math.sqrt(sum(a * a for a in first)) * math.sqrt(sum(b * b for b in second))
    return 0.0 if norms == 0 else max(0.0, min(1.0, sum(a * b for a, b in zip(first, second, strict=True)) / norms))


async def _grade_with_model(
    criterion: LabelModelGrader | ScoreModelGrader,
    item: dict[str, Any],
    sample: dict[str, Any] | None,
    calls: ModelCalls,
) -> GradeResult:
    messages = render_messages([m.model_dump(exclude_none=True) for m in criterion.input], item=item, sample=sample)
    body: dict[str, Any] = {"messages": messages, "response_format": _answer_format(criterion)}
    if isinstance(criterion, ScoreModelGrader) and criterion.sampling_params is not None:
        params = criterion.sampling_params
        body.update(
            {
                key: value
                for key, value in {
                    "seed": params.seed,
                    "temperature": params.temperature,
                    "top_p": params.top_p,
                    "max_completion_tokens": params.max_completions_tokens,
                    "reasoning_effort": params.reasoning_effort,
                }.items()
                if value is not None
            }
        )
    completion = await calls.chat(deployment=criterion.model, body=body)
    answer_text = (completion.choices[0].message.content if completion.choices else None) or ""
    usage = completion.usage
    used = {
        criterion.model: {
            "prompt_tokens": usage.prompt_tokens if usage else 0,
            "completion_tokens": usage.completion_tokens if usage else 0,
            "total_tokens": usage.total_tokens if usage else 0,
        }
    }
    asked = {"input": messages, "output": [{"role": "assistant", "content": answer_text}]}
    answer = _json_or_none(answer_text)
    if isinstance(criterion, LabelModelGrader):
        label = answer.get("label") if isinstance(answer, dict) else None
        if label not in criterion.labels:
            error = f"The grader model did not answer with one of the labels {criterion.labels}: {answer_text[:200]!r}"
            return _result(criterion, 0.0, passed=False, sample=asked, usage=used, error=error)
        passed = label in criterion.passing_labels
        return _result(criterion, 1.0 if passed else 0.0, passed=passed, sample={**asked, "label": label}, usage=used)
    score = answer.get("score") if isinstance(answer, dict) else None
    low, high = criterion.range
    if not isinstance(score, int | float) or isinstance(score, bool) or not low <= score <= high:
        error = f"The grader model did not answer with a score in [{low}, {high}]: {answer_text[:200]!r}"
        return _result(criterion, 0.0, passed=False, sample=asked, usage=used, error=error)
    return _result(criterion, float(score), passed=score >= criterion.threshold, sample=asked, usage=used)


def _answer_format(criterion: LabelModelGrader | ScoreModelGrader) -> dict[str, Any]:
    answer: dict[str, Any]
    if isinstance(criterion, LabelModelGrader):
        answer = {"label": {"type": "string", "enum": criterion.labels}}
        name = "label"
    else:
        low, high = criterion.range
        answer = {"score": {"type": "number", "minimum": low, "maximum": high}}
        name = "score"
    schema = {
        "type": "object",
        "properties": {"steps": {"type": "array", "items": {"type": "string"}}, **answer},
        "required": ["steps", name],
        "additionalProperties": False,
    }
    return {"type": "json_schema", "json_schema": {"name": f"grader_{name}", "strict": True, "schema": schema}}


def _sample_message(message: dict[str, Any]) -> dict[str, Any]:
    content = message.get("content")
    if not isinstance(content, str):
        content = json.dumps(content, ensure_ascii=False) if content is not None else ""
    return {"role": str(message.get("role", "user")), "content": content}


def _json_or_none(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return None
