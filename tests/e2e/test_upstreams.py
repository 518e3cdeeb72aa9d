"""Upstream choices and failures: Azure OpenAI with a key, model mapping, unreachable and slow upstreams."""

from __future__ import annotations

from collections.abc import Iterator

import openai
import pytest

from local_host.azurite import Azurite, free_port
from tests.conftest import RunningHost, start_host
from tests.e2e.polling import wait_listed
from tests.fakes import FakeUpstream, Reply

MESSAGES = [{"role": "user", "content": "hello there"}]


@pytest.fixture(scope="module")
def azure_host(
    azurite: Azurite, upstream: FakeUpstream, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningHost]:
    with start_host(
        azurite.connection_string,
        tmp_path_factory.mktemp("azure"),
        AZURE_OPENAI_ENDPOINT=upstream.url,
        AZURE_OPENAI_API_KEY="upstream-secret",
        AZURE_OPENAI_API_VERSION="2024-10-21",
        UPSTREAM_TIMEOUT_SECONDS="1",
    ) as running:
        yield running


def test_azure_upstream_gets_the_deployment_route_and_key(
    azure_host: RunningHost, fake_upstream: FakeUpstream, tag: str
) -> None:
    client = azure_host.azure_client()
    created = client.chat.completions.create(model="my-gpt", store=True, metadata={"tag": tag}, messages=MESSAGES)
    seen = fake_upstream.requests[-1]
    assert seen["url"].endswith("/openai/deployments/my-gpt/chat/completions?api-version=2024-10-21")
    assert seen["headers"]["api-key"] == "upstream-secret"
    assert "authorization" not in seen["headers"]
    assert client.chat.completions.retrieve(created.id).choices[0].message.content == "fake: hello there"
    wait_listed(client, [created.id])
    assert [c.id for c in client.chat.completions.list(metadata={"tag": tag}, model="my-gpt")] == [created.id]


def test_slow_upstream_is_a_504_in_openai_shape(azure_host: RunningHost, fake_upstream: FakeUpstream) -> None:
    fake_upstream.script(Reply(delay_seconds=3))
    with pytest.raises(openai.APIStatusError) as caught:
        azure_host.azure_client(max_retries=0).chat.completions.create(model="my-gpt", messages=MESSAGES)
    assert caught.value.status_code == 504
    assert caught.value.body["code"] == "upstream_timeout"


def test_unreachable_upstream_is_a_502(azurite: Azurite, tmp_path_factory: pytest.TempPathFactory) -> None:
    closed = f"http://127.0.0.1:{free_port()}/v1"
    with start_host(azurite.connection_string, tmp_path_factory.mktemp("closed"), OPENAI_BASE_URL=closed) as running:
        with pytest.raises(openai.APIStatusError) as caught:
            running.openai_client(max_retries=0).chat.completions.create(model="m", store=True, messages=MESSAGES)
        assert caught.value.status_code == 502
        assert set(caught.value.response.json()["error"]) == {"message", "type", "param", "code"}
        assert "127.0.0.1" not in caught.value.response.text


def test_deployment_map_renames_the_model_for_openai_compatible_upstreams(
    azurite: Azurite, upstream: FakeUpstream, tmp_path_factory: pytest.TempPathFactory
) -> None:
    with start_host(
        azurite.connection_string,
        tmp_path_factory.mktemp("map"),
        OPENAI_BASE_URL=upstream.base_url,
        OPENAI_API_KEY="sk-upstream",
        DISTILLERY_DEPLOYMENT_MODELS='{"gpt-4o": "llama3.1:8b"}',
    ) as running:
        upstream.reset()
        running.openai_client().chat.completions.create(model="gpt-4o", messages=MESSAGES)
        seen = upstream.requests[-1]
        assert seen["body"]["model"] == "llama3.1:8b"
        assert seen["headers"]["authorization"] == "Bearer sk-upstream"


def test_offline_model_serves_and_says_so(azurite: Azurite, tmp_path_factory: pytest.TempPathFactory) -> None:
    with start_host(azurite.connection_string, tmp_path_factory.mktemp("offline")) as running:
        client = running.openai_client()
        answer = client.chat.completions.create(model="anything", store=True, messages=MESSAGES)
        assert answer.model == "offline-echo"
        assert answer.choices[0].message.content == "[offline-echo] hello there"
        chunks = list(
            client.chat.completions.create(
                model="anything", stream=True, messages=MESSAGES, stream_options={"include_usage": True}
            )
        )
        assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "[offline-echo] hello there"
        assert chunks[-1].usage is not None
        assert client.chat.completions.retrieve(answer.id).model == "offline-echo"
        response = client.responses.create(model="anything", input="hello there")
        assert (response.model, response.output_text) == ("offline-echo", "[offline-echo] hello there")
        events = list(client.responses.create(model="anything", input="hello there", stream=True))
        deltas = [event.delta for event in events if event.type == "response.output_text.delta"]
        assert "".join(deltas) == "[offline-echo] hello there" and len(deltas) == 3
        assert client.responses.retrieve(events[-1].response.id).output_text == "[offline-echo] hello there"


def test_azure_openai_upstream_is_called_on_its_v1_responses_route(
    azure_host: RunningHost, fake_upstream: FakeUpstream
) -> None:
    answer = azure_host.azure_client().responses.create(model="my-gpt", input="hello there")
    assert answer.output_text == "fake: hello there"
    sent = fake_upstream.requests[-1]
    assert sent["url"] == f"{fake_upstream.url}/openai/v1/responses"
    assert sent["body"]["model"] == "my-gpt" and sent["body"]["store"] is False


@pytest.mark.parametrize("status", [301, 302, 307, 308])
def test_upstream_redirect_is_a_502_and_never_followed(
    azure_host: RunningHost, fake_upstream: FakeUpstream, status: int
) -> None:
    """Following it would send the upstream `api-key` to wherever the redirect points."""
    fake_upstream.script(Reply(status=status, headers={"location": f"{fake_upstream.base_url}/chat/completions"}))
    with pytest.raises(openai.APIStatusError) as caught:
        azure_host.azure_client(max_retries=0).chat.completions.create(model="my-gpt", store=True, messages=MESSAGES)
    assert caught.value.status_code == 502
    assert caught.value.body["code"] == "upstream_redirect"
    assert "AZURE_OPENAI_ENDPOINT" in caught.value.body["message"]
    assert [request["url"].split("?")[0] for request in fake_upstream.requests] == [
        f"{fake_upstream.url}/openai/deployments/my-gpt/chat/completions"
    ]


@pytest.mark.parametrize("deployment", ["..", ".", "a/b", "../../v1/files", "a\\b", "a%2Fb", "a?b", "a#b", "x" * 257])
def test_deployment_names_cannot_reach_other_upstream_paths(
    azure_host: RunningHost, fake_upstream: FakeUpstream, deployment: str
) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        azure_host.openai_client(max_retries=0).chat.completions.create(model=deployment, messages=MESSAGES)
    assert caught.value.body["code"] == "invalid_deployment"
    assert caught.value.body["param"] == "model"
    assert fake_upstream.requests == []
