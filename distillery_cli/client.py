"""The HTTP side: one `httpx.Client` with the caller's credentials, OpenAI-shaped errors as `ApiError`."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import httpx

DEFAULT_URL = "http://localhost:7071"
COMPLETIONS_PATH = "/openai/v1/chat/completions"
RESPONSES_PATH = "/openai/v1/responses"
PAGE_LIMIT = 100
"""The API's largest page."""
REPORT_WAIT_SECONDS = 120.0
"""How long `quota` and `health` wait for the service to build a first report."""


class ApiError(Exception):
    """The service answered with an error (its OpenAI-shaped message), or could not be reached."""

    def __init__(self, message: str, *, status: int | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.code = code


@dataclass(frozen=True)
class Connection:
    """Where the service is and how to prove who we are: a key, or an Entra token from `token()`."""

    url: str
    api_key: str | None = None
    token: Callable[[], str] | None = None
    timeout: float = 60.0


class DistilleryClient:
    """Thin wrapper over the HTTP API; every non-2xx answer raises `ApiError` with the service's message."""

    def __init__(self, connection: Connection) -> None:
        self._connection = connection
        self._http = httpx.Client(base_url=connection.url.rstrip("/"), timeout=connection.timeout)

    def close(self) -> None:
        self._http.close()

    def _headers(self) -> dict[str, str]:
        if self._connection.token is not None:
            return {"authorization": f"Bearer {self._connection.token()}"}
        if self._connection.api_key:
            return {"api-key": self._connection.api_key}
        return {}

    def request(self, method: str, path: str, **options: Any) -> Any:
        """The decoded JSON answer of one call."""
        return _decoded(self._send(method, path, **options))

    def _send(self, method: str, path: str, **options: Any) -> httpx.Response:
        try:
            response = self._http.request(method, path, headers=self._headers(), **options)
        except httpx.TransportError as exc:
            raise unreachable(self._connection.url, exc) from None
        raise_for_error(response)
        return response

    def report(
        self,
        path: str,
        *,
        wait_seconds: float = REPORT_WAIT_SECONDS,
        on_pending: Callable[[], None] = lambda: None,
    ) -> Any:
        """A report route's answer. Before the first report exists the service answers 202 and builds it
        on its queue: call `on_pending` once, then poll as its `retry-after` asks, up to `wait_seconds`."""
        deadline = time.monotonic() + wait_seconds
        pending = False
        while True:
            response = self._send("GET", path)
            if response.status_code != 202:
                return _decoded(response)
            if not pending:
                pending = True
                on_pending()
            if time.monotonic() >= deadline:
                raise ApiError(
                    f"The service is still building its first report at {path}; try again in a minute.",
                    status=202,
                    code="report_pending",
                )
            time.sleep(min(_seconds(response.headers.get("retry-after")), 5.0))

    def get(self, path: str, **params: Any) -> Any:
        return self.request("GET", path, params=_without_none(params))

    def post(self, path: str, body: dict[str, Any]) -> Any:
        return self.request("POST", path, json=body)

    def delete(self, path: str) -> Any:
        return self.request("DELETE", path)

    def pages(
        self, path: str, query: list[tuple[str, Any]], *, after: str | None = None
    ) -> Iterator[tuple[list[dict[str, Any]], bool]]:
        """Every page of a list route from `after` on as (items, has_more), following the last id of each page."""
        while True:
            page = self.get_query(path, query + ([("after", after)] if after else []))
            data: list[dict[str, Any]] = page.get("data", [])
            has_more = bool(page.get("has_more")) and bool(data)
            yield data, has_more
            if not has_more:
                return
            after = data[-1]["id"]

    def get_query(self, path: str, query: list[tuple[str, Any]]) -> Any:
        """GET with repeated query names kept (`metadata[k]=v` pairs)."""
        return self.request("GET", path, params=[(name, str(value)) for name, value in query])

    @contextmanager
    def stream(self, path: str) -> Iterator[httpx.Response]:
        """An open streamed response; an error answer raises before any byte is handed out."""
        try:
            with self._http.stream("GET", path, headers=self._headers()) as response:
                if response.is_error:
                    response.read()
                    raise_for_error(response)
                yield response
        except httpx.TransportError as exc:
            raise unreachable(self._connection.url, exc) from None


def _decoded(response: httpx.Response) -> Any:
    try:
        return response.json()
    except ValueError:
        raise ApiError(
            f"{response.request.method} {response.request.url.path} answered {response.status_code} "
            "with a body that is not JSON."
        ) from None


def _seconds(retry_after: str | None) -> float:
    try:
        return max(0.5, float(retry_after or 2))
    except ValueError:
        return 2.0


def raise_for_error(response: httpx.Response) -> None:
    """An `ApiError` carrying the service's own message for any non-2xx answer."""
    if not response.is_error:
        return
    message, code = None, None
    try:
        error = response.json().get("error")
        if isinstance(error, dict):
            message, code = error.get("message"), error.get("code") or error.get("type")
    except (ValueError, AttributeError):
        pass
    if not message:
        message = f"HTTP {response.status_code} {response.reason_phrase} from {response.request.url.path}"
    raise ApiError(str(message), status=response.status_code, code=code)


def unreachable(url: str, exc: httpx.TransportError) -> ApiError:
    """A transport failure, named by its kind only (its text can carry the request's details)."""
    return ApiError(
        f"Could not reach {url} ({type(exc).__name__}). Is the service running? Check --url.", code="unreachable"
    )


def _without_none(params: dict[str, Any]) -> dict[str, Any]:
    return {name: value for name, value in params.items() if value is not None}
