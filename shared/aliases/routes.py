"""Resolving an alias on the request path, from memory.

Every proxied call asks "is this deployment name an alias?", store=false calls too, so the answer
comes from a per-worker cache: a name is read from storage once (one blob GET, a miss cached as "not
an alias"), then served from memory; after ALIAS_CACHE_SECONDS the next request still gets the cached
answer while one background read refreshes it. A change made on this worker is seen at once; on the
others within ALIAS_CACHE_SECONDS.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time

from shared.aliases.records import ALIAS_NAME, AliasRecord
from shared.capture.proxy import Request
from shared.platform.errors import NotFound, StorageUnavailable
from shared.store.json_blobs import JsonBlobs

log = logging.getLogger(__name__)

_NAME = re.compile(ALIAS_NAME)
MAX_CACHED_NAMES = 4096
"""Names remembered per worker; callers choose deployment names, so the cache must not grow without end."""


def blob_name(alias: str) -> str:
    return f"{alias}.json"


def tallies_blob_name(alias: str) -> str:
    """The alias's online-eval tallies (`shared/aliases/online.py`), beside it in the same container."""
    return f"online/{alias}.json"


class AliasRoutes:
    def __init__(self, *, blobs: JsonBlobs, ttl_seconds: float) -> None:
        self._blobs = blobs
        self._ttl = ttl_seconds
        self._known: dict[str, tuple[float, AliasRecord | None]] = {}
        """name -> (when to read it again, the alias or None for 'not an alias')."""
        self._reading: dict[str, asyncio.Task[AliasRecord | None]] = {}

    async def route(self, deployment: str, request: Request) -> str | None:
        """The deployment that serves this request when `deployment` is an alias; None when it is not."""
        record = await self.alias(deployment)
        if record is None:
            return None
        user = (request.model_extra or {}).get("user")
        return record.choose(user=user, metadata=request.metadata)

    async def alias(self, name: str) -> AliasRecord | None:
        if not _NAME.fullmatch(name):
            return None
        known = self._known.get(name)
        if known is None:
            return await self._read(name)
        refresh_at, record = known
        if time.monotonic() >= refresh_at and name not in self._reading:
            self._start_read(name)
        return record

    def remember(self, name: str, record: AliasRecord | None) -> None:
        """What this worker just wrote, in force here at once."""
        if name not in self._known and len(self._known) >= MAX_CACHED_NAMES:
            self._known.pop(next(iter(self._known)))
        self._known[name] = (time.monotonic() + self._ttl, record)

    async def _read(self, name: str) -> AliasRecord | None:
        task = self._reading.get(name) or self._start_read(name)
        return await asyncio.shield(task)

    def _start_read(self, name: str) -> asyncio.Task[AliasRecord | None]:
        task = asyncio.get_running_loop().create_task(self._fetch(name))
        self._reading[name] = task
        task.add_done_callback(lambda _: self._reading.pop(name, None))
        return task

    async def _fetch(self, name: str) -> AliasRecord | None:
        try:
            data, _ = await self._blobs.get(blob_name(name), missing=name)
            record: AliasRecord | None = AliasRecord.model_validate_json(data)
        except NotFound:
            record = None
        except StorageUnavailable as exc:
            # Serving goes on: a name whose alias cannot be read is forwarded as it is (or as last known).
            log.warning("Alias '%s' could not be read (%r); using what this worker knew", name, exc.__cause__)
            known = self._known.get(name)
            record = None if known is None else known[1]
        self.remember(name, record)
        return record
