"""The policy file: what to measure and the tolerances that decide the verdict.

A strict pydantic schema: unknown keys, wrong types and out-of-range tolerances are errors that
name the file and the field (a typo must never silently drop a tolerance). Paths in the policy
are relative to the policy file.
"""

from __future__ import annotations

import copy
import difflib
import hashlib
import json
import math
import re
import struct
from collections.abc import Hashable, Sequence
from pathlib import Path
from types import UnionType
from typing import Annotated, Any, Literal, Union, get_args, get_origin

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    SerializerFunctionWrapHandler,
    ValidationError,
    field_validator,
    model_serializer,
    model_validator,
)
from pydantic_core import ErrorDetails, InitErrorDetails, PydanticCustomError

from prunegate.errors import PolicyError, missing_reason
from prunegate.shift_names import ASSET_SHIFTS, CORRUPTION_NAMES, NOISE_KINDS, PRESET_NAMES

# name: (value range, short meaning) — ranges bound the thresholds a rule may set
CLASSIFICATION_METRICS = {
    "accuracy_drop": ((-1.0, 1.0), "dense top-1 accuracy minus pruned top-1 accuracy"),
    "agreement": ((0.0, 1.0), "fraction of samples where both models predict the same class"),
    "dense_accuracy": ((0.0, 1.0), "top-1 accuracy of the dense model"),
    "pruned_accuracy": ((0.0, 1.0), "top-1 accuracy of the pruned model"),
    "softmax_l2": ((0.0, 2.0**0.5), "mean L2 distance between the two models' softmax outputs"),
    "softmax_linf": ((0.0, 1.0), "mean L-infinity distance between the two models' softmax outputs"),
    "newly_wrong": ((0.0, 1.0), "fraction of samples the dense model gets right and the pruned model wrong"),
    "newly_right": ((0.0, 1.0), "fraction of samples the dense model gets wrong and the pruned model right"),
    "error_consistency": ((-1.0, 1.0), "Cohen's kappa between the two models' errors (1: the same mistakes)"),
    "class_recall_drop": ((-1.0, 1.0), "the largest drop in recall of any one class"),
    "top5_drop": ((-1.0, 1.0), "dense top-5 accuracy minus pruned top-5 accuracy"),
    "dense_top5": ((0.0, 1.0), "top-5 accuracy of the dense model"),
    "pruned_top5": ((0.0, 1.0), "top-5 accuracy of the pruned model"),
    "ece_increase": ((-1.0, 1.0), "pruned minus dense expected calibration error (15 bins; signed)"),
    "dense_ece": ((0.0, 1.0), "expected calibration error of the dense model"),
    "pruned_ece": ((0.0, 1.0), "expected calibration error of the pruned model"),
    "nll_increase": ((-100.0, 100.0), "pruned minus dense mean negative log-likelihood, nats (signed)"),
    "dense_nll": ((0.0, 100.0), "mean negative log-likelihood of the label, dense model"),
    "pruned_nll": ((0.0, 100.0), "mean negative log-likelihood of the label, pruned model"),
    "brier_increase": ((-2.0, 2.0), "pruned minus dense multi-class Brier score (signed)"),
    "dense_brier": ((0.0, 2.0), "multi-class Brier score of the dense model"),
    "pruned_brier": ((0.0, 2.0), "multi-class Brier score of the pruned model"),
    "kl_divergence": ((0.0, 100.0), "mean KL(dense || pruned) of the softmax outputs, nats"),
    "probability_loyalty": ((0.0, 1.0), "mean 1 - Jensen-Shannon distance (base 2) of the softmax outputs"),
    "selective_risk_increase": (
        (-1.0, 1.0),
        "pruned minus dense error on each model's most confident `coverage` of samples (default 0.8)",
    ),
    "group_accuracy_drop": ((-1.0, 1.0), "the largest accuracy drop of any subgroup in data.groups"),
}
# Signed differences where either direction can matter (a pruned model may become under- as well
# as over-confident): only these take a negative threshold.
SIGNED_METRICS = ("ece_increase", "nll_increase", "brier_increase")
DEFAULT_COVERAGE = 0.8  # selective_risk_increase without a rule's coverage
# The metrics a sequential gate decides (means of bounded per-sample values: prunegate.sequential_gate).
SEQUENTIAL_METRICS = (
    *("accuracy_drop", "dense_accuracy", "pruned_accuracy", "agreement", "newly_wrong", "newly_right"),
    *("softmax_l2", "softmax_linf", "top5_drop", "dense_top5", "pruned_top5"),
    *("brier_increase", "dense_brier", "pruned_brier", "probability_loyalty"),
)
DEFAULT_MIN_SAMPLES = 200
SEGMENTATION_METRICS = {
    "miou_drop": ((-1.0, 1.0), "dense mIoU minus pruned mIoU (dataset-level: one confusion matrix per task)"),
    "dense_miou": ((0.0, 1.0), "mean IoU of the dense model over the classes present in truth or prediction"),
    "pruned_miou": ((0.0, 1.0), "mean IoU of the pruned model"),
    "pixel_accuracy_drop": ((-1.0, 1.0), "dense pixel accuracy minus pruned pixel accuracy (valid pixels)"),
    "dense_pixel_accuracy": ((0.0, 1.0), "fraction of valid pixels the dense model labels correctly"),
    "pruned_pixel_accuracy": ((0.0, 1.0), "fraction of valid pixels the pruned model labels correctly"),
    "pixel_agreement": ((0.0, 1.0), "fraction of valid pixels where both models predict the same class"),
    "class_iou_drop": ((-1.0, 1.0), "the largest drop in IoU of any one class"),
}
# The metrics a policy's `task` may gate on.
METRICS_BY_TASK = {"classification": CLASSIFICATION_METRICS, "segmentation": SEGMENTATION_METRICS}
METRICS = {**CLASSIFICATION_METRICS, **SEGMENTATION_METRICS}
MetricName = Literal[
    "accuracy_drop",
    "agreement",
    "dense_accuracy",
    "pruned_accuracy",
    "softmax_l2",
    "softmax_linf",
    "newly_wrong",
    "newly_right",
    "error_consistency",
    "class_recall_drop",
    "top5_drop",
    "dense_top5",
    "pruned_top5",
    "ece_increase",
    "dense_ece",
    "pruned_ece",
    "nll_increase",
    "dense_nll",
    "pruned_nll",
    "brier_increase",
    "dense_brier",
    "pruned_brier",
    "kl_divergence",
    "probability_loyalty",
    "selective_risk_increase",
    "group_accuracy_drop",
    "miou_drop",
    "dense_miou",
    "pruned_miou",
    "pixel_accuracy_drop",
    "dense_pixel_accuracy",
    "pruned_pixel_accuracy",
    "pixel_agreement",
    "class_iou_drop",
]
TaskName = Literal["classification", "segmentation"]
DataFormat = Literal[
    "imagefolder",
    "imagefolder-flat",
    "npz",
    "npy",
    "cifar10-binary",
    "segmentation-folder",
    "filelist",
    "webdataset",
    "parquet",
]
# The formats that take class_names
NAMED_CLASS_FORMATS = ("imagefolder", "imagefolder-flat", "segmentation-folder", "filelist", "webdataset", "parquet")
# The data-source fields that only some formats read: set for any other format, they are errors.
CLASSIFICATION_FORMATS = (
    "imagefolder",
    "imagefolder-flat",
    "filelist",
    "npz",
    "npy",
    "cifar10-binary",
    "webdataset",
    "parquet",
)
FORMAT_FIELDS: dict[str, tuple[str, ...]] = {
    "labels": ("npy",),
    "images_key": ("npz",),
    "labels_key": ("npz",),
    "class_names": NAMED_CLASS_FORMATS,
    "ignore_index": ("segmentation-folder",),
    "label_map": CLASSIFICATION_FORMATS,
    "path_column": ("filelist",),
    "image_column": ("parquet",),
    "label_column": ("filelist", "parquet"),
}

Fraction = Annotated[float, Field(ge=0.0, le=1.0)]
MAX_BATCH_SIZE = 65536  # runtime.batch_size


def repeated(names: list[str]) -> list[str]:
    """The names that occur more than once, sorted."""
    return sorted({n for n in names if names.count(n) > 1})


def field_error(location: Sequence[str | int], message: str, value: object) -> ValidationError:
    """A validation error at `location`, relative to the model (or list) being validated: raised
    from a validator, pydantic reports it there (e.g. gate.rules.0.max), not where the validator
    sits (gate.rules.0): a check that looks at several fields still names the one that is wrong."""
    error = PydanticCustomError("value_error", "{reason}", {"reason": message})
    details = InitErrorDetails(type=error, loc=tuple(location), input=value)
    return ValidationError.from_exception_data("Policy", [details])


def _unique_names(items: list, what: str) -> None:
    """Refuse a repeated `name` among `items`, at the repeat's own name field (e.g. gate.rules.2.name)."""
    first: dict[str, int] = {}
    for i, item in enumerate(items):
        if item.name in first:
            raise field_error(
                (i, "name"),
                f"{what} names must be unique: {item.name!r} is also the name of {what} {first[item.name]}",
                item.name,
            )
        first[item.name] = i


def _trimmed(name: str) -> str:
    """A name is compared, matched and shown as written: leading or trailing whitespace would make
    two names that look the same (or a name that differs from its own display) — refused."""
    if name != name.strip():
        raise ValueError(f"a name must not start or end with whitespace (got {name!r})")
    return name


Name = Annotated[str, Field(min_length=1), AfterValidator(_trimmed)]

# The model sees its input normalised in float32: a constant that is another number there (a std
# of 1e-300 is 0, every input becomes inf and every logit NaN) is refused where it is written.
FLOAT32_STD_MIN, FLOAT32_LIMIT = 1e-6, 1e6


def _in_float32(value: float) -> float:
    """`value` rounded to float32 (as numpy's float32 would; struct keeps numpy out of start-up)."""
    try:
        return float(struct.unpack("f", struct.pack("f", value))[0])
    except OverflowError:  # beyond float32's range once rounded
        return math.copysign(math.inf, value)


def _float32_std(std: float) -> float:
    seen = _in_float32(std)
    if not _in_float32(FLOAT32_STD_MIN) <= seen <= FLOAT32_LIMIT:  # (the bound rounded as the value is)
        effect = (
            "every input would be infinite or NaN"
            if seen == 0
            else "every input would be 0"
            if seen == math.inf
            else f"the inputs would be scaled {'up' if seen < 1 else 'down'} more than {FLOAT32_LIMIT:g} times"
        )
        raise ValueError(
            f"a std must be within [{FLOAT32_STD_MIN:g}, {FLOAT32_LIMIT:g}] in float32, the precision "
            f"the model's input is normalised in: {std!r} is {seen:g} there ({effect})"
        )
    return std


def _float32_mean(mean: float) -> float:
    if not abs(mean) <= FLOAT32_LIMIT:
        raise ValueError(
            f"a mean must be within ±{FLOAT32_LIMIT:g} in float32, the precision the model's input is "
            f"normalised in: {mean!r} is {_in_float32(mean):g} there"
        )
    return mean


def _unknown(what: str, name: str, known: list[str]) -> str:
    hint = suggest(name, known)
    return f"unknown {what} {name!r}{f' ({hint})' if hint else ''}; known: {', '.join(known)}"


DEFAULT_IGNORE_INDEX = 255  # segmentation masks: PASCAL VOC's "void"
PATH_COLUMN, LABEL_COLUMN = "path", "label"  # a filelist's columns unless path_column, label_column say
IMAGE_COLUMN = "image"  # a Parquet file's image column unless image_column says
COLUMN_FIELDS = ("path_column", "image_column", "label_column")

# Pillow's decompression-bomb limit: images with more pixels are refused unless data.max_pixels says otherwise.
DEFAULT_MAX_PIXELS = 89_478_485


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


Side = Annotated[int, Field(gt=0, le=4096)]


class InputSpec(Strict):
    size: Side | Annotated[list[Side], Field(min_length=2, max_length=2)] = Field(
        description="input side in pixels (square), or [height, width]"
    )
    mean: list[Annotated[float, Field(allow_inf_nan=False), AfterValidator(_float32_mean)]] = Field(
        [0.485, 0.456, 0.406], min_length=3, max_length=3, description="per RGB channel"
    )
    std: list[Annotated[float, Field(gt=0, allow_inf_nan=False), AfterValidator(_float32_std)]] = Field(
        [0.229, 0.224, 0.225],
        min_length=3,
        max_length=3,
        description=f"per RGB channel; within [{FLOAT32_STD_MIN:g}, {FLOAT32_LIMIT:g}] in float32",
    )

    @property
    def shape(self) -> tuple[int, int]:
        """(height, width) of the models' input."""
        return (self.size, self.size) if isinstance(self.size, int) else (self.size[0], self.size[1])


# models.output: a dict key, an attribute or an ONNX output name (str), or a tuple index (int)
OutputKey = Annotated[str, Field(min_length=1)] | Annotated[int, Field(ge=0)]
OUTPUT_DESCRIPTION = (
    "which of the model's outputs holds the logits: a dict key or attribute (`logits` of a Hugging Face "
    "ModelOutput), an ONNX output name, or a tuple index; default: the only output, else `logits` "
    "(segmentation: `logits` or `out`)"
)


ARCH_DESCRIPTION = "'module:callable' or 'file.py:callable' that builds the network for a state dict"
# Keyword arguments that make a builder download weights: prunegate loads the model file's weights
# into every parameter and buffer the arch builds (a key the file lacks is an error), so
# downloaded weights would be replaced unread, and a run may download nothing.
DOWNLOAD_FLAGS = ("pretrained",)


def _not_plain(value: object) -> tuple[tuple[str | int, ...], str, object] | None:
    """(where, why, what) of the first part of `value` that is not a plain YAML/JSON value
    (a string, number, boolean or null, or a list or mapping of those); None when it all is."""
    if isinstance(value, float) and not math.isfinite(value):
        return (), f"expected a finite number, got {value!r}", value
    if value is None or isinstance(value, (str, bool, int, float)):
        return None
    if isinstance(value, dict):
        for key in value:
            if not isinstance(key, str):
                return (), f"a mapping key must be a string, got {key!r}", key
        items: list[tuple[str | int, object]] = list(value.items())
    elif isinstance(value, list):
        items = list(enumerate(value))
    else:
        reason = f"a {type(value).__name__} is not a plain value: expected a string, number, boolean, null, or a list"
        return (), reason + " or mapping of those", value
    for key, item in items:
        found = _not_plain(item)
        if found is not None:
            return (key, *found[0]), found[1], found[2]
    return None


class ArchCall(Strict):
    """models.arch as a call: the builder and the plain arguments it is called with
    (`{fn: "timm:create_model", args: ["resnet18"], kwargs: {num_classes: 10}}`)."""

    fn: str = Field(min_length=1, description=ARCH_DESCRIPTION)
    args: list[Any] = Field([], description="positional arguments: strings, numbers, booleans, null, lists, mappings")
    kwargs: dict[str, Any] = Field({}, description="keyword arguments, of the same plain values")

    @field_validator("args", "kwargs")
    @classmethod
    def _plain(cls, value: list | dict) -> list | dict:
        found = _not_plain(value)
        if found is not None:
            raise field_error(*found)
        return value

    @field_validator("kwargs")
    @classmethod
    def _downloads_nothing(cls, kwargs: dict) -> dict:
        for flag in DOWNLOAD_FLAGS:
            if kwargs.get(flag) not in (None, False):
                raise field_error(
                    (flag,),
                    f"asks the builder to download weights ({kwargs[flag]!r}), which a run may not do; prunegate "
                    "replaces every weight the arch builds with the model file's anyway: leave it out or set it false",
                    kwargs[flag],
                )
        return kwargs


Arch = str | ArchCall


def arch_name(arch: Arch | None) -> str | None:
    """The builder's 'module:callable' or 'file.py:callable', of either form of models.arch."""
    return arch.fn if isinstance(arch, ArchCall) else arch


def arch_call(arch: Arch) -> tuple[str, list, dict]:
    """(builder, args, kwargs) of either form of models.arch; the arguments copied, so a builder
    that changes them changes nothing of the policy's."""
    if isinstance(arch, ArchCall):
        return arch.fn, copy.deepcopy(arch.args), copy.deepcopy(arch.kwargs)
    return arch, [], {}


def arch_text(arch: Arch) -> str:
    """How messages spell the arch: `file.py:build`, or the call `file.py:build(3, num_classes=10)`."""
    if not isinstance(arch, ArchCall):
        return arch
    shown = [repr(a) for a in arch.args] + [f"{k}={v!r}" for k, v in arch.kwargs.items()]
    return f"{arch.fn}({', '.join(shown)})"


class ModelSpec(Strict):
    path: str = Field(min_length=1)
    arch: Arch | None = Field(
        None,
        description=ARCH_DESCRIPTION + ", or {fn, args, kwargs}: that callable and the plain arguments to call it with",
    )
    output: OutputKey | None = Field(None, description=OUTPUT_DESCRIPTION + "; overrides models.output")


class Models(Strict):
    dense: str | ModelSpec
    pruned: str | ModelSpec
    input: InputSpec
    arch: Arch | None = Field(None, description="default arch for state-dict files (either form of models.*.arch)")
    output: OutputKey | None = Field(None, description=OUTPUT_DESCRIPTION + ", for both models")
    expected_accuracy: float | None = Field(
        None,
        gt=0,
        le=1,
        allow_inf_nan=False,
        description="the dense model's clean top-1 accuracy as you know it (a fraction): a run that measures it far "
        "below (its upper confidence bound under this less expected_accuracy_tolerance) stops with exit 2, as the "
        "labels or the class order must be wrong",
    )
    expected_accuracy_tolerance: float | None = Field(
        None,
        ge=0,
        lt=1,
        allow_inf_nan=False,
        description="how far below expected_accuracy the test set may lie (a fraction; default 0.2)",
    )

    @model_validator(mode="after")
    def _tolerance_below_expected(self) -> Models:
        tolerance, expected = self.expected_accuracy_tolerance, self.expected_accuracy
        if tolerance is not None and expected is None:
            raise field_error(("expected_accuracy_tolerance",), "needs models.expected_accuracy", tolerance)
        if tolerance is not None and expected is not None and tolerance >= expected:
            raise field_error(
                ("expected_accuracy_tolerance",),
                f"must be below models.expected_accuracy ({expected:g}): otherwise nothing is ever far below it",
                tolerance,
            )
        return self

    def spec(self, which: Literal["dense", "pruned"]) -> ModelSpec:
        """The model's own spec, with the defaults (models.arch, models.output) filled in."""
        value = getattr(self, which)
        spec = ModelSpec(path=value) if isinstance(value, str) else value
        defaults = {"arch": spec.arch or self.arch, "output": spec.output if spec.output is not None else self.output}
        return spec.model_copy(update=defaults)

    def output_field(self, which: Literal["dense", "pruned"]) -> str:
        """The policy field that chooses the model's output: its own, where set, else models.output."""
        value = getattr(self, which)
        own = isinstance(value, ModelSpec) and value.output is not None
        return f"models.{which}.output" if own else "models.output"


class DataSource(Strict):
    format: DataFormat
    path: str = Field(min_length=1)
    labels: str | None = Field(None, description="labels .npy file (format npy)")
    class_names: str | None = Field(
        None,
        description="text file of the model's class names in output order, one per line (e.g. the 1,000 "
        "ImageNet wnids): imagefolder sub-folders, and imagefolder-flat name prefixes before the first '_', "
        "are looked up in it, so a folder holding some of the classes gets the model's label indices; "
        "filelist: the label column holds these names; webdataset: the .cls members hold these names; parquet: "
        "a text label column holds these names (an integer one, indices into them); segmentation-folder: the "
        "names of the mask's class indices, for the report",
    )
    label_map: str | None = Field(
        None,
        description="a JSON file mapping each of the data set's labels (its class names, or label numbers as "
        "text) to the list of model classes (indices, or names from class_names) a prediction may fall in to be "
        "right: data sets whose classes are not the model's (ObjectNet, ImageNet-A/-R style)",
    )
    images_key: str = Field("images", description="npz: the images array's name in the archive")
    labels_key: str = Field("labels", description="npz: the labels array's name in the archive")
    ignore_index: int | None = Field(
        None,
        ge=0,
        le=65535,
        description=f"segmentation-folder: the mask value of pixels no metric counts (default {DEFAULT_IGNORE_INDEX}, "
        "as PASCAL VOC marks object borders)",
    )
    path_column: str | None = Field(
        None, min_length=1, description=f"filelist: the header of the image path column (default {PATH_COLUMN!r})"
    )
    image_column: str | None = Field(
        None,
        min_length=1,
        description=f"parquet: the column of image file bytes (default {IMAGE_COLUMN!r}): binary, or a struct "
        "with a `bytes` field as Hugging Face datasets writes images",
    )
    label_column: str | None = Field(
        None,
        min_length=1,
        description=f"filelist: the header of the label column; parquet: the label column (default {LABEL_COLUMN!r})",
    )

    @model_validator(mode="after")
    def _fields_for_the_format(self) -> DataSource:
        if self.format == "npy" and not self.labels:
            raise field_error(
                ("labels",), "format npy needs 'labels': the path of an integer labels .npy file", self.labels
            )
        # Only a value other than the default counts: a report's recorded document spells out every
        # default (images_key: images for an image folder too), and re-reading it must validate.
        for name in sorted(self.model_fields_set & FORMAT_FIELDS.keys()):
            value, formats = getattr(self, name), FORMAT_FIELDS[name]
            if value is not None and value != type(self).model_fields[name].default and self.format not in formats:
                readers = f"the formats {', '.join(formats)}" if len(formats) > 1 else f"the {formats[0]} format"
                raise field_error((name,), f"format {self.format} does not read {name}: {name} is for {readers}", value)
        sample_column, label_column = self.columns
        if sample_column == label_column:
            which = "image" if self.format == "parquet" else "path"
            raise field_error(("label_column",), f"cannot be the {which} column too ({sample_column!r})", label_column)
        return self

    @model_serializer(mode="wrap")
    def _without_unset_columns(self, handler: SerializerFunctionWrapHandler) -> dict:
        """The report's policy document leaves out the filelist and parquet columns when unset, so
        that the document of every other format reads as it did before they existed (`verify
        --policy` compares documents field by field)."""
        return {k: v for k, v in handler(self).items() if not (k in COLUMN_FIELDS and v is None)}

    @property
    def columns(self) -> tuple[str, str]:
        """The sample and label columns, the defaults where unset: a filelist's path and label
        columns, a Parquet file's image and label columns."""
        if self.format == "parquet":
            return self.image_column or IMAGE_COLUMN, self.label_column or LABEL_COLUMN
        return self.path_column or PATH_COLUMN, self.label_column or LABEL_COLUMN

    @property
    def mask_ignore(self) -> int:
        """The mask value that marks pixels no metric counts (segmentation-folder)."""
        return DEFAULT_IGNORE_INDEX if self.ignore_index is None else self.ignore_index


class OodSource(DataSource):
    name: Name = Field(pattern=r"^[A-Za-z0-9_.-]+$")


class Data(Strict):
    test: DataSource
    limit: int | None = Field(None, gt=0, description="class-balanced subset of the test set")
    ood: list[OodSource] = []
    groups: dict[Name, Annotated[list[int | str], Field(min_length=1)]] | str | None = Field(
        None,
        description="subgroups for group_accuracy_drop: {name: [class names or label indices]}, or a JSON/YAML "
        "file of that mapping",
    )
    max_pixels: int = Field(
        DEFAULT_MAX_PIXELS, gt=0, description="images with more pixels are refused (decompression bombs)"
    )

    @field_validator("ood")
    @classmethod
    def _unique_names(cls, ood: list[OodSource]) -> list[OodSource]:
        _unique_names(ood, "ood set")
        return ood


class NoiseSpec(Strict):
    kind: str
    levels: list[Annotated[float, Field(ge=0.0, le=10.0, allow_inf_nan=False)]] = Field(min_length=1)
    draws: int = Field(1, ge=1, le=100, description="independent noise draws per sample")

    @field_validator("kind")
    @classmethod
    def _known_kind(cls, kind: str) -> str:
        if kind not in NOISE_KINDS:
            raise ValueError(_unknown("noise kind", kind, list(NOISE_KINDS)))
        return kind


class Corruptions(Strict):
    preset: str = "imagenet-c"
    names: Literal["all"] | list[str] = "all"
    severities: list[Annotated[int, Field(ge=1, le=5)]] = Field([1, 2, 3, 4, 5], min_length=1)
    precomputed: str | None = Field(
        None, description="a CIFAR-10-C style folder (<name>.npy + labels.npy) to read instead of generating"
    )
    frost_textures: str | None = Field(
        None,
        description="a folder of frost photographs (PNG/JPEG) for `frost` to overlay, as the reference does, "
        "instead of prunegate's procedural textures; the report records their sha256",
    )

    @field_validator("preset")
    @classmethod
    def _known_preset(cls, preset: str) -> str:
        if preset not in PRESET_NAMES:
            raise ValueError(_unknown("preset", preset, list(PRESET_NAMES)))
        return preset

    @field_validator("names")
    @classmethod
    def _known_names(cls, names: str | list[str]) -> str | list[str]:
        for i, name in enumerate([] if names == "all" else names):
            if name not in CORRUPTION_NAMES:
                raise field_error((i,), _unknown("corruption", name, list(CORRUPTION_NAMES)), name)
        return names

    def corruption_names(self) -> list[str]:
        return list(CORRUPTION_NAMES) if self.names == "all" else list(self.names)

    def asset_folders(self) -> dict[str, str]:
        """The asset folders the generated corruptions use, by field (e.g. frost_textures), as
        written in the policy: only where the corruption that overlays them is generated."""
        if self.precomputed:
            return {}
        names = self.corruption_names()
        found = {key: getattr(self, key) for key, shift in ASSET_SHIFTS.items() if shift in names}
        return {key: value for key, value in found.items() if value}


class Suite(Strict):
    seed: int = Field(0, ge=0, lt=2**63)
    noise: list[NoiseSpec] = []
    corruptions: Corruptions | None = None


class Rule(Strict):
    name: Name
    tasks: str | Annotated[list[str], Field(min_length=1)] = Field(description="shell-style glob(s) over task names")
    metric: MetricName
    aggregate: Literal["each", "mean", "min", "max"] = "each"
    max: float | None = Field(None, allow_inf_nan=False)
    min: float | None = Field(None, allow_inf_nan=False)
    coverage: float | None = Field(
        None,
        gt=0.0,
        le=1.0,
        allow_inf_nan=False,
        description=f"selective_risk_increase: the fraction of samples each model keeps (default {DEFAULT_COVERAGE})",
    )

    @model_validator(mode="after")
    def _one_threshold_in_range(self) -> Rule:
        if self.max is None and self.min is None:
            raise ValueError("set one of 'max' or 'min' (the rule's threshold)")
        if self.max is not None and self.min is not None:
            raise field_error(("min",), "set exactly one of 'max' or 'min': this rule sets both", self.min)
        which = "max" if self.max is not None else "min"
        threshold = getattr(self, which)
        low, high = METRICS[self.metric][0]
        if self.metric not in SIGNED_METRICS:
            low = max(low, 0.0)  # a negative tolerance would demand the pruned model be better
        if not low <= threshold <= high:
            raise field_error(
                (which,), f"threshold {threshold} for {self.metric} must be within [{low:g}, {high:g}]", threshold
            )
        if self.coverage is not None and self.metric != "selective_risk_increase":
            raise field_error(
                ("coverage",), f"coverage is for selective_risk_increase, not {self.metric}", self.coverage
            )
        return self

    @property
    def key(self) -> str:
        """The name the task records keep the rule's number under: the metric, and for the
        selective risk its coverage (`selective_risk_increase@0.8`)."""
        if self.metric == "selective_risk_increase":
            return f"{self.metric}@{self.coverage if self.coverage is not None else DEFAULT_COVERAGE:g}"
        return self.metric

    @property
    def globs(self) -> list[str]:
        return [self.tasks] if isinstance(self.tasks, str) else list(self.tasks)


class Gate(Strict):
    rules: list[Rule] = Field(min_length=1)
    confidence: float | None = Field(
        None,
        gt=0.5,
        lt=1.0,
        allow_inf_nan=False,
        description="decide each rule on the conservative end of this two-sided confidence "
        "interval (upper bound of a drop, lower bound of an agreement); unset: on the point estimates",
    )
    bootstrap: int = Field(1000, ge=100, le=100_000, description="bootstrap resamples (seeded by suite.seed)")
    sequential: bool = Field(
        False,
        description="stop as soon as every rule is decided, on anytime-valid confidence sequences "
        "(needs gate.confidence); each data set is read in a seeded random order",
    )
    min_samples: int = Field(
        DEFAULT_MIN_SAMPLES, ge=1, description="sequential: images of a data set read before it may stop"
    )
    looks: Literal["batch"] | Annotated[int, Field(gt=0)] = Field(
        "batch", description="sequential: look after every batch, or after every this many images of a data set"
    )

    @field_validator("rules")
    @classmethod
    def _unique_rule_names(cls, rules: list[Rule]) -> list[Rule]:
        _unique_names(rules, "rule")
        return rules

    @model_validator(mode="after")
    def _sequential_needs_intervals(self) -> Gate:
        for path, reason, value in sequential_problems(self):
            raise field_error(path, reason, value)
        return self


def sequential_problems(gate: Gate) -> list[tuple[tuple, str, object]]:
    """Why `gate` cannot be decided sequentially, as (field path under gate, reason, value)."""
    if not gate.sequential:
        return []
    if gate.confidence is None:
        return [(("sequential",), "a sequential gate needs gate.confidence (its error level)", True)]
    found: list[tuple[tuple, str, object]] = [
        (
            ("rules", i, "metric"),
            f"rule {rule.name!r}: {rule.metric} has no anytime-valid interval (not a mean of bounded per-sample "
            f"values); a sequential gate can decide {', '.join(SEQUENTIAL_METRICS)}",
            rule.metric,
        )
        for i, rule in enumerate(gate.rules)
        if rule.metric not in SEQUENTIAL_METRICS
    ]
    return found[:1]


class Runtime(Strict):
    device: Literal["auto", "cpu", "cuda"] = "auto"
    backend: Literal["auto", "torch", "onnx"] = "auto"
    batch_size: Literal["auto"] | Annotated[int, Field(gt=0, le=MAX_BATCH_SIZE)] = Field(
        "auto",
        description="images per batch; auto: as many as fit the memory budget at the input's size "
        "(at most 256; see runtime.memory_budget)",
    )
    memory_budget: int | None = Field(
        None,
        ge=16,
        le=1 << 24,
        description="MiB the pass's working set may take when batch_size is auto (unset: 1024 on the CPU, "
        "half the free memory on CUDA)",
    )
    workers: int = Field(2, ge=0, le=64, description="background decoding processes")
    allow_fallback: bool = Field(
        False, description="run on CPU when CUDA was asked for but is missing; skip unavailable providers"
    )
    providers: list[Annotated[str, Field(pattern=r"^[A-Za-z0-9]+ExecutionProvider$")]] | None = Field(
        None,
        min_length=1,
        description="ONNX Runtime execution providers for ONNX models, in order of preference, as ONNX Runtime "
        "spells them (e.g. [TensorrtExecutionProvider, CUDAExecutionProvider, CPUExecutionProvider]); "
        "unset: CUDA on a CUDA device, else CPU. One that this ONNX Runtime lacks is an error unless "
        "allow_fallback",
    )
    precision: Literal["fp32", "bf16", "fp16"] = Field(
        "fp32", description="bf16/fp16: torch models run under autocast (fp16 on CUDA only); ONNX Runtime runs fp32"
    )
    channels_last: Literal["auto", "on", "off"] = Field(
        "auto", description="channels-last memory format for torch models (auto: on CUDA for models with convolutions)"
    )
    cache: str | None = Field(
        None,
        description="a folder where the dense model's outputs (and the corruptions' images) are kept between "
        "runs: a second check of another pruned model against the same dense model, data and suite does not "
        "run the dense model or the corruptions again (the report says which tasks came from it)",
    )
    isolation: Literal["auto", "strict", "off"] = Field(
        "auto",
        description="auto: each model runs in a process of its own, sandboxed as far as the kernel allows "
        "(recorded); strict: refuse to run unless the sandbox is complete; off: in prunegate's own process "
        "(debugging only: such a report is never signed)",
    )

    @field_validator("batch_size", mode="before")
    @classmethod
    def _batch_size(cls, value: object) -> object:
        """One message for every wrong value (a union would answer 0 with "should be 'auto'")."""
        if value == "auto" or (type(value) is int and 0 < value <= MAX_BATCH_SIZE):
            return value
        raise ValueError(f"expected auto or a whole number of images from 1 to {MAX_BATCH_SIZE}, got {value!r}")

    @field_validator("channels_last", "isolation", mode="before")
    @classmethod
    def _yaml_switch(cls, value: object) -> object:
        """YAML 1.1 reads a bare on/off as a boolean: take it as the word it was."""
        return ("on" if value else "off") if isinstance(value, bool) else value


class Policy(Strict):
    version: Literal[1]
    name: Name
    task: TaskName = Field(
        "classification",
        description="classification: logits [N, classes], one label per image; segmentation: logits "
        "[N, classes, height, width] at the input's size, one index mask per image (segmentation-folder data)",
    )
    models: Models
    data: Data
    suite: Suite = Suite()
    gate: Gate
    runtime: Runtime = Runtime()
    require_signature: bool = Field(False, description="refuse to run without a signing key")

    @model_validator(mode="after")
    def _fits_the_task(self) -> Policy:
        """Data formats and rule metrics must be the task's: a classification metric in a
        segmentation policy (or the reverse) would gate on nothing."""
        segmentation = self.task == "segmentation"
        sources = [(("data", "test"), self.data.test)] + [(("data", "ood", i), o) for i, o in enumerate(self.data.ood)]
        for location, source in sources:
            if (source.format == "segmentation-folder") != segmentation:
                wanted = "segmentation-folder" if segmentation else "a classification format, not segmentation-folder"
                raise field_error(
                    (*location, "format"),
                    f"the policy's task is {self.task}: its data must be {wanted}"
                    + ("" if segmentation else " (for segmentation models set `task: segmentation`)"),
                    source.format,
                )
        corruptions = self.suite.corruptions
        if segmentation and corruptions is not None and corruptions.precomputed:
            raise field_error(
                ("suite", "corruptions", "precomputed"),
                "precomputed corruptions hold no masks: a segmentation policy generates its corruptions",
                corruptions.precomputed,
            )
        allowed = METRICS_BY_TASK[self.task]
        for i, rule in enumerate(self.gate.rules):
            if rule.metric not in allowed:
                other = next(task for task, metrics in METRICS_BY_TASK.items() if rule.metric in metrics)
                raise field_error(
                    ("gate", "rules", i, "metric"),
                    f"rule {rule.name!r}: {rule.metric} is a {other} metric but the policy's task is {self.task}; "
                    f"{self.task} metrics: {', '.join(allowed)}",
                    rule.metric,
                )
        return self

    _file: Path | None = PrivateAttr(None)
    _sha256: str | None = PrivateAttr(None)
    _overrides: dict = PrivateAttr(default_factory=dict)  # field -> value the command line set instead
    _base_dir: Path | None = PrivateAttr(None)  # where relative paths start (a ready policy: the working dir)

    @property
    def file(self) -> Path | None:
        return self._file

    @property
    def sha256(self) -> str | None:
        return self._sha256

    @property
    def overrides(self) -> dict:
        """What the command line replaced: dotted field -> the value used (see check.apply_overrides)."""
        return dict(self._overrides)

    @property
    def paths_from(self) -> Path | None:
        """Where relative paths start when not beside the file (a ready policy run by name)."""
        return self._base_dir

    @property
    def base_dir(self) -> Path:
        if self._base_dir is not None:
            return self._base_dir
        return self._file.parent if self._file else Path.cwd()

    def resolve(self, path: str) -> Path:
        """A path from the policy, relative to the policy file's folder."""
        candidate = Path(path).expanduser()
        return candidate if candidate.is_absolute() else self.base_dir / candidate


class _UniqueKeyLoader(yaml.SafeLoader):
    """safe_load that refuses duplicate keys (YAML would silently keep the last one), and reads
    numbers in exponent notation without a dot or an exponent sign (1e-2, 1E5, .5e3, +1e-2) as
    floats, as YAML 1.2 does, rather than as strings (as PyYAML's YAML 1.1 does)."""


def _construct_mapping(loader: _UniqueKeyLoader, node: yaml.MappingNode, deep: bool = False) -> dict:
    mapping = {}
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if not isinstance(key, Hashable):
            raise yaml.constructor.ConstructorError(
                None, None, f"a key must be a name, not a {type(key).__name__}", key_node.start_mark
            )
        if key in mapping:
            raise yaml.constructor.ConstructorError(None, None, f"duplicate key {key!r}", key_node.start_mark)
        mapping[key] = loader.construct_object(value_node, deep=deep)
    return mapping


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)
# Only forms with an exponent: those without one (1.5, .5, 10) already resolve as YAML 1.1 says,
# and a plain integer must stay an int.
_UniqueKeyLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)[eE][-+]?[0-9]+$"),
    list("-+0123456789."),
)


def _field_path(error: ErrorDetails, data: object) -> str:
    """The error's dotted location in the user's document. pydantic's own location parts (union
    members such as 'str' or 'ModelSpec', validator names) are not keys of the document: left out.
    A last part the document lacks is kept when it is a field there (a required field that is
    missing, or one a check needs: data.test.labels for format npy)."""
    location, parts, node = error["loc"], [], data
    for i, part in enumerate(location):
        if isinstance(node, dict) and part in node:
            node = node[part]
        elif isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node):
            node = node[part]
        elif not (i == len(location) - 1 and (error["type"] == "missing" or part in _fields_at(tuple(location)))):
            continue
        parts.append(str(part))
    return ".".join(parts)


def _members(annotation: object) -> list:
    """The alternatives of a type annotation: Annotated and Optional/Union unwrapped."""
    while get_origin(annotation) is Annotated:
        annotation = get_args(annotation)[0]
    if get_origin(annotation) in (Union, UnionType):
        return [m for arg in get_args(annotation) for m in _members(arg)]
    return [annotation]


def _fields_at(location: tuple) -> list[str]:
    """The field names the schema allows in the mapping at `location` (an error's loc, whose last
    part is the offending key); [] when that is not one model."""
    node: object = Policy
    for part in location[:-1]:
        for member in _members(node):
            if isinstance(part, int):
                if get_origin(member) is list:
                    node = get_args(member)[0]
                    break
            elif isinstance(member, type) and issubclass(member, BaseModel) and part in member.model_fields:
                node = member.model_fields[part].annotation
                break
            elif part == getattr(member, "__name__", None):  # pydantic's tag for a union member
                node = member
                break
        # any other part is pydantic's own (a validator's name): the node stays
    models = [m for m in _members(node) if isinstance(m, type) and issubclass(m, BaseModel)]
    return list(models[0].model_fields) if len(models) == 1 else []


def suggest(name: object, known: list[str]) -> str:
    """ "did you mean 'x'?" for the closest of `known`, or ""."""
    close = difflib.get_close_matches(str(name), known, n=1, cutoff=0.6)
    return f"did you mean {close[0]!r}?" if close else ""


def _unknown_field(error: ErrorDetails) -> tuple[str, str | None]:
    """The message for a misspelled key, and the field it probably meant."""
    fields = _fields_at(tuple(error["loc"]))
    hint = suggest(error["loc"][-1], fields)
    if hint:
        return f"unknown field; {hint}", difflib.get_close_matches(str(error["loc"][-1]), fields, n=1, cutoff=0.6)[0]
    allowed = f"; allowed here: {', '.join(fields)}" if fields else ""
    return f"unknown field{allowed} (see `prunegate policy schema`)", None


def _describe(error: ErrorDetails) -> str:
    kind, message = error["type"], error["msg"]
    if kind == "extra_forbidden":
        return _unknown_field(error)[0]
    if kind == "missing":
        return "required field is missing"
    if message.startswith("Value error, "):
        message = message[len("Value error, ") :]
    received = error.get("input")
    if kind == "finite_number":
        return (
            "not a number (NaN): expected a finite number"
            if received != received
            else f"expected a finite number, got {received!r}"
        )
    if kind.endswith("_type"):
        if isinstance(received, dict):
            message += " (got a mapping)"
        elif isinstance(received, list):
            message += " (got a list)"
        else:
            shown = repr(received)
            message += f" (got {shown if len(shown) <= 60 else shown[:59] + '…'})"
    return message


def policy_from_dict(data: object, file: Path | str = "<policy>") -> Policy:
    """Validate a parsed policy document into a Policy; a PolicyError names the deepest problem."""
    if not isinstance(data, dict):
        raise PolicyError("expected a mapping of policy fields at the top level", file=file)
    try:
        return Policy.model_validate(data)
    except ValidationError as exc:
        errors = exc.errors(include_url=False)
        # pydantic lists every branch of a union: report the error that got deepest into the
        # document (a misspelled key inside a mapping, not "should be a string"; the misspelled
        # key rather than the required one it left missing), and count the other places with
        # problems, not the other branches of the reported one.
        paths = [_field_path(e, data) for e in errors]

        def rank(i: int) -> tuple[int, bool, bool]:
            kind = errors[i]["type"]
            return paths[i].count(".") + bool(paths[i]), not kind.endswith("_type"), kind == "extra_forbidden"

        deepest = max(range(len(errors)), key=rank)
        chosen = paths[deepest]
        others = {p for p in paths if p != chosen and not chosen.startswith(p + ".") and p}
        if errors[deepest]["type"] == "extra_forbidden":  # the field a misspelling left missing is no news
            meant = _unknown_field(errors[deepest])[1]
            if meant:
                others.discard(".".join([*chosen.split(".")[:-1], meant]))
        more = len(others)
        suffix = f" (and {more} more problem{'s' if more > 1 else ''})" if more > 0 else ""
        raise PolicyError(_describe(errors[deepest]) + suffix, file=file, field=chosen or None) from None


def load_policy(path: Path | str) -> Policy:
    """Read, parse and validate a policy file, or the ready policy a bare name (`cifar10`) names
    when no such file exists (prunegate.ready)."""
    from prunegate import ready

    path = Path(path)
    shipped = ready.ready_policy(path)
    if shipped is not None:
        policy = load_policy(shipped)
        policy._base_dir = Path.cwd()
        return policy
    if not path.exists():
        reason = missing_reason(path, "policy file")
        if ready.looks_like_a_name(path):
            reason += f" and no ready policy has that name (ready: {', '.join(ready.ready_names())})"
        raise PolicyError(reason, file=path)
    if path.is_dir():
        raise PolicyError("is a directory, expected a policy YAML file", file=path)
    try:
        raw = path.read_bytes()
        data = yaml.load(raw.decode("utf-8"), Loader=_UniqueKeyLoader)
    except UnicodeDecodeError:
        raise PolicyError("not UTF-8 text", file=path) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else None
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise PolicyError(f"invalid YAML: {problem}", file=path, field=where) from None
    except RecursionError:
        raise PolicyError("invalid YAML: nested too deeply", file=path) from None
    except OSError as exc:
        raise PolicyError(f"cannot read: {exc.strerror}", file=path) from None
    policy = policy_from_dict(data, file=path)
    policy._file = path.resolve()
    policy._sha256 = hashlib.sha256(raw).hexdigest()
    return policy


def policy_json_schema() -> str:
    """The policy's JSON Schema, as indented JSON text."""
    return json.dumps(Policy.model_json_schema(), indent=2)
