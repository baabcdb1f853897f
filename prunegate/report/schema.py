"""The report: the predicate of the signed in-toto Statement.

Everything a reviewer needs to know which models, policy and data produced which verdict.
Fields are stable and documented; `prunegate report schema` prints the JSON Schema.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, SerializerFunctionWrapHandler, model_serializer

from prunegate.plan import TaskKind

PREDICATE_TYPE = "https://prunegate.dev/report/v1"
SCHEMA_VERSION = 1


class _Record(BaseModel):
    model_config = ConfigDict(extra="forbid")


def _without_unset(data: dict, names: tuple[str, ...]) -> dict:
    """`data` less the fields in `names` that hold nothing (None or an empty list)."""
    return {k: v for k, v in data.items() if not (k in names and (v is None or v == []))}


# Fields only one prediction kind fills: a record leaves out the other kind's, so that a
# classification report reads as it always did and a segmentation one carries no null accuracies.
CLASSIFICATION_SIDE = ("accuracy", "correct", "top5", "ece", "nll", "brier")
SEGMENTATION_SIDE = ("miou", "pixel_accuracy")
CLASSIFICATION_TASK = (
    *("accuracy_drop", "agreement", "softmax_l2", "softmax_linf", "newly_wrong", "newly_right", "flips"),
    *("error_consistency", "class_recall_drop", "worst_class", "class_recall", "mcnemar_p", "examples"),
    *("top5_drop", "ece_increase", "nll_increase", "brier_increase", "kl_divergence", "probability_loyalty"),
    *("selective_risk", "group_accuracy_drop", "worst_group", "groups", "calibration"),
)
SEGMENTATION_TASK = (
    *("pixels", "miou_drop", "pixel_accuracy_drop", "pixel_agreement", "class_iou_drop", "worst_class_iou"),
    *("class_iou", "segmentation_examples"),
)


class BackendChoice(_Record):
    reason: str
    seconds_per_batch: dict[str, float] = Field({}, description="measured per backend (torch, onnx), when timed")
    batch: int | None = Field(None, description="images per timed batch")


class ExternalData(_Record):
    path: str = Field(description="relative to the model file's folder (a Hugging Face model's own folder)")
    sha256: str


class ArchSource(_Record):
    kind: Literal["file", "module"] = Field(description="file: arch 'file.py:fn'; module: arch 'package.module:fn'")
    path: str | None = Field(description="the arch's source file, resolved")
    sha256: str | None = Field(description="sha256 of that file (also a subject of the statement)")
    module: str | None = None
    distribution: str | None = Field(None, description="the installed distribution that ships the module")
    version: str | None = Field(None, description="that distribution's version")
    external: bool = Field(
        False, description="outside the policy's folder and the installed packages: ran only with --allow-external-arch"
    )
    args: list | None = Field(
        None, description="models.arch {fn, args, kwargs}: the positional arguments the builder was called with"
    )
    kwargs: dict | None = Field(None, description="and its keyword arguments (both left out: called with none)")

    @model_serializer(mode="wrap")
    def _without_a_call(self, handler: SerializerFunctionWrapHandler) -> dict:
        return _without_unset(handler(self), ("args", "kwargs"))


class Isolation(_Record):
    process: bool = Field(description="the model ran in a process of its own, without the signing key")
    landlock_abi: int | None = Field(None, description="the kernel's Landlock ABI (0: none)")
    files: bool | None = Field(None, description="Landlock: no file writes, no reading the signing key")
    tcp: bool | None = Field(None, description="Landlock: no TCP connections or listening")
    signals: bool | None = Field(None, description="Landlock: no signals to processes outside the sandbox")
    seccomp: bool | None = Field(
        None, description="seccomp: only Unix sockets; no programs, tracing, kernel modules, BPF, mounts or namespaces"
    )
    capabilities: bool | None = Field(None, description="every Linux capability given up (matters under root)")


class ModelRecord(_Record):
    path: str
    sha256: str
    format: str = Field(
        description="onnx | torchscript | torch-export | state-dict | safetensors | pickle | huggingface (a "
        "folder: sha256 is its model.safetensors's, external_data lists its config.json); a state dict or "
        "safetensors file saved under torch.nn.utils.prune adds ' (pruning reparametrised)': its weight_orig x "
        "weight_mask pairs were folded"
    )
    parameters: int
    nonzero_parameters: int
    sparsity: float = Field(description="1 - nonzero_parameters / parameters")
    backend: str
    device: str
    provider: str | None = Field(None, description="ONNX Runtime execution provider actually used")
    providers: list[str] | None = Field(
        None, description="every execution provider the ONNX Runtime session got, in its order of preference"
    )
    arch: str | None = None
    pickle_allowed: bool = False
    fixed_batch: int | None = None
    precision: str | None = Field(None, description="fp32 | bf16 | fp16 (torch autocast), as run")
    channels_last: bool | None = Field(
        None, description="torch: whether the model ran in channels-last memory format; None for ONNX Runtime"
    )
    backend_choice: BackendChoice | None = Field(None, description="with backend auto: why this backend ran it")
    external_data: list[ExternalData] | None = Field(
        None,
        description="ONNX external data files the model reads, with their sha256 (sha256 above is the .onnx file's); "
        "a Hugging Face folder's config.json",
    )
    arch_source: ArchSource | None = Field(None, description="for a state dict: the arch code that built the network")
    isolation: Isolation | None = Field(None, description="how the model was kept from prunegate's process")
    output: str | int | None = Field(
        None,
        description="the output read as the logits where the model has several or the policy names one "
        "(models.output: a dict key, attribute, ONNX output name or tuple index); None: its only output",
    )
    quantisation: Literal["QDQ", "QLinear", "QDQ + QLinear"] | None = Field(
        None,
        description="ONNX: the quantised operators the file holds (QDQ: Quantize/DequantizeLinear around float "
        "operators; QLinear: integer operators such as QLinearConv); None: none. Its integer weights count as "
        "parameters, zero where they equal their zero point; scales and zero points do not count",
    )


class Models(_Record):
    dense: ModelRecord
    pruned: ModelRecord


class PolicyRecord(_Record):
    name: str
    path: str | None
    sha256: str | None = Field(description="sha256 of the policy file's bytes")
    folder: str | None = Field(
        None,
        description="where the policy's relative paths start when not beside its file: the working "
        "directory of a ready policy run by name (`--policy cifar10`)",
    )
    document: dict = Field(description="the policy as validated, with command-line overrides applied")
    overrides: dict = Field(
        {},
        description="what the command line set instead of the policy: field -> value "
        "(`verify --policy` finds them from the document too)",
    )


class DataRecord(_Record):
    name: str = Field(
        description="'test', the ood set's name, a precomputed block, or 'frost_textures' "
        "(the policy's frost photographs)"
    )
    format: str
    path: str
    size: int = Field(description="images in the set")
    used: int = Field(description="images evaluated (after limit)")
    sha256: str = Field(description="digest over the index and content digest of every image used")
    classes: list[str] | None = None
    label_map: str | None = Field(
        None, description="sha256 of the data set's label map (data.label_map: its labels -> the model classes right)"
    )
    severity: int | None = Field(None, description="for a precomputed corruption block")
    ignore_index: int | None = Field(None, description="segmentation-folder: the mask value no metric counts")
    list_sha256: str | None = Field(
        None, description="filelist: sha256 of the list file (its image paths and labels; sha256 covers the images)"
    )
    files_sha256: dict[str, str] | None = Field(
        None,
        description="webdataset, parquet: sha256 of each shard or Parquet file read, by its path (they pin the "
        "labels and the order; sha256 covers the images)",
    )

    @model_serializer(mode="wrap")
    def _one_kind(self, handler: SerializerFunctionWrapHandler) -> dict:
        return _without_unset(handler(self), ("ignore_index", "list_sha256", "files_sha256"))


class ModelSide(_Record):
    accuracy: float | None = Field(None, description="classification: top-1 accuracy")
    correct: int | None = Field(None, description="classification: samples predicted right")
    nonfinite: int = Field(
        description="samples (segmentation: valid pixels) whose logits were NaN or infinite (counted wrong)"
    )
    miou: float | None = Field(
        None, description="segmentation: mean IoU over the classes present in truth or prediction"
    )
    pixel_accuracy: float | None = Field(None, description="segmentation: correct valid pixels over valid pixels")
    top5: float | None = Field(None, description="classification: top-5 accuracy (None: fewer than 5 classes)")
    ece: float | None = Field(
        None, description="classification: expected calibration error, 15 equal-width bins of the top-1 probability"
    )
    nll: float | None = Field(
        None,
        description="classification: mean negative log-likelihood of the label, nats (None under data.label_map, "
        "or infinite: a non-finite output)",
    )
    brier: float | None = Field(
        None, description="classification: mean multi-class Brier score, sum over classes of (p - onehot)^2"
    )

    @model_serializer(mode="wrap")
    def _one_kind(self, handler: SerializerFunctionWrapHandler) -> dict:
        data = handler(self)
        return _without_unset(data, SEGMENTATION_SIDE if self.accuracy is not None else CLASSIFICATION_SIDE)


class Interval(_Record):
    low: float
    high: float
    method: str = Field(
        description="newcombe (paired difference), wilson (a proportion), "
        "bootstrap (seeded paired percentile) or normal (a mean); keys: metric names, and "
        "selective_risk_increase@COVERAGE"
    )


class Flips(_Record):
    newly_wrong: int = Field(description="samples the dense model gets right and the pruned model wrong")
    newly_right: int = Field(description="samples the dense model gets wrong and the pruned model right")


class ClassRecall(_Record):
    n: list[int] = Field(description="samples per class (index = label)")
    dense_correct: list[int]
    pruned_correct: list[int]


class WorstClass(_Record):
    label: int
    name: str | None = None
    n: int
    dense_recall: float
    pruned_recall: float
    drop: float


class SelectiveRisk(_Record):
    coverage: float = Field(description="the fraction of samples each model keeps (it abstains on the rest)")
    dense: float | None = Field(description="the dense model's error on its most confident `coverage` of samples")
    pruned: float | None
    increase: float | None = Field(description="pruned minus dense")


class GroupResult(_Record):
    name: str = Field(description="the group's name in data.groups")
    n: int = Field(description="samples of the group's classes")
    dense_accuracy: float | None
    pruned_accuracy: float | None
    drop: float | None


class Reliability(_Record):
    n: list[int] = Field(description="samples per bin of the top-1 probability ([i/15, (i+1)/15); the last: 1)")
    confidence: list[float | None] = Field(description="the bin's mean top-1 probability (None: an empty bin)")
    accuracy: list[float | None] = Field(description="the bin's top-1 accuracy")


class Calibration(_Record):
    bins: int = Field(description="equal-width bins of the ECE (plus one for a probability of exactly 1)")
    dense: Reliability
    pruned: Reliability


class Example(_Record):
    index: int = Field(description="the sample's index in its data set (see data[].name == source)")
    draw: int = 0
    label: int
    dense: int = Field(description="the dense model's prediction (-1: non-finite logits)")
    pruned: int


class WorstClassIoU(_Record):
    label: int
    name: str | None = None
    dense_iou: float
    pruned_iou: float
    drop: float


class ClassIoU(_Record):
    dense: list[float | None] = Field(
        description="IoU per class (index = label); None: in neither truth nor prediction"
    )
    pruned: list[float | None]


class SegmentationExample(_Record):
    index: int = Field(description="the image's index in its data set (see data[].name == source)")
    draw: int = 0
    dense_miou: float | None = Field(description="the dense model's mIoU on this image alone")
    pruned_miou: float | None
    drop: float | None
    dense_mask: str | None = Field(
        None, description="the dense model's predicted classes as a base64 PNG (only for the report's worst image)"
    )
    pruned_mask: str | None = None


class TaskRecord(_Record):
    name: str
    kind: TaskKind
    group: str
    source: str | None = Field(None, description="the data set the task reads (data[].name)")
    n: int = Field(description="samples (segmentation: images) evaluated, times draws")
    dense: ModelSide
    pruned: ModelSide
    accuracy_drop: float | None = None
    agreement: float | None = None
    softmax_l2: float | None = None
    softmax_linf: float | None = None
    pixels: int | None = Field(None, description="segmentation: valid (not ignored) pixels evaluated")
    miou_drop: float | None = Field(None, description="segmentation: dense mIoU minus pruned mIoU")
    pixel_accuracy_drop: float | None = None
    pixel_agreement: float | None = Field(
        None, description="segmentation: valid pixels where both models predict the same class, over valid pixels"
    )
    class_iou_drop: float | None = Field(None, description="segmentation: the largest per-class IoU drop")
    worst_class_iou: WorstClassIoU | None = None
    class_iou: ClassIoU | None = None
    segmentation_examples: list[SegmentationExample] = Field(
        [], description="segmentation: the images with the largest mIoU drop"
    )
    newly_wrong: float | None = Field(None, description="fraction of samples newly wrong after pruning")
    newly_right: float | None = Field(None, description="fraction of samples newly right after pruning")
    flips: Flips | None = None
    error_consistency: float | None = Field(
        None, description="Cohen's kappa between the two models' error indicators (None when undefined)"
    )
    class_recall_drop: float | None = Field(None, description="the largest per-class recall drop")
    worst_class: WorstClass | None = None
    class_recall: ClassRecall | None = None
    top5_drop: float | None = Field(None, description="dense top-5 accuracy minus pruned top-5 accuracy")
    ece_increase: float | None = Field(None, description="pruned ECE minus dense ECE (signed)")
    nll_increase: float | None = Field(None, description="pruned NLL minus dense NLL (signed)")
    brier_increase: float | None = Field(None, description="pruned Brier score minus dense (signed)")
    kl_divergence: float | None = Field(None, description="mean KL(dense || pruned) of the softmax outputs, nats")
    probability_loyalty: float | None = Field(
        None, description="mean 1 - Jensen-Shannon distance (base 2) between the two softmax outputs"
    )
    selective_risk: list[SelectiveRisk] = Field(
        [], description="per coverage (0.8, and any a rule asks for): both models' selective risk"
    )
    group_accuracy_drop: float | None = Field(
        None, description="the largest accuracy drop of any subgroup (data.groups)"
    )
    worst_group: GroupResult | None = None
    groups: list[GroupResult] = Field([], description="per subgroup (data.groups): both models' accuracy")
    calibration: Calibration | None = Field(None, description="both models' reliability diagram")
    intervals: dict[str, Interval] = Field({}, description="per metric, at the report's confidence level")
    mcnemar_p: float | None = Field(None, description="exact McNemar test of equal accuracy (two-sided)")
    examples: list[Example] = Field([], description="a few samples the pruned model newly gets wrong")

    @model_serializer(mode="wrap")
    def _one_kind(self, handler: SerializerFunctionWrapHandler) -> dict:
        data = handler(self)
        return _without_unset(data, SEGMENTATION_TASK if self.pixels is None else CLASSIFICATION_TASK)


class TaskValue(_Record):
    task: str
    value: float
    passed: bool
    bound: float | None = Field(None, description="the conservative interval bound the rule compared")
    status: Literal["pass", "fail", "undecided"] | None = None


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
    confidence: float | None = Field(None, description="gate.confidence; None: point estimates decide")
    bound: float | None = Field(None, description="the conservative bound compared with the threshold")
    interval: Interval | None = None
    status: Literal["pass", "fail", "undecided"] = Field(
        "pass", description="undecided: the interval straddles the threshold (counts as a failure)"
    )
    coverage: float | None = Field(None, description="selective_risk_increase: the coverage the rule set")
    samples_needed: int | None = Field(
        None, description="for an undecided rule: roughly how many samples per task would decide it"
    )
    note: str | None = Field(
        None, description="why the rule failed whatever its value (e.g. a task with mostly non-finite outputs)"
    )


class CorruptionError(_Record):
    name: str
    severities: list[int]
    dense_error: float = Field(description="sum over severities of the dense model's top-1 error")
    pruned_error: float
    ce: float | None = Field(description="dense-relative corruption error: pruned_error / dense_error")
    relative_ce: float | None = Field(
        None, description="sum of (error - clean error) of the pruned over the dense model's (needs a clean task)"
    )


class CorruptionSummary(_Record):
    per_corruption: list[CorruptionError]
    mce: float | None = Field(description="mean over corruptions of ce")
    relative_mce: float | None = None


class Timing(_Record):
    started: str = Field(description="UTC, ISO 8601")
    duration_s: float
    data_s: float = Field(description="decoding and moving batches to the device (made ahead of the models)")
    shift_s: float = Field(description="making every task's inputs: shifts and normalisation (ahead of the models)")
    models_s: float = Field(description="both models (or the dense cache) and the tallies' inputs")
    wait_s: float = Field(0.0, description="the models waiting for inputs: what the producer did not hide")


class SequentialSource(_Record):
    name: str = Field(description="the data set (data[].name)")
    used: int = Field(description="images evaluated before the gate stopped reading it")
    total: int = Field(description="images the data set has (after data.limit)")


class SequentialLook(_Record):
    images: int = Field(description="images evaluated so far, over all data sets")
    low: float = Field(description="the rule's anytime-valid interval at this look")
    high: float


class SequentialRule(_Record):
    name: str
    status: Literal["pass", "fail", "undecided"] = Field(
        description="at the stop; undecided: still straddling its threshold (at a fail-stop: undecided at the stop)"
    )
    history: list[SequentialLook] = Field([], description="the rule's interval at every look")


class SequentialRecord(_Record):
    method: str = Field(description="the confidence sequences the rules were decided on")
    confidence: float = Field(description="1 - the chance that any rule's decision is wrong, over all looks")
    min_samples: int
    looks: int = Field(description="how many times the gate looked")
    order: str = Field(description="how each data set was ordered")
    stopped: str = Field(description="why it stopped: every rule decided, a rule decided fail, or the end of the data")
    sources: list[SequentialSource]
    rules: list[SequentialRule]

    def used(self) -> tuple[int, int]:
        """(images evaluated, images the data sets have), over all data sets."""
        return sum(s.used for s in self.sources), sum(s.total for s in self.sources)


class SanityRecord(_Record):
    """The check that the dense model is above chance on the clean task (prunegate.sanity)."""

    checked: bool = Field(description="false: skipped (reason says why)")
    reason: str | None = Field(None, description="why the check was skipped (--no-sanity-check, segmentation)")
    task: str | None = None
    n: int | None = Field(None, description="images of the task the check read (those with finite dense logits)")
    dense_correct: int | None = None
    dense_accuracy: float | None = None
    chance: float | None = Field(None, description="the accuracy of a uniformly random prediction")
    p_value: float | None = Field(None, description="one-sided exact binomial test of accuracy <= chance")
    upper_bound: float | None = Field(None, description="one-sided upper confidence bound of the dense accuracy")
    expected_accuracy: float | None = Field(None, description="models.expected_accuracy")
    tolerance: float | None = Field(None, description="models.expected_accuracy_tolerance (or its default)")


class Report(_Record):
    schema_version: int = SCHEMA_VERSION
    tool: dict = Field(description="name and version of prunegate")
    task: Literal["classification", "segmentation"] = Field(
        "classification", description="the prediction kind: which metrics the task records hold"
    )
    verdict: Literal["pass", "fail"]
    policy: PolicyRecord
    models: Models
    data: list[DataRecord]
    seed: int
    options: dict = Field(description="device, backend, batch size, limit, allow_pickle as used")
    tasks: list[TaskRecord]
    rules: list[RuleRecord]
    confidence: float | None = Field(None, description="level of the intervals (gate.confidence or 0.95)")
    corruption_summary: CorruptionSummary | None = None
    sequential: SequentialRecord | None = Field(
        None, description="gate.sequential: how the gate stopped early (None: every image was evaluated)"
    )
    sanity: SanityRecord | None = Field(
        None, description="the check that the dense model is above chance on the clean task (None: older reports)"
    )
    environment: dict
    timing: Timing
    warnings: list[str] = Field([], description="what a reader must know about the run (non-finite outputs, ...)")

    def failed_rules(self) -> list[RuleRecord]:
        return [r for r in self.rules if not r.passed]
