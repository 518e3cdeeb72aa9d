"""The Evals API (OpenAI's shapes, so `client.evals.*` works unchanged) and the eval queue trigger.

Every operation is served under three prefixes: `/api` (this service's own), `/openai/v1` (the
`OpenAI` client with `base_url=<host>/openai/v1`, as for chat completions) and `/openai` (the
`AzureOpenAI` client). `OPERATIONS` is the one table of routes and their rights.
"""

from __future__ import annotations

from typing import Any

import azure.functions as func
from azurefunctions.extensions.http.fastapi import Request, Response

from blueprints.http_adapter import endpoint, json_response
from shared.evals.params import EvalCreateParams, EvalUpdateParams, RunCreateParams
from shared.platform.access import Caller, Right
from shared.platform.errors import InvalidRequest
from shared.platform.request_body import parse_json_object, parse_model, parse_multipart_form
from shared.platform.telemetry import delivery_span
from shared.services import get_services
from shared.store.completion_params import IGNORED_QUERY, MAX_PAGE, list_object, query_integer

RUN_STATUSES = frozenset({"queued", "in_progress", "completed", "canceled", "failed"})
ITEM_STATUSES = frozenset({"pass", "fail"})


async def create_eval(req: Request, caller: Caller | None) -> Response:
    """Create an eval: a data source config and testing criteria (graders)."""
    params = parse_model(EvalCreateParams, parse_json_object(await req.body()))
    record = await get_services().evals.create_eval(params, owner=_scope(caller))
    return json_response(record.view())


async def list_evals(req: Request, caller: Caller | None) -> Response:
    """List evals, oldest first by default (as OpenAI's); `order_by=updated_at` orders by last change."""
    query = _list_query(req, order_by=True)
    records, has_more = await get_services().evals.list_evals(
        after=query["after"],
        limit=query["limit"],
        order=query["order"],
        order_by=query["order_by"],
        owner=_scope(caller),
    )
    return json_response(list_object([record.view() for record in records], has_more=has_more))


async def retrieve_eval(req: Request, caller: Caller | None) -> Response:
    """Get an eval."""
    record = await get_services().evals.get_eval(req.path_params["eval_id"], owner=_scope(caller))
    return json_response(record.view())


async def update_eval(req: Request, caller: Caller | None) -> Response:
    """Rename an eval or replace its metadata."""
    params = parse_model(EvalUpdateParams, parse_json_object(await req.body()))
    record = await get_services().evals.update_eval(req.path_params["eval_id"], params, owner=_scope(caller))
    return json_response(record.view())


async def delete_eval(req: Request, caller: Caller | None) -> Response:
    """Delete an eval with its runs and their results."""
    eval_id = req.path_params["eval_id"]
    await get_services().evals.delete_eval(eval_id, owner=_scope(caller))
    return json_response({"object": "eval.deleted", "deleted": True, "eval_id": eval_id})


async def create_eval_run(req: Request, caller: Caller | None) -> Response:
    """Start a run: its items are answered (or taken as they are) and graded on the job queue."""
    params = parse_model(RunCreateParams, parse_json_object(await req.body()))
    run, request = await get_services().evals.create_run(
        req.path_params["eval_id"], params, owner=_scope(caller), report_base=str(req.base_url), caller=caller
    )
    return json_response(run.view(request), status=201)


async def list_eval_runs(req: Request, caller: Caller | None) -> Response:
    """List an eval's runs, oldest first by default (as OpenAI's)."""
    query = _list_query(req, statuses=RUN_STATUSES)
    runs, has_more = await get_services().evals.list_runs(
        req.path_params["eval_id"],
        after=query["after"],
        limit=query["limit"],
        order=query["order"],
        status=query["status"],
        owner=_scope(caller),
    )
    return json_response(list_object([run.view(request) for run, request in runs], has_more=has_more))


async def retrieve_eval_run(req: Request, caller: Caller | None) -> Response:
    """Get a run: status, result counts, per-criterion results and usage."""
    run, request = await get_services().evals.get_run(
        req.path_params["eval_id"], req.path_params["run_id"], owner=_scope(caller)
    )
    return json_response(run.view(request))


async def cancel_eval_run(req: Request, caller: Caller | None) -> Response:
    """Cancel a run; the results graded so far are kept."""
    services = get_services()
    eval_id, run_id = req.path_params["eval_id"], req.path_params["run_id"]
    run = await services.evals.cancel_run(eval_id, run_id, owner=_scope(caller))
    return json_response(run.view(await services.evals.store.read_request(eval_id, run_id)))


async def delete_eval_run(req: Request, caller: Caller | None) -> Response:
    """Delete a run and its results."""
    run_id = req.path_params["run_id"]
    await get_services().evals.delete_run(req.path_params["eval_id"], run_id, owner=_scope(caller))
    return json_response({"object": "eval.run.deleted", "deleted": True, "run_id": run_id})


async def list_eval_run_output_items(req: Request, caller: Caller | None) -> Response:
    """List a run's graded items in data-source order; `status=pass|fail` filters."""
    query = _list_query(req, statuses=ITEM_STATUSES)
    items, has_more = await get_services().evals.output_items(
        req.path_params["eval_id"],
        req.path_params["run_id"],
        after=query["after"],
        limit=query["limit"],
        order=query["order"],
        status=query["status"],
        owner=_scope(caller),
    )
    return json_response(list_object([item.view() for item in items], has_more=has_more))


async def retrieve_eval_run_output_item(req: Request, caller: Caller | None) -> Response:
    """Get one graded item."""
    path = req.path_params
    item = await get_services().evals.output_item(
        path["eval_id"], path["run_id"], path["output_item_id"], owner=_scope(caller)
    )
    return json_response(item.view())


async def compare_eval_runs(req: Request, caller: Caller | None) -> Response:
    """Compare two runs of an eval (`?runs=a,b`): per criterion wins, ties and the pass-rate delta b - a."""
    runs: list[str] = []
    for name, value in req.query_params.multi_items():
        if name == "runs":
            runs = [run.strip() for run in value.split(",") if run.strip()]
        elif name not in IGNORED_QUERY:
            raise InvalidRequest(f"Unrecognized query parameter: '{name}'.", param=name)
    comparison = await get_services().evals.compare(req.path_params["eval_id"], runs, owner=_scope(caller))
    return json_response(comparison)


async def create_eval_file(req: Request, caller: Caller | None) -> Response:
    """Upload a JSONL file of eval rows (`purpose="evals"`), for a run's `file_id` source."""
    form = parse_multipart_form(req.headers.get("content-type"), await req.body())
    upload, purpose = form.get("file"), form.get("purpose")
    if upload is None:
        raise InvalidRequest("Missing required parameter: 'file'.", param="file")
    services = get_services()
    owner = _scope(caller)
    await services.quota_gate.require_room(owner=owner, what="this file upload")
    record = await services.eval_files.create(
        filename=upload.filename or "file.jsonl",
        content=upload.data,
        purpose=purpose.data.decode("utf-8", "replace") if purpose is not None else "",
        owner=owner,
    )
    return json_response(record.view())


async def list_eval_files(req: Request, caller: Caller | None) -> Response:
    """List the eval files, newest first (as OpenAI's files.list); `purpose` other than evals lists none."""
    query: dict[str, Any] = {"after": None, "limit": 100, "order": "desc", "purpose": "evals"}
    for name, value in req.query_params.multi_items():
        if name == "limit":
            query["limit"] = query_integer(name, value, low=1, high=10_000)
        elif name == "order" and value in ("asc", "desc"):
            query["order"] = value
        elif name in ("after", "purpose"):
            query[name] = value or None
        elif name == "order":
            raise InvalidRequest(f"Invalid value for 'order': '{value}'.", param="order")
        elif name not in IGNORED_QUERY:
            raise InvalidRequest(f"Unrecognized query parameter: '{name}'.", param=name)
    if query["purpose"] not in (None, "evals"):
        return json_response(list_object([], has_more=False))
    files, has_more = await get_services().eval_files.list(
        after=query["after"], limit=query["limit"], order=query["order"], owner=_scope(caller)
    )
    return json_response(list_object([file.view() for file in files], has_more=has_more))


async def retrieve_eval_file(req: Request, caller: Caller | None) -> Response:
    """Get a file object."""
    record = await get_services().eval_files.get(req.path_params["file_id"], owner=_scope(caller))
    return json_response(record.view())


async def retrieve_eval_file_content(req: Request, caller: Caller | None) -> Response:
    """A file's rows, as uploaded."""
    content = await get_services().eval_files.content(req.path_params["file_id"], owner=_scope(caller))
    return Response(content=content, media_type="application/jsonl")


async def delete_eval_file(req: Request, caller: Caller | None) -> Response:
    """Delete a file (runs that read it keep their own copy of its rows)."""
    file_id = req.path_params["file_id"]
    await get_services().eval_files.delete(file_id, owner=_scope(caller))
    return json_response({"object": "file", "id": file_id, "deleted": True})


def _scope(caller: Caller | None) -> str | None:
    assert caller is not None, "every evals route requires a right"
    return caller.scope


def _list_query(req: Request, *, statuses: frozenset[str] = frozenset(), order_by: bool = False) -> dict[str, Any]:
    query: dict[str, Any] = {"after": None, "limit": 20, "order": "asc", "status": None, "order_by": "created_at"}
    for name, value in req.query_params.multi_items():
        if name == "limit":
            query["limit"] = query_integer(name, value, low=1, high=MAX_PAGE)
        elif name == "order" and value in ("asc", "desc"):
            query["order"] = value
        elif name == "after" and value:
            query["after"] = value
        elif name == "status" and value in statuses:
            query["status"] = value
        elif name == "order_by" and order_by and value in ("created_at", "updated_at"):
            query["order_by"] = value
        elif name in ("order", "status", "order_by"):
            raise InvalidRequest(f"Invalid value for '{name}': '{value}'.", param=name)
        elif name not in IGNORED_QUERY:
            raise InvalidRequest(f"Unrecognized query parameter: '{name}'.", param=name)
    return query


OPERATIONS = [
    # (handler, route below the prefix, method, right, request-body model); `compare` before `{run_id}`.
    (create_eval, "evals", "POST", Right.ACTION, EvalCreateParams),
    (list_evals, "evals", "GET", Right.READ, None),
    (retrieve_eval, "evals/{eval_id}", "GET", Right.READ, None),
    (update_eval, "evals/{eval_id}", "POST", Right.ACTION, EvalUpdateParams),
    (delete_eval, "evals/{eval_id}", "DELETE", Right.ACTION, None),
    (create_eval_run, "evals/{eval_id}/runs", "POST", Right.ACTION, RunCreateParams),
    (list_eval_runs, "evals/{eval_id}/runs", "GET", Right.READ, None),
    (compare_eval_runs, "evals/{eval_id}/runs/compare", "GET", Right.READ, None),
    (retrieve_eval_run, "evals/{eval_id}/runs/{run_id}", "GET", Right.READ, None),
    (cancel_eval_run, "evals/{eval_id}/runs/{run_id}", "POST", Right.ACTION, None),
    (delete_eval_run, "evals/{eval_id}/runs/{run_id}", "DELETE", Right.ACTION, None),
    (cancel_eval_run, "evals/{eval_id}/runs/{run_id}/cancel", "POST", Right.ACTION, None),
    (list_eval_run_output_items, "evals/{eval_id}/runs/{run_id}/output_items", "GET", Right.READ, None),
    (
        retrieve_eval_run_output_item,
        "evals/{eval_id}/runs/{run_id}/output_items/{output_item_id}",
        "GET",
        Right.READ,
        None,
    ),
]
ROUTE_SHAPES = [("api", ""), ("openai/v1", "_v1"), ("openai", "_azure")]
"""(route prefix, function-name suffix): this service's API, the `OpenAI` client, the `AzureOpenAI` client."""

FILE_OPERATIONS = [
    # (handler, route below the prefix, method, right): the Files API, for eval rows only.
    (create_eval_file, "files", "POST", Right.ACTION),
    (list_eval_files, "files", "GET", Right.READ),
    (retrieve_eval_file, "files/{file_id}", "GET", Right.READ),
    (delete_eval_file, "files/{file_id}", "DELETE", Right.ACTION),
    (retrieve_eval_file_content, "files/{file_id}/content", "GET", Right.READ),
]

bp = func.Blueprint()
for _prefix, _suffix in ROUTE_SHAPES:
    for _handler, _path, _method, _right, _body in OPERATIONS:
        _name = _handler.__name__ + ("_via_path" if _path.endswith("/cancel") else "") + _suffix
        bp.function_name(_name)(
            bp.route(route=f"{_prefix}/{_path}", methods=[_method], auth_level=func.AuthLevel.ANONYMOUS)(
                endpoint(_right, body=_body)(_handler)
            )
        )
    for _handler, _path, _method, _right in FILE_OPERATIONS:
        bp.function_name(_handler.__name__ + _suffix)(
            bp.route(route=f"{_prefix}/{_path}", methods=[_method], auth_level=func.AuthLevel.ANONYMOUS)(
                endpoint(_right, upload=_handler is create_eval_file)(_handler)
            )
        )


@bp.service_bus_queue_trigger(arg_name="msg", queue_name="%EVAL_JOBS_QUEUE%", connection="ServiceBusConnection")
async def run_eval_job(msg: func.ServiceBusMessage) -> None:
    """One delivery of an eval run message; raising makes Service Bus retry, then dead-letter it."""
    services = get_services()
    with delivery_span(services.settings.eval_jobs_queue, msg.message_id, msg.application_properties):
        await services.evals.handle(msg.get_body(), delivery_count=msg.delivery_count or 1)
