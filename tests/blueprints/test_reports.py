"""The report, retention and purge functions: their registration, and timers saying when they run late."""

from __future__ import annotations

import logging
from typing import Any

import pytest
from azure.functions.timer import TimerRequest

from local_host.azurite import Azurite
from shared.platform.access import Right
from shared.platform.settings import get_settings


def test_timers_name_their_schedule_settings(functions: dict[str, Any]) -> None:
    schedules = {
        name: (f.get_trigger().schedule, f.get_trigger().run_on_startup)
        for name, f in functions.items()
        if f.get_trigger().get_binding_name() == "timerTrigger"
    }
    assert schedules == {
        "quota_report": ("%QUOTA_REPORT_SCHEDULE%", False),
        "permission_report": ("%PERMISSION_REPORT_SCHEDULE%", False),
        "retention_sweep": ("%RETENTION_SCHEDULE%", False),
        "track_fine_tuning_jobs": ("%FINE_TUNING_TRACK_SCHEDULE%", False),
        "index_sweep": ("%INDEX_SWEEP_SCHEDULE%", False),
    }
    purge = functions["purge_job"].get_trigger()
    assert (purge.get_binding_name(), purge.queue_name, purge.connection) == (
        "serviceBusTrigger",
        "%PURGE_JOBS_QUEUE%",
        "ServiceBusConnection",
    )


def test_routes_and_rights(functions: dict[str, Any]) -> None:
    routes = {
        name: (f.get_trigger().route, f.get_user_function().required_right)
        for name, f in functions.items()
        if name in {"get_quota_report", "get_permission_report", "create_purge", "get_purge"}
    }
    assert routes == {
        "get_quota_report": ("api/quota", Right.READ),
        "get_permission_report": ("api/health/permissions", Right.READ),
        "create_purge": ("api/purges", Right.ACTION),
        "get_purge": ("api/purges/{purge_id}", Right.READ),
    }


async def test_a_late_timer_says_so(
    functions: dict[str, Any], azurite: Azurite, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AzureWebJobsStorage", azurite.connection_string)
    monkeypatch.setenv("RETENTION_DAYS", "0")
    get_settings.cache_clear()
    sweep = functions["retention_sweep"].get_user_function()
    with caplog.at_level(logging.WARNING, logger="blueprints.reports"):
        await sweep(timer=TimerRequest(past_due=True))
        await sweep(timer=TimerRequest(past_due=False))
    get_settings.cache_clear()
    assert [r.getMessage() for r in caplog.records if r.name == "blueprints.reports"] == [
        "timer.past_due: retention_sweep is running late"
    ]
