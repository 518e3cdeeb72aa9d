"""Bulk purge by filter: count or queue a purge over HTTP, run it from the purge queue."""

import logging

import azure.functions as func
from azurefunctions.extensions.http.fastapi import Request, Response

from blueprints.http_adapter import endpoint, job_accepted, json_response
from shared.capture.background import background_message
from shared.curation.bulk import bulk_action_message
from shared.curation.relabel import relabel_message
from shared.erasure.purge import parse_purge_params
from shared.platform.access import Caller, Right
from shared.platform.request_body import parse_json_object
from shared.platform.telemetry import delivery_span
from shared.reports.report_requests import report_request
from shared.services import get_services

log = logging.getLogger(__name__)

bp = func.Blueprint()


@bp.route(route="api/purges", methods=["POST"], auth_level=func.AuthLevel.ANONYMOUS)
@endpoint(Right.ACTION)
async def create_purge(req: Request, caller: Caller | None) -> Response:
    """Queue the purge (or, with `dry_run`, the count of its matches) and answer 202 with its id to poll."""
    assert caller is not None
    params = parse_purge_params(parse_json_object(await req.body()))
    job = await get_services().purges.submit(params, requested_by=caller.owner, owner_scope=caller.scope)
    return job_accepted(job, "api/purges")


@bp.route(route="api/purges/{purge_id}", methods=["GET"], auth_level=func.AuthLevel.ANONYMOUS)
@endpoint(Right.READ)
async def get_purge(req: Request, caller: Caller | None) -> Response:
    """A purge's status and, once it is done, its receipt."""
    assert caller is not None
    job = await get_services().purges.get(req.path_params["purge_id"], owner_scope=caller.scope)
    return json_response(job.view())


@bp.function_name("purge_job")
@bp.service_bus_queue_trigger(arg_name="msg", queue_name="%PURGE_JOBS_QUEUE%", connection="ServiceBusConnection")
async def purge_job(msg: func.ServiceBusMessage) -> None:
    """Run one chunk of a queued purge, bulk action, relabel job or dry run, a background response's poll, or a report asked for before it existed; a failure
    raises, so Service Bus retries (a purge's last delivery marks it failed)."""
    services = get_services()
    with delivery_span(services.settings.purge_jobs_queue, msg.message_id, msg.application_properties):
        report = report_request(msg.get_body())
        if report is not None:
            log.info("Report %s requested (delivery %s)", report.value, msg.delivery_count)
            await services.report_requests.run(report)
            return
        bulk_action = bulk_action_message(msg.get_body())
        if bulk_action is not None:
            log.info("Bulk action message %s delivered (delivery %s)", msg.message_id, msg.delivery_count)
            await services.bulk_actions.handle(bulk_action, delivery_count=msg.delivery_count or 1)
            return
        background = background_message(msg.get_body())
        if background is not None and services.background_responses is not None:
            log.info("Background response poll %s delivered (delivery %s)", msg.message_id, msg.delivery_count)
            await services.background_responses.run(background)
            return
        relabel = relabel_message(msg.get_body())
        if relabel is not None:
            log.info("Relabel message %s delivered (delivery %s)", msg.message_id, msg.delivery_count)
            await services.relabels.handle(relabel, delivery_count=msg.delivery_count or 1)
            return
        log.info("Purge message %s delivered (delivery %s)", msg.message_id, msg.delivery_count)
        await services.purges.handle(msg.get_body(), delivery_count=msg.delivery_count or 1)
