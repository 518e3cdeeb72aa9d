"""Bulk actions and relabel jobs on a filter over HTTP: queue one (a bulk action may be a dry run)
and poll it; the maintenance (purge) queue's trigger runs them."""

import azure.functions as func
from azurefunctions.extensions.http.fastapi import Request, Response

from blueprints.http_adapter import endpoint, job_accepted, json_response
from shared.curation.bulk import BulkActionParams, parse_bulk_action_params
from shared.curation.relabel import RelabelParams, parse_relabel_params
from shared.platform.access import Caller, Right
from shared.platform.request_body import parse_json_object
from shared.services import get_services

bp = func.Blueprint()


@bp.route(route="api/bulk_actions", methods=["POST"], auth_level=func.AuthLevel.ANONYMOUS)
@endpoint(Right.ACTION, body=BulkActionParams)
async def create_bulk_action(req: Request, caller: Caller | None) -> Response:
    """Queue metadata or score changes on every match of a filter and answer 202 with its id to poll."""
    assert caller is not None
    params = parse_bulk_action_params(parse_json_object(await req.body()))
    job = await get_services().bulk_actions.submit(params, requested_by=caller.owner, owner_scope=caller.scope)
    return job_accepted(job, "api/bulk_actions")


@bp.route(route="api/bulk_actions/{bulk_action_id}", methods=["GET"], auth_level=func.AuthLevel.ANONYMOUS)
@endpoint(Right.READ)
async def get_bulk_action(req: Request, caller: Caller | None) -> Response:
    """A bulk action's progress and, once done, its receipt."""
    assert caller is not None
    job = await get_services().bulk_actions.get(req.path_params["bulk_action_id"], owner_scope=caller.scope)
    return json_response(job.view())


@bp.route(route="api/relabels", methods=["POST"], auth_level=func.AuthLevel.ANONYMOUS)
@endpoint(Right.ACTION, body=RelabelParams)
async def create_relabel(req: Request, caller: Caller | None) -> Response:
    """Queue answering the selection's requests again on a stronger deployment; 202 with its id to poll."""
    assert caller is not None
    params = parse_relabel_params(parse_json_object(await req.body()))
    caller.require(Right.INFERENCE)
    caller.require_deployment(params.deployment)
    job = await get_services().relabels.submit(params, requested_by=caller.owner, owner_scope=caller.scope)
    return job_accepted(job, "api/relabels")


@bp.route(route="api/relabels/{relabel_id}", methods=["GET"], auth_level=func.AuthLevel.ANONYMOUS)
@endpoint(Right.READ)
async def get_relabel(req: Request, caller: Caller | None) -> Response:
    """A relabel job's progress (answers stored, tokens used) and, once done, its receipt."""
    assert caller is not None
    job = await get_services().relabels.get(req.path_params["relabel_id"], owner_scope=caller.scope)
    return json_response(job.view())
