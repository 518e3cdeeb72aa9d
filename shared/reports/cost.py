"""What the stored calls cost, from `PRICE_TABLE`, and whether a fine-tuned student pays for its hosting.

Token counts come from the index rows (the indexer copies each stored answer's `usage` there, after
the fact), so the quota report's one walk of the index prices every stored call: per serving
deployment, per alias and per metadata value. Calls made with `store: false` leave no row and are
not counted. A call is priced by the deployment that served it, else by its model name; a call with
neither in the table is counted as unpriced.

Break-even: for an alias whose fallback (the teacher) and another target (the student) are both
priced, the alias's observed traffic of the last days, at its average tokens per call, is priced at
each; the student pays off when the tokens it saves per day exceed its hosting fee per day.
"""

from __future__ import annotations

from collections import defaultdict
from datetime import datetime, timedelta

from pydantic import BaseModel, Field

from shared.platform.settings import Price
from shared.store.completion_index import IndexEntry

MILLION = 1_000_000
TRACKED_VALUES = 1000
"""Metadata values priced per key at once (past twice this, the cheapest are dropped)."""


class AliasPair(BaseModel):
    """An alias's teacher (its fallback) and the students it routes to (its other targets)."""

    alias: str
    teacher: str
    students: list[str]


class CostTally(BaseModel):
    name: str
    calls: int = 0
    input_tokens: int = 0
    cached_tokens: int = 0
    output_tokens: int = 0
    cost: float = 0.0
    unpriced_calls: int = 0
    """Calls whose deployment and model have no price (their tokens are counted, not their cost)."""

    def add(self, entry: IndexEntry, cost: float | None) -> None:
        self.calls += 1
        self.input_tokens += entry.input_tokens
        self.cached_tokens += entry.cached_tokens
        self.output_tokens += entry.output_tokens
        if cost is None:
            self.unpriced_calls += 1
        else:
            self.cost += cost


class BreakEven(BaseModel):
    """A student against its teacher at the alias's observed traffic."""

    alias: str
    teacher: str
    student: str
    calls_per_day: float
    """The alias's stored calls per day over the last `window_days` days."""
    teacher_cost_per_call: float
    student_cost_per_call: float
    """At the same average tokens per call, the student's token prices."""
    hosting_per_day: float
    """The student's `hourly` fee times 24."""
    savings_per_day: float
    """If the student served all of the traffic: tokens saved per day minus hosting per day."""
    break_even_calls_per_day: float | None
    """Calls per day from which the student pays for its hosting; null when it never does (it costs as much per call or more)."""
    pays_off: bool


class CostReport(BaseModel):
    """Money, from `PRICE_TABLE`, for every stored call (what the index holds)."""

    total: float
    calls: int
    unpriced: list[str] = Field(default_factory=list)
    """Serving deployments with calls and no price in `PRICE_TABLE`."""
    hosting_per_day: dict[str, float] = Field(default_factory=dict)
    """Priced deployments with an `hourly` fee, and that fee times 24."""
    by_deployment: list[CostTally]
    """By the deployment that served each call, most expensive first."""
    by_alias: list[CostTally]
    """Calls made through an alias, by alias."""
    by_metadata: dict[str, list[CostTally]]
    """Per metadata key, its most expensive values."""
    window_days: int
    break_even: list[BreakEven]


class CostTallies:
    """The cost walk's running figures: fed one index entry at a time, bounded in memory."""

    def __init__(self, prices: dict[str, Price], *, now: datetime, window_days: int) -> None:
        self._prices = prices
        self._since = (now - timedelta(days=window_days)).timestamp()
        self._window_days = window_days
        self.total = CostTally(name="total")
        self.deployments: dict[str, CostTally] = {}
        self.aliases: dict[str, CostTally] = {}
        self.recent_aliases: dict[str, CostTally] = {}
        """Per alias, its calls in the window (tokens only: break-even prices them twice)."""
        self.metadata: dict[str, dict[str, CostTally]] = defaultdict(dict)

    def price_of(self, entry: IndexEntry) -> Price | None:
        return self._prices.get(entry.served_by or entry.deployment) or self._prices.get(entry.model)

    def add(self, entry: IndexEntry) -> None:
        price = self.price_of(entry)
        cost = (
            None if price is None else token_cost(price, entry.input_tokens, entry.cached_tokens, entry.output_tokens)
        )
        serving = entry.served_by or entry.deployment
        self.total.add(entry, cost)
        _tally(self.deployments, serving).add(entry, cost)
        if entry.served_by is not None:
            _tally(self.aliases, entry.deployment).add(entry, cost)
            if entry.created >= self._since:
                _tally(self.recent_aliases, entry.deployment).add(entry, cost)
        for key, value in entry.metadata.items():
            values = self.metadata[key]
            if value not in values and len(values) >= 2 * TRACKED_VALUES:
                kept = sorted(values.values(), key=lambda t: (-t.cost, t.name))[:TRACKED_VALUES]
                self.metadata[key] = values = {t.name: t for t in kept}
            _tally(values, value).add(entry, cost)

    def report(self, pairs: list[AliasPair], *, top_values: int) -> CostReport:
        ranked = sorted(self.deployments.values(), key=lambda t: (-t.cost, t.name))
        return CostReport(
            total=round(self.total.cost, 6),
            calls=self.total.calls,
            unpriced=sorted(t.name for t in ranked if t.unpriced_calls),
            hosting_per_day={name: price.hourly * 24 for name, price in sorted(self._prices.items()) if price.hourly},
            by_deployment=[_rounded(t) for t in ranked],
            by_alias=[_rounded(t) for t in sorted(self.aliases.values(), key=lambda t: (-t.cost, t.name))],
            by_metadata={
                key: [_rounded(t) for t in sorted(values.values(), key=lambda t: (-t.cost, t.name))[:top_values]]
                for key, values in sorted(self.metadata.items())
            },
            window_days=self._window_days,
            break_even=[found for pair in pairs for found in self._break_even(pair)],
        )

    def _break_even(self, pair: AliasPair) -> list[BreakEven]:
        traffic = self.recent_aliases.get(pair.alias)
        teacher = self._prices.get(pair.teacher)
        if traffic is None or not traffic.calls or teacher is None:
            return []
        per_call = [t / traffic.calls for t in (traffic.input_tokens, traffic.cached_tokens, traffic.output_tokens)]
        calls_per_day = traffic.calls / self._window_days
        found = []
        for name in pair.students:
            student = self._prices.get(name)
            if student is None:
                continue
            teacher_call, student_call = token_cost(teacher, *per_call), token_cost(student, *per_call)
            hosting = student.hourly * 24
            saved = teacher_call - student_call
            found.append(
                BreakEven(
                    alias=pair.alias,
                    teacher=pair.teacher,
                    student=name,
                    calls_per_day=round(calls_per_day, 3),
                    teacher_cost_per_call=round(teacher_call, 8),
                    student_cost_per_call=round(student_call, 8),
                    hosting_per_day=round(hosting, 6),
                    savings_per_day=round(calls_per_day * saved - hosting, 6),
                    break_even_calls_per_day=round(hosting / saved, 3) if saved > 0 else None,
                    pays_off=calls_per_day * saved > hosting,
                )
            )
        return found


def token_cost(price: Price, input_tokens: float, cached_tokens: float, output_tokens: float) -> float:
    cached = min(cached_tokens, input_tokens)
    cached_price = price.input if price.cached_input is None else price.cached_input
    return ((input_tokens - cached) * price.input + cached * cached_price + output_tokens * price.output) / MILLION


def _tally(tallies: dict[str, CostTally], name: str) -> CostTally:
    tally = tallies.get(name)
    if tally is None:
        tally = tallies[name] = CostTally(name=name)
    return tally


def _rounded(tally: CostTally) -> CostTally:
    return tally.model_copy(update={"cost": round(tally.cost, 6)})
