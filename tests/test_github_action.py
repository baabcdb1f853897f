"""The reusable GitHub action: its structure, and its gate step run here as GitHub would run it."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest
import yaml

ACTION = Path(__file__).resolve().parents[1] / ".github" / "actions" / "prunegate" / "action.yml"


@pytest.fixture(scope="module")
def action() -> dict:
    return yaml.safe_load(ACTION.read_text())


def step(action: dict, name: str) -> dict:
    return next(s for s in action["runs"]["steps"] if s.get("name") == name or s.get("id") == name)


def run_gate_step(action: dict, tmp_path: Path, fake_prunegate: str, **settings: str) -> subprocess.CompletedProcess:
    """The gate step's shell, run as GitHub runs it, with `fake_prunegate` (a bash script) as
    `prunegate` on the PATH; `settings` are the step's environment beyond these defaults."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "prunegate"
    fake.write_text(fake_prunegate)
    fake.chmod(0o755)
    env = {
        **os.environ,
        "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
        "GITHUB_OUTPUT": str(tmp_path / "github-output"),
        "ARGS_SEEN": str(tmp_path / "args"),
        "DENSE": "",
        "PRUNED": "p.onnx",
        "REPORT": "r.json",
        "HTML": "r.html",
        "JUNIT": "r.xml",
        **settings,
    }
    return subprocess.run(
        ["bash", "--noprofile", "--norc", "-eo", "pipefail", "-c", step(action, "gate")["run"]],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_composite_action_inputs_and_steps(action) -> None:
    assert action["runs"]["using"] == "composite"
    assert {"policy", "dense", "pruned", "signing-key", "python-version"} <= set(action["inputs"])
    assert action["inputs"]["policy"]["required"] is True
    uses = [s.get("uses", "") for s in action["runs"]["steps"]]
    assert any(u.startswith("actions/setup-python@") for u in uses)
    upload = next(s for s in action["runs"]["steps"] if s.get("uses", "").startswith("actions/upload-artifact@"))
    assert upload["if"] == "always()"
    for name in ("report", "html", "junit"):
        assert f"${{{{ inputs.{name} }}}}" in upload["with"]["path"]
    gate = step(action, "gate")
    assert gate["env"]["PRUNEGATE_SIGNING_KEY"] == "${{ inputs.signing-key }}"
    # inputs reach the script through the environment, never pasted into it (no script injection)
    for s in action["runs"]["steps"]:
        assert "${{" not in s.get("run", "")


def test_the_gate_step_passes_its_inputs_and_exit_code(action, tmp_path) -> None:
    """The step's shell, run as GitHub runs it, with a stand-in `prunegate` that records its
    arguments and exits 1 (a failed gate)."""
    done = run_gate_step(
        action,
        tmp_path,
        '#!/usr/bin/env bash\nprintf "%s\\n" "$@" > "$ARGS_SEEN"\nexit 1\n',
        POLICY="my policy.yaml",
        ARGS="--device cpu  --limit 20",
        PRUNEGATE_SIGNING_KEY="",
    )
    env = {**os.environ}
    outputs = tmp_path / "github-output"
    assert done.returncode == 0, done.stderr  # the step itself succeeds; the last step fails the job
    assert (tmp_path / "args").read_text().splitlines() == [
        "check",
        "--policy",
        "my policy.yaml",
        "--report",
        "r.json",
        "--html",
        "r.html",
        "--junit",
        "r.xml",
        "--pruned",
        "p.onnx",
        "--device",
        "cpu",
        "--limit",
        "20",
    ]
    assert dict(re.findall(r"^([\w-]+)=(.*)$", outputs.read_text(), re.M)) == {"exit-code": "1", "verdict": "fail"}
    fail_step = step(action, "Fail the step with the gate's exit code")
    assert subprocess.run(["bash", "-c", fail_step["run"]], env={**env, "CODE": "1"}).returncode == 1
    assert subprocess.run(["bash", "-c", fail_step["run"]], env={**env, "CODE": "0"}).returncode == 0


def test_with_a_public_key_the_step_passes_only_a_verified_pass(action, tmp_path) -> None:
    """check exits 0, but verify --require-pass does not confirm it: the step's exit code is 1."""
    done = run_gate_step(
        action,
        tmp_path,
        '#!/usr/bin/env bash\necho "$*" >> "$ARGS_SEEN"\n'
        '[ "$1" = verify ] && { grep -q "PUBLIC KEY" "$4" || exit 9; exit 1; }\nexit 0\n',
        POLICY="policy.yaml",
        ARGS="",
        PRUNEGATE_SIGNING_KEY="private",
        PUBLIC_KEY="-----BEGIN PUBLIC KEY-----\nabc\n-----END PUBLIC KEY-----",
    )
    outputs = tmp_path / "github-output"
    assert done.returncode == 0, done.stderr
    calls = (tmp_path / "args").read_text().splitlines()
    assert calls[0].startswith("check ") and calls[1].startswith("verify r.json --key ")
    assert calls[1].endswith("--require-pass --pruned p.onnx")
    assert dict(re.findall(r"^([\w-]+)=(.*)$", outputs.read_text(), re.M)) == {"exit-code": "1", "verdict": "fail"}


def test_the_options_it_passes_exist() -> None:
    import typer

    from prunegate.cli import cli

    commands = typer.main.get_command(cli).commands
    options = {o for p in commands["check"].params for o in p.opts}
    assert {"--policy", "--report", "--html", "--junit", "--dense", "--pruned"} <= options
    verify = {o for p in commands["verify"].params for o in p.opts}
    assert {"--key", "--require-pass", "--dense", "--pruned"} <= verify
