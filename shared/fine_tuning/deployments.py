"""Deploy the student: a succeeded job's fine-tuned model becomes an Azure OpenAI deployment.

`POST /api/fine_tuning_jobs/{id}/deployments` creates it through Azure OpenAI's control plane
(`control_plane.py`) with the app's identity, SKU and capacity from the request or the settings
(Developer tier by default: no hosting fee, enough to evaluate the student). The deployment is kept
in the job's record (lineage: dataset -> files -> job -> model -> deployment) and followed to
`Succeeded` or `Failed` on request and by the fine-tuning timer; deleting it deletes it on Azure.

An OpenAI-compatible upstream or the offline model has no control plane: the caller deploys the
model there and registers the deployment's name by hand (`"existing": true`).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Sequence

from pydantic import BaseModel, ConfigDict, Field, model_validator

from shared.fine_tuning.comparison import ComparisonRuns, StudentComparison
from shared.fine_tuning.control_plane import TERMINAL_STATES, ControlPlane, ControlPlaneError
from shared.fine_tuning.jobs import FineTuningError, FineTuningJobs, FineTuningRecord, StudentDeployment
from shared.platform.errors import Conflict, InvalidRequest, NotFound
from shared.platform.request_body import parse_model
from shared.store.json_blobs import Superseded

DELETED = "Deleted"
DEPLOYMENT_NAME = r"^[A-Za-z0-9][A-Za-z0-9._-]{1,63}$"
"""Azure OpenAI deployment names: 2-64 letters, digits, '.', '_' and '-' (what is also safe in a URL path)."""


class DeploymentParams(BaseModel):
    """The `POST /api/fine_tuning_jobs/{id}/deployments` body."""

    model_config = ConfigDict(extra="forbid")

    name: str | None = Field(None, pattern=DEPLOYMENT_NAME)
    """The deployment name callers will use; default `<suffix or 'student'>-<job id's last 8>`."""
    sku: str | None = Field(None, min_length=1)
    """e.g. `DeveloperTier`, `Standard`, `GlobalStandard`; default FINE_TUNING_DEPLOYMENT_SKU."""
    capacity: int | None = Field(None, ge=1)
    existing: bool = False
    """Register a deployment that already serves this model (made elsewhere) instead of creating one."""

    @model_validator(mode="after")
    def _registration_names_it(self) -> DeploymentParams:
        if self.existing and self.name is None:
            raise ValueError("registering an existing deployment needs its 'name'")
        if self.existing and (self.sku is not None or self.capacity is not None):
            raise ValueError("'sku' and 'capacity' are for a deployment created here, not a registered one")
        return self


def parse_deployment_params(body: dict[str, object]) -> DeploymentParams:
    return parse_model(DeploymentParams, body)


class StudentDeployments:
    def __init__(
        self,
        *,
        jobs: FineTuningJobs,
        control_plane: ControlPlane | None,
        missing_control_plane: str,
        default_sku: str,
        default_capacity: int,
        comparison: StudentComparison | None = None,
    ) -> None:
        self._jobs = jobs
        self._comparison = comparison
        self.control_plane = control_plane
        self._missing_control_plane = missing_control_plane
        """What to set (or do instead) when there is no control plane, in words."""
        self._default_sku = default_sku
        self._default_capacity = default_capacity

    async def create(self, job_id: str, params: DeploymentParams, *, owner: str | None) -> StudentDeployment:
        record, _ = await self._jobs.read_visible(job_id, owner)
        if record.status != "succeeded" or not record.fine_tuned_model:
            raise InvalidRequest(
                f"Fine-tuning job '{job_id}' is {record.status}: there is no fine-tuned model to deploy until it "
                "has succeeded.",
                param="fine_tuning_job_id",
                code="model_not_ready",
            )
        name = params.name or f"{record.params.suffix or 'student'}-{record.id[-8:]}"
        existing = _find(record, name)
        if existing is not None and existing.provisioning_state not in (DELETED, "Failed"):
            raise Conflict(
                f"Job '{job_id}' already has deployment '{name}' ({existing.provisioning_state}); delete it first "
                "or choose another name.",
                param="name",
                code="deployment_exists",
            )
        now = int(time.time())
        if params.existing:
            deployment = StudentDeployment(
                name=name,
                model=record.fine_tuned_model,
                managed=False,
                provisioning_state="Succeeded",
                created_at=now,
                updated_at=now,
            )
        else:
            if self.control_plane is None:
                raise InvalidRequest(self._missing_control_plane, param="existing", code="deployment_unavailable")
            sku, capacity = params.sku or self._default_sku, params.capacity or self._default_capacity
            state = await self.control_plane.create(name, model=record.fine_tuned_model, sku=sku, capacity=capacity)
            deployment = StudentDeployment(
                name=name,
                model=record.fine_tuned_model,
                managed=True,
                sku=state.sku or sku,
                capacity=state.capacity or capacity,
                provisioning_state=state.provisioning_state,
                created_at=now,
                updated_at=now,
            )
        await self._update(job_id, owner, lambda r: _replace(r, deployment))
        if deployment.provisioning_state == "Succeeded":  # registered by hand: ready now
            _replace(record, deployment)
            await self._judge(record, [deployment.name])
            deployment = _find(record, deployment.name) or deployment
        return deployment

    async def list(self, job_id: str, *, owner: str | None) -> list[StudentDeployment]:
        """The job's deployments, those still provisioning read again from Azure."""
        record, etag = await self._jobs.read_visible(job_id, owner)
        with contextlib.suppress(Superseded):
            record = await self._refresh(record, etag)
        return record.deployments

    async def get(self, job_id: str, name: str, *, owner: str | None) -> StudentDeployment:
        for deployment in await self.list(job_id, owner=owner):
            if deployment.name == name:
                return deployment
        raise NotFound(f"Fine-tuning job '{job_id}' has no deployment named '{name}'.", param="name")

    async def delete(self, job_id: str, name: str, *, owner: str | None) -> StudentDeployment:
        """Delete a deployment made here on Azure (a registered one is only forgotten); kept as `Deleted`."""
        record, _ = await self._jobs.read_visible(job_id, owner)
        deployment = _find(record, name)
        if deployment is None:
            raise NotFound(f"Fine-tuning job '{job_id}' has no deployment named '{name}'.", param="name")
        if deployment.managed and deployment.provisioning_state != DELETED:
            if self.control_plane is None:
                raise InvalidRequest(self._missing_control_plane, param="name", code="deployment_unavailable")
            await self.control_plane.delete(name)
        deleted = deployment.model_copy(update={"provisioning_state": DELETED, "updated_at": int(time.time())})
        await self._update(job_id, owner, lambda r: _replace(r, deleted))
        return deleted

    async def comparison_of(self, deployment: str) -> ComparisonRuns | None:
        """The automatic comparison recorded for a deployment (the newest job's), for the promotion gate."""
        found = None
        async for record, _ in self._jobs.records():
            for candidate in record.deployments:
                runs = candidate.comparison
                if candidate.name == deployment and candidate.provisioning_state != DELETED and runs and runs.eval_id:
                    found = runs
        return found

    async def track(self) -> int:
        """The timer: read every provisioning deployment again from Azure; returns how many it read."""
        read = 0
        async for record, etag in self._jobs.records():
            pending = [d for d in record.deployments if _provisioning(d)]
            if pending and self.control_plane is not None:
                with contextlib.suppress(Superseded, ControlPlaneError):
                    await self._refresh(record, etag)
                    read += len(pending)
        return read

    async def _refresh(self, record: FineTuningRecord, etag: str) -> FineTuningRecord:
        if self.control_plane is None or not any(_provisioning(d) for d in record.deployments):
            return record
        ready = []
        for index, deployment in enumerate(record.deployments):
            if not _provisioning(deployment):
                continue
            state = await self.control_plane.get(deployment.name)
            now = int(time.time())
            if state is None:
                error = FineTuningError(
                    code="deployment_missing",
                    message=f"Deployment '{deployment.name}' no longer exists on the Azure OpenAI account.",
                )
                update: dict[str, object] = {"provisioning_state": "Failed", "error": error}
            else:
                update = {"provisioning_state": state.provisioning_state}
                if state.provisioning_state == "Succeeded":
                    ready.append(deployment.name)
                if state.provisioning_state == "Failed":
                    update["error"] = FineTuningError(
                        code="deployment_failed",
                        message=f"Azure could not provision deployment '{deployment.name}' of {deployment.model}.",
                        hint="Check the model's deployment quota and region for this SKU, delete the deployment "
                        "and create it again (another SKU or a smaller capacity).",
                    )
            record.deployments[index] = deployment.model_copy(update={**update, "updated_at": now})
        await self._jobs.save(record, etag)  # only the delivery that wrote the change goes on to judge it
        await self._judge(record, ready)
        return record

    async def _judge(self, record: FineTuningRecord, names: Sequence[str]) -> None:
        """Start the comparison with the teacher for deployments that just became ready, and record it."""
        plan = record.params.comparison
        if self._comparison is None or not names or (plan is not None and not plan.enabled):
            return
        for name in names:
            runs = await self._comparison.start(
                job_id=record.id, dataset_id=record.dataset_id, deployment=name, owner=record.owner, plan=plan
            )

            def attach(r: FineTuningRecord, name: str = name, runs: ComparisonRuns = runs) -> None:
                r.deployments = [
                    d.model_copy(update={"comparison": runs}) if d.name == name else d for d in r.deployments
                ]

            attach(record)
            await self._update(record.id, None, attach)

    async def _update(self, job_id: str, owner: str | None, change: Callable[[FineTuningRecord], None]) -> None:
        """Apply `change` to the stored record, read again until it is written over no one else's change."""
        while True:
            record, etag = await self._jobs.read_visible(job_id, owner)
            change(record)
            with contextlib.suppress(Superseded):
                await self._jobs.save(record, etag)
                return


def _find(record: FineTuningRecord, name: str) -> StudentDeployment | None:
    return next((d for d in record.deployments if d.name == name), None)


def _replace(record: FineTuningRecord, deployment: StudentDeployment) -> None:
    record.deployments = [d for d in record.deployments if d.name != deployment.name] + [deployment]


def _provisioning(deployment: StudentDeployment) -> bool:
    return deployment.managed and deployment.provisioning_state not in TERMINAL_STATES | {DELETED}
