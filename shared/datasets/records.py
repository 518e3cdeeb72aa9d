"""Dataset job records and files in one blob container: everything of a dataset under `<id>/`.

Listing walks the `<id>/` prefixes, which sort newest first because ids start with inverted time.
Blob listing has no "start after" in every API version (nor in Azurite), so a cursor skips prefix
names up to it: one name-only listing call per 5,000 datasets.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

from azure.core import MatchConditions
from azure.core.exceptions import AzureError, ResourceExistsError, ResourceModifiedError, ResourceNotFoundError
from azure.storage.blob.aio import BlobClient, ContainerClient

from shared.datasets.job import DatasetJob, DatasetStatus, SliceRecord, require_dataset_id
from shared.platform.errors import Conflict, NotFound, StorageUnavailable

JOB_BLOB = "job.json"
WORK_PREFIX = "work/"
READ_RANGE_BYTES = 4 * 1024 * 1024


def _slice_name(job: DatasetJob, number: int) -> str:
    return f"{WORK_PREFIX}g{job.generation}-slice-{number:05d}.json"


class JobSuperseded(Exception):
    """The record changed since it was read (another delivery advanced it) or was deleted."""


class DatasetRecords:
    def __init__(self, *, container: ContainerClient) -> None:
        self.container = container

    def blob(self, job_id: str, name: str) -> BlobClient:
        return self.container.get_blob_client(f"{job_id}/{name}")

    async def create(self, job: DatasetJob) -> str:
        """Write a new record; returns its ETag. A record with this id already existing is a conflict."""
        try:
            result = await self.blob(job.id, JOB_BLOB).upload_blob(job.model_dump_json(), overwrite=False)
        except ResourceExistsError:
            raise Conflict(f"A dataset with id '{job.id}' already exists.", code="dataset_exists") from None
        except AzureError as exc:
            raise StorageUnavailable("The dataset store is unavailable.") from exc
        return str(result["etag"])

    async def read(self, job_id: str, *, include_deleted: bool = False) -> tuple[DatasetJob, str]:
        """The record and its ETag; a deleted job's tombstone only when asked for (the worker)."""
        require_dataset_id(job_id)
        try:
            download = await self.blob(job_id, JOB_BLOB).download_blob()
            raw = await download.readall()
        except ResourceNotFoundError:
            raise NotFound(f"No dataset found with id '{job_id}'.", param="dataset_id") from None
        except AzureError as exc:
            raise StorageUnavailable("The dataset store is unavailable.") from exc
        job = DatasetJob.model_validate_json(raw)
        if job.status is DatasetStatus.DELETED and not include_deleted:
            raise NotFound(f"No dataset found with id '{job_id}'.", param="dataset_id")
        return job, str(download.properties.etag)

    async def save(self, job: DatasetJob, etag: str) -> str:
        """Replace the record only if it is still the version read; returns the new ETag."""
        try:
            result = await self.blob(job.id, JOB_BLOB).upload_blob(
                job.model_dump_json(), overwrite=True, etag=etag, match_condition=MatchConditions.IfNotModified
            )
        except (ResourceModifiedError, ResourceNotFoundError):
            raise JobSuperseded(job.id) from None
        except AzureError as exc:
            if getattr(exc, "status_code", None) == 412:
                raise JobSuperseded(job.id) from None
            raise StorageUnavailable("The dataset store is unavailable.") from exc
        return str(result["etag"])

    async def read_slice(self, job: DatasetJob, number: int) -> tuple[SliceRecord, str | None]:
        """A slice's record and ETag; a fresh record and None when no delivery has started it."""
        try:
            download = await self.blob(job.id, _slice_name(job, number)).download_blob()
            raw = await download.readall()
        except ResourceNotFoundError:
            return SliceRecord(), None
        except AzureError as exc:
            raise StorageUnavailable("The dataset store is unavailable.") from exc
        return SliceRecord.model_validate_json(raw), str(download.properties.etag)

    async def save_slice(self, job: DatasetJob, number: int, record: SliceRecord, etag: str | None) -> str:
        """Write a slice's record only if it is still the version read (or still absent); the new ETag."""
        condition: dict[str, Any] = {"etag": etag, "match_condition": MatchConditions.IfNotModified} if etag else {}
        try:
            result = await self.blob(job.id, _slice_name(job, number)).upload_blob(
                record.model_dump_json(), overwrite=etag is not None, **condition
            )
        except (ResourceModifiedError, ResourceExistsError, ResourceNotFoundError):
            raise JobSuperseded(job.id) from None
        except AzureError as exc:
            if getattr(exc, "status_code", None) == 412:
                raise JobSuperseded(job.id) from None
            raise StorageUnavailable("The dataset store is unavailable.") from exc
        return str(result["etag"])

    async def list(
        self, *, after: str | None, limit: int, owner_scope: str | None = None
    ) -> tuple[list[DatasetJob], bool]:
        """Up to `limit` records visible to `owner_scope`, newest first, after the cursor id; and
        whether more exist.

        Records are read `limit + 1` at a time and others' (or vanished ones) skipped over until the
        page is full, so a scoped caller pages through to its own datasets however many other owners'
        come first: a page is never empty while more of its own exist.
        """
        found: list[DatasetJob] = []
        batch: list[str] = []

        async def read_batch() -> None:
            records = await asyncio.gather(*(self._read_if_present(name) for name in batch))
            found.extend(job for job in records if job is not None and job.visible_to(owner_scope))
            batch.clear()

        try:
            async for prefix in self.container.walk_blobs(delimiter="/"):
                job_id = prefix.name.rstrip("/")
                if after is not None and job_id <= after:
                    continue
                batch.append(job_id)
                if len(batch) > limit - len(found):
                    await read_batch()
                    if len(found) > limit:
                        break
            await read_batch()
        except AzureError as exc:
            raise StorageUnavailable("The dataset store is unavailable.") from exc
        return found[:limit], len(found) > limit

    async def delete(self, job_id: str) -> None:
        """Remove files first and the record last, so an interrupted delete can be repeated.

        An unfinished job's message is still on its way, so its record becomes a tombstone the
        worker honours instead of re-creating the job from the message.
        """
        job, _ = await self.read(job_id)
        try:
            await self.delete_files(job_id)
            if job.finished:
                await self._delete_blob(f"{job_id}/{JOB_BLOB}")
            else:
                tombstone = job.model_copy(update={"status": DatasetStatus.DELETED})
                await self.blob(job_id, JOB_BLOB).upload_blob(tombstone.model_dump_json(), overwrite=True)
        except AzureError as exc:
            raise StorageUnavailable("The dataset store is unavailable.") from exc

    async def delete_files(self, job_id: str, *, under: str = "") -> None:
        """Every blob of the dataset below `<id>/<under>` but its record."""
        names = [name async for name in self.container.list_blob_names(name_starts_with=f"{job_id}/{under}")]
        await asyncio.gather(*(self._delete_blob(name) for name in names if name != f"{job_id}/{JOB_BLOB}"))

    async def delete_other_generations(self, job: DatasetJob) -> None:
        """Every file but the record, the work area and the current generation's (what a rebuild replaced)."""
        current = f"{job.id}/{job.file_path('')}"
        keep = (f"{job.id}/{JOB_BLOB}", f"{job.id}/{WORK_PREFIX}")
        names = [name async for name in self.container.list_blob_names(name_starts_with=f"{job.id}/")]
        doomed = [
            name
            for name in names
            if not name.startswith(keep)
            and not (job.generation > 0 and name.startswith(current))
            and not (job.generation == 0 and "/" not in name.removeprefix(f"{job.id}/"))
        ]
        await asyncio.gather(*(self._delete_blob(name) for name in doomed))

    async def open_file(self, job_id: str, name: str) -> tuple[int, AsyncIterator[bytes]]:
        """A committed file's size and its bytes, read in ranges so memory stays one range whatever the size."""
        job, _ = await self.read(job_id, include_deleted=True)
        blob = self.blob(job_id, job.file_path(name))
        try:
            size = int((await blob.get_blob_properties()).size)
        except ResourceNotFoundError:
            raise NotFound(f"Dataset '{job_id}' has no file '{name}'.", param="name") from None
        except AzureError as exc:
            raise StorageUnavailable("The dataset store is unavailable.") from exc

        async def ranges() -> AsyncIterator[bytes]:
            for offset in range(0, size, READ_RANGE_BYTES):
                try:
                    part = await blob.download_blob(offset=offset, length=min(READ_RANGE_BYTES, size - offset))
                    yield await part.readall()
                except AzureError as exc:
                    raise StorageUnavailable("The dataset store is unavailable.") from exc

        return size, ranges()

    async def _read_if_present(self, job_id: str) -> DatasetJob | None:
        try:
            job, _ = await self.read(job_id)
        except NotFound:
            return None
        return job

    async def _delete_blob(self, name: str) -> None:
        with contextlib.suppress(ResourceNotFoundError):
            await self.container.delete_blob(name)
