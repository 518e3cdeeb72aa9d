"""Duplicate prompts and train/eval leakage in dataset builds: a filter step the builder calls once
per example, before the example is written.

The *prompt* is the conversation before the answer without its system and developer messages
(which most completions of one app share, and would make every prompt look alike), lower-cased
with whitespace collapsed. Exact duplicates are found by a 64-bit hash of it; near-duplicates by
MinHash LSH (`datasketch`) over its word pairs, at a Jaccard threshold the build chooses. The MinHash
values are computed here with numpy, bit for bit as datasketch's own `MinHash` computes them (saved
states and the LSH band keys depend on them), without building a `MinHash` per example.

Leakage: in a distillation build with a validation split, an example whose prompt is a
near-duplicate of one already in the *other* split is dropped, whatever the dedup mode, so no
validation item is a near-duplicate of a training example. (The newcomer is dropped, whichever
split it was headed for: lines already written are never rewritten.)

A build runs in chunks (one per queue delivery), so what the filter has admitted is saved beside
the job's other work files and loaded by the next chunk.
"""

from __future__ import annotations

import hashlib
import itertools
from typing import Any, Literal

import numpy as np
from datasketch import LeanMinHash, MinHash, MinHashLSH
from pydantic import BaseModel, ConfigDict, Field

from shared.datasets.formats import SkipReason

NUM_PERM = 64
"""Permutations per signature: 256 bytes an example in memory and in the saved state."""
SCHEME = "affine32"
"""datasketch's permutation scheme (its default since 2.0.0, which saved states use): the one
`_minhash_values` computes."""
_FMIX32 = (np.uint32(0x85EBCA6B), np.uint32(0xC2B2AE35))
"""MurmurHash3's 32-bit finalizer multipliers, with which datasketch pre-mixes each shingle hash."""
_EMPTY = np.iinfo(np.uint32).max
"""A fresh `MinHash`'s value under every permutation."""
DEFAULT_THRESHOLD = 0.8

DedupMode = Literal["off", "exact", "near"]


class DedupParams(BaseModel):
    """How a build treats repeated prompts (the `dedup` field of `POST /api/datasets`)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    mode: DedupMode = "off"
    """`exact` drops an example whose prompt equals an earlier one's; `near` also drops one whose
    prompt is a near-duplicate (estimated Jaccard similarity of word pairs at or above `threshold`)."""
    threshold: float = Field(DEFAULT_THRESHOLD, ge=0.5, le=0.99)
    """Jaccard similarity at which two prompts count as near-duplicates (also the leakage check's)."""


_STATE = np.dtype([("fingerprint", "<u8"), ("split", "u1"), ("signature", "<u4", (NUM_PERM,))])


class PromptFilter:
    """Admits or drops examples by their prompt; holds every admitted prompt's fingerprint and, when
    near-duplicates or leakage are checked, its MinHash signature."""

    def __init__(self, params: DedupParams, *, check_leakage: bool) -> None:
        self.params = params
        self._exact = params.mode != "off"
        self._near = params.mode == "near" or check_leakage
        self._leakage = check_leakage
        self._fingerprints: set[int] = set()
        self._admitted: list[tuple[int, int, Any]] = []
        self._keys = 0
        self._scheme = MinHash(num_perm=NUM_PERM, scheme=SCHEME)
        self._lsh = MinHashLSH(threshold=params.threshold, num_perm=NUM_PERM) if self._near else None

    @property
    def active(self) -> bool:
        return self._exact or self._near

    def admit(self, messages: list[dict[str, Any]], *, split: int) -> SkipReason | None:
        """None to keep the example, else why it is dropped; `split` tells the files apart (0 train, 1 validation)."""
        if not self.active:
            return None
        text = prompt_text(messages)
        fingerprint = int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little")
        if self._exact and fingerprint in self._fingerprints:
            return SkipReason.DUPLICATE_PROMPT
        signature = None
        if self._lsh is not None:
            signature = self._signature(text)
            neighbours = self._lsh.query(signature)
            if self._leakage and any(key[0] != split for key in neighbours):
                return SkipReason.EVAL_LEAKAGE
            if self.params.mode == "near" and neighbours:
                return SkipReason.NEAR_DUPLICATE
        self._remember(fingerprint, split, signature)
        self._admitted.append((fingerprint, split, signature))
        return None

    def saved(self) -> bytes:
        """What this chunk admitted, for the next chunk's `load`; empty when nothing was."""
        state = np.zeros(len(self._admitted), dtype=_STATE)
        for row, (fingerprint, split, signature) in enumerate(self._admitted):
            state[row]["fingerprint"], state[row]["split"] = fingerprint, split
            if signature is not None:
                state[row]["signature"] = signature.hashvalues
        return state.tobytes()

    def rejects_any(self, data: bytes) -> bool:
        """Whether `admit` would drop any of these saved admissions, given what this filter holds (a
        slice built alone admitted them; the slices before it may hold their duplicates)."""
        if not self.active:
            return False
        for row in np.frombuffer(data, dtype=_STATE):
            if self._exact and int(row["fingerprint"]) in self._fingerprints:
                return True
            if self._lsh is not None:
                signature = self._sketch(row["signature"].astype(np.uint32))
                neighbours = self._lsh.query(signature)
                if self._leakage and any(key[0] != int(row["split"]) for key in neighbours):
                    return True
                if self.params.mode == "near" and neighbours:
                    return True
        return False

    def load(self, data: bytes) -> None:
        """Admit what an earlier chunk saved (without counting it again)."""
        for row in np.frombuffer(data, dtype=_STATE):
            signature = None
            if self._lsh is not None:
                signature = self._sketch(row["signature"].astype(np.uint32))
            self._remember(int(row["fingerprint"]), int(row["split"]), signature)

    def _remember(self, fingerprint: int, split: int, signature: Any) -> None:
        self._fingerprints.add(fingerprint)
        if self._lsh is not None and signature is not None:
            self._lsh.insert((split, self._keys), signature, check_duplication=False)
            self._keys += 1

    def _signature(self, text: str) -> LeanMinHash:
        words = text.split()
        shingles = [f"{a} {b}".encode() for a, b in itertools.pairwise(words)] or [text.encode()]
        return self._sketch(_minhash_values(shingles, *self._scheme.permutations))

    def _sketch(self, values: np.ndarray) -> LeanMinHash:
        """The form `MinHashLSH` takes a signature in (64 `uint32` values: the band keys are their bytes)."""
        return LeanMinHash(seed=self._scheme.seed, hashvalues=values, scheme=SCHEME)


def _minhash_values(shingles: list[bytes], a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """What `MinHash(scheme="affine32").update_batch(shingles)` leaves in `hashvalues`, for the
    permutations `a`, `b`: each shingle's SHA-1 (first 4 bytes, little-endian), MurmurHash3-finalized,
    through every permutation `a * h + b` (uint32 arithmetic wraps, which is the scheme's modulo
    2**32), the minimum per permutation. A few numpy operations over all the shingles at once,
    instead of a `MinHash` built (its permutations re-checked) for every example."""
    digests = b"".join([hashlib.sha1(shingle).digest() for shingle in shingles])
    hashes = np.frombuffer(digests, dtype="<u4")[::5]  # a SHA-1 digest is five 32-bit words
    hashes = hashes ^ (hashes >> 16)
    hashes *= _FMIX32[0]
    hashes ^= hashes >> 13
    hashes *= _FMIX32[1]
    hashes ^= hashes >> 16
    # A MinHash starts at the largest value and `update_batch` takes the minimum with it.
    return (hashes[:, np.newaxis] * a + b).min(axis=0, initial=_EMPTY)


def prompt_text(messages: list[dict[str, Any]]) -> str:
    """The conversation before the answer, system and developer messages left out, normalised."""
    parts = []
    for message in messages:
        role = message.get("role")
        if role in ("system", "developer"):
            continue
        content = message.get("content")
        if isinstance(content, list):
            content = " ".join(str(part.get("text", "")) for part in content if isinstance(part, dict))
        calls = " ".join(
            str((call.get("function") or {}).get("arguments", "")) for call in message.get("tool_calls") or []
        )
        parts.append(f"{role}: {content or ''} {calls}")
    return " ".join(" ".join(parts).lower().split())


def dedup_report(params: DedupParams, skipped: dict[str, int], *, leakage_checked: bool) -> dict[str, Any]:
    """The manifest's account of what the filter dropped."""
    leaked = skipped.get(SkipReason.EVAL_LEAKAGE.value, 0)
    return {
        "mode": params.mode,
        "threshold": params.threshold,
        "exact_duplicates_dropped": skipped.get(SkipReason.DUPLICATE_PROMPT.value, 0),
        "near_duplicates_dropped": skipped.get(SkipReason.NEAR_DUPLICATE.value, 0),
        "leakage": {"checked": leakage_checked, "found": leaked, "removed": leaked},
    }
