"""Code habits that no linter checks: which package may import which, private names stay in
their module, and the shifts keep no module state. Imports are read with `ast`, at module level
and inside functions alike; each failure lists every offender as `file:line ...`."""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "prunegate"


@dataclass(frozen=True)
class Import:
    file: str  # relative to the repository root
    line: int
    module: str  # the absolute module imported from (`from M import n`) or imported (`import M`)
    name: str | None  # `n` of `from M import n`; None for `import M`

    @property
    def targets(self) -> list[str]:
        """The modules this import may load: M, and M.n when n is a submodule rather than an object."""
        return [self.module] if self.name is None else [self.module, f"{self.module}.{self.name}"]


def module_name(path: Path, root: Path = ROOT) -> str:
    """prunegate/a/b.py -> prunegate.a.b; prunegate/a/__init__.py -> prunegate.a."""
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def resolve(path: Path, node: ast.ImportFrom, root: Path = ROOT) -> str:
    """The absolute module of a `from ... import`, relative ones resolved against `path`'s package."""
    if node.level == 0:
        return node.module or ""
    package = module_name(path, root).split(".")
    if path.name != "__init__.py":
        package.pop()  # a plain module's package is its parent
    base = package[: len(package) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def imports_in(path: Path, root: Path = ROOT) -> list[Import]:
    """Every import statement in one file, wherever it stands."""
    file = str(path.relative_to(root))
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=file)):
        if isinstance(node, ast.Import):
            found += [Import(file, node.lineno, alias.name, None) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            module = resolve(path, node, root)
            found += [Import(file, node.lineno, module, alias.name) for alias in node.names]
    return found


def source_files(folder: Path = PACKAGE) -> list[Path]:
    """The package's Python files (or those of one of its sub-folders)."""
    return sorted(p for p in folder.rglob("*.py") if "__pycache__" not in p.parts)


ALL_IMPORTS = [imp for path in source_files() for imp in imports_in(path)]


def is_within(module: str, package: str) -> bool:
    """`module` is `package` or lies inside it."""
    return module == package or module.startswith(package + ".")


def is_submodule(module: str) -> bool:
    """A module or package of that name exists under prunegate/."""
    path = ROOT.joinpath(*module.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def private(part: str) -> bool:
    """An underscore name that is not a dunder (`_x`, not `__init__` or `__version__`)."""
    return part.startswith("_") and not (part.startswith("__") and part.endswith("__"))


def report(offenders: list[str]) -> str:
    return f"{len(offenders)} offender(s):\n  " + "\n  ".join(offenders)


# --- (a) layering ---------------------------------------------------------------------------------

LAYERS = [
    # (the importing files, as a glob under prunegate/; the packages or modules they must not
    #  import; the files the rule spares, as path prefixes)
    # `python -m prunegate` runs the CLI, so __main__.py is its one importer outside cli/.
    ("**/*.py", ["prunegate.cli"], ("prunegate/cli/", "prunegate/__main__.py")),
    ("report/gallery.py", ["prunegate.check", "prunegate.engine"], ()),
    ("shifts/**/*.py", ["prunegate.data", "prunegate.runners", "prunegate.report"], ()),
]


@pytest.mark.parametrize(("files", "forbidden", "spared"), LAYERS, ids=[files for files, _, _ in LAYERS])
def test_layering(files: str, forbidden: list[str], spared: tuple[str, ...]) -> None:
    chosen = {str(p.relative_to(ROOT)) for p in PACKAGE.glob(files)}
    assert chosen, f"no file matches prunegate/{files}"
    offenders = []
    for imp in ALL_IMPORTS:
        if imp.file not in chosen or imp.file.startswith(spared):
            continue
        for target in imp.targets:
            hit = next((f for f in forbidden if is_within(target, f)), None)
            if hit:
                offenders.append(f"{imp.file}:{imp.line} imports {target} (from {hit})")
                break
    assert not offenders, report(offenders)


def test_the_import_reader_resolves_relative_imports_and_finds_those_in_functions(tmp_path: Path) -> None:
    # A stand-in file at a path inside the package: the reader only parses it.
    folder = tmp_path / "prunegate" / "shifts"
    folder.mkdir(parents=True)
    (folder / "__init__.py").write_text("from ._registry import register\n")
    (folder / "blur.py").write_text("import torch\n\n\ndef f():\n    from ..report import _schema, keys\n")
    found = {(imp.line, imp.module, imp.name) for imp in imports_in(folder / "blur.py", tmp_path)}
    package = {(imp.module, imp.name) for imp in imports_in(folder / "__init__.py", tmp_path)}
    assert found == {(1, "torch", None), (5, "prunegate.report", "_schema"), (5, "prunegate.report", "keys")}
    assert package == {("prunegate.shifts._registry", "register")}


# --- (b) private names stay in their module -------------------------------------------------------


def test_no_private_name_is_imported_from_another_module() -> None:
    """`from prunegate.x import _name` (an object) is an offender wherever it stands; importing a
    private submodule is fine from inside its own package (`from ._registry import register`)."""
    offenders = []
    for imp in ALL_IMPORTS:
        if not is_within(imp.module, "prunegate"):
            continue
        if imp.name is not None and private(imp.name) and not is_submodule(f"{imp.module}.{imp.name}"):
            offenders.append(f"{imp.file}:{imp.line} imports {imp.name} from {imp.module}")
    assert not offenders, report(offenders)


def test_private_modules_are_imported_only_inside_their_package() -> None:
    offenders = []
    for imp in ALL_IMPORTS:
        importer = module_name(ROOT / imp.file)
        for target in imp.targets:
            if not is_within(target, "prunegate") or not is_submodule(target):
                continue
            parts = target.split(".")
            first_private = next((i for i, part in enumerate(parts) if private(part)), None)
            if first_private is None:
                continue
            owner = ".".join(parts[:first_private])  # the package the private module belongs to
            if not is_within(importer, owner):
                shown = imp.name if imp.name is not None else target
                offenders.append(f"{imp.file}:{imp.line} imports {shown} from {imp.module}")
            break
    assert not offenders, report(offenders)


# --- (c) the shifts keep no module state ----------------------------------------------------------


def test_shifts_use_no_global_statement() -> None:
    """What `grep -n global prunegate/shifts` was meant to find, without its false hits in prose
    ("never global", "global indices"): a `global` statement rebinding module state."""
    offenders = [
        f"{path.relative_to(ROOT)}:{node.lineno} declares global {', '.join(node.names)}"
        for path in source_files(PACKAGE / "shifts")
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8")))
        if isinstance(node, ast.Global)
    ]
    assert not offenders, report(offenders)
