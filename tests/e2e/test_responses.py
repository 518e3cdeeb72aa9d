"""The Responses API through the real `openai` SDK, both clients, against the local host on Azurite:
capture (plain, streamed, chained, function calls), retrieve, input items, delete, lists by kind."""

from __future__ import annotations

import json

import openai
import pytest

from shared.datasets.check import check_lines
from tests.conftest import RunningHost
from tests.e2e.polling import wait_listed, wait_until
from tests.e2e.test_evals import wait_for_run
from tests.fakes import FAKE_MODEL, FakeUpstream, Reply

TOOLS = [
    {
        "type": "function",
        "name": "get_weather",
        "description": "The weather in a city.",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    }
]


@pytest.fixture(params=["azure", "openai"])
def client(request: pytest.FixtureRequest, host: RunningHost) -> openai.OpenAI:
    return host.azure_client() if request.param == "azure" else host.openai_client()


def test_create_keeps_by_default_and_retrieves(client: openai.OpenAI, fake_upstream: FakeUpstream, tag: str) -> None:
    created = client.responses.create(
        model="gpt-4o", input="hello there", instructions="Be brief.", metadata={"tag": tag}
    )
    assert created.output_text == "fake: hello there"
    assert created.id.startswith("resp_") and created.metadata == {"tag": tag}

    forwarded = fake_upstream.requests[-1]
    assert forwarded["url"].endswith("/v1/responses")
    assert forwarded["body"]["store"] is False and "metadata" not in forwarded["body"]
    assert forwarded["body"]["model"] == "gpt-4o"

    kept = client.responses.retrieve(created.id)
    assert (kept.id, kept.output_text, kept.model, kept.metadata) == (
        created.id,
        "fake: hello there",
        FAKE_MODEL,
        {"tag": tag},
    )
    items = list(client.responses.input_items.list(created.id))
    assert [(item.type, item.role, item.content[0].text) for item in items] == [("message", "user", "hello there")]


def test_store_false_keeps_nothing(host: RunningHost, fake_upstream: FakeUpstream) -> None:
    client = host.openai_client()
    raw = client.responses.with_raw_response.create(model="gpt-4o", input="hi", store=False)
    answer = raw.parse()
    assert answer.output_text == "fake: hi" and "x-distillery-stored" not in raw.headers
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(answer.id)


def test_stream_is_relayed_event_by_event_and_stored(
    client: openai.OpenAI, fake_upstream: FakeUpstream, tag: str
) -> None:
    stream = client.responses.create(model="gpt-4o", input="hello stream world", stream=True, metadata={"tag": tag})
    events = list(stream)
    kinds = [event.type for event in events]
    assert kinds[0] == "response.created" and kinds[-1] == "response.completed"
    deltas = [event.delta for event in events if event.type == "response.output_text.delta"]
    assert deltas == ["fake:", " hello", " stream", " world"]
    final = events[-1].response
    assert final.id.startswith("resp_") and events[0].response.id == final.id
    kept = client.responses.retrieve(final.id)
    assert kept.output_text == "fake: hello stream world" and kept.metadata == {"tag": tag}


def test_previous_response_id_chain_is_resolved_from_the_store(
    client: openai.OpenAI, fake_upstream: FakeUpstream, tag: str
) -> None:
    first = client.responses.create(model="gpt-4o", input="my name is Ada", metadata={"tag": tag})
    second = client.responses.create(
        model="gpt-4o", input="what is my name?", previous_response_id=first.id, metadata={"tag": tag}
    )
    sent = fake_upstream.requests[-1]["body"]
    assert "previous_response_id" not in sent  # the upstream cannot know our ids: the turns go as input
    assert [item.get("role") for item in sent["input"]] == ["user", "assistant", "user"]
    assert sent["input"][1]["content"][0]["text"] == "fake: my name is Ada"
    assert second.previous_response_id == first.id

    items = list(client.responses.input_items.list(second.id, order="asc"))
    assert [(item.role, item.content[0].text) for item in items] == [
        ("user", "my name is Ada"),
        ("assistant", "fake: my name is Ada"),
        ("user", "what is my name?"),
    ]
    page = client.responses.input_items.list(second.id, limit=2)  # newest first, paged by item id
    assert [item.content[0].text for item in page.data] == ["what is my name?", "fake: my name is Ada"]
    assert page.has_more
    rest = client.responses.input_items.list(second.id, limit=2, after=page.data[-1].id)
    assert [item.content[0].text for item in rest.data] == ["my name is Ada"] and not rest.has_more

    with pytest.raises(openai.NotFoundError):
        client.responses.create(model="gpt-4o", input="x", previous_response_id="resp_" + "0" * 32)


def test_function_call_round_trip_is_kept_and_listed_by_kind(
    host: RunningHost, fake_upstream: FakeUpstream, tag: str
) -> None:
    client = host.openai_client()
    fake_upstream.script(
        Reply(function_calls=[{"name": "get_weather", "arguments": '{"city":"Oslo"}', "call_id": "call_1"}])
    )
    asked = client.responses.create(model="gpt-4o", input="Weather in Oslo?", tools=TOOLS, metadata={"tag": tag})
    call = asked.output[0]
    assert (call.type, call.name, call.call_id) == ("function_call", "get_weather", "call_1")
    answered = client.responses.create(
        model="gpt-4o",
        previous_response_id=asked.id,
        tools=TOOLS,
        input=[{"type": "function_call_output", "call_id": "call_1", "output": json.dumps({"celsius": 7})}],
        metadata={"tag": tag},
    )
    chat = client.chat.completions.create(
        model="gpt-4o", store=True, metadata={"tag": tag}, messages=[{"role": "user", "content": "hi"}]
    )
    wait_listed(client, [asked.id, answered.id, chat.id])

    # The SDK's chat.completions.list sees chat completions only (its items must have `choices`)...
    assert [kept.id for kept in client.chat.completions.list(metadata={"tag": tag})] == [chat.id]
    # ...and `kind=all` lists both kinds.
    listed = client.chat.completions.with_raw_response.list(
        metadata={"tag": tag}, extra_query={"kind": "all"}
    ).http_response.json()["data"]
    assert sorted(item["object"] for item in listed) == ["chat.completion", "response", "response"]
    responses_only = client.get(
        "/chat/completions", cast_to=object, options={"params": {"metadata[tag]": tag, "kind": "response"}}
    )
    assert [item["id"] for item in responses_only["data"]] == [asked.id, answered.id]
    assert responses_only["data"][0]["distillery"]["preview"] == "Weather in Oslo?"

    types = [item.type for item in client.responses.input_items.list(answered.id, order="asc")]
    assert types == ["message", "function_call", "function_call_output"]

    with pytest.raises(openai.NotFoundError):  # each kind on its own routes
        client.chat.completions.retrieve(asked.id)
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(chat.id)

    client.responses.delete(asked.id)
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(asked.id)


def test_upstream_without_responses_is_named(host: RunningHost, fake_upstream: FakeUpstream) -> None:
    fake_upstream.script(Reply(status=404, body="404 page not found"))
    with pytest.raises(openai.BadRequestError) as raised:
        host.openai_client(max_retries=0).responses.create(model="gpt-4o", input="hi")
    assert raised.value.code == "upstream_without_responses"
    assert "does not support the Responses API" in raised.value.message


def test_responses_become_a_distillation_dataset_and_an_eval_run(
    host: RunningHost, fake_upstream: FakeUpstream, tag: str
) -> None:
    """The whole loop: responses (plain, streamed, a function-call chain) -> listed -> a dataset whose lines
    pass the fine-tuning check, inexpressible ones skipped with their reason -> an eval run over a `responses` source."""
    client = host.openai_client()
    kept = []
    for n in range(8):
        asked = {"model": "gpt-4o", "input": f"question {n}", "instructions": "Be brief.", "metadata": {"tag": tag}}
        if n % 2:
            kept.append([event for event in client.responses.create(**asked, stream=True)][-1].response.id)
        else:
            kept.append(client.responses.create(**asked).id)
    fake_upstream.script(
        Reply(function_calls=[{"name": "get_weather", "arguments": '{"city":"Oslo"}', "call_id": "c1"}])
    )
    call = client.responses.create(model="gpt-4o", input="Weather in Oslo?", tools=TOOLS, metadata={"tag": tag})
    answer = client.responses.create(
        model="gpt-4o",
        previous_response_id=call.id,
        tools=TOOLS,
        input=[{"type": "function_call_output", "call_id": "c1", "output": "7 C"}],
        metadata={"tag": tag},
    )
    referenced = client.responses.create(  # an item with no chat form
        model="gpt-4o",
        input=[{"type": "item_reference", "id": "msg_elsewhere"}, {"role": "user", "content": "and?"}],
        metadata={"tag": tag},
    )
    unknown_start = client.responses.create(  # an earlier turn Distillery never saw
        model="gpt-4o", input="go on", previous_response_id="resp_fromelsewhere", metadata={"tag": tag}
    )
    assert client.responses.retrieve(unknown_start.id).model_extra["distillery"]["history_complete"] is False
    wait_listed(client, [*kept, call.id, answer.id, referenced.id, unknown_start.id])

    with host.http() as http:
        started = http.post("/api/datasets", json={"kind": "distillation", "filter": {"metadata": {"tag": tag}}})
        assert started.status_code == 202, started.text
        built = wait_until(
            http, f"/api/datasets/{started.json()['id']}", lambda b: b["status"] in ("succeeded", "failed")
        )
        assert built["status"] == "succeeded", built
        assert built["counts"] == {
            "selected": 12,
            "written": 10,
            "skipped": {"unsupported_response_item": 1, "incomplete_conversation": 1},
        }
        lines = [
            line
            for file in built["files"]
            for line in http.get(f"/api/datasets/{built['id']}/files/{file['name']}").content.splitlines()
        ]
        assert list(check_lines(lines)) == []
        examples = [json.loads(line) for line in lines]
        plain = next(e for e in examples if e["messages"][1].get("content") == "question 3")
        assert plain["messages"] == [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "question 3"},
            {"role": "assistant", "content": "fake: question 3"},
        ]
        chained = next(e for e in examples if len(e["messages"]) == 4)
        tool_call = {
            "id": "c1",
            "type": "function",
            "function": {"name": "get_weather", "arguments": '{"city":"Oslo"}'},
        }
        assert chained["messages"] == [
            {"role": "user", "content": "Weather in Oslo?"},
            {"role": "assistant", "tool_calls": [tool_call]},
            {"role": "tool", "tool_call_id": "c1", "content": "7 C"},
            {"role": "assistant", "content": "fake: Weather in Oslo?"},
        ]
        assert chained["tools"] == [
            {"type": "function", "function": {k: TOOLS[0][k] for k in ("name", "description", "parameters")}}
        ]

    evaluation = client.evals.create(
        name="responses",
        data_source_config={"type": "logs", "metadata": {"tag": tag}},
        testing_criteria=[
            {
                "type": "string_check",
                "name": "fake",
                "input": "{{sample.output_text}}",
                "reference": "fake:",
                "operation": "ilike",
            }
        ],
    )
    run = client.evals.runs.create(
        evaluation.id,
        data_source={
            "type": "responses",
            "source": {"type": "responses", "metadata": {"tag": tag}, "instructions_search": "brief"},
        },
    )
    done = wait_for_run(client, evaluation.id, run.id)
    assert done.status == "completed", done
    assert done.result_counts.model_dump() == {"total": 8, "passed": 8, "failed": 0, "errored": 0}
    items = list(client.evals.runs.output_items.list(run.id, eval_id=evaluation.id))
    assert sorted(item.datasource_item["completion_id"] for item in items) == sorted(kept)


def test_idempotency_key_retry_replays_the_kept_response(
    host: RunningHost, fake_upstream: FakeUpstream, tag: str
) -> None:
    client = host.openai_client()
    asked = {
        "model": "gpt-4o",
        "input": "once only",
        "metadata": {"tag": tag},
        "extra_headers": {"Idempotency-Key": tag},
    }
    first = client.responses.create(**asked)
    calls = len(fake_upstream.requests)
    again = client.responses.with_raw_response.create(**asked)
    assert again.headers["x-distillery-replayed"] == "true" and again.parse().id == first.id
    streamed = list(client.responses.create(**asked, stream=True))
    assert streamed[-1].type == "response.completed" and streamed[-1].response.id == first.id
    assert "".join(e.delta for e in streamed if e.type == "response.output_text.delta") == "fake: once only"
    assert len(fake_upstream.requests) == calls  # no second upstream call


def test_a_responses_run_with_a_model_answers_through_the_responses_api(
    host: RunningHost, fake_upstream: FakeUpstream, tag: str
) -> None:
    client = host.openai_client()
    kept = [client.responses.create(model="gpt-4o", input=f"ask {n}", metadata={"tag": tag}).id for n in range(2)]
    wait_listed(client, kept)
    evaluation = client.evals.create(
        name="responses candidate",
        data_source_config={"type": "logs", "metadata": {"tag": tag}},
        testing_criteria=[
            {
                "type": "string_check",
                "name": "echo",
                "input": "{{sample.output_text}}",
                "reference": "fake: ask",
                "operation": "like",
            }
        ],
    )
    fake_upstream.reset()
    run = client.evals.runs.create(
        evaluation.id,
        data_source={
            "type": "responses",
            "source": {"type": "responses", "metadata": {"tag": tag}},
            "model": "student",
            "sampling_params": {"temperature": 0.1, "max_completion_tokens": 40},
        },
    )
    done = wait_for_run(client, evaluation.id, run.id)
    assert done.status == "completed", done
    assert done.result_counts.model_dump() == {"total": 2, "passed": 2, "failed": 0, "errored": 0}
    candidates = [
        r for r in fake_upstream.requests if r["url"].endswith("/v1/responses") and r["body"]["model"] == "student"
    ]
    assert len(candidates) == 2
    assert all(c["body"]["max_output_tokens"] == 40 and c["body"]["store"] is False for c in candidates)


def test_a_background_response_is_polled_by_the_sdk_and_kept_when_done(
    client: openai.OpenAI, fake_upstream: FakeUpstream, tag: str
) -> None:
    created = client.responses.create(model="gpt-4o", input="take your time", background=True, metadata={"tag": tag})
    assert created.status == "queued" and created.id.startswith("resp_") and created.metadata == {"tag": tag}
    assert fake_upstream.requests[-1]["body"]["store"] is True  # background mode runs only for stored responses

    seen = [created.status]
    while seen[-1] in ("queued", "in_progress") and len(seen) < 20:  # the SDK's documented polling loop
        seen.append(client.responses.retrieve(created.id).status)
    assert seen[-1] == "completed", seen

    wait_listed(client, [created.id], seconds=60)  # kept by the queued poll (POLL_SECONDS apart)
    kept = client.responses.retrieve(created.id)
    assert (kept.output_text, kept.metadata) == ("fake: take your time", {"tag": tag})
