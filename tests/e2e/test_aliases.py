"""Aliases end to end: callers use the real `openai` SDK with the alias as their deployment; the proxy
splits traffic by share (sticky per user), records `served_by`, and the list splits by it; promotion
goes through the gate on a teacher/student comparison; rollback is one call; every change is recorded."""

from __future__ import annotations

import time
from typing import Any

import httpx
import pytest

from shared.aliases.records import AliasRecord
from shared.platform.access import DEFAULT_KEY_NAME
from tests.conftest import RunningHost
from tests.e2e.polling import wait_listed
from tests.e2e.test_evals import wait_for_run
from tests.fakes import FakeUpstream, Reply


def _put(http: httpx.Client, name: str, targets: list[tuple[str, int]], **extra: Any) -> httpx.Response:
    body = {"targets": [{"deployment": d, "share": s} for d, s in targets], **extra}
    return http.put(f"/api/aliases/{name}", json=body)


def test_a_canary_alias_splits_sticky_traffic_and_records_who_served(
    host: RunningHost, fake_upstream: FakeUpstream, tag: str
) -> None:
    alias, teacher, student = f"bot-{tag}", f"teacher-{tag}", f"student-{tag}"
    with host.http() as http:
        created = _put(http, alias, [(teacher, 50), (student, 50)], sticky={"by": "user"})
        assert created.status_code == 200, created.text
        assert created.json()["fallback"] == teacher and created.json()["history"][0]["by"] == DEFAULT_KEY_NAME

    # Users the routing rule sends to each side (the split is a hash of alias and user), so both serve.
    rule = AliasRecord.model_validate(created.json())
    users = {rule.choose(user=f"user-{n}", metadata=None): f"user-{n}" for n in range(64)}
    assert set(users) == {teacher, student}
    client = host.azure_client()
    served: dict[str, set[str]] = {}
    created = []
    for n in range(24):
        user = list(users.values())[n % 2] if n < 8 else f"user-{n % 8}"
        done = client.chat.completions.create(
            model=alias, store=True, user=user, metadata={"tag": tag}, messages=[{"role": "user", "content": f"q{n}"}]
        )
        created.append(done.id)
        by = client.chat.completions.retrieve(done.id).model_extra["distillery"]  # type: ignore[index]
        assert by["deployment"] == alias
        served.setdefault(user, set()).add(by["served_by"])
    assert all(len(deployments) == 1 for deployments in served.values()), served  # sticky per user
    assert set().union(*served.values()) == {teacher, student}
    assert all(served[user] == {deployment} for deployment, user in users.items())  # as the rule says
    sent = [r["body"]["model"] for r in fake_upstream.requests]
    assert set(sent) == {teacher, student}  # the upstream hears the real deployment, never the alias

    wait_listed(client, created)  # lists follow the stored documents shortly after
    from_student = list(client.chat.completions.list(model=student, metadata={"tag": tag}, limit=100))
    from_alias = list(client.chat.completions.list(model=alias, metadata={"tag": tag}, limit=100))
    assert len(from_alias) == 24 and 0 < len(from_student) < 24
    assert all(c.model_extra["distillery"]["served_by"] == student for c in from_student)  # type: ignore[index]
    assert len(list(client.chat.completions.list(model=student, limit=100))) == len(from_student)  # no metadata

    unaliased = client.chat.completions.create(model=teacher, messages=[{"role": "user", "content": "plain"}])
    assert unaliased.choices[0].message.content == "fake: plain"
    assert fake_upstream.requests[-1]["body"]["model"] == teacher


def test_alias_changes_are_validated_with_clear_errors(host: RunningHost, tag: str) -> None:
    with host.http() as http:
        cases = [
            (_put(http, f"a-{tag}", [("xx", 60), ("yy", 30)]), "targets"),
            (_put(http, f"a-{tag}", [("xx", 40), ("yy", 30), ("zz", 30)]), "targets"),
            (_put(http, f"a-{tag}", [("xx", 50), ("xx", 50)]), "targets"),
            (_put(http, f"a-{tag}", [("has space", 100)]), "targets"),
            (_put(http, f"a-{tag}", [("xx", 100)], sticky={"by": "metadata"}), "sticky"),
            (_put(http, f"a-{tag}", [("xx", 100)], gate={"min_pass_rate": 2}), "gate"),
            (_put(http, "-bad", [("xx", 100)]), "name"),
        ]
        for answer, param in cases:
            assert answer.status_code == 400, answer.text
            assert answer.json()["error"]["param"] == param, answer.text
        assert "sum to 100" in cases[0][0].json()["error"]["message"]
        missing = http.get(f"/api/aliases/nothing-{tag}")
        assert missing.status_code == 404 and missing.json()["error"]["code"] == "not_found"
        assert http.post(f"/api/aliases/nothing-{tag}/rollback", json={}).status_code == 404


EXACT = {
    "type": "string_check",
    "name": "exact",
    "input": "{{sample.output_text}}",
    "reference": "{{item.answer}}",
    "operation": "eq",
}


def _graded_run(http: httpx.Client, eval_id: str, answers: list[str]) -> str:
    rows = [{"item": {"answer": f"a{n}"}, "sample": {"output_text": text}} for n, text in enumerate(answers)]
    created = http.post(
        f"/api/evals/{eval_id}/runs",
        json={"data_source": {"type": "jsonl", "source": {"type": "file_content", "content": rows}}},
    )
    assert created.status_code == 201, created.text
    return str(created.json()["id"])


def test_promotion_needs_a_passing_gate_unless_forced_and_rollback_undoes_it(host: RunningHost, tag: str) -> None:
    alias, teacher, student = f"bot-{tag}", f"teacher-{tag}", f"student-{tag}"
    client = host.openai_client()
    with host.http() as http:
        evaluation = http.post(
            "/api/evals",
            json={
                "data_source_config": {"type": "custom", "item_schema": {}, "include_sample_schema": True},
                "testing_criteria": [EXACT],
            },
        ).json()
        right = [f"a{n}" for n in range(10)]
        teacher_run = _graded_run(http, evaluation["id"], right)
        weak_run = _graded_run(http, evaluation["id"], right[:7] + ["wrong"] * 3)
        good_run = _graded_run(http, evaluation["id"], [*right[:9], "wrong"])
        for run in (teacher_run, weak_run, good_run):
            assert wait_for_run(client, evaluation["id"], run).status == "completed"

        assert _put(http, alias, [(teacher, 100)]).status_code == 200
        no_canary = http.post(f"/api/aliases/{alias}/promote", json={})
        assert no_canary.status_code == 400 and no_canary.json()["error"]["param"] == "deployment"
        canary = _put(http, alias, [(teacher, 90), (student, 10)], gate={"min_pass_rate": 0.85, "max_drop": 0.1})
        assert canary.json()["fallback"] == teacher

        nothing = http.post(f"/api/aliases/{alias}/promote", json={})
        assert nothing.status_code == 409 and "no comparison" in nothing.json()["error"]["message"]
        weak = {"eval_id": evaluation["id"], "teacher_run_id": teacher_run, "student_run_id": weak_run}
        refused = http.post(f"/api/aliases/{alias}/promote", json={"comparison": weak})
        assert refused.status_code == 409 and refused.json()["error"]["code"] == "gate_failed"
        assert "'exact' pass rate 70.0% (teacher 100.0%)" in refused.json()["error"]["message"]
        assert http.get(f"/api/aliases/{alias}").json()["targets"][1]["share"] == 10  # unchanged

        forced = http.post(f"/api/aliases/{alias}/promote", json={"comparison": weak, "force": True, "reason": "demo"})
        assert forced.status_code == 200, forced.text
        last = forced.json()["history"][-1]
        assert last["action"] == "promote" and last["forced"] and not last["gate_result"]["passed"]
        assert forced.json()["targets"] == [{"deployment": student, "share": 100}]
        assert client.chat.completions.create(model=alias, messages=[{"role": "user", "content": "x"}]).choices

        rolled = http.post(f"/api/aliases/{alias}/rollback", json={})
        assert rolled.status_code == 200 and rolled.json()["targets"] == [{"deployment": teacher, "share": 100}]
        again = http.post(f"/api/aliases/{alias}/rollback", json={})
        assert again.status_code == 409 and again.json()["error"]["code"] == "nothing_to_roll_back"

        _put(http, alias, [(teacher, 90), (student, 10)])
        good = {"eval_id": evaluation["id"], "teacher_run_id": teacher_run, "student_run_id": good_run}
        promoted = http.post(f"/api/aliases/{alias}/promote", json={"deployment": student, "comparison": good})
        assert promoted.status_code == 200, promoted.text
        result = promoted.json()["history"][-1]["gate_result"]
        assert result["passed"] and result["per_testing_criteria"][0]["pass_rate"] == pytest.approx(0.9)
        history = promoted.json()["history"]
        assert [c["action"] for c in history] == ["set", "set", "promote", "rollback", "set", "promote"]
        assert all(c["by"] == DEFAULT_KEY_NAME and c["at"] > 0 for c in history)

        listed = http.get("/api/aliases").json()["data"]
        assert alias in [a["name"] for a in listed]
        assert http.delete(f"/api/aliases/{alias}").json()["deleted"] is True
        assert http.get(f"/api/aliases/{alias}").status_code == 404


def test_online_evals_grade_live_calls_off_the_request_path_and_roll_a_failing_canary_back(
    host: RunningHost, fake_upstream: FakeUpstream, tag: str
) -> None:
    alias, teacher, student = f"bot-{tag}", f"teacher-{tag}", f"student-{tag}"
    echoed = {
        "type": "string_check",
        "name": "echoed",
        "input": "{{sample.output_text}}",
        "reference": "fake:",
        "operation": "like",
    }
    online = {"sample_rate": 1, "testing_criteria": [echoed], "alert": {"min_pass_rate": 0.5, "min_samples": 3}}
    wrong = {"role": "assistant", "content": "Something unrelated."}
    fake_upstream.script(*(Reply(message=wrong, for_model=student) for _ in range(20)))
    with host.http() as http:
        assert _put(http, alias, [(teacher, 50), (student, 50)], online_eval=online).status_code == 200
        bad_hours = http.get(f"/api/aliases/{alias}/online_evals?hours=0")
        assert bad_hours.status_code == 400 and bad_hours.json()["error"]["param"] == "hours"
        client = host.openai_client()
        for n in range(16):
            client.chat.completions.create(model=alias, store=True, messages=[{"role": "user", "content": f"q{n}"}])
        deadline = time.monotonic() + 60
        while len(http.get(f"/api/aliases/{alias}").json()["targets"]) == 2:  # graded on the queue, then rolled back
            assert time.monotonic() < deadline, http.get(f"/api/aliases/{alias}/online_evals").json()
            time.sleep(0.2)
        record = http.get(f"/api/aliases/{alias}").json()
        assert record["targets"] == [{"deployment": teacher, "share": 100}]
        last = record["history"][-1]
        assert (last["action"], last["by"], last["automatic"]) == ("rollback", "online-eval", True)
        assert f"'{student}' is 0.0%" in last["reason"]
        rates = {
            row["deployment"]: row["pass_rate"] for row in http.get(f"/api/aliases/{alias}/online_evals").json()["data"]
        }
        assert rates[student] == 0.0 and rates.get(teacher, 1.0) == 1.0
