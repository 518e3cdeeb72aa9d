"""Evals end to end with the official `openai` SDK: stored completions -> eval -> a run re-running
another deployment -> output items and result counts; stored answers graded as they are; a student
compared with its teacher; the offline model; and the 400s that stop a bad eval before it runs."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import openai
import pytest
from openai import OpenAI

from local_host.azurite import Azurite
from tests.conftest import RunningHost, start_host
from tests.e2e.polling import wait_listed
from tests.fakes import FakeUpstream, Reply

CONTAINS_ANSWER = {
    "type": "string_check",
    "name": "mentions the question",
    "input": "{{sample.output_text}}",
    "reference": "{{item.input.0.content}}",
    "operation": "like",
}
STARTS_FAKE = {
    "type": "string_check",
    "name": "is the fake model",
    "input": "{{sample.output_text}}",
    "reference": "fake:",
    "operation": "ilike",
}


@pytest.fixture(scope="module")
def evals_host(
    azurite: Azurite, upstream: FakeUpstream, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningHost]:
    with start_host(
        azurite.connection_string,
        tmp_path_factory.mktemp("evals-host"),
        OPENAI_BASE_URL=upstream.base_url,
        LOCAL_RETRY_SECONDS="0",
    ) as running:
        yield running


def wait_for_run(client: OpenAI, eval_id: str, run_id: str, seconds: float = 60) -> Any:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        run = client.evals.runs.retrieve(run_id, eval_id=eval_id)
        if run.status in ("completed", "failed", "canceled"):
            return run
        time.sleep(0.1)
    raise AssertionError(f"run {run_id} did not finish: {run}")


def store(client: OpenAI, tag: str, questions: list[str]) -> list[str]:
    stored = [
        client.chat.completions.create(
            model="teacher", store=True, metadata={"tag": tag}, messages=[{"role": "user", "content": question}]
        ).id
        for question in questions
    ]
    wait_listed(client, stored)
    return stored


def test_stored_completions_eval_rerun_on_another_deployment(
    evals_host: RunningHost, fake_upstream: FakeUpstream, tag: str
) -> None:
    client = evals_host.openai_client()
    store(client, tag, [f"question {n}" for n in range(5)])
    evaluation = client.evals.create(
        name="student vs teacher",
        data_source_config={"type": "stored_completions", "metadata": {"tag": tag}},
        testing_criteria=[CONTAINS_ANSWER, STARTS_FAKE],  # type: ignore[list-item]
    )
    assert evaluation.object == "eval" and evaluation.data_source_config.type == "stored_completions"
    fake_upstream.reset()

    run = client.evals.runs.create(
        evaluation.id,
        name="student",
        data_source={
            "type": "completions",
            "source": {"type": "stored_completions", "metadata": {"tag": tag}},
            "model": "student",
            "input_messages": {"type": "item_reference", "item_reference": "item.input"},
            "sampling_params": {"temperature": 0.2, "max_completion_tokens": 50},
        },
    )
    assert run.status == "queued" and run.model == "student" and run.report_url.endswith(f"/runs/{run.id}")
    done = wait_for_run(client, evaluation.id, run.id)
    assert done.status == "completed", done
    assert done.result_counts.model_dump() == {"total": 5, "passed": 5, "failed": 0, "errored": 0}
    assert {r.testing_criteria: (r.passed, r.failed) for r in done.per_testing_criteria_results} == {
        "mentions the question": (5, 0),
        "is the fake model": (5, 0),
    }
    (usage,) = done.per_model_usage
    assert (usage.run_model_name, usage.invocation_count, usage.total_tokens) == ("student", 5, 50)

    candidate_calls = [
        r
        for r in fake_upstream.requests
        if r["body"].get("model") == "student" and r["body"]["messages"][0]["content"] != "ping"
    ]
    assert len(candidate_calls) == 5
    assert all(
        call["body"]["temperature"] == 0.2 and call["body"]["max_completion_tokens"] == 50 for call in candidate_calls
    )

    items = list(client.evals.runs.output_items.list(run.id, eval_id=evaluation.id, limit=2))
    assert [item.datasource_item_id for item in items] == [0, 1, 2, 3, 4]  # auto-paging across pages of 2
    first = items[0]
    assert (
        first.status == "pass"
        and first.sample.output[0].content == f"fake: {first.datasource_item['input'][0]['content']}"
    )
    assert {result.name for result in first.results} == {"mentions the question", "is the fake model"}
    again = client.evals.runs.output_items.retrieve(first.id, eval_id=evaluation.id, run_id=run.id)
    assert again.id == first.id and again.to_dict() == first.to_dict()
    assert list(client.evals.runs.output_items.list(run.id, eval_id=evaluation.id, status="fail")) == []


def test_grading_the_stored_answers_and_comparing_teacher_with_student(evals_host: RunningHost, tag: str) -> None:
    client = evals_host.openai_client()
    store(client, tag, ["alpha", "beta", "gamma"])
    exact = {
        "type": "string_check",
        "name": "exact",
        "input": "{{sample.output_text}}",
        "reference": "fake: alpha",
        "operation": "eq",
    }
    evaluation = client.evals.create(
        data_source_config={"type": "stored_completions", "metadata": {"tag": tag}},
        testing_criteria=[exact],  # type: ignore[list-item]
    )
    source = {"type": "stored_completions", "metadata": {"tag": tag}}
    teacher = client.evals.runs.create(evaluation.id, data_source={"type": "completions", "source": source})  # type: ignore[typeddict-item]
    student = client.evals.runs.create(
        evaluation.id,
        data_source={"type": "completions", "source": source, "model": "student"},  # type: ignore[typeddict-item]
    )
    teacher_done, student_done = (wait_for_run(client, evaluation.id, r.id) for r in (teacher, student))
    assert teacher_done.model == "stored" and teacher_done.result_counts.passed == 1
    assert student_done.result_counts.model_dump() == {"total": 3, "passed": 1, "failed": 2, "errored": 0}

    with evals_host.http() as http:
        comparison = http.get(f"/api/evals/{evaluation.id}/runs/compare", params={"runs": f"{teacher.id},{student.id}"})
        assert comparison.status_code == 200, comparison.text
        (criterion,) = comparison.json()["per_testing_criteria"]
        assert criterion["ties"] == 3 and criterion["pass_rate_delta"] == 0
        same = http.get(f"/api/evals/{evaluation.id}/runs/compare", params={"runs": f"{teacher.id},{teacher.id}"})
        assert same.status_code == 400 and same.json()["error"]["param"] == "runs"


def test_bad_evals_are_refused_before_anything_runs(evals_host: RunningHost, fake_upstream: FakeUpstream) -> None:
    client = evals_host.openai_client()
    config = {"type": "custom", "item_schema": {"type": "object", "properties": {"question": {"type": "string"}}}}
    cases = [
        ([{"type": "python", "name": "p", "source": "def grade(s, i): return 1.0"}], "unsupported_grader"),
        ([{**STARTS_FAKE, "reference": "{{item.qestion}}"}], "invalid_template"),
        ([{**STARTS_FAKE, "input": "{{sample.output_text}}"}], "invalid_template"),  # custom config without samples
    ]
    for criteria, code in cases:
        with pytest.raises(openai.BadRequestError) as raised:
            client.evals.create(data_source_config=config, testing_criteria=criteria)  # type: ignore[arg-type]
        assert raised.value.code == code, raised.value.body

    evaluation = client.evals.create(
        data_source_config={**config, "include_sample_schema": True},  # type: ignore[typeddict-item]
        testing_criteria=[STARTS_FAKE],  # type: ignore[list-item]
    )
    missing = {
        "error": {"message": "The API deployment for this resource does not exist.", "code": "DeploymentNotFound"}
    }
    fake_upstream.script(Reply(status=404, body=missing))
    data_source = {
        "type": "completions",
        "model": "no-such-deployment",
        "source": {"type": "file_content", "content": [{"item": {"question": "hi"}}]},
        "input_messages": {"type": "template", "template": [{"role": "user", "content": "{{item.question}}"}]},
    }
    with pytest.raises(openai.BadRequestError) as raised:
        client.evals.runs.create(evaluation.id, data_source=data_source)  # type: ignore[arg-type]
    assert raised.value.code == "model_not_found" and "no-such-deployment" in str(raised.value.body)
    assert list(client.evals.runs.list(evaluation.id)) == []
    with pytest.raises(openai.NotFoundError):
        client.evals.retrieve("eval_" + "0" * 32)


def test_crud_listing_and_the_azure_client(evals_host: RunningHost) -> None:
    client = evals_host.openai_client()
    config = {
        "type": "custom",
        "item_schema": {"type": "object", "properties": {"q": {"type": "string"}}},
        "include_sample_schema": True,
    }
    created = [
        client.evals.create(name=f"e{n}", data_source_config=config, testing_criteria=[STARTS_FAKE]) for n in range(3)
    ]  # type: ignore[arg-type, list-item]
    listed = [e.id for e in client.evals.list(limit=2, order="desc") if e.id in {c.id for c in created}]
    assert listed == [c.id for c in reversed(created)]  # newest first when asked, across pages
    renamed = client.evals.update(created[0].id, name="renamed", metadata={"team": "a"})
    assert (renamed.name, renamed.metadata) == ("renamed", {"team": "a"})
    azure = evals_host.azure_client()
    assert azure.evals.retrieve(created[0].id).name == "renamed"
    deleted = client.evals.delete(created[0].id)
    assert deleted.deleted and deleted.eval_id == created[0].id
    with pytest.raises(openai.NotFoundError):
        client.evals.retrieve(created[0].id)


def test_an_offline_host_runs_an_eval_end_to_end(azurite: Azurite, tmp_path_factory: pytest.TempPathFactory) -> None:
    with start_host(azurite.connection_string, tmp_path_factory.mktemp("offline-evals")) as offline:
        client = offline.openai_client()
        evaluation = client.evals.create(
            data_source_config={
                "type": "custom",
                "item_schema": {"type": "object", "properties": {"q": {"type": "string"}}},
                "include_sample_schema": True,
            },  # type: ignore[typeddict-item]
            testing_criteria=[{**STARTS_FAKE, "reference": "[offline-echo]", "name": "offline"}],  # type: ignore[list-item]
        )
        run = client.evals.runs.create(
            evaluation.id,
            data_source={
                "type": "completions",
                "model": "any",
                "source": {"type": "file_content", "content": [{"item": {"q": "one"}}, {"item": {"q": "two"}}]},
                "input_messages": {"type": "template", "template": [{"role": "user", "content": "{{item.q}}"}]},
            },
        )
        done = wait_for_run(client, evaluation.id, run.id)
        assert done.status == "completed" and done.result_counts.passed == 2
        outputs = list(client.evals.runs.output_items.list(run.id, eval_id=evaluation.id))
        assert [o.sample.output[0].content for o in outputs] == ["[offline-echo] one", "[offline-echo] two"]
