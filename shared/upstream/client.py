"""The model behind Distillery: Azure OpenAI, any OpenAI-compatible server, or the offline model.

The proxy forwards bytes, not parsed objects, so fields newer than this code survive the trip, and
an upstream error reaches the caller with its own status, body and retry headers.
"""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, Protocol
from urllib.parse import quote

import aiohttp
from opentelemetry.trace import SpanKind, Status, StatusCode

from shared.platform.errors import InvalidRequest, UpstreamRedirected, UpstreamTimeout, UpstreamUnavailable
from shared.platform.telemetry import DEPLOYMENT, HTTP_STATUS, UPSTREAM, mark_failed, tracer

PASSED_THROUGH_HEADERS = frozenset(
    {
        "retry-after",
        "retry-after-ms",
        "x-should-retry",
        "x-request-id",
        "apim-request-id",
        "openai-processing-ms",
    }
)
"""Upstream response headers a caller (and the SDK's retry logic) relies on."""


def passed_through(headers: Mapping[str, str]) -> dict[str, str]:
    return {
        name.lower(): value
        for name, value in headers.items()
        if name.lower() in PASSED_THROUGH_HEADERS or name.lower().startswith("x-ratelimit-")
    }


@dataclass
class UpstreamResponse:
    """An upstream answer whose body is read once: whole (`read`) or as SSE lines (`lines`)."""

    status: int
    headers: dict[str, str]
    _read: Callable[[], Awaitable[bytes]]
    _lines: Callable[[], AsyncIterator[str]]

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300

    async def read(self) -> bytes:
        return await self._read()

    def lines(self) -> AsyncIterator[str]:
        return self._lines()


CHAT_COMPLETIONS = "chat/completions"
EMBEDDINGS = "embeddings"
RESPONSES = "responses"
"""The Responses API: not a path under a deployment on Azure OpenAI (the deployment goes in `model`)."""


class Upstream(Protocol):
    """Where chat completions (and, for graders, embeddings) are computed."""

    label: str
    """Short name for logs and health reports: `azure-openai`, `openai-compatible`, `offline`."""

    def open(self, *, deployment: str, body: dict[str, Any], operation: str = CHAT_COMPLETIONS) -> Any:
        """An async context manager yielding an `UpstreamResponse` for `operation` (a path under the deployment)."""
        ...


@dataclass
class HttpUpstream:
    """An OpenAI-shaped HTTP upstream reached through one pooled `aiohttp` session.

    aiohttp rather than httpx: on the proxy's hot path it costs about a millisecond less per call.
    """

    session: aiohttp.ClientSession
    url_for: Callable[[str, str], str]
    """(Deployment name, operation) -> URL, e.g. the deployment's chat-completions URL."""
    auth_headers: Callable[[], Awaitable[dict[str, str]]]
    model_for: Callable[[str], str | None]
    """Deployment name -> `model` sent in the body (None leaves the caller's value)."""
    label: str = "openai-compatible"

    @asynccontextmanager
    async def open(
        self, *, deployment: str, body: dict[str, Any], operation: str = CHAT_COMPLETIONS
    ) -> AsyncIterator[UpstreamResponse]:
        # Not the current span: a streamed answer is read after this context's caller has returned.
        span = tracer.start_span(
            f"upstream {operation}", kind=SpanKind.CLIENT, attributes={DEPLOYMENT: deployment, UPSTREAM: self.label}
        )
        try:
            model = self.model_for(deployment)
            payload = body if model is None else {**body, "model": model}
            headers = {"content-type": "application/json", **await self.auth_headers()}
            try:
                # Never follow a redirect: aiohttp would resend `api-key` (and the body) to wherever it points.
                response = await self.session.post(
                    self.url_for(deployment, operation),
                    data=json.dumps(payload, separators=(",", ":")),
                    headers=headers,
                    allow_redirects=False,
                )
            except TimeoutError as exc:
                raise UpstreamTimeout("The upstream model did not answer in time.") from exc
            except aiohttp.ClientError as exc:
                raise UpstreamUnavailable("The upstream model could not be reached.") from exc
            span.set_attribute(HTTP_STATUS, response.status)
            if 300 <= response.status < 400:
                response.release()
                raise UpstreamRedirected(response.status)
            if response.status >= 500:
                span.set_status(Status(StatusCode.ERROR))
            try:
                yield UpstreamResponse(
                    status=response.status,
                    headers=passed_through(response.headers),
                    _read=lambda: _guarded_read(response),
                    _lines=lambda: _guarded_lines(response),
                )
            finally:
                response.release()
        except Exception as exc:
            mark_failed(span, exc)
            raise
        finally:
            span.end()

    async def get(self, operation: str, *, deployment: str) -> tuple[int, bytes]:
        """GET an operation, e.g. `responses/{id}` (a background response's poll) of the deployment that made it."""
        try:
            response = await self.session.get(
                self.url_for(deployment, operation), headers=await self.auth_headers(), allow_redirects=False
            )
        except TimeoutError as exc:
            raise UpstreamTimeout("The upstream model did not answer in time.") from exc
        except aiohttp.ClientError as exc:
            raise UpstreamUnavailable("The upstream model could not be reached.") from exc
        try:
            return response.status, await _guarded_read(response)
        finally:
            response.release()


async def _guarded_read(response: aiohttp.ClientResponse) -> bytes:
    try:
        return await response.read()
    except TimeoutError as exc:
        raise UpstreamTimeout("The upstream model did not finish its answer in time.") from exc
    except aiohttp.ClientError as exc:
        raise UpstreamUnavailable("The upstream connection broke during the answer.") from exc


async def _guarded_lines(response: aiohttp.ClientResponse) -> AsyncIterator[str]:
    try:
        async for line in response.content:
            yield line.decode("utf-8").rstrip("\r\n")
    except TimeoutError as exc:
        raise UpstreamTimeout("The upstream model did not finish its answer in time.") from exc
    except aiohttp.ClientError as exc:
        raise UpstreamUnavailable("The upstream connection broke during the answer.") from exc


_DEPLOYMENT_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._:-]{0,255}")
"""A deployment name that is one path segment and nothing else: no `/`, `\\`, `%`, `?`, `#`, no `.`/`..`."""


def require_deployment_segment(deployment: str) -> str:
    """A deployment name safe to put in an upstream path; anything else is a 400 and never sent."""
    if not _DEPLOYMENT_NAME.fullmatch(deployment):
        raise InvalidRequest(
            "Invalid deployment name: use letters, digits, '_', '-', '.' and ':' (at most 256 characters, "
            "not starting with '.' or '-').",
            param="model",
            code="invalid_deployment",
        )
    return deployment


def azure_openai_url(endpoint: str, api_version: str) -> Callable[[str, str], str]:
    base = endpoint.rstrip("/")

    def url_for(deployment: str, operation: str) -> str:
        segment = quote(require_deployment_segment(deployment), safe="")
        if operation.split("/")[0] == RESPONSES:  # GA on the v1 routes only, which need no api-version
            return f"{base}/openai/v1/{operation}"
        return f"{base}/openai/deployments/{segment}/{operation}?api-version={api_version}"

    return url_for


def azure_openai_v1_url(endpoint: str) -> Callable[[str, str], str]:
    """Azure OpenAI's GA v1 routes (`/openai/v1/chat/completions`, no api-version): the deployment goes in
    the body's `model`, and o-series models, the `developer` role and `reasoning_effort` work."""
    base = endpoint.rstrip("/")

    def url_for(deployment: str, operation: str) -> str:
        require_deployment_segment(deployment)
        return f"{base}/openai/v1/{operation}"

    return url_for


def openai_compatible_url(base_url: str) -> Callable[[str, str], str]:
    base = base_url.rstrip("/")
    return lambda _deployment, operation: f"{base}/{operation}"


@dataclass
class ModelMap:
    """Deployment name -> upstream model name; unknown deployments keep their own name."""

    models: dict[str, str] = field(default_factory=dict)

    def __call__(self, deployment: str) -> str:
        return self.models.get(deployment, deployment)
