"""Money in the quota report: stored calls' tokens priced by PRICE_TABLE per serving deployment, alias and
metadata value, the student's break-even against its teacher, and a bad price table refused at start-up."""

from __future__ import annotations

import json

import pytest

from shared.aliases.records import AliasParams
from shared.platform.errors import ConfigurationError
from shared.platform.settings import load_settings
from shared.store.stored_completion import StoredCompletion
from tests.conftest import ServicesFactory
from tests.shared.seed import completion

PRICES = {
    "gpt-4.1": {"input": 2.0, "cached_input": 0.5, "output": 8.0},
    "student-1": {"input": 0.3, "output": 1.2, "hourly": 1.7},
}
USAGE = {"prompt_tokens": 1000, "prompt_tokens_details": {"cached_tokens": 200}, "completion_tokens": 500}
TEACHER_CALL = (800 * 2.0 + 200 * 0.5 + 500 * 8.0) / 1e6  # 0.0057
STUDENT_CALL = (1000 * 0.3 + 500 * 1.2) / 1e6  # 0.0009: no cached price, cached tokens cost `input`


def call(served_by: str | None, *, team: str, deployment: str = "bot", days_ago: float = 0) -> StoredCompletion:
    made = completion(metadata={"team": team}, days_ago=days_ago)
    response = {**made.response, "usage": USAGE}
    return made.model_copy(update={"deployment": deployment, "served_by": served_by, "response": response})


async def test_stored_tokens_become_money_per_deployment_alias_and_metadata_value(
    make_services: ServicesFactory,
) -> None:
    services = await make_services(PRICE_TABLE=json.dumps(PRICES))
    targets = [{"deployment": "gpt-4.1", "share": 90}, {"deployment": "student-1", "share": 10}]
    await services.aliases.put("bot", AliasParams.model_validate({"targets": targets}), by="test")
    for _ in range(6):
        await services.store.put(call("gpt-4.1", team="a"))
    for _ in range(1):
        await services.store.put(call("student-1", team="b"))
    await services.store.put(call("gpt-4.1", team="a", days_ago=20))  # counted, but not in the traffic window
    await services.store.put(call(None, team="b", deployment="mystery"))  # not priced

    cost = (await services.quota_reporter.run()).cost
    assert cost is not None
    by_deployment = {t.name: (t.calls, round(t.cost, 6), t.unpriced_calls) for t in cost.by_deployment}
    assert by_deployment == {
        "gpt-4.1": (7, round(7 * TEACHER_CALL, 6), 0),
        "student-1": (1, round(STUDENT_CALL, 6), 0),
        "mystery": (1, 0.0, 1),
    }
    assert cost.unpriced == ["mystery"] and cost.calls == 9
    assert cost.total == pytest.approx(7 * TEACHER_CALL + STUDENT_CALL)
    assert [(t.name, t.calls) for t in cost.by_alias] == [("bot", 8)]
    assert {t.name: t.cost for t in cost.by_metadata["team"]} == {
        "a": pytest.approx(7 * TEACHER_CALL),
        "b": pytest.approx(STUDENT_CALL),
    }
    assert cost.hosting_per_day == {"student-1": pytest.approx(40.8)}

    (even,) = cost.break_even
    assert (even.alias, even.teacher, even.student) == ("bot", "gpt-4.1", "student-1")
    assert even.calls_per_day == pytest.approx(7 / 7, abs=1e-3)  # 7 calls in the last 7 days
    assert even.teacher_cost_per_call == pytest.approx(TEACHER_CALL)
    assert even.student_cost_per_call == pytest.approx(STUDENT_CALL)
    assert even.break_even_calls_per_day == pytest.approx(40.8 / (TEACHER_CALL - STUDENT_CALL), rel=1e-3)  # 8500
    assert even.savings_per_day == pytest.approx(1 * (TEACHER_CALL - STUDENT_CALL) - 40.8)
    assert not even.pays_off


async def test_no_price_table_no_cost_and_owner_scoped_callers_never_see_it(make_services: ServicesFactory) -> None:
    services = await make_services()
    await services.store.put(call("gpt-4.1", team="a"))
    assert (await services.quota_reporter.run()).cost is None
    priced = await make_services(PRICE_TABLE=json.dumps(PRICES))
    await priced.store.put(call("gpt-4.1", team="a"))
    scoped = (await priced.quota_reporter.run()).for_owner_scoped_caller()
    assert scoped.cost is None and "cost" in scoped.withheld


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ("{not json", "must be a JSON object"),
        ('{"gpt-4.1": {"input": -1, "output": 8}}', "PRICE_TABLE.gpt-4.1.input"),
        ('{"gpt-4.1": {"input": 1}}', "PRICE_TABLE.gpt-4.1.output"),
        ('{"gpt-4.1": {"input": 1, "output": 2, "per_call": 3}}', "PRICE_TABLE.gpt-4.1.per_call"),
    ],
)
def test_a_bad_price_table_is_refused_at_start_up_naming_the_entry(
    monkeypatch: pytest.MonkeyPatch, value: str, problem: str
) -> None:
    monkeypatch.setenv("AzureWebJobsStorage", "UseDevelopmentStorage=true")
    monkeypatch.setenv("PRICE_TABLE", value)
    with pytest.raises(ConfigurationError, match="PRICE_TABLE") as raised:
        load_settings()
    assert problem in str(raised.value)
