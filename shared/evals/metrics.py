"""Text-similarity metrics, scored off the event loop with a length cap and a per-item timeout.

ROUGE, BLEU and METEOR are pure Python and quadratic in the text: a 113 KB pair once froze a worker
22 s (and every chat completion waiting on that worker with it) and took 800 MB. So a pair longer
than `max_chars` (per text) is not scored at all (`MetricRefused`, an `error` result), and a pair
longer than `INLINE_CHARS` in all is scored in a small process pool; a score that takes longer than
`timeout_seconds` kills that pool's processes (a thread or a future cannot be stopped) and is
refused too. Short pairs — the usual case, microseconds to score — stay inline: a process hop
would cost more than the score.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import multiprocessing
import os
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from functools import cache
from typing import Any

log = logging.getLogger(__name__)

INLINE_CHARS = 1_000
"""Pairs at most this long in all are scored on the event loop (a few milliseconds at worst)."""


class MetricRefused(Exception):
    """The pair could not be scored: too long, too slow, or its worker died; the message says which."""


class TextMetrics:
    """Scores `(hypothesis, reference)` pairs with a named metric; one per worker."""

    def __init__(self, *, max_chars: int, timeout_seconds: float, processes: int | None = None) -> None:
        self.max_chars = max_chars
        self.timeout_seconds = timeout_seconds
        self._processes = processes or max(1, min(4, (os.cpu_count() or 1) - 1))
        self._pool: ProcessPoolExecutor | None = None

    async def score(self, metric: str, hypothesis: str, reference: str) -> float:
        longest = max(len(hypothesis), len(reference))
        if longest > self.max_chars:
            raise MetricRefused(
                f"The texts compared are {len(hypothesis)} and {len(reference)} characters long; {metric} "
                f"compares texts of at most {self.max_chars} characters (EVAL_MAX_COMPARED_CHARS)."
            )
        if len(hypothesis) + len(reference) <= INLINE_CHARS:
            return METRICS[metric](hypothesis, reference)
        for attempt in (1, 2):
            pool = self._executor()
            try:
                return await asyncio.wait_for(
                    asyncio.get_running_loop().run_in_executor(pool, score_pair, metric, hypothesis, reference),
                    self.timeout_seconds,
                )
            except TimeoutError:
                self._discard(pool)
                raise MetricRefused(
                    f"{metric} took longer than {self.timeout_seconds:g} s on texts of {len(hypothesis)} and "
                    f"{len(reference)} characters (EVAL_METRIC_TIMEOUT_SECONDS)."
                ) from None
            except BrokenProcessPool:  # another item's timeout killed the pool, or a worker ran out of memory
                self._discard(pool)
                if attempt == 2:
                    raise MetricRefused(
                        f"{metric} stopped while scoring texts of {len(hypothesis)} and {len(reference)} "
                        "characters (its worker process died, e.g. out of memory)."
                    ) from None
        raise AssertionError("unreachable")

    def close(self) -> None:
        if self._pool is not None:
            self._discard(self._pool)

    def _executor(self) -> ProcessPoolExecutor:
        if self._pool is None:
            # spawn, not fork: the worker's threads (storage, telemetry) must not be copied mid-lock.
            self._pool = ProcessPoolExecutor(self._processes, mp_context=multiprocessing.get_context("spawn"))
        return self._pool

    def _discard(self, pool: ProcessPoolExecutor) -> None:
        if self._pool is pool:
            self._pool = None
        processes = dict(getattr(pool, "_processes", None) or {})  # no public way to stop a running task
        for process in processes.values():
            with contextlib.suppress(OSError):
                process.kill()
        pool.shutdown(wait=False, cancel_futures=True)


def score_pair(metric: str, hypothesis: str, reference: str) -> float:
    """Runs in a pool process."""
    return METRICS[metric](hypothesis, reference)


# (hypothesis, reference) -> score in [0, 1]; libraries load on first use.
def _fuzzy_match(hypothesis: str, reference: str) -> float:
    from rapidfuzz import fuzz

    return float(fuzz.ratio(hypothesis, reference)) / 100.0


def _bleu(hypothesis: str, reference: str) -> float:
    import sacrebleu

    return float(sacrebleu.sentence_bleu(hypothesis, [reference]).score) / 100.0


def _gleu(hypothesis: str, reference: str) -> float:
    from nltk.translate.gleu_score import sentence_gleu

    return float(sentence_gleu([reference.split()], hypothesis.split()))


class _NoSynonyms:
    """Stands in for WordNet in NLTK's METEOR: exact and stem matches only (see `graders`)."""

    def synsets(self, *_args: Any, **_kwargs: Any) -> list[Any]:
        return []


def _meteor(hypothesis: str, reference: str) -> float:
    from nltk.translate.meteor_score import single_meteor_score

    if not hypothesis.split() or not reference.split():
        return 0.0
    return float(single_meteor_score(reference.split(), hypothesis.split(), wordnet=_NoSynonyms()))


@cache
def _rouge_scorer(kind: str) -> Any:
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer([kind], use_stemmer=True)


def _rouge(kind: str) -> Callable[[str, str], float]:
    def score(hypothesis: str, reference: str) -> float:
        return float(_rouge_scorer(kind).score(reference, hypothesis)[kind].fmeasure)

    return score


METRICS: dict[str, Callable[[str, str], float]] = {
    "fuzzy_match": _fuzzy_match,
    "bleu": _bleu,
    "gleu": _gleu,
    "meteor": _meteor,
    **{f"rouge_{n}": _rouge(f"rouge{n}") for n in range(1, 6)},
    "rouge_l": _rouge("rougeL"),
}
