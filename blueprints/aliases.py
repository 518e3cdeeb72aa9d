"""Aliases: set one (canary shares), read it with its history, promote its canary through the gate, roll back."""

from __future__ import annotations

from typing import Any

import azure.functions as func
from azurefunctions.extensions.http.fastapi import Request, Response

from blueprints.http_adapter import endpoint, json_response
from shared.aliases.online import KEPT_BUCKETS
from shared.aliases.records import AliasParams, PromoteParams, RollbackParams, require_alias_name
from shared.platform.access import Caller, Right
from shared.platform.request_body import parse_json_object, parse_model
from shared.platform.telemetry import delivery_span
from shared.services import get_services
from shared.store.completion_params import list_object, query_integer

bp = func.Blueprint()


@bp.route(route="api/aliases", methods=["GET"], auth_level=func.AuthLevel.ANONYMOUS)
@endpoint(Right.READ)
async def list_aliases(req: Request, caller: Caller | None) -> Response:
    """Every alias, in name order."""
    records = await get_services().aliases.list()
    return json_response(list_object([record.view() for record in records], has_more=False))


@bp.route(route="api/aliases/{name}", methods=["PUT"], auth_level=func.AuthLevel.ANONYMOUS)
@endpoint(Right.ACTION, body=AliasParams)
async def put_alias(req: Request, caller: Caller | None) -> Response:
    """Create or change an alias: one or two deployments with traffic shares summing to 100."""
    name = require_alias_name(req.path_params["name"])
    params = parse_model(AliasParams, parse_json_object(await req.body()))
    services = get_services()
    if params.online_eval is not None:
        assert caller is not None, "changing an alias requires a right"
        services.online_evals.require_caller_may_grade(params.online_eval, caller)
    record = await services.aliases.put(name, params, by=_who(caller))
    return json_response(record.view())


@bp.route(route="api/aliases/{name}", methods=["GET"], auth_level=func.AuthLevel.ANONYMOUS)
@endpoint(Right.READ)
async def retrieve_alias(req: Request, caller: Caller | None) -> Response:
    """One alias: its targets, sticky rule, gate, fallback and history of changes."""
    record = await get_services().aliases.get(require_alias_name(req.path_params["name"]))
    return json_response(record.view())


@bp.route(route="api/aliases/{name}", methods=["DELETE"], auth_level=func.AuthLevel.ANONYMOUS)
@endpoint(Right.ACTION)
async def delete_alias(req: Request, caller: Caller | None) -> Response:
    """Forget an alias: its name is forwarded as a plain deployment name again."""
    name = require_alias_name(req.path_params["name"])
    await get_services().aliases.delete(name)
    return json_response({"object": "alias.deleted", "name": name, "deleted": True})


@bp.route(route="api/aliases/{name}/promote", methods=["POST"], auth_level=func.AuthLevel.ANONYMOUS)
@endpoint(Right.ACTION, body=PromoteParams)
async def promote_alias(req: Request, caller: Caller | None) -> Response:
    """Give one target all traffic once its comparison with the teacher passes the gate (or `force`)."""
    name = require_alias_name(req.path_params["name"])
    params = parse_model(PromoteParams, await _optional_body(req))
    record = await get_services().aliases.promote(name, params, by=_who(caller))
    return json_response(record.view())


@bp.route(route="api/aliases/{name}/rollback", methods=["POST"], auth_level=func.AuthLevel.ANONYMOUS)
@endpoint(Right.ACTION, body=RollbackParams)
async def rollback_alias(req: Request, caller: Caller | None) -> Response:
    """Send all traffic back to the fallback (the deployment that served alone before the canary)."""
    name = require_alias_name(req.path_params["name"])
    params = parse_model(RollbackParams, await _optional_body(req))
    record = await get_services().aliases.rollback(name, params, by=_who(caller))
    return json_response(record.view())


@bp.route(route="api/aliases/{name}/online_evals", methods=["GET"], auth_level=func.AuthLevel.ANONYMOUS)
@endpoint(Right.READ)
async def alias_online_evals(req: Request, caller: Caller | None) -> Response:
    """The alias's online pass rate per serving deployment over the last `hours` (default 24), hour by hour."""
    name = require_alias_name(req.path_params["name"])
    raw = req.query_params.get("hours")
    hours = 24 if raw is None else query_integer("hours", raw, low=1, high=KEPT_BUCKETS)
    return json_response(await get_services().online_evals.view(name, hours=hours))


@bp.function_name("grade_online_evals")
@bp.service_bus_queue_trigger(arg_name="msg", queue_name="%ONLINE_EVALS_QUEUE%", connection="ServiceBusConnection")
async def grade_online_evals(msg: func.ServiceBusMessage) -> None:
    """Grade a batch of an alias's sampled calls; raising makes Service Bus retry, then dead-letter it."""
    services = get_services()
    with delivery_span(services.settings.online_evals_queue, msg.message_id, msg.application_properties):
        await services.online_evals.handle(msg.get_body())


async def _optional_body(req: Request) -> dict[str, Any]:
    raw = await req.body()
    return parse_json_object(raw) if raw.strip() else {}


def _who(caller: Caller | None) -> str:
    assert caller is not None, "every alias change requires a right"
    return caller.name
