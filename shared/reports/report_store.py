"""Reports and purge records as JSON blobs in the reports container, readable without the app."""

from __future__ import annotations

from typing import TypeVar

from azure.core.exceptions import AzureError, ResourceNotFoundError
from azure.storage.blob import ContentSettings
from azure.storage.blob.aio import ContainerClient
from pydantic import BaseModel

from shared.platform.errors import StorageUnavailable

Model = TypeVar("Model", bound=BaseModel)

_JSON = ContentSettings(content_type="application/json")


class ReportStore:
    """Writes and reads one pydantic model per blob name."""

    def __init__(self, *, container: ContainerClient) -> None:
        self.container = container

    async def save(self, name: str, report: BaseModel) -> None:
        try:
            await self.container.upload_blob(
                name, report.model_dump_json(indent=2).encode(), overwrite=True, content_settings=_JSON
            )
        except AzureError as exc:
            raise StorageUnavailable(f"Could not write '{name}' to the reports container.") from exc

    async def load(self, name: str, model: type[Model]) -> Model | None:
        """The stored report, or None when there is none yet."""
        try:
            download = await self.container.download_blob(name)
            return model.model_validate_json(await download.readall())
        except ResourceNotFoundError:
            return None
        except AzureError as exc:
            raise StorageUnavailable(f"Could not read '{name}' from the reports container.") from exc
