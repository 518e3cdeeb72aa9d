"""The local host keeps delivering a queue through storage failures, as the Functions host keeps listening."""

from __future__ import annotations

import asyncio
import typing
import uuid
from typing import Any

import azure.functions as func
from azure.core.exceptions import ServiceResponseError
from azure.core.pipeline.transport import AioHttpTransport
from azure.storage.queue.aio import QueueServiceClient

from local_host.azurite import Azurite
from local_host.host import QueueRules, QueueWorker


class FailingReceives(AioHttpTransport):
    """The SDK's own transport, failing the first `failures` message receives (a busy Azurite timing out)."""

    def __init__(self, failures: int) -> None:
        super().__init__()
        self.failures = failures

    async def send(self, request: Any, **kwargs: Any) -> Any:
        if request.method == "GET" and "/messages" in request.url and self.failures > 0:
            self.failures -= 1
            raise ServiceResponseError("read timed out")
        return await super().send(request, **kwargs)


async def test_a_failed_receive_is_retried_and_delivery_goes_on(azurite: Azurite) -> None:
    name = f"q{uuid.uuid4().hex[:12]}"
    delivered: list[str] = []
    app = func.FunctionApp()

    @app.service_bus_queue_trigger(
        arg_name="msgs", queue_name=name, connection="ServiceBusConnection", cardinality=func.Cardinality.MANY
    )
    async def take(msgs: typing.List[func.ServiceBusMessage]) -> None:  # noqa: UP006 - the worker's form
        delivered.extend(msg.get_body().decode() for msg in msgs)

    transport = FailingReceives(failures=3)
    async with QueueServiceClient.from_connection_string(
        azurite.connection_string, transport=transport, retry_total=0
    ) as service:
        worker = QueueWorker(app.get_functions()[0], service, name, QueueRules(idle_poll_seconds=0.05))
        running = asyncio.create_task(worker.run())
        try:
            await _created(service, name)
            await service.get_queue_client(name).send_message("hello")
            async with asyncio.timeout(30):
                while not delivered:
                    assert not running.done(), running.exception()
                    await asyncio.sleep(0.05)
        finally:
            running.cancel()
            await asyncio.gather(running, return_exceptions=True)
    assert delivered == ["hello"]
    assert transport.failures == 0


async def test_a_many_message_trigger_takes_one_batch_at_a_time(azurite: Azurite) -> None:
    """As the Service Bus extension's batch loop: what arrives while a batch runs waits for the next one."""
    name = f"q{uuid.uuid4().hex[:12]}"
    batches: list[list[str]] = []
    running_now, most_at_once = 0, 0
    started, release = asyncio.Event(), asyncio.Event()
    app = func.FunctionApp()

    @app.service_bus_queue_trigger(
        arg_name="msgs", queue_name=name, connection="ServiceBusConnection", cardinality=func.Cardinality.MANY
    )
    async def take(msgs: typing.List[func.ServiceBusMessage]) -> None:  # noqa: UP006 - the worker's form
        nonlocal running_now, most_at_once
        running_now += 1
        most_at_once = max(most_at_once, running_now)
        batches.append(sorted(msg.get_body().decode() for msg in msgs))
        started.set()
        await release.wait()
        running_now -= 1

    async with QueueServiceClient.from_connection_string(azurite.connection_string) as service:
        worker = QueueWorker(app.get_functions()[0], service, name, QueueRules(idle_poll_seconds=0.05))
        running = asyncio.create_task(worker.run())
        try:
            await _created(service, name)
            queue = service.get_queue_client(name)
            await queue.send_message("first")
            async with asyncio.timeout(30):
                await started.wait()
            later = [f"later-{number}" for number in range(5)]
            for body in later:
                await queue.send_message(body)
            # several idle polls pass while the first batch holds its slot
            await asyncio.sleep(0.3)
            release.set()
            async with asyncio.timeout(30):
                while sum(len(batch) for batch in batches) < 6:
                    assert not running.done(), running.exception()
                    await asyncio.sleep(0.02)
        finally:
            running.cancel()
            await asyncio.gather(running, return_exceptions=True)
    assert batches == [["first"], later]
    assert most_at_once == 1


async def _created(service: QueueServiceClient, name: str) -> None:
    """The worker creates its queue as it starts; wait for it rather than race it."""
    async with asyncio.timeout(30):
        while True:
            names = [queue.name async for queue in service.list_queues(name_starts_with=name)]
            if name in names:
                return
            await asyncio.sleep(0.05)
