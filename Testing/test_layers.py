"""The engine's folders are its layers (DESIGN.md): imports point down, never in a cycle (engine and training package)."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LIB = ROOT / "AbdoSeg" / "AbdoSegLib"
TRAINING = ROOT / "Training" / "abdoseg_train"
PACKAGES = ("AbdoSegLib", "abdoseg_train")

LAYERS = {
    0: {"image", "organs", "errors", "resources", "io", "model", "analysis", "surfaces"},
    1: {"inference", "progress", "process", "outputs", "run_case", "cohort", "commands", "cli", "demo"},
    2: {"scene"},
}
"""Layer of each top-level module or folder of AbdoSegLib; a module may import its own layer and those below."""

MAX_LINES = 400


def _unit(module: str) -> str:
    """'AbdoSegLib.io.atomic' -> 'io' (the top-level module or folder)."""
    return module.split(".")[1] if module.count(".") else "__init__"


def _layer(module: str) -> int:
    unit = _unit(module)
    return next((layer for layer, units in LAYERS.items() if unit in units), -1)


def _package_dir(path: Path) -> Path:
    return LIB if LIB in path.parents else TRAINING


def _module_name(path: Path) -> str:
    parts = path.relative_to(_package_dir(path).parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    """Modules of the two packages (dotted names) that ``path`` imports, at any depth of its code."""
    package = _module_name(path).split(".")
    if path.name != "__init__.py":
        package = package[:-1]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.startswith(PACKAGES):
                names = [f"{target}.{alias.name}" for alias in node.names]
                found |= {name for name in names if _exists(name)} or {target}
        elif isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name.startswith(PACKAGES)}
    return {name for name in found if name not in PACKAGES}


def _exists(module: str) -> bool:
    path = (LIB if module.startswith("AbdoSegLib") else TRAINING).parent.joinpath(*module.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def _graph(roots: tuple[Path, ...] = (LIB,)) -> dict[str, set[str]]:
    paths = [path for root in roots for path in sorted(root.rglob("*.py")) if "__pycache__" not in path.parts]
    return {_module_name(path): _imports(path) for path in paths}


def test_every_module_has_a_layer():
    unplaced = sorted(module for module in _graph() if module != "AbdoSegLib" and _layer(module) < 0)
    assert not unplaced, f"add these to LAYERS: {unplaced}"


def test_imports_point_down():
    upward = [(module, target) for module, targets in _graph().items() for target in targets
              if module != "AbdoSegLib" and _layer(target) > _layer(module)]
    assert not upward, upward


def test_no_import_cycles():
    graph = _graph((LIB, TRAINING))
    state: dict[str, int] = {}  # 1 on the current path, 2 done

    def visit(module: str, path: list[str]) -> list[str] | None:
        state[module] = 1
        for target in sorted(graph.get(module, ())):
            if state.get(target) == 1:
                return path + [module, target]
            if target not in state and (cycle := visit(target, path + [module])):
                return cycle
        state[module] = 2
        return None

    for module in sorted(graph):
        if module not in state and (cycle := visit(module, [])):
            raise AssertionError(" -> ".join(cycle))


def test_the_engine_never_imports_the_training_package():
    assert not [(module, target) for module, targets in _graph().items() for target in targets if target.startswith(PACKAGES[1])]


def test_only_the_scene_layer_imports_slicer():
    for path in sorted(LIB.rglob("*.py")):
        if "scene" in path.relative_to(LIB).parts:
            continue
        tree = ast.parse(path.read_text())
        modules = {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
        modules |= {node.module or "" for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and not node.level}
        assert not {m for m in modules if m.split(".")[0] in {"slicer", "qt", "ctk"}}, path


def test_modules_stay_small():
    long = {str(path.relative_to(LIB)): n for path in LIB.rglob("*.py") if (n := len(path.read_text().splitlines())) > MAX_LINES}
    assert not long, f"modules over {MAX_LINES} lines: {long}"
