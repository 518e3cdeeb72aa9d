"""Scheduled reports and the retention sweep (timer triggers), and the routes that serve the reports.

Each timer can be run at once through the host's admin API: `POST /admin/functions/quota_report`
(locally with no key; in Azure with the master key in `x-functions-key` and body `{"input": ""}`).
"""

import logging

import azure.functions as func
from azurefunctions.extensions.http.fastapi import Request, Response

from blueprints.http_adapter import endpoint, json_response
from shared.access import Caller, Right
from shared.clients import get_services

log = logging.getLogger(__name__)

bp = func.Blueprint()


def _note_if_late(timer: func.TimerRequest, name: str) -> None:
    if timer.past_due:
        log.warning("timer.past_due: %s is running late", name)


@bp.function_name("quota_report")
@bp.timer_trigger(arg_name="timer", schedule="%QUOTA_REPORT_SCHEDULE%", run_on_startup=False)
async def quota_report(timer: func.TimerRequest) -> None:
    """Measure the store against its cap, correct the usage counters, and save the quota report."""
    _note_if_late(timer, "quota_report")
    await get_services().quota_reporter.run()


@bp.function_name("permission_report")
@bp.timer_trigger(arg_name="timer", schedule="%PERMISSION_REPORT_SCHEDULE%", run_on_startup=False)
async def permission_report(timer: func.TimerRequest) -> None:
    """Probe every permission the app's identity needs and list the callers' rights."""
    _note_if_late(timer, "permission_report")
    await get_services().permission_checker.run()


@bp.function_name("retention_sweep")
@bp.timer_trigger(arg_name="timer", schedule="%RETENTION_SCHEDULE%", run_on_startup=False)
async def retention_sweep(timer: func.TimerRequest) -> None:
    """Delete stored completions older than RETENTION_DAYS (nothing when it is 0)."""
    _note_if_late(timer, "retention_sweep")
    await get_services().retention.run()


@bp.route(route="api/quota", methods=["GET"], auth_level=func.AuthLevel.ANONYMOUS)
@endpoint(Right.READ)
async def get_quota_report(req: Request, caller: Caller | None) -> Response:
    """The latest quota report; the first call builds one when the timer has not run yet."""
    reporter = get_services().quota_reporter
    report = await reporter.latest() or await reporter.run()
    return json_response(report.model_dump(mode="json"))


@bp.route(route="api/health/permissions", methods=["GET"], auth_level=func.AuthLevel.ANONYMOUS)
@endpoint(Right.READ)
async def get_permission_report(req: Request, caller: Caller | None) -> Response:
    """The latest permission report; the first call builds one when the timer has not run yet."""
    checker = get_services().permission_checker
    report = await checker.latest() or await checker.run()
    return json_response(report.model_dump(mode="json"))


@bp.route(route="api/caller", methods=["GET"], auth_level=func.AuthLevel.ANONYMOUS)
@endpoint(Right.READ)
async def get_caller(req: Request, caller: Caller | None) -> Response:
    """Who is calling and what it may do: the pane offers only the actions these rights allow."""
    assert caller is not None
    body = {"object": "caller", "name": caller.name, "rights": sorted(caller.rights), "owner_scope": caller.scope}
    return json_response(body)
