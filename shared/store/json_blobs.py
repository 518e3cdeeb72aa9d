"""JSON records kept as blobs, written only when unchanged since read (ETag) or not yet there.

Evals and fine-tuning jobs keep their records this way: no second store to run, and two deliveries
of one queue message can never both advance the same record.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from azure.core import MatchConditions
from azure.core.exceptions import AzureError, ResourceExistsError, ResourceModifiedError, ResourceNotFoundError
from azure.storage.blob.aio import ContainerClient

from shared.platform.errors import NotFound, StorageUnavailable


class Superseded(Exception):
    """The record changed since it was read, or already exists (another delivery, a cancel, a delete)."""


class RewrittenWhileRead(StorageUnavailable):
    """The blob was replaced between two chunks of one read (each chunk asks for the first one's ETag)."""


class JsonBlobs:
    def __init__(self, *, container: ContainerClient, label: str) -> None:
        self.container = container
        self._unavailable = f"The {label} store is unavailable."

    async def get(self, name: str, *, missing: str) -> tuple[bytes, str]:
        """The blob's bytes and ETag; `NotFound(missing)` when it does not exist."""
        try:
            download = await self.container.download_blob(name)
            return await download.readall(), str(download.properties.etag)
        except ResourceNotFoundError:
            raise NotFound(missing) from None
        except AzureError as exc:
            raise StorageUnavailable(self._unavailable) from exc

    async def open(self, name: str, *, missing: str) -> tuple[int, AsyncIterator[bytes]]:
        """The blob's size, then its bytes in chunks: a reader takes the size from its read budget first."""
        size, chunks, _ = await self.open_versioned(name, missing=missing)
        return size, chunks

    async def open_versioned(self, name: str, *, missing: str) -> tuple[int, AsyncIterator[bytes], str]:
        """`open`, plus the ETag of the version the chunks come from."""
        try:
            download = await self.container.download_blob(name)
        except ResourceNotFoundError:
            raise NotFound(missing) from None
        except AzureError as exc:
            raise StorageUnavailable(self._unavailable) from exc

        async def chunks() -> AsyncIterator[bytes]:
            try:
                async for chunk in download.chunks():
                    yield chunk
            except ResourceModifiedError as exc:
                raise RewrittenWhileRead(self._unavailable) from exc
            except AzureError as exc:
                raise StorageUnavailable(self._unavailable) from exc

        return download.size, chunks(), str(download.properties.etag)

    async def etag(self, name: str, *, missing: str) -> str:
        """The blob's current ETag (one HEAD request)."""
        try:
            properties = await self.container.get_blob_client(name).get_blob_properties()
        except ResourceNotFoundError:
            raise NotFound(missing) from None
        except AzureError as exc:
            raise StorageUnavailable(self._unavailable) from exc
        return str(properties.etag)

    async def put(self, name: str, data: str | bytes, *, create: bool = False, etag: str | None = None) -> str:
        """Write and return the new ETag; `Superseded` when `create` finds it there or `etag` is stale."""
        conditions: dict[str, Any] = {"overwrite": not create}
        if etag is not None:
            conditions.update(etag=etag, match_condition=MatchConditions.IfNotModified)
        try:
            result = await self.container.get_blob_client(name).upload_blob(data, **conditions)
        except (ResourceExistsError, ResourceModifiedError):
            raise Superseded(name) from None
        except AzureError as exc:
            if getattr(exc, "status_code", None) in (409, 412):
                raise Superseded(name) from None
            raise StorageUnavailable(self._unavailable) from exc
        return str(result["etag"])

    async def names(self, prefix: str) -> list[str]:
        """Every blob name under `prefix`, in name order (one listing call per 5,000)."""
        try:
            return [name async for name in self.container.list_blob_names(name_starts_with=prefix)]
        except ResourceNotFoundError:
            return []
        except AzureError as exc:
            raise StorageUnavailable(self._unavailable) from exc

    async def children(self, prefix: str) -> list[str]:
        """The names directly under `prefix` ('a/' for a folder 'a'), in name order."""
        try:
            return [
                item.name[len(prefix) :].rstrip("/")
                async for item in self.container.walk_blobs(name_starts_with=prefix, delimiter="/")
            ]
        except ResourceNotFoundError:
            return []
        except AzureError as exc:
            raise StorageUnavailable(self._unavailable) from exc

    async def delete(self, name: str) -> None:
        """Delete one blob; one already gone counts as deleted."""
        try:
            await self.container.delete_blob(name)
        except ResourceNotFoundError:
            pass
        except AzureError as exc:
            raise StorageUnavailable(self._unavailable) from exc

    async def delete_tree(self, prefix: str) -> None:
        names = await self.names(prefix)
        try:
            for start in range(0, len(names), 256):
                await self.container.delete_blobs(*names[start : start + 256])
        except ResourceNotFoundError:
            pass
        except AzureError as exc:
            raise StorageUnavailable(self._unavailable) from exc
