"""An alias and what callers send to change it.

An alias is a deployment name callers use (`support-bot`); it sends each request to one of one or two
real deployments by traffic share (teacher 90 / student 10). `fallback` is where a rollback sends all
traffic: the deployment that served alone before the canary began.
"""

from __future__ import annotations

import hashlib
import random
import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from shared.evals.graders import TestingCriterion, check_templates, parse_testing_criteria
from shared.platform.errors import InvalidRequest
from shared.platform.request_body import MetadataKey

ALIAS_NAME = r"^[A-Za-z0-9][A-Za-z0-9._-]{1,63}$"
"""What Azure OpenAI allows in a deployment name, so an alias is a name any caller can already send."""


class _Params(BaseModel):
    model_config = ConfigDict(extra="forbid")


class AliasTarget(_Params):
    deployment: str = Field(pattern=ALIAS_NAME)
    """A real deployment (never another alias: routing takes one hop)."""
    share: int = Field(ge=0, le=100)
    """Percent of the alias's requests this deployment serves."""


class Sticky(_Params):
    """Keep one caller on one deployment: the same `user` (or metadata value) always lands on the same target."""

    by: Literal["user", "metadata"]
    key: MetadataKey | None = None
    """The metadata key whose value picks the target (`by: "metadata"` only)."""

    @model_validator(mode="after")
    def _key_for_metadata(self) -> Sticky:
        if (self.by == "metadata") != (self.key is not None):
            raise ValueError("'key' names the metadata key when by is 'metadata', and only then")
        return self


class Gate(_Params):
    """What a comparison must show before a deployment may take all of the alias's traffic."""

    min_pass_rate: float = Field(0.8, ge=0, le=1)
    """Every criterion's pass rate for the promoted deployment is at least this."""
    max_drop: float = Field(0.05, ge=0, le=1)
    """No criterion's pass rate is more than this below the teacher's."""


class OnlineAlert(_Params):
    """When the online pass rate of a deployment other than the fallback falls under this, roll it back."""

    min_pass_rate: float = Field(ge=0, le=1)
    min_samples: int = Field(20, ge=1, le=100_000)
    """Graded calls (errors aside) the window must hold before the alert may fire."""
    window_hours: int = Field(1, ge=1, le=168)
    """The pass rate is over this many hourly buckets, the current one included."""


class OnlineEval(_Params):
    """Grade a sampled share of the alias's stored calls with these graders, on the job queue."""

    sample_rate: float = Field(ge=0, le=1)
    """Share of the alias's stored calls (`store: true`) graded; 0.1 grades one in ten."""
    testing_criteria: list[dict[str, Any]] = Field(min_length=1)
    """Graders in the Evals shapes; `{{item.*}}` is the call (`input`, `reference`, `metadata`), `{{sample.output_text}}` its answer."""
    alert: OnlineAlert | None = None

    @field_validator("testing_criteria")
    @classmethod
    def _graders(cls, raw: list[dict[str, Any]]) -> list[dict[str, Any]]:
        criteria = parse_testing_criteria(raw)
        check_templates(criteria, item_schema=None, sample_available=True)
        return [criterion.model_dump(mode="json", exclude_none=True) for criterion in criteria]

    def criteria(self) -> list[TestingCriterion]:
        return parse_testing_criteria(self.testing_criteria)


class AliasParams(_Params):
    """The `PUT /api/aliases/{name}` body."""

    targets: list[AliasTarget] = Field(min_length=1, max_length=2)
    sticky: Sticky | None = None
    gate: Gate | None = None
    """Unset keeps the alias's gate (a new alias gets the defaults)."""
    online_eval: OnlineEval | None = None
    """Unset keeps the alias's online evals; `null` turns them off."""
    reason: str | None = Field(None, max_length=512)

    @field_validator("targets")
    @classmethod
    def _shares_make_a_whole(cls, targets: list[AliasTarget]) -> list[AliasTarget]:
        if sum(t.share for t in targets) != 100:
            raise ValueError(f"the shares must sum to 100, not {sum(t.share for t in targets)}")
        if len({t.deployment for t in targets}) != len(targets):
            raise ValueError("the two targets must be different deployments")
        return targets


class Comparison(_Params):
    """A finished comparison: the same eval's run of the teacher and of the deployment being promoted."""

    eval_id: str = Field(min_length=1)
    teacher_run_id: str = Field(min_length=1)
    student_run_id: str = Field(min_length=1)


class PromoteParams(_Params):
    """The `POST /api/aliases/{name}/promote` body."""

    deployment: str | None = Field(None, pattern=ALIAS_NAME)
    """The target that takes all traffic; default the canary (the target that is not the fallback)."""
    comparison: Comparison | None = None
    """Default: the comparison run recorded for the deployment's fine-tuning job (its lineage)."""
    force: bool = False
    """Promote without a passing gate (the change is still recorded, gate result and all)."""
    reason: str | None = Field(None, max_length=512)


class RollbackParams(_Params):
    reason: str | None = Field(None, max_length=512)


class CriterionGate(BaseModel):
    testing_criteria: str
    pass_rate: float | None
    teacher_pass_rate: float | None
    passed: bool


class GateResult(BaseModel):
    passed: bool
    gate: Gate
    comparison: Comparison | None = None
    per_testing_criteria: list[CriterionGate] = Field(default_factory=list)
    reason: str
    """Why it passed or failed, in words."""


class AliasChange(BaseModel):
    """One entry of an alias's history: who changed it, when, to what, and the gate's verdict."""

    action: Literal["set", "promote", "rollback"]
    at: int
    by: str
    targets: list[AliasTarget]
    previous_targets: list[AliasTarget] = Field(default_factory=list)
    forced: bool = False
    automatic: bool = False
    """A rollback the online-eval alert made, not a person."""
    gate_result: GateResult | None = None
    reason: str | None = None


class AliasRecord(BaseModel):
    """`<name>.json` in ALIASES_CONTAINER."""

    name: str
    targets: list[AliasTarget]
    fallback: str
    """Where a rollback sends all traffic."""
    sticky: Sticky | None = None
    gate: Gate = Field(default_factory=Gate)
    online_eval: OnlineEval | None = None
    created_at: int
    updated_at: int
    history: list[AliasChange] = Field(default_factory=list)

    def choose(self, *, user: object, metadata: dict[str, str] | None) -> str:
        """The deployment that serves one request: by share, the same one for the same sticky value."""
        if len(self.targets) == 1:
            return self.targets[0].deployment
        sticky = None
        if self.sticky is not None:
            sticky = user if self.sticky.by == "user" else (metadata or {}).get(self.sticky.key or "")
        if isinstance(sticky, str) and sticky:
            digest = hashlib.sha256(f"{self.name}\0{sticky}".encode()).digest()
            point = int.from_bytes(digest[:8], "big") % 10_000 / 100
        else:
            point = random.random() * 100  # traffic splitting, not security
        for target in self.targets:
            if point < target.share:
                return target.deployment
            point -= target.share
        return self.targets[-1].deployment

    def view(self) -> dict[str, Any]:
        return {"object": "alias", "id": self.name, **self.model_dump(mode="json")}


def require_alias_name(name: str) -> str:
    if not re.fullmatch(ALIAS_NAME, name):
        raise InvalidRequest(
            f"'{name}' is not an alias name: 2-64 letters, digits, '.', '_' and '-', starting with a letter or digit.",
            param="name",
        )
    return name
