"""The quota report against what storage really holds, counter drift, and the cap check."""

from __future__ import annotations

import asyncio
import json
import logging
import time

import pytest

from shared.platform.errors import QuotaExceeded
from shared.platform.settings import QuotaMode
from shared.reports.quota import TRACKED_KEYS, QuotaGate, QuotaReporter, _breakdown
from shared.store import ids
from shared.store.completion_index import IndexEntry
from shared.store.usage import UsageCounter
from tests.conftest import ServicesFactory
from tests.shared.seed import completion, listed


async def test_report_totals_equal_listed_blob_sizes(make_services: ServicesFactory) -> None:
    services = await make_services(STORAGE_QUOTA_BYTES="100000")
    store = services.store
    for number in range(3):
        await store.put(completion(model="gpt-4o", metadata={"user": "ann", "topic": f"t{number}"}, text="x" * 50))
    await store.put(completion(model="gpt-4o-mini", metadata={"user": "bob"}, days_ago=3))
    await store.put(completion(model="gpt-4o-mini", days_ago=30, text="old"))
    await services.datasets_container.upload_blob("job1/train.jsonl", b"{}\n" * 300)
    await services.evals_container.upload_blob("eval_x/runs/evalrun_y/items.jsonl", b"{}\n" * 100)

    report = await services.quota_reporter.run()

    completion_bytes, completion_count = await listed(services.completions_container)
    dataset_bytes, dataset_count = await listed(services.datasets_container)
    assert (report.completion_bytes, report.completion_count) == (completion_bytes, 5)
    assert (report.dataset_bytes, report.dataset_count) == (dataset_bytes, dataset_count) == (900, 1)
    assert (report.eval_bytes, report.eval_count) == (300, 1)  # evals count toward the quota
    assert report.used_bytes == completion_bytes + dataset_bytes + 300
    assert (await services.usage.totals(max_age_seconds=0)).used_bytes == completion_bytes + dataset_bytes + 300
    assert report.percent_used == round(100 * report.used_bytes / 100000, 3)
    assert (report.indexed_bytes, report.indexed_count) == (completion_bytes, completion_count)
    assert {m.model: m.count for m in report.by_model} == {"gpt-4o": 3, "gpt-4o-mini": 2}
    assert sum(m.bytes for m in report.by_model) == completion_bytes
    assert sum(d.bytes for d in report.by_day) == completion_bytes and len(report.by_day) == 3
    assert [(v.value, v.count) for v in report.by_metadata["user"]] == [("ann", 3), ("bob", 1)]
    assert len(report.last_days) == 7 and sum(d.count for d in report.last_days) == 4
    assert report.trend_bytes_per_day == round(sum(d.bytes for d in report.last_days) / 7, 1)
    assert report.projected_full_date is not None and report.projected_full_date >= report.generated_at.date()
    assert report.counters.drift_bytes == report.counters.drift_count == 0

    saved = await (await services.reports_container.download_blob("quota/latest.json")).readall()
    assert json.loads(saved)["used_bytes"] == report.used_bytes
    history = [blob.name async for blob in services.reports_container.list_blobs(name_starts_with="quota/history/")]
    assert len(history) == 1


async def test_counters_follow_put_update_delete(make_services: ServicesFactory) -> None:
    services = await make_services()
    kept = [completion(text="a" * n) for n in (10, 200, 3000)]
    for item in kept:
        await services.store.put(item)
    await services.store.update_metadata(kept[0].id, {"longer": "metadata " * 20})
    await services.store.delete(kept[1].id)

    usage = await services.usage.totals(max_age_seconds=0)
    assert (usage.completion_bytes, usage.completion_count) == await listed(services.completions_container)


async def test_drift_is_reported_and_corrected(
    make_services: ServicesFactory, caplog: pytest.LogCaptureFixture
) -> None:
    services = await make_services()
    await services.store.put(completion())
    stray = completion()
    await services.completions_container.upload_blob(f"{stray.id}.json", stray.model_dump_json().encode())
    stray_size = len(stray.model_dump_json().encode())

    with caplog.at_level(logging.WARNING, logger="shared.reports.quota"):
        first = await services.quota_reporter.run()
    assert (first.counters.drift_bytes, first.counters.drift_count) == (-stray_size, -1)
    assert first.counters.corrected
    assert "drifted" in caplog.text
    assert first.indexed_count == 1 and first.completion_count == 2

    second = await services.quota_reporter.run()
    assert (second.counters.drift_bytes, second.counters.drift_count, second.counters.corrected) == (0, 0, False)
    usage = await services.usage.totals(max_age_seconds=0)
    assert (usage.completion_bytes, usage.completion_count) == await listed(services.completions_container)


async def test_concurrent_reports_correct_a_drift_once(make_services: ServicesFactory) -> None:
    """Reports on several workers see the same drift; only one may correct it, or the counters overshoot."""
    services = await make_services()
    await services.store.put(completion())
    stray = completion()
    await services.completions_container.upload_blob(f"{stray.id}.json", stray.model_dump_json().encode())
    reporters = [
        QuotaReporter(
            completions=services.completions_container,
            datasets=services.datasets_container,
            index=services.store.index,
            usage=UsageCounter(table=services.index_table),
            reports=services.report_store,
            cap_bytes=10**9,
            mode=QuotaMode.REJECT,
        )
        for _ in range(4)
    ]

    reports = await asyncio.gather(*(reporter.run() for reporter in reporters))

    assert sum(report.counters.corrected for report in reports) == 1
    usage = await services.usage.totals(max_age_seconds=0)
    assert (usage.completion_bytes, usage.completion_count) == await listed(services.completions_container)
    assert not (await services.quota_reporter.run()).counters.corrected


async def test_levels_are_logged_at_80_95_and_100_percent(
    make_services: ServicesFactory, caplog: pytest.LogCaptureFixture
) -> None:
    item = completion()
    size = len(item.model_dump_json().encode())
    expected = {int(size / 0.85): ("warning", logging.WARNING), int(size / 0.97): ("critical", logging.WARNING)}
    expected[size] = ("exceeded", logging.ERROR)
    for cap, (level, log_level) in expected.items():
        services = await make_services(STORAGE_QUOTA_BYTES=str(cap))
        await services.store.put(item)
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="shared.reports.quota"):
            report = await services.quota_reporter.run()
        assert report.level == level
        assert [r.levelno for r in caplog.records if "Storage quota" in r.getMessage()] == [log_level]


async def test_gate_at_the_cap(make_services: ServicesFactory) -> None:
    services = await make_services()
    item = completion()
    size = await services.store.put(item)
    assert await QuotaGate(usage=services.usage, cap_bytes=size + 1, mode=QuotaMode.REJECT).allows_storing()
    assert not await QuotaGate(usage=services.usage, cap_bytes=size, mode=QuotaMode.SERVE_UNSTORED).allows_storing()
    with pytest.raises(QuotaExceeded) as refused:
        await QuotaGate(usage=services.usage, cap_bytes=size, mode=QuotaMode.REJECT).allows_storing()
    assert refused.value.status == 429 and refused.value.code == "storage_quota_exceeded"


async def test_metadata_breakdown_is_bounded_top_values_with_an_other_bucket(make_services: ServicesFactory) -> None:
    services = await make_services(QUOTA_TOP_VALUES="3")
    start_us = int(time.time() * 1_000_000)
    clock = iter(range(start_us, start_us + 10_000))

    def entry(size: int, **metadata: str) -> IndexEntry:
        return IndexEntry(
            id=ids.new_completion_id(now_us=next(clock)), deployment="d", model="m", metadata=metadata, size_bytes=size
        )

    entries = [entry(10, user=f"u{n}", team="a") for n in range(450)]
    entries[300:300] = [entry(5000, user="heavy") for _ in range(3)]
    entries += [entry(1, **{f"key{n}": "v"}) for n in range(300)]
    await services.store.index.add_many(entries)

    walked = await _breakdown(services.store.index, top_values=3)
    assert len(walked.metadata.keys) <= 2 * TRACKED_KEYS
    assert all(len(values.tallies) <= 2 * 100 for values in walked.metadata.keys.values())

    report = await services.quota_reporter.run()
    users = report.by_metadata["user"]
    assert (users[0].value, users[0].bytes, users[0].count) == ("heavy", 15000, 3) and len(users) == 3
    other = report.by_metadata_other["user"]
    assert sum(v.bytes for v in users) + other.bytes == 450 * 10 + 3 * 5000
    assert sum(v.count for v in users) + other.count == 453
    assert [(v.value, v.bytes, v.count) for v in report.by_metadata["team"]] == [("a", 4500, 450)]
    assert "team" not in report.by_metadata_other
    assert report.by_metadata_truncated and not report.by_metadata_exact
    assert len(report.by_metadata) <= 2 * TRACKED_KEYS


async def test_a_small_store_reports_metadata_exactly(make_services: ServicesFactory) -> None:
    services = await make_services()
    await services.store.put(completion(metadata={"user": "ann"}))
    report = await services.quota_reporter.run()
    assert report.by_metadata_exact and not report.by_metadata_truncated and report.by_metadata_other == {}
