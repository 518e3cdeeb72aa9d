"""Bulk actions over HTTP: a dry run, then tags and scores on every match through the host's
maintenance queue; lists see the new metadata and scores; bad input answers in the OpenAI shape."""

from __future__ import annotations

from tests.conftest import RunningHost
from tests.e2e.polling import wait_listed, wait_until
from tests.fakes import FakeUpstream

MESSAGES = [{"role": "user", "content": "tag me"}]


def test_dry_run_then_tag_and_score_a_filter(host: RunningHost, fake_upstream: FakeUpstream, tag: str) -> None:
    client = host.openai_client()
    chosen = [
        client.chat.completions.create(
            model="gpt-4o", store=True, metadata={"tag": tag, "app": "a"}, messages=MESSAGES
        ).id
        for _ in range(3)
    ]
    other = client.chat.completions.create(
        model="gpt-4o", store=True, metadata={"tag": tag, "app": "b"}, messages=MESSAGES
    ).id
    wait_listed(client, [*chosen, other])
    body = {
        "filter": {"metadata": {"tag": tag, "app": "a"}},
        "set_metadata": {"review": "batch-1"},
        "add_scores": [{"name": "helpful", "value": True, "source": "rule"}],
    }
    with host.http() as http:
        dry = http.post("/api/bulk_actions", json=body | {"dry_run": True})
        assert dry.status_code == 202, dry.text
        assert dry.headers["location"] == f"/api/bulk_actions/{dry.json()['id']}"
        counted = wait_until(
            http, f"/api/bulk_actions/{dry.json()['id']}", lambda job: job["status"] == "succeeded", 30
        )
        assert (counted["receipt"]["matched_count"], counted["receipt"]["updated_count"]) == (3, 3)
        assert http.get(f"/api/completions/count?metadata[review]=batch-1&metadata[tag]={tag}").json()["count"] == 0

        queued = http.post("/api/bulk_actions", json=body)
        assert queued.status_code == 202, queued.text
        done = wait_until(
            http, f"/api/bulk_actions/{queued.json()['id']}", lambda job: job["status"] == "succeeded", 30
        )
        assert done["receipt"]["updated_count"] == 3 and done["requested_by"] == "key:default"

        tagged = http.get(f"/openai/v1/chat/completions?metadata[tag]={tag}&scores.helpful=true").json()["data"]
        assert sorted(item["id"] for item in tagged) == sorted(chosen)
        assert {item["metadata"]["review"] for item in tagged} == {"batch-1"}
        assert http.get(f"/api/completions/{chosen[0]}/scores").json()["data"][0]["author"] == "key:default"
        assert client.chat.completions.retrieve(other).metadata == {"tag": tag, "app": "b"}


def test_bad_bulk_actions_answer_in_the_openai_error_shape(host: RunningHost) -> None:
    with host.http() as http:
        for body, param in [
            ({"filter": {}, "set_metadata": {"a": "b"}}, None),
            ({"filter": {"model": "m"}, "set_metadata": {f"k{i}": "v" for i in range(17)}}, "set_metadata"),
            ({"filter": {"model": "m"}, "add_scores": [{"name": "bad name", "value": 1}]}, "add_scores"),
            ({"filter": {"model": "m"}, "remove_metadata": ["x" * 65]}, "remove_metadata"),
        ]:
            refused = http.post("/api/bulk_actions", json=body)
            assert refused.status_code == 400, (body, refused.text)
            error = refused.json()["error"]
            assert (error["type"], error["param"]) == ("invalid_request_error", param), body
        assert http.get("/api/bulk_actions/bulk_000000000000000000000000").status_code == 404
        read_only = http.post(
            "/api/bulk_actions",
            json={"filter": {"model": "m"}, "remove_scores": ["q"]},
            headers={"api-key": "not-a-key"},
        )
        assert read_only.status_code == 401


def test_relabel_a_filter_on_a_stronger_deployment(host: RunningHost, fake_upstream: FakeUpstream, tag: str) -> None:
    client = host.openai_client()
    originals = [
        client.chat.completions.create(model="gpt-4o", store=True, metadata={"tag": tag}, messages=MESSAGES).id
        for _ in range(2)
    ]
    wait_listed(client, originals)
    with host.http() as http:
        body = {
            "filter": {"metadata": {"tag": tag}, "model": "gpt-4o"},
            "deployment": "teacher-xl",
            "max_total_tokens": 500,
        }
        queued = http.post("/api/relabels", json=body)
        assert queued.status_code == 202, queued.text
        done = wait_until(http, f"/api/relabels/{queued.json()['id']}", lambda job: job["status"] == "succeeded", 30)
        assert (done["receipt"]["relabeled_count"], done["receipt"]["tokens_used"]) == (2, 20)
        relabeled = http.get(f"/openai/v1/chat/completions?metadata[tag]={tag}&model=teacher-xl").json()["data"]
        assert sorted(item["distillery"]["relabel_of"] for item in relabeled) == sorted(originals)
        original = http.get(f"/openai/v1/chat/completions/{originals[0]}").json()
        assert len(original["distillery"]["relabels"]) == 1
        refused = http.post("/api/relabels", json=body | {"max_total_tokens": 0})
        assert refused.status_code == 400 and refused.json()["error"]["param"] == "max_total_tokens"
