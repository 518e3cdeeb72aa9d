"""Serve a `func.FunctionApp` the way the Functions host does, for local runs and tests.

- HTTP triggers become Starlette routes with the same paths (`host.json` sets an empty prefix).
- Service Bus queue triggers are fed from an Azurite storage queue of the same name, with Service
  Bus's delivery rules: a failed delivery is retried after a delay, and after `max_delivery_count`
  attempts the message moves to `<queue>-deadletter` with the reason. Each host runs up to
  `concurrency` deliveries and takes a new message as soon as one ends; a many-message trigger runs
  one batch at a time, as the Service Bus extension's batch loop does, so what arrives meanwhile
  makes the next batch fuller. A running delivery's lock is
  renewed (as the Functions host does), so several hosts can share one queue as competing consumers
  and a killed host's messages reappear for another host once their lock runs out.
- Timer triggers fire on their NCRONTAB schedules (`past_due` set when a tick fires late).
- `GET /admin/functions` lists functions and `POST /admin/functions/{name}` runs a non-HTTP one now,
  like the host's admin API.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import logging
import os
import re
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import azure.functions as func
from azure.core.exceptions import AzureError, ResourceExistsError
from azure.functions.servicebus import ServiceBusMessage
from azure.functions.timer import TimerRequest
from azure.storage.queue.aio import QueueClient, QueueServiceClient
from croniter import croniter
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from blueprints.http_adapter import public_path
from shared.platform.job_queue import read_local_message

log = logging.getLogger("local_host")

_SETTING_REFERENCE = re.compile(r"%([^%]+)%")


def resolve(value: str) -> str:
    """Replace `%SETTING%` references the way the host resolves binding expressions."""

    def setting(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in os.environ:
            raise RuntimeError(f"Binding refers to app setting '{name}', which is not set")
        return os.environ[name]

    return _SETTING_REFERENCE.sub(setting, value)


@dataclass
class QueueRules:
    """Service Bus delivery rules the local queue reproduces (mirror the Bicep queue settings)."""

    max_delivery_count: int = 5
    lock_seconds: int = 300
    """A delivery holds its message this long past its last lock renewal (Service Bus `lockDuration`)."""
    retry_seconds: float = 1.0
    concurrency: int = 4
    """Single-message deliveries at once (host.json `maxConcurrentCalls`). A many-message trigger runs one
    batch at a time: the extension's batch receive loop "only executes functions at a concurrency level
    of 1" (azure-sdk-for-net, Microsoft.Azure.WebJobs.Extensions.ServiceBus, ServiceBusListener.cs)."""
    batch_size: int = 32
    """Messages one many-message delivery takes (Service Bus: `maxMessageBatchSize`, 1000 by default;
    a storage queue receive returns at most 32)."""
    idle_poll_seconds: float = 0.2


async def invoke(function: func.decorators.function_app.Function, value: Any) -> Any:
    """Call a registered function with its trigger argument."""
    user_function = function.get_user_function()
    trigger = function.get_trigger()
    result = user_function(**{trigger.name: value})
    return await result if inspect.isawaitable(result) else result


class _HeldMessage:
    """A message being delivered, with its latest pop receipt (a lock renewal replaces it)."""

    def __init__(self, message: Any) -> None:
        self.message = message
        self.lock = asyncio.Lock()


class QueueWorker:
    """Delivers one storage queue's messages to one Service Bus-triggered function."""

    def __init__(self, function: Any, service: QueueServiceClient, queue_name: str, rules: QueueRules) -> None:
        self.function = function
        self.queue: QueueClient = service.get_queue_client(queue_name)
        self.deadletter: QueueClient = service.get_queue_client(f"{queue_name}-deadletter")
        self.rules = rules

    async def run(self) -> None:
        for queue in (self.queue, self.deadletter):
            with contextlib.suppress(ResourceExistsError):
                await queue.create_queue()
        running: set[asyncio.Task[None]] = set()
        try:
            while True:
                free = (1 if self.batched else self.rules.concurrency) - len(running)
                messages = [] if free == 0 else await self._receive(self.rules.batch_size if self.batched else free)
                if messages is None:  # the receive failed: the queue is still there, try again
                    await asyncio.sleep(self.rules.idle_poll_seconds)
                    continue
                deliveries = (
                    ([self.deliver_batch(messages)] if messages else [])
                    if self.batched
                    else [self.deliver(message) for message in messages]
                )
                for delivery in deliveries:
                    task = asyncio.create_task(delivery)
                    running.add(task)
                    task.add_done_callback(running.discard)
                if free == 0:
                    await asyncio.wait(running, return_when=asyncio.FIRST_COMPLETED)
                elif not messages:
                    await asyncio.sleep(self.rules.idle_poll_seconds)
        finally:
            for task in running:
                task.cancel()
            await asyncio.gather(*running, return_exceptions=True)

    async def _receive(self, count: int) -> list[Any] | None:
        """Up to `count` messages; None when storage did not answer (logged: a busy Azurite times out,
        and the Functions host, too, keeps listening through a failed receive)."""
        try:
            return [
                message
                async for message in self.queue.receive_messages(
                    messages_per_page=count, max_messages=count, visibility_timeout=self.rules.lock_seconds
                )
            ]
        except AzureError as exc:
            log.warning(
                "%s: receiving from %s failed: %s", self.function.get_function_name(), self.queue.queue_name, exc
            )
            return None

    @property
    def batched(self) -> bool:
        """`cardinality=MANY`: the function takes every message received at once, as a list."""
        return str(getattr(self.function.get_trigger(), "cardinality", "") or "").lower().endswith("many")

    async def deliver_batch(self, messages: list[Any]) -> None:
        """Run one batch delivery, renewing every message's lock while it runs; as Service Bus does, a failure
        delivers the whole batch again."""
        helds = [_HeldMessage(message) for message in messages]
        renewing = [asyncio.create_task(self._renew_lock(held)) for held in helds]
        try:
            try:
                await invoke(self.function, [self._delivery(held.message) for held in helds])
            except Exception as exc:  # noqa: BLE001 - retried or dead-lettered message by message
                await asyncio.gather(*(self._settle_held(held, exc) for held in helds))
            else:
                await asyncio.gather(*(self._settle_held(held, None) for held in helds))
        finally:
            for task in renewing:
                task.cancel()
            await asyncio.gather(*renewing, return_exceptions=True)

    async def _settle_held(self, held: _HeldMessage, exc: Exception | None) -> None:
        async with held.lock:
            try:
                if exc is None:
                    await self.queue.delete_message(held.message)
                else:
                    await self._settle_failure(held.message, exc)
            except AzureError as error:  # the message reappears when its lock runs out, as with Service Bus
                log.warning("%s: message %s not settled: %s", self.function.get_function_name(), held.message.id, error)

    async def deliver(self, message: Any) -> None:
        """Run one delivery, renewing its lock while it runs; each renewal gives the message a new receipt."""
        held = _HeldMessage(message)
        renewing = asyncio.create_task(self._renew_lock(held))
        try:
            await self._deliver(held)
        finally:
            renewing.cancel()
            await asyncio.gather(renewing, return_exceptions=True)

    async def _renew_lock(self, held: _HeldMessage) -> None:
        while True:
            await asyncio.sleep(self.rules.lock_seconds / 3)
            async with held.lock:
                held.message = await self.queue.update_message(held.message, visibility_timeout=self.rules.lock_seconds)

    async def _deliver(self, held: _HeldMessage) -> None:
        try:
            await invoke(self.function, self._delivery(held.message))
        except Exception as exc:  # noqa: BLE001 - a failed delivery is retried or dead-lettered, as Service Bus does
            await self._settle_held(held, exc)
        else:
            await self._settle_held(held, None)

    @staticmethod
    def _delivery(message: Any) -> ServiceBusMessage:
        body, properties = read_local_message(message.content or "")
        return ServiceBusMessage(
            body=body.encode(),
            message_id=message.id,
            delivery_count=message.dequeue_count,
            enqueued_time_utc=message.inserted_on,
            content_type="application/json",
            application_properties=properties,
            user_properties={},
        )

    async def _settle_failure(self, message: Any, exc: Exception) -> None:
        name = self.function.get_function_name()
        if message.dequeue_count >= self.rules.max_delivery_count:
            log.error(
                "%s: message %s dead-lettered after %s deliveries: %s",
                name,
                message.id,
                message.dequeue_count,
                exc,
            )
            await self.deadletter.send_message(
                json.dumps(
                    {
                        "body": read_local_message(message.content or "")[0],
                        "message_id": message.id,
                        "delivery_count": message.dequeue_count,
                        "dead_letter_reason": "MaxDeliveryCountExceeded",
                        "dead_letter_error_description": f"{type(exc).__name__}: {exc}",
                    }
                )
            )
            await self.queue.delete_message(message)
        else:
            log.warning("%s: delivery %s of message %s failed: %s", name, message.dequeue_count, message.id, exc)
            await self.queue.update_message(message, visibility_timeout=int(self.rules.retry_seconds))


async def run_timer(function: Any, schedule: str, *, run_on_startup: bool) -> None:
    """Fire a timer function on its NCRONTAB schedule (seconds field first)."""
    name = function.get_function_name()
    ticks = croniter(schedule, datetime.now(UTC), second_at_beginning=True)
    if run_on_startup:
        await _fire(function, past_due=False)
    while True:
        due: datetime = ticks.get_next(datetime)
        await asyncio.sleep(max(0.0, (due - datetime.now(UTC)).total_seconds()))
        late = (datetime.now(UTC) - due).total_seconds()
        log.debug("%s: tick due %s", name, due.isoformat())
        await _fire(function, past_due=late > 1.0)


async def _fire(function: Any, *, past_due: bool) -> None:
    try:
        await invoke(function, TimerRequest(past_due=past_due))
    except Exception:
        log.exception("%s: timer run failed", function.get_function_name())


def build_host(
    app: func.FunctionApp,
    *,
    queue_connection: str | None,
    queue_rules: QueueRules | None = None,
    run_timers: bool = True,
    run_queues: bool = True,
    on_startup: Callable[[], Any] | None = None,
    on_shutdown: Callable[[], Any] | None = None,
) -> Starlette:
    """An ASGI app serving `app`'s functions; background delivery starts with its lifespan.

    `on_shutdown` runs after delivery stops, so the app's clients are closed once nothing uses them.
    """
    functions = {function.get_function_name(): function for function in app.get_functions()}
    rules = queue_rules or QueueRules()
    routes = [
        Route(public_path(_route(f)), _http_endpoint(f), methods=_methods(f)) for f in functions.values() if _is_http(f)
    ]
    routes += [
        Route("/admin/functions", _list_functions(functions), methods=["GET"]),
        Route("/admin/functions/{name}", _run_function(functions), methods=["POST"]),
    ]

    @contextlib.asynccontextmanager
    async def lifespan(_app: Starlette) -> AsyncIterator[None]:
        if on_startup is not None:
            await on_startup()
        tasks: list[asyncio.Task[None]] = []
        service = (
            QueueServiceClient.from_connection_string(queue_connection, use_env_settings=False)
            if queue_connection
            else None
        )
        for function in functions.values():
            trigger = function.get_trigger()
            if trigger.get_binding_name() == "serviceBusTrigger" and service is not None and run_queues:
                worker = QueueWorker(function, service, resolve(trigger.queue_name), rules)
                tasks.append(asyncio.create_task(worker.run(), name=function.get_function_name()))
            elif trigger.get_binding_name() == "timerTrigger" and run_timers:
                schedule = resolve(trigger.schedule)
                run = run_timer(function, schedule, run_on_startup=bool(trigger.run_on_startup))
                tasks.append(asyncio.create_task(run, name=function.get_function_name()))
        try:
            yield
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            if service is not None:
                await service.close()
            if on_shutdown is not None:
                await on_shutdown()

    return Starlette(routes=routes, lifespan=lifespan, exception_handlers={404: _unrouted, 405: _unrouted})


async def _unrouted(request: Request, exc: Exception) -> Response:
    """No function serves this path or method: answer in the OpenAI error shape."""
    status = getattr(exc, "status_code", 404)
    message = f"No route for {request.method} {request.url.path}."
    error = {"message": message, "type": "invalid_request_error", "param": None, "code": "not_found"}
    return JSONResponse({"error": error}, status_code=status, headers={"x-should-retry": "false"})


def _is_http(function: Any) -> bool:
    return function.get_trigger().get_binding_name() == "httpTrigger"


def _route(function: Any) -> str:
    return str(function.get_trigger().route or function.get_function_name())


def _methods(function: Any) -> list[str]:
    methods = function.get_trigger().methods or ["GET", "POST", "PUT", "PATCH", "DELETE"]
    return [str(getattr(method, "value", method)).upper() for method in methods]


def _http_endpoint(function: Any) -> Callable[[Request], Any]:
    async def endpoint(request: Request) -> Response:
        return await invoke(function, request)

    return endpoint


def _list_functions(functions: dict[str, Any]) -> Callable[[Request], Any]:
    async def list_functions(_request: Request) -> Response:
        return JSONResponse([_describe(name, function) for name, function in sorted(functions.items())])

    return list_functions


def _describe(name: str, function: Any) -> dict[str, Any]:
    trigger = function.get_trigger()
    described: dict[str, Any] = {"name": name, "trigger": trigger.get_binding_name()}
    if _is_http(function):
        described.update(route=_route(function), methods=_methods(function))
    elif trigger.get_binding_name() == "timerTrigger":
        described["schedule"] = trigger.schedule
    elif trigger.get_binding_name() == "serviceBusTrigger":
        described["queue_name"] = trigger.queue_name
    return described


def _run_function(functions: dict[str, Any]) -> Callable[[Request], Any]:
    async def run_function(request: Request) -> Response:
        function = functions.get(request.path_params["name"])
        if function is None or _is_http(function):
            return JSONResponse({"error": "no such non-HTTP function"}, status_code=404)
        kind = function.get_trigger().get_binding_name()
        if kind == "timerTrigger":
            await invoke(function, TimerRequest(past_due=False))
        else:
            body = await request.body()
            payload = json.loads(body or b"{}").get("input", "")
            message = ServiceBusMessage(
                body=payload.encode(), message_id="admin", application_properties={}, user_properties={}
            )
            await invoke(function, message)
        return Response(status_code=202)

    return run_function
