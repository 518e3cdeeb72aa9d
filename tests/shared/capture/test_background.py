"""Background responses: answered at once as queued, kept by the polls once finished (each poll run by
hand here, not waited out on the queue), a redelivered poll that keeps nothing twice, and a failed one
kept as the upstream ended it."""

from __future__ import annotations

import json

import pytest

from local_host.azurite import Azurite
from shared.capture.background import BackgroundMessage, BackgroundResponses
from shared.capture.responses_request import ResponsesRequest
from shared.platform.access import Caller, Right
from shared.platform.errors import InvalidRequest
from shared.services import Services
from shared.upstream.client import azure_openai_url
from tests.conftest import ServicesFactory
from tests.fakes import FakeUpstream

ANN = Caller(name="ann", owner="key:ann", rights=frozenset({Right.INFERENCE, Right.READ}))


@pytest.fixture
async def services(azurite: Azurite, make_services: ServicesFactory, fake_upstream: FakeUpstream) -> Services:
    return await make_services(OPENAI_BASE_URL=fake_upstream.base_url)


def poller(services: Services) -> BackgroundResponses:
    background = services.background_responses
    assert background is not None
    services.capture  # registers the capture as the keeper  # noqa: B018
    return background


async def create(services: Services, text: str) -> dict[str, object]:
    request = ResponsesRequest.model_validate(
        {"model": "gpt-4o-mini", "input": text, "background": True, "metadata": {"tag": text}}
    )
    reply = await services.capture.complete(request, deployment="gpt-4o-mini", caller=ANN)
    assert reply.status == 200 and reply.headers["x-distillery-stored"] == "pending"
    answer: dict[str, object] = json.loads(reply.body)
    return answer


async def test_a_background_response_is_kept_once_a_poll_finds_it_finished(
    services: Services, fake_upstream: FakeUpstream
) -> None:
    answer = await create(services, "later please")
    assert answer["status"] == "queued" and str(answer["id"]).startswith("resp_")
    assert fake_upstream.requests[-1]["body"]["store"] is True  # background runs only for stored responses
    background = poller(services)
    message = BackgroundMessage(background_response=str(answer["id"]))

    first = await background.run(message)
    assert first.state == "pending"  # the upstream said in_progress
    done = await background.run(BackgroundMessage(background_response=first.id, part=first.polls))

    assert done.state == "kept"
    kept = await services.store.get(first.id, owner="key:ann")
    assert kept.owner == "key:ann" and kept.metadata == {"tag": "later please"}
    assert kept.response["status"] == "completed" and kept.response["id"] == first.id
    assert kept.as_response()["output"][0]["content"][0]["text"] == "fake: later please"

    polls = fake_upstream.background[done.upstream_id]["polls"]
    again = await background.run(BackgroundMessage(background_response=first.id, part=first.polls))  # redelivered
    assert again.state == "kept" and fake_upstream.background[done.upstream_id]["polls"] == polls


async def test_a_failed_background_response_is_kept_as_failed(services: Services, fake_upstream: FakeUpstream) -> None:
    fake_upstream.background_failure = {"code": "server_error", "message": "the model fell over"}
    answer = await create(services, "doomed")
    background = poller(services)
    record = await background.run(BackgroundMessage(background_response=str(answer["id"])))
    record = await background.run(BackgroundMessage(background_response=record.id, part=record.polls))

    assert record.state == "kept"
    kept = await services.store.get(record.id)
    assert kept.response["status"] == "failed" and kept.response["error"]["message"] == "the model fell over"


async def test_a_background_response_still_running_after_the_last_poll_is_given_up(
    services: Services, fake_upstream: FakeUpstream
) -> None:
    answer = await create(services, "slow")
    background = poller(services)
    background.max_polls = 1

    record = await background.run(BackgroundMessage(background_response=str(answer["id"])))

    assert record.state == "gave_up" and "after 1 polls" in (record.reason or "")


async def test_the_offline_model_refuses_background_clearly(make_services: ServicesFactory, azurite: Azurite) -> None:
    services = await make_services()
    request = ResponsesRequest.model_validate({"model": "m", "input": "x", "background": True})
    with pytest.raises(InvalidRequest) as refused:
        await services.capture.complete(request, deployment="m", caller=ANN)
    assert refused.value.param == "background" and "offline" in refused.value.message


def test_a_poll_of_azure_openai_goes_to_the_v1_route() -> None:
    url = azure_openai_url("https://x.openai.azure.com", "2024-10-21")("gpt-4o", "responses/resp_1")
    assert url == "https://x.openai.azure.com/openai/v1/responses/resp_1"
