"""Model runners, one file per backend; `load_runner` picks one for a model file."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING

from torch import get_num_threads  # (the name `torch` here becomes the submodule .torch once that is imported)

from prunegate.digest import file_sha256
from prunegate.errors import ModelError
from prunegate.hf_folder import NOT_A_MODEL
from prunegate.policy import ArchCall, ModelSpec, arch_name
from prunegate.report.schema import ArchSource, BackendChoice, ExternalData, Isolation

from . import huggingface
from .base import LoadOptions, ModelFile, Runner, built_by_arch, check_precision, needs_arch, resolve_device
from .foreign import foreign_format, foreign_message

if TYPE_CHECKING:
    from .isolated import InputArena, IsolatedRunner
    from .outputs import OutputSelector

__all__ = ["LoadOptions", "ModelFile", "Runner", "load_runner", "resolve_device", "start_isolated"]

# backend auto's choice for an .onnx file, which only ONNX Runtime runs
ONNX_FILE_CHOICE = BackendChoice(reason="an ONNX file runs on ONNX Runtime", seconds_per_batch={}, batch=None)


def _backend_for(path: Path, field: str, options: LoadOptions) -> str:
    """The backend that will run `path` (torch | onnx), after the checks every loader shares."""
    if not path.exists():
        raise ModelError("model file not found", file=path, field=field)
    framework = foreign_format(path)
    if framework is not None:
        raise ModelError(foreign_message(framework), file=path, field=field)
    hf_folder = huggingface.is_folder(path)
    if path.is_dir() and not hf_folder:
        raise ModelError(
            "is a folder, expected a model file (or a Hugging Face folder with config.json)", file=path, field=field
        )
    if hf_folder:
        huggingface.check_folder(path, field)
    is_onnx = path.suffix.lower() == ".onnx"
    backend = options.backend
    chosen = backend if backend != "auto" else ("onnx" if is_onnx else "torch")
    if chosen == "onnx" and not is_onnx:
        raise ModelError(
            "the onnx backend runs .onnx files; export the model to ONNX or use --backend torch", file=path, field=field
        )
    if chosen == "torch" and is_onnx:
        raise ModelError("the torch backend cannot run .onnx files; use --backend onnx or auto", file=path, field=field)
    check_precision(options.precision, options.device, chosen, file=options.settings)
    return chosen


def _pin_arch(spec: ModelSpec, path: Path, field: str, fmt: str, options: LoadOptions) -> ArchSource | None:
    """The arch's pinned source, for a file that may be a state dict: located (not imported) and
    checked against the opt-in before any of its code runs (runners.archsource)."""
    name = arch_name(spec.arch)
    if not needs_arch(fmt) or not name:
        return None
    from .archsource import locate_arch

    found = locate_arch(
        name, options.base_dir, file=path, field=field + ".arch", allow_external=options.allow_external_arch
    )
    if isinstance(spec.arch, ArchCall):  # the call, so that the report shows what was built
        found.update(args=spec.arch.args or None, kwargs=spec.arch.kwargs or None)
    return ArchSource.model_validate(found)


def _pinned_files(path: Path, field: str, fmt: str) -> tuple[str, list[ExternalData] | None]:
    """The record's sha256 of a model and the other files it reads with theirs: an ONNX model's
    external data; a Hugging Face folder's weights (its sha256) and config.json."""
    if fmt == huggingface.FORMAT:
        return huggingface.weights_sha256(path), huggingface.pinned_files(path)
    if fmt == "onnx":
        from .onnx import pinned_external_data

        return file_sha256(path), pinned_external_data(path, field)
    return file_sha256(path), None


def model_pins(path: Path, field: str) -> tuple[str, list[ExternalData] | None]:
    """What a report pins of a model as a reader has it (`verify --dense/--pruned`): a Hugging Face
    folder's weights and config.json, an .onnx file and its external data, any other file itself."""
    if huggingface.is_folder(path):
        return _pinned_files(path, field, huggingface.FORMAT)
    if path.is_dir():
        raise ModelError(NOT_A_MODEL, file=path, field=field)
    return _pinned_files(path, field, "onnx" if path.suffix.lower() == ".onnx" else "file")


def load_runner(
    spec: ModelSpec,
    path: Path,
    field: str,
    options: LoadOptions,
    *,
    isolation: Isolation | None = None,
    output_field: str = "models.output",
) -> Runner:
    """A runner for one model file, in this process; `isolation`: what its record says of that;
    `output_field`: the policy field that chose `spec.output` (named in its errors).

    backend auto: an .onnx file runs on ONNX Runtime; a torch model on whichever of torch and ONNX
    Runtime (on its in-memory export) runs `options.input_size` batches faster (runners.auto);
    `options.gather` (torchrun): every process's auto measurement, so all choose alike. The gate
    runs models through `start_isolated` instead: this is what the model's own process calls, and
    what runtime.isolation: off calls with isolation=Isolation(process=False)."""
    runner = _load(spec, path, field, options, output_field)
    if isolation is not None:
        runner.record = runner.record.model_copy(update={"isolation": isolation})
    return runner


def _load(spec: ModelSpec, path: Path, field: str, options: LoadOptions, output_field: str) -> Runner:
    from prunegate.kinds import get_kind

    chosen = _backend_for(path, field, options)
    preferred = get_kind(options.kind).output_names  # the output read when models.output names none
    if chosen == "onnx":
        return _load_onnx(spec, path, field, options, preferred, output_field)
    return _load_torch(spec, path, field, options, preferred, output_field)


def _load_onnx(
    spec: ModelSpec, path: Path, field: str, options: LoadOptions, preferred: tuple[str, ...], output_field: str
) -> Runner:
    from .onnx import OnnxRunner

    file = ModelFile(
        path=str(path),
        sha256=file_sha256(path),
        format="onnx",
        arch=arch_name(spec.arch),
        pickle_allowed=options.allow_pickle,
    )
    runner = OnnxRunner(
        path,
        field,
        options.device,
        file,
        options.allow_fallback,
        providers=options.providers,
        output=spec.output,
        preferred=preferred,
        output_field=output_field,
    )
    if options.backend == "auto":
        runner.record = runner.record.model_copy(update={"backend_choice": ONNX_FILE_CHOICE})
    return runner


def _load_torch(
    spec: ModelSpec, path: Path, field: str, options: LoadOptions, preferred: tuple[str, ...], output_field: str
) -> Runner:
    """A torch model, returning only the output that holds its logits (runners.outputs), on the
    backend that runs it (torch, or with backend auto ONNX Runtime on its export)."""
    from .outputs import OutputSelector
    from .torch import TorchRunner, load_torch_module, sniff_format

    sniffed = sniff_format(path, field)
    sha256, external_data = _pinned_files(path, field, sniffed)
    arch_source = _pin_arch(spec, path, field, sniffed, options)
    loaded, fmt, shape = load_torch_module(path, field, spec.arch, options.base_dir, options.allow_pickle)
    module = OutputSelector(loaded, spec.output, preferred, file=path, field=output_field)
    by_arch = built_by_arch(fmt)  # the other formats hold their code: no arch is recorded
    file = ModelFile(
        path=str(path),
        sha256=sha256,
        format=fmt,
        arch=arch_name(spec.arch) if by_arch else None,
        pickle_allowed=options.allow_pickle,
        external_data=external_data,
        arch_source=arch_source if by_arch else None,
    )
    runner: Runner
    if options.backend == "auto":
        from .auto import choose

        runner = choose(module, file, shape, path=path, field=field, options=options)
    else:
        runner = TorchRunner(
            module, options.device, file, shape, precision=options.precision, channels_last=options.channels_last
        )
    _see_output(runner, module, options)
    runner.record = runner.record.model_copy(update={"output": module.used})
    return runner


def _see_output(runner: Runner, selector: OutputSelector, options: LoadOptions) -> None:
    """Run the model once on a probe of zeros, unless it has run already (backend auto's probe),
    so that the output it returns is chosen, and recorded, at load: a wrong models.output fails
    here. A model that fails on the probe is left to the gate's own probe, which says why."""
    import torch

    from prunegate.data import as_shape

    if selector.seen or not options.input_size:
        return
    try:
        runner(torch.zeros(2, 3, *as_shape(options.input_size), device=runner.device))
    except ModelError:
        raise
    except Exception:
        pass


def start_isolated(
    spec: ModelSpec,
    path: Path,
    field: str,
    options: LoadOptions,
    *,
    arena: InputArena,
    hidden: tuple[str, ...] = (),
    strict: bool = False,
    output_field: str = "models.output",
) -> IsolatedRunner:
    """Start loading one model file in a sandboxed process of its own (runners.isolated), which may
    not read `hidden` (and, `strict`, must be fully sandboxed); call `finish_loading()` on the
    result for the Runner. The process reads the output `spec.output` names (set by the policy's
    `output_field`) and returns only it. Everything that pins the model — its sha256, its external data, its
    arch — is established here, in prunegate's process."""
    from .host import LoadRequest
    from .isolated import IsolatedRunner
    from .torch import sniff_format

    chosen = _backend_for(path, field, options)
    fmt = "onnx" if chosen == "onnx" else sniff_format(path, field)
    sha256, external_data = _pinned_files(path, field, fmt)
    arch_source = _pin_arch(spec, path, field, fmt, options)
    # format torch-save: a state dict or a pickle, which only loading tells apart (the model's process says which)
    file = ModelFile(
        path=str(path),
        sha256=sha256,
        format=fmt,
        arch=arch_name(spec.arch) if needs_arch(fmt) else None,
        pickle_allowed=options.allow_pickle,
        external_data=external_data,
        arch_source=arch_source,
    )
    request = LoadRequest(
        path=str(path),
        field=field,
        arch=spec.arch,
        options=dataclasses.replace(options, gather=None),
        hidden=hidden,
        strict=strict,
        gather=options.gather is not None,
        threads=get_num_threads(),
        output=spec.output,
        output_field=output_field,
    )
    return IsolatedRunner(request, file, arena, options.gather)
