"""Scores over HTTP: add, list, replace, delete, a batch, filters in the list API and its count."""

from __future__ import annotations

import openai

from tests.conftest import RunningHost
from tests.e2e.polling import wait_listed, wait_until
from tests.fakes import FakeUpstream

MESSAGES = [{"role": "user", "content": "rate me"}]


def _store(client: openai.OpenAI, count: int, tag: str) -> list[str]:
    """Store `count` completions and wait until lists (and so filters and counts) show them."""
    stored = [
        client.chat.completions.create(model="gpt-4o", store=True, metadata={"tag": tag}, messages=MESSAGES).id
        for _ in range(count)
    ]
    wait_listed(client, stored)
    return stored


def test_add_list_replace_and_delete_scores(host: RunningHost, fake_upstream: FakeUpstream, tag: str) -> None:
    (one,) = _store(host.openai_client(), 1, tag)
    with host.http() as http:
        added = http.post(f"/api/completions/{one}/scores", json={"name": "helpful", "value": True, "comment": "ok"})
        assert added.status_code == 200, added.text
        assert added.json() | {"created_at": 0} == {
            "object": "chat.completion.score",
            "completion_id": one,
            "name": "helpful",
            "value": True,
            "comment": "ok",
            "source": "human",
            "author": "key:default",
            "created_at": 0,
        }
        http.post(f"/api/completions/{one}/scores", json={"name": "quality", "value": 4, "source": "model"})
        http.post(f"/api/completions/{one}/scores", json={"name": "helpful", "value": False})
        listed = http.get(f"/api/completions/{one}/scores").json()
        assert [(s["name"], s["value"], s["source"]) for s in listed["data"]] == [
            ("quality", 4.0, "model"),
            ("helpful", False, "human"),
        ]
        deleted = http.delete(f"/api/completions/{one}/scores/quality")
        assert deleted.json() == {
            "object": "chat.completion.score.deleted",
            "completion_id": one,
            "name": "quality",
            "deleted": True,
        }
        assert http.delete(f"/api/completions/{one}/scores/quality").status_code == 404
        items = http.get("/openai/v1/chat/completions", params={"metadata[tag]": tag}).json()["data"]
        assert items[0]["distillery"]["scores"] == {"helpful": False}


def test_list_and_count_filter_by_scores(host: RunningHost, fake_upstream: FakeUpstream, tag: str) -> None:
    client = host.openai_client()
    a, b, c = _store(client, 3, tag)
    with host.http() as http:
        batch = http.post(
            "/api/scores",
            json={
                "scores": [
                    {"completion_id": a, "name": "helpful", "value": True},
                    {"completion_id": a, "name": "quality", "value": 5},
                    {"completion_id": b, "name": "quality", "value": 3},
                    {"completion_id": c, "name": "quality", "value": 1, "source": "rule"},
                    {"completion_id": "chatcmpl-" + "0" * 32, "name": "quality", "value": 1},
                ]
            },
        ).json()
        assert (batch["succeeded"], batch["failed"]) == (4, 1)
        assert batch["data"][4]["error"]["code"] == "not_found"

        def listed(query: str) -> list[str]:
            return [
                item["id"]
                for item in http.get(f"/openai/v1/chat/completions?metadata[tag]={tag}&{query}").json()["data"]
            ]

        def counted(query: str) -> int:
            return int(http.get(f"/api/completions/count?metadata[tag]={tag}&{query}").json()["count"])

        assert listed("scores.helpful=true") == [a]
        assert listed("scores.quality>=3") == [a, b] and counted("scores.quality>=3") == 2
        assert listed("scores.quality>3") == [a]
        assert listed("scores.quality<=3&scores.quality>1") == [b]
        assert listed("scores.quality=1") == [c]
        assert counted("") == 3 and counted("scores.helpful=false") == 0
        sdk = client.chat.completions.list(metadata={"tag": tag}, extra_query={"scores.quality>": "3"})
        assert [item.id for item in sdk] == [a, b]

        bad = http.get("/openai/v1/chat/completions?scores.quality>=high")
        assert bad.status_code == 400 and bad.json()["error"]["param"] == "scores.quality>"
        bad_name = http.get("/api/completions/count?scores.=1")
        assert bad_name.status_code == 400 and bad_name.json()["error"]["param"].startswith("scores")
        assert http.get("/api/completions/count?limit=3").status_code == 400


def test_purge_dry_run_counts_by_score(host: RunningHost, fake_upstream: FakeUpstream, tag: str) -> None:
    a, _ = _store(host.openai_client(), 2, tag)
    with host.http() as http:
        http.post(f"/api/completions/{a}/scores", json={"name": "pii", "value": "yes"})
        dry = http.post("/api/purges", json={"filter": {"scores": {"pii": "yes"}}, "dry_run": True})
        assert dry.status_code == 202, dry.text
        done = wait_until(http, f"/api/purges/{dry.json()['id']}", lambda job: job["status"] == "succeeded", 30)
    assert done["matched_count"] == 1


def test_bad_scores_answer_in_the_openai_error_shape(host: RunningHost, fake_upstream: FakeUpstream, tag: str) -> None:
    (one,) = _store(host.openai_client(), 1, tag)
    with host.http() as http:
        for body, param in [
            ({"name": "q", "value": {"a": 1}}, "value"),
            ({"name": "q", "value": "x" * 129}, "value"),
            ({"name": "q>", "value": 1}, "name"),
            ({"name": "q", "value": 1, "source": "oracle"}, "source"),
            ({"name": "q", "value": 1, "author": "key:someone-else"}, "author"),
            ({"value": 1}, "name"),
        ]:
            refused = http.post(f"/api/completions/{one}/scores", json=body)
            assert refused.status_code == 400, (body, refused.text)
            error = refused.json()["error"]
            assert (error["type"], error["param"]) == ("invalid_request_error", param), body
        missing = http.post("/api/completions/chatcmpl-" + "0" * 32 + "/scores", json={"name": "q", "value": 1})
        assert missing.status_code == 404
        assert http.post("/api/scores", json={"scores": []}).status_code == 400
        assert http.get(f"/api/completions/{one}/scores").json()["data"] == []
