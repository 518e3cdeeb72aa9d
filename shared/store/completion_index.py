"""The completion index in Azure Table Storage: filtered lists cost a page of matches, not a scan.

Each stored completion writes two rows (ascending and descending order) into one partition per
*term* it can be found by: `all`, each model name, each metadata pair, each score's name and each
score's name and value. A list query reads the
partition of its most selective term, in key order, starting at the cursor; every other condition
is a server-side filter on the row's denormalised columns, so storage returns at most `limit + 1`
rows. Partition keys are hashes of the term, so no user text ever becomes a key; user text only
travels as OData *parameters*, which the SDK quotes.

Every term is split into `SHARDS` partitions by a hash of the completion id, so no partition takes
a row from every capture (`all` would otherwise cap the store at Azure Table's 2,000 entities/s per
partition). A list reads the term's shards at once, each from the cursor, and merges them by row
key, so its order and `after` paging are those of one partition. Idempotency keys are spread the
same way, by their digest.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import heapq
import json
from collections import defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator, Sequence
from decimal import Decimal
from typing import Any, TypeVar

from azure.core.exceptions import (
    AzureError,
    ResourceExistsError,
    ResourceNotFoundError,
)
from azure.data.tables.aio import TableClient
from pydantic import BaseModel

from shared.platform.access import OwnerId, legacy_owner, stable_owner
from shared.platform.errors import StorageUnavailable
from shared.store import ids, table_transactions
from shared.store.completion_filter import CompletionFilter, Order
from shared.store.scores import ScoreCondition, ScoreValue

_KEY_SPAN = 10**16
"""Capture times are microseconds below this bound (the year 2286)."""
_US = 1_000_000
_ALL_PARTITION = "all"
_IDEMPOTENCY_PARTITION = "idempotency"
_T = TypeVar("_T")
SHARDS = 16
"""Partitions per term. At 5,000 captures/s the busiest term takes 10,000 rows/s: 625 per shard,
under a third of a partition's 2,000 entities/s (README, Performance)."""
_FORGOTTEN_PARTITION = "forgotten"


class IndexEntry(BaseModel):
    """What the index knows of one stored completion: enough to filter, page and count."""

    id: str
    deployment: str
    model: str
    metadata: dict[str, str]
    scores: dict[str, ScoreValue] = {}
    owner: OwnerId = None
    size_bytes: int = 0
    served_by: str | None = None
    input_tokens: int = 0
    cached_tokens: int = 0
    """Of `input_tokens`, those served from the prompt cache."""
    output_tokens: int = 0

    @property
    def captured_us(self) -> int:
        return ids.captured_at_us(self.id)

    @property
    def created(self) -> int:
        return self.captured_us // _US


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


def _model_partition(model: str) -> str:
    return "o" + _digest("model\0" + model)[:40]


def _metadata_partition(key: str, value: str) -> str:
    return "m" + _digest(key + "\0" + value)[:40]


def _metadata_column(key: str) -> str:
    """A column name any metadata key maps to (table column names allow only identifier characters)."""
    return "m_" + _digest(key)[:16]


def _score_name_partition(name: str) -> str:
    """Every completion with this score, whatever its value: where a range (`quality>=4`) is read."""
    return "n" + _digest("score\0" + name)[:40]


def _score_partition(name: str, value: ScoreValue) -> str:
    """Completions whose score has exactly this value (`helpful=true`, `tone=friendly`)."""
    return "s" + _digest(name + "\0" + _score_term(value))[:40]


def _score_term(value: ScoreValue) -> str:
    if isinstance(value, bool):
        return "b:" + ("true" if value else "false")
    if isinstance(value, float):
        return "n:" + repr(value)
    return "l:" + value


def _score_column(name: str, value: ScoreValue | float) -> str:
    """One column per score name and kind, so a comparison never meets a value of another type."""
    kind = "sb" if isinstance(value, bool) else "sn" if isinstance(value, float | int) else "sl"
    return f"{kind}_" + _digest(name)[:16]


def _row_key(order: Order, captured_us: int, completion_id: str) -> str:
    return f"{order[0]}{_position(order, captured_us):016d}{completion_id}"


def _position(order: Order, captured_us: int) -> int:
    return captured_us if order == "asc" else _KEY_SPAN - 1 - captured_us


def shard_of(completion_id: str) -> int:
    """The shard of every row of one completion (a hash of its id: captures spread evenly)."""
    return int(_digest(completion_id)[:8], 16) % SHARDS


def _sharded(term: str, shard: int) -> str:
    return f"{term}-{shard:02d}"


def _shards(term: str) -> Iterator[str]:
    return (_sharded(term, shard) for shard in range(SHARDS))


def partitions_of(entry: IndexEntry) -> set[str]:
    """The table partitions holding an entry's rows: one per term it can be found by, in its shard."""
    terms = {_ALL_PARTITION, _model_partition(entry.deployment), _model_partition(entry.model)}
    if entry.served_by is not None:  # behind an alias: found by the deployment that served it, too
        terms.add(_model_partition(entry.served_by))
    terms.update(_metadata_partition(key, value) for key, value in entry.metadata.items())
    terms.update(_score_name_partition(name) for name in entry.scores)
    terms.update(_score_partition(name, value) for name, value in entry.scores.items())
    shard = shard_of(entry.id)
    return {_sharded(term, shard) for term in terms}


def _all_partition(completion_id: str) -> str:
    return _sharded(_ALL_PARTITION, shard_of(completion_id))


def _idempotency_partition(key_digest: str) -> str:
    return _sharded(_IDEMPOTENCY_PARTITION, int(key_digest[:8], 16) % SHARDS)


def _rows(entry: IndexEntry, partition: str) -> list[dict[str, Any]]:
    columns: dict[str, Any] = {
        "id": entry.id,
        "deployment": entry.deployment,
        "model": entry.model,
        "metadata": json.dumps(entry.metadata, ensure_ascii=False),
        "owner": entry.owner or "",
        "size_bytes": entry.size_bytes,
        "served_by": entry.served_by or "",
        "input_tokens": entry.input_tokens,
        "cached_tokens": entry.cached_tokens,
        "output_tokens": entry.output_tokens,
    }
    if entry.scores:
        columns["scores"] = json.dumps(entry.scores, ensure_ascii=False)
    columns.update({_metadata_column(key): value for key, value in entry.metadata.items()})
    columns.update({_score_column(name, value): value for name, value in entry.scores.items()})
    return [
        {"PartitionKey": partition, "RowKey": _row_key(order, entry.captured_us, entry.id), **columns}
        for order in ("asc", "desc")
    ]


def _entry(row: dict[str, Any]) -> IndexEntry:
    return IndexEntry(
        id=row["id"],
        deployment=row["deployment"],
        model=row["model"],
        metadata=json.loads(row["metadata"]),
        scores=json.loads(row.get("scores") or "{}"),
        owner=row.get("owner") or None,
        size_bytes=int(row.get("size_bytes", 0)),
        served_by=row.get("served_by") or None,
        input_tokens=int(row.get("input_tokens") or 0),
        cached_tokens=int(row.get("cached_tokens") or 0),
        output_tokens=int(row.get("output_tokens") or 0),
    )


class CompletionIndex:
    """Reads and writes index rows; callers keep it consistent with the documents (see the store)."""

    def __init__(self, table: TableClient) -> None:
        self._table = table

    async def add(self, entry: IndexEntry) -> None:
        await self._write(entry, partitions_of(entry))

    async def add_many(self, entries: Iterable[IndexEntry], *, in_flight: int = 8) -> set[str]:
        """Write many entries' rows, batched per partition; returns the ids that had no row before.

        The `all` rows go last, as inserts: a list finds an entry only once every other row of it
        is there, and an insert that succeeds tells the entry is new without a read. Only a batch
        whose insert meets an existing row (a redelivered event, a sweep, a rewritten document)
        asks which rows were there and replaces them.
        """
        others: list[dict[str, Any]] = []
        by_all: dict[str, list[IndexEntry]] = defaultdict(list)
        for entry in entries:
            first = _all_partition(entry.id)
            by_all[first].append(entry)
            for partition in partitions_of(entry) - {first}:
                others += _rows(entry, partition)
        try:
            await table_transactions.upsert_grouped(self._table, others, in_flight=in_flight)
        except AzureError as exc:
            raise StorageUnavailable("The completion index is unavailable.") from exc
        per_transaction = table_transactions.MAX_ROWS // 2  # an entry's two rows
        found = await _in_flight(
            [
                functools.partial(self._insert_all_rows, partition, members[start : start + per_transaction])
                for partition, members in by_all.items()
                for start in range(0, len(members), per_transaction)
            ],
            in_flight,
        )
        return set().union(*found)

    async def _insert_all_rows(self, partition: str, entries: list[IndexEntry]) -> set[str]:
        rows = [row for entry in entries for row in _rows(entry, partition)]
        try:
            await table_transactions.insert_rows(self._table, rows)
            return {entry.id for entry in entries}
        except ResourceExistsError:
            indexed = await self.indexed_among([entry.id for entry in entries])
            await table_transactions.upsert_rows(self._table, rows)
            return {entry.id for entry in entries} - indexed

    async def remove(self, entry: IndexEntry) -> None:
        await self._delete(entry, partitions_of(entry))

    async def lookup(self, completion_id: str) -> IndexEntry | None:
        """The index's own entry for an id (its `all` row), found from the id alone: no document needed."""
        row_key = _row_key("asc", ids.captured_at_us(completion_id), completion_id)
        try:
            return _entry(await self._table.get_entity(_all_partition(completion_id), row_key))
        except ResourceNotFoundError:
            return None
        except AzureError as exc:
            raise StorageUnavailable("The completion index is unavailable.") from exc

    async def indexed_among(self, completion_ids: Sequence[str]) -> set[str]:
        """Which of these ids have index rows: one range query per shard of `all`, not one read per id."""
        by_shard: dict[int, list[str]] = defaultdict(list)
        for completion_id in completion_ids:
            by_shard[shard_of(completion_id)].append(completion_id)
        found = await asyncio.gather(
            *(
                self._keys_between(
                    _sharded(_ALL_PARTITION, shard),
                    _row_key("asc", ids.captured_at_us(min(members)), min(members)),
                    _row_key("asc", ids.captured_at_us(max(members)), max(members)),
                    column="id",
                )
                for shard, members in by_shard.items()
            )
        )
        return set(completion_ids) & set().union(*found)

    async def forgotten_among(self, completion_ids: Sequence[str]) -> set[str]:
        """Which of these ids were deleted (one range query of the `forgotten` partition)."""
        if not completion_ids:
            return set()
        found = await self._keys_between(
            _FORGOTTEN_PARTITION, min(completion_ids), max(completion_ids), column="RowKey"
        )
        return set(completion_ids) & found

    async def _keys_between(self, partition: str, low: str, high: str, *, column: str) -> set[str]:
        query = "PartitionKey eq @partition and RowKey ge @low and RowKey le @high"
        parameters = {"partition": partition, "low": low, "high": high}
        try:
            return {
                str(row[column])
                async for row in self._table.query_entities(query, parameters=parameters, select=[column])
            }
        except AzureError as exc:
            raise StorageUnavailable("The completion index is unavailable.") from exc

    async def remove_stale(self, row: IndexEntry, current: IndexEntry | None) -> None:
        """Drop the rows a walk found for `row` that the document (`current`, None when gone) no longer backs."""
        stale = partitions_of(row) - (set() if current is None else partitions_of(current))
        if stale:
            await self._delete(row, stale)

    async def replace(self, old: IndexEntry, new: IndexEntry) -> None:
        """Move an entry to its new terms: write the new rows first, then drop the stale ones."""
        await self._write(new, partitions_of(new))
        await self._delete(old, partitions_of(old) - partitions_of(new))

    async def page(
        self, selection: CompletionFilter, *, order: Order, after: str | None, limit: int
    ) -> tuple[list[IndexEntry], bool]:
        """Up to `limit` matches after the cursor, and whether more exist; reads at most limit+1 rows."""
        entries: list[IndexEntry] = []
        async for entry in self._query(selection, order=order, after=after, page_size=limit + 1):
            entries.append(entry)
            if len(entries) > limit:
                return entries[:limit], True
        return entries, False

    async def walk(
        self,
        selection: CompletionFilter,
        *,
        order: Order = "asc",
        after: str | None = None,
        page_size: int = 500,
    ) -> AsyncIterator[IndexEntry]:
        """Every match, one page in memory at a time (for dataset builds and purges)."""
        async for entry in self._query(selection, order=order, after=after, page_size=page_size):
            yield entry

    async def count(self, selection: CompletionFilter) -> int:
        """How many index rows match: the same partition and server-side filters as a list, only keys read."""
        term, query, parameters = _query_for(selection, order="asc", after=None)

        async def shard_count(partition: str) -> int:
            total = 0
            async for _ in self._table.query_entities(
                query, parameters={**parameters, "partition": partition}, select=["RowKey"], results_per_page=1000
            ):
                total += 1
            return total

        try:
            return sum(await asyncio.gather(*map(shard_count, _shards(term))))
        except AzureError as exc:
            raise StorageUnavailable("The completion index is unavailable.") from exc

    async def size_of(self, completion_id: str) -> int | None:
        """The document size the index recorded for a completion (one point read), None without a row."""
        row_key = _row_key("asc", ids.captured_at_us(completion_id), completion_id)
        try:
            row = await self._table.get_entity(_all_partition(completion_id), row_key, select=["size_bytes"])
        except ResourceNotFoundError:
            return None
        except AzureError as exc:
            raise StorageUnavailable("The completion index is unavailable.") from exc
        return int(row.get("size_bytes") or 0)

    async def claim_idempotency_key(self, key_digest: str, completion_id: str) -> str:
        """The id first claimed for this key: ours when we are first, the earlier one otherwise."""
        try:
            await self._table.create_entity(
                {"PartitionKey": _idempotency_partition(key_digest), "RowKey": key_digest, "id": completion_id}
            )
            return completion_id
        except ResourceExistsError:
            row = await self._table.get_entity(_idempotency_partition(key_digest), key_digest)
            return str(row["id"])
        except AzureError as exc:
            raise StorageUnavailable("The completion index is unavailable.") from exc

    async def forget(self, completion_id: str) -> None:
        """Remember that an id was deleted (the id only), so an idempotent retry cannot bring it back."""
        try:
            await self._table.upsert_entity({"PartitionKey": _FORGOTTEN_PARTITION, "RowKey": completion_id})
        except AzureError as exc:
            raise StorageUnavailable("The completion index is unavailable.") from exc

    async def is_forgotten(self, completion_id: str) -> bool:
        """Whether this id was deleted (its `forgotten` row exists)."""
        try:
            await self._table.get_entity(_FORGOTTEN_PARTITION, completion_id)
        except ResourceNotFoundError:
            return False
        except AzureError as exc:
            raise StorageUnavailable("The completion index is unavailable.") from exc
        return True

    async def reclaim_forgotten(self, key_digest: str, claimed_id: str, completion_id: str) -> str:
        """The id to use for an idempotency key whose claimed completion may have been deleted.

        A deleted id is never reused: the key moves to the new id, so later retries replay the new answer.
        """
        try:
            await self._table.get_entity(_FORGOTTEN_PARTITION, claimed_id)
        except ResourceNotFoundError:
            return claimed_id
        except AzureError as exc:
            raise StorageUnavailable("The completion index is unavailable.") from exc
        try:
            await self._table.upsert_entity(
                {"PartitionKey": _idempotency_partition(key_digest), "RowKey": key_digest, "id": completion_id}
            )
        except AzureError as exc:
            raise StorageUnavailable("The completion index is unavailable.") from exc
        return completion_id

    async def _query(
        self, selection: CompletionFilter, *, order: Order, after: str | None, page_size: int
    ) -> AsyncIterator[IndexEntry]:
        term, query, parameters = _query_for(selection, order=order, after=after)
        shards = [
            self._table.query_entities(
                query, parameters={**parameters, "partition": partition}, results_per_page=page_size
            )
            for partition in _shards(term)
        ]
        try:
            async for row in _merged(shards):
                yield _entry(row)
        except AzureError as exc:
            raise StorageUnavailable("The completion index is unavailable.") from exc

    async def _write(self, entry: IndexEntry, partitions: set[str]) -> None:
        await _all_or_raise(
            [table_transactions.upsert_rows(self._table, _rows(entry, partition)) for partition in partitions]
        )

    async def _delete(self, entry: IndexEntry, partitions: set[str]) -> None:
        operations = [
            self._table.delete_entity(partition, _row_key(order, entry.captured_us, entry.id))
            for partition in partitions
            for order in ("asc", "desc")
        ]
        await _all_or_raise(operations)

    async def sample_ids(
        self, selection: CompletionFilter, *, shards: int, after: str | None, page_size: int = 1000
    ) -> AsyncIterator[str]:
        """The ids of the selection's rows in the first `shards` shards of its term, in walk order.

        Ids are spread over the shards by a hash, so these rows are a uniform sample of the
        selection: `shards`/`SHARDS` of it. Only the keys are read (a dataset plan needs no more).
        """
        term, query, parameters = _query_for(selection, order="asc", after=after)
        reads = [
            self._table.query_entities(
                query,
                parameters={**parameters, "partition": _sharded(term, shard)},
                select=["RowKey", "id"],
                results_per_page=page_size,
            )
            for shard in range(shards)
        ]
        try:
            async for row in _merged(reads):
                yield str(row["id"])
        except AzureError as exc:
            raise StorageUnavailable("The completion index is unavailable.") from exc


async def _in_flight(jobs: list[Callable[[], Awaitable[_T]]], width: int) -> list[_T]:
    """Run the jobs at most `width` at a time (see `_all_or_raise`)."""
    gate = asyncio.Semaphore(width)

    async def run(job: Callable[[], Awaitable[_T]]) -> _T:
        async with gate:
            return await job()

    return await _all_or_raise(map(run, jobs))


async def _all_or_raise(operations: Iterable[Awaitable[_T]]) -> list[_T]:
    """Await them all; any storage failure among them becomes one `StorageUnavailable`."""
    results = await asyncio.gather(*operations, return_exceptions=True)
    failures = [result for result in results if isinstance(result, BaseException)]
    for failure in failures:
        if not isinstance(failure, AzureError):
            raise failure
    if failures:
        raise StorageUnavailable("The completion index is unavailable.") from failures[0]
    return [result for result in results if not isinstance(result, BaseException)]


async def _merged(shards: Sequence[AsyncIterator[Any]]) -> AsyncIterator[Any]:
    """The rows of every shard in one row-key order; each shard's first page is read at once."""
    firsts = await asyncio.gather(*(anext(shard, None) for shard in shards))
    heads = [(row["RowKey"], number, row) for number, row in enumerate(firsts) if row is not None]
    heapq.heapify(heads)
    while heads:
        _, number, row = heapq.heappop(heads)
        yield row
        following = await anext(shards[number], None)
        if following is not None:
            heapq.heappush(heads, (following["RowKey"], number, following))


def _query_for(selection: CompletionFilter, *, order: Order, after: str | None) -> tuple[str, str, dict[str, Any]]:
    """The term whose shards are read, the OData filter and its parameters (`@partition` is each
    shard's); user text only ever appears as a parameter."""
    metadata = sorted(selection.metadata.items())
    scores = sorted(selection.scores.items())
    exact = [(name, condition.eq) for name, condition in scores if condition.eq is not None]
    parameters: dict[str, Any] = {}
    clauses: list[str] = []
    others = metadata[1:]
    if metadata:
        partition = _metadata_partition(*metadata[0])
    elif exact:
        partition = _score_partition(*exact[0])
    elif scores:
        partition = _score_name_partition(scores[0][0])
    elif selection.model is not None:
        partition = _model_partition(selection.model)
    else:
        partition = _ALL_PARTITION
    clauses.append("PartitionKey eq @partition")

    low, high = _row_range(selection, order)
    parameters.update(low=low, high=high)
    clauses += ["RowKey ge @low", "RowKey lt @high"]
    if after is not None:
        parameters["after"] = _row_key(order, ids.captured_at_us(after), after)
        clauses.append("RowKey gt @after")
    for number, (key, value) in enumerate(others):
        parameters[f"v{number}"] = value
        clauses.append(f"{_metadata_column(key)} eq @v{number}")
    for number, (name, condition) in enumerate(scores):
        clauses += _score_clauses(number, name, condition, parameters)
    if selection.model is not None and partition != _model_partition(selection.model):
        parameters["model"] = selection.model
        clauses.append(
            "( deployment eq @model or model eq @model or served_by eq @model )"
        )  # the SDK substitutes space-separated @words
    if selection.kind is not None:  # a kind is an id prefix: a range of the `id` column
        prefix = ids.PREFIXES[selection.kind]
        parameters.update(kind_low=prefix, kind_high=prefix[:-1] + chr(ord(prefix[-1]) + 1))
        clauses.append("id ge @kind_low and id lt @kind_high")
    if selection.owner is not None:
        owner = stable_owner(selection.owner) or ""
        parameters["owner"] = owner
        legacy = legacy_owner(owner)
        if legacy is None:
            clauses.append("owner eq @owner")
        else:  # rows written before stable owner ids hold the key's bare name (read as `key:<name>`)
            parameters["legacy_owner"] = legacy
            clauses.append("( owner eq @owner or owner eq @legacy_owner )")
    return partition, " and ".join(clauses), parameters


def _score_clauses(number: int, name: str, condition: ScoreCondition, parameters: dict[str, Any]) -> list[str]:
    """Server-side tests on the score's column for its kind: a row without that score never passes."""
    clauses = []
    if isinstance(condition.eq, float):
        clauses.append(f"{_score_column(name, condition.eq)} eq {_double_literal(condition.eq)}")
    elif condition.eq is not None:
        parameters[f"s{number}"] = condition.eq
        clauses.append(f"{_score_column(name, condition.eq)} eq @s{number}")
    for operator, bound in condition.bounds():
        clauses.append(f"{_score_column(name, bound)} {operator} {_double_literal(bound)}")
    return clauses


def _double_literal(number: float) -> str:
    """A finite float as an OData double, written out here: the SDK turns a parameter of 1.0 into `true`
    (it tests `value in [True, False]`), and a validated float carries no user text to quote."""
    text = format(Decimal(repr(number)), "f")
    return text if "." in text else text + ".0"


def _row_range(selection: CompletionFilter, order: Order) -> tuple[str, str]:
    """Row-key bounds [low, high) for the created range, in the order's key space."""
    # Both bounds are clamped to the key span: an unclamped bound past it has more digits than a
    # row key and sorts before the keys it should follow (created_after=10**10 selected everything).
    earliest = 0 if selection.created_after is None else min(selection.created_after * _US, _KEY_SPAN)
    latest = _KEY_SPAN if selection.created_before is None else min(selection.created_before * _US, _KEY_SPAN)
    if order == "asc":
        low, high = earliest, latest
    else:
        low, high = _KEY_SPAN - latest, _KEY_SPAN - earliest
    prefix = order[0]
    # A row key is prefix + 16 digits + id, so the bare 16-digit bound sorts before every id at it.
    return _bound_key(prefix, low), _bound_key(prefix, high)


def _bound_key(prefix: str, bound: int) -> str:
    """A bound at the end of the key span sorts after every row key (16 digits cannot hold it)."""
    return f"{prefix}{bound:016d}" if bound < _KEY_SPAN else f"{prefix}~"
