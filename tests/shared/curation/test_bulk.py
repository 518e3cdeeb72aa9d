"""Bulk actions: dry run first, then changes on every match, idempotent, resumable in chunks,
owner-scoped, with limits skipped rather than broken, and the index following every change."""

from __future__ import annotations

from typing import Any

import pytest

from shared.curation.bulk import BulkActions, BulkLimits, SkipReason, parse_bulk_action_params
from shared.platform.errors import InvalidRequest, NotFound
from shared.services import Services
from shared.store.completion_filter import CompletionFilter
from shared.store.filter_jobs import JobStatus
from shared.store.json_blobs import JsonBlobs
from shared.store.stored_completion import StoredCompletion
from tests.conftest import ServicesFactory
from tests.shared.seed import completion


@pytest.mark.parametrize(
    ("body", "param", "fragment"),
    [
        ({"set_metadata": {"a": "b"}}, None, "the filter is empty"),
        ({"filter": {"model": "m"}}, None, "at least one of"),
        ({"filter": {"model": "m"}, "set_metadata": {f"k{i}": "v" for i in range(17)}}, "set_metadata", "at most 16"),
        ({"filter": {"model": "m"}, "set_metadata": {"": "v"}}, "set_metadata", "Invalid"),
        ({"filter": {"model": "m"}, "set_metadata": {"k": "v" * 513}}, "set_metadata", "Invalid"),
        ({"filter": {"model": "m"}, "add_scores": [{"name": "q>", "value": 1}]}, "add_scores", "add_scores.0.name"),
        ({"filter": {"model": "m"}, "add_scores": [{"name": "q", "value": {}}]}, "add_scores", "add_scores.0.value"),
        ({"filter": {"model": "m"}, "remove_scores": ["a b"]}, "remove_scores", "remove_scores.0"),
        (
            {"filter": {"model": "m"}, "set_metadata": {"a": "1"}, "remove_metadata": ["a"]},
            None,
            "both set and removed",
        ),
        ({"filter": {"model": "m"}, "add_scores": [{"name": "q", "value": 1}] * 2}, None, "twice"),
        ({"filter": {"model": "m", "owner": "x"}, "remove_scores": ["q"]}, None, "'owner' cannot be set"),
        ({"filter": {"model": "m"}, "remove_scores": ["q"], "colour": 1}, "colour", "Extra inputs"),
    ],
)
def test_bad_input_is_refused_in_the_openai_shape(body: dict[str, Any], param: str | None, fragment: str) -> None:
    with pytest.raises(InvalidRequest) as refused:
        parse_bulk_action_params(body)
    assert refused.value.status == 400 and fragment in refused.value.message
    assert refused.value.body()["error"]["param"] == param


async def seeded(services: Services, tag: str, count: int, **fields: Any) -> list[StoredCompletion]:
    items = [completion(metadata={"tag": tag}, **fields) for _ in range(count)]
    for item in items:
        await services.store.put(item)
    return items


def bulk(services: Services, **limits: Any) -> BulkActions:
    return BulkActions(
        store=services.store,
        records=JsonBlobs(container=services.reports_container, label="bulk action"),
        queue=services.job_queue,
        queue_name=services.settings.purge_jobs_queue,
        limits=BulkLimits(**limits),
    )


async def listed(services: Services, selection: dict[str, Any]) -> set[str]:
    page = await services.store.list(CompletionFilter.model_validate(selection), limit=100)
    return {item.id for item in page.data}


async def test_dry_run_then_tag_and_score_every_match_once(make_services: ServicesFactory, tag: str) -> None:
    services = await make_services()
    items = await seeded(services, tag, 3)
    other = completion(metadata={"tag": tag + "-other"})
    await services.store.put(other)
    body = {
        "filter": {"metadata": {"tag": tag}},
        "set_metadata": {"batch": "b7"},
        "add_scores": [{"name": "quality", "value": 4, "source": "rule"}],
    }
    actions = bulk(services)

    dry = await actions.run(
        (await actions.submit(parse_bulk_action_params(body | {"dry_run": True}), requested_by="key:ann")).id
    )
    assert dry.receipt is not None and (dry.receipt.matched_count, dry.receipt.updated_count) == (3, 3)
    assert await listed(services, {"metadata": {"batch": "b7"}}) == set()  # a dry run writes nothing

    job = await actions.submit(parse_bulk_action_params(body), requested_by="key:ann")
    done = await actions.run(job.id)
    assert done.status is JobStatus.SUCCEEDED and done.receipt is not None
    assert (done.receipt.matched_count, done.receipt.updated_count, done.receipt.unchanged_count) == (3, 3, 0)
    assert (await actions.run(job.id)) == done  # a redelivered message changes nothing

    ids = {item.id for item in items}
    assert await listed(services, {"metadata": {"batch": "b7", "tag": tag}}) == ids  # the index followed
    assert await listed(services, {"scores": {"quality": {"gte": 4}}, "metadata": {"tag": tag}}) == ids
    stored = await services.store.get(items[0].id)
    assert stored.metadata == {"tag": tag, "batch": "b7"}
    assert [(s.name, s.value, s.source, s.author) for s in stored.scores] == [("quality", 4.0, "rule", "key:ann")]
    assert (await services.store.get(other.id)).metadata == {"tag": tag + "-other"}

    again = await actions.run((await actions.submit(parse_bulk_action_params(body), requested_by="key:ann")).id)
    assert again.receipt is not None and (again.receipt.updated_count, again.receipt.unchanged_count) == (0, 3)


async def test_remove_metadata_and_scores_moves_index_rows(make_services: ServicesFactory, tag: str) -> None:
    services = await make_services()
    items = await seeded(services, tag, 2)
    for item in items:
        await services.store.update_metadata(item.id, {"tag": tag, "reviewed": "no"})
    actions = bulk(services)
    add = {"filter": {"metadata": {"tag": tag}}, "add_scores": [{"name": "pii", "value": True}]}
    await actions.run((await actions.submit(parse_bulk_action_params(add), requested_by="default")).id)

    remove = {
        "filter": {"scores": {"pii": True}, "metadata": {"tag": tag}},
        "remove_metadata": ["reviewed"],
        "remove_scores": ["pii"],
    }
    done = await actions.run((await actions.submit(parse_bulk_action_params(remove), requested_by="default")).id)

    assert done.receipt is not None and done.receipt.updated_count == 2
    assert await listed(services, {"metadata": {"reviewed": "no", "tag": tag}}) == set()
    assert await listed(services, {"scores": {"pii": True}, "metadata": {"tag": tag}}) == set()
    assert (await services.store.get(items[0].id)).metadata == {"tag": tag}
    assert await services.store.index.count(CompletionFilter(metadata={"tag": tag})) == 2


async def test_runs_in_chunks_and_resumes_from_the_checkpoint(make_services: ServicesFactory, tag: str) -> None:
    services = await make_services()
    items = await seeded(services, tag, 5)
    actions = bulk(services, batch=2, chunk_rows=2)
    body = {"filter": {"metadata": {"tag": tag}}, "set_metadata": {"lot": "a"}}
    job = await actions.submit(parse_bulk_action_params(body), requested_by="default")

    first = await actions.run(job.id)
    assert (first.status, first.progress.part, first.progress.walked, first.progress.updated) == ("running", 1, 2, 2)
    assert (await actions.run(job.id)).progress.part == 1  # a redelivered part 0 changes nothing
    second = await actions.run(job.id, part=1)
    done = await actions.run(job.id, part=2)

    assert second.progress.walked == 4 and done.receipt is not None
    assert (done.receipt.matched_count, done.receipt.updated_count) == (5, 5)
    assert await listed(services, {"metadata": {"lot": "a"}}) == {item.id for item in items}


async def test_limits_are_skipped_and_counted(make_services: ServicesFactory, tag: str) -> None:
    services = await make_services()
    [full] = await seeded(services, tag, 1)
    await services.store.update_metadata(full.id, {"tag": tag} | {f"k{i}": "v" for i in range(15)})
    [roomy] = await seeded(services, tag, 1)
    actions = bulk(services)
    body = {"filter": {"metadata": {"tag": tag}}, "set_metadata": {"extra": "1"}}

    done = await actions.run((await actions.submit(parse_bulk_action_params(body), requested_by="default")).id)

    assert done.receipt is not None
    assert (done.receipt.matched_count, done.receipt.updated_count) == (2, 1)
    assert done.receipt.skipped == {SkipReason.METADATA_LIMIT: 1}
    assert (await services.store.get(roomy.id)).metadata["extra"] == "1"
    assert "extra" not in (await services.store.get(full.id)).metadata


async def test_a_scoped_caller_changes_and_sees_only_its_own(make_services: ServicesFactory, tag: str) -> None:
    services = await make_services()
    mine = await seeded(services, tag, 2, owner="alice")
    [theirs] = await seeded(services, tag, 1, owner="bob")
    actions = bulk(services)
    body = {"filter": {"metadata": {"tag": tag}}, "set_metadata": {"seen": "1"}}

    job = await actions.submit(parse_bulk_action_params(body), requested_by="alice", owner_scope="alice")
    done = await actions.run(job.id)

    assert done.receipt is not None and done.receipt.updated_count == 2
    assert [(await services.store.get(item.id)).metadata.get("seen") for item in mine] == ["1", "1"]
    assert "seen" not in (await services.store.get(theirs.id)).metadata
    assert (await actions.get(job.id, owner_scope="alice")).id == job.id
    with pytest.raises(NotFound):
        await actions.get(job.id, owner_scope="bob")
    with pytest.raises(NotFound):
        await actions.get("bulk_" + "0" * 24)
