"""The registered function set is the app's public surface: names, triggers and routes."""

from __future__ import annotations

import os
import subprocess
import sys
import typing
from typing import Any

from local_host.azurite import ROOT


def _http(function: Any) -> tuple[str, tuple[str, ...]]:
    trigger = function.get_trigger()
    return trigger.route, tuple(str(getattr(m, "value", m)) for m in trigger.methods)


def test_capture_stored_completion_and_pane_routes(functions: dict[str, Any]) -> None:
    expected = {
        "create_chat_completion_for_deployment": ("openai/deployments/{deployment}/chat/completions", ("POST",)),
        "create_chat_completion": ("openai/v1/chat/completions", ("POST",)),
        "health": ("api/health", ("GET",)),
        "pane_page": ("{ignored:maxlength(0)?}", ("GET",)),
        "pane_asset": ("pane/{name}", ("GET",)),
        "get_caller": ("api/caller", ("GET",)),
        "add_score": ("api/completions/{completion_id}/scores", ("POST",)),
        "list_scores": ("api/completions/{completion_id}/scores", ("GET",)),
        "delete_score": ("api/completions/{completion_id}/scores/{name}", ("DELETE",)),
        "add_scores": ("api/scores", ("POST",)),
        "count_completions": ("api/completions/count", ("GET",)),
        "create_bulk_action": ("api/bulk_actions", ("POST",)),
        "get_bulk_action": ("api/bulk_actions/{bulk_action_id}", ("GET",)),
        "create_relabel": ("api/relabels", ("POST",)),
        "get_relabel": ("api/relabels/{relabel_id}", ("GET",)),
    }
    for prefix, suffix in (("openai", ""), ("openai/v1", "_v1")):
        expected |= {
            f"list_chat_completions{suffix}": (f"{prefix}/chat/completions", ("GET",)),
            f"retrieve_chat_completion{suffix}": (f"{prefix}/chat/completions/{{completion_id}}", ("GET",)),
            f"update_chat_completion{suffix}": (f"{prefix}/chat/completions/{{completion_id}}", ("POST",)),
            f"delete_chat_completion{suffix}": (f"{prefix}/chat/completions/{{completion_id}}", ("DELETE",)),
            f"list_chat_completion_messages{suffix}": (
                f"{prefix}/chat/completions/{{completion_id}}/messages",
                ("GET",),
            ),
        }
    registered = {
        name: _http(f) for name, f in functions.items() if f.get_trigger().get_binding_name() == "httpTrigger"
    }
    assert {name: registered.get(name) for name in expected} == expected


def test_http_functions_take_the_streaming_request_type(functions: dict[str, Any]) -> None:
    """The HTTP streams extension binds by annotation; every HTTP function must use its types."""
    from azurefunctions.extensions.http.fastapi import Request, Response

    for name, function in functions.items():
        if function.get_trigger().get_binding_name() != "httpTrigger":
            continue
        hints = typing.get_type_hints(function.get_user_function())
        assert (hints.get("req"), hints.get("return")) == (Request, Response), name


def test_alias_routes(functions: dict[str, Any]) -> None:
    expected = {
        "list_aliases": ("api/aliases", ("GET",)),
        "put_alias": ("api/aliases/{name}", ("PUT",)),
        "retrieve_alias": ("api/aliases/{name}", ("GET",)),
        "delete_alias": ("api/aliases/{name}", ("DELETE",)),
        "promote_alias": ("api/aliases/{name}/promote", ("POST",)),
        "rollback_alias": ("api/aliases/{name}/rollback", ("POST",)),
        "alias_online_evals": ("api/aliases/{name}/online_evals", ("GET",)),
    }
    assert {name: _http(functions[name]) for name in expected} == expected
    grader = functions["grade_online_evals"].get_trigger()
    assert (grader.get_binding_name(), grader.queue_name) == ("serviceBusTrigger", "%ONLINE_EVALS_QUEUE%")


def test_responses_routes(functions: dict[str, Any]) -> None:
    """Both shapes: `AzureOpenAI` sends `/openai/responses` (no deployment in the path), `OpenAI` `/openai/v1/responses`."""
    expected = {}
    for prefix, suffix in (("openai", ""), ("openai/v1", "_v1")):
        expected |= {
            f"create_response{suffix}": (f"{prefix}/responses", ("POST",)),
            f"retrieve_response{suffix}": (f"{prefix}/responses/{{response_id}}", ("GET",)),
            f"delete_response{suffix}": (f"{prefix}/responses/{{response_id}}", ("DELETE",)),
            f"list_response_input_items{suffix}": (f"{prefix}/responses/{{response_id}}/input_items", ("GET",)),
        }
    assert {name: _http(functions[name]) for name in expected} == expected


def test_importing_the_app_freezes_its_start_up_objects() -> None:
    """A worker's full garbage collections skip the ~225,000 objects start-up built (80-200 ms a pause)."""
    probe = "import gc, function_app; print(gc.get_freeze_count(), len(gc.get_objects()))"
    env = {**os.environ, "AzureWebJobsStorage": "UseDevelopmentStorage=true"}
    out = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, env=env, capture_output=True, text=True, check=True)
    frozen, still_collected = map(int, out.stdout.split())
    assert frozen > 100_000 and still_collected < frozen / 10
