"""The codebase keeps its promises: dvc.yaml declares every file a stage loads, outputs follow
``paths``, and the library's functions stay short enough to read at once."""

from __future__ import annotations

import ast
import importlib.util
import re
from pathlib import Path

import pytest
import yaml

from .conftest import ROOT

SRC = ROOT / "src"
# Packages whose modules a registry imports all of (digitlab.registry.Registry.discover).
# A stage loads all of a package's plug-ins, but its outputs depend only on the ones its
# params choose: a train stage declares just its recipe's model family, so editing the
# CNN module never retrains the linear model.
PLUGIN_PACKAGES = {
    "digitlab.models.families": "model family",
    "digitlab.data.sources": "dataset source",
    "digitlab.evaluation.figures": "figure",
}
MAX_FUNCTION_LINES = 60
MAX_PARAMETERS = 6


def module_file(name: str) -> Path | None:
    """The source file of a digitlab module (a package's __init__.py), or None."""
    base = SRC.joinpath(*name.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def module_name(path: Path) -> str:
    relative = path.relative_to(SRC).with_suffix("")
    parts = relative.parts[:-1] if relative.name == "__init__" else relative.parts
    return ".".join(parts)


def imports_of(path: Path) -> set[str]:
    """Every digitlab module a file imports, at the top or inside functions, with its parent packages."""
    tree = ast.parse(path.read_text())
    package = module_name(path) if path.is_relative_to(SRC) else ""
    if path.name != "__init__.py":
        package = package.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value in PLUGIN_PACKAGES:
            found.add(node.value)
    modules = set()
    for name in found:
        if name == "digitlab" or name.startswith("digitlab."):
            parts = name.split(".")
            modules.update(".".join(parts[:i]) for i in range(1, len(parts) + 1))
    return {name for name in modules if module_file(name)}


def data_dirs_of(path: Path) -> set[Path]:
    """Package-data folders a module names (e.g. the report's ``templates``)."""
    tree = ast.parse(path.read_text())
    names = {node.value for node in ast.walk(tree) if isinstance(node, ast.Constant) and isinstance(node.value, str)}
    return {SRC / "digitlab" / name for name in names if re.fullmatch(r"\w+", name) and (SRC / "digitlab" / name).is_dir()
            and not (SRC / "digitlab" / name / "__init__.py").exists()}  # fmt: skip


def files_loaded(entry: Path, plugins: dict[str, str | None]) -> set[Path]:
    """The files ``entry`` loads: its digitlab import closure, plug-ins narrowed to ``plugins``, and package data."""
    seen: set[str] = set()
    todo = list(imports_of(entry))
    files = {entry}
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        path = module_file(name)
        files.add(path)
        files.update(data_dirs_of(path))
        todo.extend(imports_of(path))
        if name in PLUGIN_PACKAGES:
            chosen = plugins.get(name)
            for module in path.parent.glob("*.py"):
                if module.stem != "__init__" and not module.stem.startswith("_") and chosen in (None, module.stem):
                    todo.append(f"{name}.{module.stem}")
    return files


def resolved_stages() -> list:
    from dvc.repo import Repo

    with Repo(str(ROOT)) as repo:
        return [
            (stage.addressing, stage.cmd, [str(dep.def_path) for dep in stage.deps], [str(out.def_path) for out in stage.outs])
            for stage in repo.index.stages
        ]


PARAMS = yaml.safe_load((ROOT / "params.yaml").read_text())
STAGES = resolved_stages()


@pytest.mark.parametrize(("stage", "cmd", "deps", "outs"), STAGES, ids=[s[0] for s in STAGES])
def test_every_file_a_stage_loads_is_a_declared_dependency(stage, cmd, deps, outs):
    module = re.search(r"-m (pipeline\.\w+)", cmd).group(1)
    recipe = re.search(r"model=(\w+)", cmd)
    family = PARAMS["models"][recipe.group(1)]["model"]["name"] if recipe else None
    loaded = files_loaded(ROOT / (module.replace(".", "/") + ".py"), {"digitlab.models.families": family})
    declared = [ROOT / dep for dep in deps]
    missing = sorted(str(path.relative_to(ROOT)) for path in loaded if not any(path == dep or dep in path.parents for dep in declared))
    assert not missing, f"{stage} loads files dvc.yaml does not declare as its dependencies: {missing}"


def test_the_closure_finds_lazy_imports_and_package_data():
    report = files_loaded(ROOT / "pipeline" / "report.py", {})
    train = files_loaded(ROOT / "pipeline" / "train.py", {"digitlab.models.families": "cnn"})
    assert SRC / "digitlab" / "templates" in report
    assert SRC / "digitlab" / "models" / "families" / "cnn.py" in train
    assert SRC / "digitlab" / "models" / "families" / "mlp.py" not in train
    assert SRC / "digitlab" / "training" / "fit.py" in train  # imported inside train(), not at the top


def test_every_recipe_has_its_stages_and_outputs_follow_paths():
    names = {stage for stage, *_ in STAGES}
    for recipe in PARAMS["models"]:
        assert {f"train@{recipe}", f"evaluate@{recipe}"} <= names
    roots = tuple(PARAMS["paths"][key] + "/" for key in ("data", "models", "reports"))
    for stage, _, _, outs in STAGES:
        for out in outs:
            assert out.startswith(roots), f"{stage} writes {out}, outside paths.data/models/reports"


def functions_in(path: Path):
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            arguments = node.args
            names = [a.arg for a in (*arguments.posonlyargs, *arguments.args, *arguments.kwonlyargs)]
            yield node.name, node.lineno, node.end_lineno - node.lineno + 1, [n for n in names if n not in ("self", "cls")]


def test_library_functions_are_short_with_few_parameters():
    problems = []
    for path in sorted((SRC / "digitlab").rglob("*.py")):
        for name, line, length, parameters in functions_in(path):
            where = f"{path.relative_to(ROOT)}:{line} {name}"
            if length > MAX_FUNCTION_LINES:
                problems.append(f"{where} has {length} lines (at most {MAX_FUNCTION_LINES})")
            if len(parameters) > MAX_PARAMETERS:
                problems.append(f"{where} takes {len(parameters)} parameters (at most {MAX_PARAMETERS})")
    assert not problems, "\n".join(problems)


def test_every_plugin_package_is_a_registry():
    for package in PLUGIN_PACKAGES:
        assert importlib.util.find_spec(package) is not None
