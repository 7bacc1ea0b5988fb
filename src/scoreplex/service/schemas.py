"""The HTTP request and response bodies, as pydantic models (they make the OpenAPI document).

They mirror the library's types: :class:`ScoredResponse` is one row of :meth:`scoreplex.engine.Engine.score`
(labels, probabilities, confidence, or an error) and :class:`TaskOut` a :class:`scoreplex.tasks.TaskSpec` with the
manifest's metrics.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from scoreplex.tasks import TaskSpec

ErrorReason = Literal["unknown_task", "empty_text", "invalid_text", "task_unavailable"]


class _In(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ResponseIn(_In):
    """One student response to score."""

    id: str | None = Field(None, max_length=256, description="Your id for the response, echoed back.")
    task: str = Field(max_length=256, description="The task (assessment item) id.")
    text: str = Field(description="The response text.")


class ScoreRequest(_In):
    responses: list[ResponseIn] = Field(min_length=1, description="Responses of any mix of tasks.")


class RowError(BaseModel):
    reason: ErrorReason
    message: str


class SuiteIdentity(BaseModel):
    """Which suite answered: its manifest's SHA-256 changes with every task added, replaced or removed."""

    manifest_sha256: str
    method: str
    backbone: str
    backbone_sha256: str
    tasks: int


class ScoredResponse(BaseModel):
    """One response's scores, or the error that stopped this response only."""

    id: str | None
    task: str
    scores: dict[str, int | float | str] | None = Field(
        None,
        description="Predicted score per rubric dimension, in the dimension's scale (e.g. 2.5 or 'B'); the class "
        "0..K for a dimension without a declared scale.",
    )
    probabilities: dict[str, list[float]] | None = Field(
        None, description="Class probabilities per dimension, in scale order (lowest score first)."
    )
    confidence: float | None = Field(
        None,
        description="The confidence the task's routing threshold applies to, in [0, 1] (calibrated; over the "
        "dimensions the smallest 1 - expected quadratic disagreement with the predicted score, or the smallest "
        "probability of the predicted class for modules that route on it).",
    )
    route: Literal["auto", "human"] | None = Field(
        None,
        description="'auto': the engine's score may stand alone; 'human': below the task's routing threshold, "
        "send the response to a human rater.",
    )
    error: RowError | None = None


class ScoreResponse(BaseModel):
    suite: SuiteIdentity
    results: list[ScoredResponse] = Field(description="One per response, in request order.")


class DimensionOut(BaseModel):
    name: str
    kind: Literal["ordinal", "binary"]
    num_classes: int
    classes: list[int]
    scale: list[int | float | str] = Field(
        default_factory=list, description="The score of each class, in class order (the classes without a scale)."
    )
    description: str = ""


class TaskOut(BaseModel):
    id: str
    dimensions: list[DimensionOut] = []
    prompt: str = ""
    rubric: str = ""
    metrics: dict[str, Any] = Field(default_factory=dict, description="From the manifest (e.g. validation QWK).")
    bytes: int = 0
    available: bool = True
    error: str | None = Field(None, description="Why the task cannot score (its files failed verification).")

    @classmethod
    def from_spec(cls, spec: TaskSpec, entry: dict[str, Any]) -> TaskOut:
        return cls(
            id=spec.id,
            dimensions=[
                DimensionOut(
                    name=d.name,
                    kind=d.kind,
                    num_classes=d.num_classes,
                    classes=list(range(d.num_classes)),
                    scale=list(d.values),
                    description=d.description,
                )
                for d in spec.dimensions
            ],
            prompt=spec.prompt,
            rubric=spec.rubric,
            metrics=entry.get("metrics", {}) if isinstance(entry.get("metrics"), dict) else {},
            bytes=int(entry.get("bytes", 0)),
        )


class TaskList(BaseModel):
    suite: SuiteIdentity
    tasks: list[TaskOut]


class TaskPath(_In):
    """Import a task from a suite on the server's disk (inside an import root)."""

    path: str = Field(max_length=4096, description="A suite folder, or a task folder <suite>/tasks/<task id>.")


class TaskChanged(BaseModel):
    task: str
    status: Literal["created", "replaced", "removed"]
    suite: SuiteIdentity


class Health(BaseModel):
    status: Literal["ok"] = "ok"


class Readiness(BaseModel):
    ready: bool
    reason: str | None = None
    suite: SuiteIdentity | None = None
    broken_tasks: dict[str, str] = Field(default_factory=dict)


class ApiErrorBody(BaseModel):
    reason: str
    message: str


class ApiErrorResponse(BaseModel):
    detail: ApiErrorBody
