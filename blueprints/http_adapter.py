"""The one wrapper every HTTP function goes through: identify the caller, check the route's right,
and turn domain errors into OpenAI-shaped responses.

Functions use the HTTP streams extension's `Request`/`Response` (FastAPI types), the only way an
Azure Functions Python app can send server-sent events as they are produced.
"""

import copy
import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

import azure.functions as func
from azurefunctions.extensions.http.fastapi import Request, Response, StreamingResponse
from pydantic import BaseModel
from starlette.types import Message

from shared.capture import proxy
from shared.platform.access import Caller, Right
from shared.platform.errors import DistilleryError, PayloadTooLarge, UnsupportedMediaType
from shared.platform.telemetry import HTTP_STATUS, server_span
from shared.services import get_services

log = logging.getLogger(__name__)

Handler = Callable[[Request, Caller | None], Awaitable[Response]]

_RETRYABLE_STATUSES = frozenset({408, 409, 429})

ROOT_ROUTE = "{ignored:maxlength(0)?}"
"""The route of the site root: the Functions host matches `/` only through an optional, empty parameter
(an empty route would fall back to the function's name)."""


def public_path(route: str) -> str:
    """The URL path template a route serves, as callers see it: `/` for `ROOT_ROUTE`."""
    return "/" if route == ROOT_ROUTE else "/" + route


def endpoint(
    right: Right | None, *, body: type[BaseModel] | None = None, upload: bool = False
) -> Callable[[Handler], Callable[[Request], Awaitable[Response]]]:
    """Declare the right a route needs (None: public) and wrap it with authentication, the body-size
    limit and error mapping.

    The returned function has the plain `(req: Request) -> Response` signature the Functions worker
    binds; the right is kept on it as `required_right` (and the request-body model, if any, as
    `body_model`) so tests and the OpenAPI document can walk every route.
    """

    def decorate(handler: Handler) -> Callable[[Request], Awaitable[Response]]:
        async def function(req: Request) -> Response:
            # A caller's (or the Functions host's) `traceparent` header makes this request part of its trace.
            attributes = {"http.request.method": req.method, "code.function": handler.__name__}
            with server_span(f"{req.method} {handler.__name__}", attributes, req.headers) as span:
                response = await _respond(req)
                span.set_attribute(HTTP_STATUS, response.status_code)
                return response

        async def _respond(req: Request) -> Response:
            try:
                services = get_services()
                caller = None
                if right is not None:
                    caller = services.authenticator.authenticate(req.headers)
                    caller.require(right)
                if req.method in _BODY_METHODS and upload:
                    require_keyed_upload(req.headers)
                elif req.method in _BODY_METHODS:
                    require_json_media_type(req.headers.get("content-type"))
                return await handler(limit_body(req, services.settings.max_body_bytes), caller)
            except DistilleryError as error:
                return error_response(error)
            except Exception:
                log.exception("Unhandled error in %s", handler.__name__)
                return error_response(_INTERNAL)

        function.__name__ = handler.__name__
        function.__qualname__ = handler.__qualname__
        function.__doc__ = handler.__doc__
        function.__module__ = handler.__module__
        function.required_right = right  # type: ignore[attr-defined]
        function.body_model = body  # type: ignore[attr-defined]
        return function

    return decorate


_BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})


Operation = tuple[Handler, str, str, Right | None, type[BaseModel] | None]
"""(handler, route below the prefix, method, right, request-body model) of one OpenAI-shaped route."""
OPENAI_ROUTE_SHAPES = [("openai", ""), ("openai/v1", "_v1")]
"""(route prefix, function-name suffix) for the `AzureOpenAI` and `OpenAI` clients."""


def register_openai_routes(bp: func.Blueprint, operations: list[Operation]) -> None:
    """Serve every operation under both OpenAI route shapes, one named function each (the host
    indexes functions by name)."""
    for prefix, suffix in OPENAI_ROUTE_SHAPES:
        for handler, path, method, right, body in operations:
            bp.function_name(handler.__name__ + suffix)(
                bp.route(route=f"{prefix}/{path}", methods=[method], auth_level=func.AuthLevel.ANONYMOUS)(
                    endpoint(right, body=body)(handler)
                )
            )


def require_json_media_type(content_type: str | None) -> None:
    """Refuse with 415 a body not declared `application/json` (an empty body too: the SDKs declare it).

    A browser sends a cross-site form or `text/plain` POST without asking first (no CORS preflight),
    with any cookies App Service Authentication set; `application/json` it must ask for, so requiring
    it is what keeps such a page from acting as a signed-in user (CSRF).
    """
    media_type = (content_type or "").split(";", 1)[0].strip().lower()
    if media_type != "application/json":
        raise UnsupportedMediaType(
            "Send the request body as JSON with 'Content-Type: application/json'.", param="content-type"
        )


def require_keyed_upload(headers: Any) -> None:
    """A file upload (`multipart/form-data`, which a browser sends cross-site without a preflight) is taken
    only with a key in a header (`api-key` or `Authorization`), which no cross-site form can set: a signed-in
    browser's cookies alone never upload (CSRF)."""
    media_type = (headers.get("content-type") or "").split(";", 1)[0].strip().lower()
    if media_type != "multipart/form-data":
        raise UnsupportedMediaType("Upload the file as multipart/form-data.", param="content-type")
    if not (headers.get("api-key") or "").strip() and not (headers.get("authorization") or "").strip():
        raise UnsupportedMediaType(
            "A file upload needs the key in the 'api-key' or 'Authorization' header.", param="content-type"
        )


def limit_body(req: Request, max_bytes: int) -> Request:
    """The request, refusing with 413 a body over `max_bytes`: at once when `Content-Length` says so,
    else as soon as the stream passes the limit, so a large body is never buffered or forwarded."""
    declared = (req.headers.get("content-length") or "").strip()
    if declared.isascii() and declared.isdecimal() and (len(declared) > 18 or int(declared) > max_bytes):
        raise _too_large(max_bytes)
    received = 0

    async def receive() -> Message:
        nonlocal received
        message = await req.receive()
        if message["type"] == "http.request":
            received += len(message.get("body", b""))
            if received > max_bytes:
                raise _too_large(max_bytes)
        return message

    return Request(req.scope, receive)


def _too_large(max_bytes: int) -> PayloadTooLarge:
    return PayloadTooLarge(f"The request body is larger than {max_bytes} bytes.")


def registered_functions(app: Any) -> list[Any]:
    """The functions of a composed `FunctionApp`, callable any number of times.

    `FunctionApp.get_functions()` refuses a second call (it checks names against a record of the
    first), and the Functions host makes the first; a shallow copy with its own record reads the same
    function objects without touching the app the host indexed.
    """
    reader = copy.copy(app)
    reader.functions_bindings = {}
    return list(reader.get_functions())


class _InternalError(DistilleryError):
    status = 500
    type = "server_error"
    default_code = "internal_error"
    retryable = True


_INTERNAL = _InternalError("The server had an error while processing your request. Retry, or report it.")


def error_response(error: DistilleryError) -> Response:
    headers = dict(error.headers)
    if not error.retryable and error.status not in _RETRYABLE_STATUSES:
        headers.setdefault("x-should-retry", "false")
    return json_response(error.body(), status=error.status, headers=headers)


def json_response(body: Any, *, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(
        content=json.dumps(body, separators=(",", ":"), ensure_ascii=False),
        status_code=status,
        headers=headers,
        media_type="application/json",
    )


class QueuedJob(Protocol):
    @property
    def id(self) -> str: ...

    def view(self) -> dict[str, Any]: ...


def job_accepted(job: QueuedJob, collection: str) -> Response:
    """202 with a queued job's record, and in `location` where to poll it: `/<collection>/<id>`."""
    return json_response(job.view(), status=202, headers={"location": f"/{collection}/{job.id}"})


def raw_response(
    body: bytes, *, status: int, headers: dict[str, str], media_type: str = "application/json"
) -> Response:
    headers = {name: value for name, value in headers.items() if name != "content-type"}
    return Response(content=body, status_code=status, headers=headers, media_type=media_type)


def event_stream(events: Any, *, status: int, headers: dict[str, str]) -> StreamingResponse:
    headers = {name: value for name, value in headers.items() if name != "content-type"}
    return StreamingResponse(events, status_code=status, headers=headers, media_type="text/event-stream")


async def proxied(req: Request, request: proxy.Request, *, deployment: str, caller: Caller, started: float) -> Response:
    """Proxy a chat or Responses call and answer with what the capture gives: events as they come, or
    the upstream's body as it was (`started`: when the HTTP request arrived)."""
    reply = await get_services().capture.complete(
        request,
        deployment=deployment,
        caller=caller,
        idempotency_key=req.headers.get("idempotency-key"),
        started=started,
    )
    if reply.events is not None:
        return event_stream(reply.events, status=reply.status, headers=reply.headers)
    return raw_response(reply.body, status=reply.status, headers=reply.headers)
