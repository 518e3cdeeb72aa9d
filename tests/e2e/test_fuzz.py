"""Property-based fuzzing of every route (from the OpenAPI document) through a running host.

Properties: no 5xx; every error is OpenAI-shaped; nothing already stored changes. The fuzzing
identities are chosen so that "no change" is the right expectation: one holds read + inference (its
own new completions are told apart by their owner), the other holds action but only ever sends
bodies that cannot be valid or ids that do not exist.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from azure.data.tables import TableClient
from azure.storage.blob import ContainerClient
from hypothesis import given, settings
from hypothesis import strategies as st

from local_host.azurite import Azurite
from shared.platform.access import Right, key_owner, stable_owner
from shared.store import usage
from tests.callers import principal, start_keyed_host
from tests.conftest import RunningHost
from tests.e2e.polling import wait_listed
from tests.fakes import FakeUpstream

FUZZER = "fuzzer"
JSON_TYPE = {"content-type": "application/json"}
"""Declared on every fuzzed request, so bodies reach validation (without it a POST is a 415)."""
HOSTILE_TEXT = st.sampled_from(["'", '"', "/", "\\", "%", " eq ", "..", "\x00", "é", "🙂", "\u2028"])
TEXT = st.one_of(st.text(max_size=12), HOSTILE_TEXT)
JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | TEXT,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(TEXT, children, max_size=4),
    max_leaves=12,
)
METADATA = st.dictionaries(TEXT.filter(bool), TEXT, max_size=4) | JSON
CHAT_BODY = st.fixed_dictionaries(
    {
        "messages": st.lists(
            st.fixed_dictionaries(
                {"role": st.sampled_from(["user", "system"]) | JSON}, optional={"content": TEXT | JSON, "name": TEXT}
            ),
            min_size=1,
            max_size=3,
        )
        | JSON
    },
    optional={
        "model": TEXT | JSON,
        "store": st.booleans() | JSON,
        "metadata": METADATA,
        "stream": st.booleans() | JSON,
        "stream_options": st.fixed_dictionaries({}, optional={"include_usage": st.booleans()}) | JSON,
    },
)
STORED_CHAT_BODY = st.fixed_dictionaries(
    {
        "model": TEXT.filter(bool),
        "store": st.just(True),
        "metadata": st.dictionaries(TEXT.filter(bool), TEXT, max_size=4),
        "messages": st.lists(st.fixed_dictionaries({"role": st.just("user"), "content": TEXT}), min_size=1, max_size=2),
    },
    optional={"stream": st.booleans()},
)
"""Mostly accepted: hostile metadata that is stored, so storing it must work (no storage_unavailable)."""
QUERY = st.lists(
    st.tuples(
        st.sampled_from(
            ["limit", "after", "order", "model", "created_after", "created_before", "metadata[tag]", "metadata[']"]
        )
        | TEXT,
        st.sampled_from(["0", "1", "100", "101", "-1", "asc", "desc", "chatcmpl-" + "0" * 32]) | TEXT,
    ),
    max_size=4,
)
RAW_BODY = st.one_of(st.none(), st.binary(max_size=64), JSON.map(lambda v: json.dumps(v).encode()))


def store_checksum(host: RunningHost) -> tuple[str, int]:
    """A digest of every blob and index row not created by the fuzzer, and how many there are.

    The usage counters are left out: they move, rightly, with the fuzzer's own stored completions.
    """
    connection = host.env["AzureWebJobsStorage"]
    digest, count = hashlib.sha256(), 0
    with ContainerClient.from_connection_string(connection, host.env["COMPLETIONS_CONTAINER"]) as container:
        for blob in sorted(container.list_blobs(), key=lambda b: b.name):
            content = container.download_blob(blob.name).readall()
            if stable_owner(json.loads(content).get("owner")) != key_owner(FUZZER):
                digest.update(blob.name.encode() + b"\0" + content + b"\0")
                count += 1
    with TableClient.from_connection_string(connection, host.env["COMPLETION_INDEX_TABLE"]) as table:
        rows = [
            dict(row)
            for row in table.list_entities()
            if stable_owner(row.get("owner")) != key_owner(FUZZER) and row["PartitionKey"] != usage.PARTITION
        ]
    for row in sorted(rows, key=lambda r: (r["PartitionKey"], r["RowKey"])):
        digest.update(json.dumps(row, sort_keys=True, default=str).encode() + b"\0")
        count += 1
    return digest.hexdigest(), count


@pytest.fixture(scope="module")
def fuzz_host(
    azurite: Azurite, upstream: FakeUpstream, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[RunningHost, dict[str, str], list[str]]]:
    """A host with a fuzzing key per property, and a few completions stored before fuzzing starts."""
    running, keys = start_keyed_host(
        azurite.connection_string,
        tmp_path_factory.mktemp("fuzz"),
        {FUZZER: {Right.READ, Right.INFERENCE}, "actor": {Right.READ, Right.ACTION}},
        OPENAI_BASE_URL=upstream.base_url,
        DISTILLERY_MAX_BODY_BYTES="65536",
    )
    upstream.reset()
    seeded = []
    with running.http() as http:
        for metadata in ({"tag": "seed"}, {"tag": "seed", "q": "it's"}, {"'": "\\/%"}):
            body = {"model": "m", "store": True, "metadata": metadata, "messages": [{"role": "user", "content": "x"}]}
            seeded.append(http.post("/openai/v1/chat/completions", json=body).json()["id"])
    wait_listed(running.openai_client(), seeded)  # their index rows are part of what must not change
    yield running, keys, seeded
    running.stop()


def operations(host: RunningHost) -> list[tuple[str, str, str | None]]:
    document = httpx.get(f"{host.url}/api/openapi.json").json()
    return [
        (method.upper(), path, operation.get("x-distillery-right"))
        for path, methods in document["paths"].items()
        for method, operation in methods.items()
    ]


def fill(path: str, values: dict[str, str]) -> str:
    return re.sub(r"\{([^}]+)\}", lambda m: quote(values.get(m.group(1), "x"), safe=""), path)


def check(response: httpx.Response, request: str) -> None:
    assert response.status_code < 500, f"{request} -> {response.status_code} {response.text[:300]}"
    if response.status_code >= 400:
        assert set(response.json()["error"]) >= {"message", "type"}, request
    assert response.headers.get("x-distillery-not-stored-reason") != "storage_unavailable", request


def test_fuzz_reads_and_inference_change_nothing(
    fuzz_host: tuple[RunningHost, dict[str, str], list[str]], upstream: FakeUpstream
) -> None:
    host, keys, seeded = fuzz_host
    routes = operations(host)
    before = store_checksum(host)
    auth = st.sampled_from(
        [
            {"api-key": keys[FUZZER]},
            {"api-key": keys[FUZZER]},
            {"authorization": f"Bearer {keys[FUZZER]}"},
            {"authorization": f"Bearer {keys[FUZZER]}"},
            {},
            {"api-key": "wrong"},
            {"x-ms-client-principal": principal("StoredCompletions.Administrator", name="root")},
        ]
    )
    path_values = st.fixed_dictionaries({"completion_id": st.sampled_from(seeded) | TEXT, "deployment": TEXT})
    upstream.reset()

    with httpx.Client(base_url=host.url, timeout=30) as http:

        @settings(max_examples=2000, deadline=None, database=None, derandomize=True)
        @given(
            route=st.sampled_from(routes),
            values=path_values,
            query=QUERY,
            headers=auth,
            body=st.one_of(st.one_of(CHAT_BODY, STORED_CHAT_BODY).map(lambda b: json.dumps(b).encode()), RAW_BODY),
        )
        def request_anything(
            route: tuple[str, str, str | None], values: dict[str, str], query: Any, headers: Any, body: Any
        ) -> None:
            method, path, _ = route
            url = fill(path, values)
            response = http.request(method, url, params=query, headers={**JSON_TYPE, **headers}, content=body)
            check(response, f"{method} {url}?{query} {body!r:.200}")

        request_anything()
    assert store_checksum(host) == before


def test_fuzz_invalid_actions_change_nothing(fuzz_host: tuple[RunningHost, dict[str, str], list[str]]) -> None:
    host, keys, seeded = fuzz_host
    before = store_checksum(host)
    actions = [(method, path) for method, path, right in operations(host) if right == Right.ACTION.value]
    not_an_object = st.one_of(  # invalid for any body model, including routes this test does not know
        st.binary(max_size=32).filter(lambda raw: not raw.strip().startswith(b"{")),
        JSON.filter(lambda value: not isinstance(value, dict)).map(lambda v: json.dumps(v).encode()),
    )
    not_metadata = st.text(max_size=8).filter(lambda name: name != "metadata")
    invalid_update = st.one_of(
        not_an_object,
        st.dictionaries(not_metadata, JSON, min_size=1, max_size=3).flatmap(
            lambda extra: METADATA.map(lambda metadata: json.dumps({**extra, "metadata": metadata}).encode())
        ),
        st.dictionaries(TEXT, st.integers() | st.lists(TEXT), min_size=1, max_size=3).map(
            lambda bad: json.dumps({"metadata": bad}).encode()
        ),
    )
    missing_id = st.one_of(
        TEXT, st.from_regex(r"chatcmpl-[0-9a-f]{32}", fullmatch=True).filter(lambda i: i not in seeded)
    )
    headers = {"api-key": keys["actor"], **JSON_TYPE}

    with httpx.Client(base_url=host.url, timeout=30, headers=headers) as http:

        @settings(max_examples=800, deadline=None, database=None, derandomize=True)
        @given(route=st.sampled_from(actions), real_id=st.sampled_from(seeded), other_id=missing_id, data=st.data())
        def act_invalidly(route: tuple[str, str], real_id: str, other_id: str, data: st.DataObject) -> None:
            method, path = route
            if "{completion_id}" not in path:  # another route: only a body no model accepts
                url, body = fill(path, {}), data.draw(not_an_object)
            elif method == "DELETE":  # an id that is not stored
                url, body = fill(path, {"completion_id": other_id}), data.draw(RAW_BODY)
            else:  # a real id, so only the body keeps the update from happening
                url, body = fill(path, {"completion_id": real_id}), data.draw(invalid_update)
            response = http.request(method, url, content=body)
            check(response, f"{method} {url} {body!r:.200}")
            assert not 200 <= response.status_code < 300, f"{method} {url} was accepted"

        act_invalidly()
    assert store_checksum(host) == before
