"""`prunegate policy init | validate | schema`."""

from __future__ import annotations

from enum import Enum
from importlib import resources
from pathlib import Path

import typer

from prunegate.errors import PrunegateError

from .common import EXIT_PASS, policy_cli, stdout_console, warn, write_atomic


class Preset(str, Enum):
    cifar10 = "cifar10"
    imagenet = "imagenet"
    voc_segmentation = "voc-segmentation"


@policy_cli.command("init")
def policy_init(
    out: Path = typer.Argument(Path("prunegate.yaml"), help="File to write."),
    dense: Path | None = typer.Option(None, help="The dense model: fills models.dense (and the input, where it says)."),
    pruned: Path | None = typer.Option(None, help="The pruned model: fills models.pruned."),
    data: Path | None = typer.Option(None, help="The test set: fills data.test (format read from its layout)."),
    preset: Preset | None = typer.Option(
        None, help="Start from this ready policy (default: chosen from the model's input size and the data)."
    ),
    force: bool = typer.Option(False, "--force", help="Overwrite an existing file."),
) -> int:
    """Write a policy: the commented template, or with --dense/--pruned/--data one that runs as is."""
    if out.exists() and not force:
        raise PrunegateError("already exists (use --force to overwrite)", file=out)
    given = {"--dense": dense, "--pruned": pruned, "--data": data}
    if any(given.values()) or preset:
        missing = [option for option, value in given.items() if value is None]
        if missing:
            raise PrunegateError(f"{', '.join(missing)} missing: a filled-in policy needs --dense, --pruned and --data")
        from prunegate.policy_init import init_policy

        assert dense and pruned and data  # (checked above; for the type checker)
        result = init_policy(out, dense, pruned, data, preset.value if preset else None)
        write_atomic(out, result.text)
        stdout_console().print(f"wrote {out} (from the {result.preset or 'template'} policy)")
        for note in result.notes:
            warn(f"{out}: check {note}")
        return EXIT_PASS
    write_atomic(out, resources.files("prunegate").joinpath("templates/policy.yaml").read_text(encoding="utf-8"))
    stdout_console().print(f"wrote {out}")
    return EXIT_PASS


@policy_cli.command("validate")
def policy_validate(file: Path = typer.Argument(..., help="Policy YAML file.")) -> int:
    """Check a policy file: schema, names, and that every rule matches a task."""
    from prunegate.plan import build_plan
    from prunegate.policy import load_policy

    policy = load_policy(file)
    tasks = build_plan(policy)
    stdout_console().print(f"{file}: valid policy {policy.name!r}: {len(tasks)} tasks, {len(policy.gate.rules)} rules")
    return EXIT_PASS


@policy_cli.command("schema")
def policy_schema() -> int:
    """Print the policy's JSON Schema."""
    from prunegate.policy import policy_json_schema

    print(policy_json_schema())
    return EXIT_PASS
