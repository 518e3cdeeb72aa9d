"""Who is calling and what they may do: the rights of the hosted feature, mapped to callers.

Two kinds of identity: service keys (only their SHA-256 digests are configured) and, behind App
Service Authentication, Entra ID principals whose app roles map to rights.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import re
from collections.abc import Mapping, Sequence
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, SecretStr, StringConstraints, ValidationError

from shared.platform.errors import AuthenticationFailed, ConfigurationError, PermissionDenied


class Right(StrEnum):
    INFERENCE = "inference"
    """Call chat completions, with or without `store`."""
    READ = "stored-completions/read"
    """List and read stored completions, datasets and reports."""
    ACTION = "stored-completions/action"
    """Change or delete stored completions; create and delete datasets; purge."""
    ALL_OWNERS = "stored-completions/all-owners"
    """With owner scoping on: read and act on every caller's completions, not only one's own."""


ALL_RIGHTS = frozenset(Right)

DEFAULT_KEY_NAME = "default"
"""The caller name of `DISTILLERY_API_KEY`, the local full-rights key."""

PRINCIPAL_HEADER = "x-ms-client-principal"
PRINCIPAL_NAME_HEADER = "x-ms-client-principal-name"

ROLE_RIGHTS: dict[str, frozenset[Right]] = {
    "Inference.User": frozenset({Right.INFERENCE}),
    "StoredCompletions.Reader": frozenset({Right.READ}),
    "StoredCompletions.Contributor": frozenset({Right.READ, Right.ACTION}),
    "StoredCompletions.Administrator": frozenset({Right.READ, Right.ACTION, Right.ALL_OWNERS}),
}
"""Entra app role value -> rights. Define these values as app roles on the app registration."""

_ROLE_CLAIM_TYPES = frozenset({"roles", "http://schemas.microsoft.com/ws/2008/06/identity/claims/role"})
_NAME_CLAIM_TYPES = (
    "name",
    "preferred_username",
    "http://schemas.xmlsoap.org/ws/2005/05/identity/claims/name",
    "http://schemas.microsoft.com/identity/claims/objectidentifier",
    "oid",
    "appid",
    "azp",
)
"""Where a caller name is looked for when the principal-name header is absent, most readable first."""
_MAX_PRINCIPAL_CHARS = 16_384


KEY_OWNER_PREFIX = "key:"
ENTRA_OWNER_PREFIX = "entra:"
_TENANT_CLAIM_TYPES = ("http://schemas.microsoft.com/identity/claims/tenantid", "tid")
_OBJECT_ID_CLAIM_TYPES = ("http://schemas.microsoft.com/identity/claims/objectidentifier", "oid")
_DIRECTORY_ID = re.compile(r"[0-9A-Za-z-]{1,64}")


def key_owner(name: str) -> str:
    """The owner id of what a service key stores: `key:<name>`."""
    return KEY_OWNER_PREFIX + name


def entra_owner(tenant_id: str, object_id: str) -> str:
    """The owner id of what an Entra principal stores: `entra:<tenant id>/<object id>`, never its name.

    Display names and UPNs change and are reused; the object id within its tenant does not.
    """
    return f"{ENTRA_OWNER_PREFIX}{tenant_id.lower()}/{object_id.lower()}"


def stable_owner(stored: str | None) -> str | None:
    """An owner as recorded, read as a stable owner id: the lazy migration of rows written before them.

    Owners used to be display strings: a key's name, or an Entra principal's name. An unprefixed
    owner is read as the key of that name (`alice` -> `key:alice`), so a key keeps its data. An Entra
    principal's old rows become no Entra identity's (no name is trusted to prove who wrote them):
    only `stored-completions/all-owners` callers reach them, and a key only if it is named exactly so.
    """
    if not stored or stored.startswith((KEY_OWNER_PREFIX, ENTRA_OWNER_PREFIX)):
        return stored
    return key_owner(stored)


def same_owner(recorded: str | None, scope: str | None) -> bool:
    """Whether a recorded owner is this owner, either written as a stable id or before them."""
    return stable_owner(recorded) == stable_owner(scope)


def legacy_owner(owner: str) -> str | None:
    """The display-string owner that rows written before stable ids hold for this owner, if any."""
    return owner.removeprefix(KEY_OWNER_PREFIX) if owner.startswith(KEY_OWNER_PREFIX) else None


OwnerId = Annotated[str | None, BeforeValidator(stable_owner)]
"""An owner field of a stored record: validated through `stable_owner`, so old records read migrated."""


class ServiceKey(BaseModel):
    """One entry of `DISTILLERY_API_KEYS`: a named key known only by the SHA-256 hex digest of its text."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: Annotated[str, StringConstraints(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9._@-]+$")]
    """Recorded as the owner of what the key stores."""
    sha256: Annotated[str, StringConstraints(to_lower=True, pattern=r"^[0-9a-fA-F]{64}$")]
    rights: frozenset[Right]
    deployments: frozenset[str] | None = None
    """If set, the only deployments (or `model` names) this key may call chat completions on."""


class Identity(BaseModel):
    """A configured identity, as the permission-health report lists it."""

    name: str
    kind: Literal["key", "entra_role"]
    rights: list[Right]


class Caller(BaseModel):
    """An authenticated identity; `owner` is recorded as the owner of what it stores."""

    model_config = ConfigDict(frozen=True)

    name: str
    """For messages and logs only: a key's name, or an Entra principal's display name."""
    owner: str
    """The stable owner id: `key:<name>` or `entra:<tenant id>/<object id>`."""
    rights: frozenset[Right]
    scope: str | None = None
    """The only owner whose completions this caller may see (owner scoping); None: every owner's."""
    deployments: frozenset[str] | None = None
    """The deployments this caller may call (a key's allow-list); None: any."""

    def require(self, right: Right) -> None:
        if right not in self.rights:
            raise PermissionDenied(f"The caller '{self.name}' lacks the '{right.value}' right for this operation.")

    def require_deployment(self, deployment: str) -> None:
        if self.deployments is not None and deployment not in self.deployments:
            raise PermissionDenied(
                f"The caller '{self.name}' may not call this deployment.", param="model", code="deployment_not_allowed"
            )

    def require_calls(self, called: Mapping[str, str], *, needed_by: str) -> None:
        """Work that calls models for the caller (an eval run, online graders) spends inference: it needs
        that right, and the key's allow-list must cover every deployment in `called` (name -> param)."""
        if not called:
            return
        if Right.INFERENCE not in self.rights:
            raise PermissionDenied(
                f"The caller '{self.name}' lacks the '{Right.INFERENCE.value}' right {needed_by} needs: it calls "
                f"{', '.join(sorted(called))}."
            )
        for name, param in called.items():
            if self.deployments is not None and name not in self.deployments:
                raise PermissionDenied(
                    f"The caller '{self.name}' may not call the deployment '{name}' {needed_by} needs.",
                    param=param,
                    code="deployment_not_allowed",
                )


def presented_key(headers: Mapping[str, str]) -> str | None:
    """The key as the SDKs send it: `api-key` (AzureOpenAI) or `Authorization: Bearer` (OpenAI).

    An empty or blank key is no key: it never reaches the digest comparison.
    """
    key = (headers.get("api-key") or "").strip()
    if key:
        return key
    scheme, _, token = (headers.get("authorization") or "").partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip()
    return None


def key_digest(key: str) -> str:
    """The SHA-256 hex digest configured for a key (`printf %s "$KEY" | sha256sum`)."""
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()


EMPTY_KEY_DIGEST = key_digest("")
"""What `printf %s "$KEY" | sha256sum` prints when `$KEY` is unset: refused as a configured digest."""


class Authenticator:
    """Turns request headers into a `Caller`.

    Keys are compared as digests with `hmac.compare_digest` against every configured digest, with no
    early exit, so timing reveals neither which key nor how much of one matched. An App Service
    Authentication principal is read only when `trust_app_service_auth` says the platform put it
    there (it strips client-sent copies); otherwise the header is ignored.
    """

    def __init__(
        self,
        *,
        api_key: SecretStr | None,
        service_keys: Sequence[ServiceKey] = (),
        trust_app_service_auth: bool = False,
        owner_scoping: bool = False,
    ) -> None:
        keys = list(service_keys)
        if any(key.sha256 == EMPTY_KEY_DIGEST for key in keys) or (
            api_key is not None and not api_key.get_secret_value().strip()
        ):
            raise ConfigurationError("An empty key cannot be configured (DISTILLERY_API_KEY, DISTILLERY_API_KEYS).")
        if api_key is not None:
            keys.append(
                ServiceKey(name=DEFAULT_KEY_NAME, sha256=key_digest(api_key.get_secret_value()), rights=ALL_RIGHTS)
            )
        self._keys = [(bytes.fromhex(key.sha256), key) for key in keys]
        self._trust_app_service_auth = trust_app_service_auth
        self._owner_scoping = owner_scoping

    def identities(self) -> list[Identity]:
        """Every identity that can be granted rights: each key, and each mapped app role when trusted."""
        found = [Identity(name=key.name, kind="key", rights=sorted(key.rights)) for _, key in self._keys]
        if self._trust_app_service_auth:
            found += [
                Identity(name=role, kind="entra_role", rights=sorted(rights)) for role, rights in ROLE_RIGHTS.items()
            ]
        return found

    def authenticate(self, headers: Mapping[str, str]) -> Caller:
        principal = headers.get(PRINCIPAL_HEADER) if self._trust_app_service_auth else None
        if principal is not None:
            # Behind App Service Authentication an Entra caller's bearer token is the platform's, not a key.
            name, owner, rights = _principal_identity(principal, headers.get(PRINCIPAL_NAME_HEADER))
            deployments = None
        else:
            key = self._key_identity(headers)
            name, owner, rights, deployments = key.name, key_owner(key.name), key.rights, key.deployments
        scoped = self._owner_scoping and Right.ALL_OWNERS not in rights
        return Caller(name=name, owner=owner, rights=rights, scope=owner if scoped else None, deployments=deployments)

    def _key_identity(self, headers: Mapping[str, str]) -> ServiceKey:
        key = presented_key(headers)
        if key is None and self._trust_app_service_auth:
            # No session and no key behind App Service Authentication: the pane offers its sign-in link.
            raise AuthenticationFailed(
                "Not signed in: sign in at /.auth/login/aad, or send an API key in the 'api-key' header.",
                code="sign_in_required",
            )
        if key is None:
            raise AuthenticationFailed(
                "Missing API key: send it in the 'api-key' header or as 'Authorization: Bearer <key>'.",
                code="missing_api_key",
            )
        presented = hashlib.sha256(key.encode("utf-8", "surrogatepass")).digest()
        match: ServiceKey | None = None
        for digest, candidate in self._keys:
            if hmac.compare_digest(presented, digest):
                match = candidate
        if match is None:
            raise AuthenticationFailed("Incorrect API key provided.")
        return match


def _principal_identity(header: str, name_header: str | None) -> tuple[str, str, frozenset[Right]]:
    """Name, owner id and rights from an `X-MS-CLIENT-PRINCIPAL` header; anything malformed is a 401."""
    principal = _decode_principal(header)
    role_types = _ROLE_CLAIM_TYPES | {principal.role_typ} if principal.role_typ else _ROLE_CLAIM_TYPES
    claims: dict[str, list[str]] = {}
    for claim in principal.claims:
        claims.setdefault(claim.typ, []).append(claim.val)
    rights: set[Right] = set()
    for claim_type in role_types:
        for role in claims.get(claim_type, []):
            rights |= ROLE_RIGHTS.get(role, frozenset())
    name_types = ((principal.name_typ,) if principal.name_typ else ()) + _NAME_CLAIM_TYPES
    names = [name_header] + [claims[t][0] for t in name_types if claims.get(t)]
    name = next((n.strip() for n in names if n and n.strip()), None)
    if name is None:
        raise AuthenticationFailed("The client principal names no user or application.", code="invalid_principal")
    tenant = next((claims[t][0].strip() for t in _TENANT_CLAIM_TYPES if claims.get(t)), "")
    object_id = next((claims[t][0].strip() for t in _OBJECT_ID_CLAIM_TYPES if claims.get(t)), "")
    if not (_DIRECTORY_ID.fullmatch(tenant) and _DIRECTORY_ID.fullmatch(object_id)):
        raise AuthenticationFailed(
            "The client principal has no tenant id and object id (tid, oid) to own what it stores.",
            code="invalid_principal",
        )
    return name, entra_owner(tenant, object_id), frozenset(rights)


class _Claim(BaseModel):
    typ: str
    val: str


class _Principal(BaseModel):
    """The JSON App Service Authentication puts, base64-encoded, in `X-MS-CLIENT-PRINCIPAL`."""

    auth_typ: str | None = None
    claims: list[_Claim] = Field(default_factory=list)
    name_typ: str | None = None
    role_typ: str | None = None


def _decode_principal(header: str) -> _Principal:
    invalid = AuthenticationFailed("The client principal header is not valid.", code="invalid_principal")
    if len(header) > _MAX_PRINCIPAL_CHARS:
        raise invalid
    try:
        text = base64.b64decode(header + "=" * (-len(header) % 4), validate=True)
        document: Any = json.loads(text)
        return _Principal.model_validate(document)
    except (binascii.Error, ValueError, ValidationError, RecursionError):
        raise invalid from None
