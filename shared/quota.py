"""The storage quota: the cap check on the capture path, and the report that says how full the store is.

Sizes are bytes; the cap defaults to 10 GiB (10 * 1024**3 bytes), the hosted feature's 10 GB limit.
The report's totals come from listing the blobs themselves, so they are what storage really holds;
the breakdowns come from the index's `all` partition; the running counters are checked against the
totals and corrected when they drifted.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from datetime import UTC, date, datetime, timedelta
from typing import Literal

from azure.core.exceptions import AzureError, ResourceNotFoundError
from azure.storage.blob.aio import ContainerClient
from pydantic import BaseModel, Field

from shared.completion_filter import CompletionFilter
from shared.completion_index import CompletionIndex
from shared.errors import QuotaExceeded, StorageUnavailable
from shared.report_store import ReportStore
from shared.settings import QuotaMode
from shared.telemetry import record_quota_percent
from shared.usage import UsageCounter

log = logging.getLogger(__name__)

GIB = 1024**3
TREND_DAYS = 7
TOP_VALUES = 10
LATEST = "quota/latest.json"

Level = Literal["ok", "warning", "critical", "exceeded"]


class QuotaGate:
    """Consulted before a `store: true` call: is there room left under the cap?"""

    def __init__(self, *, usage: UsageCounter, cap_bytes: int, mode: QuotaMode) -> None:
        self._usage = usage
        self._cap_bytes = cap_bytes
        self._mode = mode

    async def allows_storing(self) -> bool:
        """False when the store is at its cap; in `reject` mode that raises `QuotaExceeded` instead.

        The totals are cached for a few seconds (plus this worker's own writes), so the check costs
        no round trip on most calls and the cap may be overshot by what other workers store meanwhile.
        """
        try:
            used_bytes = (await self._usage.totals()).used_bytes
        except StorageUnavailable as exc:
            log.warning("Quota not checked, storing anyway: %s", exc)
            return True
        record_quota_percent(round(100 * used_bytes / self._cap_bytes, 3))
        if used_bytes < self._cap_bytes:
            return True
        if self._mode is QuotaMode.REJECT:
            raise QuotaExceeded(
                f"The store holds {used_bytes} of its {self._cap_bytes} byte quota, so this request, which asks "
                "for `store: true`, was not sent. Delete stored completions, raise STORAGE_QUOTA_BYTES, or "
                "send the request without `store`.",
                param="store",
                headers={"x-should-retry": "false"},
            )
        log.warning(
            "Storage quota reached (%s of %s bytes): serving without storing (STORAGE_QUOTA_MODE=serve_unstored)",
            used_bytes,
            self._cap_bytes,
        )
        return False


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


class QuotaReport(BaseModel):
    """How full the store is, what fills it, and when it will be full at the recent rate."""

    object: Literal["quota.report"] = "quota.report"
    generated_at: datetime
    cap_bytes: int
    cap_gib: float = Field(description="cap_bytes / 1024**3")
    used_bytes: int
    """Completion documents plus dataset files, as listed in storage."""
    free_bytes: int
    percent_used: float
    level: Level
    """`warning` from 80%, `critical` from 95%, `exceeded` from 100%."""
    mode: QuotaMode
    completion_bytes: int
    completion_count: int
    dataset_bytes: int
    dataset_count: int
    indexed_bytes: int
    """Sum of the index's document sizes; differs from completion_bytes only while documents lack rows."""
    indexed_count: int
    by_model: list[ModelTally]
    by_day: list[DayTally]
    by_metadata: dict[str, list[ValueTally]]
    """Per metadata key, its top values by bytes."""
    trend_window_days: int = TREND_DAYS
    trend_bytes_per_day: float
    """Bytes captured per day over the last `trend_window_days` days (of what is still stored)."""
    last_days: list[DayTally]
    projected_full_date: date | None
    """When the cap is reached at `trend_bytes_per_day`; today once it is; null with no growth."""
    counters: CounterCheck


class QuotaReporter:
    """Builds the quota report, corrects counter drift, saves the report and logs how full the store is."""

    def __init__(
        self,
        *,
        completions: ContainerClient,
        datasets: ContainerClient,
        index: CompletionIndex,
        usage: UsageCounter,
        reports: ReportStore,
        cap_bytes: int,
        mode: QuotaMode,
    ) -> None:
        self._completions = completions
        self._datasets = datasets
        self._index = index
        self._usage = usage
        self._reports = reports
        self._cap_bytes = cap_bytes
        self._mode = mode

    async def latest(self) -> QuotaReport | None:
        return await self._reports.load(LATEST, QuotaReport)

    async def run(self, *, now: datetime | None = None) -> QuotaReport:
        now = now or datetime.now(UTC)
        counted = await self._usage.totals(max_age_seconds=0)
        completions = await _listed(self._completions)
        datasets = await _listed(self._datasets)
        breakdown = await _breakdown(self._index)

        drift_bytes = counted.completion_bytes - completions.bytes
        drift_count = counted.completion_count - completions.count
        if drift_bytes or drift_count:
            log.warning(
                "Usage counters drifted by %s bytes and %s completions from what is stored; correcting them",
                drift_bytes,
                drift_count,
            )
            await self._usage.add(-drift_bytes, -drift_count)
        await self._usage.record_datasets(bytes_total=datasets.bytes, count=datasets.count)

        used = completions.bytes + datasets.bytes
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
            indexed_bytes=breakdown.total.bytes,
            indexed_count=breakdown.total.count,
            by_model=sorted(
                (ModelTally(model=model, **usage.model_dump()) for model, usage in breakdown.models.items()),
                key=lambda item: (-item.bytes, item.model),
            ),
            by_day=[DayTally(day=day, **usage.model_dump()) for day, usage in sorted(breakdown.days.items())],
            by_metadata={key: _top(values) for key, values in sorted(breakdown.metadata.items())},
            trend_bytes_per_day=round(rate, 1),
            last_days=recent,
            projected_full_date=_projected(now.date(), used, self._cap_bytes, rate),
            counters=CounterCheck(
                counted_bytes=counted.completion_bytes,
                counted_count=counted.completion_count,
                drift_bytes=drift_bytes,
                drift_count=drift_count,
                corrected=bool(drift_bytes or drift_count),
            ),
        )
        await self._reports.save(LATEST, report)
        await self._reports.save(f"quota/history/{now.strftime('%Y%m%dT%H%M%SZ')}.json", report)
        _log_level(report)
        return report


class _Breakdown:
    def __init__(self) -> None:
        self.total = Tally()
        self.models: dict[str, Tally] = defaultdict(Tally)
        self.days: dict[date, Tally] = defaultdict(Tally)
        self.metadata: dict[str, dict[str, Tally]] = defaultdict(lambda: defaultdict(Tally))


async def _breakdown(index: CompletionIndex) -> _Breakdown:
    """One walk of the index's `all` partition, one row per stored completion."""
    found = _Breakdown()
    async for entry in index.walk(CompletionFilter()):
        found.total.add(entry.size_bytes)
        found.models[entry.model].add(entry.size_bytes)
        found.days[datetime.fromtimestamp(entry.created, UTC).date()].add(entry.size_bytes)
        for key, value in entry.metadata.items():
            found.metadata[key][value].add(entry.size_bytes)
    return found


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


def _top(values: dict[str, Tally]) -> list[ValueTally]:
    ranked = sorted(values.items(), key=lambda item: (-item[1].bytes, item[0]))[:TOP_VALUES]
    return [ValueTally(value=value, **usage.model_dump()) for value, usage in ranked]


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
