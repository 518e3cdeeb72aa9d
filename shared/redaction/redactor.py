"""Redaction at capture: what a stored completion keeps of the personal data in it.

`Redactor.redact` is the one step every capture's document passes before its one durable write
(`CompletionStore.capture`), whatever API captured it: it replaces each finding in the request's
messages (or Responses `input` / `instructions`), the answer's choices (or `output`), tool-call
arguments and tool results (JSON inside a string is redacted value by value, so it stays JSON), and
with `REDACTION_METADATA` the metadata values. Token log-probabilities spell the answer out token by
token, beyond a detector's reach, so they are dropped. Inline files (`data:` URLs, base64 audio) are not
text and are kept as sent. The upstream always gets the caller's original request: this runs after it.
"""

from __future__ import annotations

import copy
import hashlib
import hmac
import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from shared.platform.settings import EntityKind, RedactionMode
from shared.platform.telemetry import span
from shared.redaction.detectors import Detector, Finding
from shared.store.stored_completion import StoredCompletion

_REQUEST_FIELDS = ("messages", "input", "instructions")
_RESPONSE_FIELDS = ("choices", "output", "output_text", "instructions")
"""`instructions`: a Responses API response echoes its request's."""
_STRUCTURAL_KEYS = frozenset(
    {"role", "type", "id", "tool_call_id", "call_id", "status", "finish_reason", "object", "model", "detail", "format"}
)
"""Keys whose values are the shape of a conversation, never what was said: kept as they are."""
_BINARY_KEYS = frozenset({"data", "file_data"})
"""Base64 payloads (audio, files): not text."""
_DROPPED_KEYS = frozenset({"logprobs", "top_logprobs"})
PSEUDONYM_HEX = 8

CANARY: dict[EntityKind, str] = {
    EntityKind.EMAIL: "canary.pii@example.com",
    EntityKind.PHONE: "+1 212-555-0143",
    EntityKind.CREDIT_CARD: "4111 1111 1111 1111",
    EntityKind.IBAN: "DE89370400440532013000",
    EntityKind.IP_ADDRESS: "203.0.113.42",
    EntityKind.PERSON: "Margaret Hamilton",
}
"""Known personal data for the permission report's self-test: each configured kind's value must not be stored."""


@dataclass
class _Slot:
    """Where one string sits: `holder[key]`."""

    holder: Any
    key: Any

    @property
    def text(self) -> str:
        return str(self.holder[self.key])


@dataclass
class _JsonSlot(_Slot):
    """A string that is JSON: its own strings are slots, and it is written back once they are redacted."""

    parsed: Any
    inner: list[_Slot]


class Redactor:
    """Replaces personal data with `[KIND]` (mask) or `[KIND_<keyed hash>]` (pseudonymize)."""

    def __init__(
        self,
        *,
        detector: Detector,
        mode: RedactionMode,
        kinds: Iterable[EntityKind],
        key: bytes | None = None,
        metadata: bool = False,
    ) -> None:
        if mode is RedactionMode.PSEUDONYMIZE and not key:
            raise ValueError("pseudonymize needs a key")
        self.detector = detector
        self.mode = mode
        self.kinds = frozenset(kinds)
        self._key = key or b""
        self.metadata = metadata
        """Metadata values are redacted too (`REDACTION_METADATA`)."""

    async def close(self) -> None:
        await self.detector.close()

    async def redact(self, completion: StoredCompletion) -> StoredCompletion:
        """The completion as it may be kept; raises `RedactionUnavailable` when the detector cannot answer."""
        request = copy.deepcopy(completion.request)
        response = copy.deepcopy(completion.response)
        metadata = dict(completion.metadata)
        # A response's earlier turns (its `previous_response_id` chain) come from the store, but one kept
        # before redaction was on would bring its text back: they pass through here too.
        earlier = {"history": copy.deepcopy(completion.history)}
        slots: list[_Slot] = []
        for name in _REQUEST_FIELDS:
            _collect(request, name, slots)
        _collect(earlier, "history", slots)
        for name in _RESPONSE_FIELDS:
            _collect(response, name, slots)
        if self.metadata:  # the request body holds them too
            for name in metadata:
                _collect(metadata, name, slots)
            _collect(request, "metadata", slots)
            _collect(response, "metadata", slots)  # a Responses API response echoes its metadata
        texts = [slot for slot in slots if not isinstance(slot, _JsonSlot)]
        attributes = {"distillery.redaction.texts": len(texts), "distillery.redaction.detector": self.detector.label}
        with span("redaction", attributes) as current:
            redacted = await self.redact_texts([slot.text for slot in texts])
            changed = {id(slot) for slot, text in zip(texts, redacted, strict=True) if text != slot.text}
            current.set_attribute("distillery.redaction.changed", len(changed))
        for slot, text in zip(texts, redacted, strict=True):
            slot.holder[slot.key] = text
        for json_slot in reversed([slot for slot in slots if isinstance(slot, _JsonSlot)]):  # inner JSON first
            if any(id(slot) in changed for slot in json_slot.inner):  # JSON with nothing found keeps its spelling
                json_slot.holder[json_slot.key] = json.dumps(json_slot.parsed, ensure_ascii=False)
                changed.add(id(json_slot))
        return completion.model_copy(
            update={"request": request, "response": response, "metadata": metadata, "history": earlier["history"]}
        )

    async def redact_metadata(self, metadata: dict[str, str]) -> dict[str, str]:
        """Metadata set after capture (`POST /chat/completions/{id}`), redacted as a capture's is."""
        redacted = await self.redact_texts(list(metadata.values()))
        return dict(zip(metadata, redacted, strict=True))

    async def redact_texts(self, texts: list[str]) -> list[str]:
        """Each text with its findings replaced, in one round of detection (each distinct text once: a
        conversation repeats its system prompt and tool results)."""
        distinct = list(dict.fromkeys(texts))
        findings = await self.detector.detect(distinct, self.kinds)
        replaced = {text: self._replace(text, found) for text, found in zip(distinct, findings, strict=True)}
        return [replaced[text] for text in texts]

    def placeholder(self, kind: EntityKind, value: str) -> str:
        if self.mode is RedactionMode.MASK:
            return f"[{kind.value}]"
        digest = hmac.new(self._key, f"{kind.value}\0{value}".encode(), hashlib.sha256).hexdigest()
        return f"[{kind.value}_{digest[:PSEUDONYM_HEX]}]"

    def _replace(self, text: str, findings: list[Finding]) -> str:
        parts: list[str] = []
        position = 0
        for start, end, kind in _merged(finding for finding in findings if finding.kind in self.kinds):
            parts += [text[position:start], self.placeholder(kind, text[start:end])]
            position = end
        return "".join(parts) + text[position:] if parts else text


def _merged(findings: Iterable[Finding]) -> list[tuple[int, int, EntityKind]]:
    """Overlapping findings as one span, of the kind of its most certain (then longest) finding."""
    spans: list[tuple[int, int, Finding]] = []
    for finding in sorted(findings, key=lambda f: (f.start, -f.end)):
        if spans and finding.start < spans[-1][1]:
            start, end, best = spans[-1]
            if (finding.score, finding.end - finding.start) > (best.score, best.end - best.start):
                best = finding
            spans[-1] = (start, max(end, finding.end), best)
        else:
            spans.append((finding.start, finding.end, finding))
    return [(start, end, best.kind) for start, end, best in spans]


def _collect(holder: Any, key: Any, slots: list[_Slot]) -> None:
    """The slots of every string under `holder[key]` that can hold what someone said or was told."""
    if isinstance(holder, dict) and key not in holder:
        return
    value = holder[key]
    if isinstance(value, dict):
        for name in list(value):
            if name in _DROPPED_KEYS:
                value[name] = None
            elif name not in _STRUCTURAL_KEYS and name not in _BINARY_KEYS:
                _collect(value, name, slots)
    elif isinstance(value, list):
        for index in range(len(value)):
            _collect(value, index, slots)
    elif isinstance(value, str) and value.strip() and not value.startswith("data:"):
        parsed = _json_container(value)
        if parsed is None:
            slots.append(_Slot(holder, key))
        else:
            inner: list[_Slot] = []
            slots.append(_JsonSlot(holder, key, parsed, inner))
            _collect([parsed], 0, inner)
            slots += inner


def _json_container(text: str) -> Any:
    """A JSON object or array spelled by the text (tool arguments, tool results), else None."""
    if text.lstrip()[:1] not in ("{", "["):
        return None
    try:
        parsed = json.loads(text)
    except json.JSONDecodeError:
        return None
    return parsed if isinstance(parsed, dict | list) else None
