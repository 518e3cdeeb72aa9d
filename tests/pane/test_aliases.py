"""Aliases in the pane, in Chromium against the real local stack: shares, the online pass rate per serving
deployment, the gate's refusal, a forced promotion and a rollback, each landing in the history."""

from __future__ import annotations

import time

import httpx
from playwright.sync_api import Page, expect

from tests.pane.conftest import screenshot
from tests.pane.test_pane import Host, sign_in, store

MATCHES = {
    "type": "string_check",
    "name": "answered",
    "input": "{{sample.output_text}}",
    "reference": "fake",
    "operation": "like",
}


def test_an_alias_its_online_pass_rate_promote_and_roll_back(page: Page, pane_host: Host, tag: str) -> None:
    host, keys = pane_host
    name, teacher, student = f"bot-{tag}", f"teacher-{tag}", f"student-{tag}"
    with httpx.Client(base_url=host.url, headers={"api-key": keys["full"]}, timeout=30) as http:
        put = http.put(
            f"/api/aliases/{name}",
            json={
                "targets": [{"deployment": teacher, "share": 50}, {"deployment": student, "share": 50}],
                "online_eval": {"sample_rate": 1, "testing_criteria": [MATCHES], "alert": {"min_pass_rate": 0.5}},
            },
        )
        assert put.status_code == 200, put.text
        client = host.openai_client()
        for n in range(8):
            client.chat.completions.create(
                model=name, store=True, user=f"u{n}", messages=[{"role": "user", "content": f"question {n}"}]
            )
        deadline = time.monotonic() + 60
        graded = 0
        while graded < 8 and time.monotonic() < deadline:  # indexed, sampled, graded on their queues
            time.sleep(0.2)
            graded = sum(row["passed"] for row in http.get(f"/api/aliases/{name}/online_evals").json()["data"])
        assert graded == 8

    sign_in(page, host, keys["reviewer"])  # reads, may not act
    page.get_by_role("link", name="Aliases").click()
    card = page.locator(f'article.alias[data-alias="{name}"]')
    expect(card.locator(f'.shares li[data-deployment="{student}"] .share')).to_have_text("50%")
    expect(card.get_by_role("button")).to_have_count(0)

    page.get_by_role("button", name="Sign out").click()
    sign_in(page, host, keys["full"])
    page.get_by_role("link", name="Aliases").click()
    expect(card.locator(f'.shares li[data-deployment="{teacher}"]')).to_contain_text("fallback")
    expect(card.locator(".online-table td.pass-rate").first).to_have_text("100.0%")
    assert set(card.locator(".online-table td.pass-rate").all_inner_texts()) == {"100.0%"}
    expect(card.locator(".online")).to_contain_text("Rolls back under 50.0%")

    card.get_by_role("button", name=f"Promote {student}").click()
    expect(card.locator(".form-error")).to_contain_text("refused")  # no comparison: the gate says no
    card.get_by_label("even if the gate fails").check()
    card.get_by_role("button", name=f"Promote {student}").click()
    expect(card.locator(f'.shares li[data-deployment="{student}"] .share')).to_have_text("100%")
    expect(card.locator('.history tr[data-action="promote"]')).to_contain_text("forced")
    expect(card.locator(".gate-result.failed")).to_be_visible()

    card.get_by_role("button", name="Roll back").click()
    page.get_by_role("dialog").get_by_role("button", name="Roll back").click()
    expect(card.locator(f'.shares li[data-deployment="{teacher}"] .share')).to_have_text("100%")
    expect(card.locator(".history tbody tr").first).to_have_attribute("data-action", "rollback")
    expect(card.get_by_role("button", name="Roll back")).to_have_count(0)
    screenshot(page, "aliases", full_page=True)


def test_the_health_view_prices_the_stored_calls(page: Page, pane_host: Host) -> None:
    host, keys = pane_host
    store(host, 2, tag="cost")  # answered by the fake upstream's model, which PRICE_TABLE prices
    with httpx.Client(base_url=host.url, headers={"api-key": keys["full"]}, timeout=30) as http:
        deadline = time.monotonic() + 60
        while (quota := http.get("/api/quota")).status_code == 202:  # the first report is built on the queue
            assert time.monotonic() < deadline
            time.sleep(0.2)
        cost = quota.json()["cost"]
    sign_in(page, host, keys["full"])
    page.get_by_role("link", name="Health").click()
    expect(page.locator(".cost h3")).to_contain_text("Cost of stored calls")
    expect(page.locator(".cost-table tbody tr")).to_have_count(len(cost["by_deployment"]))
