"""Set, promote and roll back aliases; every change is kept in the alias's history (who, when, gate result).

Promotion gives one deployment all of an alias's traffic. It needs a passing gate on a finished
comparison of that deployment with its teacher (the same eval run on both) unless it is forced; a
forced promotion records the gate's verdict anyway. Rollback sends everything back to the fallback.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Awaitable, Callable
from typing import Any

from shared.aliases.records import (
    AliasChange,
    AliasParams,
    AliasRecord,
    AliasTarget,
    Comparison,
    CriterionGate,
    Gate,
    GateResult,
    PromoteParams,
    RollbackParams,
)
from shared.aliases.routes import AliasRoutes, blob_name, tallies_blob_name
from shared.platform.errors import Conflict, DistilleryError, InvalidRequest, NotFound
from shared.store.json_blobs import JsonBlobs, Superseded

MAX_HISTORY = 200
"""Changes kept per alias (the oldest go first)."""

CompareRuns = Callable[[str, list[str]], Awaitable[dict[str, Any]]]
"""(eval id, [teacher run, student run]) -> the evals' comparison (`eval.run.comparison`)."""
FindComparison = Callable[[str], Awaitable[Comparison | None]]
"""A deployment -> the comparison recorded in its lineage, if any."""


class GateFailed(DistilleryError):
    status = 409
    default_code = "gate_failed"


class Aliases:
    def __init__(
        self,
        *,
        blobs: JsonBlobs,
        routes: AliasRoutes,
        compare: CompareRuns,
        find_comparison: FindComparison | None = None,
    ) -> None:
        self._blobs = blobs
        self.routes = routes
        self._compare = compare
        self._find_comparison = find_comparison

    async def put(self, name: str, params: AliasParams, *, by: str) -> AliasRecord:
        """Create or replace an alias's targets (and sticky rule, gate)."""

        def change(record: AliasRecord | None, now: int) -> AliasRecord:
            previous = [] if record is None else record.targets
            fallback = _fallback(params.targets, None if record is None else record.fallback)
            entry = AliasChange(
                action="set", at=now, by=by, targets=params.targets, previous_targets=previous, reason=params.reason
            )
            online_eval = params.online_eval
            if record is not None and "online_eval" not in params.model_fields_set:
                online_eval = record.online_eval
            if record is None:
                return AliasRecord(
                    name=name,
                    targets=params.targets,
                    fallback=fallback,
                    sticky=params.sticky,
                    gate=params.gate or Gate(),
                    online_eval=online_eval,
                    created_at=now,
                    updated_at=now,
                    history=[entry],
                )
            return _changed(
                record,
                entry,
                targets=params.targets,
                fallback=fallback,
                sticky=params.sticky,
                gate=params.gate or record.gate,
                online_eval=online_eval,
            )

        return await self._update(name, change, create=True)

    async def get(self, name: str) -> AliasRecord:
        record, _ = await self._read(name)
        return record

    async def list(self) -> list[AliasRecord]:
        records = []
        for blob in await self._blobs.names(""):
            if "/" in blob:  # an alias's online-eval tallies (`online/<name>.json`)
                continue
            with contextlib.suppress(NotFound):
                records.append(await self.get(blob.removesuffix(".json")))
        return records

    async def delete(self, name: str) -> None:
        await self._read(name)
        await self._blobs.delete(blob_name(name))
        await self._blobs.delete(tallies_blob_name(name))
        self.routes.remember(name, None)

    async def promote(self, name: str, params: PromoteParams, *, by: str) -> AliasRecord:
        """All traffic to one target, once its comparison passes the gate (or when forced)."""
        record, _ = await self._read(name)
        deployment = params.deployment or _canary(record)
        if deployment not in {t.deployment for t in record.targets}:
            raise InvalidRequest(
                f"'{deployment}' is not a target of alias '{name}' (targets: "
                f"{', '.join(t.deployment for t in record.targets)}); set it as a canary first.",
                param="deployment",
            )
        result = await self._gate(record.gate, deployment, params.comparison)
        if not result.passed and not params.force:
            raise GateFailed(
                f"Promotion of '{deployment}' behind '{name}' refused: {result.reason} Pass 'force': true to promote "
                "anyway (recorded as forced).",
                param="comparison",
            )

        def change(current: AliasRecord | None, now: int) -> AliasRecord:
            assert current is not None
            targets = [AliasTarget(deployment=deployment, share=100)]
            entry = AliasChange(
                action="promote",
                at=now,
                by=by,
                targets=targets,
                previous_targets=current.targets,
                forced=params.force and not result.passed,
                gate_result=result,
                reason=params.reason,
            )
            # The fallback stays the teacher, so one rollback undoes the promotion.
            return _changed(current, entry, targets=targets)

        return await self._update(name, change)

    async def rollback(
        self, name: str, params: RollbackParams, *, by: str, automatic: bool = False, unless_gone: str | None = None
    ) -> AliasRecord:
        """All traffic back to the fallback (the deployment that served alone before the canary).

        `unless_gone`: roll back only while this deployment is still a target (an alert about a canary
        someone already replaced changes nothing: `Conflict`)."""

        def change(current: AliasRecord | None, now: int) -> AliasRecord:
            assert current is not None
            targets = [AliasTarget(deployment=current.fallback, share=100)]
            if unless_gone is not None and unless_gone not in {t.deployment for t in current.targets}:
                raise Conflict(f"'{unless_gone}' no longer serves alias '{name}'.", code="nothing_to_roll_back")
            if current.targets == targets:
                raise Conflict(
                    f"Alias '{name}' already sends all traffic to its fallback '{current.fallback}': nothing to roll "
                    "back.",
                    code="nothing_to_roll_back",
                )
            entry = AliasChange(
                action="rollback",
                at=now,
                by=by,
                targets=targets,
                previous_targets=current.targets,
                automatic=automatic,
                reason=params.reason,
            )
            return _changed(current, entry, targets=targets)

        return await self._update(name, change)

    async def _gate(self, gate: Gate, deployment: str, comparison: Comparison | None) -> GateResult:
        if comparison is None and self._find_comparison is not None:
            comparison = await self._find_comparison(deployment)
        if comparison is None:
            return GateResult(
                passed=False,
                gate=gate,
                reason=f"no comparison of '{deployment}' with its teacher is known: name one ('comparison': "
                "{eval_id, teacher_run_id, student_run_id}).",
            )
        try:
            compared = await self._compare(comparison.eval_id, [comparison.teacher_run_id, comparison.student_run_id])
        except (InvalidRequest, NotFound) as exc:
            return GateResult(passed=False, gate=gate, comparison=comparison, reason=f"the comparison: {exc.message}")
        teacher, student = comparison.teacher_run_id, comparison.student_run_id
        criteria = []
        for row in compared["per_testing_criteria"]:
            rate, teacher_rate = row["pass_rate"][student], row["pass_rate"][teacher]
            passed = (
                rate is not None
                and rate >= gate.min_pass_rate
                and (teacher_rate is None or teacher_rate - rate <= gate.max_drop + 1e-9)
            )
            criteria.append(
                CriterionGate(
                    testing_criteria=row["testing_criteria"],
                    pass_rate=rate,
                    teacher_pass_rate=teacher_rate,
                    passed=passed,
                )
            )
        failing = [c for c in criteria if not c.passed]
        if not criteria:
            reason = "the comparison graded nothing."
        elif failing:
            reason = "; ".join(
                f"'{c.testing_criteria}' pass rate {_percent(c.pass_rate)} (teacher {_percent(c.teacher_pass_rate)})"
                for c in failing
            ) + (
                f" misses the gate (at least {_percent(gate.min_pass_rate)}, at most {_percent(gate.max_drop)} below the teacher)."
            )
        else:
            reason = f"every criterion passes (at least {_percent(gate.min_pass_rate)}, at most {_percent(gate.max_drop)} below the teacher)."
        return GateResult(
            passed=bool(criteria) and not failing,
            gate=gate,
            comparison=comparison,
            per_testing_criteria=criteria,
            reason=reason,
        )

    async def _read(self, name: str) -> tuple[AliasRecord, str]:
        data, etag = await self._blobs.get(blob_name(name), missing=f"No alias named '{name}'.")
        return AliasRecord.model_validate_json(data), etag

    async def _update(
        self, name: str, change: Callable[[AliasRecord | None, int], AliasRecord], *, create: bool = False
    ) -> AliasRecord:
        """Apply `change` to the stored alias, read again until it is written over no one else's change."""
        while True:
            try:
                record, etag = await self._read(name)
            except NotFound:
                if not create:
                    raise
                record, etag = None, None
            updated = change(record, int(time.time()))
            with contextlib.suppress(Superseded):
                await self._blobs.put(blob_name(name), updated.model_dump_json(), create=etag is None, etag=etag)
                self.routes.remember(name, updated)
                return updated


def _changed(record: AliasRecord, entry: AliasChange, **fields: Any) -> AliasRecord:
    history = [*record.history, entry][-MAX_HISTORY:]
    return record.model_copy(update={**fields, "updated_at": entry.at, "history": history})


def _fallback(targets: list[AliasTarget], current: str | None) -> str:
    """The fallback stays while it is a target; otherwise the larger share (the first on a tie)."""
    if current is not None and any(t.deployment == current for t in targets):
        return current
    return max(targets, key=lambda t: t.share).deployment


def _canary(record: AliasRecord) -> str:
    others = [t.deployment for t in record.targets if t.deployment != record.fallback]
    if not others:
        raise InvalidRequest(
            f"Alias '{record.name}' has no canary to promote: it sends all traffic to '{record.fallback}'. Name the "
            "'deployment', or set a canary first.",
            param="deployment",
        )
    return others[0]


def _percent(value: float | None) -> str:
    return "n/a" if value is None else f"{value * 100:.1f}%"
