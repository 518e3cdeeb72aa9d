"""What a `store: true` call asks of storage before its answer: one blob write, nothing else.

Storage requests are counted by a transport wrapped around the SDK's own (aiohttp) transport, the
layer every blob and table request passes through; nothing of the code under test is replaced.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import pytest
from azure.data.tables.aio import TableClient
from azure.storage.blob.aio import ContainerClient

from local_host.azurite import Azurite
from shared.aliases.routes import AliasRoutes
from shared.capture.chat_request import parse_chat_request
from shared.capture.proxy import STORED_HEADER, ChatCapture
from shared.platform.access import Caller, Right
from shared.platform.settings import QuotaMode
from shared.reports.quota import GIB, QuotaGate
from shared.store.completion_index import CompletionIndex
from shared.store.completion_store import CompletionStore
from shared.store.json_blobs import JsonBlobs
from shared.store.usage import UsageCounter
from shared.upstream.offline_model import OfflineModel
from tests.shared.counting_transport import CountingTransport

CALLER = Caller(name="default", owner="key:default", rights=frozenset(Right))


@dataclass
class Rig:
    capture: ChatCapture
    usage: UsageCounter
    blobs: CountingTransport
    tables: CountingTransport
    clock: list[float] = field(default_factory=lambda: [0.0])

    def storage_calls(self) -> list[tuple[str, str]]:
        return [*self.blobs.sent, *self.tables.sent]

    def forget_calls(self) -> None:
        self.blobs.sent.clear()
        self.tables.sent.clear()


@pytest.fixture
async def rig(azurite: Azurite) -> AsyncIterator[Rig]:
    name = f"t{uuid.uuid4().hex[:12]}"
    blobs, tables = CountingTransport(), CountingTransport()
    connection = azurite.connection_string
    async with (
        ContainerClient.from_connection_string(connection, name, transport=blobs) as container,
        ContainerClient.from_connection_string(connection, f"{name}a", transport=blobs) as aliases,
        TableClient.from_connection_string(connection, name, transport=tables) as table,
    ):
        await asyncio.gather(container.create_container(), aliases.create_container(), table.create_table())
        clock = [0.0]
        usage = UsageCounter(table=table, refresh_seconds=5, clock=lambda: clock[0])
        store = CompletionStore(container=container, index=CompletionIndex(table), usage=usage)
        capture = ChatCapture(
            upstream=OfflineModel(),
            store=store,
            store_enabled=True,
            quota=QuotaGate(usage=usage, cap_bytes=GIB, mode=QuotaMode.SERVE_UNSTORED),
            route=AliasRoutes(blobs=JsonBlobs(container=aliases, label="alias"), ttl_seconds=60).route,
        )
        rig = Rig(capture=capture, usage=usage, blobs=blobs, tables=tables, clock=clock)
        rig.forget_calls()
        yield rig


async def _store_true(rig: Rig, *, stream: bool = False) -> str:
    """The call's `x-distillery-stored`; a stream's is `pending` until it ends, then its last comment says."""
    request = parse_chat_request(
        {"model": "gpt-4o", "store": True, "stream": stream, "messages": [{"role": "user", "content": "hi"}]}
    )
    reply = await rig.capture.complete(request, deployment="gpt-4o", caller=CALLER)
    if reply.events is None:
        return reply.headers[STORED_HEADER]
    events = [event async for event in reply.events]
    assert events[-1] == b"data: [DONE]\n\n"
    return "false" if any(b"distillery-stored=false" in event for event in events) else "true"


@pytest.mark.parametrize("stream", [False, True])
async def test_a_store_true_call_makes_one_storage_request_its_document(rig: Rig, stream: bool) -> None:
    await _store_true(rig)  # the worker's first call reads the quota totals and the alias name once
    rig.forget_calls()
    for _ in range(3):
        assert await _store_true(rig, stream=stream) == "true"
    calls = rig.storage_calls()
    assert len(calls) == 3
    assert all(method == "PUT" and path.endswith(".json") for method, path in calls)


async def test_a_stale_quota_check_refreshes_in_the_background_not_on_the_request_path(rig: Rig) -> None:
    await _store_true(rig)
    rig.clock[0] += 60  # the cached totals are now stale
    rig.tables.released.clear()  # table requests wait: the answer must not
    rig.forget_calls()
    assert await asyncio.wait_for(_store_true(rig), timeout=10) == "true"
    assert await asyncio.wait_for(_store_true(rig), timeout=10) == "true"
    assert [method for method, _ in rig.blobs.sent] == ["PUT", "PUT"]
    assert len(rig.tables.sent) == 1  # one refresh in flight, however many calls found the totals stale
    rig.tables.released.set()
    await asyncio.wait_for(rig.usage.totals(max_age_seconds=3600), timeout=10)
