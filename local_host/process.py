"""Run the local host as a child process (for tests and benchmarks), ready when `/api/health` is."""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import httpx
from openai import AzureOpenAI, OpenAI

from local_host.azurite import ROOT, free_port, stop_process

API_VERSION = "2024-10-21"
UPSTREAM_SETTINGS = ("AZURE_OPENAI_ENDPOINT", "AZURE_OPENAI_API_KEY", "OPENAI_BASE_URL", "OPENAI_API_KEY")


@dataclass
class RunningHost:
    url: str
    key: str
    env: dict[str, str]
    process: subprocess.Popen[bytes]
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def azure_client(self, **options: object) -> AzureOpenAI:
        return AzureOpenAI(azure_endpoint=self.url, api_key=self.key, api_version=API_VERSION, **options)  # type: ignore[arg-type]

    def openai_client(self, **options: object) -> OpenAI:
        return OpenAI(base_url=f"{self.url}/openai/v1", api_key=self.key, **options)  # type: ignore[arg-type]

    def http(self, key: str | None = None) -> httpx.Client:
        headers = {"api-key": key if key is not None else self.key}
        return httpx.Client(base_url=self.url, headers=headers, timeout=30)

    def stop(self) -> None:
        stop_process(self.process)

    def __enter__(self) -> RunningHost:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stop()


def start_host(storage_connection: str, log_dir: Path, *extra_args: str, **settings: str) -> RunningHost:
    """Start `python -m local_host` on a free port with its own containers, table and queues
    (a queue of its own stops hosts taking each other's messages).

    Upstream settings are cleared from the inherited environment, so only `settings` choose one.
    """
    port = free_port()
    suffix = uuid.uuid4().hex[:10]
    env = {name: value for name, value in os.environ.items() if name not in UPSTREAM_SETTINGS}
    env.update(
        AzureWebJobsStorage=storage_connection,
        DISTILLERY_API_KEY=secrets.token_urlsafe(16),
        COMPLETIONS_CONTAINER=f"completions{suffix}",
        COMPLETION_INDEX_TABLE=f"index{suffix}",
        REPORTS_CONTAINER=f"reports{suffix}",
        DATASETS_CONTAINER=f"datasets{suffix}",
        DATASET_JOBS_QUEUE=f"dataset{suffix}",
        PURGE_JOBS_QUEUE=f"purge{suffix}",
        COMPLETION_EVENTS_QUEUE=f"events{suffix}",
        EVALS_CONTAINER=f"evals{suffix}",
        EVAL_JOBS_QUEUE=f"evals{suffix}",
        FINE_TUNING_CONTAINER=f"finetuning{suffix}",
        FINE_TUNING_JOBS_QUEUE=f"finetuning{suffix}",
        ALIASES_CONTAINER=f"aliases{suffix}",
        ONLINE_EVALS_QUEUE=f"online{suffix}",
        FINE_TUNING_TRACK_SCHEDULE="0 */5 * * * *",
        PYTHONUNBUFFERED="1",
    )
    env.update(settings)
    log_path = log_dir / f"host-{port}.log"
    command = [sys.executable, "-m", "local_host", "--port", str(port), "--settings", "/nonexistent", "--no-timers"]
    with log_path.open("wb") as log_file:
        process = subprocess.Popen(
            [*command, *extra_args], cwd=ROOT, env=env, stdout=log_file, stderr=subprocess.STDOUT
        )
    host = RunningHost(f"http://127.0.0.1:{port}", env["DISTILLERY_API_KEY"], env, process, log_path)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"local host exited early:\n{host.log()}")
        try:
            if httpx.get(f"{host.url}/api/health", timeout=1).status_code == 200:
                return host
        except httpx.TransportError:
            time.sleep(0.05)
    host.stop()
    raise RuntimeError(f"local host did not become ready:\n{host.log()}")
