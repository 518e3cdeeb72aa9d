"""Shared fixtures: Azurite and the fake upstream start once per session on free ports; hosts run
`python -m local_host` as a subprocess, the way `make run` does, each with its own storage names."""

from __future__ import annotations

import importlib
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import pytest

from local_host.azurite import Azurite, start_azurite
from local_host.process import UPSTREAM_SETTINGS, RunningHost, start_host
from shared.platform.settings import Settings, get_settings
from shared.services import Services
from tests.fakes import FakeUpstream

__all__ = ["RunningHost", "start_host"]


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


@pytest.fixture(scope="session")
def host(azurite: Azurite, upstream: FakeUpstream, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningHost]:
    """The default host: fake upstream, storing on."""
    with start_host(
        azurite.connection_string, tmp_path_factory.mktemp("host"), OPENAI_BASE_URL=upstream.base_url
    ) as running:
        yield running


@pytest.fixture(scope="session")
def registered_functions() -> list[Any]:
    """`function_app.app.get_functions()`, once per session: the app refuses a second build."""
    with pytest.MonkeyPatch.context() as env:
        env.setenv("AzureWebJobsStorage", "UseDevelopmentStorage=true")
        get_settings.cache_clear()
        functions = importlib.import_module("function_app").app.get_functions()
    get_settings.cache_clear()
    return list(functions)


ServicesFactory = Callable[..., Awaitable[Services]]


@pytest.fixture
async def make_services(azurite: Azurite) -> AsyncIterator[ServicesFactory]:
    """Build the app's real `Services` on Azurite with names of their own; settings override by app-setting name."""
    built: list[Services] = []

    async def make(**settings: str | None) -> Services:
        suffix = uuid.uuid4().hex[:10]
        values = {
            "AzureWebJobsStorage": azurite.connection_string,
            "COMPLETIONS_CONTAINER": f"completions{suffix}",
            "COMPLETION_INDEX_TABLE": f"index{suffix}",
            "REPORTS_CONTAINER": f"reports{suffix}",
            "DATASETS_CONTAINER": f"datasets{suffix}",
            "DATASET_JOBS_QUEUE": f"dataset{suffix}",
            "PURGE_JOBS_QUEUE": f"purge{suffix}",
            "EVALS_CONTAINER": f"evals{suffix}",
            "EVAL_JOBS_QUEUE": f"evals{suffix}",
            "FINE_TUNING_CONTAINER": f"finetuning{suffix}",
            "FINE_TUNING_JOBS_QUEUE": f"finetuning{suffix}",
            "ALIASES_CONTAINER": f"aliases{suffix}",
            "ONLINE_EVALS_QUEUE": f"online{suffix}",
            **dict.fromkeys(UPSTREAM_SETTINGS),
            **settings,
        }
        services = Services(Settings(**values))  # type: ignore[arg-type]
        await services.ensure_storage()
        built.append(services)
        return services

    yield make
    for services in built:
        await services.close()


@pytest.fixture(scope="session")
def functions(registered_functions: list[Any]) -> dict[str, Any]:
    """The registered functions by name."""
    return {function.get_function_name(): function for function in registered_functions}


@pytest.fixture
def tag() -> str:
    """A value unique to this test, put in metadata so its completions are its own."""
    return f"t-{uuid.uuid4().hex[:12]}"
