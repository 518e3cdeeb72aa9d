"""Distill: fine-tuning jobs from distillation datasets (REST), their queue trigger and tracking timer."""

from __future__ import annotations

import logging
import time

import azure.functions as func
from azurefunctions.extensions.http.fastapi import Request, Response

from blueprints.http_adapter import endpoint, json_response
from shared.datasets.job import require_dataset_id
from shared.fine_tuning.deployments import DeploymentParams, parse_deployment_params
from shared.fine_tuning.jobs import FineTuningParams, parse_fine_tuning_params
from shared.platform.access import Caller, Right
from shared.platform.errors import InvalidRequest
from shared.platform.request_body import parse_json_object
from shared.platform.telemetry import delivery_span
from shared.services import get_services
from shared.store.completion_params import IGNORED_QUERY, MAX_PAGE, list_object, query_integer

log = logging.getLogger(__name__)
bp = func.Blueprint()


@bp.route(route="api/datasets/{dataset_id}/fine_tuning_jobs", methods=["POST"], auth_level=func.AuthLevel.ANONYMOUS)
@endpoint(Right.ACTION, body=FineTuningParams)
async def create_fine_tuning_job(req: Request, caller: Caller | None) -> Response:
    """Distill: fine-tune a base model on a succeeded distillation dataset (uploads and the job run on the queue)."""
    dataset_id = require_dataset_id(req.path_params["dataset_id"])
    params = parse_fine_tuning_params(parse_json_object(await req.body()))
    record = await get_services().fine_tuning.create(dataset_id, params, owner=_scope(caller))
    return json_response(record.view(), status=202)


@bp.route(route="api/datasets/{dataset_id}/fine_tuning_jobs", methods=["GET"], auth_level=func.AuthLevel.ANONYMOUS)
@endpoint(Right.READ)
async def list_dataset_fine_tuning_jobs(req: Request, caller: Caller | None) -> Response:
    """The fine-tuning jobs made from one dataset."""
    dataset_id = require_dataset_id(req.path_params["dataset_id"])
    return await _list(req, caller, dataset_id)


@bp.route(route="api/fine_tuning_jobs", methods=["GET"], auth_level=func.AuthLevel.ANONYMOUS)
@endpoint(Right.READ)
async def list_fine_tuning_jobs(req: Request, caller: Caller | None) -> Response:
    """Every fine-tuning job, oldest first (as recorded; refreshed one by one on retrieve and by the timer)."""
    return await _list(req, caller, None)


@bp.route(route="api/fine_tuning_jobs/{job_id}", methods=["GET"], auth_level=func.AuthLevel.ANONYMOUS)
@endpoint(Right.READ)
async def retrieve_fine_tuning_job(req: Request, caller: Caller | None) -> Response:
    """One job, refreshed from the upstream: status, events, checkpoints, fine-tuned model."""
    record = await get_services().fine_tuning.get(req.path_params["job_id"], owner=_scope(caller))
    return json_response(record.view())


@bp.route(route="api/fine_tuning_jobs/{job_id}/cancel", methods=["POST"], auth_level=func.AuthLevel.ANONYMOUS)
@endpoint(Right.ACTION)
async def cancel_fine_tuning_job(req: Request, caller: Caller | None) -> Response:
    """Cancel a job: before its upstream job exists here, else on the upstream."""
    record = await get_services().fine_tuning.cancel(req.path_params["job_id"], owner=_scope(caller))
    return json_response(record.view())


@bp.route(route="api/fine_tuning_jobs/{job_id}/deployments", methods=["POST"], auth_level=func.AuthLevel.ANONYMOUS)
@endpoint(Right.ACTION, body=DeploymentParams)
async def create_student_deployment(req: Request, caller: Caller | None) -> Response:
    """Deploy a succeeded job's fine-tuned model on the Azure OpenAI account (or register an existing deployment)."""
    params = parse_deployment_params(parse_json_object(await req.body()))
    deployment = await get_services().student_deployments.create(
        req.path_params["job_id"], params, owner=_scope(caller)
    )
    return json_response(deployment.view(req.path_params["job_id"]), status=201 if params.existing else 202)


@bp.route(route="api/fine_tuning_jobs/{job_id}/deployments", methods=["GET"], auth_level=func.AuthLevel.ANONYMOUS)
@endpoint(Right.READ)
async def list_student_deployments(req: Request, caller: Caller | None) -> Response:
    """A job's deployments, those still provisioning read again from Azure."""
    job_id = req.path_params["job_id"]
    deployments = await get_services().student_deployments.list(job_id, owner=_scope(caller))
    return json_response(list_object([deployment.view(job_id) for deployment in deployments], has_more=False))


@bp.route(
    route="api/fine_tuning_jobs/{job_id}/deployments/{name}", methods=["GET"], auth_level=func.AuthLevel.ANONYMOUS
)
@endpoint(Right.READ)
async def retrieve_student_deployment(req: Request, caller: Caller | None) -> Response:
    """One deployment, read again from Azure while it is provisioning."""
    job_id, name = req.path_params["job_id"], req.path_params["name"]
    deployment = await get_services().student_deployments.get(job_id, name, owner=_scope(caller))
    return json_response(deployment.view(job_id))


@bp.route(
    route="api/fine_tuning_jobs/{job_id}/deployments/{name}", methods=["DELETE"], auth_level=func.AuthLevel.ANONYMOUS
)
@endpoint(Right.ACTION)
async def delete_student_deployment(req: Request, caller: Caller | None) -> Response:
    """Delete a deployment made here on Azure; a registered one is only forgotten."""
    job_id, name = req.path_params["job_id"], req.path_params["name"]
    deployment = await get_services().student_deployments.delete(job_id, name, owner=_scope(caller))
    return json_response(deployment.view(job_id))


@bp.service_bus_queue_trigger(arg_name="msg", queue_name="%FINE_TUNING_JOBS_QUEUE%", connection="ServiceBusConnection")
async def run_fine_tuning_job(msg: func.ServiceBusMessage) -> None:
    """Check, upload and create one job's upstream job; raising makes Service Bus retry, then dead-letter it."""
    started = time.monotonic()  # the delivery's budget counts from here, not from the first upload
    services = get_services()
    with delivery_span(services.settings.fine_tuning_jobs_queue, msg.message_id, msg.application_properties):
        await services.fine_tuning.handle(msg.get_body(), delivery_count=msg.delivery_count or 1, started=started)


@bp.timer_trigger(arg_name="timer", schedule="%FINE_TUNING_TRACK_SCHEDULE%", run_on_startup=False)
async def track_fine_tuning_jobs(timer: func.TimerRequest) -> None:
    """Refresh every unfinished fine-tuning job from the upstream, and follow provisioning deployments."""
    if timer.past_due:
        log.info("track_fine_tuning_jobs is running late")
    services = get_services()
    refreshed = await services.fine_tuning.track()
    deployments = await services.student_deployments.track()
    log.info("Refreshed %s fine-tuning jobs and %s provisioning deployments", refreshed, deployments)


async def _list(req: Request, caller: Caller | None, dataset_id: str | None) -> Response:
    limit, after = 20, None
    for name, value in req.query_params.multi_items():
        if name == "limit":
            limit = query_integer(name, value, low=1, high=MAX_PAGE)
        elif name == "after":
            after = value
        elif name not in IGNORED_QUERY:
            raise InvalidRequest(f"Unrecognized query parameter: '{name}'.", param=name)
    records, has_more = await get_services().fine_tuning.list(
        after=after, limit=limit, owner=_scope(caller), dataset_id=dataset_id
    )
    return json_response(list_object([record.view() for record in records], has_more=has_more))


def _scope(caller: Caller | None) -> str | None:
    assert caller is not None, "every fine-tuning route requires a right"
    return caller.scope
