"""Online evals: a sampled share of an alias's stored calls is queued by the indexer (never by the capture),
graded on the queue into hourly tallies per serving deployment, exported as metrics, and an alert
under its threshold rolls the canary back automatically."""

from __future__ import annotations

import contextlib
from typing import Any

import pytest
from azure.core.exceptions import ResourceExistsError

from shared.aliases.online import OnlineEvalMessage
from shared.aliases.records import AliasParams
from shared.platform.access import Caller, Right
from shared.platform.errors import InvalidRequest, PermissionDenied
from shared.services import Services
from shared.store.stored_completion import StoredCompletion
from tests.conftest import ServicesFactory
from tests.shared.platform.test_telemetry import Telemetry, otel  # noqa: F401  (the fixture)
from tests.shared.queues import local_queue, take_message
from tests.shared.seed import completion

GOOD = {
    "type": "string_check",
    "name": "good",
    "input": "{{sample.output_text}}",
    "reference": "good",
    "operation": "eq",
}


def alias_params(*, sample_rate: float, alert: dict[str, Any] | None = None) -> AliasParams:
    return AliasParams.model_validate(
        {
            "targets": [{"deployment": "teacher", "share": 80}, {"deployment": "student", "share": 20}],
            "online_eval": {"sample_rate": sample_rate, "testing_criteria": [GOOD], "alert": alert},
        }
    )


def call(alias: str, served_by: str | None, text: str = "good") -> StoredCompletion:
    return completion(text=text).model_copy(update={"deployment": alias, "served_by": served_by})


async def captured(services: Services, calls: list[StoredCompletion]) -> list[str]:
    for one in calls:
        await services.store.capture(one)
    return [one.id for one in calls]


async def queued(services: Services) -> list[bytes]:
    async with local_queue(services, services.settings.online_evals_queue) as queue:
        with contextlib.suppress(ResourceExistsError):
            await queue.create_queue()
    bodies = []
    while (body := await take_message(services, services.settings.online_evals_queue)) is not None:
        bodies.append(body)
    return bodies


async def grade_all(services: Services) -> None:
    for body in await queued(services):
        await services.online_evals.handle(body)


async def test_the_indexer_queues_the_sampled_share_and_the_capture_queues_nothing(
    make_services: ServicesFactory,
) -> None:
    services = await make_services()
    await services.aliases.put("bot", alias_params(sample_rate=0.3), by="test")
    await services.aliases.put("all", alias_params(sample_rate=1.0), by="test")
    await services.aliases.put("none", alias_params(sample_rate=0.0), by="test")
    bot = await captured(services, [call("bot", "student" if n % 5 == 0 else "teacher") for n in range(150)])
    everything = await captured(services, [call("all", "teacher") for _ in range(10)])
    nothing = await captured(services, [call("none", "teacher") for _ in range(10)])
    plain = await captured(services, [call("gpt-4o", None) for _ in range(10)])
    assert await queued(services) == []  # storing queued nothing: sampling waits for the index

    await services.indexer.index([*bot, *everything, *nothing, *plain])
    picked: dict[str, list[str]] = {}
    for body in await queued(services):
        message = OnlineEvalMessage.model_validate_json(body)
        picked.setdefault(message.alias, []).extend(message.completion_ids)
    assert set(picked) == {"bot", "all"}
    assert sorted(picked["all"]) == sorted(everything)
    assert set(picked["bot"]) <= set(bot)
    assert 25 <= len(picked["bot"]) <= 65  # 30 % of 150 = 45 (sd 5.6)

    await services.indexer.index(bot)  # redelivered: no longer new, not sampled again
    assert await queued(services) == []


async def test_an_alert_under_its_threshold_rolls_the_canary_back_once(
    make_services: ServicesFactory,
    otel: Telemetry,  # noqa: F811
) -> None:
    services = await make_services()
    alert = {"min_pass_rate": 0.7, "min_samples": 5}
    await services.aliases.put("bot", alias_params(sample_rate=1.0, alert=alert), by="ann")
    ids = await captured(
        services,
        [call("bot", "teacher") for _ in range(6)]
        + [call("bot", "student", "bad" if n < 4 else "good") for n in range(6)],
    )
    await services.indexer.index(ids)
    bodies = await queued(services)
    for body in [*bodies, *bodies]:  # each delivered twice: counted once
        await services.online_evals.handle(body)

    record = await services.aliases.get("bot")
    assert [(t.deployment, t.share) for t in record.targets] == [("teacher", 100)]
    change = record.history[-1]
    assert (change.action, change.by, change.automatic) == ("rollback", "online-eval", True)
    assert change.reason is not None and "33.3%" in change.reason and "70.0%" in change.reason
    assert [t.deployment for t in change.previous_targets] == ["teacher", "student"]

    view = await services.online_evals.view("bot", hours=24)
    rates = {row["deployment"]: (row["passed"], row["failed"], row["pass_rate"]) for row in view["data"]}
    assert rates == {"student": (2, 4, pytest.approx(1 / 3)), "teacher": (6, 0, 1.0)}
    assert len(view["data"][0]["buckets"]) == 1
    assert otel.total("distillery.alias.online_graded", **{"distillery.alias": "bot", "outcome": "failed"}) == 4
    gauge = {
        dict(p.attributes)["distillery.deployment"]: p.value
        for p in otel.points("distillery.alias.online_pass_rate")
        if dict(p.attributes)["distillery.alias"] == "bot"
    }
    assert gauge == {"student": pytest.approx(1 / 3), "teacher": 1.0}


async def test_an_alert_at_or_above_its_threshold_changes_nothing(make_services: ServicesFactory) -> None:
    services = await make_services()
    alert = {"min_pass_rate": 0.7, "min_samples": 5}
    await services.aliases.put("bot", alias_params(sample_rate=1.0, alert=alert), by="ann")
    ids = await captured(services, [call("bot", "student", "bad" if n == 0 else "good") for n in range(6)])
    await services.indexer.index(ids)
    await grade_all(services)
    record = await services.aliases.get("bot")
    assert [(t.deployment, t.share) for t in record.targets] == [("teacher", 80), ("student", 20)]
    assert [change.action for change in record.history] == ["set"]
    assert (await services.online_evals.view("bot", hours=1))["data"][0]["pass_rate"] == pytest.approx(5 / 6)


async def test_too_few_samples_never_fire_and_bad_graders_are_refused(make_services: ServicesFactory) -> None:
    services = await make_services()
    await services.aliases.put(
        "bot", alias_params(sample_rate=1.0, alert={"min_pass_rate": 0.9, "min_samples": 10}), by="ann"
    )
    await services.indexer.index(await captured(services, [call("bot", "student", "bad") for _ in range(3)]))
    await grade_all(services)
    assert len((await services.aliases.get("bot")).targets) == 2
    with pytest.raises(InvalidRequest) as refused:
        AliasParams.model_validate(
            {
                "targets": [{"deployment": "a", "share": 100}],
                "online_eval": {"sample_rate": 1, "testing_criteria": [{"type": "python"}]},
            }
        )
    assert refused.value.param == "testing_criteria[0].type"
    kept = await services.aliases.put(
        "bot", AliasParams.model_validate({"targets": [{"deployment": "teacher", "share": 100}]}), by="ann"
    )
    assert kept.online_eval is not None  # unset keeps them; null turns them off
    off = AliasParams.model_validate({"targets": [{"deployment": "teacher", "share": 100}], "online_eval": None})
    assert (await services.aliases.put("bot", off, by="ann")).online_eval is None


async def test_graders_that_call_a_model_need_the_callers_right_to_call_it(make_services: ServicesFactory) -> None:
    services = await make_services()
    judge = {
        "type": "label_model",
        "name": "helpful",
        "model": "judge",
        "labels": ["yes", "no"],
        "passing_labels": ["yes"],
        "input": [{"role": "user", "content": "{{sample.output_text}}"}],
    }
    online = alias_params(sample_rate=0.5).online_eval
    assert online is not None
    judged = online.model_copy(update={"testing_criteria": [GOOD, judge]})
    acting = Caller(name="ops", owner="key:ops", rights=frozenset({Right.READ, Right.ACTION}))
    services.online_evals.require_caller_may_grade(online, acting)  # string checks call no model
    with pytest.raises(PermissionDenied, match="'inference' right"):
        services.online_evals.require_caller_may_grade(judged, acting)
    limited = Caller(
        name="ops", owner="key:ops", rights=frozenset({Right.ACTION, Right.INFERENCE}), deployments=frozenset({"gpt"})
    )
    with pytest.raises(PermissionDenied) as refused:
        services.online_evals.require_caller_may_grade(judged, limited)
    assert refused.value.param == "online_eval.testing_criteria[1].model"
    services.online_evals.require_caller_may_grade(judged, limited.model_copy(update={"deployments": None}))
