"""Files for evals (OpenAI's Files API with `purpose="evals"`): a JSONL file of `{"item": …, "sample"?: …}`
rows, uploaded once and named by a run's `file_id` source, as OpenAI's Evals take them.

    files/<file id>/file.json       the file object (owner, size, name)
    files/<file id>/content.jsonl   the rows, as uploaded (checked line by line on upload)

They live beside the evals (`EVALS_CONTAINER`), so they count toward the storage quota and follow
retention as evals do. Ids sort newest first, as eval ids do.
"""

from __future__ import annotations

import json
import time
from typing import Any, Literal

from azure.storage.blob.aio import ContainerClient
from pydantic import BaseModel

from shared.evals.params import FILE_ID
from shared.evals.records import created_micros, new_id
from shared.platform.access import OwnerId, same_owner
from shared.platform.errors import InvalidRequest, NotFound
from shared.store.json_blobs import JsonBlobs

PURPOSE = "evals"
MAX_ROWS = 10_000
"""Rows one file holds at most: the most items one run grades."""


class EvalFile(BaseModel):
    id: str
    bytes: int
    created_at: int
    filename: str
    rows: int
    owner: OwnerId = None

    def view(self) -> dict[str, Any]:
        return {
            "object": "file",
            "id": self.id,
            "bytes": self.bytes,
            "created_at": self.created_at,
            "filename": self.filename,
            "purpose": PURPOSE,
            "status": "processed",
            "expires_at": None,
            "status_details": None,
        }

    def visible_to(self, owner: str | None) -> bool:
        return owner is None or same_owner(self.owner, owner)


class EvalFiles:
    def __init__(self, *, container: ContainerClient) -> None:
        self._blobs = JsonBlobs(container=container, label="eval file")

    async def create(self, *, filename: str, content: bytes, purpose: str, owner: str | None) -> EvalFile:
        if purpose != PURPOSE:
            raise InvalidRequest(
                f"Files here are for evals: purpose must be '{PURPOSE}', not '{purpose}'. Fine-tuning files come "
                "from datasets (POST /api/datasets/{id}/fine_tuning_jobs).",
                param="purpose",
            )
        rows = check_rows(content, name=filename)
        file_id = new_id("file").replace("file_", "file-", 1)
        record = EvalFile(
            id=file_id, bytes=len(content), created_at=int(time.time()), filename=filename, rows=rows, owner=owner
        )
        await self._blobs.put(f"files/{file_id}/content.jsonl", content, create=True)
        await self._blobs.put(f"files/{file_id}/file.json", record.model_dump_json(), create=True)
        return record

    async def get(self, file_id: str, *, owner: str | None) -> EvalFile:
        missing = NotFound(f"No such file: '{file_id}'.", param="file_id", code="file_not_found")
        if not FILE_ID.fullmatch(file_id):
            raise missing
        try:
            raw, _ = await self._blobs.get(f"files/{file_id}/file.json", missing=missing.message)
        except NotFound:
            raise missing from None
        record = EvalFile.model_validate_json(raw)
        if not record.visible_to(owner):
            raise missing
        return record

    async def content(self, file_id: str, *, owner: str | None) -> bytes:
        await self.get(file_id, owner=owner)
        raw, _ = await self._blobs.get(f"files/{file_id}/content.jsonl", missing=f"No such file: '{file_id}'.")
        return raw

    async def delete(self, file_id: str, *, owner: str | None) -> None:
        await self.get(file_id, owner=owner)
        await self._blobs.delete_tree(f"files/{file_id}/")

    async def sweep(self, *, created_before_us: int) -> int:
        """Retention: delete the files uploaded before the cutoff; the number deleted."""
        old = [
            file_id
            for file_id in await self._blobs.children("files/")
            if FILE_ID.fullmatch(file_id) and created_micros(file_id.replace("-", "_", 1)) < created_before_us
        ]
        for file_id in old:
            await self._blobs.delete_tree(f"files/{file_id}/")
        return len(old)

    async def list(
        self, *, after: str | None, limit: int, order: Literal["asc", "desc"], owner: str | None
    ) -> tuple[list[EvalFile], bool]:
        ids = [name for name in await self._blobs.children("files/") if FILE_ID.fullmatch(name)]  # newest first
        if order == "asc":
            ids.reverse()
        if after is not None:
            ids = ids[ids.index(after) + 1 :] if after in ids else []
        page: list[EvalFile] = []
        for file_id in ids:
            try:
                record = await self.get(file_id, owner=owner)
            except NotFound:
                continue
            if len(page) == limit:
                return page, True
            page.append(record)
        return page, False


def check_rows(content: bytes, *, name: str) -> int:
    """The number of rows; a 400 naming the first line that is not an object with an `item` object."""
    rows = 0
    for number, line in enumerate(content.removeprefix(b"\xef\xbb\xbf").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError:
            row = None
        if not isinstance(row, dict) or not isinstance(row.get("item"), dict):
            raise InvalidRequest(
                f"Line {number} of '{name}' is not a JSON object with an 'item' object.",
                param="file",
                code="invalid_file",
            )
        rows += 1
        if rows > MAX_ROWS:
            raise InvalidRequest(f"'{name}' has more than {MAX_ROWS} rows, the most one run grades.", param="file")
    if rows == 0:
        raise InvalidRequest(f"'{name}' holds no rows.", param="file", code="invalid_file")
    return rows
