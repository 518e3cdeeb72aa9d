"""`GET /api/openapi.json`: an OpenAPI 3.1 document generated from the registered HTTP functions.

Every route, its methods, the right it needs (`x-distillery-right`) and its request-body schema (the
pydantic model given to `endpoint(..., body=...)`) come from the functions themselves, so a new
route appears here without anyone editing this module.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from functools import cache
from typing import Any

import azure.functions as func
from azurefunctions.extensions.http.fastapi import Request, Response
from pydantic.json_schema import models_json_schema

from blueprints.http_adapter import endpoint, json_response, public_path, registered_functions
from shared.platform.access import Caller

bp = func.Blueprint()

_PATH_PARAMETER = re.compile(r"\{([^}:]+)(?::[^}]*)?\}")
_SCHEMA_REF = "#/components/schemas/{model}"
_ERROR_SCHEMA = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["message", "type"],
            "properties": {
                "message": {"type": "string"},
                "type": {"type": "string"},
                "param": {"type": ["string", "null"]},
                "code": {"type": ["string", "null"]},
            },
        }
    },
}
_ERRORS = {
    "400": "Invalid request",
    "404": "Not found (also another owner's completion, under owner scoping)",
    "413": "Request body too large",
}
_AUTH_ERRORS = {"401": "No valid key or identity", "403": "The identity lacks the route's right"}
_BODY_ERRORS = {"415": "The body is not sent as application/json"}


@bp.route(route="api/openapi.json", methods=["GET"], auth_level=func.AuthLevel.ANONYMOUS)
@endpoint(None)
async def openapi_document(req: Request, caller: Caller | None) -> Response:
    """The API description, public like the health check, so tools can discover the routes."""
    return json_response(_app_document())


@cache
def _app_document() -> dict[str, Any]:
    from function_app import app  # the composed app; importing it at module level would be circular

    return build_document(registered_functions(app))


def build_document(functions: Iterable[Any]) -> dict[str, Any]:
    """The OpenAPI document for every HTTP function among `functions`."""
    http = [f for f in functions if f.get_trigger().get_binding_name() == "httpTrigger"]
    models = {f.get_user_function().body_model for f in http if getattr(f.get_user_function(), "body_model", None)}
    refs, definitions = models_json_schema(
        [(model, "validation") for model in sorted(models, key=lambda m: m.__name__)], ref_template=_SCHEMA_REF
    )
    paths: dict[str, dict[str, Any]] = {}
    for function in sorted(http, key=lambda f: str(f.get_trigger().route)):
        trigger = function.get_trigger()
        user_function = function.get_user_function()
        route = public_path(str(trigger.route))
        path = _PATH_PARAMETER.sub(lambda match: "{" + match.group(1) + "}", route)
        for method in trigger.methods or ["GET"]:
            verb = str(getattr(method, "value", method)).lower()
            paths.setdefault(path, {})[verb] = _operation(function.get_function_name(), user_function, route, refs)
            if verb in ("post", "put", "patch"):
                paths[path][verb]["responses"] |= _error_responses(_BODY_ERRORS)
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Distillery",
            "version": "1",
            "description": "OpenAI-compatible chat completions with stored completions. "
            "`x-distillery-right` names the right each operation needs (absent: public).",
        },
        "paths": paths,
        "components": {
            "schemas": {**definitions.get("$defs", {}), "Error": _ERROR_SCHEMA},
            "securitySchemes": {
                "apiKey": {"type": "apiKey", "in": "header", "name": "api-key"},
                "bearer": {"type": "http", "scheme": "bearer"},
            },
        },
    }


def _operation(name: str, user_function: Any, route: str, refs: dict[Any, Any]) -> dict[str, Any]:
    right = user_function.required_right
    operation: dict[str, Any] = {
        "operationId": name,
        "summary": (user_function.__doc__ or name).strip().splitlines()[0],
        "parameters": [
            {"name": match.group(1), "in": "path", "required": True, "schema": {"type": "string"}}
            for match in _PATH_PARAMETER.finditer(route)
        ],
        "responses": {"200": {"description": "Success"}} | _error_responses(_ERRORS),
    }
    body_model = getattr(user_function, "body_model", None)
    if body_model is not None:
        operation["requestBody"] = {
            "required": True,
            "content": {"application/json": {"schema": refs[(body_model, "validation")]}},
        }
    if right is None:
        operation["security"] = []
    else:
        operation["security"] = [{"apiKey": []}, {"bearer": []}]
        operation["x-distillery-right"] = right.value
        operation["responses"] |= _error_responses(_AUTH_ERRORS)
    return operation


def _error_responses(errors: dict[str, str]) -> dict[str, Any]:
    content = {"application/json": {"schema": {"$ref": _SCHEMA_REF.format(model="Error")}}}
    return {status: {"description": description, "content": content} for status, description in errors.items()}
