"""Capture: proxy a chat completion or a Responses API call upstream and, when asked, keep it.

Storing never breaks the caller: when the store is off, full or failing, the answer still goes back
with `x-distillery-stored: false` and a reason header. A streamed answer is stored before its final
`data: [DONE]` is sent, so it is retrievable the moment the client has read the stream. Storing is
one blob write; lists show the completion once its index rows follow (`shared/store/completion_indexer`).

Both APIs share every step (rights, quota, idempotency, storing, telemetry, headers); what differs is
the request's meaning of `store`, the wire format of a stream, and, for Responses, a
`previous_response_id` chain resolved from the store so the kept record holds the whole conversation.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from opentelemetry import trace
from opentelemetry.trace import Span
from pydantic import ValidationError

from shared.capture.background import BackgroundResponses, PendingResponse
from shared.capture.chat_request import ChatRequest, StreamOptions
from shared.capture.responses_request import ResponsesRequest
from shared.capture.stream_assembly import CompletionAssembler, ResponseAssembler
from shared.platform.access import Caller
from shared.platform.errors import (
    DocumentTooLarge,
    InvalidRequest,
    NotFound,
    RedactionUnavailable,
    StorageUnavailable,
)
from shared.platform.telemetry import (
    COMPLETION_ID,
    DEPLOYMENT,
    HTTP_STATUS,
    NOT_STORED_REASON,
    OVERHEAD_MS,
    STORED,
    STREAMED,
    captured_completions,
    mark_failed,
    not_stored,
    proxy_overhead,
    tracer,
)
from shared.reports.quota import QuotaGate
from shared.store import ids
from shared.store.completion_store import CompletionStore
from shared.store.stored_completion import StoredCompletion
from shared.upstream import responses_wire
from shared.upstream.client import CHAT_COMPLETIONS, RESPONSES, Upstream, UpstreamResponse

log = logging.getLogger(__name__)

STORED_HEADER = "x-distillery-stored"
NOT_STORED_REASON_HEADER = "x-distillery-not-stored-reason"
REPLAYED_HEADER = "x-distillery-replayed"
OVERHEAD_HEADER = "x-distillery-overhead-ms"
"""Time the proxy added to this answer: request time minus upstream time (streams: up to the first byte)."""


class NotStoredReason(StrEnum):
    STORE_DISABLED = "store_disabled"
    STORAGE_UNAVAILABLE = "storage_unavailable"
    UPSTREAM_ERROR = "upstream_error"
    QUOTA_EXCEEDED = "quota_exceeded"
    OWNER_QUOTA_EXCEEDED = "owner_quota_exceeded"
    DOCUMENT_TOO_LARGE = "document_too_large"
    REDACTION_UNAVAILABLE = "redaction_unavailable"


Request = ChatRequest | ResponsesRequest
Route = Callable[[str, Request], Awaitable[str | None]]
"""(deployment asked for, request) -> the deployment that serves it when the name is an alias, else None."""


@dataclass
class ProxyReply:
    """What goes back to the caller: a whole body, or SSE events as they arrive."""

    status: int
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    events: AsyncIterator[bytes] | None = None


@dataclass
class _Chain:
    """What a `previous_response_id` stands for: the earlier turns' items, and whether all were found."""

    items: list[dict[str, Any]] | None = None
    """None: not in our store, so the id goes upstream as it is."""
    complete: bool = True


class ChatCapture:
    """The chat-completions and Responses proxy with optional storing."""

    def __init__(
        self,
        *,
        upstream: Upstream,
        store: CompletionStore,
        store_enabled: bool,
        quota: QuotaGate | None = None,
        log_content: bool = False,
        route: Route | None = None,
        background: BackgroundResponses | None = None,
    ) -> None:
        self._upstream = upstream
        self._background = background
        """Polls `background: true` responses until they finish; None: the upstream cannot be polled."""
        if background is not None:
            background.keeper = self
        self._route = route
        self._store = store
        self._store_enabled = store_enabled
        self._quota = quota
        self._log_content = log_content

    async def complete(
        self,
        request: Request,
        *,
        deployment: str,
        caller: Caller,
        idempotency_key: str | None = None,
        started: float | None = None,
    ) -> ProxyReply:
        """Proxy one call. `started` (a `time.perf_counter()` reading) is when the HTTP request arrived;
        the reply's `x-distillery-overhead-ms` counts from then."""
        timing = _Timing(time.perf_counter() if started is None else started)
        streamed = bool(request.stream)
        name = "responses proxy" if isinstance(request, ResponsesRequest) else "chat.completions proxy"
        span = tracer.start_span(name, attributes={DEPLOYMENT: deployment, STREAMED: streamed})
        try:
            with trace.use_span(span, record_exception=False, set_status_on_exception=False):
                reply = await self._complete(request, deployment, caller, idempotency_key, timing, span)
        except BaseException as exc:
            mark_failed(span, exc)
            span.end()
            raise
        overhead = timing.overhead_ms()
        reply.headers[OVERHEAD_HEADER] = f"{overhead:.1f}"
        proxy_overhead.record(overhead, {STREAMED: streamed})
        span.set_attribute(OVERHEAD_MS, overhead)
        span.set_attribute(HTTP_STATUS, reply.status)
        if STORED_HEADER in reply.headers:
            span.set_attribute(STORED, reply.headers[STORED_HEADER])
        if NOT_STORED_REASON_HEADER in reply.headers:
            span.set_attribute(NOT_STORED_REASON, reply.headers[NOT_STORED_REASON_HEADER])
        if reply.events is None:
            span.end()
        else:
            reply.events = _ending(reply.events, span)
        return reply

    async def _complete(
        self,
        request: Request,
        deployment: str,
        caller: Caller,
        idempotency_key: str | None,
        timing: _Timing,
        span: Span,
    ) -> ProxyReply:
        responses = isinstance(request, ResponsesRequest)
        if self._log_content:
            said = request.input if isinstance(request, ResponsesRequest) else request.messages
            log.info("Proxied request to %s (LOG_CONTENT): %s", deployment, _dumps(said).decode())
        storing = request.storing if isinstance(request, ResponsesRequest) else bool(request.store)
        headers: dict[str, str] = {}
        if storing and not self._store_enabled:
            storing = False
            _mark_not_stored(headers, NotStoredReason.STORE_DISABLED)
        refusal = await self._quota.refusal(owner=caller.owner) if storing and self._quota is not None else None
        if refusal is not None:
            storing = False
            _mark_not_stored(headers, NotStoredReason(refusal))
        kind: ids.Kind = "response" if responses else "chat.completion"
        completion_id, claimed_before = (
            await self._completion_id(caller, idempotency_key, kind) if storing else (None, False)
        )
        if completion_id is not None:
            span.set_attribute(COMPLETION_ID, completion_id)
        if completion_id is not None and claimed_before:  # a fresh id has no earlier answer to look for
            earlier = await self._stored(completion_id)
            if earlier is not None and isinstance(request, ResponsesRequest):
                return _replay_response(earlier, stream=bool(request.stream))
            if earlier is not None and isinstance(request, ChatRequest):
                return _replay(earlier, stream=bool(request.stream), options=request.stream_options)

        served_by = await self._route(deployment, request) if self._route is not None else None
        chain = _Chain()
        if isinstance(request, ResponsesRequest):
            if request.background and (request.stream or self._background is None):
                raise InvalidRequest(
                    "Background responses are not supported with 'stream' or by the "
                    f"{self._upstream.label} upstream; send the request without 'background'.",
                    param="background",
                    code="unsupported_parameter",
                )
            chain = await self._chain(request.previous_response_id, caller)
            sent = request.upstream_body(
                model=served_by or deployment, history=None if chain.items is None else _resendable(chain.items)
            )
        else:
            sent = request.upstream_body(model=served_by if served_by and request.model else request.model)
        stack = AsyncExitStack()
        upstream_started = time.perf_counter()
        response: UpstreamResponse = await stack.enter_async_context(
            self._upstream.open(
                deployment=served_by or deployment, body=sent, operation=RESPONSES if responses else CHAT_COMPLETIONS
            )
        )
        headers.update(response.headers)
        if not response.ok:
            async with stack:
                body_read = await response.read()
            timing.upstream_seconds += time.perf_counter() - upstream_started
            if responses and response.status in (404, 405) and not _openai_shaped(body_read):
                return _responses_unsupported(response.status, self._upstream.label, headers)
            return _upstream_error(response.status, body_read, headers)
        if request.stream:
            timing.upstream_seconds += time.perf_counter() - upstream_started
            headers.update({"content-type": "text/event-stream", "cache-control": "no-cache"})
            if storing:
                headers[STORED_HEADER] = "pending"
            if isinstance(request, ResponsesRequest):
                events = self._relay_response(
                    stack, response, request, deployment, served_by, caller, completion_id, chain, span
                )
            else:
                events = self._relay(stack, response, request, deployment, served_by, caller, completion_id, span)
            return ProxyReply(status=response.status, headers=headers, events=events)

        async with stack:
            body = await response.read()
        timing.upstream_seconds += time.perf_counter() - upstream_started
        headers["content-type"] = "application/json"
        if self._log_content:
            log.info("Upstream answer from %s (LOG_CONTENT): %s", deployment, body.decode("utf-8", "replace"))
        if completion_id is None:
            return ProxyReply(status=response.status, headers=headers, body=body)
        completion = json.loads(body)
        if isinstance(request, ResponsesRequest) and request.background:
            return await self._start_background(
                request, completion, completion_id, deployment, served_by, caller, chain, headers, response.status
            )
        completion["id"] = completion_id
        if isinstance(request, ResponsesRequest):
            completion.update(store=True, metadata=request.metadata or {})
            completion["previous_response_id"] = request.previous_response_id
        body = _dumps(completion)
        reason = await self._keep(
            completion_id, request, deployment, caller, completion, streamed=False, served_by=served_by, chain=chain
        )
        if reason is None:
            headers[STORED_HEADER] = "true"
        else:
            _mark_not_stored(headers, reason)
        return ProxyReply(status=response.status, headers=headers, body=body)

    async def _start_background(
        self,
        request: ResponsesRequest,
        answer: dict[str, Any],
        completion_id: str,
        deployment: str,
        served_by: str | None,
        caller: Caller,
        chain: _Chain,
        headers: dict[str, str],
        status: int,
    ) -> ProxyReply:
        """Answer a background create at once (under our id) and queue the polls that keep it when done."""
        assert self._background is not None
        pending = PendingResponse(
            id=completion_id,
            upstream_id=str(answer.get("id")),
            owner=caller.owner,
            deployment=deployment,
            served_by=served_by,
            request=request.model_dump(mode="json", exclude_unset=True),
            history=chain.items,
            history_complete=chain.complete,
        )
        try:
            await self._background.start(pending)
            headers[STORED_HEADER] = "pending"
        except StorageUnavailable:
            log.warning("Background response %s will not be kept: its poll could not be queued", completion_id)
            _mark_not_stored(headers, NotStoredReason.STORAGE_UNAVAILABLE)
        answer.update(id=completion_id, metadata=request.metadata or {})
        answer["previous_response_id"] = request.previous_response_id
        return ProxyReply(status=status, headers=headers, body=_dumps(answer))

    async def keep_background(self, pending: PendingResponse, final: dict[str, Any]) -> str | None:
        """Keep a finished background response through the same storing step as a foreground one."""
        request = ResponsesRequest.model_validate(pending.request, strict=False)
        caller = Caller(name=pending.owner, owner=pending.owner, rights=frozenset())
        final.update(store=True)
        reason = await self._keep(
            pending.id,
            request,
            pending.deployment,
            caller,
            final,
            streamed=False,
            served_by=pending.served_by,
            chain=_Chain(items=pending.history, complete=pending.history_complete),
        )
        return None if reason is None else reason.value

    async def _relay(
        self,
        stack: AsyncExitStack,
        response: UpstreamResponse,
        request: ChatRequest,
        deployment: str,
        served_by: str | None,
        caller: Caller,
        completion_id: str | None,
        span: Span,
    ) -> AsyncIterator[bytes]:
        """Forward SSE events as they come; store the assembled completion just before `[DONE]`."""
        assembler = CompletionAssembler()
        async with stack:
            async for event in _events(response.lines()):
                data = _event_data(event)
                if data == "[DONE]" and completion_id is not None:
                    store = self._store_stream(assembler, completion_id, request, deployment, served_by, caller)
                    if notice := await _stored_in_span(span, store):
                        yield notice
                elif data is not None and completion_id is not None:
                    event = _rewrite_chunk(event, data, completion_id, assembler)
                yield _frame(event)

    async def _relay_response(
        self,
        stack: AsyncExitStack,
        response: UpstreamResponse,
        request: ResponsesRequest,
        deployment: str,
        served_by: str | None,
        caller: Caller,
        completion_id: str | None,
        chain: _Chain,
        span: Span,
    ) -> AsyncIterator[bytes]:
        """Forward Responses events as they come, our id in place of the upstream's; store the final
        response just before relaying the event that ends the stream (`response.completed`, …)."""
        assembler = ResponseAssembler()
        async with stack:
            async for event in _events(response.lines()):
                data = _event_data(event)
                parsed = _json_object(data) if data is not None else None
                if parsed is not None:
                    assembler.add(parsed)
                    if completion_id is not None and isinstance(parsed.get("response"), dict):
                        parsed["response"].update(
                            id=completion_id,
                            store=True,
                            metadata=request.metadata or {},
                            previous_response_id=request.previous_response_id,
                        )
                        event = _with_data(event, parsed)
                if parsed is not None and assembler.done and completion_id is not None:
                    store = self._store_response_stream(
                        assembler, completion_id, request, deployment, served_by, caller, chain
                    )
                    if notice := await _stored_in_span(span, store):
                        yield notice
                yield _frame(event)

    async def _store_response_stream(
        self,
        assembler: ResponseAssembler,
        completion_id: str,
        request: ResponsesRequest,
        deployment: str,
        served_by: str | None,
        caller: Caller,
        chain: _Chain,
    ) -> NotStoredReason | None:
        final = assembler.response()
        if final is None:
            return NotStoredReason.UPSTREAM_ERROR
        final.update(id=completion_id, store=True)
        return await self._keep(
            completion_id, request, deployment, caller, final, streamed=True, served_by=served_by, chain=chain
        )

    async def _chain(self, previous_id: str | None, caller: Caller) -> _Chain:
        """The earlier turns behind `previous_response_id`, from our store (the caller's own only)."""
        if previous_id is None:
            return _Chain()
        if not (ids.is_completion_id(previous_id) and ids.kind_of(previous_id) == "response"):
            return _Chain(items=None, complete=False)
        try:
            earlier = await self._store.get(previous_id, owner=caller.scope)
        except NotFound:
            raise NotFound(
                f"Previous response with id '{previous_id}' not found.", param="previous_response_id"
            ) from None
        return _Chain(items=earlier.conversation_items(), complete=earlier.history_complete)

    async def _store_stream(
        self,
        assembler: CompletionAssembler,
        completion_id: str,
        request: ChatRequest,
        deployment: str,
        served_by: str | None,
        caller: Caller,
    ) -> NotStoredReason | None:
        if assembler.failed:
            return NotStoredReason.UPSTREAM_ERROR
        completion = assembler.completion()
        completion["id"] = completion_id
        return await self._keep(
            completion_id, request, deployment, caller, completion, streamed=True, served_by=served_by
        )

    async def _keep(
        self,
        completion_id: str,
        request: Request,
        deployment: str,
        caller: Caller,
        completion: dict[str, Any],
        *,
        streamed: bool,
        served_by: str | None,
        chain: _Chain | None = None,
    ) -> NotStoredReason | None:
        try:
            chain = chain or _Chain()
            stored = StoredCompletion(
                kind=ids.kind_of(completion_id),
                history=chain.items or [],
                history_complete=chain.complete,
                id=completion_id,
                created=ids.captured_at_us(completion_id) // 1_000_000,
                deployment=deployment,
                served_by=served_by,
                model=str(completion.get("model") or served_by or deployment),
                metadata=request.metadata or {},
                owner=caller.owner,
                streamed=streamed,
                request=request.model_dump(mode="json", exclude_unset=True),
                response=completion,
            )
        except ValidationError as exc:
            # Where, not what: the error's own text quotes the answer's content.
            problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()[:5])
            log.error(
                "Completion %s served but not stored: the upstream answer was malformed (%s)", completion_id, problems
            )
            return NotStoredReason.UPSTREAM_ERROR
        reason = await keep(self._store, stored)
        if reason is None and self._log_content and streamed:
            log.info("Upstream answer for %s (LOG_CONTENT): %s", completion_id, _dumps(completion).decode())
        return reason

    async def _completion_id(
        self, caller: Caller, idempotency_key: str | None, kind: ids.Kind = "chat.completion"
    ) -> tuple[str, bool]:
        """A new id, or the id an earlier attempt with the same `Idempotency-Key` claimed (then True)."""
        completion_id = ids.new_completion_id(kind=kind)
        if not idempotency_key:
            return completion_id, False
        digest = hashlib.sha256(f"{caller.owner}\0{idempotency_key}".encode()).hexdigest()
        try:
            claimed = await self._store.index.claim_idempotency_key(digest, completion_id)
            if claimed == completion_id:
                return completion_id, False
            chosen = await self._store.index.reclaim_forgotten(digest, claimed, completion_id)
            return chosen, chosen != completion_id
        except StorageUnavailable:
            log.warning("Idempotency key not recorded: the completion index is unavailable")
            return completion_id, False

    async def _stored(self, completion_id: str) -> StoredCompletion | None:
        try:
            return await self._store.get(completion_id)
        except (NotFound, StorageUnavailable):
            return None


async def keep(store: CompletionStore, stored: StoredCompletion) -> NotStoredReason | None:
    """The storing step every capture shares: one durable write, the document (redacted first when
    REDACTION is on; its index rows and usage follow from the blob-created event). None when kept,
    else why not; never raises for storage or redaction failures."""
    try:
        await store.capture(stored)
    except DocumentTooLarge:
        log.warning(
            "Completion %s served but not stored: larger than MAX_STORED_DOCUMENT_BYTES (%s)",
            stored.id,
            store.max_document_bytes,
        )
        return NotStoredReason.DOCUMENT_TOO_LARGE
    except RedactionUnavailable as exc:
        log.warning("Completion %s served but not stored: %s", stored.id, exc.message)
        return NotStoredReason.REDACTION_UNAVAILABLE
    except StorageUnavailable as exc:
        log.warning("Completion %s served but not stored: %s (%r)", stored.id, exc, exc.__cause__)
        return NotStoredReason.STORAGE_UNAVAILABLE
    captured_completions.add(1, {STREAMED: stored.streamed})
    return None


def _replay(stored: StoredCompletion, *, stream: bool, options: StreamOptions | None) -> ProxyReply:
    """A retry of a call already stored gets the stored answer again, with no second upstream call
    (and no overwrite of what is kept); a streamed retry gets it as one content chunk per choice."""
    headers = {STORED_HEADER: "true", REPLAYED_HEADER: "true"}
    if not stream:
        return ProxyReply(
            status=200, headers={**headers, "content-type": "application/json"}, body=_dumps(stored.response)
        )
    response = stored.response
    head = {key: response.get(key) for key in ("id", "created", "model", "system_fingerprint")}
    head["object"] = "chat.completion.chunk"
    chunks = [
        {
            **head,
            "choices": [
                {"index": c.get("index", 0), "delta": c.get("message") or {}, "finish_reason": c.get("finish_reason")}
            ],
        }
        for c in response.get("choices") or []
    ]
    if options is not None and options.include_usage and response.get("usage"):
        chunks.append({**head, "choices": [], "usage": response["usage"]})

    async def events() -> AsyncIterator[bytes]:
        for chunk in chunks:
            yield b"data: " + _dumps(chunk) + b"\n\n"
        yield b"data: [DONE]\n\n"

    return ProxyReply(status=200, headers={**headers, "content-type": "text/event-stream"}, events=events())


def _replay_response(stored: StoredCompletion, *, stream: bool) -> ProxyReply:
    """A retried Responses call already stored gets the stored response again (streamed: as events)."""
    headers = {STORED_HEADER: "true", REPLAYED_HEADER: "true"}
    view = stored.as_response()
    view.pop("distillery")
    if not stream:
        return ProxyReply(status=200, headers={**headers, "content-type": "application/json"}, body=_dumps(view))

    async def events() -> AsyncIterator[bytes]:
        for event in responses_wire.stream_events(view):
            yield responses_wire.sse(event)

    return ProxyReply(status=200, headers={**headers, "content-type": "text/event-stream"}, events=events())


def _resendable(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Earlier turns as input items an upstream that stores nothing accepts: no item ids (they name
    nothing it knows) and no reasoning items without their encrypted content."""
    kept = []
    for item in items:
        if item.get("type") == "reasoning" and not item.get("encrypted_content"):
            continue
        kept.append({key: value for key, value in item.items() if key != "id"})
    return kept


def _json_object(data: str) -> dict[str, Any] | None:
    try:
        value = json.loads(data)
    except json.JSONDecodeError:
        return None
    return value if isinstance(value, dict) else None


def _openai_shaped(body: bytes) -> bool:
    try:
        parsed = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError):
        return False
    return isinstance(parsed, dict) and isinstance(parsed.get("error"), dict)


def _responses_unsupported(status: int, label: str, headers: dict[str, str]) -> ProxyReply:
    """An upstream without the Responses API: say so (Distillery does not translate to chat completions)."""
    message = (
        f"The upstream model API ({label}) does not support the Responses API: it answered HTTP {status} "
        "to POST /responses. Use chat completions with this upstream, or point Distillery at one that serves "
        "/responses (OpenAI, Azure OpenAI)."
    )
    headers.update({"content-type": "application/json", "x-should-retry": "false"})
    error = {"message": message, "type": "invalid_request_error", "param": None, "code": "upstream_without_responses"}
    return ProxyReply(status=400, headers=headers, body=_dumps({"error": error}))


async def _events(lines: AsyncIterator[str]) -> AsyncIterator[list[str]]:
    """The stream's server-sent events, each as its lines (a blank line ends one)."""
    event: list[str] = []
    async for line in lines:
        if line:
            event.append(line)
        elif event:
            yield event
            event = []


def _frame(event: list[str]) -> bytes:
    return ("\n".join(event) + "\n\n").encode()


async def _stored_in_span(span: Span, store: Awaitable[NotStoredReason | None]) -> bytes | None:
    """Store a streamed answer as the proxy span's child (nothing yields meanwhile) and record the outcome
    on the span; the SSE comment that tells the caller it was not stored, None when it was."""
    with trace.use_span(span, record_exception=False, set_status_on_exception=False):
        reason = await store
    span.set_attribute(STORED, "true" if reason is None else "false")
    if reason is None:
        return None
    span.set_attribute(NOT_STORED_REASON, reason.value)
    not_stored.add(1, {"reason": reason.value})
    return f": distillery-stored=false reason={reason.value}\n\n".encode()


def _with_data(event: list[str], payload: dict[str, Any]) -> list[str]:
    """The event with its data replaced by `payload`."""
    return [line for line in event if not line.startswith("data:")] + [f"data: {_dumps(payload).decode()}"]


def _event_data(event: list[str]) -> str | None:
    data = [line[5:].lstrip() for line in event if line.startswith("data:")]
    return "\n".join(data) if data else None


def _rewrite_chunk(event: list[str], data: str, completion_id: str, assembler: CompletionAssembler) -> list[str]:
    try:
        chunk = json.loads(data)
    except json.JSONDecodeError:
        return event
    if not isinstance(chunk, dict):
        return event
    assembler.add(chunk)
    if "id" in chunk:
        chunk["id"] = completion_id
    return _with_data(event, chunk)


def _upstream_error(status: int, body: bytes, headers: dict[str, str]) -> ProxyReply:
    """Pass an upstream error through: its status and headers, its body when it is OpenAI-shaped."""
    headers["content-type"] = "application/json"
    try:
        parsed = json.loads(body)
        shaped = isinstance(parsed, dict) and isinstance(parsed.get("error"), dict)
    except (json.JSONDecodeError, UnicodeDecodeError):
        shaped = False
    if not shaped:
        message = f"The upstream model answered with HTTP {status}."
        body = _dumps({"error": {"message": message, "type": "upstream_error", "param": None, "code": str(status)}})
    return ProxyReply(status=status, headers=headers, body=body)


def _mark_not_stored(headers: dict[str, str], reason: NotStoredReason) -> None:
    headers[STORED_HEADER] = "false"
    headers[NOT_STORED_REASON_HEADER] = reason.value
    not_stored.add(1, {"reason": reason.value})


@dataclass
class _Timing:
    """Where a proxied call's time went: the rest of the request's time is the proxy's overhead."""

    started: float
    upstream_seconds: float = 0.0

    def overhead_ms(self) -> float:
        return max(0.0, (time.perf_counter() - self.started - self.upstream_seconds) * 1000)


async def _ending(events: AsyncIterator[bytes], span: Span) -> AsyncIterator[bytes]:
    """The events, ending the proxy span once the stream is done (or the client went away)."""
    try:
        async for event in events:
            yield event
    except BaseException as exc:
        mark_failed(span, exc)
        raise
    finally:
        span.end()


def _dumps(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()
