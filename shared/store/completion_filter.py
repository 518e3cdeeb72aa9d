"""The selection language shared by the list API, dataset jobs and purges."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from shared.platform.access import OwnerId, same_owner
from shared.platform.request_body import Metadata
from shared.store.ids import Kind
from shared.store.scores import ScoreConditions, ScoreValue

Order = Literal["asc", "desc"]


class CompletionFilter(BaseModel):
    """Stored completions matching every given condition."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    metadata: Metadata = Field(default_factory=dict)
    """Every pair must match exactly."""
    scores: ScoreConditions = Field(default_factory=dict)
    """Every named score must exist and pass its condition: `{"helpful": true, "quality": {"gte": 4}}`."""
    model: str | None = Field(None, min_length=1)
    """Matches the deployment name the caller used (an alias, too), the deployment that served it, or the model
    the upstream reported."""
    kind: Kind | None = None
    """`chat.completion` or `response` only (None: both)."""
    created_after: int | None = Field(None, ge=0)
    """Unix seconds, inclusive: `created >= created_after`."""
    created_before: int | None = Field(None, ge=0)
    """Unix seconds, exclusive: `created < created_before`."""
    owner: OwnerId = None
    """Set by the service (owner scoping), never by callers: a stable owner id."""

    @model_validator(mode="after")
    def _range_is_ordered(self) -> CompletionFilter:
        if (
            self.created_after is not None
            and self.created_before is not None
            and self.created_after >= self.created_before
        ):
            raise ValueError("created_after must be earlier than created_before")
        return self

    def is_empty(self) -> bool:
        return not (
            self.metadata
            or self.scores
            or self.model
            or self.created_after is not None
            or self.created_before is not None
        )

    def matches(
        self,
        *,
        created: int,
        deployment: str,
        model: str,
        metadata: dict[str, str],
        owner: str | None,
        served_by: str | None = None,
        scores: dict[str, ScoreValue] | None = None,
        kind: Kind = "chat.completion",
    ) -> bool:
        """The authoritative check, applied to the stored document itself."""
        return (
            all(metadata.get(key) == value for key, value in self.metadata.items())
            and all(condition.accepts((scores or {}).get(name)) for name, condition in self.scores.items())
            and (self.model is None or self.model in (deployment, model, served_by))
            and (self.kind is None or kind == self.kind)
            and (self.created_after is None or created >= self.created_after)
            and (self.created_before is None or created < self.created_before)
            and (self.owner is None or same_owner(owner, self.owner))
        )
