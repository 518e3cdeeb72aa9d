"""Scores on stored completions: add, list and delete one completion's, add many at once, and count
what a filter (scores included) matches."""

import azure.functions as func
from azurefunctions.extensions.http.fastapi import Request, Response

from blueprints.http_adapter import endpoint, json_response
from shared.curation.scoring import parse_batch_score_params, parse_score_params, require_score_name
from shared.platform.access import Caller, Right
from shared.platform.request_body import parse_json_object
from shared.services import get_services
from shared.store.completion_params import parse_completion_count_params
from shared.store.scores import BatchScoresParams, ScoreParams

bp = func.Blueprint()


@bp.route(route="api/completions/{completion_id}/scores", methods=["POST"], auth_level=func.AuthLevel.ANONYMOUS)
@endpoint(Right.ACTION, body=ScoreParams)
async def add_score(req: Request, caller: Caller | None) -> Response:
    """Score one completion (replacing its score of the same name); the author is the caller."""
    assert caller is not None
    params = parse_score_params(parse_json_object(await req.body()))
    score = await get_services().scoring.add(
        req.path_params["completion_id"], params, author=caller.owner, owner=caller.scope
    )
    return json_response(score)


@bp.route(route="api/completions/{completion_id}/scores", methods=["GET"], auth_level=func.AuthLevel.ANONYMOUS)
@endpoint(Right.READ)
async def list_scores(req: Request, caller: Caller | None) -> Response:
    """One completion's scores."""
    assert caller is not None
    return json_response(await get_services().scoring.list(req.path_params["completion_id"], owner=caller.scope))


@bp.route(
    route="api/completions/{completion_id}/scores/{name}", methods=["DELETE"], auth_level=func.AuthLevel.ANONYMOUS
)
@endpoint(Right.ACTION)
async def delete_score(req: Request, caller: Caller | None) -> Response:
    """Remove one completion's score of a name."""
    assert caller is not None
    name = require_score_name(req.path_params["name"])
    return json_response(
        await get_services().scoring.remove(req.path_params["completion_id"], name, owner=caller.scope)
    )


@bp.route(route="api/scores", methods=["POST"], auth_level=func.AuthLevel.ANONYMOUS)
@endpoint(Right.ACTION, body=BatchScoresParams)
async def add_scores(req: Request, caller: Caller | None) -> Response:
    """Score up to 100 completions in one request; each item answers for itself."""
    assert caller is not None
    params = parse_batch_score_params(parse_json_object(await req.body()))
    return json_response(await get_services().scoring.add_many(params, author=caller.owner, owner=caller.scope))


@bp.route(route="api/completions/count", methods=["GET"], auth_level=func.AuthLevel.ANONYMOUS)
@endpoint(Right.READ)
async def count_completions(req: Request, caller: Caller | None) -> Response:
    """How many stored completions a list filter matches (the pane shows it before Distill)."""
    assert caller is not None
    selection = parse_completion_count_params(req.query_params.multi_items())
    selection = selection.model_copy(update={"owner": caller.scope})
    count = await get_services().store.index.count(selection)
    return json_response({"object": "chat.completion.count", "count": count})
