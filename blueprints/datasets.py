"""Datasets: the REST API that queues dataset jobs and serves their files, and the queue trigger that
builds them (`shared/datasets`)."""

from __future__ import annotations

import azure.functions as func
from azurefunctions.extensions.http.fastapi import Request, Response, StreamingResponse

from blueprints.http_adapter import endpoint, json_response
from shared.datasets.builder import MANIFEST_FILE
from shared.datasets.job import DatasetJob, DatasetStatus, is_dataset_id, parse_dataset_params, require_dataset_id
from shared.platform.access import Caller, Right
from shared.platform.errors import InvalidRequest, NotFound
from shared.platform.request_body import parse_json_object
from shared.platform.telemetry import delivery_span
from shared.services import get_services
from shared.store.completion_params import MAX_PAGE, list_object, query_integer

bp = func.Blueprint()

_MEDIA_TYPES = {".jsonl": "application/jsonl", ".json": "application/json"}


@bp.route(route="api/datasets", methods=["POST"], auth_level=func.AuthLevel.ANONYMOUS)
@endpoint(Right.ACTION)
async def create_dataset(req: Request, caller: Caller | None) -> Response:
    assert caller is not None
    params = parse_dataset_params(parse_json_object(await req.body())).scoped_to(caller.scope)
    job = await get_services().dataset_jobs.submit(params, requested_by=caller.owner)
    return json_response(job.view(), status=202)


@bp.route(route="api/datasets", methods=["GET"], auth_level=func.AuthLevel.ANONYMOUS)
@endpoint(Right.READ)
async def list_datasets(req: Request, caller: Caller | None) -> Response:
    limit, after = 20, None
    for name, value in req.query_params.multi_items():
        if name == "limit":
            limit = query_integer(name, value, low=1, high=MAX_PAGE)
        elif name == "after":
            if not is_dataset_id(value):
                raise InvalidRequest("'after' must be a dataset id such as 'dataset-…'.", param="after")
            after = value
        else:
            raise InvalidRequest(f"Unrecognized query parameter: '{name}'.", param=name)
    assert caller is not None
    jobs, has_more = await get_services().dataset_jobs.records.list(after=after, limit=limit, owner_scope=caller.scope)
    return json_response(list_object([job.view() for job in jobs], has_more=has_more))


@bp.route(route="api/datasets/{dataset_id}", methods=["GET"], auth_level=func.AuthLevel.ANONYMOUS)
@endpoint(Right.READ)
async def retrieve_dataset(req: Request, caller: Caller | None) -> Response:
    assert caller is not None
    job = await _visible_job(req.path_params["dataset_id"], caller)
    return json_response(job.view())


@bp.route(route="api/datasets/{dataset_id}", methods=["DELETE"], auth_level=func.AuthLevel.ANONYMOUS)
@endpoint(Right.ACTION)
async def delete_dataset(req: Request, caller: Caller | None) -> Response:
    assert caller is not None
    dataset_id = (await _visible_job(req.path_params["dataset_id"], caller)).id
    await get_services().dataset_jobs.records.delete(dataset_id)
    return json_response({"id": dataset_id, "object": "dataset.deleted", "deleted": True})


@bp.route(route="api/datasets/{dataset_id}/files/{name}", methods=["GET"], auth_level=func.AuthLevel.ANONYMOUS)
@endpoint(Right.READ)
async def download_dataset_file(req: Request, caller: Caller | None) -> Response:
    """Stream a file of a finished dataset, blob chunk by chunk (a file may be gigabytes)."""
    records = get_services().dataset_jobs.records
    dataset_id, name = require_dataset_id(req.path_params["dataset_id"]), req.path_params["name"]
    assert caller is not None
    job = await _visible_job(dataset_id, caller)
    served = {file.name for file in job.files} | ({MANIFEST_FILE} if job.status is DatasetStatus.SUCCEEDED else set())
    if name not in served:
        raise NotFound(f"Dataset '{dataset_id}' has no file '{name}'.", param="name")
    size, chunks = await records.open_file(dataset_id, name)
    headers = {"content-length": str(size), "content-disposition": f'attachment; filename="{name}"'}
    media_type = _MEDIA_TYPES[name[name.rindex(".") :]]
    return StreamingResponse(chunks, headers=headers, media_type=media_type)


async def _visible_job(dataset_id: str, caller: Caller) -> DatasetJob:
    """The job record, or 404 for a scoped caller's view of another owner's dataset (no existence leak)."""
    job, _ = await get_services().dataset_jobs.records.read(dataset_id)
    if not job.visible_to(caller.scope):
        raise NotFound(f"No dataset found with id '{dataset_id}'.", param="dataset_id")
    return job


@bp.service_bus_queue_trigger(arg_name="msg", queue_name="%DATASET_JOBS_QUEUE%", connection="ServiceBusConnection")
async def run_dataset_job(msg: func.ServiceBusMessage) -> None:
    """One delivery of a dataset job message; raising makes Service Bus retry, then dead-letter it."""
    services = get_services()
    with delivery_span(services.settings.dataset_jobs_queue, msg.message_id, msg.application_properties):
        await services.dataset_jobs.handle(msg.get_body(), delivery_count=msg.delivery_count or 1)
