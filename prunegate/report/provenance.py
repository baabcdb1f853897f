"""What `prunegate verify` compares between a report and the files a reviewer holds.

A signature proves who wrote a report, not what ran: that takes the files. The models are pinned
by sha256 (the statement's subjects), the arch code by its file's sha256 (subjects with role
`arch`), and the policy by its file's sha256 and by what the run made of it: the recorded
document is the policy as validated *with the command line's overrides applied*, so comparing it
with the reviewer's policy file, field by field, shows every override (`check --limit 1` included)
whether or not the report lists it.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

# Overrides that cannot change a verdict: how many images go through a batch (results do not
# depend on it: tests/test_determinism.py) and the memory budget that chooses it, how many
# processes decode them, and the dense cache (its outputs are the dense model's own, byte for
# byte; the report's options.cache says which tasks it supplied).
NO_EFFECT = frozenset({"runtime.batch_size", "runtime.memory_budget", "runtime.workers", "runtime.cache"})
MODEL_PATHS = {"models.dense": "dense", "models.pruned": "pruned"}


@dataclass(frozen=True)
class Difference:
    field: str
    ran: object  # what the run used
    policy: object  # what the policy file says

    @property
    def model(self) -> str | None:
        """'dense' / 'pruned' when this is a model's path (settled by checking the model file)."""
        for prefix, role in MODEL_PATHS.items():
            if self.field == prefix or self.field.startswith(prefix + "."):
                return role
        return None

    def describe(self) -> str:
        return f"{self.field}: ran with {_show(self.ran)} (the policy says {_show(self.policy)})"


def _show(value: object) -> str:
    text = "unset" if value is None else repr(value)
    return text if len(text) <= 80 else text[:79] + "…"


def _walk(ran: object, given: object, path: str) -> Iterator[Difference]:
    if isinstance(ran, dict) and isinstance(given, dict):
        for key in sorted(set(ran) | set(given), key=str):
            yield from _walk(ran.get(key), given.get(key), f"{path}.{key}" if path else str(key))
    elif ran != given:
        yield Difference(path, ran, given)


def _model_paths_as_specs(document: dict) -> dict:
    """`models.dense: x.onnx` and `models.dense: {path: x.onnx}` mean the same: compare as the latter."""
    models = dict(document.get("models") or {})
    for which in MODEL_PATHS.values():
        if isinstance(models.get(which), str):
            models[which] = {"path": models[which], "arch": None}
    return {**document, "models": models}


def policy_differences(recorded: dict, policy_document: dict) -> list[Difference]:
    """Every field where the run's policy (with overrides) differs from the policy file's."""
    return list(_walk(_model_paths_as_specs(recorded), _model_paths_as_specs(policy_document), ""))


def unexplained(differences: list[Difference], checked_models: set[str]) -> list[Difference]:
    """The differences that could change the verdict: all but NO_EFFECT ones, and model paths
    whose files the reviewer checked by digest (the model that ran is then known)."""
    return [d for d in differences if d.field not in NO_EFFECT and d.model not in checked_models]


def arch_subjects(subjects: list) -> dict[str, list[str]]:
    """sha256 -> the models built by that arch code, from the statement's `arch` subjects."""
    found: dict[str, list[str]] = {}
    for subject in subjects:
        annotations = subject.get("annotations") if isinstance(subject, dict) else None
        if isinstance(annotations, dict) and annotations.get("role") == "arch":
            digest = subject.get("digest", {}).get("sha256")
            models = annotations.get("models")
            if isinstance(digest, str) and isinstance(models, list):
                found[digest] = [str(m) for m in models]
    return found
