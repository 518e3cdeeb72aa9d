"""Memory and abuse limits through a running host: the stored-document cap (plain and streamed) and
per-owner quotas at capture and at dataset creation, in the OpenAI error shape."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from local_host.azurite import Azurite
from shared.platform.access import Right
from tests.callers import start_keyed_host
from tests.conftest import RunningHost
from tests.e2e.polling import wait_listed
from tests.fakes import FakeUpstream

OWNER_QUOTA = 4000
CURATOR = {Right.INFERENCE, Right.READ, Right.ACTION}


@pytest.fixture(scope="module")
def limited(
    azurite: Azurite, upstream: FakeUpstream, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[RunningHost, dict[str, str]]]:
    running, keys = start_keyed_host(
        azurite.connection_string,
        tmp_path_factory.mktemp("limits"),
        {"alice": CURATOR, "bob": CURATOR},
        OPENAI_BASE_URL=upstream.base_url,
        MAX_STORED_DOCUMENT_BYTES="2048",
        OWNER_QUOTA_BYTES=str(OWNER_QUOTA),
    )
    yield running, keys
    running.stop()


def ask(http: httpx.Client, text: str, **extra: object) -> httpx.Response:
    body = {"model": "gpt-4o", "store": True, "messages": [{"role": "user", "content": text}], **extra}
    return http.post("/openai/v1/chat/completions", json=body)


def test_a_document_over_the_cap_is_answered_but_not_stored(
    limited: tuple[RunningHost, dict[str, str]], fake_upstream: FakeUpstream
) -> None:
    host, keys = limited
    with host.http(keys["bob"]) as http:
        plain = ask(http, "y" * 1500)
        assert plain.status_code == 200 and plain.json()["choices"][0]["message"]["content"] == "fake: " + "y" * 1500
        assert plain.headers["x-distillery-stored"] == "false"
        assert plain.headers["x-distillery-not-stored-reason"] == "document_too_large"
        assert http.get(f"/openai/v1/chat/completions/{plain.json()['id']}").status_code == 404

        streamed = ask(http, "z" * 1500, stream=True)
        assert streamed.status_code == 200
        assert ": distillery-stored=false reason=document_too_large" in streamed.text
        assert streamed.text.rstrip().endswith("data: [DONE]")
        assert ask(http, "small").headers["x-distillery-stored"] == "true"
    assert "larger than MAX_STORED_DOCUMENT_BYTES" in host.log()


def test_owner_quota_at_capture_and_dataset_creation(
    limited: tuple[RunningHost, dict[str, str]], fake_upstream: FakeUpstream, tag: str
) -> None:
    host, keys = limited
    dataset = {"kind": "evaluation", "filter": {"metadata": {"tag": tag}}}
    with host.http(keys["alice"]) as http:
        for _ in range(20):
            answer = ask(http, "hello " * 50, metadata={"tag": tag})
            if answer.headers["x-distillery-stored"] == "false":
                break
            wait_listed(host.openai_client(), [answer.json()["id"]])  # counted once indexed
        else:
            pytest.fail(f"alice kept storing past her {OWNER_QUOTA}-byte quota")
        assert answer.status_code == 200
        assert answer.headers["x-distillery-not-stored-reason"] == "owner_quota_exceeded"
        refused = http.post("/api/datasets", json=dataset)
    assert refused.status_code == 429, refused.text
    error = refused.json()["error"]
    assert (error["type"], error["code"], error["param"]) == ("insufficient_quota", "owner_quota_exceeded", None)
    assert "OWNER_QUOTA_BYTES" in error["message"] and refused.headers["x-should-retry"] == "false"

    with host.http(keys["bob"]) as http:
        assert ask(http, "hello").headers["x-distillery-stored"] == "true"
        assert http.post("/api/datasets", json=dataset).status_code == 202
