"""`python -m local_host`: run the Functions app locally (what `make run` starts).

Settings come from the environment, then from `local.settings.json` like `func start` reads them.
With `--azurite`, Azurite is started on its default ports with data kept in `.azurite/`.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import importlib
import json
import logging
import os
import secrets
import signal
import socket
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import uvicorn
from azure.storage.queue.aio import QueueClient

from local_host.azurite import ROOT, connection_string, start_azurite
from local_host.blob_events import LocalBlobEvents
from local_host.host import QueueRules, build_host

if TYPE_CHECKING:
    from shared.services import Services

AZURITE_PORTS = (10000, 10001, 10002)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m local_host", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=7071)
    parser.add_argument("--settings", type=Path, default=ROOT / "local.settings.json")
    parser.add_argument("--azurite", action="store_true", help="start Azurite on 10000-10002, data in .azurite/")
    parser.add_argument("--no-timers", action="store_true", help="do not fire timer triggers on schedule")
    parser.add_argument(
        "--no-queue-triggers", action="store_true", help="deliver no queue messages (they wait for another host)"
    )
    parser.add_argument("--max-delivery-count", type=int, default=int(os.environ.get("LOCAL_MAX_DELIVERY_COUNT", 5)))
    parser.add_argument("--retry-seconds", type=float, default=float(os.environ.get("LOCAL_RETRY_SECONDS", 1)))
    parser.add_argument(
        "--lock-seconds",
        type=int,
        default=int(os.environ.get("LOCAL_LOCK_SECONDS", 300)),
        help="message lock duration: a killed host's messages are redelivered this long after its last renewal",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("azure").setLevel(logging.WARNING)

    key_origin = "the DISTILLERY_API_KEY environment variable" if os.environ.get("DISTILLERY_API_KEY") else None
    _load_local_settings(args.settings)
    try:
        listener = _bind(args.host, args.port)
    except OSError as exc:
        print(f"Distillery cannot listen on {args.host}:{args.port}: {_why(exc)}", file=sys.stderr, flush=True)
        return 1
    azurite = None
    if args.azurite:
        location = ROOT / ".azurite"
        location.mkdir(exist_ok=True)
        azurite = start_azurite(ports=AZURITE_PORTS, location=location)
        os.environ["AzureWebJobsStorage"] = connection_string(*AZURITE_PORTS)
    try:
        return _serve(args, listener, key_origin=key_origin)
    finally:
        listener.close()
        if azurite is not None:
            azurite.stop()


def _bind(host: str, port: int) -> socket.socket:
    """The listening socket, bound before anything is announced (as uvicorn binds its own)."""
    # IPPROTO_TCP named, not left 0: asyncio sets TCP_NODELAY only on sockets whose proto says TCP, and
    # without it every response written in two parts (head, body) waits ~40 ms for a delayed ACK.
    listener = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # a restart may reuse a port in TIME_WAIT
    try:
        listener.bind((host, port))
        listener.listen(2048)
    except OSError:
        listener.close()
        raise
    listener.set_inheritable(True)
    return listener


def _why(exc: OSError) -> str:
    if exc.errno == errno.EADDRINUSE:
        return "the port is in use (stop what holds it, or pass --port)"
    return exc.strerror or str(exc)


def _serve(args: argparse.Namespace, listener: socket.socket, *, key_origin: str | None) -> int:
    key = os.environ.get("DISTILLERY_API_KEY")
    if key:
        key_origin = key_origin or f"{args.settings} (Values.DISTILLERY_API_KEY)"
    else:
        key = os.environ["DISTILLERY_API_KEY"] = secrets.token_urlsafe(32)
        key_origin = f"{args.settings} (Values.DISTILLERY_API_KEY)" if _remember_key(args.settings, key) else None
    # Shown to a person at a terminal; output going to a file or a log collector never holds the key.
    if sys.stdout.isatty():
        shown = key
    elif key_origin:
        shown = f"not shown (no terminal); it is in {key_origin}"
    else:
        shown = "not shown (no terminal) and kept nowhere: set DISTILLERY_API_KEY to choose one"
    function_app = importlib.import_module("function_app")
    from shared.services import get_services, upstream_label  # after the settings are in the environment

    services = get_services()
    label = upstream_label(services.settings)
    endpoint = f"http://{args.host}:{args.port}"

    events: list[LocalBlobEvents] = []

    async def start() -> None:
        events.extend(await _start(services))
        print(
            f"Distillery is listening on {endpoint}\n"
            f"  API key:   {shown}\n"
            f"  upstream:  {label}"
            + ("  (offline model: answers are echoes, not a real model)" if label == "offline" else "")
            + f"\n  AzureOpenAI(azure_endpoint='{endpoint}', api_key=KEY, api_version='2024-10-21')"
            f"\n  OpenAI(base_url='{endpoint}/openai/v1', api_key=KEY)",
            flush=True,
        )

    async def stop() -> None:
        for posting in events:
            await posting.close()
        await services.close()

    host = build_host(
        function_app.app,
        queue_connection=os.environ.get("AzureWebJobsStorage"),
        queue_rules=QueueRules(
            max_delivery_count=args.max_delivery_count, retry_seconds=args.retry_seconds, lock_seconds=args.lock_seconds
        ),
        run_timers=not args.no_timers,
        run_queues=not args.no_queue_triggers,
        on_startup=start,
        on_shutdown=stop,
    )
    # Keep-alive as long as the Functions host's Kestrel (130 s): with uvicorn's 5 s, a client reusing a
    # pooled connection races the server closing it and gets a reset (httpx.ReadError) under load.
    config = uvicorn.Config(host, log_level="warning", lifespan="on", timeout_keep_alive=130)
    # uvicorn re-raises the signal that stopped it once it has shut down; SIGTERM's default action would
    # then end the process before `main`'s clean-up (stopping Azurite) runs, so it ends the run as Ctrl-C does.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    with contextlib.suppress(KeyboardInterrupt):  # Ctrl-C is how a local run ends (uvicorn.run does the same)
        uvicorn.Server(config).run(sockets=[listener])
    return 0


async def _start(services: Services) -> list[LocalBlobEvents]:
    """Fail fast on an unusable credential (Azure Functions has no async start-up hook to do this),
    and stand in for Event Grid's blob-created events, which Azurite does not raise."""
    await services.check_credential()
    await services.ensure_storage()
    connection = os.environ.get("AzureWebJobsStorage")
    if not connection:
        return []
    queue = QueueClient.from_connection_string(
        connection, services.settings.completion_events_queue, use_env_settings=False
    )
    events = LocalBlobEvents(queue, services.settings.completions_container)
    await events.start()
    services.store.on_captured = events.captured
    return [events]


def _load_local_settings(path: Path) -> None:
    """Apply `Values` from local.settings.json; the environment wins, as with Core Tools."""
    if not path.exists():
        return
    values = json.loads(path.read_text()).get("Values", {})
    for name, value in values.items():
        if value != "":
            os.environ.setdefault(name, str(value))


def _remember_key(path: Path, key: str) -> bool:
    """Keep a generated key in local.settings.json (git-ignored) so it survives restarts; False with no such file."""
    if not path.exists():
        return False
    settings = json.loads(path.read_text())
    settings.setdefault("Values", {})["DISTILLERY_API_KEY"] = key
    path.write_text(json.dumps(settings, indent=2) + "\n")
    return True


if __name__ == "__main__":
    sys.exit(main())
