"""Teacher vs student: two runs of one eval compared item by item, criterion by criterion.

Items are matched by their data-source index, so both runs must grade the same items (two runs of
the same dataset file, or the same stored-completions selection). Per criterion, an item where one
run passed and the other failed is a win for the one that passed; both passed or both failed is a
tie; an item either run could not grade counts in `errored` and in neither pass rate. Both runs'
outputs are read in index order side by side, one group of each at a time under the read budget.
"""

from __future__ import annotations

from typing import Any

from shared.evals.records import EvalRecord, OutputItem, RunRecord
from shared.platform.errors import InvalidRequest


class RunComparison:
    """Counts built item by item (streaming: the outputs are never all in memory at once)."""

    def __init__(self, record: EvalRecord, runs: list[RunRecord]) -> None:
        self.record, self.runs = record, runs
        self.compared = 0
        self.counts = {
            criterion.name: {"a_wins": 0, "b_wins": 0, "ties": 0, "errored": 0, "a_passed": 0, "b_passed": 0}
            for criterion in record.testing_criteria
        }

    def add(self, a: OutputItem, b: OutputItem) -> None:
        """Two runs' verdicts on the same item index."""
        if a.item != b.item:
            raise InvalidRequest(
                f"Item {a.index} differs between the runs: compare runs over the same data source.", param="runs"
            )
        self.compared += 1
        for name, counts in self.counts.items():
            verdict_a, verdict_b = _verdict(a, name), _verdict(b, name)
            if verdict_a is None or verdict_b is None:
                counts["errored"] += 1
                continue
            counts["a_passed"] += verdict_a
            counts["b_passed"] += verdict_b
            if verdict_a == verdict_b:
                counts["ties"] += 1
            else:
                counts["a_wins" if verdict_a else "b_wins"] += 1

    def result(self) -> dict[str, Any]:
        if not self.compared:
            raise InvalidRequest(
                "The two runs graded no item in common; compare runs of the same data source.", param="runs"
            )
        first, second = self.runs
        criteria = []
        for name, counts in self.counts.items():
            graded = self.compared - counts["errored"]
            rate_a = counts["a_passed"] / graded if graded else None
            rate_b = counts["b_passed"] / graded if graded else None
            criteria.append(
                {
                    "testing_criteria": name,
                    "items_graded": graded,
                    "wins": {first.id: counts["a_wins"], second.id: counts["b_wins"]},
                    "ties": counts["ties"],
                    "errored": counts["errored"],
                    "pass_rate": {first.id: rate_a, second.id: rate_b},
                    "pass_rate_delta": None if rate_a is None or rate_b is None else rate_b - rate_a,
                }
            )
        return {
            "object": "eval.run.comparison",
            "eval_id": self.record.id,
            "runs": [
                {
                    "id": run.id,
                    "model": run.model,
                    "status": run.status.value,
                    "lineage": run.lineage.model_dump(exclude_none=True),
                }
                for run in self.runs
            ],
            "items_compared": self.compared,
            "per_testing_criteria": criteria,
        }


def _verdict(output: OutputItem, criterion: str) -> bool | None:
    """Passed or failed; None when the item was not graded by this criterion (an error)."""
    if output.sample_error is not None:
        return None
    for result in output.results:
        if result.name == criterion:
            return None if result.error is not None else result.passed
    return None
