"""Every HTTP function declares its right, public ones are listed here on purpose, and the OpenAPI
document describes them all."""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import Any

import pytest

from blueprints.http_adapter import ROOT_ROUTE, public_path, registered_functions
from blueprints.openapi import build_document
from shared.platform.access import Right

PUBLIC_ROUTES = {"api/health", "api/openapi.json", ROOT_ROUTE, "pane/{name}"}
"""Routes anyone may call; adding one is a decision made here, not by forgetting a decorator."""


@pytest.fixture(scope="module")
def function_app() -> ModuleType:
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("AzureWebJobsStorage", "UseDevelopmentStorage=true")
        return importlib.import_module("function_app")


def http_functions(function_app: ModuleType) -> list[Any]:
    functions = registered_functions(function_app.app)
    return [f for f in functions if f.get_trigger().get_binding_name() == "httpTrigger"]


def test_every_route_declares_its_right(function_app: ModuleType) -> None:
    functions = http_functions(function_app)
    assert len(functions) >= 12
    for function in functions:
        user_function = function.get_user_function()
        route = function.get_trigger().route
        assert hasattr(user_function, "required_right"), f"{route} is not wrapped with endpoint(right)"
        right = user_function.required_right
        assert right is None or isinstance(right, Right), route
        assert (right is None) == (route in PUBLIC_ROUTES), f"{route}: public routes must be listed in PUBLIC_ROUTES"


def test_openapi_document_describes_every_route(function_app: ModuleType) -> None:
    functions = http_functions(function_app)
    document = build_document(functions)
    operations = {
        operation["operationId"]: (path, method, operation)
        for path, methods in document["paths"].items()
        for method, operation in methods.items()
    }
    assert set(operations) == {f.get_function_name() for f in functions}
    for function in functions:
        path, method, operation = operations[function.get_function_name()]
        trigger = function.get_trigger()
        assert path == public_path(trigger.route)
        assert method.upper() in [str(getattr(m, "value", m)) for m in trigger.methods]
        right = function.get_user_function().required_right
        assert operation.get("x-distillery-right") == (right.value if right else None)
    chat = operations["create_chat_completion"][2]
    assert chat["requestBody"]["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/ChatRequest"}
    assert "messages" in document["components"]["schemas"]["ChatRequest"]["required"]
    update = operations["update_chat_completion_v1"][2]
    assert update["requestBody"]["content"]["application/json"]["schema"]["$ref"].endswith("CompletionUpdateParams")
    retrieve = operations["retrieve_chat_completion"][2]
    assert retrieve["parameters"] == [
        {"name": "completion_id", "in": "path", "required": True, "schema": {"type": "string"}}
    ]
    assert operations["pane_page"][0] == "/" and operations["pane_page"][2]["security"] == []
    assert registered_functions(function_app.app), "reading the functions again must keep working"


def test_openapi_document_says_bodies_are_json_only(function_app: ModuleType) -> None:
    document = build_document(http_functions(function_app))
    for path, methods in document["paths"].items():
        for method, operation in methods.items():
            assert ("415" in operation["responses"]) == (method in ("post", "put", "patch")), (method, path)
