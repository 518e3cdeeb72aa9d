"""Bulk purge by filter: count or queue a purge over HTTP, run it from the purge queue."""

import json
import logging

import azure.functions as func
from azurefunctions.extensions.http.fastapi import Request, Response

from blueprints.http_adapter import endpoint, json_response
from shared.access import Caller, Right
from shared.chat_request import parse_json_object
from shared.clients import get_services
from shared.purge import parse_purge_params
from shared.telemetry import delivery_span

log = logging.getLogger(__name__)

bp = func.Blueprint()


@bp.route(route="api/purges", methods=["POST"], auth_level=func.AuthLevel.ANONYMOUS)
@endpoint(Right.ACTION)
async def create_purge(req: Request, caller: Caller | None) -> Response:
    """`dry_run`: how many stored completions match. Otherwise queue the purge and answer 202 with its id."""
    assert caller is not None
    params = parse_purge_params(parse_json_object(await req.body()))
    purges = get_services().purges
    if params.dry_run:
        return json_response((await purges.count(params, owner_scope=caller.scope)).model_dump(mode="json"))
    job = await purges.submit(params, requested_by=caller.name, owner_scope=caller.scope)
    return json_response(job.model_dump(mode="json"), status=202, headers={"location": f"/api/purges/{job.id}"})


@bp.route(route="api/purges/{purge_id}", methods=["GET"], auth_level=func.AuthLevel.ANONYMOUS)
@endpoint(Right.READ)
async def get_purge(req: Request, caller: Caller | None) -> Response:
    """A purge's status and, once it is done, its receipt."""
    assert caller is not None
    job = await get_services().purges.get(req.path_params["purge_id"], owner_scope=caller.scope)
    return json_response(job.model_dump(mode="json"))


@bp.function_name("purge_job")
@bp.service_bus_queue_trigger(arg_name="msg", queue_name="%PURGE_JOBS_QUEUE%", connection="ServiceBusConnection")
async def purge_job(msg: func.ServiceBusMessage) -> None:
    """Run one queued purge; a failure raises, so Service Bus retries and finally dead-letters it."""
    services = get_services()
    with delivery_span(services.settings.purge_jobs_queue, msg.message_id, msg.application_properties):
        purge_id = json.loads(msg.get_body())["id"]
        log.info("Purge %s delivered (delivery %s)", purge_id, msg.delivery_count)
        await services.purges.run(purge_id)
