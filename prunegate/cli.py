"""The command line: parse, call the library, write files, map errors to exit codes.

Exit codes: 0 pass, 1 the gate failed (or a report does not verify), 2 bad input or usage,
3 an internal error (a bug: please report it).
"""

from __future__ import annotations

import logging
import os
import sys
import tempfile
import time
from importlib import resources
from enum import Enum
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from prunegate.errors import PrunegateError, require_file

try:  # typer >= 0.29 carries its own click; its usage errors derive from TyperException
    from typer.exceptions import TyperException as UsageProblem
except ImportError:  # pragma: no cover - older typer on top of click
    from click.exceptions import ClickException as UsageProblem


class Device(str, Enum):
    auto = "auto"
    cpu = "cpu"
    cuda = "cuda"


class Backend(str, Enum):
    auto = "auto"
    torch = "torch"
    onnx = "onnx"


class Precision(str, Enum):
    fp32 = "fp32"
    bf16 = "bf16"
    fp16 = "fp16"

EXIT_PASS, EXIT_FAIL, EXIT_INPUT, EXIT_BUG = 0, 1, 2, 3
CONSOLE_WIDTH = 120  # at least: CI logs are not terminals and would wrap tables at 80
EXIT_INTERRUPTED = 130  # Ctrl-C, as shells report it
INTERRUPTED = "interrupted: nothing was written"
EPILOG = "Exit codes: 0 pass · 1 gate failed · 2 bad input or usage · 3 internal error."

cli = typer.Typer(name="prunegate", help="A safety gate for pruned neural networks.", epilog=EPILOG,
                  no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)
policy_cli = typer.Typer(help="Write, check and describe policy files.", no_args_is_help=True)
cli.add_typer(policy_cli, name="policy")
report_cli = typer.Typer(help="Read, render and describe reports.", no_args_is_help=True)
cli.add_typer(report_cli, name="report")

_state = {"debug": False}
log = logging.getLogger("prunegate")


def write_atomic(path: Path, content: str | bytes) -> None:
    """Write via a temporary file in the same folder and rename: never half a file."""
    path = Path(path)
    if path.is_dir():
        raise PrunegateError("is a folder, expected a file path to write", file=path)
    if not path.parent.exists():
        raise PrunegateError("the folder to write into does not exist", file=path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; a report is an ordinary file
        with os.fdopen(fd, "wb") as f:
            f.write(content.encode("utf-8") if isinstance(content, str) else content)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _stdout() -> Console:
    return Console(highlight=False, soft_wrap=True)


def _stderr() -> Console:
    return Console(stderr=True, highlight=False)


def _print_version(value: bool) -> None:
    # An option callback: it runs while parsing, so `prunegate --version` needs no command.
    if value:
        from prunegate import __version__

        print(f"prunegate {__version__}")
        raise typer.Exit(0)


@cli.callback()
def _global(
    debug: bool = typer.Option(False, "--debug", help="Show tracebacks and debug logs."),
    version: bool = typer.Option(False, "--version", help="Print the version and exit.", is_eager=True,
                                 callback=_print_version),
) -> None:
    _state["debug"] = debug
    logging.basicConfig(level=logging.DEBUG if debug else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")


class _RichProgress:
    """A live bar on a terminal; elsewhere (CI logs), with `lines`, one line every `every` seconds."""

    def __init__(self, progress: Progress, lines: bool = False, every: float = 30.0):
        self.progress, self.task, self.lines, self.every = progress, None, lines, every
        self.total = self.done = 0
        self.started = self.last = 0.0

    def start(self, total: int) -> None:
        self.task = self.progress.add_task("evaluating", total=total)
        self.total, self.started = total, time.monotonic()
        self.last = self.started

    def advance(self, count: int) -> None:
        self.progress.advance(self.task, count)
        self.done += count
        now = time.monotonic()
        if self.lines and now - self.last >= self.every and self.total:
            self.last = now
            elapsed = now - self.started
            eta = elapsed * (self.total - self.done) / max(self.done, 1)
            print(f"progress: {100 * self.done / self.total:.0f}% ({self.done:,}/{self.total:,} evaluations), "
                  f"{_duration(elapsed)} elapsed, about {_duration(eta)} left", file=sys.stderr, flush=True)


def _duration(seconds: float) -> str:
    minutes, secs = divmod(round(seconds), 60)
    return f"{minutes // 60}h{minutes % 60:02d}m" if minutes >= 60 else f"{minutes}m{secs:02d}s"


@cli.command()
def check(
    policy: Path = typer.Option(..., "--policy", "-p", help="Policy YAML file."),
    dense: Optional[Path] = typer.Option(None, help="Dense model file (overrides the policy)."),
    pruned: Optional[Path] = typer.Option(None, help="Pruned model file (overrides the policy)."),
    device: Optional[Device] = typer.Option(None, help="Where to run (overrides runtime.device)."),
    backend: Optional[Backend] = typer.Option(None, help="Model runtime (overrides runtime.backend); auto: ONNX "
                                              "files on ONNX Runtime, torch models on the faster of the two."),
    precision: Optional[Precision] = typer.Option(None, help="Inference precision (overrides runtime.precision): "
                                                  "bf16/fp16 run torch models under autocast (fp16 on CUDA only)."),
    batch_size: Optional[int] = typer.Option(None, min=1, help="Images per batch."),
    limit: Optional[int] = typer.Option(None, min=1, help="Evaluate a class-balanced subset of this size."),
    workers: Optional[int] = typer.Option(None, min=0, help="Background decoding processes."),
    report: Path = typer.Option(Path("prunegate-report.json"), "--report", "-o", help="Where to write the report."),
    allow_pickle: bool = typer.Option(False, "--allow-pickle", help="Allow model files that unpickle arbitrary objects (runs their code)."),
    key: Optional[Path] = typer.Option(None, "--key", help="Ed25519 private key (PEM) to sign the report; "
                                       "or set PRUNEGATE_SIGNING_KEY to the PEM text."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Print only the verdict line."),
    html: Optional[Path] = typer.Option(None, "--html", help="Also write the HTML report (one self-contained file)."),
    markdown: Optional[Path] = typer.Option(None, "--markdown", help="Also write a GitHub-flavoured Markdown summary."),
    junit: Optional[Path] = typer.Option(None, "--junit", help="Also write JUnit XML: one test case per rule."),
) -> int:
    """Evaluate the dense and pruned models on the policy's tasks and apply its rules.

    When GITHUB_STEP_SUMMARY is set (GitHub Actions), the Markdown summary is appended to that file."""
    from prunegate import distributed
    from prunegate.check import Overrides, apply_overrides, run_check
    from prunegate.policy import load_policy
    from prunegate.report.attest import envelope, envelope_json, sign, statement_bytes
    from prunegate.report.keys import fingerprint
    from prunegate.report.render import console as console_render

    overrides = Overrides(dense, pruned, device.value if device else None, backend.value if backend else None,
                          batch_size, limit, workers, precision.value if precision else None)
    loaded = apply_overrides(load_policy(policy), overrides)
    signing_key = _signing_key(key)
    if signing_key is None and loaded.require_signature:
        raise PrunegateError("the policy requires a signed report: pass --key or set PRUNEGATE_SIGNING_KEY",
                             file=policy, field="require_signature")
    renderings = {"--html": html, "--markdown": markdown, "--junit": junit}
    for option, target in {"--report": report, **renderings}.items():
        _check_writable(target, option)
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), TimeRemainingColumn())
    world = distributed.from_environment()  # torchrun: every process runs its part; rank 0 writes
    try:
        show = not quiet and world.is_main
        with Progress(*columns, console=_stderr(), transient=True, disable=not show or not _stderr().is_terminal) as bar:
            progress = _RichProgress(bar, lines=show and not _stderr().is_terminal,
                                     every=float(os.environ.get("PRUNEGATE_PROGRESS_SECONDS", "30")))
            result = run_check(loaded, allow_pickle=allow_pickle, progress=progress, world=world)
    finally:
        distributed.finish(world)
    if not world.is_main:
        return EXIT_PASS if result.verdict == "pass" else EXIT_FAIL
    payload = statement_bytes(result)
    write_atomic(report, envelope_json(sign(payload, signing_key) if signing_key else envelope(payload)))
    signature = f"signed by key {fingerprint(signing_key.public_key())[:16]}" if signing_key else "unsigned"
    _write_renderings(result, html=html, markdown=markdown, junit=junit, signature=signature)
    _append_step_summary(result)
    out = _stdout()
    if quiet:
        out.print(console_render.verdict_line(result))
    else:
        out.print(console_render.render(result, color=out.is_terminal, width=max(out.width, CONSOLE_WIDTH)), end="")
        signed = f"signed by key {fingerprint(signing_key.public_key())[:16]}" if signing_key else "UNSIGNED: pass --key to sign"
        out.print(f"report: {report} ({signed})")
    return EXIT_PASS if result.verdict == "pass" else EXIT_FAIL


@policy_cli.command("init")
def policy_init(
    out: Path = typer.Argument(Path("prunegate.yaml"), help="File to write."),
    force: bool = typer.Option(False, "--force", help="Overwrite an existing file."),
) -> int:
    """Write a commented policy template."""
    if out.exists() and not force:
        raise PrunegateError("already exists (use --force to overwrite)", file=out)
    write_atomic(out, resources.files("prunegate").joinpath("templates/policy.yaml").read_text(encoding="utf-8"))
    _stdout().print(f"wrote {out}")
    return EXIT_PASS


@policy_cli.command("validate")
def policy_validate(file: Path = typer.Argument(..., help="Policy YAML file.")) -> int:
    """Check a policy file: schema, names, and that every rule matches a task."""
    from prunegate.plan import build_plan
    from prunegate.policy import load_policy

    policy = load_policy(file)
    tasks = build_plan(policy)
    _stdout().print(f"{file}: valid policy {policy.name!r}: {len(tasks)} tasks, {len(policy.gate.rules)} rules")
    return EXIT_PASS


@policy_cli.command("schema")
def policy_schema() -> int:
    """Print the policy's JSON Schema."""
    from prunegate.policy import policy_json_schema

    print(policy_json_schema())
    return EXIT_PASS


def _passphrase() -> Optional[bytes]:
    value = os.environ.get("PRUNEGATE_KEY_PASSPHRASE")
    return value.encode() if value else None


def _signing_key(path: Optional[Path]):
    """The key from --key, else from PRUNEGATE_SIGNING_KEY (PEM text, as a CI secret), else None."""
    from prunegate.report.keys import load_private

    if path is not None:
        require_file(path, "signing key file", field="--key")
        return load_private(path.read_bytes(), _passphrase(), str(path))
    text = os.environ.get("PRUNEGATE_SIGNING_KEY")
    if text:
        return load_private(text.encode(), _passphrase(), "PRUNEGATE_SIGNING_KEY")
    return None


@cli.command()
def keygen(
    out: Path = typer.Option(..., "--out", help="Writes OUT.pem (private, mode 0600) and OUT.pub."),
    passphrase: bool = typer.Option(False, "--passphrase", help="Encrypt the private key with the passphrase "
                                    "in PRUNEGATE_KEY_PASSPHRASE."),
) -> int:
    """Make an Ed25519 key pair for signing reports."""
    from prunegate.report import keys

    private_path, public_path = out.with_name(out.name + ".pem"), out.with_name(out.name + ".pub")
    for path in (private_path, public_path):
        if path.exists():
            raise PrunegateError("already exists; refusing to overwrite a key", file=path)
    secret = _passphrase()
    if passphrase and not secret:
        raise PrunegateError("--passphrase needs the passphrase in PRUNEGATE_KEY_PASSPHRASE")
    key = keys.generate()
    fd = os.open(private_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(keys.private_pem(key, secret if passphrase else None))
    write_atomic(public_path, keys.public_pem(key.public_key()))
    _stdout().print(f"wrote {private_path} (keep it secret) and {public_path}; keyid {keys.fingerprint(key.public_key())}")
    return EXIT_PASS


def _check_writable(path: Optional[Path], option: str) -> None:
    """Fail before the long run, not after it, when an output cannot be written."""
    if path is None:
        return
    if path.is_dir():
        raise PrunegateError("is a folder, expected a file path to write", file=path, field=option)
    if not path.absolute().parent.is_dir():
        raise PrunegateError("the folder to write into does not exist", file=path, field=option)


def _write_renderings(result, *, html: Optional[Path] = None, markdown: Optional[Path] = None,
                      junit: Optional[Path] = None, signature: Optional[str] = None, gallery: bool = True) -> None:
    """Render the report in each format asked for and write each file atomically."""
    if html is not None:
        from prunegate.report.gallery import build_gallery
        from prunegate.report.render import html as html_render

        images = build_gallery(result) if gallery else None
        write_atomic(html, html_render.render(result, gallery=images, signature=signature))
    if markdown is not None:
        from prunegate.report.render import markdown as markdown_render

        write_atomic(markdown, markdown_render.render(result))
    if junit is not None:
        from prunegate.report.render import junit as junit_render

        write_atomic(junit, junit_render.render(result))


def _append_step_summary(result) -> None:
    """On GitHub Actions, append the Markdown summary to $GITHUB_STEP_SUMMARY (best effort: the
    gate's verdict and report do not depend on it, so a failure to append is only a warning)."""
    target = os.environ.get("GITHUB_STEP_SUMMARY")
    if not target:
        return
    from prunegate.report.render import markdown as markdown_render

    try:
        with open(target, "a", encoding="utf-8") as f:
            f.write(markdown_render.render(result) + "\n")
    except OSError as exc:
        print(f"warning: cannot append the summary to GITHUB_STEP_SUMMARY ({target}): {exc.strerror}", file=sys.stderr)


def _read_report(path: Path) -> str:
    require_file(path, "report file")
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        raise PrunegateError("cannot read the report as UTF-8 text", file=path) from None


@cli.command()
def verify(
    report: Path = typer.Argument(..., help="The report (DSSE envelope)."),
    key: Path = typer.Option(..., "--key", help="The signer's public key (NAME.pub)."),
    dense: Optional[Path] = typer.Option(None, help="Also check this file is the report's dense model."),
    pruned: Optional[Path] = typer.Option(None, help="Also check this file is the report's pruned model."),
    policy: Optional[Path] = typer.Option(None, help="Also check this file is the report's policy."),
) -> int:
    """Verify a signed report offline: exit 0 valid, 1 does not verify, 2 unreadable input."""
    from prunegate.report.attest import parse_envelope, verify_envelope
    from prunegate.report.keys import load_public
    from prunegate.digest import file_sha256

    public_key = load_public(key)
    files = {"dense": dense, "pruned": pruned, "policy": policy}
    for role, path in files.items():
        if path is not None:
            require_file(path, field=f"--{role}")
    result = verify_envelope(parse_envelope(_read_report(report), str(report)), public_key)
    out = _stdout()
    if result.ok:
        statement = result.statement
        subjects = {s["annotations"]["role"]: s for s in statement["subject"]}
        for role in ("dense", "pruned"):
            if files[role] is not None:
                actual, recorded = file_sha256(files[role]), subjects[role]["digest"]["sha256"]
                if actual != recorded:
                    result.fail(f"{files[role]} has sha256 {actual[:16]}…, the report's {role} model {recorded[:16]}…")
                    break
                result.checks.append(f"{files[role]} is the {role} model (sha256 {actual[:16]}…)")
        if result.ok and policy is not None:
            actual, recorded = file_sha256(policy), statement["predicate"]["policy"]["sha256"]
            if actual != recorded:
                result.fail(f"{policy} has sha256 {actual[:16]}…, the report's policy {str(recorded)[:16]}…")
            else:
                result.checks.append(f"{policy} is the policy (sha256 {actual[:16]}…)")
    for check in result.checks:
        out.print(f"✓ {check}")
    if not result.ok:
        print(f"NOT VERIFIED: {report}: {result.failure}", file=sys.stderr)
        return EXIT_FAIL
    predicate = result.statement["predicate"]
    models = ", ".join(f"{role} {s['name']} ({s['digest']['sha256'][:16]}…)"
                       for role, s in ((s["annotations"]["role"], s) for s in result.statement["subject"]))
    out.print(f"VERIFIED: {report}: verdict {predicate['verdict'].upper()} for {models} under policy "
              f"{predicate['policy']['name']!r}, {predicate['timing']['started']}")
    return EXIT_PASS


@report_cli.command("schema")
def report_schema() -> int:
    """Print the JSON Schema of the report (the statement's predicate)."""
    import json

    from prunegate.report.schema import PREDICATE_TYPE, Report

    schema = Report.model_json_schema()
    schema["$id"] = PREDICATE_TYPE
    print(json.dumps(schema, indent=2))
    return EXIT_PASS


@report_cli.command("show")
def report_show(
    report: Path = typer.Argument(..., help="The report (DSSE envelope)."),
    as_json: bool = typer.Option(False, "--json", help="Print the decoded statement as JSON."),
) -> int:
    """Summarise any report for a person (signature not checked: use `prunegate verify`)."""
    import json

    from prunegate.report.attest import read_envelope
    from prunegate.report.render import console as console_render

    data, _, statement = read_envelope(_read_report(report), str(report))
    if as_json:
        print(json.dumps(statement, indent=2))
        return EXIT_PASS
    parsed = _parse_predicate(statement, report)
    out = _stdout()
    signed = _signature_text(data)
    out.print(console_render.render(parsed, color=out.is_terminal, width=max(out.width, CONSOLE_WIDTH)), end="")
    out.print(f"{report}: {signed}")
    return EXIT_PASS


def _parse_predicate(statement: dict, path: Path):
    from prunegate.report.schema import Report

    try:
        return Report.model_validate(statement["predicate"])
    except Exception:
        raise PrunegateError("the predicate is not a prunegate report of this version", file=path, field="predicate") from None


def _signature_text(envelope_data: dict) -> str:
    keyids = [str(s.get("keyid", "?"))[:16] for s in envelope_data["signatures"] if isinstance(s, dict)]
    return f"signed by key {', '.join(keyids)} (not verified here: run prunegate verify)" if keyids else "UNSIGNED"


def _load_report(path: Path):
    """(Report, envelope) from a report file; PrunegateError (exit 2) when it is not one."""
    from prunegate.report.attest import read_envelope

    data, _, statement = read_envelope(_read_report(path), str(path))
    return _parse_predicate(statement, path), data


def _emit(text: str, out: Optional[Path]) -> None:
    """Write to --out atomically, or print as it is (no console markup) to stdout."""
    if out is None:
        sys.stdout.write(text)
    else:
        write_atomic(out, text)
        _stderr().print(f"wrote {out}")


@report_cli.command("html")
def report_html(
    report: Path = typer.Argument(..., help="The report (DSSE envelope)."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="File to write (default: the report's name with .html)."),
    gallery: bool = typer.Option(True, "--gallery/--no-gallery", help="Rebuild thumbnails of the inputs the pruned "
                                 "model newly gets wrong from the data the report names (skipped when unreachable)."),
) -> int:
    """Write the report as one self-contained HTML page."""
    parsed, data = _load_report(report)
    target = out if out is not None else report.with_suffix(".html")
    if target.resolve() == report.resolve():
        raise PrunegateError("the HTML would overwrite the report itself: pass --out", file=report)
    _check_writable(target, "--out")
    _write_renderings(parsed, html=target, signature=_signature_text(data), gallery=gallery)
    _stdout().print(f"wrote {target}")
    return EXIT_PASS


@report_cli.command("markdown")
def report_markdown(
    report: Path = typer.Argument(..., help="The report (DSSE envelope)."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="File to write (default: standard output)."),
) -> int:
    """Print a GitHub-flavoured Markdown summary of a report."""
    from prunegate.report.render import markdown as markdown_render

    _emit(markdown_render.render(_load_report(report)[0]), out)
    return EXIT_PASS


@report_cli.command("junit")
def report_junit(
    report: Path = typer.Argument(..., help="The report (DSSE envelope)."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="File to write (default: standard output)."),
) -> int:
    """Print a report as JUnit XML: one test case per rule, failures = the rules that did not pass."""
    from prunegate.report.render import junit as junit_render

    _emit(junit_render.render(_load_report(report)[0]), out)
    return EXIT_PASS


@cli.command()
def diff(
    old: Path = typer.Argument(..., help="The earlier report (DSSE envelope)."),
    new: Path = typer.Argument(..., help="The later report."),
    margin: float = typer.Option(0.005, min=0.0, max=1.0, help="Tolerated worsening of accuracy_drop and agreement "
                                 "per task, as a fraction (0.005 = half a percentage point)."),
    markdown: bool = typer.Option(False, "--markdown", help="Print GitHub-flavoured Markdown instead of text."),
) -> int:
    """Compare two reports: what got better or worse, per task and rule.

    Exit 1 when NEW regresses beyond the margin (a task's accuracy_drop rises or its agreement falls by
    more than it, or a rule that passed now fails), else 0."""
    from prunegate.diff import compare, render_text
    from prunegate.report.render.markdown import render_diff

    result = compare(_load_report(old)[0], _load_report(new)[0], margin)
    sys.stdout.write(render_diff(result) if markdown else render_text(result))
    return EXIT_FAIL if result.regressed else EXIT_PASS


def _csv(value: Optional[str]) -> Optional[list[str]]:
    return [v.strip() for v in value.split(",") if v.strip()] if value else None


@cli.command()
def corrupt(
    preset: str = typer.Option(..., help="cifar10-c or imagenet-c."),
    source: Path = typer.Option(..., help="The clean images."),
    format: str = typer.Option("imagefolder", "--format", help="Format of --source (as in a policy's data)."),
    class_names: Optional[Path] = typer.Option(
        None, "--class-names", help="The model's class names, one per line (as a policy's data.class_names)."),
    out: Optional[Path] = typer.Option(None, help="Folder to write (CIFAR-10-C layout); must not exist."),
    names: Optional[str] = typer.Option(None, help="Comma-separated corruption names (default: all 19)."),
    severities: str = typer.Option("1,2,3,4,5", help="Comma-separated severities."),
    limit: Optional[int] = typer.Option(None, min=1, help="A class-balanced subset of this size."),
    seed: int = typer.Option(0, min=0, help="Seed of every random draw (as suite.seed)."),
    preview: Optional[Path] = typer.Option(None, help="Write a PNG grid (corruptions x severities) of one image."),
    device: Device = typer.Option(Device.auto, help="Where to make the corruptions."),
    batch_size: int = typer.Option(256, min=1),
) -> int:
    """Render a corruption preset to disk, and/or preview it on one image."""
    from prunegate import corrupt as corrupt_lib
    from prunegate import shifts
    from prunegate.data import open_source, select
    from prunegate.policy import DataSource
    from prunegate.runners import resolve_device

    if out is None and preview is None:
        raise PrunegateError("nothing to do: give --out, --preview or both")
    preset_obj = shifts.get_preset(preset)
    chosen = _csv(names) or list(shifts.CORRUPTION_NAMES)
    for name in chosen:
        shifts.get_shift(name)  # unknown names fail here, before any work
    try:
        levels = [int(s) for s in _csv(severities) or []]
    except ValueError:
        raise PrunegateError(f"--severities must be integers 1-5, got {severities!r}") from None
    if not levels or any(not 1 <= s <= 5 for s in levels):
        raise PrunegateError(f"--severities must be integers 1-5, got {severities!r}")
    try:
        spec = DataSource(format=format, path=str(source), class_names=str(class_names) if class_names else None)
    except Exception:
        raise PrunegateError(f"--format {format!r} is not a data format (imagefolder, imagefolder-flat, npz, cifar10-binary)") from None
    images = open_source(spec, Path, "--source")
    indices = select(images.labels, limit)
    if preview is not None:
        from prunegate.data import fit_to_size

        first = int(indices[0])
        picture = fit_to_size(images.read([first], 89_478_485)[0][0].permute(2, 0, 1), preset_obj.image_size)
        png = corrupt_lib.preview_png(picture.permute(1, 2, 0), first, preset=preset, names=chosen, severities=levels, seed=seed)
        write_atomic(preview, png)
        _stdout().print(f"wrote {preview}")
    if out is not None:
        columns = (TextColumn("corrupting"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), TimeRemainingColumn())
        with Progress(*columns, console=_stderr(), transient=True, disable=not _stderr().is_terminal) as bar:
            task = bar.add_task("corrupting", total=len(indices))
            summary = corrupt_lib.render(images, indices, preset=preset, names=chosen, severities=levels, seed=seed,
                                         out=out, batch_size=batch_size, device=resolve_device(device.value, False),
                                         progress=lambda n: bar.advance(task, n))
        _stdout().print(f"wrote {out}: {len(chosen)} corruptions x {len(levels)} severities x {summary['images']} images "
                        f"at {summary['size']}px")
    return EXIT_PASS


@cli.command()
def potential(
    policy: Path = typer.Option(..., "--policy", "-p", help="Policy YAML file (its dense model, data and suite)."),
    pruned: list[Path] = typer.Option(..., "--pruned", help="A pruned member of the family; repeat, or list after one --pruned."),
    extra: Optional[list[Path]] = typer.Argument(None, help="More pruned members.", show_default=False),
    delta: float = typer.Option(0.005, min=0.0, max=1.0, help="Error tolerance vs the dense model (0.005 = 0.5 pp)."),
    out: Optional[Path] = typer.Option(None, help="Write the table as JSON."),
    plot: Optional[Path] = typer.Option(None, help="Write the prune-potential / excess-error plot (PNG)."),
    limit: Optional[int] = typer.Option(None, min=1, help="Evaluate a class-balanced subset of this size."),
    device: Optional[Device] = typer.Option(None, help="Where to run (overrides runtime.device)."),
    backend: Optional[Backend] = typer.Option(None, help="Model runtime (overrides runtime.backend)."),
    allow_pickle: bool = typer.Option(False, "--allow-pickle", help="Allow model files that unpickle arbitrary objects."),
) -> int:
    """Prune potential of a family of pruned models, per task and task group.

    The potential is the largest prune ratio whose error is within DELTA of the dense model's;
    the excess error is the growth of each group's error gap to clean, per prune ratio."""
    import json

    from prunegate.check import Overrides, apply_overrides, run_potential
    from prunegate.policy import load_policy
    from prunegate.potential import plot_png
    from prunegate.report.render.console import render_potential

    members = [*pruned, *(extra or [])]
    loaded = apply_overrides(load_policy(policy), Overrides(device=device.value if device else None,
                                                            backend=backend.value if backend else None, limit=limit))
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), TimeRemainingColumn())
    with Progress(*columns, console=_stderr(), transient=True, disable=not _stderr().is_terminal) as bar:
        result = run_potential(loaded, members, delta=delta, allow_pickle=allow_pickle, progress=_RichProgress(bar))
    if out is not None:
        write_atomic(out, json.dumps(result, indent=2) + "\n")
    if plot is not None:
        write_atomic(plot, plot_png(result, f"{loaded.name}: {len(members)} pruned models"))
    stdout = _stdout()
    stdout.print(render_potential(result, color=stdout.is_terminal, width=max(stdout.width, CONSOLE_WIDTH)), end="")
    for label, path in (("table", out), ("plot", plot)):
        if path is not None:
            stdout.print(f"{label}: {path}")
    return EXIT_PASS


@cli.command("prune")
def prune_command(
    model: Path = typer.Option(..., "--model", help="The dense torch model: TorchScript, .pt2, or a state dict with --arch."),
    ratios: str = typer.Option(..., help="Comma-separated ratios, e.g. 0.3,0.5,0.7 (wt: of weights; ft: of filters per layer)."),
    out: Path = typer.Option(..., "--out", help="Folder to write the family into (created; files must not exist)."),
    method: str = typer.Option("wt", help="wt: global weight magnitude; ft: per-layer filter L1 norm."),
    arch: Optional[str] = typer.Option(None, help="'module:fn' or 'file.py:fn' building the network for a state dict."),
    input_size: int = typer.Option(..., "--input-size", min=1, help="Square input side, for export."),
    formats: str = typer.Option("onnx,torchscript", "--format", help="Comma-separated: onnx, torchscript."),
    allow_pickle: bool = typer.Option(False, "--allow-pickle", help="Allow a pickled whole-module file (runs its code)."),
) -> int:
    """Make a family of pruned models (no retraining), masks made permanent, exported."""
    from prunegate.prune import METHODS, count_parameters, export_model
    from prunegate.prune import prune as prune_model
    from prunegate.runners.torch import load_torch_module

    if method not in METHODS:
        raise PrunegateError(f"--method must be one of {', '.join(METHODS)}, got {method!r}")
    try:
        levels = [float(r) for r in _csv(ratios) or []]
    except ValueError:
        raise PrunegateError(f"--ratios must be numbers in [0, 1), got {ratios!r}") from None
    if not levels or any(not 0.0 <= r < 1.0 for r in levels):
        raise PrunegateError(f"--ratios must be numbers in [0, 1), got {ratios!r}")
    kinds = _csv(formats) or []
    suffixes = {"onnx": "onnx", "torchscript": "pt"}
    if not kinds or any(k not in suffixes for k in kinds):
        raise PrunegateError(f"--format must list onnx and/or torchscript, got {formats!r}")
    require_file(model, "model file", field="--model")
    module, _, _ = load_torch_module(model, "--model", arch, Path.cwd(), allow_pickle)
    targets = [out / f"{method}-{round(r * 100):02d}.{suffixes[k]}" for r in levels for k in kinds]
    for target in targets:
        if target.exists():
            raise PrunegateError("already exists; refusing to overwrite", file=target)
    out.mkdir(parents=True, exist_ok=True)
    stdout = _stdout()
    for r in levels:
        member = prune_model(module, method, r)
        total, nonzero = count_parameters(member)
        for k in kinds:
            target = out / f"{method}-{round(r * 100):02d}.{suffixes[k]}"
            tmp = target.with_name(f".{target.name}.tmp")
            try:
                export_model(member, input_size, tmp, k)
                os.replace(tmp, target)
            finally:
                tmp.unlink(missing_ok=True)
        stdout.print(f"{method} {r:g}: {nonzero:,}/{total:,} parameters nonzero (prune ratio {1 - nonzero / total:.3f})")
    stdout.print(f"wrote {len(targets)} files to {out}")
    return EXIT_PASS


@cli.command()
def demo(out: Path = typer.Option(Path("demo-output"), "--out", help="Folder for the demo's data, models and reports.")) -> int:
    """Build a small dataset and CNN, prune it, and gate each pruned copy (offline, ~1 minute)."""
    from prunegate.demo import run_demo

    return run_demo(out, _stdout())


def main(argv: Optional[list[str]] = None) -> int:
    """Run the CLI; the one place that turns exceptions into exit codes."""
    command = typer.main.get_command(cli)
    try:
        result = command.main(args=argv, prog_name="prunegate", standalone_mode=False)
    except typer.Exit as exc:
        if exc.exit_code == EXIT_INTERRUPTED:  # click turns Ctrl-C into Exit(130) on some versions
            print(INTERRUPTED, file=sys.stderr)
        return exc.exit_code
    except UsageProblem as exc:  # the same one `error: ` line as every other bad input
        message = exc.format_message()
        if message:  # (no message: the help was shown, as for a bare `prunegate`)
            ctx = getattr(exc, "ctx", None)
            hint = f" (see '{ctx.command_path} --help')" if ctx is not None else ""
            print(f"error: {message}{hint}", file=sys.stderr)
        return EXIT_INPUT
    except (typer.Abort, KeyboardInterrupt):
        print(INTERRUPTED, file=sys.stderr)
        return EXIT_INTERRUPTED
    except PrunegateError as exc:
        if _state["debug"]:
            raise
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except Exception as exc:  # a bug: say so, keep the traceback for --debug
        if _state["debug"]:
            raise
        text = str(exc).strip().splitlines()
        print(f"internal error: {type(exc).__name__}: {text[0] if text else ''} (re-run with --debug for the "
              "traceback; please report it)", file=sys.stderr)
        return EXIT_BUG
    if result == EXIT_INTERRUPTED:  # typer returns Ctrl-C as this code when not standalone
        print(INTERRUPTED, file=sys.stderr)
    return result if isinstance(result, int) else EXIT_PASS


def app() -> None:
    """Console-script entry point."""
    sys.exit(main())
