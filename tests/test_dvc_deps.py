"""dvc.yaml lists, for every stage, exactly the code it runs: each module of `egolens/` and
`stages/` that its command imports, directly or through another module (so an edit anywhere in
that code reruns the stage and nothing else)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import yaml

from tests.conftest import ROOT

PACKAGES = ("egolens", "stages")


def module_file(name: str) -> Path | None:
    """egolens.analysis.attribution.paths -> egolens/analysis/attribution/paths.py (or the package's __init__.py)."""
    base = ROOT.joinpath(*name.split("."))
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.exists():
            return path
    return None


def imports_of(path: Path) -> set[str]:
    """Project modules a file imports (absolute imports of egolens.* / stages.*), at any depth of the file."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        else:
            continue
        found |= {n for n in names if n.split(".")[0] in PACKAGES and module_file(n) is not None}
    return found


def closure(module: str) -> set[Path]:
    """Every project file `module` runs: itself, the packages above each imported module, recursively."""
    seen: set[str] = set()
    todo = [module]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        parts = name.split(".")
        todo += [".".join(parts[:i]) for i in range(1, len(parts))]      # importing a.b.c runs a and a.b
        todo += sorted(imports_of(module_file(name)))
    return {module_file(n).relative_to(ROOT) for n in seen if not only_a_docstring(module_file(n))} - EXEMPT.keys()


def only_a_docstring(path: Path) -> bool:
    body = ast.parse(path.read_text()).body
    return all(isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant) for node in body)


EXEMPT = {Path("egolens/config.py"): "it only validates: the values it passes on are tracked as params, params.yaml "
                                     "sets every key (tests/test_config.py), and `validate` depends on it"}
"""Imported code a stage need not list, and why."""


def stages() -> dict[str, dict]:
    return yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]


@pytest.mark.parametrize("name", sorted(stages()))
def test_every_stage_lists_exactly_the_code_it_imports(name):
    stage = stages()[name]
    if name == "validate":
        assert "egolens/config.py" in stage["deps"]
    module = stage["cmd"].split("-m ")[1].split()[0]
    needed = {str(p) for p in closure(module)}
    listed = {d for d in stage.get("deps", []) if isinstance(d, str) and d.endswith(".py")}
    assert not needed - listed, f"{name} imports code dvc.yaml does not list: {sorted(needed - listed)}"
    extra = listed - needed - ({"egolens/config.py"} if name == "validate" else set())
    assert not extra, f"{name} lists code it never imports: {sorted(extra)}"


ENV_SIDE = ("egolens/runner.py", "egolens/env.py", "egolens/rollout.py", "egolens/evaluation.py", "egolens/video.py",
            "egolens/policies.py", "egolens/dqn.py", "egolens/model.py", "egolens/play.py",
            "egolens/collector.py")
"""Code that plays episodes or builds the network: the stages that only read tables must not depend on it."""


@pytest.mark.parametrize("name", ["plots", "report"])
def test_editing_the_env_runner_leaves_the_figures_and_the_report_up_to_date(name):
    stage = stages()[name]
    module = stage["cmd"].split("-m ")[1].split()[0]
    imported = {str(p) for p in closure(module)}
    listed = {d for d in stage["deps"] if isinstance(d, str)}
    assert not imported & set(ENV_SIDE), f"{name} imports {sorted(imported & set(ENV_SIDE))}"
    assert not listed & set(ENV_SIDE), f"dvc.yaml makes {name} depend on {sorted(listed & set(ENV_SIDE))}"


def test_editing_how_episodes_are_played_leaves_the_aggregate_up_to_date():
    module = stages()["aggregate"]["cmd"].split("-m ")[1].split()[0]
    assert not {"egolens/runner.py", "egolens/env.py", "egolens/play.py"} & {str(p) for p in closure(module)}


def regenerate(path: Path = ROOT / "dvc.yaml") -> None:
    """Rewrite each stage's code deps in dvc.yaml (comments and other deps kept):
    `python -m tests.test_dvc_deps` after a refactor that changes imports."""
    lines = path.read_text().splitlines(keepends=True)
    out, stage, in_deps = [], None, False
    for line in lines:
        if line.startswith("  ") and not line.startswith("   ") and line.rstrip().endswith(":"):
            stage = line.strip()[:-1]
        if line.strip() == "deps:":
            in_deps = True
            out.append(line)
            indent = line[:len(line) - len(line.lstrip())] + "  "
            module = stages()[stage]["cmd"].split("-m ")[1].split()[0]
            own = module.replace(".", "/") + ".py"
            needed = sorted(str(p) for p in closure(module)) + (["egolens/config.py"] if stage == "validate" else [])
            ordered = [own] + [p for p in needed if p.startswith("egolens/")] + \
                [p for p in needed if p.startswith("stages/") and p != own]
            out += [f"{indent}- {p}\n" for p in dict.fromkeys(ordered)]
            continue
        if in_deps and line.strip().startswith("- ") and line.strip()[2:].endswith(".py"):
            continue
        if in_deps and not line.strip().startswith("- ") and not line.strip().startswith("#"):
            in_deps = False
        out.append(line)
    path.write_text("".join(out))


if __name__ == "__main__":
    regenerate()
