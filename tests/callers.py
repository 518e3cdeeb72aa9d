"""Identities for access tests: service keys with their `DISTILLERY_API_KEYS` value, App Service
Authentication principal headers, and a host configured with both."""

from __future__ import annotations

import base64
import json
import secrets
import uuid
from pathlib import Path

from shared.platform.access import Right, key_digest
from tests.conftest import RunningHost, start_host

ROLE_TYPE = "http://schemas.microsoft.com/ws/2008/06/identity/claims/role"
OBJECT_ID_TYPE = "http://schemas.microsoft.com/identity/claims/objectidentifier"
TENANT_TYPE = "http://schemas.microsoft.com/identity/claims/tenantid"
TENANT_ID = "72f988bf-86f1-41af-91ab-2d7cd011db47"


def service_keys(rights: dict[str, set[Right]]) -> tuple[dict[str, str], str]:
    """Fresh keys for the named callers, and the `DISTILLERY_API_KEYS` value that grants them."""
    keys = {name: secrets.token_urlsafe(24) for name in rights}
    setting = [
        {"name": name, "sha256": key_digest(keys[name]), "rights": sorted(right.value for right in granted)}
        for name, granted in rights.items()
    ]
    return keys, json.dumps(setting)


def principal(
    *roles: str,
    name: str | None = "alice@contoso.com",
    role_typ: str = ROLE_TYPE,
    oid: str | None = None,
    tid: str | None = TENANT_ID,
) -> str:
    """An `X-MS-CLIENT-PRINCIPAL` header value as App Service Authentication builds it.

    The object id defaults to one derived from the name, so one name is one person unless a test
    says otherwise (`oid=`, e.g. a UPN reused by someone else); `oid=""` leaves the claim out.
    """
    claims = [{"typ": role_typ, "val": role} for role in roles]
    if name is not None:
        claims.append({"typ": "name", "val": name})
    object_id = str(uuid.uuid5(uuid.NAMESPACE_URL, f"principal:{name}")) if oid is None else oid
    if object_id:
        claims.append({"typ": OBJECT_ID_TYPE, "val": object_id})
    if tid:
        claims.append({"typ": TENANT_TYPE, "val": tid})
    document = {"auth_typ": "aad", "claims": claims, "name_typ": "name", "role_typ": role_typ}
    return base64.b64encode(json.dumps(document).encode()).decode()


def start_keyed_host(
    storage_connection: str, log_dir: Path, rights: dict[str, set[Right]], **settings: str
) -> tuple[RunningHost, dict[str, str]]:
    """A host granting `rights` to fresh keys (the default key keeps full rights), and those keys."""
    keys, setting = service_keys(rights)
    host = start_host(storage_connection, log_dir, DISTILLERY_API_KEYS=setting, **settings)
    return host, keys
