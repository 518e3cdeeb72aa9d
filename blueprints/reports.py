"""Scheduled reports and the retention sweep (timer triggers), and the routes that serve the reports.

Each timer can be run at once through the host's admin API: `POST /admin/functions/quota_report`
(locally with no key; in Azure with the master key in `x-functions-key` and body `{"input": ""}`).
"""

import logging
from datetime import UTC, datetime
from typing import Any

import azure.functions as func
from azurefunctions.extensions.http.fastapi import Request, Response

from blueprints.http_adapter import endpoint, json_response
from shared.platform.access import Caller, Right
from shared.platform.errors import PermissionDenied
from shared.reports.report_requests import ReportKind
from shared.services import get_services

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
    """The latest quota report with its age (a scoped caller sees only its own share); before the first
    one exists, 202 while it is built on the queue."""
    assert caller is not None
    report = await get_services().quota_reporter.latest()
    if report is None:
        return await _pending(ReportKind.QUOTA)
    if caller.scope is not None:
        report = report.for_owner_scoped_caller()
    return _with_age(report.model_dump(mode="json"), report.generated_at)


@bp.route(route="api/health/permissions", methods=["GET"], auth_level=func.AuthLevel.ANONYMOUS)
@endpoint(Right.READ)
async def get_permission_report(req: Request, caller: Caller | None) -> Response:
    """The latest permission report with its age; before the first one exists, 202 while it is built on the queue."""
    assert caller is not None
    if caller.scope is not None:
        # It lists every caller identity and its rights, and the app's resources: not one owner's data.
        raise PermissionDenied(
            f"The caller '{caller.name}' sees only its own completions (owner scoping); the permission report "
            f"describes every caller and needs the '{Right.ALL_OWNERS.value}' right.",
            code="all_owners_required",
        )
    report = await get_services().permission_checker.latest()
    if report is None:
        return await _pending(ReportKind.PERMISSIONS)
    return _with_age(report.model_dump(mode="json"), report.generated_at)


async def _pending(kind: ReportKind) -> Response:
    pending = await get_services().report_requests.request(kind)
    return json_response(
        pending.model_dump(mode="json"), status=202, headers={"retry-after": str(pending.retry_after_seconds)}
    )


def _with_age(body: dict[str, Any], generated_at: datetime) -> Response:
    """The report as stored, its age in the standard `age` header (seconds) and in `age_seconds`."""
    age = max(0, int((datetime.now(UTC) - generated_at).total_seconds()))
    return json_response({**body, "age_seconds": age}, headers={"age": str(age)})


@bp.route(route="api/caller", methods=["GET"], auth_level=func.AuthLevel.ANONYMOUS)
@endpoint(Right.READ)
async def get_caller(req: Request, caller: Caller | None) -> Response:
    """Who is calling and what it may do: the pane offers only the actions these rights allow."""
    assert caller is not None
    body = {"object": "caller", "name": caller.name, "rights": sorted(caller.rights), "owner_scope": caller.scope}
    return json_response(body)
