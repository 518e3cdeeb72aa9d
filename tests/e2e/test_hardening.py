"""Request hardening through a running host: numeric query parameters on every route, body media
types, and what a deployment name may reach upstream."""

from __future__ import annotations

import re

import httpx
import pytest

from shared.datasets.job import new_dataset_id
from tests.conftest import RunningHost
from tests.fakes import FakeUpstream

MESSAGES = [{"role": "user", "content": "hi"}]
BAD_NUMBERS = ["²", "٣", "-1", "1e9", "abc", "1.0", "+5", "", "9" * 5000]
NUMERIC_QUERY = {
    "limit": {
        "list_chat_completions",
        "list_chat_completion_messages",
        "list_datasets",
        "list_fine_tuning_jobs",
        "list_dataset_fine_tuning_jobs",
        "list_evals",
        "list_eval_runs",
        "list_eval_run_output_items",
        "list_eval_files",
    },
    "created_after": {"list_chat_completions"},
    "created_before": {"list_chat_completions"},
}
"""Numeric query parameter -> the operations (route-shape suffixes removed) that read it."""


def operations(host: RunningHost) -> list[tuple[str, str, str]]:
    """(operation id, method, path template) of every HTTP function, from the OpenAPI document."""
    document = httpx.get(f"{host.url}/api/openapi.json").json()
    return [
        (operation["operationId"], method.upper(), path)
        for path, methods in document["paths"].items()
        for method, operation in methods.items()
    ]


def base_name(operation_id: str) -> str:
    return re.sub(r"_(v1|api|openai)$", "", operation_id)


def test_every_numeric_query_parameter_is_a_400(host: RunningHost, fake_upstream: FakeUpstream) -> None:
    unknown_completion = "chatcmpl-" + "0" * 32
    with host.http() as http:
        stored = http.post("/openai/v1/chat/completions", json={"model": "m", "store": True, "messages": MESSAGES})
        completion_id = stored.json()["id"]
        problems: list[str] = []
        walked = set()
        for operation_id, method, template in operations(host):
            name = base_name(operation_id)
            real_id = completion_id if method_keeps_data(method) else unknown_completion
            path = template.replace("{completion_id}", real_id).replace("{dataset_id}", new_dataset_id())
            path = re.sub(r"\{deployment\}", "m", path)
            path = re.sub(r"\{[^}]+\}", "unknown", path)
            for parameter, readers in NUMERIC_QUERY.items():
                if name not in readers:
                    # Any other route must ignore the parameter or refuse it, never read it (nor fail).
                    ignored = http.request(method, path, params={parameter: "5"}).status_code
                    status = http.request(method, path, params={parameter: "²"}).status_code
                    if (status != ignored and status != 400) or status >= 500:
                        problems.append(f"{method} {path}?{parameter}=²: {status}, not listed as reading it")
                    continue
                for value in BAD_NUMBERS:
                    walked.add((name, parameter))
                    response = http.request(method, path, params={parameter: value})
                    error = response.json().get("error") or {}
                    if response.status_code != 400 or error.get("param") != parameter:
                        problems.append(f"{method} {path}?{parameter}={value[:8]!r}: {response.status_code} {error}")
    assert not problems, "\n".join(problems)
    assert walked == {(name, parameter) for parameter, names in NUMERIC_QUERY.items() for name in names}


def method_keeps_data(method: str) -> bool:
    return method != "DELETE"


def test_good_numbers_still_work(host: RunningHost, fake_upstream: FakeUpstream) -> None:
    with host.http() as http:
        for path, params in [
            ("/api/datasets", {"limit": "007"}),
            ("/openai/v1/chat/completions", {"limit": "100", "created_after": "0", "created_before": "9999999999"}),
            ("/api/evals", {"limit": "1"}),
            ("/api/fine_tuning_jobs", {"limit": "20"}),
        ]:
            response = http.get(path, params=params)
            assert response.status_code == 200, (path, response.text)


@pytest.mark.parametrize("value", ["0", "101", "1000000000"])
def test_limit_out_of_range_names_the_range(host: RunningHost, value: str) -> None:
    with host.http() as http:
        response = http.get("/api/datasets", params={"limit": value})
    assert response.status_code == 400
    assert response.json()["error"]["message"] == "'limit' must be an integer from 1 to 100."


@pytest.mark.parametrize(
    "content_type",
    [None, "text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x", "text/json"],
)
def test_post_bodies_must_be_declared_json(
    host: RunningHost, fake_upstream: FakeUpstream, content_type: str | None
) -> None:
    """A browser sends these cross-site without a CORS preflight (CSRF); only application/json is accepted."""
    chat = b'{"model": "m", "store": true, "messages": [{"role": "user", "content": "hi"}]}'
    headers = {} if content_type is None else {"content-type": content_type}
    with host.http() as http:
        stored = http.post("/openai/v1/chat/completions", json={"model": "m", "store": True, "messages": MESSAGES})
        completion_id = stored.json()["id"]
        for path, body in [
            ("/openai/v1/chat/completions", chat),
            ("/openai/deployments/m/chat/completions", chat),
            (f"/openai/v1/chat/completions/{completion_id}", b'{"metadata": {"stolen": "yes"}}'),
            ("/api/purges", b'{"filter": {"model": "m"}}'),
            ("/api/datasets", b'{"kind": "distillation"}'),
            ("/api/fine_tuning_jobs/ftjob-unknown/cancel", b""),
        ]:
            response = http.post(path, content=body, headers=headers)
            assert response.status_code == 415, (path, response.text)
            assert response.json()["error"]["code"] == "unsupported_media_type"
        assert http.get(f"/openai/v1/chat/completions/{completion_id}").json()["metadata"] == {}
    assert len(fake_upstream.requests) == 1  # only the JSON call that stored the completion


def test_json_with_parameters_is_accepted(host: RunningHost, fake_upstream: FakeUpstream) -> None:
    with host.http() as http:
        response = http.post(
            "/openai/v1/chat/completions",
            content=b'{"model": "m", "messages": [{"role": "user", "content": "hi"}]}',
            headers={"content-type": "Application/JSON; charset=utf-8"},
        )
    assert response.status_code == 200, response.text
