"""Callers from keys and App Service Authentication principals, and the key settings' validation."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest
from pydantic import SecretStr

from shared.platform.access import ALL_RIGHTS, Authenticator, Right, ServiceKey, key_digest, stable_owner
from shared.platform.errors import AuthenticationFailed, ConfigurationError, PermissionDenied
from shared.platform.settings import load_settings
from shared.store.stored_completion import StoredCompletion
from tests.callers import TENANT_ID, principal

READER = ServiceKey(name="reader", sha256=key_digest("reader-key"), rights=frozenset({Right.READ}))
WRITER = ServiceKey(name="writer", sha256=key_digest("writer-key").upper(), rights=frozenset({Right.ACTION}))


def authenticator(**options: Any) -> Authenticator:
    return Authenticator(api_key=SecretStr("full-key"), service_keys=[READER, WRITER], **options)


def test_keys_map_to_their_rights() -> None:
    auth = authenticator()
    assert auth.authenticate({"api-key": "full-key"}).rights == ALL_RIGHTS
    assert auth.authenticate({"api-key": "full-key"}).name == "default"
    reader = auth.authenticate({"authorization": "Bearer reader-key"})
    assert (reader.name, reader.rights) == ("reader", {Right.READ})
    assert auth.authenticate({"api-key": "writer-key"}).rights == {Right.ACTION}  # digests compare case-blind
    with pytest.raises(PermissionDenied):
        reader.require(Right.ACTION)


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"api-key": ""},
        {"api-key": "  "},
        {"authorization": "Bearer  "},
        {"api-key": "wrong"},
        {"authorization": "Basic reader-key"},
        {"api-key": key_digest("reader-key")},
    ],
)
def test_missing_or_wrong_keys_are_refused(headers: dict[str, str]) -> None:
    with pytest.raises(AuthenticationFailed):
        authenticator().authenticate(headers)


def test_identities_list_keys_and_trusted_roles() -> None:
    assert [(i.name, i.kind) for i in authenticator().identities()] == [
        ("reader", "key"),
        ("writer", "key"),
        ("default", "key"),
    ]
    trusted = {i.name: i.rights for i in authenticator(trust_app_service_auth=True).identities() if i.kind != "key"}
    assert trusted["StoredCompletions.Contributor"] == [Right.ACTION, Right.READ]
    assert trusted["Inference.User"] == [Right.INFERENCE]


@pytest.mark.parametrize(
    "header",
    [
        principal("StoredCompletions.Administrator", "Inference.User"),
        "not base64!",
        base64.b64encode(b"not json").decode(),
        base64.b64encode(b"[1, 2]").decode(),
        base64.b64encode(b"\xff\xfe").decode(),
        "é" * 10,
    ],
)
def test_principal_header_is_ignored_unless_trusted(header: str) -> None:
    with pytest.raises(AuthenticationFailed):
        authenticator().authenticate({"x-ms-client-principal": header})


def test_trusted_principal_roles_map_to_rights() -> None:
    auth = authenticator(trust_app_service_auth=True)
    contributor = auth.authenticate({"x-ms-client-principal": principal("StoredCompletions.Contributor")})
    assert (contributor.name, contributor.rights) == ("alice@contoso.com", {Right.READ, Right.ACTION})
    both = auth.authenticate(
        {"x-ms-client-principal": principal("Inference.User", "StoredCompletions.Reader", role_typ="roles")}
    )
    assert both.rights == {Right.INFERENCE, Right.READ}
    nobody = auth.authenticate({"x-ms-client-principal": principal("Some.Other.Role")})
    assert nobody.rights == frozenset()
    named = auth.authenticate(
        {
            "x-ms-client-principal": principal("Inference.User"),
            "x-ms-client-principal-name": "bob@contoso.com",
            "authorization": "Bearer an-entra-token-not-a-key",
        }
    )
    assert named.name == "bob@contoso.com"


@pytest.mark.parametrize(
    "header",
    [
        "%%%",
        base64.b64encode(b"{").decode(),
        base64.b64encode(json.dumps({"claims": "nope"}).encode()).decode(),
        base64.b64encode(json.dumps({"claims": [{"typ": 1}]}).encode()).decode(),
        base64.b64encode(b"[" * 5000).decode(),
        principal("StoredCompletions.Reader", name=None, oid=""),
        "A" * 20_000,
    ],
)
def test_malformed_trusted_principal_is_401(header: str) -> None:
    with pytest.raises(AuthenticationFailed):
        authenticator(trust_app_service_auth=True).authenticate({"x-ms-client-principal": header})


def test_no_credentials_behind_app_service_auth_asks_to_sign_in() -> None:
    with pytest.raises(AuthenticationFailed) as trusted:
        authenticator(trust_app_service_auth=True).authenticate({})
    assert trusted.value.code == "sign_in_required" and "/.auth/login/aad" in trusted.value.message
    with pytest.raises(AuthenticationFailed) as keyed:
        authenticator().authenticate({})
    assert keyed.value.code == "missing_api_key"


def test_owner_scope_applies_without_all_owners() -> None:
    auth = authenticator(owner_scoping=True, trust_app_service_auth=True)
    assert auth.authenticate({"api-key": "reader-key"}).scope == "key:reader"
    assert auth.authenticate({"api-key": "full-key"}).scope is None
    admin = auth.authenticate({"x-ms-client-principal": principal("StoredCompletions.Administrator")})
    assert admin.scope is None
    assert authenticator().authenticate({"api-key": "reader-key"}).scope is None


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ("[not json", "must be a JSON list"),
        ('{"name": "a"}', "valid list"),
        ('[{"name": "a", "sha256": "abc", "rights": ["inference"]}]', "sha256"),
        (f'[{{"name": "a", "sha256": "{"0" * 64}", "rights": ["admin"]}}]', "rights"),
        (f'[{{"name": "default", "sha256": "{"0" * 64}", "rights": []}}]', "reserved"),
        (f'[{{"name": "a b", "sha256": "{"0" * 64}", "rights": []}}]', "name"),
        (
            f'[{{"name": "a", "sha256": "{"0" * 64}", "rights": []}}, {{"name": "b", "sha256": "{"0" * 64}", "rights": []}}]',
            "same sha256",
        ),
        (f'[{{"name": "a", "sha256": "{key_digest("")}", "rights": ["inference"]}}]', "empty string"),
        (f'[{{"name": "a", "sha256": "{key_digest("").upper()}", "rights": []}}]', "empty string"),
    ],
)
def test_bad_key_settings_name_the_setting(monkeypatch: pytest.MonkeyPatch, value: str, problem: str) -> None:
    monkeypatch.setenv("AzureWebJobsStorage", "UseDevelopmentStorage=true")
    monkeypatch.setenv("DISTILLERY_API_KEYS", value)
    with pytest.raises(ConfigurationError, match="DISTILLERY_API_KEYS") as raised:
        load_settings()
    assert problem in str(raised.value)


def test_an_empty_key_never_matches(monkeypatch: pytest.MonkeyPatch) -> None:
    """Even if a digest of the empty string got past the settings, an empty presented key is no key."""
    empty = ServiceKey(name="unset", sha256=key_digest(""), rights=frozenset({Right.READ}))
    with pytest.raises(ConfigurationError, match="empty key"):
        Authenticator(api_key=None, service_keys=[empty])
    with pytest.raises(ConfigurationError, match="empty key"):
        Authenticator(api_key=SecretStr("  "))
    for headers in ({"api-key": ""}, {"api-key": " "}, {"authorization": "Bearer "}, {"authorization": "Bearer"}):
        with pytest.raises(AuthenticationFailed, match="Missing API key"):
            authenticator().authenticate(headers)
    monkeypatch.setenv("AzureWebJobsStorage", "UseDevelopmentStorage=true")
    monkeypatch.setenv("DISTILLERY_API_KEY", "   ")
    with pytest.raises(ConfigurationError, match=r"DISTILLERY_API_KEY: .*blank"):
        load_settings()


def test_a_key_may_be_limited_to_some_deployments() -> None:
    limited = ServiceKey(
        name="batch", sha256=key_digest("batch-key"), rights=frozenset({Right.INFERENCE}), deployments={"gpt-4o"}
    )
    auth = Authenticator(api_key=SecretStr("full-key"), service_keys=[limited])
    batch = auth.authenticate({"api-key": "batch-key"})
    batch.require_deployment("gpt-4o")
    with pytest.raises(PermissionDenied) as refused:
        batch.require_deployment("gpt-4o-mini")
    assert refused.value.code == "deployment_not_allowed"
    auth.authenticate({"api-key": "full-key"}).require_deployment("anything")


def test_owners_are_stable_ids_never_display_names() -> None:
    """A principal named like a key is not that key; a reused UPN is not the person who had it before."""
    auth = authenticator(owner_scoping=True, trust_app_service_auth=True)
    key = auth.authenticate({"api-key": "reader-key"})
    assert (key.name, key.owner, key.scope) == ("reader", "key:reader", "key:reader")
    contributor = principal("StoredCompletions.Contributor", name="reader", oid="0000aaaa-0000-0000-0000-000000000001")
    named_like_the_key = auth.authenticate({"x-ms-client-principal": contributor})
    assert named_like_the_key.name == "reader"
    assert named_like_the_key.owner == f"entra:{TENANT_ID}/0000aaaa-0000-0000-0000-000000000001"
    assert named_like_the_key.scope == named_like_the_key.owner != key.scope
    successor = principal("StoredCompletions.Contributor", name="reader", oid="0000aaaa-0000-0000-0000-000000000002")
    assert auth.authenticate({"x-ms-client-principal": successor}).scope != named_like_the_key.scope
    for missing in (principal("Inference.User", oid=""), principal("Inference.User", tid=None)):
        with pytest.raises(AuthenticationFailed, match="tenant id and object id"):
            auth.authenticate({"x-ms-client-principal": missing})
    with pytest.raises(AuthenticationFailed):
        auth.authenticate({"x-ms-client-principal": principal("Inference.User", oid="a/../b")})


@pytest.mark.parametrize(
    ("recorded", "read_as"),
    [("alice", "key:alice"), ("key:alice", "key:alice"), ("entra:t/o", "entra:t/o"), (None, None), ("", "")],
)
def test_owners_recorded_before_stable_ids_read_as_keys(recorded: str | None, read_as: str | None) -> None:
    assert stable_owner(recorded) == read_as
    assert (
        StoredCompletion(
            id="chatcmpl-x", created=0, deployment="m", model="m", owner=recorded, request={}, response={}
        ).owner
        == read_as
    )
