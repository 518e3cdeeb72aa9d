"""`distillery completions list|show|delete` against the local host: filters, order, limit, paging, deletion."""

from __future__ import annotations

import json
from typing import Any

from distillery_cli.client import COMPLETIONS_PATH
from tests.cli.conftest import Cli, ScriptedService, run_against, store
from tests.conftest import RunningHost
from tests.e2e.polling import wait_listed
from tests.fakes import FakeUpstream, Reply


def _ids(cli: Cli, *args: str) -> list[str]:
    result = cli("completions", "list", "--json", *args)
    assert result.exit_code == 0, result.output
    return [completion["id"] for completion in json.loads(result.stdout)["data"]]


def test_list_filters_order_limit_and_paging(
    cli: Cli, host: RunningHost, fake_upstream: FakeUpstream, tag: str
) -> None:
    client = host.openai_client()
    docs = store(client, 3, tag=tag, category="docs")
    chat = store(client, 2, model="other-deployment", tag=tag, category="chat")
    store(client, 1, tag=tag + "-other")

    assert _ids(cli, "-m", f"tag={tag}", "--order", "asc") == docs + chat
    assert _ids(cli, "-m", f"tag={tag}") == list(reversed(docs + chat))  # newest first by default
    assert _ids(cli, "-m", f"tag={tag}", "-m", "category=docs", "--order", "asc") == docs
    assert _ids(cli, "-m", f"tag={tag}", "--model", "other-deployment", "--order", "asc") == chat
    assert _ids(cli, "-m", f"tag={tag}", "--after", docs[0], "--order", "asc") == docs[1:] + chat

    created = {c.id: c.created for c in client.chat.completions.list(metadata={"tag": tag})}
    everything = _ids(
        cli, "-m", f"tag={tag}", "--created-after", "2020-01-01", "--created-before", "2100-01-01T00:00:00Z"
    )
    assert sorted(everything) == sorted(docs + chat)
    later = max(created.values()) + 1
    assert _ids(cli, "-m", f"tag={tag}", "--created-after", str(later)) == []

    # --limit is a count of completions, followed across API pages (page size is min(limit, 100)).
    limited = cli("completions", "list", "--json", "-m", f"tag={tag}", "--order", "asc", "--limit", "4")
    page = json.loads(limited.stdout)
    assert [c["id"] for c in page["data"]] == (docs + chat)[:4] and page["has_more"] is True
    whole = json.loads(cli("completions", "list", "--json", "-m", f"tag={tag}", "--limit", "5").stdout)
    assert len(whole["data"]) == 5 and whole["has_more"] is False

    table = cli("completions", "list", "-m", f"tag={tag}", "--limit", "2", "--order", "asc")
    assert table.exit_code == 0
    assert docs[0] in table.stdout and docs[1] in table.stdout and docs[2] not in table.stdout
    assert "category=docs" in table.stdout
    assert f"--after {docs[1]}" in table.stderr  # the cursor to the next page


def test_show_and_delete(cli: Cli, host: RunningHost, fake_upstream: FakeUpstream, tag: str) -> None:
    (completion_id,) = store(host.openai_client(), 1, tag=tag)
    (bracketed,) = store(host.openai_client(), 1, tag=tag, note="[red]not markup[/red]")
    for args in (["completions", "show", bracketed], ["completions", "list", "-m", f"tag={tag}"]):
        assert "[red]not markup[/red]" in cli(*args).stdout  # callers' text is printed as it is, never as markup
    assert cli("completions", "delete", bracketed, "--yes").exit_code == 0

    shown = cli("completions", "show", completion_id)
    assert shown.exit_code == 0, shown.output
    assert completion_id in shown.stdout and "question 0" in shown.stdout and f"tag={tag}" in shown.stdout
    document = json.loads(cli("completions", "show", completion_id, "--json").stdout)
    assert document["id"] == completion_id and document["metadata"] == {"tag": tag}
    assert [m["content"] for m in document["input_messages"]] == ["question 0"]

    declined = cli("completions", "delete", completion_id, input="n\n")
    assert declined.exit_code == 1 and "Nothing deleted" in declined.stderr
    assert cli("completions", "show", completion_id).exit_code == 0

    deleted = cli("completions", "delete", completion_id, "--yes", "--json")
    assert deleted.exit_code == 0 and json.loads(deleted.stdout)["deleted"] is True
    gone = cli("completions", "show", completion_id)
    assert gone.exit_code == 2 and "404" in gone.stderr and completion_id in gone.stderr
    assert _ids(cli, "-m", f"tag={tag}") == []


# A clipboard write (OSC 52), a screen clear, a hidden link (OSC 8), an 8-bit CSI and a right-to-left override.
HOSTILE = (
    "\x1b]52;c;cHduZWQ=\x07 \x1b[2J\x1b[H \x1b]8;;https://evil.example/\x1b\\click\x1b]8;;\x1b\\ \x9b31m \u202egnp.exe"
)
RAW = ("\x1b", "\x07", "\x9b", "\u202e")


def test_control_characters_in_stored_content_are_escaped(
    cli: Cli, host: RunningHost, fake_upstream: FakeUpstream, tag: str, scripted: ScriptedService
) -> None:
    completion_id = (
        host.openai_client()
        .chat.completions.create(
            model="gpt-4o",
            store=True,
            metadata={"tag": tag, "note": HOSTILE},
            messages=[{"role": "user", "content": HOSTILE}],
        )
        .id
    )
    wait_listed(host.openai_client(), [completion_id])
    for args in (["completions", "show", completion_id], ["completions", "list", "-m", f"tag={tag}"]):
        result = cli(*args)
        assert result.exit_code == 0, result.output
        assert not any(raw in result.output for raw in RAW), (args, result.output)
        assert "\\x1b]52;c;cHduZWQ=\\x07" in result.stdout and "\\x9b31m" in result.stdout, args
    as_json = cli("completions", "show", completion_id, "--json")
    assert not any(raw in as_json.stdout for raw in RAW)
    document = json.loads(as_json.stdout)
    assert document["metadata"]["note"] == HOSTILE and document["input_messages"][0]["content"] == HOSTILE

    # The service's own messages are text from afar too.
    scripted.answer(f"{COMPLETIONS_PATH}/x", {"error": {"message": f"no {HOSTILE}", "code": "nope"}}, status=404)
    failed = run_against(scripted, "completions", "show", "x")
    assert failed.exit_code != 0 and "\\x1b[2J" in failed.stderr
    assert not any(raw in failed.output for raw in RAW)


def _completion(number: int) -> dict[str, Any]:
    return {
        "id": f"chatcmpl-{number:032x}",
        "object": "chat.completion",
        "created": 1_796_000_000 + number,
        "model": "gpt-4o-mini-2024-07-18",
        "metadata": {"category": "release-notes", "user": "bob"},
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "When is the next release? " * 4}}],
    }


def test_list_chooses_columns_by_terminal_width(scripted: ScriptedService) -> None:
    page = {"object": "list", "data": [_completion(n) for n in range(3)], "has_more": False}
    scripted.answer(COMPLETIONS_PATH, page)
    narrow = run_against(scripted, "completions", "list", env={"COLUMNS": "80"})
    assert narrow.exit_code == 0, narrow.output
    lines = narrow.stdout.splitlines()
    assert max(map(len, lines)) <= 80, narrow.stdout
    for n in range(3):  # each id whole on its line, beside the start of its answer
        assert any(f"chatcmpl-{n:032x}" in line and "When is" in line for line in lines), narrow.stdout
    wide = run_against(scripted, "completions", "list", env={"COLUMNS": "200"})
    assert all(header in wide.stdout for header in ("created (UTC)", "model", "metadata", "answer"))
    assert "category=release-notes" in wide.stdout and max(map(len, wide.stdout.splitlines())) <= 200


def test_bulk_tags_and_scores_a_filter(cli: Cli, host: RunningHost, fake_upstream: FakeUpstream, tag: str) -> None:
    chosen = store(host.openai_client(), 2, tag=tag)
    dry = cli(
        "completions", "bulk", "-m", f"tag={tag}", "--set", "lot=7", "--score", "quality=4", "--dry-run", "--wait"
    )
    assert dry.exit_code == 0, dry.output
    assert "2 matched, would change 2" in dry.stdout
    done = cli("completions", "bulk", "-m", f"tag={tag}", "--set", "lot=7", "--score", "quality=4", "--wait", "--json")
    assert done.exit_code == 0, done.output
    assert json.loads(done.stdout)["receipt"]["updated_count"] == 2
    assert sorted(_ids(cli, "-m", f"tag={tag}", "-m", "lot=7")) == sorted(chosen)
    refused = cli("completions", "bulk", "-m", f"tag={tag}", "--set", "lot=7", "--unset", "lot")
    assert refused.exit_code == 2 and "both set and removed" in refused.output


def test_relabel_on_a_stronger_deployment(cli: Cli, host: RunningHost, fake_upstream: FakeUpstream, tag: str) -> None:
    store(host.openai_client(), 2, tag=tag)
    done = cli(
        "completions",
        "relabel",
        "-m",
        f"tag={tag}",
        "--deployment",
        "teacher-xl",
        "--max-total-tokens",
        "100",
        "--wait",
    )
    assert done.exit_code == 0, done.output
    assert "2 relabeled on teacher-xl, 20 tokens (done)" in done.stdout
    assert len(_ids(cli, "-m", f"tag={tag}", "--model", "teacher-xl")) == 2

    batch = cli(
        "completions",
        "relabel",
        "-m",
        f"tag={tag}",
        "--deployment",
        "teacher-xl",
        "--max-total-tokens",
        "100",
        "--batch",
    )
    assert batch.exit_code != 0 and "reserves 8206 tokens" in batch.output  # 2 x (7 prompt + 4096 default)


def test_responses_are_listed_by_kind_shown_and_deleted(
    cli: Cli, host: RunningHost, fake_upstream: FakeUpstream, tag: str
) -> None:
    client = host.openai_client()
    (chat,) = store(client, 1, tag=tag)
    fake_upstream.script(Reply(function_calls=[{"name": "get_weather", "arguments": '{"city":"Oslo"}'}]))
    response = client.responses.create(model="gpt-4o", input="Weather in Oslo?", metadata={"tag": tag})
    wait_listed(client, [chat, response.id])

    assert _ids(cli, "-m", f"tag={tag}", "--order", "asc") == [chat, response.id]
    assert _ids(cli, "-m", f"tag={tag}", "--kind", "response") == [response.id]
    assert _ids(cli, "-m", f"tag={tag}", "--kind", "chat.completion") == [chat]
    assert "get_weather(…)" in cli("completions", "list", "-m", f"tag={tag}", "--kind", "response").stdout

    shown = cli("completions", "show", response.id)
    assert shown.exit_code == 0, shown.output
    assert "Weather in Oslo?" in shown.stdout and 'get_weather({"city":"Oslo"})' in shown.stdout
    assert cli("completions", "delete", response.id, "--yes").exit_code == 0
    assert _ids(cli, "-m", f"tag={tag}", "--kind", "response") == []
