"""One error hierarchy: each domain error knows its HTTP status and its OpenAI-shaped body.

Adapters turn a `DistilleryError` into `{"error": {"message", "type", "param", "code"}}`; anything
else is an internal failure that is logged and answered with a generic 500.
"""

from __future__ import annotations

from typing import Any, ClassVar


class ConfigurationError(RuntimeError):
    """The app cannot start: a setting is missing or invalid. The message names the setting."""


class DistilleryError(Exception):
    """A failure the caller should hear about, in the OpenAI error shape."""

    status: ClassVar[int] = 400
    type: ClassVar[str] = "invalid_request_error"
    default_code: ClassVar[str | None] = None
    retryable: ClassVar[bool] = False

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code or self.default_code
        self.headers = dict(headers or {})

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


class InvalidRequest(DistilleryError):
    status = 400
    default_code = "invalid_request"


class AuthenticationFailed(DistilleryError):
    status = 401
    type = "authentication_error"
    default_code = "invalid_api_key"


class PermissionDenied(DistilleryError):
    status = 403
    type = "permission_error"
    default_code = "permission_denied"


class NotFound(DistilleryError):
    status = 404
    default_code = "not_found"


class Conflict(DistilleryError):
    status = 409
    default_code = "conflict"
    retryable = True


class PayloadTooLarge(DistilleryError):
    status = 413
    default_code = "request_too_large"


class UnsupportedMediaType(DistilleryError):
    status = 415
    default_code = "unsupported_media_type"


class DocumentTooLarge(PayloadTooLarge):
    """A completion whose stored document would pass MAX_STORED_DOCUMENT_BYTES."""

    default_code = "document_too_large"


class QuotaExceeded(DistilleryError):
    status = 429
    type = "insufficient_quota"
    default_code = "storage_quota_exceeded"


class StorageUnavailable(DistilleryError):
    """The store could not be reached or refused the operation; safe to retry later."""

    status = 503
    type = "server_error"
    default_code = "storage_unavailable"
    retryable = True


class RedactionUnavailable(StorageUnavailable):
    """Personal data could not be looked for (the detector is unreachable), so nothing is stored: a store
    step that only knows `StorageUnavailable` still keeps nothing."""

    default_code = "redaction_unavailable"


class UpstreamUnavailable(DistilleryError):
    """The upstream model could not be reached or did not answer in time."""

    status = 502
    type = "server_error"
    default_code = "upstream_unavailable"
    retryable = True


class UpstreamRedirected(DistilleryError):
    """The upstream answered with a redirect, which is never followed: it would carry the upstream key
    (`api-key` or the bearer token) to wherever the redirect points."""

    status = 502
    type = "server_error"
    default_code = "upstream_redirect"

    def __init__(self, upstream_status: int) -> None:
        super().__init__(
            f"The upstream answered HTTP {upstream_status} (a redirect). Upstream redirects are not followed, so "
            "the upstream credentials never leave the configured endpoint: set AZURE_OPENAI_ENDPOINT or "
            "OPENAI_BASE_URL to the address the upstream redirects to."
        )
        self.upstream_status = upstream_status


class UpstreamTimeout(UpstreamUnavailable):
    status = 504
    default_code = "upstream_timeout"
