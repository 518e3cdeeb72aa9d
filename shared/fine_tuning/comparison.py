"""Judge the student automatically: once its deployment is ready, compare it with its teacher.

The items are the dataset's held-out split (`validation.jsonl`: conversations that never went into
training). One eval, two runs over the same items: the teacher's stored answers graded as they are,
and the student re-answering each conversation on its new deployment. The graders are the ones chosen
at Distill time (`comparison.testing_criteria`), else a text-similarity grader against the teacher's
answer, plus a `score_model` judge when a judge deployment is configured. The runs go on the eval
queue like any other; the job record links them (lineage: ... deployment -> comparison run).
"""

from __future__ import annotations

import json
import logging
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from shared.datasets import formats
from shared.datasets.records import DatasetRecords
from shared.evals.graders import parse_testing_criteria
from shared.evals.params import EvalCreateParams, RunCreateParams
from shared.evals.service import FINE_TUNING_JOB_METADATA, EvalService
from shared.platform.errors import DistilleryError, NotFound

log = logging.getLogger(__name__)

MAX_COMPARISON_ITEMS = 500
"""Held-out items one automatic comparison grades at most (the first ones of the file)."""
SIMILARITY_CRITERION = {
    "type": "text_similarity",
    "name": "close to the teacher",
    "evaluation_metric": "rouge_l",
    "input": "{{sample.output_text}}",
    "reference": "{{item.reference}}",
    "pass_threshold": 0.5,
}


def judge_criterion(deployment: str) -> dict[str, Any]:
    """A 1-5 `score_model` judge of the answer against the teacher's, passing at 4."""
    return {
        "type": "score_model",
        "name": "judge",
        "model": deployment,
        "range": [1, 5],
        "pass_threshold": 4,
        "input": [
            {
                "role": "system",
                "content": "Rate from 1 to 5 how well the answer serves the conversation, as well as the "
                "reference answer does (5: as good or better). Reply with the number only.",
            },
            {
                "role": "user",
                "content": "Conversation: {{item.input}}\nReference answer: {{item.reference}}\n"
                "Answer: {{sample.output_text}}",
            },
        ],
    }


class ComparisonPlan(BaseModel):
    """`comparison` in the Distill request: how the student is judged once deployed."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = True
    testing_criteria: list[dict[str, Any]] | None = Field(None, min_length=1)
    """Graders as in `POST /api/evals` (items: `input`, `reference`; sample: `output_text`)."""
    judge_deployment: str | None = Field(None, min_length=1)
    """Adds a `score_model` judge on this deployment to the default graders (else COMPARISON_JUDGE_DEPLOYMENT)."""

    @field_validator("testing_criteria")
    @classmethod
    def _graders_are_valid(cls, criteria: list[dict[str, Any]] | None) -> list[dict[str, Any]] | None:
        if criteria is not None:
            try:
                parse_testing_criteria(criteria)
            except DistilleryError as exc:
                raise ValueError(exc.message) from None
        return criteria


class ComparisonRuns(BaseModel):
    """The automatic comparison of one deployment: an eval and its teacher and student runs."""

    eval_id: str | None = None
    teacher_run_id: str | None = None
    student_run_id: str | None = None
    items: int = 0
    error: str | None = None
    """Why no comparison could start (no held-out items, a refused grader...)."""


class StudentComparison:
    def __init__(self, *, evals: EvalService, datasets: DatasetRecords, judge_deployment: str | None) -> None:
        self._evals = evals
        self._datasets = datasets
        self._judge = judge_deployment

    async def start(
        self, *, job_id: str, dataset_id: str, deployment: str, owner: str | None, plan: ComparisonPlan | None
    ) -> ComparisonRuns:
        """Create the eval and queue both runs; a problem is returned in `error`, never raised (a timer calls this)."""
        plan = plan or ComparisonPlan()
        try:
            rows = await self._held_out(dataset_id)
        except NotFound:
            rows = []  # no validation split
        if not rows:
            return ComparisonRuns(
                error=f"Dataset '{dataset_id}' has no held-out items ({formats.VALIDATION_FILE}): build it with a "
                "validation_fraction above 0 to have the student judged automatically."
            )
        criteria = plan.testing_criteria or [SIMILARITY_CRITERION]
        judge = plan.judge_deployment or self._judge
        if plan.testing_criteria is None and judge is not None:
            criteria = [*criteria, judge_criterion(judge)]
        metadata = {FINE_TUNING_JOB_METADATA: job_id, "deployment": deployment}
        try:
            record = await self._evals.create_eval(
                EvalCreateParams.model_validate(
                    {
                        "name": f"{deployment} vs its teacher",
                        "data_source_config": {"type": "custom", "item_schema": {}, "include_sample_schema": True},
                        "testing_criteria": criteria,
                        "metadata": metadata,
                    }
                ),
                owner=owner,
            )
            teacher, _ = await self._evals.create_run(
                record.id,
                RunCreateParams.model_validate(
                    {
                        "name": "teacher (stored answers)",
                        "data_source": {"type": "jsonl", "source": {"type": "file_content", "content": rows}},
                    }
                ),
                owner=owner,
                report_base="",
            )
            items = [{"item": row["item"]} for row in rows]
            student, _ = await self._evals.create_run(
                record.id,
                RunCreateParams.model_validate(
                    {
                        "name": f"student ({deployment})",
                        "metadata": metadata,
                        "data_source": {
                            "type": "completions",
                            "model": deployment,
                            "source": {"type": "file_content", "content": items},
                            "input_messages": {"type": "item_reference", "item_reference": "item.input"},
                        },
                    }
                ),
                owner=owner,
                report_base="",
            )
        except DistilleryError as exc:
            log.warning("No automatic comparison for deployment %s: %s", deployment, exc.message)
            return ComparisonRuns(error=exc.message)
        return ComparisonRuns(eval_id=record.id, teacher_run_id=teacher.id, student_run_id=student.id, items=len(rows))

    async def _held_out(self, dataset_id: str) -> list[dict[str, Any]]:
        """The validation file's conversations as eval rows: the input, and the teacher's answer as reference and sample."""
        _, chunks = await self._datasets.open_file(dataset_id, formats.VALIDATION_FILE)
        content = b"".join([chunk async for chunk in chunks])
        rows: list[dict[str, Any]] = []
        for line in content.removeprefix(b"\xef\xbb\xbf").splitlines():
            if len(rows) == MAX_COMPARISON_ITEMS:
                break
            try:
                messages = json.loads(line)["messages"]
            except (ValueError, KeyError, TypeError):
                continue
            answer = messages[-1] if messages else {}
            if answer.get("role") != "assistant" or not isinstance(answer.get("content"), str):
                continue  # a tool-call answer has no text to compare
            item = {"input": messages[:-1], "reference": answer["content"]}
            rows.append({"item": item, "sample": {"output_text": answer["content"]}})
        return rows
