"""The asynchronous index: a capture's answer waits for its document only; lists follow within
seconds, and a worker killed between the document and its rows loses nothing from lists."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from azure.storage.queue import QueueClient

from local_host.azurite import Azurite
from tests.conftest import RunningHost, start_host
from tests.e2e.polling import wait_listed
from tests.fakes import FakeUpstream

MESSAGES = [{"role": "user", "content": "hi"}]
LAG_BOUND_SECONDS = 5.0
"""Lists show a completion within this long (the local host polls its event queue every 0.2 s)."""

_NAMES = (
    "COMPLETIONS_CONTAINER",
    "COMPLETION_INDEX_TABLE",
    "REPORTS_CONTAINER",
    "DATASETS_CONTAINER",
    "DATASET_JOBS_QUEUE",
    "PURGE_JOBS_QUEUE",
    "COMPLETION_EVENTS_QUEUE",
    "EVALS_CONTAINER",
    "EVAL_JOBS_QUEUE",
    "FINE_TUNING_CONTAINER",
    "FINE_TUNING_JOBS_QUEUE",
    "ONLINE_EVALS_QUEUE",
)


def test_retrieve_at_once_and_listed_within_the_lag_bound(
    host: RunningHost, fake_upstream: FakeUpstream, tag: str
) -> None:
    client = host.openai_client()
    created = [
        client.chat.completions.create(model="gpt-4o", store=True, metadata={"tag": tag}, messages=MESSAGES)
        for _ in range(3)
    ]
    for completion in created:  # the document is the one write the answer waited for
        assert client.chat.completions.retrieve(completion.id).choices[0].message.content
    lag = wait_listed(client, [c.id for c in created])
    assert lag < LAG_BOUND_SECONDS
    assert [c.id for c in client.chat.completions.list(metadata={"tag": tag})] == [c.id for c in created]


def _killed_after_capture(
    azurite: Azurite, upstream: FakeUpstream, log_dir: Path, tag: str
) -> tuple[dict[str, str], str]:
    """A host that delivers no queue messages stores one completion and is killed once its blob-created
    event is queued (the local stand-in posts it after a linger): the document is written, its index
    rows never were. Returns the host's storage names and the completion's id."""
    first = start_host(azurite.connection_string, log_dir, "--no-queue-triggers", OPENAI_BASE_URL=upstream.base_url)
    try:
        client = first.openai_client()
        completion_id = client.chat.completions.create(
            model="gpt-4o", store=True, metadata={"tag": tag}, messages=MESSAGES
        ).id
        assert client.chat.completions.retrieve(completion_id).id == completion_id
        assert list(client.chat.completions.list(metadata={"tag": tag})) == []
        events = QueueClient.from_connection_string(azurite.connection_string, first.env["COMPLETION_EVENTS_QUEUE"])
        deadline = time.monotonic() + 15
        while not events.peek_messages():
            assert time.monotonic() < deadline, "the blob-created event was never posted"
            time.sleep(0.05)
    finally:
        first.process.kill()
        first.process.wait()
    return {name: first.env[name] for name in _NAMES}, completion_id


def test_a_worker_killed_before_indexing_is_repaired_by_redelivery(
    azurite: Azurite, upstream: FakeUpstream, tmp_path: Path, tag: str
) -> None:
    names, completion_id = _killed_after_capture(azurite, upstream, tmp_path, tag)
    with start_host(azurite.connection_string, tmp_path, OPENAI_BASE_URL=upstream.base_url, **names) as second:
        wait_listed(second.openai_client(), [completion_id])
        listed = second.openai_client().chat.completions.list(metadata={"tag": tag})
        assert [c.id for c in listed] == [completion_id]


def test_a_lost_event_is_repaired_by_the_index_sweep(
    azurite: Azurite, upstream: FakeUpstream, tmp_path: Path, tag: str
) -> None:
    names, completion_id = _killed_after_capture(azurite, upstream, tmp_path, tag)
    QueueClient.from_connection_string(azurite.connection_string, names["COMPLETION_EVENTS_QUEUE"]).clear_messages()
    settings = {**names, "INDEX_SWEEP_GRACE_SECONDS": "0"}
    with start_host(azurite.connection_string, tmp_path, OPENAI_BASE_URL=upstream.base_url, **settings) as second:
        client = second.openai_client()
        assert list(client.chat.completions.list(metadata={"tag": tag})) == []
        with second.http() as http:
            assert http.post("/admin/functions/index_sweep").status_code == 202
        assert [c.id for c in client.chat.completions.list(metadata={"tag": tag})] == [completion_id]
        with second.http() as http:  # the watermark moved on: a second sweep has nothing to repair
            assert http.post("/admin/functions/index_sweep").status_code == 202


@pytest.mark.parametrize("stream", [False, True])
def test_store_true_answers_after_one_write(
    host: RunningHost, fake_upstream: FakeUpstream, tag: str, stream: bool
) -> None:
    """No earlier answer is looked for without an Idempotency-Key: the id was just minted."""
    client = host.openai_client()
    if stream:
        chunks = list(
            client.chat.completions.create(
                model="gpt-4o", store=True, stream=True, metadata={"tag": tag}, messages=MESSAGES
            )
        )
        completion_id = chunks[0].id
    else:
        completion_id = client.chat.completions.create(
            model="gpt-4o", store=True, metadata={"tag": tag}, messages=MESSAGES
        ).id
    assert client.chat.completions.retrieve(completion_id).metadata == {"tag": tag}
    wait_listed(client, [completion_id])
