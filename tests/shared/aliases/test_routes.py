"""Alias resolution on the request path: from memory after one read, refreshed in the background, and the
share and sticky rules that pick the serving deployment."""

from __future__ import annotations

import asyncio
import time
from collections import Counter

from shared.aliases.records import AliasParams, AliasRecord, AliasTarget, Sticky
from shared.aliases.routes import AliasRoutes
from shared.capture.chat_request import ChatRequest
from shared.store.json_blobs import JsonBlobs
from tests.conftest import ServicesFactory


def _record(sticky: Sticky | None = None, shares: tuple[int, int] = (90, 10)) -> AliasRecord:
    return AliasRecord(
        name="bot",
        targets=[
            AliasTarget(deployment="teacher", share=shares[0]),
            AliasTarget(deployment="student", share=shares[1]),
        ],
        fallback="teacher",
        sticky=sticky,
        created_at=0,
        updated_at=0,
    )


def test_shares_split_traffic_and_sticky_values_keep_their_deployment() -> None:
    loose = Counter(_record().choose(user=None, metadata=None) for _ in range(4000))
    assert 250 < loose["student"] < 550  # 10 % of 4000 = 400
    by_user = _record(Sticky(by="user"), (50, 50))
    for user in ("ann", "bob", "cy"):
        assert len({by_user.choose(user=user, metadata=None) for _ in range(20)}) == 1
    by_session = _record(Sticky(by="metadata", key="session"), (50, 50))
    picks = {by_session.choose(user=None, metadata={"session": f"s{n}"}) for n in range(40)}
    assert picks == {"teacher", "student"}
    assert {_record(shares=(100, 0)).choose(user=None, metadata=None) for _ in range(200)} == {"teacher"}


async def test_lookups_come_from_memory_and_refresh_in_the_background(make_services: ServicesFactory) -> None:
    services = await make_services(ALIAS_CACHE_SECONDS="3600")
    targets = [{"deployment": "teacher", "share": 50}, {"deployment": "student", "share": 50}]
    await services.aliases.put("bot", AliasParams.model_validate({"targets": targets}), by="test")
    request = ChatRequest.model_validate({"messages": [{"role": "user", "content": "hi"}], "user": "ann"})

    # Another worker: its first lookup reads storage once; the next ones do not read at all.
    other = AliasRoutes(blobs=JsonBlobs(container=services.aliases_container, label="alias"), ttl_seconds=3600)
    assert await other.route("bot", request) in {"teacher", "student"}
    assert await other.route("plain-deployment", request) is None
    await services.alias_blobs.delete("bot.json")  # behind its back: the answers keep coming from memory
    for _ in range(100):
        assert await other.route("bot", request) in {"teacher", "student"}
        assert await other.route("plain-deployment", request) is None

    stale = AliasRoutes(blobs=JsonBlobs(container=services.aliases_container, label="alias"), ttl_seconds=0.01)
    alone = AliasParams.model_validate({"targets": [{"deployment": "teacher", "share": 100}]})
    await services.aliases.put("bot2", alone, by="test")
    assert await stale.route("bot2", request) == "teacher"
    await services.aliases.delete("bot2")
    deadline = time.monotonic() + 10
    while await stale.route("bot2", request) is not None:  # the stale answer serves while a read refreshes it
        assert time.monotonic() < deadline
        await asyncio.sleep(0.01)
