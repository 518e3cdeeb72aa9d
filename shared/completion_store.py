"""Stored completions: one blob document each, kept consistent with the completion index.

Lists re-check each page against the documents themselves, so an index row whose document is
missing or different (a crash between the two writes) is never served. That is what lets a store
write its document and its index rows concurrently, and a delete remove rows before the document.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable

from azure.core import MatchConditions
from azure.core.exceptions import AzureError, ResourceModifiedError, ResourceNotFoundError
from azure.storage.blob.aio import ContainerClient
from pydantic import BaseModel

from shared import ids
from shared.completion_filter import CompletionFilter, Order
from shared.completion_index import CompletionIndex, IndexEntry
from shared.errors import Conflict, NotFound, StorageUnavailable
from shared.stored_completion import StoredCompletion
from shared.telemetry import COMPLETION_ID, span
from shared.usage import UsageCounter


class CompletionPage(BaseModel):
    """One page of a list, in the order asked for."""

    data: list[StoredCompletion]
    has_more: bool


class CompletionStore:
    """Create, read, update, delete and list stored completions."""

    def __init__(
        self, *, container: ContainerClient, index: CompletionIndex, usage: UsageCounter | None = None
    ) -> None:
        self._container = container
        self.index = index
        self._usage = usage

    async def put(self, completion: StoredCompletion) -> int:
        """Store (or overwrite, for a retried call) a completion; returns the document's size in bytes.

        Document and index rows are written concurrently: a list never serves a row whose document
        is missing (it re-checks documents), so the order of the two writes does not matter, and
        the caller waits for the slower write instead of both.
        """
        with span("completion_store.put", {COMPLETION_ID: completion.id}) as current:
            document = _encode(completion)
            current.set_attribute("distillery.document_bytes", len(document))
            return await self._put(completion, document)

    async def _put(self, completion: StoredCompletion, document: bytes) -> int:
        upload = self._upload(completion.id, document)
        indexing = self._counted(self.index.add(_entry(completion, len(document))), len(document), 1)
        results = await asyncio.gather(upload, indexing, return_exceptions=True)
        failures = [result for result in results if isinstance(result, BaseException)]
        if failures:
            await asyncio.gather(
                self.index.remove(_entry(completion, 0)), self._forget_document(completion.id), return_exceptions=True
            )
            if self._usage is not None:
                await self._usage.add(-len(document), -1)
            raise failures[0]
        return len(document)

    async def _upload(self, completion_id: str, document: bytes) -> None:
        try:
            await self._container.upload_blob(_blob_name(completion_id), document, overwrite=True)
        except AzureError as exc:
            raise StorageUnavailable("The completion store is unavailable.") from exc

    async def get(self, completion_id: str, *, owner: str | None = None) -> StoredCompletion:
        completion, _ = await self._read(ids.require_completion_id(completion_id), owner=owner)
        return completion

    async def exists(self, completion_id: str) -> bool:
        try:
            return await self._container.get_blob_client(_blob_name(completion_id)).exists()
        except AzureError as exc:
            raise StorageUnavailable("The completion store is unavailable.") from exc

    async def update_metadata(
        self, completion_id: str, metadata: dict[str, str], *, owner: str | None = None
    ) -> StoredCompletion:
        """Replace a completion's metadata; the document's ETag guards against a concurrent writer."""
        completion, etag = await self._read(ids.require_completion_id(completion_id), owner=owner)
        updated = completion.model_copy(update={"metadata": dict(metadata)})
        document = _encode(updated)
        try:
            await self._container.upload_blob(
                _blob_name(completion_id),
                document,
                overwrite=True,
                etag=etag,
                match_condition=MatchConditions.IfNotModified,
            )
        except ResourceModifiedError:
            raise Conflict("The chat completion was changed by another request; retry the update.") from None
        except AzureError as exc:
            raise StorageUnavailable("The completion store is unavailable.") from exc
        await self._counted(
            self.index.replace(_entry(completion, 0), _entry(updated, len(document))),
            len(document) - len(_encode(completion)),
            0,
        )
        return updated

    async def delete(self, completion_id: str, *, owner: str | None = None) -> None:
        completion, _ = await self._read(ids.require_completion_id(completion_id), owner=owner)
        await self.index.forget(completion_id)
        await self._counted(self.index.remove(_entry(completion, 0)), -len(_encode(completion)), -1)
        await self._forget_document(completion_id)

    async def matches(self, completion_id: str, selection: CompletionFilter) -> bool:
        """Whether the stored document itself (not its index row, which can be stale) is in the selection."""
        completion = await self._read_if_present(completion_id)
        return completion is not None and selection.matches(
            created=completion.created,
            deployment=completion.deployment,
            model=completion.model,
            metadata=completion.metadata,
            owner=completion.owner,
        )

    async def list(
        self, selection: CompletionFilter, *, order: Order = "asc", after: str | None = None, limit: int = 20
    ) -> CompletionPage:
        """A page is never empty while more exist: pages whose documents are all gone are skipped over."""
        while True:
            entries, has_more = await self.index.page(selection, order=order, after=after, limit=limit)
            loaded = await asyncio.gather(*(self._read_if_present(entry.id) for entry in entries))
            data = [
                completion
                for completion in loaded
                if completion is not None
                and selection.matches(
                    created=completion.created,
                    deployment=completion.deployment,
                    model=completion.model,
                    metadata=completion.metadata,
                    owner=completion.owner,
                )
            ]
            if data or not has_more:
                return CompletionPage(data=data, has_more=has_more)
            after = entries[-1].id

    async def _counted(self, index_write: Awaitable[None], bytes_delta: int, count_delta: int) -> None:
        """Run an index write with the usage counter update beside it, so counting adds no latency of its own."""
        if self._usage is None:
            await index_write
            return
        written, _ = await asyncio.gather(
            index_write, self._usage.add(bytes_delta, count_delta), return_exceptions=True
        )
        if isinstance(written, BaseException):
            raise written

    async def _read(self, completion_id: str, *, owner: str | None) -> tuple[StoredCompletion, str]:
        try:
            download = await self._container.download_blob(_blob_name(completion_id))
            raw = await download.readall()
        except ResourceNotFoundError:
            raise _not_found(completion_id) from None
        except AzureError as exc:
            raise StorageUnavailable("The completion store is unavailable.") from exc
        completion = StoredCompletion.model_validate_json(raw)
        if owner is not None and completion.owner != owner:
            raise _not_found(completion_id)
        return completion, download.properties.etag

    async def _read_if_present(self, completion_id: str) -> StoredCompletion | None:
        try:
            completion, _ = await self._read(completion_id, owner=None)
        except NotFound:
            return None
        return completion

    async def _forget_document(self, completion_id: str) -> None:
        try:
            await self._container.delete_blob(_blob_name(completion_id), delete_snapshots="include")
        except ResourceNotFoundError:
            pass
        except AzureError as exc:
            raise StorageUnavailable("The completion store is unavailable.") from exc


def _blob_name(completion_id: str) -> str:
    return f"{completion_id}.json"


def _encode(completion: StoredCompletion) -> bytes:
    return completion.model_dump_json().encode()


def _entry(completion: StoredCompletion, size_bytes: int) -> IndexEntry:
    return IndexEntry(
        id=completion.id,
        deployment=completion.deployment,
        model=completion.model,
        metadata=completion.metadata,
        owner=completion.owner,
        size_bytes=size_bytes,
    )


def _not_found(completion_id: str) -> NotFound:
    return NotFound(f"No chat completion found with id '{completion_id}'.", param="completion_id")
