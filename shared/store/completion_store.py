"""Stored completions: one blob document each, kept consistent with the completion index.

A capture writes its document only (`capture`): the index rows are derived from the documents
afterwards, by the completion indexer fed with blob-created events (see `completion_indexer`).
Lists re-check each page against the documents themselves, so an index row whose document is
missing or different (a crash between two writes) is never served. That is what lets a store
write its document and its index rows concurrently, and a delete remove rows before the document.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections import defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import datetime

from azure.core import MatchConditions
from azure.core.exceptions import AzureError, ResourceModifiedError, ResourceNotFoundError
from azure.storage.blob.aio import ContainerClient
from pydantic import BaseModel

from shared.platform.access import same_owner
from shared.platform.errors import Conflict, DocumentTooLarge, InvalidRequest, NotFound, StorageUnavailable
from shared.platform.telemetry import COMPLETION_ID, span
from shared.store import ids
from shared.store.completion_filter import CompletionFilter, Order
from shared.store.completion_index import CompletionIndex, IndexEntry
from shared.store.read_budget import ByteBudget
from shared.store.scores import MAX_SCORES_PER_COMPLETION, Score
from shared.store.stored_completion import StoredCompletion
from shared.store.usage import UsageCounter

DEFAULT_MAX_DOCUMENT_BYTES = 6 * 1024 * 1024
DEFAULT_READ_BUDGET_BYTES = 16 * 1024 * 1024
_PREFIX_DROP = 7
"""Hex digits of capture time a listing prefix leaves out: one prefix spans 16**7 µs (268 s)."""
_INDEX_METADATA = "distillery_index"
"""Blob metadata carrying a document's index entry, written in the document's own PUT, so the
indexer reads a batch's entries from one listing instead of one GET per document."""
_INDEX_METADATA_LIMIT = 7 * 1024
"""Longest entry kept in metadata (a blob's metadata holds 8 KiB); a longer one is read from the document."""
_BUCKET_DROP = 4
"""Hex digits of capture time an indexer's listing leaves out: one listing spans 16**4 µs (65 ms)."""
_LIST_AT_LEAST = 4
"""Fewer wanted documents than this in one bucket are read one by one (a sweep's scattered ids)."""
_READS_IN_FLIGHT = 32


class CompletionPage(BaseModel):
    """One page of a list, in the order asked for."""

    data: list[StoredCompletion]
    has_more: bool


class CompletionStore:
    """Create, read, update, delete and list stored completions."""

    def __init__(
        self,
        *,
        container: ContainerClient,
        index: CompletionIndex,
        usage: UsageCounter | None = None,
        max_document_bytes: int = DEFAULT_MAX_DOCUMENT_BYTES,
        budget: ByteBudget | None = None,
    ) -> None:
        self._container = container
        self.index = index
        self._usage = usage
        self.max_document_bytes = max_document_bytes
        self.budget = budget or ByteBudget(DEFAULT_READ_BUDGET_BYTES)
        """Bytes of documents read at once, shared by every reader of this store in the worker."""
        self.redact: Callable[[StoredCompletion], Awaitable[StoredCompletion]] | None = None
        """What a captured completion becomes before it is written (REDACTION, `shared/redaction`); it raises
        `RedactionUnavailable` when it cannot tell, and then nothing is written."""
        self.redact_metadata: Callable[[dict[str, str]], Awaitable[dict[str, str]]] | None = None
        """What metadata set after capture becomes before it is written (`REDACTION_METADATA`)."""
        self.on_captured: Callable[[str], None] | None = None
        """Called with the id after each captured document is written: the local host's stand-in for
        Event Grid's blob-created event (in Azure, Event Grid itself sends it and this stays None)."""

    async def capture(self, completion: StoredCompletion) -> int:
        """Keep a just-captured completion with one durable write, its document; returns its size.

        Its index rows (and usage counters) follow asynchronously from the blob-created event, so
        `get` works at once and lists show it within seconds. Every capture passes `redact` first.
        """
        if self.redact is not None:
            completion = await self.redact(completion)
        with span("completion_store.put", {COMPLETION_ID: completion.id}) as current:
            document = self._sized(completion)
            current.set_attribute("distillery.document_bytes", len(document))
            await self._upload(completion, document)
        if self.on_captured is not None:
            self.on_captured(completion.id)
        return len(document)

    async def put(self, completion: StoredCompletion, *, redact: bool = False) -> int:
        """Store (or overwrite) a completion with its index rows at once (imports, tools); returns its size.

        Document and index rows are written concurrently: a list never serves a row whose document
        is missing (it re-checks documents), so the order of the two writes does not matter, and
        the caller waits for the slower write instead of both. `redact`: a completion the service
        made itself (a relabel's answer) passes `redact` first, as a capture does.
        """
        if redact and self.redact is not None:
            completion = await self.redact(completion)
        with span("completion_store.put", {COMPLETION_ID: completion.id}) as current:
            document = self._sized(completion)
            current.set_attribute("distillery.document_bytes", len(document))
            return await self._put(completion, document)

    async def _put(self, completion: StoredCompletion, document: bytes) -> int:
        upload = self._upload(completion, document)
        indexing = self._counted(
            self.index.add(_entry(completion, len(document))), len(document), 1, owner=completion.owner
        )
        results = await asyncio.gather(upload, indexing, return_exceptions=True)
        failures = [result for result in results if isinstance(result, BaseException)]
        if failures:
            await asyncio.gather(
                self.index.remove(_entry(completion, 0)), self._forget_document(completion.id), return_exceptions=True
            )
            if self._usage is not None:
                await self._usage.add(-len(document), -1, owner=completion.owner)
            raise failures[0]
        return len(document)

    async def _upload(self, completion: StoredCompletion, document: bytes) -> None:
        try:
            await self._container.upload_blob(
                _blob_name(completion.id), document, overwrite=True, metadata=_index_metadata(completion, document)
            )
        except AzureError as exc:
            raise StorageUnavailable("The completion store is unavailable.") from exc

    async def get(self, completion_id: str, *, owner: str | None = None) -> StoredCompletion:
        completion, _ = await self._read(ids.require_completion_id(completion_id), owner=owner)
        return completion

    async def indexable(self, completion_id: str) -> IndexEntry | None:
        """The index entry a document calls for (None when it is gone), its size as stored."""
        try:
            completion, _, size = await self._read_sized(completion_id, owner=None)
        except NotFound:
            return None
        return _entry(completion, size)

    async def indexables(self, completion_ids: list[str]) -> list[IndexEntry]:
        """The index entries of these documents, leaving out those gone.

        Where several share a 65 ms bucket of capture time (an event batch), one listing with
        metadata gives their entries; the rest, and documents written without the entry in their
        metadata (older ones, or an entry too long for it), are read one by one.
        """
        by_bucket: dict[str, list[str]] = defaultdict(list)
        for completion_id in completion_ids:
            by_bucket[_listing_bucket(completion_id)].append(completion_id)
        gate = asyncio.Semaphore(_READS_IN_FLIGHT)
        found: list[IndexEntry] = []
        unread: list[str] = []

        async def list_bucket(prefix: str, members: list[str]) -> None:
            wanted = set(members)
            async with gate:
                try:
                    async for blob in self._container.list_blobs(name_starts_with=prefix, include=["metadata"]):
                        completion_id = str(blob.name).removesuffix(".json")
                        if completion_id in wanted:
                            entry = _listed_entry(completion_id, blob.metadata)
                            if entry is None:
                                unread.append(completion_id)
                            else:
                                found.append(entry)
                except AzureError as exc:
                    raise StorageUnavailable("The completion store is unavailable.") from exc

        async def read(completion_id: str) -> None:
            async with gate:
                entry = await self.indexable(completion_id)
            if entry is not None:
                found.append(entry)

        listed = {prefix: members for prefix, members in by_bucket.items() if len(members) >= _LIST_AT_LEAST}
        unread += [
            completion_id for prefix, members in by_bucket.items() if prefix not in listed for completion_id in members
        ]
        await asyncio.gather(*(list_bucket(prefix, members) for prefix, members in listed.items()))
        await asyncio.gather(*map(read, unread))
        return sorted(found, key=lambda entry: entry.id)

    async def captured_between(self, start_us: int, end_us: int) -> AsyncIterator[str]:
        """Ids of documents captured in [start_us, end_us), in id order, from the blob listing alone.

        Ids begin with their capture time in hex, so each listing is one name prefix per 2**28 µs
        (about 4.5 minutes) of the range: no document outside it is listed.
        """
        bucket = 16**_PREFIX_DROP
        for first, kind in (
            (first, kind) for first in range(start_us // bucket, (end_us - 1) // bucket + 1) for kind in ids.PREFIXES
        ):
            prefix = f"{ids.PREFIXES[kind]}{first:0{ids.TIME_DIGITS - _PREFIX_DROP}x}"
            try:
                async for name in self._container.list_blob_names(name_starts_with=prefix):
                    completion_id = str(name).removesuffix(".json")
                    if ids.is_completion_id(completion_id) and start_us <= ids.captured_at_us(completion_id) < end_us:
                        yield completion_id
            except ResourceNotFoundError:
                return
            except AzureError as exc:
                raise StorageUnavailable("The completion store is unavailable.") from exc

    async def exists(self, completion_id: str) -> bool:
        try:
            return await self._container.get_blob_client(_blob_name(completion_id)).exists()
        except AzureError as exc:
            raise StorageUnavailable("The completion store is unavailable.") from exc

    async def update_metadata(
        self, completion_id: str, metadata: dict[str, str], *, owner: str | None = None
    ) -> StoredCompletion:
        """Replace a completion's metadata; the document's ETag guards against a concurrent writer.

        When the index cannot follow, the document is put back (if still ours) and the old rows
        restored, so a failed update leaves no row disagreeing with its document.
        """
        metadata = await self.metadata_as_kept(metadata)
        return await self._change(
            completion_id, lambda completion: completion.model_copy(update={"metadata": dict(metadata)}), owner=owner
        )

    async def metadata_as_kept(self, metadata: dict[str, str]) -> dict[str, str]:
        """Metadata set after capture as it may be written (redacted under `REDACTION_METADATA`)."""
        return metadata if self.redact_metadata is None else await self.redact_metadata(metadata)

    async def add_scores(
        self, completion_id: str, scores: list[Score], *, owner: str | None = None
    ) -> StoredCompletion:
        """Keep scores in one document write, each replacing the completion's score of the same name."""

        def scored(completion: StoredCompletion) -> StoredCompletion:
            names = {score.name for score in scores}
            latest = list({score.name: score for score in scores}.values())
            kept = [existing for existing in completion.scores if existing.name not in names]
            if len(kept) + len(latest) > MAX_SCORES_PER_COMPLETION:
                raise InvalidRequest(
                    f"A chat completion holds at most {MAX_SCORES_PER_COMPLETION} scores; delete one first.",
                    param="name",
                    code="too_many_scores",
                )
            return completion.model_copy(update={"scores": [*kept, *latest]})

        return await self._change(completion_id, scored, owner=owner)

    async def remove_score(self, completion_id: str, name: str, *, owner: str | None = None) -> StoredCompletion:
        """Drop the completion's score of this name; a 404 when it has none."""

        def unscored(completion: StoredCompletion) -> StoredCompletion:
            kept = [existing for existing in completion.scores if existing.name != name]
            if len(kept) == len(completion.scores):
                raise NotFound(f"The chat completion '{completion_id}' has no score named '{name}'.", param="name")
            return completion.model_copy(update={"scores": kept})

        return await self._change(completion_id, unscored, owner=owner)

    async def _change(
        self,
        completion_id: str,
        change: Callable[[StoredCompletion], StoredCompletion],
        *,
        owner: str | None,
    ) -> StoredCompletion:
        updated = await self.revise(completion_id, change, owner=owner)
        assert updated is not None  # this change always answers a document
        return updated

    async def revise(
        self,
        completion_id: str,
        change: Callable[[StoredCompletion], StoredCompletion | None],
        *,
        owner: str | None = None,
    ) -> StoredCompletion | None:
        """Rewrite a document and move its index rows to match (metadata and scores are both indexed).

        `change` answers None for "already as wanted": nothing is written and None is returned, so
        a bulk action run twice writes once. A concurrent writer answers `Conflict` (call again).
        """
        completion, etag = await self._read(ids.require_completion_id(completion_id), owner=owner)
        updated = change(completion)
        if updated is None:
            return None
        document = self._sized(updated)
        try:
            written = await self._container.get_blob_client(_blob_name(completion_id)).upload_blob(
                document,
                overwrite=True,
                metadata=_index_metadata(updated, document),
                etag=etag,
                match_condition=MatchConditions.IfNotModified,
            )
        except ResourceModifiedError:
            raise Conflict("The chat completion was changed by another request; retry.") from None
        except AzureError as exc:
            raise StorageUnavailable("The completion store is unavailable.") from exc
        try:
            await self._counted(
                self.index.replace(_entry(completion, 0), _entry(updated, len(document))),
                len(document) - len(_encode(completion)),
                0,
                owner=completion.owner,
            )
        except StorageUnavailable:
            await self._undo_update(completion, updated, etag=str(written["etag"]))
            raise
        return updated

    async def _undo_update(self, old: StoredCompletion, new: StoredCompletion, *, etag: str) -> None:
        """Best effort: the old document back unless another writer changed it since, then the old rows."""
        with contextlib.suppress(AzureError):
            document = _encode(old)
            await self._container.upload_blob(
                _blob_name(old.id),
                document,
                overwrite=True,
                metadata=_index_metadata(old, document),
                etag=etag,
                match_condition=MatchConditions.IfNotModified,
            )
            with contextlib.suppress(StorageUnavailable):
                await self.index.replace(_entry(new, 0), _entry(old, len(_encode(old))))

    async def delete(self, completion_id: str, *, owner: str | None = None) -> bool:
        """Delete a completion: its index rows first, then its document. True when a document was removed.

        The usage counters only lose what the indexer added: a completion deleted before its index
        rows were written was never counted.

        A document already gone (a crash, an old lifecycle rule) still has its index rows removed, found
        from the index entry itself, so metadata and owner never outlive the document.
        """
        completion, entry = await asyncio.gather(
            self._read_if_present(ids.require_completion_id(completion_id)), self.index.lookup(completion_id)
        )
        if completion is None:
            if entry is None or (owner is not None and not same_owner(entry.owner, owner)):
                raise _not_found(completion_id)
            await self.index.forget(completion_id)
            await self.index.remove(entry)
            return False
        if owner is not None and not same_owner(completion.owner, owner):
            raise _not_found(completion_id)
        await self.index.forget(completion_id)
        if entry is None:  # never indexed (its event is still on the way): never counted either
            await self.index.remove(_entry(completion, 0))
        else:
            await self._counted(self.index.remove(_entry(completion, 0)), -entry.size_bytes, -1, owner=completion.owner)
        await self._forget_document(completion_id)
        return True

    async def confirm(self, row: IndexEntry, selection: CompletionFilter) -> StoredCompletion | None:
        """The completion a walk's index row names, if its document (never the row alone) is in the selection.

        Rows the document no longer backs (a failed metadata update, a document already gone) are
        removed on sight, so no stale row is ever trusted and none outlives its document.
        """
        completion = await self._read_if_present(row.id)
        if completion is None:
            entry = await self.index.lookup(row.id)
            await self.index.remove_stale(row, None)
            if entry is not None:
                await self.index.forget(row.id)
                await self.index.remove(entry)
            return None
        await self.index.remove_stale(row, _entry(completion, 0))
        return completion if in_selection(completion, selection) else None

    async def orphans(self, *, older_than: datetime) -> AsyncIterator[str]:
        """Ids of documents with no index row, last written before `older_than` (a delete that died
        between its two steps leaves one). Both listings are in id order, so they are merged as they
        stream: no look-up per document, and memory stays one page of each."""
        for kind, prefix in ids.PREFIXES.items():  # each kind's ids sort in capture order, as its index walk does
            async for completion_id in self._orphans_of(kind, prefix, older_than):
                yield completion_id

    async def _orphans_of(self, kind: ids.Kind, prefix: str, older_than: datetime) -> AsyncIterator[str]:
        indexed = aiter(self.index.walk(CompletionFilter(kind=kind), page_size=1000))
        current: IndexEntry | None = None
        started = False
        try:
            async for blob in self._container.list_blobs(name_starts_with=prefix):
                completion_id = str(blob.name).removesuffix(".json")
                if not ids.is_completion_id(completion_id):
                    continue
                if not started:  # no index read at all for an empty or missing container
                    current, started = await anext(indexed, None), True
                while current is not None and current.id < completion_id:
                    current = await anext(indexed, None)
                if (current is None or current.id != completion_id) and blob.last_modified < older_than:
                    yield completion_id
        except ResourceNotFoundError:
            return
        except AzureError as exc:
            raise StorageUnavailable("The completion store is unavailable.") from exc

    async def read_orphan(self, completion_id: str) -> StoredCompletion | None:
        """An orphan's document, unless it has an index row by now (a store that was still writing)."""
        if await self.index.lookup(completion_id) is not None:
            return None
        return await self._read_if_present(completion_id)

    async def list(
        self, selection: CompletionFilter, *, order: Order = "asc", after: str | None = None, limit: int = 20
    ) -> CompletionPage:
        """A page is never empty while more exist: pages whose documents are all gone are skipped over.

        A page also ends early (with `has_more`) once its documents' sizes fill the read budget, so
        a page of 100 large documents never sits in memory at once; its bytes are held from the
        budget, as one reservation, while it is read.
        """
        while True:
            entries, has_more = await self.index.page(selection, order=order, after=after, limit=limit)
            kept = _within(entries, self.budget.capacity)
            has_more = has_more or len(kept) < len(entries)
            entries = kept
            async with self.budget.hold(sum(entry.size_bytes for entry in entries)):
                loaded = await asyncio.gather(
                    *(self._read_if_present(entry.id, reserved=entry.size_bytes) for entry in entries)
                )
            data = [
                completion for completion in loaded if completion is not None and in_selection(completion, selection)
            ]
            if data or not has_more:
                return CompletionPage(data=data, has_more=has_more)
            after = entries[-1].id

    async def _counted(
        self, index_write: Awaitable[None], bytes_delta: int, count_delta: int, *, owner: str | None
    ) -> None:
        """Run an index write with the usage counter update beside it, so counting adds no latency of its own."""
        if self._usage is None:
            await index_write
            return
        written, _ = await asyncio.gather(
            index_write, self._usage.add(bytes_delta, count_delta, owner=owner), return_exceptions=True
        )
        if isinstance(written, BaseException):
            raise written

    async def read_reserved(self, completion_id: str, *, reserved: int) -> StoredCompletion | None:
        """A document whose (index) size the caller already holds from `budget`; None when it is gone."""
        return await self._read_if_present(completion_id, reserved=reserved)

    async def _read(
        self, completion_id: str, *, owner: str | None, reserved: int | None = None
    ) -> tuple[StoredCompletion, str]:
        completion, etag, _ = await self._read_sized(completion_id, owner=owner, reserved=reserved)
        return completion, etag

    async def _read_sized(
        self, completion_id: str, *, owner: str | None, reserved: int | None = None
    ) -> tuple[StoredCompletion, str, int]:
        """Read and parse a document, its bytes held from the budget while it is parsed.

        The first response (at most the client's `max_single_get_size`) tells the size; the rest is
        only downloaded once the budget has room. A caller that `reserved` the size it expected
        already holds it: only what the document has beyond that is added, without waiting (a
        reader holding part of the budget must not wait for more).
        """
        try:
            download = await self._container.download_blob(_blob_name(completion_id))
        except ResourceNotFoundError:
            raise _not_found(completion_id) from None
        except AzureError as exc:
            raise StorageUnavailable("The completion store is unavailable.") from exc
        extra = download.size - (reserved or 0)
        held = 0
        if extra > 0:
            held = self.budget.force(extra) if reserved is not None else await self.budget.acquire(extra)
        try:
            try:
                raw = await download.readall()
            except AzureError as exc:
                raise StorageUnavailable("The completion store is unavailable.") from exc
            completion = StoredCompletion.model_validate_json(raw)
        finally:
            self.budget.release(held)
        if owner is not None and not same_owner(completion.owner, owner):
            raise _not_found(completion_id)
        return completion, download.properties.etag, download.size

    async def _read_if_present(self, completion_id: str, *, reserved: int | None = None) -> StoredCompletion | None:
        try:
            completion, _ = await self._read(completion_id, owner=None, reserved=reserved)
        except NotFound:
            return None
        return completion

    def _sized(self, completion: StoredCompletion) -> bytes:
        """The document, refused when it is larger than the store keeps (it would cost ~20x that to read back)."""
        document = _encode(completion)
        if len(document) > self.max_document_bytes:
            raise DocumentTooLarge(
                f"The stored completion would be {len(document)} bytes, more than the "
                f"{self.max_document_bytes} bytes a stored document may hold (MAX_STORED_DOCUMENT_BYTES).",
                param="metadata",
            )
        return document

    async def _forget_document(self, completion_id: str) -> None:
        try:
            await self._container.delete_blob(_blob_name(completion_id), delete_snapshots="include")
        except ResourceNotFoundError:
            pass
        except AzureError as exc:
            raise StorageUnavailable("The completion store is unavailable.") from exc


def in_selection(completion: StoredCompletion, selection: CompletionFilter) -> bool:
    """The authoritative check: the selection applied to the document itself, never to an index row."""
    return selection.matches(
        created=completion.created,
        deployment=completion.deployment,
        served_by=completion.served_by,
        model=completion.model,
        metadata=completion.metadata,
        owner=completion.owner,
        scores=completion.score_values(),
        kind=completion.kind,
    )


def _within(entries: list[IndexEntry], budget_bytes: int) -> list[IndexEntry]:
    """The longest prefix whose sizes fit in the budget (never less than one entry)."""
    total = 0
    for position, entry in enumerate(entries):
        total += entry.size_bytes
        if total > budget_bytes and position > 0:
            return entries[:position]
    return entries


def _index_metadata(completion: StoredCompletion, document: bytes) -> dict[str, str]:
    """The document's index entry as blob metadata (ASCII JSON), or none when it is too long for it."""
    entry = json.dumps(_entry(completion, len(document)).model_dump(mode="json", exclude={"id"}), separators=(",", ":"))
    return {_INDEX_METADATA: entry} if len(entry) <= _INDEX_METADATA_LIMIT else {}


def _listing_bucket(completion_id: str) -> str:
    """The name prefix of the documents captured in the same 65 ms as this one (same kind)."""
    return ids.PREFIXES[ids.kind_of(completion_id)] + ids.digits(completion_id)[: ids.TIME_DIGITS - _BUCKET_DROP]


def _listed_entry(completion_id: str, metadata: dict[str, str] | None) -> IndexEntry | None:
    """The index entry a listing's metadata carries, or None when the document must be read for it."""
    value = (metadata or {}).get(_INDEX_METADATA)
    if value is None:
        return None
    try:
        return IndexEntry.model_validate({**json.loads(value), "id": completion_id})
    except (ValueError, TypeError):
        return None


def _blob_name(completion_id: str) -> str:
    return f"{completion_id}.json"


def _encode(completion: StoredCompletion) -> bytes:
    return completion.model_dump_json().encode()


def _entry(completion: StoredCompletion, size_bytes: int) -> IndexEntry:
    usage = completion.response.get("usage")
    usage = usage if isinstance(usage, dict) else {}
    details = usage.get("prompt_tokens_details")
    return IndexEntry(
        input_tokens=_count(usage.get("prompt_tokens")),
        cached_tokens=_count(details.get("cached_tokens") if isinstance(details, dict) else None),
        output_tokens=_count(usage.get("completion_tokens")),
        id=completion.id,
        deployment=completion.deployment,
        served_by=completion.served_by,
        model=completion.model,
        metadata=completion.metadata,
        scores=completion.score_values(),
        owner=completion.owner,
        size_bytes=size_bytes,
    )


def _count(value: object) -> int:
    """A token count from the upstream's `usage`, 0 when it is missing or not a count."""
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else 0


def _not_found(completion_id: str) -> NotFound:
    noun = "response" if ids.kind_of(completion_id) == "response" else "chat completion"
    return NotFound(f"No {noun} found with id '{completion_id}'.", param="completion_id")
