"""Who may do what, through a running host: every route against every kind of caller, forged and
trusted App Service principals, owner scoping, the body-size limit and the credential check."""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from local_host.azurite import Azurite, free_port
from shared.platform.access import Right
from tests.callers import principal, start_keyed_host
from tests.conftest import RunningHost, start_host
from tests.e2e.polling import wait_listed
from tests.fakes import FakeUpstream

MESSAGES = [{"role": "user", "content": "hi"}]
MAX_BODY = 4096
JSON_TYPE = {"content-type": "application/json"}


MATRIX_RIGHTS = {"inference": {Right.INFERENCE}, "read": {Right.READ}, "action": {Right.ACTION}}


@pytest.fixture(scope="module")
def matrix_host(
    azurite: Azurite, upstream: FakeUpstream, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[RunningHost, dict[str, str]]]:
    """A host with one key per right (plus the full-rights default), not trusting principals."""
    running, keys = start_keyed_host(
        azurite.connection_string,
        tmp_path_factory.mktemp("access"),
        MATRIX_RIGHTS,
        OPENAI_BASE_URL=upstream.base_url,
        DISTILLERY_MAX_BODY_BYTES=str(MAX_BODY),
    )
    yield running, keys | {"full": running.key}
    running.stop()


def store_one(host: RunningHost, key: str | None = None, **metadata: str) -> str:
    with host.http(key) as http:
        response = http.post(
            "/openai/v1/chat/completions",
            json={"model": "gpt-4o", "store": True, "metadata": metadata, "messages": MESSAGES},
        )
    assert response.status_code == 200 and response.headers["x-distillery-stored"] == "true", response.text
    wait_listed(host.openai_client(), [response.json()["id"]])
    return str(response.json()["id"])


# Requests known to succeed, by function name (both route shapes); other routes get a bare request.
KNOWN_BODIES: dict[str, Any] = {
    "create_chat_completion": {"model": "gpt-4o", "messages": MESSAGES},
    "create_chat_completion_for_deployment": {"messages": MESSAGES},
    "update_chat_completion": {"metadata": {"stage": "checked"}},
}
KNOWN_RIGHTS: dict[str, Right | None] = {
    "health": None,
    "openapi_document": None,
    "pane_page": None,
    "pane_asset": None,
    "get_caller": Right.READ,
    "create_chat_completion": Right.INFERENCE,
    "create_chat_completion_for_deployment": Right.INFERENCE,
    "list_chat_completions": Right.READ,
    "retrieve_chat_completion": Right.READ,
    "list_chat_completion_messages": Right.READ,
    "update_chat_completion": Right.ACTION,
    "delete_chat_completion": Right.ACTION,
}
"""The rights of the hosted feature, stated here independently of the code; these routes must answer
200 to a caller holding the right. Routes added elsewhere are checked against their declared right."""
CALLERS = ["no key", "wrong key", "inference", "read", "action", "full"]


def routes(host: RunningHost) -> list[tuple[str, str, str, str | None]]:
    """(function name, method, path template, right) for every registered HTTP function."""
    document = httpx.get(f"{host.url}/api/openapi.json").json()
    found = [
        (operation["operationId"], method.upper(), path, operation.get("x-distillery-right"))
        for path, operations in document["paths"].items()
        for method, operation in operations.items()
    ]
    functions = httpx.get(f"{host.url}/admin/functions").json()
    http_functions = {f["name"] for f in functions if f["trigger"] == "httpTrigger"}
    assert {name for name, *_ in found} == http_functions, "the OpenAPI document must list every HTTP function"
    return found


@pytest.mark.timeout(300)  # every route for six callers, some starting real jobs
def test_permission_matrix(matrix_host: tuple[RunningHost, dict[str, str]], fake_upstream: FakeUpstream) -> None:
    host, keys = matrix_host
    shared_id = store_one(host)
    headers_for = {
        "no key": {},
        "wrong key": {"api-key": "not-a-key"},
        **{name: {"api-key": keys[name]} for name in ("inference", "read", "action", "full")},
    }
    rights_for = {caller: MATRIX_RIGHTS.get(caller, set()) for caller in CALLERS} | {"full": set(Right)}
    mismatches = []
    with httpx.Client(base_url=host.url, timeout=60) as http:
        for name, method, path, right in routes(host):
            base_name = name.removesuffix("_v1")
            if base_name in KNOWN_RIGHTS:
                known = KNOWN_RIGHTS[base_name]
                if right != (known.value if known else None):
                    mismatches.append(f"{method} {path} declares {right}, expected {known}")
                right = known.value if known else None
            for caller in CALLERS:
                if right is None:
                    expected: int | None = 200
                elif caller in ("no key", "wrong key"):
                    expected = 401
                elif Right(right) not in rights_for[caller]:
                    expected = 403
                else:
                    expected = 200 if base_name in KNOWN_RIGHTS else None
                completion_id = store_one(host) if method == "DELETE" and expected == 200 else shared_id
                url = re.sub(r"\{completion_id\}", completion_id, path)
                url = re.sub(r"\{deployment\}", "gpt-4o", url)
                url = url.replace("/pane/{name}", "/pane/app.js")
                url = re.sub(r"\{[^}]+\}", "unknown", url)
                body = KNOWN_BODIES.get(base_name, {}) if method in ("POST", "PUT", "PATCH") else None
                response = http.request(
                    method, url, json=body, headers=headers_for[caller], params={"api-version": "2024-10-21"}
                )
                status = response.status_code
                ok = status == expected if expected is not None else status not in (401, 403) and status < 500
                if status in (401, 403):
                    ok = ok and response.json()["error"]["type"] in ("authentication_error", "permission_error")
                if not ok:
                    mismatches.append(f"{caller:>9} {method} {path}: {status} (expected {expected or 'allowed'})")
    assert not mismatches, "\n".join(mismatches)
    log = host.log()
    assert not [name for name in MATRIX_RIGHTS if keys[name] in log], "a service key reached the log"


@pytest.mark.parametrize(
    "forged",
    [
        principal("StoredCompletions.Administrator", "Inference.User", name="mallory"),
        "%%% not base64 %%%",
        base64.b64encode(b"{not json").decode(),
    ],
)
def test_forged_principal_is_ignored_when_not_trusted(
    matrix_host: tuple[RunningHost, dict[str, str]], fake_upstream: FakeUpstream, forged: str
) -> None:
    host, keys = matrix_host
    forged_headers = {"x-ms-client-principal": forged, "x-ms-client-principal-name": "mallory"}
    for method, path, body in [
        ("GET", "/openai/v1/chat/completions", None),
        ("POST", "/openai/v1/chat/completions", {"model": "gpt-4o", "messages": MESSAGES}),
        ("DELETE", "/openai/v1/chat/completions/chatcmpl-" + "0" * 32, None),
    ]:
        response = httpx.request(method, host.url + path, json=body, headers=forged_headers)
        assert response.status_code == 401, (method, path, response.text)
    # With a key, the key alone decides: the read key stays read-only.
    with_key = httpx.get(
        f"{host.url}/openai/v1/chat/completions", headers={**forged_headers, "api-key": keys["inference"]}
    )
    assert with_key.status_code == 403


def test_body_over_the_limit_is_413_before_the_upstream(
    matrix_host: tuple[RunningHost, dict[str, str]], fake_upstream: FakeUpstream
) -> None:
    host, _ = matrix_host
    big = {"model": "gpt-4o", "messages": [{"role": "user", "content": "x" * MAX_BODY}]}
    with host.http() as http:
        declared = http.post("/openai/v1/chat/completions", json=big)
        assert declared.status_code == 413 and declared.json()["error"]["code"] == "request_too_large"

        def chunks() -> Iterator[bytes]:  # no Content-Length: the limit applies while reading
            data = json.dumps(big).encode()
            for start in range(0, len(data), 1000):
                yield data[start : start + 1000]

        streamed = http.post("/openai/v1/chat/completions", content=chunks(), headers=JSON_TYPE)
        assert streamed.status_code == 413
        deep = http.post(
            "/openai/v1/chat/completions",
            content=b'{"messages":' + b"[" * 100 + b"]" * 100 + b"}",
            headers=JSON_TYPE,
        )
        assert deep.status_code == 400 and deep.json()["error"]["code"] == "invalid_json"
    assert fake_upstream.requests == []


@pytest.fixture(scope="module")
def scoped_host(
    azurite: Azurite, upstream: FakeUpstream, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[RunningHost, dict[str, str]]]:
    """A host behind (simulated) App Service Authentication, with owner scoping on."""
    rights = {"alice": {Right.INFERENCE, Right.READ, Right.ACTION}, "bob": {Right.INFERENCE, Right.READ, Right.ACTION}}
    running, keys = start_keyed_host(
        azurite.connection_string,
        tmp_path_factory.mktemp("scoped"),
        rights,
        OPENAI_BASE_URL=upstream.base_url,
        DISTILLERY_TRUST_APP_SERVICE_AUTH="true",
        DISTILLERY_OWNER_SCOPING="true",
    )
    yield running, keys
    running.stop()


def test_owner_scoping_hides_other_owners_completions(
    scoped_host: tuple[RunningHost, dict[str, str]], fake_upstream: FakeUpstream, tag: str
) -> None:
    host, keys = scoped_host
    alices = store_one(host, keys["alice"], tag=tag)
    bobs = store_one(host, keys["bob"], tag=tag)
    with host.http(keys["bob"]) as bob:
        listed = bob.get("/openai/v1/chat/completions", params={"metadata[tag]": tag}).json()
        assert [c["id"] for c in listed["data"]] == [bobs]
        assert [c["id"] for c in bob.get("/openai/v1/chat/completions").json()["data"]] == [bobs]
        for method, path, body in [
            ("GET", f"/openai/v1/chat/completions/{alices}", None),
            ("GET", f"/openai/chat/completions/{alices}/messages", None),
            ("POST", f"/openai/v1/chat/completions/{alices}", {"metadata": {"tag": "stolen"}}),
            ("DELETE", f"/openai/chat/completions/{alices}", None),
        ]:
            response = bob.request(method, path, json=body)
            assert response.status_code == 404, (method, path, response.text)
            assert response.json()["error"]["message"] == f"No chat completion found with id '{alices}'."
    with host.http(keys["alice"]) as alice:
        assert alice.get(f"/openai/v1/chat/completions/{alices}").json()["metadata"] == {"tag": tag}
    with host.http() as admin:  # the default key holds stored-completions/all-owners
        everyone = admin.get("/openai/v1/chat/completions", params={"metadata[tag]": tag}).json()
        assert [c["id"] for c in everyone["data"]] == [alices, bobs]


def test_trusted_principal_roles_map_to_rights(
    scoped_host: tuple[RunningHost, dict[str, str]], fake_upstream: FakeUpstream, tag: str
) -> None:
    host, keys = scoped_host
    store_one(host, keys["alice"], tag=tag)

    def as_principal(name: str, *roles: str) -> httpx.Client:
        # App Service Authentication passes the caller's Entra token on in Authorization: not a key.
        headers = {"x-ms-client-principal": principal(*roles, name=name), "authorization": "Bearer eyJ.entra.token"}
        return httpx.Client(base_url=host.url, headers=headers, timeout=30)

    chat = {"model": "gpt-4o", "store": True, "metadata": {"tag": tag}, "messages": MESSAGES}
    with as_principal("carol@contoso.com", "Inference.User", "StoredCompletions.Contributor") as carol:
        created = carol.post("/openai/v1/chat/completions", json=chat)
        assert created.status_code == 200 and created.headers["x-distillery-stored"] == "true"
        carols = created.json()["id"]
        wait_listed(host.openai_client(), [carols])
        listed = carol.get("/openai/v1/chat/completions", params={"metadata[tag]": tag}).json()
        assert [c["id"] for c in listed["data"]] == [carols]  # owner scoping applies to principals too
        assert (
            carol.post(f"/openai/v1/chat/completions/{carols}", json={"metadata": {"tag": tag, "a": "b"}}).status_code
            == 200
        )
    with as_principal("dave@contoso.com", "StoredCompletions.Reader") as reader:
        assert reader.get("/openai/v1/chat/completions").status_code == 200
        assert reader.post("/openai/v1/chat/completions", json=chat).status_code == 403
        assert reader.delete(f"/openai/v1/chat/completions/{carols}").status_code == 403
    with as_principal("erin@contoso.com", "StoredCompletions.Administrator") as admin:
        listed = admin.get("/openai/v1/chat/completions", params={"metadata[tag]": tag}).json()
        assert len(listed["data"]) == 2
    with as_principal("frank@contoso.com") as nobody:
        assert nobody.get("/openai/v1/chat/completions").status_code == 403
    for bad in ("%%%", base64.b64encode(b"[").decode(), base64.b64encode(b'{"claims": 5}').decode()):
        response = httpx.get(f"{host.url}/openai/v1/chat/completions", headers={"x-ms-client-principal": bad})
        assert response.status_code == 401 and response.json()["error"]["code"] == "invalid_principal"


def test_unreachable_managed_identity_stops_start_up(azurite: Azurite, tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match=r"managed identity \(AZURE_CLIENT_ID=11111111-") as failed:
        start_host(
            azurite.connection_string,
            tmp_path,
            DISTILLERY_CREDENTIAL="managed_identity",
            AZURE_CLIENT_ID="11111111-1111-1111-1111-111111111111",
            AZURE_OPENAI_ENDPOINT="https://example.openai.azure.com",
            IDENTITY_ENDPOINT=f"http://127.0.0.1:{free_port()}/msi/token",
            IDENTITY_HEADER="local-test",
        )
    assert "cognitiveservices" in str(failed.value)


def test_a_principal_named_like_a_key_or_reusing_a_upn_is_another_owner(
    scoped_host: tuple[RunningHost, dict[str, str]], fake_upstream: FakeUpstream, tag: str
) -> None:
    host, keys = scoped_host
    keys_own = store_one(host, keys["alice"], tag=tag)

    def as_principal(oid: str) -> httpx.Client:
        header = principal("Inference.User", "StoredCompletions.Contributor", name="alice", oid=oid)
        return httpx.Client(base_url=host.url, headers={"x-ms-client-principal": header}, timeout=30)

    chat = {"model": "gpt-4o", "store": True, "metadata": {"tag": tag}, "messages": MESSAGES}
    with as_principal("00000000-0000-0000-0000-00000000a11c") as named_like_the_key:
        assert named_like_the_key.get("/openai/v1/chat/completions", params={"metadata[tag]": tag}).json()["data"] == []
        assert named_like_the_key.get(f"/openai/v1/chat/completions/{keys_own}").status_code == 404
        principals_own = named_like_the_key.post("/openai/v1/chat/completions", json=chat).json()["id"]
    with as_principal("00000000-0000-0000-0000-0000000b0b00") as reusing_the_upn:
        assert reusing_the_upn.get("/openai/v1/chat/completions", params={"metadata[tag]": tag}).json()["data"] == []
        assert reusing_the_upn.get(f"/openai/v1/chat/completions/{principals_own}").status_code == 404
    with host.http(keys["alice"]) as key:
        listed = key.get("/openai/v1/chat/completions", params={"metadata[tag]": tag}).json()["data"]
        assert [c["id"] for c in listed] == [keys_own]


def test_reports_show_a_scoped_caller_no_other_owners_models_metadata_or_identities(
    scoped_host: tuple[RunningHost, dict[str, str]], fake_upstream: FakeUpstream, tag: str
) -> None:
    host, keys = scoped_host
    secret = f"{tag}-alices-project"
    with host.http(keys["alice"]) as alice:
        stored = alice.post(
            "/openai/v1/chat/completions",
            json={"model": "alices-model", "store": True, "metadata": {"project": secret}, "messages": MESSAGES},
        )
        assert stored.status_code == 200
    wait_listed(host.openai_client(), [stored.json()["id"]])
    with host.http() as admin:  # all-owners: the whole report (built now, so it holds alice's completion)
        for timer in ("quota_report", "permission_report"):
            assert admin.post(f"/admin/functions/{timer}", json={"input": ""}).status_code == 202
        report = admin.get("/api/quota").json()
        assert secret in {value["value"] for value in report["by_metadata"]["project"]}
        assert report["withheld"] == []
        assert "alice" in {identity["name"] for identity in admin.get("/api/health/permissions").json()["identities"]}
    with host.http(keys["bob"]) as bob:
        quota = bob.get("/api/quota")
        assert quota.status_code == 200
        view = quota.json()
        assert (view["by_model"], view["by_metadata"], view["withheld"]) == (
            [],
            {},
            ["by_model", "by_metadata", "cost"],
        )
        assert view["used_bytes"] == report["used_bytes"] and view["level"] == report["level"]
        assert secret not in quota.text and "alices-model" not in quota.text
        permissions = bob.get("/api/health/permissions")
        assert permissions.status_code == 403 and permissions.json()["error"]["code"] == "all_owners_required"
        assert "alice" not in permissions.text


def test_owner_scoping_covers_scores(
    scoped_host: tuple[RunningHost, dict[str, str]], fake_upstream: FakeUpstream, tag: str
) -> None:
    host, keys = scoped_host
    alices = store_one(host, keys["alice"], tag=tag)
    bobs = store_one(host, keys["bob"], tag=tag)
    with host.http(keys["alice"]) as alice:
        assert alice.post(f"/api/completions/{alices}/scores", json={"name": "good", "value": True}).status_code == 200
    with host.http(keys["bob"]) as bob:
        assert bob.post(f"/api/completions/{bobs}/scores", json={"name": "good", "value": True}).json()["author"] == (
            "key:bob"
        )
        for method, path, body in [
            ("GET", f"/api/completions/{alices}/scores", None),
            ("POST", f"/api/completions/{alices}/scores", {"name": "good", "value": False}),
            ("DELETE", f"/api/completions/{alices}/scores/good", None),
        ]:
            assert bob.request(method, path, json=body).status_code == 404, (method, path)
        batch = bob.post("/api/scores", json={"scores": [{"completion_id": alices, "name": "good", "value": False}]})
        assert batch.json()["data"][0]["error"]["code"] == "not_found"
        assert bob.get("/api/completions/count", params={"scores.good": "true"}).json()["count"] == 1
        scored = bob.get("/openai/v1/chat/completions", params={"metadata[tag]": tag, "scores.good": "true"}).json()
        assert [c["id"] for c in scored["data"]] == [bobs]
    with host.http(keys["alice"]) as alice:
        assert alice.get(f"/api/completions/{alices}/scores").json()["data"][0]["value"] is True


def test_relabel_needs_the_inference_right_too(
    matrix_host: tuple[RunningHost, dict[str, str]], fake_upstream: FakeUpstream
) -> None:
    """A relabel job spends model calls: `stored-completions/action` alone may not start one."""
    host, keys = matrix_host
    body = {"ids": [store_one(host)], "deployment": "gpt-4o", "max_total_tokens": 100}
    refused = httpx.post(host.url + "/api/relabels", json=body, headers={"api-key": keys["action"]})
    assert refused.status_code == 403 and refused.json()["error"]["type"] == "permission_error"
    queued = httpx.post(host.url + "/api/relabels", json=body, headers={"api-key": keys["full"]})
    assert queued.status_code == 202, queued.text


def test_owner_scoping_covers_responses_and_their_chains(
    scoped_host: tuple[RunningHost, dict[str, str]], fake_upstream: FakeUpstream, tag: str
) -> None:
    host, keys = scoped_host
    with host.http(keys["alice"]) as alice, host.http(keys["bob"]) as bob:
        kept = alice.post("/openai/v1/responses", json={"model": "gpt-4o", "input": "secret", "metadata": {"tag": tag}})
        assert kept.status_code == 200, kept.text
        alices = kept.json()["id"]
        for method, path in [
            ("GET", f"/openai/v1/responses/{alices}"),
            ("GET", f"/openai/responses/{alices}/input_items"),
            ("DELETE", f"/openai/v1/responses/{alices}"),
        ]:
            response = bob.request(method, path)
            assert response.status_code == 404, (method, path, response.text)
            assert response.json()["error"]["message"] == f"No response found with id '{alices}'."
        sent = len(fake_upstream.requests)
        chained = bob.post(
            "/openai/v1/responses", json={"model": "gpt-4o", "input": "and?", "previous_response_id": alices}
        )
        assert chained.status_code == 404 and chained.json()["error"]["param"] == "previous_response_id"
        assert len(fake_upstream.requests) == sent  # refused before anything (of alice's) went upstream
        assert alice.get(f"/openai/v1/responses/{alices}").json()["output"][0]["content"][0]["text"] == "fake: secret"
