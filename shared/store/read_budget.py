"""A byte budget for stored documents read at once, so memory is bounded by bytes, not by count.

A parsed document costs 20-45 times its JSON size in memory (a 3.8 MiB request parses to ~86 MB),
so every path that reads many documents (lists, dataset builds, purges, retention, eval items) takes
their sizes from one budget per worker before it parses them. Waiters are served first come, first
served, so a large document is not starved by a stream of small ones; a document larger than the
whole budget waits until nothing else is held and is then read alone.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager


class ByteBudget:
    """Counts the bytes held; `acquire` waits while they would pass `capacity`."""

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError("a byte budget needs a capacity of at least 1 byte")
        self.capacity = capacity
        self.in_flight = 0
        """Bytes held right now."""
        self.peak = 0
        """The most bytes held at once since this budget was made (for tests and measurements)."""
        self._waiters: deque[tuple[int, asyncio.Future[None]]] = deque()

    def clamp(self, size: int) -> int:
        """What a request for `size` bytes is counted as: at most the whole budget."""
        return max(0, min(size, self.capacity))

    def fits(self, size: int) -> bool:
        """Whether `acquire(size)` would return at once."""
        return not self._waiters and self.in_flight + self.clamp(size) <= self.capacity

    async def acquire(self, size: int) -> int:
        """Hold `size` bytes (clamped to the capacity), waiting for room; returns what to `release`."""
        amount = self.clamp(size)
        if self.fits(amount):
            self._take(amount)
            return amount
        granted: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        waiter = (amount, granted)
        self._waiters.append(waiter)
        try:
            await granted
        except asyncio.CancelledError:
            if granted.done() and not granted.cancelled():
                self.release(amount)  # granted as the task was cancelled: give it back
            else:
                if waiter in self._waiters:  # a release may have dropped it already, as cancelled
                    self._waiters.remove(waiter)
                self._wake()
            raise
        return amount

    def force(self, size: int) -> int:
        """Hold `size` more bytes without waiting: for a reader already holding part of the budget, whose
        document turned out larger than announced (waiting there could deadlock)."""
        amount = max(0, size)
        self._take(amount)
        return amount

    def release(self, amount: int) -> None:
        self.in_flight -= amount
        self._wake()

    @asynccontextmanager
    async def hold(self, size: int) -> AsyncIterator[int]:
        amount = await self.acquire(size)
        try:
            yield amount
        finally:
            self.release(amount)

    def _take(self, amount: int) -> None:
        self.in_flight += amount
        self.peak = max(self.peak, self.in_flight)

    def _wake(self) -> None:
        while self._waiters:
            amount, granted = self._waiters[0]
            if self.in_flight + amount > self.capacity and self.in_flight > 0:
                return
            self._waiters.popleft()
            if not granted.done():
                self._take(amount)
                granted.set_result(None)
