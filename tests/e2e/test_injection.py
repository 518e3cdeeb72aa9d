"""Hostile metadata and ids through HTTP: stored, filtered and deleted exactly; bad ids never reach storage."""

from __future__ import annotations

import pytest

from tests.conftest import RunningHost
from tests.e2e.polling import wait_listed
from tests.fakes import FakeUpstream

VALUES = ["it's", 'a"b', "a/b", "a\\b", "50% off", "x eq x", "' or '1' eq '1", "é漢字🙂", "nul\x00 ctl\x1f\x7f\x85", ""]


def test_hostile_metadata_round_trip(host: RunningHost, fake_upstream: FakeUpstream, tag: str) -> None:
    with host.http() as http:
        stored = {}
        for value in VALUES:
            body = {"model": "m", "store": True, "metadata": {"tag": tag, "v": value}, "messages": [{"role": "user"}]}
            response = http.post("/openai/v1/chat/completions", json=body)
            assert response.status_code == 200 and response.headers["x-distillery-stored"] == "true", value
            stored[value] = response.json()["id"]
        wait_listed(host.openai_client(), stored.values())

        def listed(**params: str) -> list[str]:
            response = http.get("/openai/chat/completions", params={"metadata[tag]": tag, **params})
            assert response.status_code == 200, response.text
            return [c["id"] for c in response.json()["data"]]

        for value, completion_id in stored.items():
            assert listed(**{"metadata[v]": value}) == [completion_id], repr(value)
            assert http.get(f"/openai/chat/completions/{completion_id}").json()["metadata"]["v"] == value
        for completion_id in stored.values():
            assert http.delete(f"/openai/v1/chat/completions/{completion_id}").status_code == 200
        assert listed() == []


@pytest.mark.parametrize(
    "bad_id",
    ["../x", "..%2Fx", "%2e%2e", "%2e%2e%2fchatcmpl-x", "chatcmpl-" + "G" * 32, "chatcmpl-%00", "x" * 8000, "%ff%fe"],
)
def test_malformed_ids_are_404_on_every_method(host: RunningHost, bad_id: str) -> None:
    with host.http() as http:
        for method, suffix, body in [
            ("GET", "", None),
            ("POST", "", {"metadata": {}}),
            ("DELETE", "", None),
            ("GET", "/messages", None),
        ]:
            response = http.request(method, f"/openai/v1/chat/completions/{bad_id}{suffix}", json=body)
            assert response.status_code == 404, (method, bad_id[:20], response.text[:200])
            assert len(response.text) < 400, "the answer does not echo a long id back in full"


def test_bad_json_bodies_are_400(host: RunningHost, fake_upstream: FakeUpstream) -> None:
    with host.http() as http:
        for raw in [b"{", b"[]", b'{"messages": NaN}', b'{"n": ' + b"9" * 5000 + b"}", b'{"a": "\\ud800"}', b"\xff"]:
            response = http.post(
                "/openai/v1/chat/completions", content=raw, headers={"content-type": "application/json"}
            )
            assert response.status_code == 400, (raw[:20], response.text)
            assert response.json()["error"]["code"] == "invalid_json"
    assert fake_upstream.requests == []
