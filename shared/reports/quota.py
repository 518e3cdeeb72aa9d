"""The storage quota: the cap check on the capture path, and the report that says how full the store is.

Sizes are bytes; the cap defaults to 10 GiB (10 * 1024**3 bytes), the hosted feature's 10 GB limit.
The report's totals come from listing the blobs themselves, so they are what storage really holds;
the breakdowns come from the index's `all` partition; the running counters are checked against the
totals and corrected when they drifted.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Awaitable, Callable
from datetime import UTC, date, datetime, timedelta
from typing import Any, Literal

from azure.core.exceptions import AzureError, ResourceNotFoundError
from azure.storage.blob.aio import ContainerClient
from pydantic import BaseModel, Field

from shared.platform.errors import QuotaExceeded, StorageUnavailable
from shared.platform.settings import Price, QuotaMode
from shared.platform.telemetry import record_quota_percent
from shared.reports.cost import AliasPair, CostReport, CostTallies
from shared.reports.report_store import ReportStore
from shared.store.completion_filter import CompletionFilter
from shared.store.completion_index import CompletionIndex
from shared.store.usage import UsageCounter

log = logging.getLogger(__name__)

GIB = 1024**3
TREND_DAYS = 7
TOP_VALUES = 10
TRACKED_KEYS = 64
"""Metadata keys the report tracks at once (past twice this, the smallest are dropped)."""
TRACKED_VALUES_PER_TOP = 10
"""Values tracked per key, per value listed (at least 100; past twice that, the smallest are dropped)."""
LATEST = "quota/latest.json"

Level = Literal["ok", "warning", "critical", "exceeded"]


class QuotaGate:
    """Consulted before anything is stored: is there room left under the cap, and under the owner's?"""

    def __init__(self, *, usage: UsageCounter, cap_bytes: int, mode: QuotaMode, owner_cap_bytes: int = 0) -> None:
        self._usage = usage
        self._cap_bytes = cap_bytes
        self._mode = mode
        self._owner_cap_bytes = owner_cap_bytes

    async def allows_storing(self, owner: str | None = None) -> bool:
        """False when the store is at its cap; in `reject` mode that raises `QuotaExceeded` instead."""
        return await self.refusal(owner=owner) is None

    async def refusal(self, *, owner: str | None) -> str | None:
        """Why a `store: true` call is not stored (`quota_exceeded`, `owner_quota_exceeded`), or None.

        In `reject` mode a full store (or owner) raises `QuotaExceeded` instead. The totals are cached
        for a few seconds (plus this worker's own writes), so the check costs no round trip on most
        calls and the cap may be overshot by what other workers store meanwhile.
        """
        refused = await self._exceeded(
            owner=owner, action="this request, which asks for `store: true`, was not sent", param="store"
        )
        if refused is None:
            return None
        if self._mode is QuotaMode.REJECT:
            raise refused
        log.warning("%s: serving without storing (STORAGE_QUOTA_MODE=serve_unstored)", refused.summary)
        return refused.reason

    async def require_room(self, *, owner: str | None, what: str) -> None:
        """Refuse (`QuotaExceeded`, whatever the mode) to start `what` when the store or the owner is full."""
        refused = await self._exceeded(owner=owner, action=f"{what} was not started", param=None)
        if refused is not None:
            log.warning("%s: %s refused", refused.summary, what)
            raise refused

    async def _exceeded(self, *, owner: str | None, action: str, param: str | None) -> _Refusal | None:
        try:
            used_bytes = (await self._usage.totals()).used_bytes
            owner_bytes = (
                await self._usage.owner_bytes(owner)
                if owner is not None and self._owner_cap_bytes and self._usage.per_owner
                else 0
            )
        except StorageUnavailable as exc:
            log.warning("Quota not checked, going ahead: %s", exc)
            return None
        record_quota_percent(round(100 * used_bytes / self._cap_bytes, 3))
        if used_bytes >= self._cap_bytes:
            return _Refusal(
                f"The store holds {used_bytes} of its {self._cap_bytes} byte quota, so {action}. Delete stored "
                "completions or datasets, raise STORAGE_QUOTA_BYTES, or send the request without `store`.",
                param=param,
                headers={"x-should-retry": "false"},
                summary=f"Storage quota reached ({used_bytes} of {self._cap_bytes} bytes)",
                reason="quota_exceeded",
            )
        if self._owner_cap_bytes and owner_bytes >= self._owner_cap_bytes:
            return _Refusal(
                f"Your stored completions hold {owner_bytes} of your {self._owner_cap_bytes} byte quota, so {action}. "
                "Delete some of them, ask for a higher OWNER_QUOTA_BYTES, or send the request without `store`.",
                param=param,
                code="owner_quota_exceeded",
                headers={"x-should-retry": "false"},
                summary=f"Owner quota reached ({owner_bytes} of {self._owner_cap_bytes} bytes)",
                reason="owner_quota_exceeded",
            )
        return None


class _Refusal(QuotaExceeded):
    """A refusal, with the log line and the `x-distillery-not-stored-reason` it goes with."""

    def __init__(self, message: str, *, summary: str, reason: str, **details: Any) -> None:
        super().__init__(message, **details)
        self.summary = summary
        self.reason = reason


class Tally(BaseModel):
    bytes: int = 0
    count: int = 0

    def add(self, size_bytes: int) -> None:
        self.bytes += size_bytes
        self.count += 1


class ModelTally(Tally):
    model: str


class DayTally(Tally):
    day: date
    """UTC capture day."""


class ValueTally(Tally):
    value: str


class CounterCheck(BaseModel):
    """The running counters the capture path uses, against what the listing found."""

    counted_bytes: int
    counted_count: int
    drift_bytes: int
    """Counted minus stored: positive when the counters ran ahead of storage."""
    drift_count: int
    corrected: bool
    """False when another report, running at the same time, made the correction (never both)."""


class QuotaReport(BaseModel):
    """How full the store is, what fills it, and when it will be full at the recent rate."""

    object: Literal["quota.report"] = "quota.report"
    generated_at: datetime
    cap_bytes: int
    cap_gib: float = Field(description="cap_bytes / 1024**3")
    used_bytes: int
    """Completion documents, dataset files and evals (runs, outputs, eval files), as listed in storage."""
    free_bytes: int
    percent_used: float
    level: Level
    """`warning` from 80%, `critical` from 95%, `exceeded` from 100%."""
    mode: QuotaMode
    completion_bytes: int
    completion_count: int
    dataset_bytes: int
    dataset_count: int
    eval_bytes: int = 0
    """Evals, their runs' items and output items, and eval files (`EVALS_CONTAINER`)."""
    eval_count: int = 0
    indexed_bytes: int
    """Sum of the index's document sizes; differs from completion_bytes only while documents lack rows."""
    indexed_count: int
    by_model: list[ModelTally]
    by_day: list[DayTally]
    by_metadata: dict[str, list[ValueTally]]
    """Per metadata key, its top `QUOTA_TOP_VALUES` values by bytes."""
    by_metadata_other: dict[str, Tally] = Field(default_factory=dict)
    """Per metadata key whose list left values out: their bytes and count together."""
    by_metadata_truncated: bool = False
    """True when some key has more values than are listed (see `by_metadata_other`)."""
    by_metadata_exact: bool = True
    """False when the walk saw more distinct keys or values than it tracks: listed figures are then
    lower bounds (a value's bytes before it was first dropped are in `other`), totals stay exact."""
    trend_window_days: int = TREND_DAYS
    trend_bytes_per_day: float
    """Bytes captured per day over the last `trend_window_days` days (of what is still stored)."""
    last_days: list[DayTally]
    projected_full_date: date | None
    """When the cap is reached at `trend_bytes_per_day`; today once it is; null with no growth."""
    counters: CounterCheck
    cost: CostReport | None = None
    """Money for the stored calls' tokens, and students' break-even (`PRICE_TABLE`; null when it is empty)."""
    withheld: list[str] = Field(default_factory=list)
    """Breakdowns left out of this view: `by_model` and `by_metadata` for a caller that sees only its own
    completions (owner scoping), as they name other owners' models and metadata values."""

    def for_owner_scoped_caller(self) -> QuotaReport:
        """The store-wide figures every caller needs (how full, when full) without other owners' models
        and metadata values."""
        return self.model_copy(
            update={"by_model": [], "by_metadata": {}, "cost": None, "withheld": list(OWNER_BREAKDOWNS)}
        )


OWNER_BREAKDOWNS = ("by_model", "by_metadata", "cost")


class QuotaReporter:
    """Builds the quota report, corrects counter drift, saves the report and logs how full the store is."""

    def __init__(
        self,
        *,
        completions: ContainerClient,
        datasets: ContainerClient,
        index: CompletionIndex,
        evals: ContainerClient | None = None,
        usage: UsageCounter,
        reports: ReportStore,
        cap_bytes: int,
        mode: QuotaMode,
        top_values: int = TOP_VALUES,
        prices: dict[str, Price] | None = None,
        alias_pairs: Callable[[], Awaitable[list[AliasPair]]] | None = None,
    ) -> None:
        self._prices = prices or {}
        self._alias_pairs = alias_pairs
        self._top_values = top_values
        self._completions = completions
        self._datasets = datasets
        self._evals = evals
        self._index = index
        self._usage = usage
        self._reports = reports
        self._cap_bytes = cap_bytes
        self._mode = mode

    async def latest(self) -> QuotaReport | None:
        return await self._reports.load(LATEST, QuotaReport)

    async def run(self, *, now: datetime | None = None) -> QuotaReport:
        now = now or datetime.now(UTC)
        ticket = await self._usage.correction_ticket()
        counted = await self._usage.totals(max_age_seconds=0)
        completions = await _listed(self._completions)
        datasets = await _listed(self._datasets)
        evals = await _listed(self._evals) if self._evals is not None else Tally()
        costs = CostTallies(self._prices, now=now, window_days=TREND_DAYS) if self._prices else None
        breakdown = await _breakdown(self._index, top_values=self._top_values, costs=costs)

        drift_bytes = counted.completion_bytes - completions.bytes
        drift_count = counted.completion_count - completions.count
        corrected = False
        if drift_bytes or drift_count:
            corrected = await self._usage.correct(ticket, -drift_bytes, -drift_count)
            log.warning(
                "Usage counters drifted by %s bytes and %s completions from what is stored; %s",
                drift_bytes,
                drift_count,
                "corrected" if corrected else "another report corrected them meanwhile, so this one does not",
            )
        # Derived files (datasets and evals) are one usage row: what the quota gate adds to the completions.
        await self._usage.record_datasets(bytes_total=datasets.bytes + evals.bytes, count=datasets.count + evals.count)
        if self._usage.per_owner:
            await self._usage.record_owners({owner: (t.bytes, t.count) for owner, t in breakdown.owners.items()})

        used = completions.bytes + datasets.bytes + evals.bytes
        percent = round(100 * used / self._cap_bytes, 3)
        record_quota_percent(percent)
        recent = _last_days(breakdown.days, now.date())
        rate = sum(day.bytes for day in recent) / TREND_DAYS
        report = QuotaReport(
            generated_at=now,
            cap_bytes=self._cap_bytes,
            cap_gib=round(self._cap_bytes / GIB, 3),
            used_bytes=used,
            free_bytes=max(0, self._cap_bytes - used),
            percent_used=percent,
            level=_level(percent),
            mode=self._mode,
            completion_bytes=completions.bytes,
            completion_count=completions.count,
            dataset_bytes=datasets.bytes,
            dataset_count=datasets.count,
            eval_bytes=evals.bytes,
            eval_count=evals.count,
            indexed_bytes=breakdown.total.bytes,
            indexed_count=breakdown.total.count,
            by_model=sorted(
                (ModelTally(model=model, **usage.model_dump()) for model, usage in breakdown.models.items()),
                key=lambda item: (-item.bytes, item.model),
            ),
            by_day=[DayTally(day=day, **usage.model_dump()) for day, usage in sorted(breakdown.days.items())],
            **_metadata_fields(breakdown, self._top_values),
            trend_bytes_per_day=round(rate, 1),
            last_days=recent,
            projected_full_date=_projected(now.date(), used, self._cap_bytes, rate),
            counters=CounterCheck(
                counted_bytes=counted.completion_bytes,
                counted_count=counted.completion_count,
                drift_bytes=drift_bytes,
                drift_count=drift_count,
                corrected=corrected,
            ),
            cost=None if costs is None else costs.report(await self._pairs(), top_values=self._top_values),
        )
        await self._reports.save(LATEST, report)
        await self._reports.save(f"quota/history/{now.strftime('%Y%m%dT%H%M%SZ')}.json", report)
        _log_level(report)
        return report

    async def _pairs(self) -> list[AliasPair]:
        return [] if self._alias_pairs is None else await self._alias_pairs()


class TopTallies:
    """Tallies of many names in bounded memory: at most `2 * tracked` names are kept; when a new name
    would pass that, only the `tracked` largest by bytes stay (the others' figures live on in `total`).

    A name that holds a large share stays once it has it (it is among the largest), so heavy names
    head the list; a name dropped while small and seen again restarts from zero, so its figure is a
    lower bound.
    """

    def __init__(self, tracked: int) -> None:
        self.tracked = tracked
        self.tallies: dict[str, Tally] = {}
        self.total = Tally()
        self.dropped = False

    def add(self, name: str, size_bytes: int) -> None:
        self.total.add(size_bytes)
        self._tally(name).add(size_bytes)

    def _tally(self, name: str) -> Tally:
        tally = self.tallies.get(name)
        if tally is None:
            if len(self.tallies) >= 2 * self.tracked:
                self._drop_smallest()
            tally = self.tallies[name] = Tally()
        return tally

    def _drop_smallest(self) -> None:
        ranked = sorted(self.tallies.items(), key=lambda item: (-item[1].bytes, item[0]))
        self.tallies = dict(ranked[: self.tracked])
        self.dropped = True

    def top(self, count: int) -> tuple[list[tuple[str, Tally]], Tally]:
        """The `count` largest by bytes, and what the others (listed or dropped) add up to."""
        ranked = sorted(self.tallies.items(), key=lambda item: (-item[1].bytes, item[0]))[:count]
        other = Tally(
            bytes=self.total.bytes - sum(tally.bytes for _, tally in ranked),
            count=self.total.count - sum(tally.count for _, tally in ranked),
        )
        return ranked, other


class MetadataTallies:
    """Per metadata key, its values' tallies; keys and values both bounded (see `TopTallies`)."""

    def __init__(self, *, top_values: int) -> None:
        self._values_tracked = max(100, TRACKED_VALUES_PER_TOP * top_values)
        self.keys: dict[str, TopTallies] = {}
        self.dropped = False

    def add(self, key: str, value: str, size_bytes: int) -> None:
        values = self.keys.get(key)
        if values is None:
            if len(self.keys) >= 2 * TRACKED_KEYS:
                ranked = sorted(self.keys.items(), key=lambda item: (-item[1].total.bytes, item[0]))
                self.keys = dict(ranked[:TRACKED_KEYS])
                self.dropped = True
            values = self.keys[key] = TopTallies(self._values_tracked)
        values.add(value, size_bytes)

    @property
    def exact(self) -> bool:
        return not self.dropped and not any(values.dropped for values in self.keys.values())


class _Breakdown:
    def __init__(self, *, top_values: int) -> None:
        self.total = Tally()
        self.models: dict[str, Tally] = defaultdict(Tally)
        self.days: dict[date, Tally] = defaultdict(Tally)
        self.metadata = MetadataTallies(top_values=top_values)
        self.owners: dict[str, Tally] = defaultdict(Tally)


async def _breakdown(
    index: CompletionIndex, *, top_values: int = TOP_VALUES, costs: CostTallies | None = None
) -> _Breakdown:
    """One walk of the index's `all` partition, one row per stored completion (priced too, with `costs`)."""
    found = _Breakdown(top_values=top_values)
    async for entry in index.walk(CompletionFilter()):
        if costs is not None:
            costs.add(entry)
        found.total.add(entry.size_bytes)
        found.models[entry.model].add(entry.size_bytes)
        found.days[datetime.fromtimestamp(entry.created, UTC).date()].add(entry.size_bytes)
        if entry.owner is not None:
            found.owners[entry.owner].add(entry.size_bytes)
        for key, value in entry.metadata.items():
            found.metadata.add(key, value, entry.size_bytes)
    return found


def _metadata_fields(breakdown: _Breakdown, top_values: int) -> dict[str, Any]:
    listed: dict[str, list[ValueTally]] = {}
    others: dict[str, Tally] = {}
    for key, values in sorted(breakdown.metadata.keys.items()):
        top, other = values.top(top_values)
        listed[key] = [ValueTally(value=value, bytes=tally.bytes, count=tally.count) for value, tally in top]
        if other.count:
            others[key] = other
    return {
        "by_metadata": listed,
        "by_metadata_other": others,
        "by_metadata_truncated": bool(others) or breakdown.metadata.dropped,
        "by_metadata_exact": breakdown.metadata.exact,
    }


async def _listed(container: ContainerClient) -> Tally:
    """Bytes and count of every blob in the container (none when it does not exist yet)."""
    listed = Tally()
    try:
        async for blob in container.list_blobs():
            listed.add(blob.size)
    except ResourceNotFoundError:
        log.info("Container %s does not exist yet: counted as empty", container.container_name)
    except AzureError as exc:
        raise StorageUnavailable(f"Could not list the '{container.container_name}' container.") from exc
    return listed


def _last_days(days: dict[date, Tally], today: date) -> list[DayTally]:
    window = [today - timedelta(days=back) for back in range(TREND_DAYS - 1, -1, -1)]
    return [DayTally(day=day, **days.get(day, Tally()).model_dump()) for day in window]


def _projected(today: date, used: int, cap: int, bytes_per_day: float) -> date | None:
    if used >= cap:
        return today
    if bytes_per_day <= 0:
        return None
    days_left = (cap - used) / bytes_per_day
    return today + timedelta(days=min(int(days_left), 36_500))


def _level(percent: float) -> Level:
    if percent >= 100:
        return "exceeded"
    if percent >= 95:
        return "critical"
    if percent >= 80:
        return "warning"
    return "ok"


def _log_level(report: QuotaReport) -> None:
    figures = (report.used_bytes, report.cap_bytes, report.percent_used)
    if report.level == "exceeded":
        log.error(
            "Storage quota reached: %s of %s bytes (%.1f%%); %s",
            *figures,
            "storing is off" if report.mode is QuotaMode.SERVE_UNSTORED else "store requests are rejected",
        )
    elif report.level != "ok":
        log.warning("Storage quota %s: %s of %s bytes used (%.1f%%)", report.level, *figures)
    else:
        log.info("Storage quota: %s of %s bytes used (%.1f%%)", *figures)
