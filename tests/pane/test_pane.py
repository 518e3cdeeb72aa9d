"""The pane in a real browser against the real local stack: sign in, filter, open, edit, select all
matching → distill → download, what a read-only key is offered, and API errors shown as they come."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import httpx
import openai
from playwright.sync_api import Browser, Page, expect
from typer.testing import CliRunner

from distillery_cli.main import app as cli_app
from tests.callers import principal
from tests.conftest import RunningHost
from tests.e2e.polling import wait_listed
from tests.fakes import FAKE_MODEL, FakeUpstream, Reply
from tests.pane.conftest import screenshot

Host = tuple[RunningHost, dict[str, str]]

TOOLS = [
    {
        "type": "function",
        "function": {
            "name": name,
            "description": f"{name} tool",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
        },
    }
    for name in ("weather", "forecast", "air_quality")
]
QUESTIONS = [
    "How do I reset my password?",
    "Can I export my invoices as CSV?",
    "Why was my card declined twice this morning?",
    "What is the difference between the Team and Business plans?",
    "How do I add a second administrator to our workspace?",
    "Is there an API rate limit for the reporting endpoints?",
]


def store(host: RunningHost, count: int, **metadata: str) -> list[str]:
    client = host.openai_client()
    stored = [
        client.chat.completions.create(
            model="gpt-4o" if n % 3 else "gpt-4o-mini",
            store=True,
            metadata={**metadata, "channel": "web" if n % 2 else "email"},
            messages=[
                {"role": "system", "content": "You are the support assistant of Contoso Cloud."},
                {"role": "user", "content": f"{QUESTIONS[n % len(QUESTIONS)]} (ticket {4100 + n})"},
            ],
        ).id
        for n in range(count)
    ]
    wait_listed(client, stored)
    return stored


def store_tool_conversation(host: RunningHost, upstream: FakeUpstream, tag: str) -> str:
    """A long multi-turn conversation with tool calls and their results, answered with more calls."""
    calls = [
        {"id": f"call_{n}", "type": "function", "function": {"name": name, "arguments": json.dumps({"city": city})}}
        for n, (name, city) in enumerate([("weather", "Oslo"), ("forecast", "Oslo"), ("air_quality", "Bergen")])
    ]
    messages: list[dict[str, Any]] = [
        {"role": "system", "content": "Use the tools; answer in one short paragraph."},
        {"role": "user", "content": "I'm cycling from Oslo to Bergen this weekend. What weather should I expect?"},
        {"role": "assistant", "content": None, "tool_calls": calls[:2]},
        {"role": "tool", "tool_call_id": "call_0", "content": '{"temp_c": 4, "wind_ms": 9, "sky": "rain"}'},
        {
            "role": "tool",
            "tool_call_id": "call_1",
            "content": '{"saturday": "rain, 3-6 C", "sunday": "showers, 5-8 C", "monday": "clear, 2-9 C"}',
        },
        {"role": "assistant", "content": "Rain on Saturday and showers on Sunday around Oslo. Shall I check Bergen?"},
        {"role": "user", "content": "Yes please, and the air quality there too."},
    ]
    upstream.script(Reply(message={"role": "assistant", "content": None, "tool_calls": calls[1:]}))
    client = host.openai_client()
    stored = client.chat.completions.create(
        model="gpt-4o",
        store=True,
        metadata={"tag": tag, "flow": "trip-planner"},
        messages=messages,  # type: ignore[arg-type]
        tools=TOOLS,  # type: ignore[arg-type]
    ).id
    wait_listed(client, [stored])
    return stored


DESKTOP_SIZES = [{"width": 1280, "height": 800}, {"width": 1920, "height": 1080}]

OVERFLOWING = """panel => {
    const left = panel.getBoundingClientRect().left + panel.clientLeft;
    const right = left + panel.clientWidth;
    const found = panel.scrollWidth > panel.clientWidth ? [`panel scrolls by ${panel.scrollWidth - panel.clientWidth}px`] : [];
    for (const element of panel.querySelectorAll("*")) {
        const box = element.getBoundingClientRect();
        if (!box.width || !box.height) continue;
        if (box.right > right + 0.5 || box.left < left - 0.5) {
            found.push(`${element.tagName.toLowerCase()}.${element.className} ${Math.round(box.left)}..${Math.round(box.right)}`);
        }
    }
    return found;
}"""
"""What inside `panel` sticks out of its content box sideways (hidden elements aside)."""

SIDEWAYS_SCROLL = """() => {
    const wrap = document.querySelector(".table-wrap");
    return {
        table: wrap.scrollWidth - wrap.clientWidth,
        page: document.documentElement.scrollWidth - document.documentElement.clientWidth,
    };
}"""


def sign_in(page: Page, host: RunningHost, key: str) -> None:
    page.goto(host.url + "/")
    page.get_by_label("API key").fill(key)
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("navigation", name="Views")).to_be_visible()


def filter_by(page: Page, **metadata: str) -> None:
    for index, (name, value) in enumerate(metadata.items()):
        if index:
            page.get_by_role("button", name="Add metadata filter").click()
        page.locator(f"#meta-key-{index}").fill(name)
        page.locator(f"#meta-value-{index}").fill(value)
    page.get_by_role("button", name="Apply filters").click()


def test_sign_in_filter_open_and_edit_metadata(
    page: Page, pane_host: Host, fake_upstream: FakeUpstream, tag: str
) -> None:
    host, keys = pane_host
    store(host, 3, tag=tag + "-other")
    ids = store(host, 4, tag=tag)
    page.goto(host.url + "/")
    expect(page.get_by_role("heading", name="Sign in")).to_be_visible()
    expect(page.get_by_role("link", name="Sign in with Microsoft")).to_have_count(0)  # no App Service Authentication
    page.get_by_label("API key").fill("not-a-key")
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("alert")).to_contain_text("Incorrect API key provided.")

    sign_in(page, host, keys["full"])
    expect(page.locator(".who")).to_contain_text("default")
    filter_by(page, tag=tag)
    rows = page.locator("table.completions tbody tr")
    expect(rows).to_have_count(4)
    assert rows.evaluate_all("rows => rows.map(row => row.dataset.id)") == ids[::-1], "newest first"
    expect(rows.first.locator(".user-preview")).to_have_text(re.compile("How do I|Can I|Why was|What is"))

    rows.nth(1).locator("button.open-detail").click()
    detail = page.get_by_role("complementary", name="Completion detail")
    expect(detail.locator("code").first).to_have_text(ids[2])
    expect(detail.locator(".message.role-user")).to_contain_text(QUESTIONS[2])
    expect(detail.locator(".message.output")).to_contain_text("fake: " + QUESTIONS[2])
    detail.get_by_role("button", name="Add pair").click()
    pairs = detail.locator(".metadata-edit .pair")
    pairs.last.locator(".edit-key").fill("reviewed")
    pairs.last.locator(".edit-value").fill("yes")
    detail.get_by_role("button", name="Save metadata").click()
    expect(detail.get_by_text("Metadata saved.")).to_be_visible()
    with host.http() as http:
        stored = http.get(f"/openai/v1/chat/completions/{ids[2]}").json()
    assert stored["metadata"] == {"tag": tag, "channel": "email", "reviewed": "yes"}
    expect(rows.nth(1).locator(".chips")).to_contain_text("reviewed=yes")

    page.get_by_role("button", name="Add metadata filter").click()
    page.locator("#meta-key-1").fill("reviewed")
    page.locator("#meta-value-1").fill("yes")
    page.get_by_role("button", name="Apply filters").click()
    expect(rows).to_have_count(1)
    expect(rows.first).to_have_attribute("data-id", ids[2])


def test_a_long_tool_call_conversation_and_delete(
    page: Page, pane_host: Host, fake_upstream: FakeUpstream, tag: str
) -> None:
    host, keys = pane_host
    doomed = store(host, 1, tag=tag)[0]
    conversation = store_tool_conversation(host, fake_upstream, tag)
    sign_in(page, host, keys["full"])
    filter_by(page, tag=tag, flow="trip-planner")
    page.locator(f'tr[data-id="{conversation}"] button.open-detail').click()
    detail = page.get_by_role("complementary", name="Completion detail")
    expect(detail.locator(".message")).to_have_count(8)
    expect(detail.locator(".tool-call .tool-name")).to_have_count(4)
    expect(detail.locator(".message.output .tool-name").first).to_contain_text("forecast")
    expect(detail.locator(".message.role-tool").first).to_contain_text("result of call_0")
    tools = detail.get_by_role("region", name=re.compile("Tools offered"))
    expect(tools).to_contain_text("Tools offered (3)")
    expect(tools.locator(".tool-def-name")).to_have_text(["weather", "forecast", "air_quality"])
    schema = tools.locator(".tool-def pre").nth(1)
    expect(schema).to_be_hidden()
    tools.get_by_text("forecast tool").click()
    expect(schema).to_be_visible()
    expect(schema).to_contain_text('"city"')
    page.set_viewport_size({"width": 1440, "height": 1500})
    screenshot(page, "detail-tool-calls")
    page.set_viewport_size({"width": 1440, "height": 900})

    page.get_by_role("button", name="Clear").click()
    filter_by(page, tag=tag)
    page.locator(f'tr[data-id="{doomed}"] button.open-detail').click()
    page.get_by_role("button", name="Delete completion").click()
    dialog = page.get_by_role("dialog", name="Delete this completion?")
    dialog.get_by_role("button", name="Cancel").click()
    expect(page.locator(f'tr[data-id="{doomed}"]')).to_have_count(1)
    page.get_by_role("button", name="Delete completion").click()
    dialog.get_by_role("button", name="Delete").click()
    expect(page.locator(f'tr[data-id="{doomed}"]')).to_have_count(0)
    with host.http() as http:
        assert http.get(f"/openai/v1/chat/completions/{doomed}").status_code == 404


def test_select_all_matching_distill_wait_and_download(
    page: Page, pane_host: Host, fake_upstream: FakeUpstream, tag: str, tmp_path: Path
) -> None:
    host, keys = pane_host
    store(host, 12, tag=tag)
    sign_in(page, host, keys["full"])
    filter_by(page, tag=tag)
    expect(page.locator("table.completions tbody tr")).to_have_count(12)
    expect(page.locator(".user-preview").last).to_contain_text("ticket")
    screenshot(page, "completions", full_page=True)
    page.get_by_role("button", name="Select all matching this filter").click()
    expect(page.locator("#selection-summary")).to_contain_text(f"tag={tag}")
    page.get_by_role("button", name="Distill…").click()
    dialog = page.get_by_role("dialog", name="Distill")
    dialog.get_by_label("Dataset name").fill(f"support {tag}")
    dialog.get_by_label("Validation fraction").fill("0.25")
    dialog.get_by_label("Group key (optional)").fill("channel")
    dialog.get_by_role("button", name="Start distilling").click()
    expect(dialog.locator(".job-status")).to_be_visible()
    screenshot(page, "dataset-progress")
    expect(dialog.locator(".badge.status-succeeded")).to_be_visible(timeout=60_000)
    expect(dialog.locator(".count-selected")).to_have_text("12")
    expect(dialog.locator(".count-written")).to_have_text("12")
    screenshot(page, "dataset-done")

    lines = []
    for name in ("train.jsonl", "validation.jsonl"):
        with page.expect_download() as download_info:
            dialog.locator(f'button[data-file="{name}"]').click()
        saved = tmp_path / name
        download_info.value.save_as(saved)
        lines += saved.read_text().splitlines()
    assert len(lines) == 12
    assert {json.loads(line)["messages"][-1]["role"] for line in lines} == {"assistant"}
    with page.expect_download() as download_info:
        dialog.locator('button[data-file="manifest.json"]').click()
    manifest = json.loads(Path(download_info.value.path()).read_text())
    assert manifest["counts"]["written"] == 12

    dialog.get_by_role("button", name="Close").click()
    page.get_by_role("link", name="Datasets").click()
    card = page.locator("article.dataset", has_text=f"support {tag}")
    expect(card.locator(".badge.status-succeeded")).to_be_visible()
    expect(card.locator('button[data-file="train.jsonl"]')).to_be_visible()


def test_a_read_only_key_sees_no_delete_or_distill(
    page: Page, pane_host: Host, fake_upstream: FakeUpstream, tag: str
) -> None:
    host, keys = pane_host
    store(host, 2, tag=tag)
    sign_in(page, host, keys["reviewer"])
    expect(page.locator(".who")).to_contain_text("read only")
    filter_by(page, tag=tag)
    expect(page.locator("table.completions tbody tr")).to_have_count(2)
    expect(page.get_by_role("checkbox")).to_have_count(0)
    for name in ("Distill…", "Evaluate…", "Select all matching this filter"):
        expect(page.get_by_role("button", name=name)).to_have_count(0)
    page.locator("button.open-detail").first.click()
    detail = page.get_by_role("complementary", name="Completion detail")
    expect(detail.locator(".message.output")).to_be_visible()
    expect(page.get_by_role("button", name="Delete completion")).to_have_count(0)
    expect(page.get_by_role("button", name="Save metadata")).to_have_count(0)

    page.get_by_role("button", name="Sign out").click()
    sign_in(page, host, keys["newcomer"])
    expect(page.get_by_text("No stored completions yet.")).to_be_visible()
    screenshot(page, "empty-store")


def test_api_errors_are_shown(page: Page, pane_host: Host, fake_upstream: FakeUpstream) -> None:
    host, keys = pane_host
    page.goto(host.url + "/")
    page.get_by_label("API key").fill(keys["batch"])
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("alert")).to_contain_text("lacks the 'stored-completions/read' right")

    sign_in(page, host, keys["full"])
    page.get_by_label("Created from").fill("2026-03-02T10:00")
    page.get_by_label("Created before").fill("2026-03-01T10:00")
    page.get_by_role("button", name="Apply filters").click()
    banner = page.locator("#error")
    expect(banner).to_contain_text("created_after must be earlier than created_before")
    expect(page.get_by_text("The stored completions could not be listed.")).to_be_visible()
    screenshot(page, "error")


def test_health_shows_quota_and_permission_checks(page: Page, pane_host: Host, fake_upstream: FakeUpstream) -> None:
    host, keys = pane_host
    store(host, 1, tag="health")
    sign_in(page, host, keys["full"])
    page.get_by_role("link", name="Health").click()
    expect(page.locator("#quota-meter")).to_be_visible()
    with httpx.Client(base_url=host.url, headers={"api-key": keys["full"]}) as http:
        quota = http.get("/api/quota").json()
    expect(page.locator(".gauge-value")).to_have_text(f"{quota['percent_used']:.1f}%")
    expect(page.locator(".probe").first).to_be_visible()
    expect(page.get_by_role("heading", name=re.compile("Permission health"))).to_contain_text(
        re.compile("healthy|needs attention")
    )
    screenshot(page, "health", full_page=True)


def test_evaluate_the_selection_and_see_pass_rates(
    page: Page, pane_host: Host, fake_upstream: FakeUpstream, tag: str
) -> None:
    host, keys = pane_host
    store(host, 3, tag=tag)
    sign_in(page, host, keys["full"])
    filter_by(page, tag=tag)
    expect(page.locator("table.completions tbody tr")).to_have_count(3)
    page.get_by_role("button", name="Select all matching this filter").click()
    page.get_by_role("button", name="Evaluate…").click()
    dialog = page.get_by_role("dialog", name="Evaluate")
    dialog.get_by_label("Eval name").fill(f"support answers {tag}")
    dialog.get_by_role("button", name="Start evaluating").click()
    expect(dialog.locator(".badge.status-completed")).to_be_visible(timeout=60_000)
    expect(dialog.locator(".counts")).to_contain_text("Passed3Failed0Errored0Total3")
    expect(dialog.get_by_role("img", name=re.compile("close to the stored answer: 3 passed, 0 failed"))).to_be_visible()

    dialog.get_by_role("button", name="Close").click()

    page.get_by_role("button", name="Clear selection").click()
    for box in page.get_by_role("checkbox").all()[:2]:
        box.check()
    expect(page.locator("#selection-summary")).to_have_text("2 selected.")
    page.get_by_role("button", name="Evaluate…").click()
    dialog.get_by_label("Eval name").fill(f"two picked {tag}")
    dialog.get_by_role("button", name="Start evaluating").click()
    expect(dialog.locator(".badge.status-completed")).to_be_visible(timeout=60_000)
    expect(dialog.locator(".counts")).to_contain_text("Passed2Failed0Errored0Total2")
    dialog.get_by_role("button", name="Close").click()

    page.get_by_role("link", name="Eval runs").click()
    card = page.locator("article", has_text=f"support answers {tag}")
    expect(card.locator(".badge.status-completed")).to_be_visible()
    expect(card.locator("svg.chart .chart-value")).to_have_text("100%")
    screenshot(page, "eval-runs")


def test_rows_show_seconds_deployment_and_preview_with_no_request_per_row(
    page: Page, pane_host: Host, fake_upstream: FakeUpstream, tag: str
) -> None:
    host, keys = pane_host
    ids = store(host, 3, tag=tag)
    sign_in(page, host, keys["full"])
    requested: list[str] = []
    page.on("request", lambda request: requested.append(request.url))
    filter_by(page, tag=tag)
    rows = page.locator("table.completions tbody tr")
    expect(rows).to_have_count(3)
    expect(rows.locator(".user-preview")).to_have_text([f"{QUESTIONS[n]} (ticket {4100 + n})" for n in (2, 1, 0)])
    api_calls = [url for url in requested if "/openai/" in url]
    assert len(api_calls) == 1 and "/messages" not in api_calls[0], "one list call draws every row's preview"

    created = rows.first.locator("button.open-detail")
    expect(created).to_have_text(re.compile(r"\d{1,2}:\d{2}:\d{2}"))  # seconds, not minutes only
    expect(created).to_have_attribute("title", re.compile(f"^{ids[2]}\n"))
    # store() asks for gpt-4o-mini (n=0) and gpt-4o; the fake upstream answers as FAKE_MODEL.
    expect(rows.locator("td.model .deployment")).to_have_text(["gpt-4o", "gpt-4o", "gpt-4o-mini"])
    expect(rows.first.locator("td.model .answered")).to_have_text(f"→ {FAKE_MODEL}")
    rows.first.locator("button.open-detail").click()
    detail = page.get_by_role("complementary", name="Completion detail")
    expect(detail.locator(".fact-deployment")).to_have_text("gpt-4o")
    expect(detail.locator(".fact-model")).to_have_text(FAKE_MODEL)


def test_a_metadata_chip_filters_on_its_pair(
    page: Page, pane_host: Host, fake_upstream: FakeUpstream, tag: str
) -> None:
    host, keys = pane_host
    ids = store(host, 4, tag=tag)  # channel: email, web, email, web
    sign_in(page, host, keys["full"])
    filter_by(page, tag=tag)
    rows = page.locator("table.completions tbody tr")
    expect(rows).to_have_count(4)
    rows.first.get_by_role("button", name="channel=web").click()
    expect(rows).to_have_count(2)
    assert rows.evaluate_all("rows => rows.map(row => row.dataset.id)") == [ids[3], ids[1]]
    expect(page.locator("#meta-key-1")).to_have_value("channel")
    expect(page.locator("#meta-value-1")).to_have_value("web")
    rows.first.get_by_role("button", name="channel=web").click()  # the same pair again narrows nothing more
    expect(page.locator(".metadata-rows .pair")).to_have_count(2)


def test_nothing_overflows_the_detail_or_the_table_at_desktop_sizes(
    page: Page, pane_host: Host, fake_upstream: FakeUpstream, tag: str
) -> None:
    host, keys = pane_host
    unbroken = "x" * 300
    host.openai_client().chat.completions.create(
        model="a-deployment-with-a-rather-long-name-for-support",
        store=True,
        metadata={"tag": tag, "customer": "contoso-" + unbroken[:200], "channel": "web", "region": "westeurope"},
        messages=[{"role": "user", "content": "Why was my card declined? " + unbroken}],
    )
    conversation = store_tool_conversation(host, fake_upstream, tag)
    sign_in(page, host, keys["full"])
    filter_by(page, tag=tag)
    rows = page.locator("table.completions tbody tr")
    expect(rows).to_have_count(2)
    detail = page.get_by_role("complementary", name="Completion detail")
    for size in DESKTOP_SIZES:
        page.set_viewport_size(size)
        assert page.evaluate(SIDEWAYS_SCROLL) == {"table": 0, "page": 0}, size
        for row in (rows.nth(0), rows.nth(1)):
            row.locator("button.open-detail").click()
            expect(detail.locator(".message.output")).to_be_visible()
            for summary in detail.locator(".tool-def summary").all():
                summary.click()  # the parameter schemas too
            assert detail.evaluate(OVERFLOWING) == [], (size, row.get_attribute("data-id"))
            assert page.evaluate(SIDEWAYS_SCROLL) == {"table": 0, "page": 0}, size
            expect(detail.get_by_role("button", name=re.compile("Remove metadata")).last).to_be_in_viewport()
        if size["width"] == 1280:
            page.locator(f'tr[data-id="{conversation}"] button.open-detail').click()
            expect(detail.locator(".message.output .tool-name").first).to_be_visible()
            screenshot(page, "detail-1280")
        if size["width"] == 1280:
            detail.locator("#detail-title").press("Escape")
        else:
            detail.get_by_role("button", name="Close detail").click()
        expect(detail).to_be_hidden()
        assert page.evaluate(SIDEWAYS_SCROLL) == {"table": 0, "page": 0}, size


def test_behind_app_service_auth_the_pane_offers_the_sign_in_link(
    browser: Browser, entra_host: RunningHost, fake_upstream: FakeUpstream
) -> None:
    anonymous = browser.new_context()
    page = anonymous.new_page()
    page.goto(entra_host.url + "/#health")
    link = page.get_by_role("link", name="Sign in with Microsoft")
    expect(link).to_have_attribute("href", "/.auth/login/aad?post_login_redirect_uri=%2F%23health")
    expect(page.get_by_label("API key")).to_be_visible()  # keys keep working alongside
    screenshot(page, "sign-in-entra")
    anonymous.close()

    # After sign-in the platform adds the principal header to every request; the pane needs no key.
    signed_in = browser.new_context(
        extra_http_headers={"x-ms-client-principal": principal("StoredCompletions.Reader", name="alice@contoso.com")}
    )
    page = signed_in.new_page()
    page.goto(entra_host.url + "/")
    expect(page.locator(".who")).to_contain_text("alice@contoso.com")
    expect(page.locator(".who").get_by_role("link", name="Sign out")).to_have_attribute(
        "href", "/.auth/logout?post_logout_redirect_uri=/"
    )
    expect(page.get_by_text("No stored completions yet.").or_(page.locator("table.completions"))).to_be_visible()
    signed_in.close()


def test_the_cli_report_link_opens_the_run_in_the_pane(
    page: Page, pane_host: Host, fake_upstream: FakeUpstream, tag: str
) -> None:
    host, keys = pane_host
    store(host, 2, tag=tag)
    evaluation = host.openai_client().evals.create(
        name=f"linked {tag}",
        data_source_config={"type": "stored_completions", "metadata": {"tag": tag}},
        testing_criteria=[
            {
                "type": "string_check",
                "name": "is the fake model",
                "input": "{{sample.output_text}}",
                "reference": "fake:",
                "operation": "ilike",
            }  # type: ignore[list-item]
        ],
    )
    result = CliRunner().invoke(
        cli_app,
        [
            "--url",
            host.url,
            "--api-key",
            keys["full"],
            "eval",
            "run",
            evaluation.id,
            "--data",
            "stored_completions",
            "-m",
            f"tag={tag}",
            "--wait",
        ],
        env={"DISTILLERY_ENTRA_SCOPE": None, "COLUMNS": "250"},
    )
    assert result.exit_code == 0, result.output
    [url] = [line.removeprefix("report: ") for line in result.stdout.splitlines() if line.startswith("report: ")]
    assert re.fullmatch(f"{re.escape(host.url)}/#evals/{evaluation.id}/evalrun_[0-9a-f]+", url), url

    page.goto(url)  # a browser with no key yet: sign in, then land on the run
    page.get_by_label("API key").fill(keys["full"])
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("heading", name=re.compile("^Eval run"))).to_be_visible()
    view = page.locator("article.run-view")
    expect(view).to_contain_text(f"linked {tag}")
    expect(view.locator(".badge.status-completed")).to_be_visible()
    expect(view.locator(".counts")).to_contain_text("Passed2Failed0Errored0Total2")
    screenshot(page, "eval-run")
    page.get_by_role("link", name="← All eval runs").click()
    expect(page.locator("article", has_text=f"linked {tag}").get_by_role("link")).to_have_attribute(
        "href", url.removeprefix(host.url + "/")
    )


def test_score_in_the_detail_filter_by_score_and_count_before_distill(
    page: Page, pane_host: Host, fake_upstream: FakeUpstream, tag: str
) -> None:
    host, keys = pane_host
    ids = store(host, 3, tag=tag)
    sign_in(page, host, keys["full"])
    filter_by(page, tag=tag)
    rows = page.locator("table.completions tbody tr")
    expect(rows).to_have_count(3)
    expect(page.locator("#match-count")).to_have_text("3 completions match this filter")

    page.locator(f'tr[data-id="{ids[0]}"] button.open-detail').click()
    detail = page.get_by_role("complementary", name="Completion detail")
    expect(detail.get_by_text("No scores yet.")).to_be_visible()
    detail.get_by_role("button", name="Helpful (thumbs up)").click()
    expect(detail.get_by_text("Score helpful saved.")).to_be_visible()
    detail.locator("#score-name").fill("quality")
    detail.locator("#score-value").fill("4")
    detail.get_by_role("button", name="Save score").click()
    expect(detail.locator('.score[data-name="quality"] .score-value')).to_have_text("4")
    expect(detail.locator('.score[data-name="helpful"] .score-value')).to_have_text("true")
    with host.http() as http:
        scores = http.get(f"/api/completions/{ids[0]}/scores").json()["data"]
    assert {(s["name"], s["value"], s["author"]) for s in scores} == {
        ("helpful", True, "key:default"),
        ("quality", 4.0, "key:default"),
    }
    detail.get_by_role("button", name="Close detail").click()
    expect(page.locator(f'tr[data-id="{ids[0]}"] .scores')).to_contain_text("quality=4")

    page.locator("#filter-score-name").fill("quality")
    page.locator("#filter-score-op").select_option("≥")
    page.locator("#filter-score-value").fill("4")
    page.get_by_role("button", name="Apply filters").click()
    expect(rows).to_have_count(1)
    expect(rows.first).to_have_attribute("data-id", ids[0])
    expect(page.locator("#match-count")).to_have_text("1 completion matches this filter")
    rows.first.locator("button.open-detail").click()
    expect(detail.locator('.score[data-name="quality"]')).to_be_visible()
    detail.locator("#scores-title").scroll_into_view_if_needed()
    screenshot(page, "scores")
    detail.get_by_role("button", name="Close detail").click()
    page.get_by_role("button", name="Select all matching this filter").click()
    expect(page.locator("#selection-summary")).to_contain_text("All 1 completion matching")
    page.get_by_role("button", name="Distill…").click()
    dialog = page.get_by_role("dialog", name="Distill")
    expect(dialog).to_contain_text("all 1 completion matching")
    expect(dialog).to_contain_text("score quality ≥ 4")


def test_a_response_with_a_function_call_is_listed_and_shown(
    page: Page, pane_host: Host, fake_upstream: FakeUpstream, tag: str
) -> None:
    host, keys = pane_host
    client = openai.OpenAI(base_url=f"{host.url}/openai/v1", api_key=keys["full"])
    fake_upstream.script(
        Reply(function_calls=[{"name": "weather", "arguments": '{"city":"Oslo"}', "call_id": "call_9"}])
    )
    asked = client.responses.create(model="gpt-4o", input="Weather in Oslo?", metadata={"tag": tag})
    answered = client.responses.create(
        model="gpt-4o",
        previous_response_id=asked.id,
        input=[{"type": "function_call_output", "call_id": "call_9", "output": "7 C"}],
        metadata={"tag": tag},
    )
    wait_listed(client, [asked.id, answered.id])
    sign_in(page, host, keys["full"])
    filter_by(page, tag=tag)
    row = page.locator(f'tr[data-id="{asked.id}"]')
    expect(row.locator(".badge.kind")).to_have_text("response")
    expect(row.locator(".col-output")).to_contain_text("weather")
    page.locator(f'tr[data-id="{answered.id}"] button.open-detail').click()
    detail = page.get_by_role("complementary", name="Completion detail")
    expect(detail.get_by_role("heading", name="Response")).to_be_visible()
    expect(detail.locator(".message")).to_have_count(4)  # question, call, its output, the answer
    expect(detail.locator(".tool-call .tool-name")).to_contain_text("weather")
    expect(detail.locator(".message.role-tool")).to_contain_text("result of call_9")
    expect(detail.locator(".message.output")).to_contain_text("fake:")
