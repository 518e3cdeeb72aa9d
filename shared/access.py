"""Who is calling and what they may do: the three rights of the hosted feature, mapped to callers."""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping
from enum import StrEnum

from pydantic import BaseModel, SecretStr

from shared.errors import AuthenticationFailed, PermissionDenied


class Right(StrEnum):
    INFERENCE = "inference"
    """Call chat completions, with or without `store`."""
    READ = "stored-completions/read"
    """List and read stored completions, datasets and reports."""
    ACTION = "stored-completions/action"
    """Change or delete stored completions; create and delete datasets; purge."""


ALL_RIGHTS = frozenset(Right)


class Caller(BaseModel):
    """An authenticated identity; `name` is recorded as the owner of what it stores."""

    name: str
    rights: frozenset[Right]

    def require(self, right: Right) -> None:
        if right not in self.rights:
            raise PermissionDenied(f"The caller '{self.name}' lacks the '{right.value}' right for this operation.")


class Identity(BaseModel):
    """A configured caller identity and its rights, as the permission report lists it."""

    name: str
    kind: str
    """How it authenticates: `api_key` (and, as they are added, other kinds such as Entra roles)."""
    rights: frozenset[Right]


def presented_key(headers: Mapping[str, str]) -> str | None:
    """The key as the SDKs send it: `api-key` (AzureOpenAI) or `Authorization: Bearer` (OpenAI)."""
    key = headers.get("api-key")
    if key:
        return key.strip()
    scheme, _, token = (headers.get("authorization") or "").partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip()
    return None


class Authenticator:
    """Turns request headers into a `Caller`, comparing only key hashes in constant time."""

    def __init__(self, *, api_key: SecretStr | None) -> None:
        self._full_rights_digest = _digest(api_key.get_secret_value()) if api_key else None

    def identities(self) -> list[Identity]:
        """Every identity this authenticator accepts, with its rights (never its secret)."""
        if self._full_rights_digest is None:
            return []
        return [Identity(name="default", kind="api_key", rights=ALL_RIGHTS)]

    def authenticate(self, headers: Mapping[str, str]) -> Caller:
        key = presented_key(headers)
        if key is None:
            raise AuthenticationFailed(
                "Missing API key: send it in the 'api-key' header or as 'Authorization: Bearer <key>'.",
                code="missing_api_key",
            )
        if self._full_rights_digest is not None and hmac.compare_digest(_digest(key), self._full_rights_digest):
            return Caller(name="default", rights=ALL_RIGHTS)
        raise AuthenticationFailed("Incorrect API key provided.")


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()
