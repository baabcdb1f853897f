"""The report: the predicate of the signed in-toto Statement.

Everything a reviewer needs to know which models, policy and data produced which verdict.
Fields are stable and documented; `prunegate report schema` prints the JSON Schema.
"""

from __future__ import annotations

from typing import Literal, Optional

from pydantic import BaseModel, ConfigDict, Field

PREDICATE_TYPE = "https://prunegate.dev/report/v1"
SCHEMA_VERSION = 1


class _Record(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ModelRecord(_Record):
    path: str
    sha256: str
    format: str = Field(description="onnx | torchscript | torch-export | state-dict | pickle")
    parameters: int
    nonzero_parameters: int
    sparsity: float = Field(description="1 - nonzero_parameters / parameters")
    backend: str
    device: str
    provider: Optional[str] = Field(None, description="ONNX Runtime execution provider actually used")
    arch: Optional[str] = None
    pickle_allowed: bool = False
    fixed_batch: Optional[int] = None


class Models(_Record):
    dense: ModelRecord
    pruned: ModelRecord


class PolicyRecord(_Record):
    name: str
    path: Optional[str]
    sha256: Optional[str] = Field(description="sha256 of the policy file's bytes")
    document: dict = Field(description="the policy as validated, with command-line overrides applied")


class DataRecord(_Record):
    name: str = Field(description="'test' or the ood set's name")
    format: str
    path: str
    size: int = Field(description="images in the set")
    used: int = Field(description="images evaluated (after limit)")
    sha256: str = Field(description="digest over the index and content digest of every image used")
    classes: Optional[list[str]] = None
    severity: Optional[int] = Field(None, description="for a precomputed corruption block")


class ModelSide(_Record):
    accuracy: float
    correct: int
    nonfinite: int = Field(description="samples whose logits were NaN or infinite (counted wrong)")


class TaskRecord(_Record):
    name: str
    kind: Literal["clean", "ood", "noise", "corruption"]
    group: str
    n: int
    dense: ModelSide
    pruned: ModelSide
    accuracy_drop: float
    agreement: float
    softmax_l2: float
    softmax_linf: float


class TaskValue(_Record):
    task: str
    value: float
    passed: bool


class RuleRecord(_Record):
    name: str
    metric: str
    tasks: list[str]
    aggregate: str
    comparison: Literal["max", "min"]
    threshold: float
    value: float
    passed: bool
    per_task: list[TaskValue]


class Timing(_Record):
    started: str = Field(description="UTC, ISO 8601")
    duration_s: float
    data_s: float
    shift_s: float
    models_s: float


class Report(_Record):
    schema_version: int = SCHEMA_VERSION
    tool: dict = Field(description="name and version of prunegate")
    verdict: Literal["pass", "fail"]
    policy: PolicyRecord
    models: Models
    data: list[DataRecord]
    seed: int
    options: dict = Field(description="device, backend, batch size, limit, allow_pickle as used")
    tasks: list[TaskRecord]
    rules: list[RuleRecord]
    environment: dict
    timing: Timing

    def failed_rules(self) -> list[RuleRecord]:
        return [r for r in self.rules if not r.passed]
