"""The house rules, checked: imports run downward (valor_core <- tuning <- workflows) with no circle, function-level
imports included; the science library loads none of Ray, MLflow or boto3; the annotations ship inside the package."""
from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

from tests.conftest import REPO

PACKAGES = ("valor_core", "tuning", "workflows")
LAYER = {"valor_core": 0, "tuning": 1, "workflows": 2}


def _modules() -> dict[str, Path]:
    out = {}
    for pkg in PACKAGES:
        for path in sorted((REPO / pkg).rglob("*.py")):
            parts = list(path.relative_to(REPO).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join(parts)] = path
    return out


def _imports(name: str, path: Path, known: set[str]) -> set[str]:
    """Project modules `name` imports anywhere in the file (top level or inside functions)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        targets = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
            targets = [base] + [f"{base}.{a.name}" for a in node.names]
        for t in targets:
            while t and t not in known:
                t = t.rpartition(".")[0]
            if t and t != name:
                found.add(t)
    return found


def _graph() -> dict[str, set[str]]:
    mods = _modules()
    return {name: _imports(name, path, set(mods)) for name, path in mods.items()}


def test_imports_run_downward():
    upward = [(a, b) for a, deps in _graph().items() for b in deps
              if LAYER[b.split(".")[0]] > LAYER[a.split(".")[0]]]
    assert upward == [], f"imports against the layering valor_core <- tuning <- workflows: {upward}"


def test_no_import_circle():
    graph = _graph()
    # a package's __init__ importing its own submodules is not a circle of concepts: drop package -> child edges
    graph = {a: {b for b in deps if not b.startswith(a + ".")} for a, deps in graph.items()}
    state: dict[str, int] = {}
    stack: list[str] = []
    circles: list[list[str]] = []

    def visit(n: str) -> None:
        state[n] = 1
        stack.append(n)
        for m in sorted(graph.get(n, ())):
            if state.get(m) == 1:
                circles.append(stack[stack.index(m):] + [m])
            elif m not in state:
                visit(m)
        stack.pop()
        state[n] = 2

    for n in sorted(graph):
        if n not in state:
            visit(n)
    assert circles == [], f"import circles: {circles}"


def test_science_library_loads_no_ray_mlflow_boto3():
    names = [n for n in _modules() if n.split(".")[0] == "valor_core"]
    code = ("import importlib, json, sys\n"
            f"for n in {names!r}:\n    importlib.import_module(n)\n"
            "print(json.dumps(sorted(m for m in ('ray', 'mlflow', 'boto3') if m in sys.modules)))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert json.loads(r.stdout.strip().splitlines()[-1]) == [], f"{len(names)} valor_core modules loaded these"


def test_cli_starts_without_torch_or_ray():
    code = ("import json, sys, workflows.cli\n"
            "print(json.dumps(sorted(m for m in ('torch', 'ray', 'mlflow', 'pyarrow') if m in sys.modules)))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    assert json.loads(r.stdout.strip().splitlines()[-1]) == []


def test_annotations_ship_inside_the_package():
    from valor_core.llp import DEFAULT_ANNOTATIONS, load_split

    root = Path(DEFAULT_ANNOTATIONS)
    assert root.is_relative_to(REPO / "valor_core")
    names = {p.name for p in root.iterdir()}
    assert {"AVVP_train.csv", "AVVP_val_pd.csv", "AVVP_test_pd.csv", "AVVP_dataset_full.csv", "AVVP_eval_audio.csv",
            "AVVP_eval_visual.csv", "SOURCE.md", "orig_2020"} <= names
    assert (root / "orig_2020" / "AVVP_eval_audio.csv").is_file()
    assert {p.name for p in (REPO / "valor_core" / "data" / "ave").iterdir()} >= {"Annotations.txt", "SOURCE.md"}
    assert [len(load_split(root, s)) for s in ("train", "val", "test")] == [10000, 649, 1200]


def test_nothing_reads_beside_the_repository():
    """No code, test, bench or config names the folder the development machines keep beside the repository."""
    sibling = "sha" + "red"  # spelled in two parts so this test does not name it itself
    needles = (f'"{sibling}"', f"'{sibling}'", f"../{sibling}", f'/ "{sibling}"')
    offenders = []
    for pattern in ("*.py", "*.yaml", "*.yml", "*.toml"):
        for path in REPO.rglob(pattern):
            rel = path.relative_to(REPO)
            if rel.parts[0] in (".venv", "runs", ".git"):
                continue
            text = path.read_text(errors="replace")
            if any(n in text for n in needles):
                offenders.append(str(rel))
    assert offenders == []
