"""`prunegate prune`'s work: check the options, prune (and retrain) each member, export it with
its per-layer sparsity sidecar, print the layer table. The pruning is `prunegate.prune`'s (and
`prunegate.prune_data`'s for sipp/pfp, on a calibration batch), the training and the batches
`prunegate.retrain`'s; this module reads options, prints and writes files."""

from __future__ import annotations

import dataclasses
import json
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from rich.columns import Columns
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from prunegate.errors import PrunegateError, require_file

from .common import EXIT_PASS, duration, split_csv
from .outputs import write_together

if TYPE_CHECKING:
    import torch
    from torch import nn

    from prunegate.retrain import RetrainOptions, TrainSet

SUFFIXES = {"onnx": "onnx", "torchscript": "pt"}
TABLE_ROWS = 16  # more layers than this are laid out in columns, to keep the table short
CALIBRATE_IMAGES = 64  # sipp/pfp's default calibration batch: the papers' order of magnitude, cheap


@dataclass(frozen=True)
class RetrainRequest:
    """The --retrain options as given (None: not given)."""

    data: Path | None = None
    class_names: Path | None = None
    epochs: int | None = None
    lr: float | None = None
    iterations: int | None = None
    batch_size: int | None = None
    seed: int | None = None
    limit: int | None = None
    mean: str | None = None
    std: str | None = None
    augment: bool | None = None

    def given(self) -> list[str]:
        """The training options given, by their option names (they need --retrain)."""
        names = {"limit": "train-limit", "batch_size": "batch-size", "class_names": "class-names"}
        return [
            "--" + names.get(key, key)
            for key, value in self.__dict__.items()
            if key != "data" and value is not None and key != "augment"
        ] + (["--augment/--no-augment"] if self.augment is not None else [])


@dataclass(frozen=True)
class PruneRequest:
    model: Path
    ratios: str
    out: Path
    input_size: int
    method: str = "wt"
    scope: str | None = None
    keep_depthwise: bool = False
    keep_first_last: bool = False
    arch: str | None = None
    formats: str = "onnx,torchscript"
    allow_pickle: bool = False
    retrain: RetrainRequest = field(default_factory=RetrainRequest)
    calibrate: Path | None = None
    calibrate_images: int | None = None


@dataclass(frozen=True)
class Calibration:
    """sipp/pfp's calibration batch: preprocessed model inputs, and where they came from."""

    inputs: torch.Tensor
    data: Path
    images: int


def run_prune(request: PruneRequest, stdout: Console, stderr: Console) -> int:
    """Check every option, then make, export and describe each member."""
    from prunegate.prune import kept_layers
    from prunegate.runners.torch import load_torch_module

    levels, kinds, scope = _check_options(request)
    options = _retrain_options(request)
    train = None
    if options is not None:
        train = _image_set(request.retrain.data, request.retrain, request.retrain.limit, "--retrain")
    calibration = _calibration(request, options, train)
    require_file(request.model, "model file", field="--model")
    module, _, _ = load_torch_module(request.model, "--model", request.arch, Path.cwd(), request.allow_pickle)
    keep = kept_layers(module, depthwise=request.keep_depthwise, first_last=request.keep_first_last)
    _check_something_to_prune(module, keep, request)
    names = {r: f"{request.method}-{round(r * 100):02d}" for r in levels}
    targets = {r: [request.out / f"{names[r]}.{SUFFIXES[k]}" for k in kinds] for r in levels}
    for path in [p for r in levels for p in [*targets[r], request.out / f"{names[r]}.layers.json"]]:
        if path.exists():
            raise PrunegateError("already exists; refusing to overwrite", file=path)
    request.out.mkdir(parents=True, exist_ok=True)
    with _retrain_progress(stderr, levels, train, options, request.retrain.iterations or 1) as progress:
        for r in levels:
            member = _make_member(module, request, r, scope, keep, train, options, calibration, progress)
            sidecar = _sidecar(member, request, r, scope, keep, options, train, calibration)
            _export_member(
                member,
                request.input_size,
                dict(zip(kinds, targets[r])),
                request.out / f"{names[r]}.layers.json",
                sidecar,
            )
            _print_member(stdout, request.method, r, sidecar)
    written = [str(p) for r in levels for p in [*targets[r], request.out / f"{names[r]}.layers.json"]]
    stdout.print(f"wrote {', '.join(written)}")
    return EXIT_PASS


def _check_options(request: PruneRequest) -> tuple[list[float], list[str], str]:
    """The ratios, export formats and scope; a bad option is a one-line error naming it."""
    from prunegate.prune import DATA_METHODS, METHODS, SCOPES

    if request.method not in METHODS:
        raise PrunegateError(f"--method must be one of {', '.join(METHODS)}, got {request.method!r}")
    try:
        levels = [float(r) for r in split_csv(request.ratios) or []]
    except ValueError:
        raise PrunegateError(f"--ratios must be numbers in [0, 1), got {request.ratios!r}") from None
    if not levels or any(not 0.0 <= r < 1.0 for r in levels):
        raise PrunegateError(f"--ratios must be numbers in [0, 1), got {request.ratios!r}")
    kinds = split_csv(request.formats) or []
    if not kinds or any(k not in SUFFIXES for k in kinds):
        raise PrunegateError(f"--format must list onnx and/or torchscript, got {request.formats!r}")
    if request.scope is not None and request.scope not in SCOPES:
        raise PrunegateError(f"--scope must be one of {', '.join(SCOPES)}, got {request.scope!r}")
    if request.method not in DATA_METHODS:
        for flag, given in (
            ("--calibrate", request.calibrate is not None),
            ("--calibrate-images", request.calibrate_images is not None),
        ):
            if given:
                raise PrunegateError(f"{flag} applies to --method sipp or pfp (they rank by a calibration batch)")
    else:
        for flag, given in (
            ("--scope", request.scope is not None),
            ("--keep-depthwise", request.keep_depthwise),
            ("--keep-first-last", request.keep_first_last),
        ):
            if given:
                raise PrunegateError(
                    f"{flag} applies to --method wt ({request.method} prunes every layer by the ratio)"
                )
        if request.calibrate is None and request.retrain.data is None:
            raise PrunegateError(
                f"--method {request.method} needs a calibration batch: give --calibrate DATA (or --retrain DATA)"
            )
        return levels, kinds, "layer"
    if request.method == "ft":
        # Filter pruning ranks filters within their layer: a global ranking is not what FT means.
        if request.scope == "global":
            raise PrunegateError("--scope global does not apply to --method ft (filters are pruned per layer)")
        for flag, given in (
            ("--keep-depthwise", request.keep_depthwise),
            ("--keep-first-last", request.keep_first_last),
        ):
            if given:
                raise PrunegateError(f"{flag} applies to --method wt (ft keeps the classifier already)")
        return levels, kinds, "layer"
    return levels, kinds, request.scope or "global"


def _check_something_to_prune(module: nn.Module, keep: set[str], request: PruneRequest) -> None:
    """A model whose every prunable layer is kept dense (or that has none) is an input error."""
    from prunegate.prune import prunable_weights

    names = [name for name, _ in prunable_weights(module)]
    if not names:
        raise PrunegateError("the model has no conv or linear weights to prune", file=request.model, field="--model")
    if all(name in keep for name in names):
        flags = [
            f
            for f, on in (("--keep-depthwise", request.keep_depthwise), ("--keep-first-last", request.keep_first_last))
            if on
        ]
        raise PrunegateError(f"{' and '.join(flags)} keep every prunable layer of the model dense: nothing to prune")


def _channels(option: str, text: str | None) -> tuple[float, ...] | None:
    """--mean / --std: one number (every channel) or one per channel."""
    if text is None:
        return None
    try:
        values = tuple(float(v) for v in split_csv(text) or [])
    except ValueError:
        values = ()
    if len(values) not in (1, 3) or (option == "--std" and any(v <= 0 for v in values)):
        what = "positive numbers" if option == "--std" else "numbers"
        raise PrunegateError(f"{option} must be 1 or 3 comma-separated {what}, got {text!r}")
    return values


def _retrain_options(request: PruneRequest) -> RetrainOptions | None:
    """The training options, or None without --retrain (where giving any of them is an error)."""
    from prunegate.retrain import RetrainOptions

    r = request.retrain
    if r.data is None:
        # The preprocessing and the class names serve the calibration batch as well.
        shared = ("--mean", "--std", "--class-names") if request.calibrate is not None else ()
        given = [name for name in r.given() if name not in shared]
        if given:
            raise PrunegateError(f"{given[0]} applies only with --retrain DATA")
        return None
    if r.lr is not None and not r.lr > 0:
        raise PrunegateError(f"--lr must be a positive number, got {r.lr}")
    defaults = RetrainOptions(size=request.input_size)
    return RetrainOptions(
        size=request.input_size,
        epochs=r.epochs or defaults.epochs,
        lr=r.lr or defaults.lr,
        batch_size=r.batch_size or defaults.batch_size,
        seed=r.seed if r.seed is not None else defaults.seed,
        mean=_channels("--mean", r.mean),
        std=_channels("--std", r.std),
        augment=r.augment if r.augment is not None else defaults.augment,
    )


def _image_set(path: Path | None, r: RetrainRequest, limit: int | None, field: str) -> TrainSet:
    """--retrain or --calibrate data, its format read from its layout (as `check --data`), with a
    class-balanced subset of `limit` images (None: --retrain's default)."""
    from pydantic import ValidationError

    from prunegate.data import open_source, select
    from prunegate.data_layout import guess_format
    from prunegate.policy import DataSource
    from prunegate.retrain import DEFAULT_LIMIT, TrainSet

    assert path is not None
    fmt = guess_format(path, field)
    if fmt == "segmentation-folder":
        raise PrunegateError(f"{field} needs one class label per image, not masks", file=path, field=field)
    if r.class_names is not None:
        require_file(r.class_names, "class names file", field="--class-names")
    try:
        spec = DataSource(format=fmt, path=str(path), class_names=str(r.class_names) if r.class_names else None)  # type: ignore[arg-type]
    except ValidationError:
        raise PrunegateError(f"--class-names does not apply to {fmt} data", file=path, field=field) from None
    images = open_source(spec, Path, field)
    if len(images) == 0:
        raise PrunegateError("no images in it", file=path, field=field)
    return TrainSet(images, select(images.labels, limit or DEFAULT_LIMIT), field=field)


def _calibration(request: PruneRequest, options: RetrainOptions | None, train: TrainSet | None) -> Calibration | None:
    """sipp/pfp's batch: --calibrate-images class-balanced images of --calibrate (default: the
    --retrain data), read and normalised as the retraining batches are, without augmentation."""
    from prunegate.data import select
    from prunegate.prune import DATA_METHODS
    from prunegate.retrain import RetrainOptions, TrainSet, batch_inputs

    if request.method not in DATA_METHODS:
        return None
    count = request.calibrate_images or CALIBRATE_IMAGES
    if request.calibrate is not None:
        data = _image_set(request.calibrate, request.retrain, count, "--calibrate")
    else:
        assert train is not None
        data = TrainSet(train.images, select(train.images.labels, count), field="--retrain")
    if options is None:
        r = request.retrain
        options = RetrainOptions(
            size=request.input_size, mean=_channels("--mean", r.mean), std=_channels("--std", r.std)
        )
    inputs, _ = batch_inputs(data, [int(i) for i in data.indices], dataclasses.replace(options, augment=False))
    return Calibration(inputs, Path(str(data.images.path)), len(data.indices))


def _make_member(
    module: nn.Module,
    request: PruneRequest,
    ratio: float,
    scope: str,
    keep: set[str],
    train: TrainSet | None,
    options: RetrainOptions | None,
    calibration: Calibration | None,
    progress: _StepLines,
) -> nn.Module:
    """One member: pruned from the dense model, and retrained when asked (iteratively; sipp/pfp
    rank the current member's weights on the same calibration batch at every step)."""
    from prunegate.prune import prune as prune_model
    from prunegate.retrain import prune_retrain

    images = calibration.inputs if calibration is not None else None

    def prune_fn(model: nn.Module, r: float) -> nn.Module:
        return prune_model(model, request.method, r, scope, keep, images=images)

    if train is None or options is None:
        return prune_fn(module, ratio)
    return prune_retrain(
        module,
        ratio,
        prune_fn,
        train,
        options,
        iterations=request.retrain.iterations or 1,
        progress=progress.advance,
        step_done=lambda k, r, loss: progress.step(request.method, ratio, k, r, loss),
    )


def _sidecar(
    member: nn.Module,
    request: PruneRequest,
    ratio: float,
    scope: str,
    keep: set[str],
    options: RetrainOptions | None,
    train: TrainSet | None,
    calibration: Calibration | None,
) -> dict:
    """What the member's .layers.json holds: how it was made, and every layer's sparsity."""
    from prunegate.prune import count_parameters, layer_sparsity

    total, nonzero = count_parameters(member)
    retrained = None
    if options is not None and train is not None:
        retrained = {
            "data": str(train.images.path),
            "images": len(train.indices),
            "iterations": request.retrain.iterations or 1,
            **{k: v for k, v in options.__dict__.items() if k != "size"},
        }
    return {
        "method": request.method,
        "ratio": ratio,
        "scope": scope,
        "kept_dense": sorted(keep) if request.method == "wt" else [],
        "parameters": total,
        "nonzero": nonzero,
        "retrain": retrained,
        "calibration": None if calibration is None else {"data": str(calibration.data), "images": calibration.images},
        "layers": layer_sparsity(member),
    }


def _export_member(member: nn.Module, size: int, targets: dict[str, Path], sidecar_path: Path, sidecar: dict) -> None:
    """Export every format into a temporary folder beside the targets, then write them and the
    sidecar together: an interrupt or failure leaves no member half-written (the folder goes)."""
    from prunegate.prune import export_model

    folder = next(iter(targets.values())).parent
    with tempfile.TemporaryDirectory(prefix=".prune-", dir=folder) as staging:
        files: list[tuple[Path, str | bytes]] = []
        for kind, target in targets.items():
            tmp = Path(staging) / target.name
            export_model(member, size, tmp, kind)
            files.append((target, tmp.read_bytes()))
        files.append((sidecar_path, json.dumps(sidecar, indent=2) + "\n"))
        write_together(files)


def _print_member(console: Console, method: str, ratio: float, sidecar: dict) -> None:
    """The member's summary line and its layers' sparsity, in columns when there are many."""
    total, nonzero = sidecar["parameters"], sidecar["nonzero"]
    console.print(
        f"{method} {ratio:g}: {nonzero:,}/{total:,} parameters nonzero (prune ratio {1 - nonzero / total:.3f})"
    )
    rows = sidecar["layers"]
    kept = set(sidecar["kept_dense"])
    width = max(len(row["layer"].removesuffix(".weight")) for row in rows)
    cells = [
        f"  {row['layer'].removesuffix('.weight'):<{width}} {row['parameters']:>9,} "
        f"{row['sparsity']:>6.1%}{' kept' if row['layer'] in kept else ''}"
        for row in rows
    ]
    if len(cells) <= TABLE_ROWS:
        for cell in cells:
            console.print(cell)
    else:
        console.print(Columns(cells, column_first=True, padding=(0, 2)))


class _StepLines:
    """Retraining progress on stderr: a live bar (batches, elapsed, ETA) on a terminal, one line
    per prune step elsewhere (CI logs)."""

    def __init__(self, stderr: Console, bar: Progress | None, total: int):
        self.stderr, self.bar, self.total = stderr, bar, total
        self.task = bar.add_task("retraining", total=total) if bar is not None else None
        self.done, self.started = 0, time.monotonic()

    def advance(self, count: int) -> None:
        self.done += count
        if self.bar is not None and self.task is not None:
            self.bar.advance(self.task, count)

    def step(self, method: str, ratio: float, k: int, step_ratio: float, loss: float) -> None:
        if self.bar is not None:
            return
        elapsed = time.monotonic() - self.started
        left = elapsed * (self.total - self.done) / max(self.done, 1)
        print(
            f"retrain {method} {ratio:g}: step {k} (ratio {step_ratio:.3f}) loss {loss:.3f}, "
            f"{duration(elapsed)} elapsed, about {duration(left)} left",
            file=self.stderr.file,
            flush=True,
        )


@contextmanager
def _retrain_progress(
    stderr: Console, levels: list[float], train: TrainSet | None, options: RetrainOptions | None, iterations: int
) -> Iterator[_StepLines]:
    total = 0
    if train is not None and options is not None:
        total = len(levels) * iterations * options.epochs * train.batches_per_epoch(options.batch_size)
    live = total > 0 and stderr.is_terminal
    columns = (TextColumn("retraining"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), TimeRemainingColumn())
    bar = Progress(*columns, console=stderr, transient=True) if live else None
    if bar is not None:
        bar.start()
    try:
        yield _StepLines(stderr, bar, total)
    finally:
        if bar is not None:
            bar.stop()
