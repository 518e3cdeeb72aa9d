import pytest

from shared.capture.chat_request import parse_chat_request
from shared.platform.errors import InvalidRequest, NotFound
from shared.platform.request_body import parse_json_object
from shared.store import ids


def test_ids_are_time_ordered_and_carry_their_time() -> None:
    first = ids.new_completion_id(now_us=1_700_000_000_000_000)
    second = ids.new_completion_id(now_us=1_700_000_000_000_001)
    assert first < second
    assert ids.captured_at_us(first) == 1_700_000_000_000_000
    assert ids.is_completion_id(first)


@pytest.mark.parametrize(
    "bad", ["", "chatcmpl-", "chatcmpl-XYZ", "../chatcmpl-0", "chatcmpl-" + "0" * 33, "chatcmpl-" + "0" * 31 + "\n"]
)
def test_malformed_ids_never_reach_storage(bad: str) -> None:
    with pytest.raises(NotFound):
        ids.require_completion_id(bad)
    with pytest.raises(InvalidRequest):
        ids.require_cursor_id(bad)


def test_upstream_body_drops_only_distillery_fields() -> None:
    request = parse_chat_request(
        {
            "messages": [{"role": "user", "content": "x"}],
            "store": True,
            "metadata": {"a": "b"},
            "temperature": 0,
            "new_field": [1],
        }
    )
    assert request.upstream_body(model="dep") == {
        "messages": [{"role": "user", "content": "x"}],
        "temperature": 0,
        "new_field": [1],
        "model": "dep",
    }


@pytest.mark.parametrize("raw", [b"", b"[1]", b"nul", b'"text"', b"\xff\xfe"])
def test_bodies_that_are_not_json_objects_are_rejected(raw: bytes) -> None:
    with pytest.raises(InvalidRequest) as caught:
        parse_json_object(raw)
    assert caught.value.code == "invalid_json"


def test_deeply_nested_json_is_rejected() -> None:
    deep = b'{"a":' * 100 + b"1" + b"}" * 100
    with pytest.raises(InvalidRequest):
        parse_json_object(deep, max_depth=64)
