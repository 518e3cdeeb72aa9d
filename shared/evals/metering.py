"""A run's model calls, metered against its token cap and bounded by its concurrency.

The cap used to be checked between batches, and grader calls had no bound: `max_total_tokens: 1`
with 300 criteria spent 252,000 tokens in 2,400 calls. Now every call (candidate, grader,
embeddings) first takes a slot of the run's concurrency, then reserves an estimate of its tokens;
it may start only while the tokens used plus those reserved stay under the cap, else it is refused
with `TokenCapReached` and never reaches the upstream. When it returns, its reservation becomes
the usage the upstream reported. So a run overruns its cap by at most the calls already in flight
when it is reached, and every call that spent tokens is counted (`take_usage`), whether or not
its item is ever written.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field
from typing import Any

from openai.types.chat import ChatCompletion

from shared.upstream.model_calls import ModelCalls, UpstreamCallFailed

_CHARS_PER_TOKEN = 4


class TokenCapReached(UpstreamCallFailed):
    """A call the run's token cap leaves no room for: refused before it is sent."""

    def __init__(self, cap: int) -> None:
        super().__init__(
            f"The run's token cap ({cap}) was reached before this call could be made.",
            upstream_status=429,
            code="token_cap_reached",
        )


@dataclass
class TokenMeter:
    cap: int
    used: int
    """Tokens counted in the run's state plus those this delivery spent since."""
    reserved: int = 0
    usage: dict[str, dict[str, int]] = field(default_factory=dict)
    """Deployment -> usage spent and not yet saved in the run's state (`take_usage`)."""

    @property
    def exhausted(self) -> bool:
        return self.used + self.reserved >= self.cap

    def reserve(self, estimate: int) -> int:
        if self.exhausted:
            raise TokenCapReached(self.cap)
        amount = max(1, estimate)
        self.reserved += amount
        return amount

    def settle(self, reservation: int, deployment: str, spent: dict[str, int] | None) -> None:
        """Replace a reservation by what the call used (nothing when it failed before an answer)."""
        self.reserved -= reservation
        if spent is None:
            return
        self.used += spent.get("total_tokens", 0)
        total = self.usage.setdefault(deployment, {"invocation_count": 0})
        for key, value in spent.items():
            total[key] = total.get(key, 0) + value
        total["invocation_count"] += 1

    def take_usage(self) -> dict[str, dict[str, int]]:
        """The usage spent since the last take, to add to the run's state."""
        taken, self.usage = self.usage, {}
        return taken


@dataclass
class MeteredCalls(ModelCalls):
    """`ModelCalls` for one run's delivery: a slot of its concurrency and a token reservation per call."""

    meter: TokenMeter = field(default_factory=lambda: TokenMeter(cap=0, used=0))
    gate: asyncio.Semaphore = field(default_factory=lambda: asyncio.Semaphore(1))

    async def chat(self, *, deployment: str, body: dict[str, Any]) -> ChatCompletion:
        limit = body.get("max_completion_tokens") or body.get("max_tokens") or 0
        estimate = _tokens(body.get("messages")) + (limit if isinstance(limit, int) else 0)
        async with self.gate:
            reservation = self.meter.reserve(estimate)
            spent: dict[str, int] | None = None
            try:
                completion = await super().chat(deployment=deployment, body=body)
                spent = _usage(completion)
            finally:
                self.meter.settle(reservation, deployment, spent)
        return completion

    async def respond(self, *, deployment: str, body: dict[str, Any]) -> ChatCompletion:
        limit = body.get("max_output_tokens") or 0
        estimate = _tokens(body.get("input")) + (limit if isinstance(limit, int) else 0)
        async with self.gate:
            reservation = self.meter.reserve(estimate)
            spent: dict[str, int] | None = None
            try:
                completion = await super().respond(deployment=deployment, body=body)
                spent = _usage(completion)
            finally:
                self.meter.settle(reservation, deployment, spent)
        return completion

    async def embed(self, *, deployment: str, texts: list[str]) -> list[list[float]]:
        estimate = sum(len(text) for text in texts) // _CHARS_PER_TOKEN
        async with self.gate:
            reservation = self.meter.reserve(estimate)
            spent: dict[str, int] | None = None
            try:
                vectors = await super().embed(deployment=deployment, texts=texts)
                spent = {"prompt_tokens": reservation, "total_tokens": reservation}  # an estimate: no usage kept
            finally:
                self.meter.settle(reservation, deployment, spent)
        return vectors


def _tokens(value: Any) -> int:
    return len(json.dumps(value, ensure_ascii=False)) // _CHARS_PER_TOKEN if value is not None else 0


def _usage(completion: ChatCompletion) -> dict[str, int]:
    usage = completion.usage
    if usage is None:
        return {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0, "cached_tokens": 0}
    details = usage.prompt_tokens_details
    return {
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        "total_tokens": usage.total_tokens,
        "cached_tokens": (details.cached_tokens or 0) if details else 0,
    }
