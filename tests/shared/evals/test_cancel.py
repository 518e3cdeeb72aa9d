"""Cancel answers the run `canceled` at once, and nothing is spent after it: the window sees it at its
next group write, the items in flight end and are counted, no later item starts."""

from __future__ import annotations

import asyncio

from shared.evals.records import RunStatus
from shared.services import Services
from tests.fakes import FakeUpstream, Reply
from tests.shared.evals.test_service import (
    candidate_calls,
    new_eval,
    output_indexes,
    receive,
    rerun,
    services,
    start,
    state,
    with_limits,
)

__all__ = ["services"]


async def test_cancel_mid_run_answers_canceled_and_starts_no_more_calls(
    services: Services, fake_upstream: FakeUpstream
) -> None:
    record = await new_eval(services)
    run = await start(services, record, rerun(12))
    body = await receive(services)
    assert body is not None
    fake_upstream.script(*[Reply(delay_seconds=0.05)] * 12)
    engine = with_limits(services, save_every_seconds=0.0)  # a group write (and a cancel check) per item
    delivery = asyncio.create_task(engine.handle(body, delivery_count=1))
    for _ in range(500):
        if (await state(services, run)).next_index >= 2 or delivery.done():
            break
        await asyncio.sleep(0.01)
    canceled = await services.evals.cancel_run(run.eval_id, run.id, owner=None)
    assert canceled.status is RunStatus.CANCELED
    asked = len(candidate_calls(fake_upstream))
    await delivery
    done = await state(services, run)
    assert done.status is RunStatus.CANCELED and done.next_index < 12
    # at most the items in flight: the window (2 x concurrency 2)
    assert len(candidate_calls(fake_upstream)) <= asked + 4
    assert done.result_counts.total == done.next_index  # and it was counted
    assert await output_indexes(services, run) == list(range(done.next_index))
