"""What a stored completion keeps: each kind found by the offline detector (Presidio) replaced in
messages, parts, tool arguments and results, the answer and (when asked) metadata; pseudonyms stable."""

from __future__ import annotations

import json
from typing import Any

import pytest

from shared.platform.errors import ConfigurationError
from shared.platform.settings import (
    DEFAULT_REDACTION_ENTITIES,
    LANGUAGE_ONLY_KINDS,
    EntityKind,
    RedactionMode,
    load_settings,
)
from shared.redaction.detectors import OFFLINE_KINDS, OfflineDetector
from shared.redaction.redactor import Redactor
from shared.store.stored_completion import StoredCompletion

EMAIL = "jane.doe@example.com"
CARD = "4111 1111 1111 1111"
PHONE = "+1 212-555-0143"
IP = "203.0.113.42"
KINDS = [EntityKind(name) for name in DEFAULT_REDACTION_ENTITIES.split(",")]
DETECTOR = OfflineDetector()


def redactor(mode: RedactionMode, *, key: bytes = b"k" * 32, metadata: bool = False) -> Redactor:
    return Redactor(detector=DETECTOR, mode=mode, kinds=KINDS, key=key, metadata=metadata)


def conversation() -> StoredCompletion:
    arguments = json.dumps({"to": EMAIL, "count": 2})
    return StoredCompletion(
        id="chatcmpl-x",
        created=1,
        deployment="d",
        model="m",
        metadata={"user": EMAIL, "tag": "t"},
        request={
            "model": "m",
            "temperature": 0.2,
            "messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": f"Mail {EMAIL}, card {CARD}"},
                {
                    "role": "assistant",
                    "content": None,
                    "tool_calls": [
                        {"id": "call_1", "type": "function", "function": {"name": "send", "arguments": arguments}}
                    ],
                },
                {"role": "tool", "tool_call_id": "call_1", "content": json.dumps({"ok": True, "from_ip": IP})},
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": f"Or call {PHONE}"},
                        {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}},
                    ],
                },
            ],
        },
        response={
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": f"Sent to {EMAIL}."},
                    "finish_reason": "stop",
                    "logprobs": {"content": [{"token": "jane", "logprob": -0.1}]},
                }
            ]
        },
    )


async def test_mask_replaces_each_kind_everywhere_a_conversation_keeps_text() -> None:
    kept = await redactor(RedactionMode.MASK).redact(conversation())
    document = kept.model_dump_json(exclude={"metadata"})
    for value in (EMAIL, CARD, PHONE, IP, "jane"):
        assert value not in document
    messages = kept.request["messages"]
    assert messages[0]["content"] == "Be brief."
    assert messages[1]["content"] == "Mail [EMAIL], card [CREDIT_CARD]"
    assert json.loads(messages[2]["tool_calls"][0]["function"]["arguments"]) == {"to": "[EMAIL]", "count": 2}
    assert messages[2]["tool_calls"][0]["id"] == "call_1"
    assert json.loads(messages[3]["content"]) == {"ok": True, "from_ip": "[IP_ADDRESS]"}
    assert messages[4]["content"][0]["text"] == "Or call [PHONE]"
    assert messages[4]["content"][1]["image_url"]["url"] == "data:image/png;base64,iVBORw0KGgo="
    choice = kept.response["choices"][0]
    assert choice["message"]["content"] == "Sent to [EMAIL]."
    assert choice["logprobs"] is None  # token by token, a detector cannot see the value
    assert kept.request["temperature"] == 0.2
    assert kept.metadata == {"user": EMAIL, "tag": "t"}  # metadata values only with REDACTION_METADATA


async def test_metadata_values_are_redacted_when_asked() -> None:
    kept = await redactor(RedactionMode.MASK, metadata=True).redact(conversation())
    assert kept.metadata == {"user": "[EMAIL]", "tag": "t"}


async def test_the_original_is_left_as_it_was() -> None:
    original = conversation()
    before = original.model_dump_json()
    await redactor(RedactionMode.PSEUDONYMIZE).redact(original)
    assert original.model_dump_json() == before


async def test_pseudonyms_are_stable_per_value_and_depend_on_the_key() -> None:
    first = await redactor(RedactionMode.PSEUDONYMIZE).redact(conversation())
    again = await redactor(RedactionMode.PSEUDONYMIZE).redact(conversation())
    other_key = await redactor(RedactionMode.PSEUDONYMIZE, key=b"x" * 32).redact(conversation())
    question = first.request["messages"][1]["content"]
    answer = first.response["choices"][0]["message"]["content"]
    email = question.split()[1].rstrip(",")
    assert email.startswith("[EMAIL_") and email.endswith("]") and len(email) == len("[EMAIL_]") + 8
    assert answer == f"Sent to {email}."  # the same person in question and answer
    assert json.loads(first.request["messages"][2]["tool_calls"][0]["function"]["arguments"])["to"] == email
    assert again.model_dump_json() == first.model_dump_json()
    assert email not in other_key.model_dump_json()
    texts = await redactor(RedactionMode.PSEUDONYMIZE).redact_texts(["a jane.doe@example.com", "b john@example.org"])
    assert texts[0].split()[1] == email and texts[1].split()[1] != email


async def test_json_without_findings_keeps_its_spelling() -> None:
    arguments = '{"city":  "Paris"}'
    completion = conversation().model_copy(
        update={"request": {"messages": [{"role": "user", "content": arguments}]}, "response": {"choices": []}}
    )
    kept = await redactor(RedactionMode.MASK).redact(completion)
    assert kept.request["messages"][0]["content"] == arguments


async def test_overlapping_findings_become_one_placeholder() -> None:
    (text,) = await redactor(RedactionMode.MASK).redact_texts([f"write {EMAIL} now"])
    assert text == "write [EMAIL] now"


async def test_kinds_not_asked_for_are_kept() -> None:
    only_email = Redactor(detector=DETECTOR, mode=RedactionMode.MASK, kinds=[EntityKind.EMAIL])
    (text,) = await only_email.redact_texts([f"{EMAIL} {CARD}"])
    assert text == f"[EMAIL] {CARD}"


def test_the_offline_detector_finds_every_kind_but_those_that_need_azure_ai_language() -> None:
    assert OFFLINE_KINDS.isdisjoint(LANGUAGE_ONLY_KINDS)
    assert set(EntityKind) == OFFLINE_KINDS | LANGUAGE_ONLY_KINDS


BASE = {"AzureWebJobsStorage": "UseDevelopmentStorage=true"}


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"REDACTION": "pseudonymize"}, "REDACTION=pseudonymize needs REDACTION_KEY"),
        ({"REDACTION": "pseudonymize", "REDACTION_KEY": "short"}, "at least 16 characters"),
        ({"REDACTION": "mask", "LOG_CONTENT": "true"}, "LOG_CONTENT=true would log what REDACTION removes"),
        ({"REDACTION": "mask", "REDACTION_ENTITIES": "EMAIL,PERSON"}, "PERSON can only be found by Azure AI Language"),
        ({"REDACTION": "mask", "REDACTION_ENTITIES": "EMAIL,NAME"}, "REDACTION_ENTITIES"),
        ({"REDACTION": "hide"}, "REDACTION"),
    ],
)
def test_settings_refuse_redaction_that_cannot_work(
    monkeypatch: pytest.MonkeyPatch, settings: dict[str, Any], message: str
) -> None:
    for name, value in {**BASE, **settings}.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ConfigurationError, match=message):
        load_settings()
