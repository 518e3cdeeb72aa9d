"""`python -m local_host`: run the Functions app locally (what `make run` starts).

Settings come from the environment, then from `local.settings.json` like `func start` reads them.
With `--azurite`, Azurite is started on its default ports with data kept in `.azurite/`.
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import os
import secrets
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
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("azure").setLevel(logging.WARNING)

    _load_local_settings(args.settings)
    azurite = None
    if args.azurite:
        location = ROOT / ".azurite"
        location.mkdir(exist_ok=True)
        azurite = start_azurite(ports=AZURITE_PORTS, location=location)
        os.environ["AzureWebJobsStorage"] = connection_string(*AZURITE_PORTS)
    try:
        return _serve(args)
    finally:
        if azurite is not None:
            azurite.stop()


def _serve(args: argparse.Namespace) -> int:
    key = os.environ.get("DISTILLERY_API_KEY")
    if not key:
        key = os.environ["DISTILLERY_API_KEY"] = secrets.token_urlsafe(32)
        _remember_key(args.settings, key)
    # Shown to a person at a terminal; output going to a file or a log collector never holds the key.
    shown = key if sys.stdout.isatty() else "DISTILLERY_API_KEY (printed only to a terminal)"
    function_app = importlib.import_module("function_app")
    from shared.services import get_services, upstream_label  # after the settings are in the environment

    services = get_services()
    label = upstream_label(services.settings)
    host = build_host(
        function_app.app,
        queue_connection=os.environ.get("AzureWebJobsStorage"),
        queue_rules=QueueRules(max_delivery_count=args.max_delivery_count, retry_seconds=args.retry_seconds),
        run_timers=not args.no_timers,
        run_queues=not args.no_queue_triggers,
        on_startup=lambda: _start(services),
    )
    endpoint = f"http://{args.host}:{args.port}"
    print(
        f"Distillery is listening on {endpoint}\n"
        f"  API key:   {shown}\n"
        f"  upstream:  {label}"
        + ("  (offline model: answers are echoes, not a real model)" if label == "offline" else "")
        + f"\n  AzureOpenAI(azure_endpoint='{endpoint}', api_key=KEY, api_version='2024-10-21')"
        f"\n  OpenAI(base_url='{endpoint}/openai/v1', api_key=KEY)",
        flush=True,
    )
    uvicorn.run(host, host=args.host, port=args.port, log_level="warning", lifespan="on")
    return 0


async def _start(services: Services) -> None:
    """Fail fast on an unusable credential (Azure Functions has no async start-up hook to do this),
    and stand in for Event Grid's blob-created events, which Azurite does not raise."""
    await services.check_credential()
    await services.ensure_storage()
    connection = os.environ.get("AzureWebJobsStorage")
    if connection:
        queue = QueueClient.from_connection_string(
            connection, services.settings.completion_events_queue, use_env_settings=False
        )
        events = LocalBlobEvents(queue, services.settings.completions_container)
        await events.start()
        services.store.on_captured = events.captured


def _load_local_settings(path: Path) -> None:
    """Apply `Values` from local.settings.json; the environment wins, as with Core Tools."""
    if not path.exists():
        return
    values = json.loads(path.read_text()).get("Values", {})
    for name, value in values.items():
        if value != "":
            os.environ.setdefault(name, str(value))


def _remember_key(path: Path, key: str) -> None:
    """Keep a generated key in local.settings.json (git-ignored) so it survives restarts."""
    if not path.exists():
        return
    settings = json.loads(path.read_text())
    settings.setdefault("Values", {})["DISTILLERY_API_KEY"] = key
    path.write_text(json.dumps(settings, indent=2) + "\n")


if __name__ == "__main__":
    sys.exit(main())
