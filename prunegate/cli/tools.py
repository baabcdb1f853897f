"""The tools around the gate: `prunegate corrupt`, `potential`, `prune` and `demo`."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from prunegate.errors import PrunegateError

from .common import (
    CONSOLE_WIDTH,
    EXIT_PASS,
    Backend,
    Device,
    cli,
    pass_progress,
    render_width,
    split_csv,
    stderr_console,
    stdout_console,
    write_atomic,
)
from .outputs import check_outputs

if TYPE_CHECKING:
    from prunegate.context import RunContext


@cli.command()
def corrupt(
    preset: str = typer.Option(..., help="cifar10-c or imagenet-c."),
    source: Path = typer.Option(..., help="The clean images."),
    format: str = typer.Option("imagefolder", "--format", help="Format of --source (as in a policy's data)."),
    class_names: Path | None = typer.Option(
        None, "--class-names", help="The model's class names, one per line (as a policy's data.class_names)."
    ),
    out: Path | None = typer.Option(None, help="Folder to write (CIFAR-10-C layout); must not exist."),
    frost_textures: Path | None = typer.Option(
        None, "--frost-textures", help="A folder of frost photographs for frost (default: procedural textures)."
    ),
    names: str | None = typer.Option(None, help="Comma-separated corruption names (default: all 19)."),
    severities: str = typer.Option("1,2,3,4,5", help="Comma-separated severities."),
    limit: int | None = typer.Option(None, min=1, help="A class-balanced subset of this size."),
    seed: int = typer.Option(0, min=0, help="Seed of every random draw (as suite.seed)."),
    preview: Path | None = typer.Option(None, help="Write a PNG grid (corruptions x severities) of one image."),
    device: Device = typer.Option(Device.auto, help="Where to make the corruptions."),
    batch_size: int = typer.Option(256, min=1),
) -> int:
    """Render a corruption preset to disk, and/or preview it on one image."""
    from prunegate import shifts
    from prunegate.corrupt import corruption_context
    from prunegate.data import open_source, select
    from prunegate.policy import DataSource
    from prunegate.runners import resolve_device
    from prunegate.shifts import ShiftAssets

    if out is None and preview is None:
        raise PrunegateError("nothing to do: give --out, --preview or both")
    shifts.get_preset(preset)  # an unknown preset fails here, before any work
    chosen = split_csv(names) or list(shifts.CORRUPTION_NAMES)
    for name in chosen:
        shifts.get_shift(name)  # unknown names fail here, before any work
    try:
        levels = [int(s) for s in split_csv(severities) or []]
    except ValueError:
        raise PrunegateError(f"--severities must be integers 1-5, got {severities!r}") from None
    if not levels or any(not 1 <= s <= 5 for s in levels):
        raise PrunegateError(f"--severities must be integers 1-5, got {severities!r}")
    try:
        spec = DataSource.model_validate(
            {"format": format, "path": str(source), "class_names": str(class_names) if class_names else None}
        )
    except Exception:
        raise PrunegateError(
            f"--format {format!r} is not a data format (imagefolder, imagefolder-flat, filelist, npz, cifar10-binary, "
            "webdataset, parquet)"
        ) from None
    images = open_source(spec, Path, "--source")
    check_outputs(
        {"--preview": preview},
        {
            "--source": source,
            **({"--class-names": class_names} if class_names else {}),
            **({"--frost-textures": frost_textures} if frost_textures else {}),
        },
    )
    indices = select(images.labels, limit)
    assets = ShiftAssets.load(
        {"frost_textures": frost_textures} if frost_textures is not None else {},
        lambda name: "--" + name.replace("_", "-"),
    )
    ctx = corruption_context(
        images,
        indices,
        preset=preset,
        names=chosen,
        severities=levels,
        seed=seed,
        batch_size=batch_size,
        device=resolve_device(device.value, False),
        assets=assets,
    )
    _render_corruptions(ctx, out, preview)
    return EXIT_PASS


def _render_corruptions(ctx: RunContext, out: Path | None, preview: Path | None) -> None:
    """`prunegate corrupt`'s work once its inputs are checked: the preview, then the folder."""
    from prunegate import corrupt as corrupt_lib
    from prunegate.data import fit_to_size

    source = ctx.sources[0]
    if preview is not None:
        first = int(source.indices[0])
        picture = fit_to_size(source.images.read([first], ctx.max_pixels)[0][0].permute(2, 0, 1), ctx.size)
        write_atomic(preview, corrupt_lib.preview_png(ctx, picture.permute(1, 2, 0), first))
        stdout_console().print(f"wrote {preview}")
    if out is not None:
        columns = (
            TextColumn("corrupting"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
        )
        with Progress(
            *columns, console=stderr_console(), transient=True, disable=not stderr_console().is_terminal
        ) as bar:
            task = bar.add_task("corrupting", total=len(source.indices))
            summary = corrupt_lib.render(ctx, out, progress=lambda n: bar.advance(task, n))
        names = len({t.shift for t in ctx.tasks})
        stdout_console().print(
            f"wrote {out}: {names} corruptions x {len(summary['severities'])} severities x "
            f"{summary['images']} images at {summary['size']}px"
        )


@cli.command()
def potential(
    policy: Path = typer.Option(
        ..., "--policy", "-p", help="Policy YAML file (its dense model, data and suite), or a ready policy's name."
    ),
    dense: Path | None = typer.Option(None, help="Dense model file (overrides the policy)."),
    data: Path | None = typer.Option(
        None, help="Test set file or folder (overrides data.test; format from its layout)."
    ),
    pruned: list[Path] = typer.Option(
        ..., "--pruned", help="A pruned member of the family; repeat, or list after one --pruned."
    ),
    extra: list[Path] | None = typer.Argument(None, help="More pruned members.", show_default=False),
    delta: float = typer.Option(
        0.005, min=0.0, max=1.0, help="Tolerance vs the dense model, in the metric's units (0.005 = 0.5 pp)."
    ),
    metric: str = typer.Option(
        "error",
        "--metric",
        help="error (the kind's: top-1 error, 1 - mIoU), or a paired metric: top5_drop, ece_increase, "
        "kl_divergence, agreement, selective_risk_increase@0.9, ... (see the README).",
    ),
    out: Path | None = typer.Option(None, help="Write the table as JSON."),
    plot: Path | None = typer.Option(None, help="Write the prune-potential / excess-error plot (PNG)."),
    limit: int | None = typer.Option(None, min=1, help="Evaluate a class-balanced subset of this size."),
    device: Device | None = typer.Option(None, help="Where to run (overrides runtime.device)."),
    backend: Backend | None = typer.Option(None, help="Model runtime (overrides runtime.backend)."),
    allow_pickle: bool = typer.Option(
        False, "--allow-pickle", help="Allow model files that unpickle arbitrary objects."
    ),
    allow_external_arch: bool = typer.Option(
        False,
        "--allow-external-arch",
        help="Allow arch code from outside the policy's folder and the installed packages.",
    ),
) -> int:
    """Prune potential of a family of pruned models, per task and task group.

    The potential is the largest prune ratio whose error is within DELTA of the dense model's;
    the excess error is the growth of each group's error gap to clean, per prune ratio. With
    --metric M, whose M stays within DELTA of the dense model's own value (0 for a drop, increase
    or divergence; 1 for agreement or loyalty); the plot then has no excess error.

    Warns when DELTA is at most one sample's error (1/n) on a task: 0.005 is one image at n = 200."""
    import json

    from prunegate.check import Overrides, apply_overrides, input_files, run_potential
    from prunegate.policy import load_policy
    from prunegate.potential import plot_png
    from prunegate.report.render.console import render_potential

    members = [*pruned, *(extra or [])]
    loaded = apply_overrides(
        load_policy(policy),
        Overrides(
            dense=dense,
            device=device.value if device else None,
            backend=backend.value if backend else None,
            limit=limit,
            data=data,
        ),
    )
    check_outputs({"--out": out, "--plot": plot}, input_files(loaded, members))
    with pass_progress(show=True) as progress:
        result = run_potential(
            loaded,
            members,
            delta=delta,
            metric=metric,
            allow_pickle=allow_pickle,
            progress=progress,
            allow_external_arch=allow_external_arch,
        )
    if out is not None:
        write_atomic(out, json.dumps(result, indent=2) + "\n")
    if plot is not None:
        write_atomic(plot, plot_png(result, f"{loaded.name}: {len(members)} pruned models"))
    stdout = stdout_console()
    stdout.print(render_potential(result, color=stdout.is_terminal, width=max(stdout.width, CONSOLE_WIDTH)), end="")
    for label, path in (("table", out), ("plot", plot)):
        if path is not None:
            stdout.print(f"{label}: {path}")
    return EXIT_PASS


@cli.command("prune")
def prune_command(
    model: Path = typer.Option(
        ..., "--model", help="The dense torch model: TorchScript, .pt2, or a state dict with --arch."
    ),
    ratios: str = typer.Option(
        ..., help="Comma-separated ratios, e.g. 0.3,0.5,0.7 (wt, sipp, pfp: of weights; ft: of filters per layer)."
    ),
    out: Path = typer.Option(..., "--out", help="Folder to write the family into (created; files must not exist)."),
    method: str = typer.Option(
        "wt",
        help="wt: weight magnitude; ft: per-layer filter L1 norm; sipp: weight sensitivity (SiPP, deterministic); "
        "pfp: channel sensitivity (PFP, deterministic, filters zeroed). sipp and pfp need --calibrate or --retrain.",
    ),
    scope: str | None = typer.Option(
        None,
        help="wt: global (one threshold over all layers, the paper's; default) or layer (the same ratio in "
        "every layer). ft is per layer by definition.",
    ),
    keep_depthwise: bool = typer.Option(
        False, "--keep-depthwise", help="wt: keep depthwise convs (groups == in_channels > 1) dense."
    ),
    keep_first_last: bool = typer.Option(
        False, "--keep-first-last", help="wt: keep the first and the last prunable layer dense."
    ),
    arch: str | None = typer.Option(None, help="'module:fn' or 'file.py:fn' building the network for a state dict."),
    input_size: int = typer.Option(..., "--input-size", min=1, help="Square input side, for export and retraining."),
    formats: str = typer.Option("onnx,torchscript", "--format", help="Comma-separated: onnx, torchscript."),
    allow_pickle: bool = typer.Option(
        False, "--allow-pickle", help="Allow a pickled whole-module file (runs its code)."
    ),
    calibrate: Path | None = typer.Option(
        None,
        "--calibrate",
        help="sipp/pfp: the images whose activations rank the weights (any data format; default: the --retrain data).",
    ),
    calibrate_images: int | None = typer.Option(
        None,
        "--calibrate-images",
        min=1,
        help="sipp/pfp: a class-balanced calibration batch of this many (default 64).",
    ),
    retrain: Path | None = typer.Option(
        None, "--retrain", help="Fine-tune each member, masks fixed, on this training set (any data format)."
    ),
    class_names: Path | None = typer.Option(
        None,
        "--class-names",
        help="--retrain/--calibrate: the model's class names, one per line (as data.class_names).",
    ),
    epochs: int | None = typer.Option(None, min=1, help="--retrain: epochs per prune step (default 1)."),
    lr: float | None = typer.Option(None, help="--retrain: initial learning rate, cosine to 0 (default 0.01)."),
    iterations: int | None = typer.Option(
        None, min=1, help="--retrain: prune-retrain steps to each ratio, geometric schedule (default 1)."
    ),
    batch_size: int | None = typer.Option(None, "--batch-size", min=1, help="--retrain: batch size (default 64)."),
    seed: int | None = typer.Option(None, min=0, help="--retrain: seed of the shuffle and augmentation (default 0)."),
    train_limit: int | None = typer.Option(
        None, "--train-limit", min=1, help="--retrain: a class-balanced subset of this many images (default 5000)."
    ),
    mean: str | None = typer.Option(
        None, help="--retrain/--calibrate: per-channel input mean, e.g. 0.485,0.456,0.406."
    ),
    std: str | None = typer.Option(None, help="--retrain/--calibrate: per-channel input std, e.g. 0.229,0.224,0.225."),
    augment: bool | None = typer.Option(
        None, "--augment/--no-augment", help="--retrain: random crop with padding and flip (default on)."
    ),
) -> int:
    """Make a family of pruned models, masks made permanent, exported; optionally retrained.

    Beside each member, OUT/<method>-<ratio>.layers.json lists every layer's sparsity."""
    from .pruning import PruneRequest, RetrainRequest, run_prune

    request = PruneRequest(
        model=model,
        ratios=ratios,
        out=out,
        method=method,
        scope=scope,
        keep_depthwise=keep_depthwise,
        keep_first_last=keep_first_last,
        arch=arch,
        input_size=input_size,
        formats=formats,
        allow_pickle=allow_pickle,
        calibrate=calibrate,
        calibrate_images=calibrate_images,
        retrain=RetrainRequest(
            data=retrain,
            class_names=class_names,
            epochs=epochs,
            lr=lr,
            iterations=iterations,
            batch_size=batch_size,
            seed=seed,
            limit=train_limit,
            mean=mean,
            std=std,
            augment=augment,
        ),
    )
    return run_prune(request, stdout_console(), stderr_console())


@cli.command()
def demo(
    out: Path = typer.Option(Path("demo-output"), "--out", help="Folder for the demo's data, models and reports."),
) -> int:
    """Build a small dataset and CNN, prune it, and gate each pruned copy (offline, ~1 minute)."""
    return run_demo_command(out, stdout_console())


def run_demo_command(out: Path, console: Console, **build_options: Any) -> int:
    """`prunegate demo`'s work: build and gate (`prunegate.demo.run_demo`), write a report per pruned
    model into OUT/reports/ and print what the gate decided. Returns 0 (the demo ran).
    `build_options` go to `build_demo` (tests make a smaller demo)."""
    from prunegate.demo import run_demo
    from prunegate.report.attest import envelope, envelope_json, statement_bytes
    from prunegate.report.render import Format, RenderOptions, renderer

    out = Path(out)
    console.print(f"[bold]prunegate demo[/]: building a dataset and a small CNN, pruning it (in {out}/)")
    result = run_demo(out, **build_options)
    console.print(f"built in {result.assets.seconds:.0f} s: dense clean accuracy {result.assets.accuracy['dense']:.2%}")
    (out / "reports").mkdir(exist_ok=True)
    for name, report in result.reports:
        console.rule(f"{name}: {result.ratios[name]:.0%} of the weights removed by global magnitude pruning")
        report_path = out / "reports" / f"{name}.json"
        write_atomic(report_path, envelope_json(envelope(statement_bytes(report))))
        options = RenderOptions(
            color=console.is_terminal, width=render_width(console), before_verdict=(f"wrote {report_path} (unsigned)",)
        )
        console.print(renderer(Format.console).format(report, options), end="")
    console.rule("what the demo shows")
    for name, report in result.reports:
        clean = next(t for t in report.tasks if t.name == "clean")
        failed = ", ".join(r.name for r in report.failed_rules()) or "-"
        console.print(
            f"{name}: clean accuracy drop {100 * (clean.accuracy_drop or 0.0):+.2f}pp → "
            f"{report.verdict.upper()} (failed: {failed})"
        )
    console.print(
        "A pruned model can keep its clean test accuracy and still lose its robustness: "
        "the gate checks both. Reports are in " + str(out / "reports")
    )
    return EXIT_PASS
