"""The upstream's files, fine-tuning and batch API: Azure OpenAI's v1 API (`<endpoint>/openai/v1`) or an
OpenAI-compatible server's (`OPENAI_BASE_URL`), same paths and shapes.

Calls retry 429s and 5xx after the upstream's `retry-after-ms` / `retry-after`; a failure that
stays is raised with the upstream's status, code and message, and `explain` turns the known ones
(Azure's included) into words and a fix.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import aiohttp

from shared.platform.errors import DistilleryError
from shared.upstream.model_calls import RETRYABLE_STATUSES, retry_after_seconds

CONTRIBUTOR_ROLE = "Cognitive Services OpenAI Contributor"
UTF8_BOM = b"\xef\xbb\xbf"
"""Azure OpenAI asks for training and validation files "encoded in UTF-8 and include a byte-order mark
(BOM)" (learn.microsoft.com/azure/foundry/openai/how-to/fine-tuning, "Prepare your data")."""


class FineTuningUpstreamError(DistilleryError):
    """The upstream refused or failed a files / fine-tuning call; `explain` says why in words."""

    status = 502
    type = "server_error"
    default_code = "upstream_error"

    def __init__(self, message: str, *, upstream_status: int, code: str | None, retry_after: float | None) -> None:
        super().__init__(message, code=code)
        self.upstream_status = upstream_status
        self.retry_after = retry_after


@dataclass
class FineTuningApi:
    session: aiohttp.ClientSession
    base_url: str
    auth_headers: Callable[[], Awaitable[dict[str, str]]]
    azure: bool
    """Azure OpenAI: the job body carries `trainingType`."""
    max_attempts: int = 5
    max_wait_seconds: float = 60.0

    async def upload(self, name: str, chunks: Callable[[], Awaitable[AsyncIterator[bytes]]]) -> dict[str, Any]:
        """Upload a training file (purpose `fine-tune`), streamed from `chunks()` (called again on a retry).

        Azure OpenAI gets the file with a UTF-8 byte-order mark in front, as its docs ask."""

        async def form() -> aiohttp.FormData:
            data = aiohttp.FormData()
            data.add_field("purpose", "fine-tune")
            body = await chunks()
            data.add_field(
                "file", _with_bom(body) if self.azure else body, filename=name, content_type="application/jsonl"
            )
            return data

        return await self._request("POST", "/files", form=form)

    async def upload_batch_input(self, name: str, content: bytes) -> dict[str, Any]:
        """Upload a Batch API input file (purpose `batch`; no byte-order mark is asked for)."""

        async def form() -> aiohttp.FormData:
            data = aiohttp.FormData()
            data.add_field("purpose", "batch")
            data.add_field("file", content, filename=name, content_type="application/jsonl")
            return data

        return await self._request("POST", "/files", form=form)

    async def file_content(self, file_id: str) -> bytes:
        """A file's bytes, e.g. a batch's output or error JSONL."""
        return await self._send("GET", f"/files/{file_id}/content")

    async def create_batch(self, input_file_id: str) -> dict[str, Any]:
        """Start a batch of chat completions over an uploaded input file, to finish within 24 hours."""
        body = {"input_file_id": input_file_id, "endpoint": "/chat/completions", "completion_window": "24h"}
        return await self._request("POST", "/batches", body=body)

    async def batch_for(self, input_file_id: str) -> dict[str, Any] | None:
        """The most recent batch already made over this input file, if any (so a retry never makes two)."""
        batches = (await self._request("GET", "/batches?limit=100")).get("data") or []
        return next((batch for batch in batches if batch.get("input_file_id") == input_file_id), None)

    async def batch(self, batch_id: str) -> dict[str, Any]:
        return await self._request("GET", f"/batches/{batch_id}")

    async def file(self, file_id: str) -> dict[str, Any]:
        return await self._request("GET", f"/files/{file_id}")

    async def files(self) -> list[dict[str, Any]]:
        """The resource's fine-tuning files (Azure OpenAI keeps at most 100 of them)."""
        return list((await self._request("GET", "/files?purpose=fine-tune")).get("data") or [])

    async def delete_file(self, file_id: str) -> None:
        """Delete an uploaded file; one already gone counts as deleted."""
        try:
            await self._request("DELETE", f"/files/{file_id}")
        except FineTuningUpstreamError as exc:
            if exc.upstream_status != 404:
                raise

    async def create_job(self, body: dict[str, Any]) -> dict[str, Any]:
        return await self._request("POST", "/fine_tuning/jobs", body=body)

    async def jobs(self) -> list[dict[str, Any]]:
        return list((await self._request("GET", "/fine_tuning/jobs?limit=100")).get("data") or [])

    async def job(self, job_id: str) -> dict[str, Any]:
        return await self._request("GET", f"/fine_tuning/jobs/{job_id}")

    async def events(self, job_id: str) -> list[dict[str, Any]]:
        return list((await self._request("GET", f"/fine_tuning/jobs/{job_id}/events?limit=50")).get("data") or [])

    async def checkpoints(self, job_id: str) -> list[dict[str, Any]]:
        return list((await self._request("GET", f"/fine_tuning/jobs/{job_id}/checkpoints")).get("data") or [])

    async def cancel(self, job_id: str) -> dict[str, Any]:
        return await self._request("POST", f"/fine_tuning/jobs/{job_id}/cancel")

    async def _request(
        self,
        method: str,
        path: str,
        *,
        body: dict[str, Any] | None = None,
        form: Callable[[], Awaitable[aiohttp.FormData]] | None = None,
    ) -> dict[str, Any]:
        return dict(json.loads(await self._send(method, path, body=body, form=form)))

    async def _send(
        self,
        method: str,
        path: str,
        *,
        body: dict[str, Any] | None = None,
        form: Callable[[], Awaitable[aiohttp.FormData]] | None = None,
    ) -> bytes:
        url = self.base_url.rstrip("/") + path
        backoff = 1.0
        for attempt in range(1, self.max_attempts + 1):
            headers = await self.auth_headers()
            payload: Any = await form() if form is not None else None
            if body is not None:
                payload, headers = json.dumps(body), {**headers, "content-type": "application/json"}
            try:
                # Never follow a redirect: it would carry the credentials to another host.
                async with self.session.request(
                    method, url, data=payload, headers=headers, allow_redirects=False
                ) as response:
                    raw = await response.read()
                    status, answer_headers = response.status, {k.lower(): v for k, v in response.headers.items()}
            except (aiohttp.ClientError, TimeoutError) as exc:
                if attempt == self.max_attempts:
                    raise FineTuningUpstreamError(
                        f"The upstream could not be reached ({type(exc).__name__}).",
                        upstream_status=502,
                        code="upstream_unavailable",
                        retry_after=None,
                    ) from exc
                await asyncio.sleep(backoff)
                backoff *= 2
                continue
            if 200 <= status < 300:
                return raw
            wait = retry_after_seconds(answer_headers)
            if status not in RETRYABLE_STATUSES or attempt == self.max_attempts or (wait or 0) > self.max_wait_seconds:
                raise _failure(status, raw, wait)
            await asyncio.sleep(backoff if wait is None else wait)
            backoff *= 2
        raise AssertionError("unreachable")


async def _with_bom(chunks: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    """The file with a UTF-8 byte-order mark in front, unless it starts with one already."""
    first = True
    async for chunk in chunks:
        if first and chunk:
            first = False
            if not chunk.startswith(UTF8_BOM):
                yield UTF8_BOM
        yield chunk


def _failure(status: int, raw: bytes, retry_after: float | None) -> FineTuningUpstreamError:
    message, code = f"The upstream answered HTTP {status}.", None
    try:
        error = json.loads(raw)["error"]
        message, code = str(error.get("message") or message), error.get("code") or error.get("type")
    except (ValueError, KeyError, TypeError, AttributeError):
        pass
    return FineTuningUpstreamError(
        message, upstream_status=status, code=str(code) if code else f"upstream_{status}", retry_after=retry_after
    )


def explain(error: FineTuningUpstreamError) -> tuple[str, str]:
    """(what went wrong, how to fix it) for an upstream fine-tuning failure, in words."""
    said = f"{error.message} (HTTP {error.upstream_status}, {error.code})"
    text = f"{error.message} {error.code}".lower()
    if "trainingtype" in text or "training type" in text or "training_type" in text:
        return (
            f"Azure OpenAI needs to know where to train this model: {said}",
            "Set training_type: 'globalstandard' (Global Standard, most models and regions), 'standard' "
            "(in the resource's own region, where offered) or 'developer'.",
        )
    if error.upstream_status in (401, 403):
        return (
            f"The upstream refused this service's identity: {said}",
            f"Assign '{CONTRIBUTOR_ROLE}' on the Azure OpenAI resource to the app's managed identity "
            "(the Bicep does with enableFineTuning); 'Cognitive Services OpenAI User' only calls models.",
        )
    if error.upstream_status == 429 or "quota" in text:
        return (
            f"The upstream's fine-tuning quota or rate limit is exhausted: {said}",
            "Wait for running jobs to finish or ask for more fine-tuning quota on the resource, then retry.",
        )
    if "model" in text and ("not" in text or "invalid" in text or "unsupported" in text):
        return (
            f"The base model cannot be fine-tuned here: {said}",
            "Check the model name and version against the models that support fine-tuning in this resource's "
            "region (Azure lists them per region), or choose training_type 'globalstandard'.",
        )
    if "file" in text:
        return (
            f"The upstream rejected a training file: {said}",
            "Check the dataset with `python -m shared.datasets.check` and rebuild it; the upstream's message names the line.",
        )
    return (f"The upstream refused the fine-tuning request: {said}", "See the upstream's message above.")
