"""Shared fixtures: Azurite and the fake upstream start once per session on free ports; hosts run
`python -m local_host` as a subprocess, the way `make run` does, each with its own storage names."""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from openai import AzureOpenAI, OpenAI

from local_host.azurite import ROOT, Azurite, free_port, start_azurite
from tests.fakes import FakeUpstream

API_VERSION = "2024-10-21"
_SETTINGS_TO_CLEAR = ("AZURE_OPENAI_ENDPOINT", "AZURE_OPENAI_API_KEY", "OPENAI_BASE_URL", "OPENAI_API_KEY")


@pytest.fixture(scope="session")
def azurite() -> Iterator[Azurite]:
    emulator = start_azurite()
    yield emulator
    emulator.stop()


@pytest.fixture(scope="session")
def upstream() -> Iterator[FakeUpstream]:
    fake = FakeUpstream().start()
    yield fake
    fake.stop()


@pytest.fixture
def fake_upstream(upstream: FakeUpstream) -> FakeUpstream:
    """The session's fake upstream with no leftover script or recorded requests."""
    upstream.reset()
    return upstream


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
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def start_host(storage_connection: str, log_dir: Path, **settings: str) -> RunningHost:
    """Start the local host with its own container and table names, and wait until it is ready."""
    port = free_port()
    suffix = uuid.uuid4().hex[:10]
    env = {name: value for name, value in os.environ.items() if name not in _SETTINGS_TO_CLEAR}
    env.update(
        AzureWebJobsStorage=storage_connection,
        DISTILLERY_API_KEY=secrets.token_urlsafe(16),
        COMPLETIONS_CONTAINER=f"completions{suffix}",
        COMPLETION_INDEX_TABLE=f"index{suffix}",
        DATASETS_CONTAINER=f"datasets{suffix}",
        DATASET_JOBS_QUEUE=f"dataset-jobs-{suffix}",
        PYTHONUNBUFFERED="1",
    )
    env.update(settings)
    log_path = log_dir / f"host-{port}.log"
    with log_path.open("wb") as log_file:
        process = subprocess.Popen(
            [sys.executable, "-m", "local_host", "--port", str(port), "--settings", "/nonexistent", "--no-timers"],
            cwd=ROOT,
            env=env,
            stdout=log_file,
            stderr=subprocess.STDOUT,
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


@pytest.fixture(scope="session")
def host(azurite: Azurite, upstream: FakeUpstream, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningHost]:
    """The default host: fake upstream, storing on."""
    running = start_host(azurite.connection_string, tmp_path_factory.mktemp("host"), OPENAI_BASE_URL=upstream.base_url)
    yield running
    running.stop()


@pytest.fixture
def tag() -> str:
    """A value unique to this test, put in metadata so its completions are its own."""
    return f"t-{uuid.uuid4().hex[:12]}"
