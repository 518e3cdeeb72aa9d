"""What callers send: eval and run parameters in the OpenAI Evals wire shapes.

Distillery's extensions: a `stored_completions` run source selects with the same filter as the
stored-completions list (metadata, model, created range, limit); a `file_id` names a file of one of
our datasets as `<dataset id>/<file name>` (e.g. `dataset-…/eval.jsonl`) as well as an uploaded eval
file (`file-…`); a run may carry
`max_total_tokens`, a cap on the tokens its candidate and grader calls may use. A `responses` run
data source (and source) selects stored responses with the SDK's query fields; its candidates are
answered through the Responses API, from the same messages a chat-completions run would send.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from shared.evals.graders import MAX_SAMPLE_TOKENS, GraderMessage, ReasoningEffort
from shared.platform.request_body import Metadata
from shared.store.scores import ScoreConditions

MAX_RUN_ITEMS = 10_000
"""Items one run grades at most (a stored-completions `limit`, a file's rows)."""
MAX_RUN_ITEM_BYTES = 64 * 1024 * 1024
"""JSONL bytes of one run's items at most: they are held in memory while the run is prepared."""
DATASET_FILE_ID = re.compile(r"(dataset-[0-9a-f]{32})/([A-Za-z0-9_.-]+\.jsonl)")
FILE_ID = re.compile(r"file-[0-9a-f]{32}")
"""An uploaded eval file (`shared.evals.files`)."""


class _Params(BaseModel):
    model_config = ConfigDict(extra="forbid")


class CustomDataSourceConfig(_Params):
    type: Literal["custom"]
    item_schema: dict[str, Any]
    include_sample_schema: bool = False


class StoredCompletionsDataSourceConfig(_Params):
    """`stored_completions` (and its newer name `logs`): items are stored completions."""

    type: Literal["stored_completions", "logs"]
    metadata: Metadata = Field(default_factory=dict)
    """The default metadata filter of this eval's stored-completions runs."""


DataSourceConfig = Annotated[CustomDataSourceConfig | StoredCompletionsDataSourceConfig, Field(discriminator="type")]


class EvalCreateParams(_Params):
    data_source_config: DataSourceConfig
    testing_criteria: list[dict[str, Any]]
    """Validated by `graders.parse_testing_criteria`, whose errors name the criterion."""
    name: str | None = Field(None, max_length=256)
    metadata: Metadata | None = None


class EvalUpdateParams(_Params):
    name: str | None = Field(None, max_length=256)
    metadata: Metadata | None = None


class FileContentRow(_Params):
    item: dict[str, Any]
    sample: dict[str, Any] | None = None


class FileContentSource(_Params):
    type: Literal["file_content"]
    content: list[FileContentRow] = Field(min_length=1, max_length=MAX_RUN_ITEMS)


class FileIdSource(_Params):
    type: Literal["file_id"]
    id: str
    """An uploaded eval file (`file-…`), or a dataset's file (`dataset-…/eval.jsonl`)."""

    @model_validator(mode="after")
    def _names_a_file(self) -> FileIdSource:
        if not DATASET_FILE_ID.fullmatch(self.id) and not FILE_ID.fullmatch(self.id):
            raise ValueError(
                "a file id is an uploaded eval file's ('file-…') or '<dataset id>/<file>.jsonl' "
                "(e.g. 'dataset-…/eval.jsonl')"
            )
        return self


class StoredCompletionsSource(_Params):
    type: Literal["stored_completions"]
    metadata: Metadata | None = None
    scores: ScoreConditions | None = None
    """Distillery's addition: only completions whose scores pass, as in a list's `scores.…` filter."""
    model: str | None = Field(None, min_length=1)
    created_after: int | None = Field(None, ge=0)
    created_before: int | None = Field(None, ge=0)
    limit: int | None = Field(None, ge=1, le=MAX_RUN_ITEMS)


class ResponsesSource(StoredCompletionsSource):
    """`responses`: stored responses, by the SDK's query fields; the ones past the list filter are checked
    on each response's own request."""

    type: Literal["responses"]  # type: ignore[assignment]
    instructions_search: str | None = None
    """Only responses whose instructions contain this text."""
    reasoning_effort: ReasoningEffort | None = None
    temperature: float | None = None
    top_p: float | None = None
    tools: list[str] | None = None
    """Only responses offered every one of these tools (by name, or by type for built-in tools)."""
    users: list[str] | None = None
    """Only responses whose request named one of these `user`s."""

    def accepts(self, request: dict[str, Any]) -> bool:
        """The request-level conditions, on a stored response's request."""
        offered = {
            str(tool.get("name") or tool.get("type")) for tool in request.get("tools") or [] if isinstance(tool, dict)
        }
        return (
            (self.instructions_search is None or self.instructions_search in str(request.get("instructions") or ""))
            and (
                self.reasoning_effort is None or (request.get("reasoning") or {}).get("effort") == self.reasoning_effort
            )
            and (self.temperature is None or request.get("temperature") == self.temperature)
            and (self.top_p is None or request.get("top_p") == self.top_p)
            and (not self.tools or set(self.tools) <= offered)
            and (not self.users or request.get("user") in self.users)
        )


class TemplateInputMessages(_Params):
    type: Literal["template"]
    template: list[GraderMessage] = Field(min_length=1)


class ItemReferenceInputMessages(_Params):
    type: Literal["item_reference"]
    item_reference: str = Field(pattern=r"^item(\.[A-Za-z0-9_\-]+)+$")


class RunSamplingParams(_Params):
    """Sent with each candidate call: OpenAI's Evals sampling parameters, bounded (anything else, `n`
    included, is a 400: a run's cost must follow from its items)."""

    max_completion_tokens: int | None = Field(None, ge=1, le=MAX_SAMPLE_TOKENS)
    seed: int | None = None
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, ge=0, le=1)
    reasoning_effort: ReasoningEffort | None = None
    response_format: dict[str, Any] | None = None
    tools: list[dict[str, Any]] | None = Field(None, max_length=128)


class JsonlRunDataSource(_Params):
    type: Literal["jsonl"]
    source: Annotated[FileContentSource | FileIdSource, Field(discriminator="type")]


class CompletionsRunDataSource(_Params):
    """`completions`, or `responses` (the same run over stored responses: `source` may be `responses`)."""

    type: Literal["completions", "responses"]
    source: Annotated[
        FileContentSource | FileIdSource | StoredCompletionsSource | ResponsesSource, Field(discriminator="type")
    ]
    input_messages: (
        Annotated[TemplateInputMessages | ItemReferenceInputMessages, Field(discriminator="type")] | None
    ) = None
    model: str | None = Field(None, min_length=1)
    """The deployment that answers each item; none grades the answers the source already holds."""
    sampling_params: RunSamplingParams | None = None

    @model_validator(mode="after")
    def _messages_for_a_model(self) -> CompletionsRunDataSource:
        if (
            self.model is not None
            and self.input_messages is None
            and self.source.type not in ("stored_completions", "responses")
        ):
            raise ValueError("input_messages is required when a model generates the samples")
        if self.model is None and self.input_messages is not None:
            raise ValueError("input_messages needs a model to send them to")
        if isinstance(self.source, ResponsesSource) and self.type != "responses":
            raise ValueError("a 'responses' source belongs to a 'responses' run data source")
        stored = isinstance(self.source, StoredCompletionsSource) and not isinstance(self.source, ResponsesSource)
        if stored and self.type != "completions":
            raise ValueError("a 'stored_completions' source belongs to a 'completions' run data source")
        return self


RunDataSource = Annotated[JsonlRunDataSource | CompletionsRunDataSource, Field(discriminator="type")]


class RunCreateParams(_Params):
    data_source: RunDataSource
    name: str | None = Field(None, max_length=256)
    metadata: Metadata | None = None
    max_total_tokens: int | None = Field(None, ge=1)
    """Distillery extension: stop the run cleanly once its calls used this many tokens."""
    write_scores: bool = False
    """Distillery extension: each `label_model` / `score_model` result is written back as a score named
    after its criterion on the item's stored completion (`item.completion_id`): a judge labels the store."""
