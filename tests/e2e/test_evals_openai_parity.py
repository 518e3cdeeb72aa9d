"""Definitions copied from OpenAI's Evals docs and cookbooks behave as they do there, driven by the
official `openai` SDK against the local host: ChatCompletion samples, content parts, list order,
`logs` configs, original roles, cancel, and the refused `python` grader."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import openai
import pytest

from local_host.azurite import Azurite
from tests.conftest import RunningHost, start_host
from tests.e2e.polling import wait_listed
from tests.e2e.test_evals import wait_for_run
from tests.fakes import FakeUpstream, Reply

CUSTOM = {
    "type": "custom",
    "item_schema": {"type": "object", "properties": {"q": {"type": "string"}, "expected": {"type": "string"}}},
    "include_sample_schema": True,
}
EXACT = {
    "type": "string_check",
    "name": "exact",
    "input": "{{sample.output_text}}",
    "reference": "{{item.expected}}",
    "operation": "eq",
}


@pytest.fixture(scope="module")
def parity_host(
    azurite: Azurite, upstream: FakeUpstream, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningHost]:
    with start_host(
        azurite.connection_string,
        tmp_path_factory.mktemp("evals-parity-host"),
        OPENAI_BASE_URL=upstream.base_url,
        LOCAL_RETRY_SECONDS="0",
        EVAL_CONCURRENCY="1",
    ) as running:
        yield running


def test_a_chat_completion_sample_grades_its_first_choice(parity_host: RunningHost) -> None:
    """The regression cookbook passes `completion.model_dump()` as each row's sample."""
    client = parity_host.openai_client()
    completion = client.chat.completions.create(model="teacher", messages=[{"role": "user", "content": "hello"}])
    evaluation = client.evals.create(data_source_config=CUSTOM, testing_criteria=[EXACT])  # type: ignore[arg-type, list-item]
    rows = [
        {"item": {"q": "hello", "expected": "fake: hello"}, "sample": completion.model_dump()},
        {"item": {"q": "hello", "expected": "something else"}, "sample": completion.model_dump()},
    ]
    run = client.evals.runs.create(
        evaluation.id, data_source={"type": "jsonl", "source": {"type": "file_content", "content": rows}}
    )
    done = wait_for_run(client, evaluation.id, run.id)
    assert done.result_counts.model_dump() == {"total": 2, "passed": 1, "failed": 1, "errored": 0}
    first = next(iter(client.evals.runs.output_items.list(run.id, eval_id=evaluation.id)))
    assert first.sample.output[0].content == "fake: hello"


def test_message_content_as_a_part_or_parts_in_criteria_and_run_templates(
    parity_host: RunningHost, fake_upstream: FakeUpstream
) -> None:
    client = parity_host.openai_client()
    judge = {
        "type": "label_model",
        "name": "judge",
        "model": "grader",
        "input": [
            {"role": "developer", "content": {"type": "input_text", "text": "Is it right?"}},
            {"role": "user", "content": [{"type": "input_text", "text": "{{item.q}} -> {{sample.output_text}}"}]},
        ],
        "labels": ["right", "wrong"],
        "passing_labels": ["right"],
    }
    evaluation = client.evals.create(data_source_config=CUSTOM, testing_criteria=[judge])  # type: ignore[arg-type, list-item]
    retrieved = client.evals.retrieve(evaluation.id).to_dict()
    again = client.evals.create(data_source_config=CUSTOM, testing_criteria=retrieved["testing_criteria"])  # type: ignore[arg-type]
    assert again.to_dict()["testing_criteria"] == retrieved["testing_criteria"]  # what retrieve answers, create takes

    fake_upstream.script(
        Reply(message={"role": "assistant", "content": "pong"}),  # the deployment checks: student, grader
        Reply(message={"role": "assistant", "content": "pong"}),
    )
    template = [{"type": "message", "role": "user", "content": {"type": "input_text", "text": "say {{item.q}}"}}]
    run = client.evals.runs.create(
        evaluation.id,
        data_source={
            "type": "completions",
            "model": "student",
            "source": {"type": "file_content", "content": [{"item": {"q": "cheese", "expected": ""}}]},
            "input_messages": {"type": "template", "template": template},
        },  # type: ignore[typeddict-item]
    )
    done = wait_for_run(client, evaluation.id, run.id)
    assert done.status == "completed", done
    candidate, grader = (r["body"] for r in fake_upstream.requests[2:4])
    assert candidate["messages"] == [{"role": "user", "content": "say cheese"}]
    assert grader["messages"] == [
        {"role": "developer", "content": "Is it right?"},
        {"role": "user", "content": "cheese -> fake: say cheese"},
    ]


def test_lists_default_to_oldest_first_and_order_by_updated_at(parity_host: RunningHost) -> None:
    client = parity_host.openai_client()
    created = [
        client.evals.create(name=f"e{n}", data_source_config=CUSTOM, testing_criteria=[EXACT])  # type: ignore[arg-type, list-item]
        for n in range(3)
    ]
    ids = [e.id for e in created]

    def listed(**query: Any) -> list[str]:
        return [e.id for e in client.evals.list(limit=2, **query) if e.id in ids]

    assert listed() == ids  # `order=asc` is the documented default, across pages
    assert listed(order="desc") == ids[::-1]
    client.evals.update(ids[0], name="touched")
    assert listed(order_by="updated_at")[-1] == ids[0]
    assert listed(order_by="updated_at", order="desc")[0] == ids[0]

    rows = [{"item": {"q": "a", "expected": "a"}, "sample": {"output_text": "a"}}]
    runs = [
        client.evals.runs.create(
            ids[1], data_source={"type": "jsonl", "source": {"type": "file_content", "content": rows}}
        )
        for _ in range(3)
    ]
    assert [r.id for r in client.evals.runs.list(ids[1], limit=2)] == [r.id for r in runs]


def test_a_logs_config_keeps_its_type_and_item_input_keeps_developer(
    parity_host: RunningHost, fake_upstream: FakeUpstream, tag: str
) -> None:
    client = parity_host.openai_client()
    kept = client.chat.completions.create(
        model="teacher",
        store=True,
        metadata={"tag": tag},
        messages=[{"role": "developer", "content": "Be brief."}, {"role": "user", "content": "hi"}],
    )
    wait_listed(client, [kept.id])  # the run selects it from the index
    evaluation = client.evals.create(
        data_source_config={"type": "logs", "metadata": {"tag": tag}},  # type: ignore[typeddict-item]
        testing_criteria=[{**EXACT, "reference": "{{item.reference}}"}],  # type: ignore[list-item]
    )
    assert evaluation.data_source_config.type == "logs"
    assert client.evals.retrieve(evaluation.id).data_source_config.type == "logs"
    fake_upstream.reset()
    run = client.evals.runs.create(
        evaluation.id,
        data_source={
            "type": "completions",
            "model": "student",
            "source": {"type": "stored_completions", "metadata": {"tag": tag}},
            "input_messages": {"type": "item_reference", "item_reference": "item.input"},
        },  # type: ignore[typeddict-item]
    )
    assert wait_for_run(client, evaluation.id, run.id).result_counts.total == 1
    (candidate,) = [r["body"] for r in fake_upstream.requests if r["body"]["messages"][0]["content"] != "ping"]
    assert [m["role"] for m in candidate["messages"]] == ["developer", "user"]


def test_cancel_answers_canceled(parity_host: RunningHost, fake_upstream: FakeUpstream) -> None:
    client = parity_host.openai_client()
    evaluation = client.evals.create(data_source_config=CUSTOM, testing_criteria=[EXACT])  # type: ignore[arg-type, list-item]
    fake_upstream.script(Reply(), *[Reply(delay_seconds=0.2)] * 20)
    rows = [{"item": {"q": f"q{n}", "expected": ""}} for n in range(20)]
    run = client.evals.runs.create(
        evaluation.id,
        data_source={
            "type": "completions",
            "model": "student",
            "source": {"type": "file_content", "content": rows},
            "input_messages": {"type": "template", "template": [{"role": "user", "content": "{{item.q}}"}]},
        },  # type: ignore[typeddict-item]
    )
    canceled = client.evals.runs.cancel(run.id, eval_id=evaluation.id)
    assert canceled.status == "canceled"
    assert client.evals.runs.retrieve(run.id, eval_id=evaluation.id).status == "canceled"


def test_the_python_grader_is_refused_with_a_clear_400(parity_host: RunningHost) -> None:
    client = parity_host.openai_client()
    grader = {"type": "python", "name": "p", "source": "def grade(sample, item):\n    return 1.0\n"}
    with pytest.raises(openai.BadRequestError) as raised:
        client.evals.create(data_source_config=CUSTOM, testing_criteria=[grader])  # type: ignore[arg-type, list-item]
    assert raised.value.code == "unsupported_grader" and "sandbox" in raised.value.message


def test_azure_openai_eval_calls_take_the_ga_v1_routes(
    azurite: Azurite, fake_upstream: FakeUpstream, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """Candidate, grader and embeddings calls: `/openai/v1/...` with the deployment as `model`, no api-version."""
    with start_host(
        azurite.connection_string,
        tmp_path_factory.mktemp("evals-azure-v1"),
        AZURE_OPENAI_ENDPOINT=fake_upstream.url,
        AZURE_OPENAI_API_KEY="upstream-secret",
        EVAL_EMBEDDINGS_DEPLOYMENT="embedder",
    ) as azure:
        client = azure.openai_client()
        judge = {
            "type": "score_model",
            "name": "judge",
            "model": "o4-mini-grader",
            "input": [{"role": "developer", "content": "Rate {{sample.output_text}}"}],
            "range": [0, 1],
            "sampling_params": {"reasoning_effort": "low"},
        }
        similar = {
            "type": "text_similarity",
            "name": "similar",
            "input": "{{sample.output_text}}",
            "reference": "{{item.expected}}",
            "evaluation_metric": "cosine",
            "pass_threshold": 0.1,
        }
        evaluation = client.evals.create(data_source_config=CUSTOM, testing_criteria=[judge, similar])  # type: ignore[arg-type, list-item]
        fake_upstream.reset()
        fake_upstream.script(
            Reply(message={"role": "assistant", "content": "pong"}),  # the deployment checks
            Reply(message={"role": "assistant", "content": "pong"}),
            Reply(message={"role": "assistant", "content": "hello"}),  # the candidate
            Reply(message={"role": "assistant", "content": '{"steps": [], "score": 1}'}),  # the grader
        )
        run = client.evals.runs.create(
            evaluation.id,
            data_source={
                "type": "completions",
                "model": "o4-mini-student",
                "source": {"type": "file_content", "content": [{"item": {"q": "hi", "expected": "hello"}}]},
                "input_messages": {"type": "template", "template": [{"role": "user", "content": "{{item.q}}"}]},
            },  # type: ignore[typeddict-item]
        )
        done = wait_for_run(client, evaluation.id, run.id)
        assert done.result_counts.model_dump() == {"total": 1, "passed": 1, "failed": 0, "errored": 0}, done
        seen = [(r["url"].removeprefix(fake_upstream.url), r["body"].get("model")) for r in fake_upstream.requests]
        assert set(seen) == {
            ("/openai/v1/chat/completions", "o4-mini-student"),
            ("/openai/v1/chat/completions", "o4-mini-grader"),
            ("/openai/v1/embeddings", "embedder"),
        }, seen
        assert all(r["headers"]["api-key"] == "upstream-secret" for r in fake_upstream.requests)
        grader_call = next(r["body"] for r in fake_upstream.requests if r["body"].get("reasoning_effort"))
        assert grader_call["messages"][0]["role"] == "developer"


def test_files_for_evals_upload_list_read_run_and_delete(parity_host: RunningHost) -> None:
    client = parity_host.openai_client()
    rows = [
        {"item": {"q": "a", "expected": "a"}, "sample": {"output_text": "a"}},
        {"item": {"q": "b", "expected": "c"}, "sample": {"output_text": "b"}},
    ]
    content = "".join(json.dumps(row) + "\n" for row in rows).encode()
    uploaded = client.files.create(file=("rows.jsonl", content), purpose="evals")
    assert (uploaded.object, uploaded.purpose, uploaded.bytes, uploaded.filename) == (
        "file",
        "evals",
        len(content),
        "rows.jsonl",
    )
    assert uploaded.id in [f.id for f in client.files.list(purpose="evals")]
    assert client.files.retrieve(uploaded.id).bytes == len(content)
    assert client.files.content(uploaded.id).read() == content

    evaluation = client.evals.create(data_source_config=CUSTOM, testing_criteria=[EXACT])  # type: ignore[arg-type, list-item]
    run = client.evals.runs.create(
        evaluation.id, data_source={"type": "jsonl", "source": {"type": "file_id", "id": uploaded.id}}
    )
    done = wait_for_run(client, evaluation.id, run.id)
    assert done.result_counts.model_dump() == {"total": 2, "passed": 1, "failed": 1, "errored": 0}

    deleted = client.files.delete(uploaded.id)
    assert deleted.deleted and deleted.id == uploaded.id
    with pytest.raises(openai.NotFoundError):
        client.files.retrieve(uploaded.id)
    with pytest.raises(openai.BadRequestError) as refused:
        client.evals.runs.create(
            evaluation.id, data_source={"type": "jsonl", "source": {"type": "file_id", "id": uploaded.id}}
        )
    assert refused.value.code == "file_not_found"
    for bad, purpose in [(b"not json\n", "evals"), (content, "fine-tune")]:
        with pytest.raises(openai.BadRequestError):
            client.files.create(file=("bad.jsonl", bad), purpose=purpose)  # type: ignore[arg-type]
