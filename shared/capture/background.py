"""Background responses (`background: true`): kept when they finish, polled on the maintenance queue.

The upstream answers a background create at once with a `queued`/`in_progress` response and computes it
later; OpenAI and Azure OpenAI run background mode only for a stored response (`store: true` upstream).
Distillery records what it needs to keep the answer (a pending record), and a delayed poll message GETs
`/responses/{upstream id}` until the status is terminal, then keeps it through the capture's own storing
step. The record is marked done with an ETag-conditional write before the next poll, so a redelivered
message never keeps twice; after `MAX_POLLS` polls the job gives up with a logged reason.
"""

from __future__ import annotations

import json
import logging
from typing import Any, Literal, Protocol

from pydantic import BaseModel, Field, ValidationError

from shared.platform.errors import NotFound
from shared.platform.job_queue import JobQueue
from shared.store.json_blobs import JsonBlobs, Superseded

log = logging.getLogger(__name__)

TERMINAL = frozenset({"completed", "failed", "cancelled", "incomplete"})
POLL_SECONDS = 5.0
"""Delay between polls of a background response."""
MAX_POLLS = 720
"""Polls before giving up (about an hour at POLL_SECONDS): a response still running then is not kept."""


class BackgroundMessage(BaseModel):
    background_response: str
    part: int = Field(0, ge=0)

    @property
    def message_id(self) -> str:
        return f"{self.background_response}-poll{self.part}"


def background_message(body: bytes) -> BackgroundMessage | None:
    """The background-response poll a maintenance-queue message carries; None for any other message."""
    try:
        return BackgroundMessage.model_validate_json(body)
    except ValidationError:
        return None


class PendingResponse(BaseModel):
    """What keeping a background response needs once it finishes (the capture's storing inputs)."""

    id: str
    """Our response id, the one the caller was given."""
    upstream_id: str
    owner: str
    deployment: str
    served_by: str | None = None
    request: dict[str, Any]
    history: list[dict[str, Any]] | None = None
    history_complete: bool = True
    polls: int = 0
    state: Literal["pending", "kept", "not_kept", "gave_up"] = "pending"
    reason: str | None = None


class Keeper(Protocol):
    async def keep_background(self, pending: PendingResponse, final: dict[str, Any]) -> str | None:
        """Keep the finished response; None when kept, else the reason it was not."""
        ...


class Fetcher(Protocol):
    async def get(self, operation: str, *, deployment: str) -> tuple[int, bytes]:
        """GET an operation path of this deployment from the upstream: (status, body)."""
        ...


class BackgroundResponses:
    def __init__(
        self,
        *,
        records: JsonBlobs,
        queue: JobQueue,
        queue_name: str,
        upstream: Fetcher,
        poll_seconds: float = POLL_SECONDS,
        max_polls: int = MAX_POLLS,
    ) -> None:
        self._records = records
        self._queue = queue
        self._queue_name = queue_name
        self._upstream = upstream
        self.keeper: Keeper | None = None
        self.poll_seconds = poll_seconds
        self.max_polls = max_polls

    @staticmethod
    def _name(response_id: str) -> str:
        return f"background-responses/{response_id}.json"

    async def start(self, pending: PendingResponse) -> None:
        """Record the pending response and queue its first poll."""
        await self._records.put(self._name(pending.id), pending.model_dump_json(), create=True)
        await self._send(BackgroundMessage(background_response=pending.id), self.poll_seconds)

    async def pending(self, response_id: str, *, scope: str | None) -> PendingResponse | None:
        """The pending record of a response not yet kept (None when there is none or it is another owner's)."""
        try:
            data, _ = await self._records.get(self._name(response_id), missing="no pending response")
        except NotFound:
            return None
        record = PendingResponse.model_validate_json(data)
        return record if scope is None or record.owner == scope else None

    async def fetch(self, record: PendingResponse) -> tuple[int, dict[str, Any] | bytes]:
        """The upstream's current view of a pending response, under our id."""
        status, body = await self._upstream.get(
            f"responses/{record.upstream_id}", deployment=record.served_by or record.deployment
        )
        if status != 200:
            return status, body
        view = json.loads(body)
        view.update(id=record.id, metadata=record.request.get("metadata") or {})
        view["previous_response_id"] = record.request.get("previous_response_id")
        return status, view

    async def run(self, message: BackgroundMessage) -> PendingResponse:
        """One poll: keep the response if it finished, else poll again later (or give up)."""
        assert self.keeper is not None, "the capture registers itself as the keeper"
        data, etag = await self._records.get(self._name(message.background_response), missing="no pending response")
        record = PendingResponse.model_validate_json(data)
        if record.state != "pending":
            log.info("Background response %s: already %s; redelivered poll ignored", record.id, record.state)
            return record
        status, view = await self.fetch(record)
        record.polls += 1
        if status == 200 and isinstance(view, dict) and view.get("status") in TERMINAL:
            reason = await self.keeper.keep_background(record, view)
            record.state, record.reason = ("kept", None) if reason is None else ("not_kept", reason)
            log.info("Background response %s finished %s: %s", record.id, view.get("status"), record.state)
        elif record.polls >= self.max_polls:
            record.state = "gave_up"
            record.reason = f"still not finished after {record.polls} polls (last upstream HTTP {status})"
            log.warning("Background response %s not kept: %s", record.id, record.reason)
        elif status != 200 and status < 500 and status != 429:
            record.state, record.reason = "gave_up", f"the upstream answered HTTP {status} to the poll"
            log.warning("Background response %s not kept: %s", record.id, record.reason)
        try:
            await self._records.put(self._name(record.id), record.model_dump_json(), etag=etag)
        except Superseded:
            log.info("Background response %s: another delivery handled this poll", record.id)
            return record
        if record.state == "pending":
            await self._send(BackgroundMessage(background_response=record.id, part=record.polls), self.poll_seconds)
        return record

    async def _send(self, message: BackgroundMessage, delay: float = 0.0) -> None:
        await self._queue.send(self._queue_name, message.model_dump_json(), message_id=message.message_id, delay=delay)
