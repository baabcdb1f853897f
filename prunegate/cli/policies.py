"""`prunegate policy init | validate | schema`."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import typer

from prunegate.errors import PrunegateError

from .common import EXIT_PASS, policy_cli, stdout_console, write_atomic


@policy_cli.command("init")
def policy_init(
    out: Path = typer.Argument(Path("prunegate.yaml"), help="File to write."),
    force: bool = typer.Option(False, "--force", help="Overwrite an existing file."),
) -> int:
    """Write a commented policy template."""
    if out.exists() and not force:
        raise PrunegateError("already exists (use --force to overwrite)", file=out)
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
