"""A storage transport that notes each request: what a piece of code asks of storage, counted at the
layer every blob and table request passes through, with nothing of the code under test replaced."""

from __future__ import annotations

import asyncio
from typing import Any
from urllib.parse import urlparse

from azure.core.pipeline.transport import AioHttpTransport, AsyncHttpTransport


class CountingTransport(AsyncHttpTransport):
    """The SDK's aiohttp transport, noting each request it sends (method and path, and its body in
    `bodies`); while `released` is cleared, requests wait for it to be set before they go out."""

    def __init__(self) -> None:
        self._inner = AioHttpTransport()
        self.sent: list[tuple[str, str]] = []
        self.bodies: list[bytes] = []
        self.released = asyncio.Event()
        self.released.set()

    async def send(self, request: Any, **kwargs: Any) -> Any:
        self.sent.append((request.method, urlparse(request.url).path))
        body = getattr(request, "content", None) or b""
        self.bodies.append(body.encode() if isinstance(body, str) else bytes(body))
        await self.released.wait()
        return await self._inner.send(request, **kwargs)

    async def open(self) -> None:
        await self._inner.open()

    async def close(self) -> None:
        await self._inner.close()

    async def __aenter__(self) -> CountingTransport:
        await self._inner.__aenter__()
        return self

    async def __aexit__(self, *args: Any) -> None:
        await self._inner.__aexit__(*args)
