"""Who may start which run: a run that calls a model needs `inference` and the key's deployment
allow-list; sampling parameters are bounded; a run selects completions in the eval owner's scope."""

from __future__ import annotations

from typing import Any

import pytest

from shared.evals.params import EvalCreateParams, RunCreateParams
from shared.platform.access import Caller, Right
from shared.platform.errors import InvalidRequest, PermissionDenied
from shared.services import Services
from tests.fakes import FakeUpstream
from tests.shared.evals.test_service import CONFIG, ECHOES, drain, rerun, services, state
from tests.shared.seed import completion

__all__ = ["services"]

JUDGE = {
    "type": "label_model",
    "name": "judge",
    "model": "expensive",
    "input": [{"role": "user", "content": "{{sample.output_text}}"}],
    "labels": ["ok", "bad"],
    "passing_labels": ["ok"],
}
COSINE = {
    "type": "text_similarity",
    "name": "similar",
    "input": "{{sample.output_text}}",
    "reference": "{{item.q}}",
    "evaluation_metric": "cosine",
    "pass_threshold": 0.5,
}
STORED_ANSWERS = RunCreateParams.model_validate(
    {
        "data_source": {
            "type": "jsonl",
            "source": {"type": "file_content", "content": [{"item": {"q": "a"}, "sample": {"output_text": "a"}}]},
        }
    }
)


def caller(*rights: Right, deployments: set[str] | None = None) -> Caller:
    return Caller(
        name="k",
        owner="key:k",
        rights=frozenset(rights),
        deployments=frozenset(deployments) if deployments is not None else None,
    )


async def new_eval(services: Services, *criteria: dict[str, Any], owner: str | None = None) -> str:
    params = EvalCreateParams.model_validate({"data_source_config": CONFIG, "testing_criteria": list(criteria)})
    return (await services.evals.create_eval(params, owner=owner)).id


async def start(services: Services, eval_id: str, params: RunCreateParams, who: Caller) -> None:
    await services.evals.create_run(eval_id, params, owner=None, report_base="http://test", caller=who)


async def test_a_run_that_calls_a_model_needs_inference(services: Services, fake_upstream: FakeUpstream) -> None:
    eval_id = await new_eval(services, ECHOES)
    with pytest.raises(PermissionDenied, match="'inference' right"):
        await start(services, eval_id, rerun(1), caller(Right.ACTION))
    await start(services, eval_id, STORED_ANSWERS, caller(Right.ACTION))  # calls no model: action is enough
    await start(services, eval_id, rerun(1), caller(Right.ACTION, Right.INFERENCE))
    judged = await new_eval(services, JUDGE)
    with pytest.raises(PermissionDenied, match="'inference' right"):  # a model grader calls a model too
        await start(services, judged, STORED_ANSWERS, caller(Right.ACTION))


@pytest.mark.parametrize(
    ("criterion", "param", "denied"),
    [
        (JUDGE, "testing_criteria[0].model", "expensive"),
        (COSINE, "EVAL_EMBEDDINGS_DEPLOYMENT", "text-embedding-3-large"),
        (ECHOES, "data_source.model", "student"),
    ],
)
async def test_the_deployment_allow_list_covers_candidate_grader_and_embeddings(
    services: Services, fake_upstream: FakeUpstream, criterion: dict[str, Any], param: str, denied: str
) -> None:
    eval_id = await new_eval(services, criterion)
    allowed = {"student", "expensive", services.settings.eval_embeddings_deployment} - {denied}
    with pytest.raises(PermissionDenied) as refused:
        await start(services, eval_id, rerun(1), caller(Right.ACTION, Right.INFERENCE, deployments=allowed))
    assert refused.value.param == param and refused.value.code == "deployment_not_allowed"
    assert fake_upstream.requests == []  # refused before any deployment check is spent


@pytest.mark.parametrize(
    "sampling",
    [{"n": 128}, {"max_completion_tokens": 10**9}, {"temperature": 5}, {"reasoning_effort": "maximal"}],
)
def test_sampling_params_are_bounded(sampling: dict[str, Any]) -> None:
    from shared.platform.request_body import parse_model

    body = rerun(1).model_dump(exclude_none=True)
    body["data_source"]["sampling_params"] = sampling
    with pytest.raises(InvalidRequest) as refused:
        parse_model(RunCreateParams, body)
    assert refused.value.status == 400 and "sampling_params" in refused.value.message


async def test_a_run_selects_completions_in_the_eval_owners_scope(services: Services, tag: str) -> None:
    for owner in ("alice", "bob"):
        await services.store.put(completion(metadata={"tag": tag}, text=f"{owner}'s secret", owner=owner))
    params = EvalCreateParams.model_validate(
        {
            "data_source_config": {"type": "stored_completions", "metadata": {"tag": tag}},
            "testing_criteria": [ECHOES | {"reference": "{{item.reference}}"}],
        }
    )
    alices_eval = await services.evals.create_eval(params, owner="alice")
    source = {"type": "completions", "source": {"type": "stored_completions", "metadata": {"tag": tag}}}
    run, _ = await services.evals.create_run(  # an all-owners key (no scope) starts it
        alices_eval.id, RunCreateParams.model_validate({"data_source": source}), owner=None, report_base="http://t"
    )
    await drain(services)
    done = await state(services, run)
    assert done.items_total == 1 and done.lineage.completion_filter is not None
    (item,) = (
        await services.evals.output_items(
            run.eval_id, run.id, after=None, limit=10, order="asc", status=None, owner="alice"
        )
    )[0]
    assert item.item["reference"] == "alice's secret"
