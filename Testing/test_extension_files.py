"""The Slicer extension's files: ExtensionsIndex entry, CMake lists, the .ui file, icons, sample data.

AbdoSeg.json is checked against the rules of Slicer's catalog entry schema v1.0.2
(https://raw.githubusercontent.com/Slicer/Slicer/main/Schemas/slicer-extension-catalog-entry-schema-v1.0.2.json,
the one the ExtensionsIndex validates with). The schema file is not copied here: its licence
(the 3D Slicer licence) asks to carry its terms along with any copy, so its rules are written out below.
"""

from __future__ import annotations

import ast
import hashlib
import importlib.metadata
import json
import pathlib
import re
import subprocess
import sys
import types
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from PIL import Image as PILImage

from AbdoSegLib import outputs
from AbdoSegLib.resources import RESOURCES, SAMPLE_CT

ROOT = Path(__file__).resolve().parents[1]
MODULE_DIR = ROOT / "AbdoSeg"
PROJECT_URL = "https://github.com/abdoseg/SlicerAbdoSeg"
RAW_URL = "https://raw.githubusercontent.com/abdoseg/SlicerAbdoSeg/main/"

# slicer-extension-catalog-entry-schema-v1.0.2.json: required keys, and each allowed key's JSON type
# ("additionalProperties": false), enum and range.
SCHEMA_ID = "https://raw.githubusercontent.com/Slicer/Slicer/main/Schemas/slicer-extension-catalog-entry-schema-v1.0.2.json#"
SCHEMA_REQUIRED = {"$schema", "category", "scm_url"}
SCHEMA_TYPES = {
    "$schema": str, "category": str, "scm_url": str, "scm_revision": str, "scm_type": str, "build_dependencies": list,
    "dicom_support_rule": str, "build_subdirectory": str, "enabled": bool, "tier": int,
}
# ExtensionsIndex's scripts/check_description_files.py ACCEPTED_EXTENSION_CATEGORIES (the ones near ours).
KNOWN_CATEGORIES = {"Segmentation", "Quantification", "Exporter", "Utilities", "Surface Models", "Analysis"}


def cmake_set(text: str, name: str) -> str:
    """The quoted value of ``set(NAME "value")`` in a CMakeLists.txt."""
    match = re.search(rf'set\s*\(\s*{name}\s+"([^"]*)"\s*\)', text)
    assert match, f"no set({name} ...)"
    return match.group(1)


def cmake_list(text: str, name: str) -> list[str]:
    """The items of ``set(NAME item item ...)`` (one per line), without CMake variables."""
    match = re.search(rf"set\s*\(\s*{name}\s+(.*?)\)", text, re.S)
    assert match, f"no set({name} ...)"
    return [item for item in match.group(1).split() if not item.startswith("$")]


# ExtensionsIndex entry and top-level CMakeLists.txt ---------------------------------------------


def test_the_extensions_index_entry_follows_the_catalog_schema():
    path = ROOT / "AbdoSeg.json"
    raw = path.read_bytes()
    assert b"\r" not in raw and raw.endswith(b"\n")  # the index wants LF line endings
    entry = json.loads(raw)
    assert entry["$schema"] == SCHEMA_ID
    assert SCHEMA_REQUIRED <= set(entry)
    assert set(entry) <= set(SCHEMA_TYPES), f"keys the schema does not allow: {set(entry) - set(SCHEMA_TYPES)}"
    for key, value in entry.items():
        assert isinstance(value, SCHEMA_TYPES[key]) and not (SCHEMA_TYPES[key] is int and isinstance(value, bool)), key
    assert all(isinstance(item, str) for item in entry.get("build_dependencies", []))
    assert entry.get("scm_type", "git") in ("git", "local")
    assert 1 <= entry.get("tier", 1) <= 5
    assert entry["category"] in KNOWN_CATEGORIES
    assert entry["scm_url"] == PROJECT_URL and entry["scm_url"].startswith("https://")
    assert entry["scm_url"].rsplit("/", 1)[1].startswith("Slicer")  # the index asks repository names to start so


def test_the_top_level_cmake_file_matches_the_index_entry():
    text = (ROOT / "CMakeLists.txt").read_text()
    entry = json.loads((ROOT / "AbdoSeg.json").read_text())
    assert re.search(r"^project\(AbdoSeg\)$", text, re.M)  # the index wants the project named like the .json
    assert cmake_set(text, "EXTENSION_HOMEPAGE") == entry["scm_url"] == PROJECT_URL
    assert cmake_set(text, "EXTENSION_CATEGORY") == entry["category"]
    assert cmake_set(text, "EXTENSION_DEPENDS").split() == entry["build_dependencies"] == ["PyTorch"]
    assert cmake_set(text, "EXTENSION_CONTRIBUTORS") == "AbdoSeg contributors"
    assert len(cmake_set(text, "EXTENSION_DESCRIPTION")) > 40
    icon = cmake_set(text, "EXTENSION_ICONURL")
    assert icon == RAW_URL + "AbdoSeg.png" and (ROOT / icon[len(RAW_URL):]).is_file()
    screenshots = cmake_set(text, "EXTENSION_SCREENSHOTURLS").split()
    assert screenshots and all(url.startswith(RAW_URL + "Screenshots/") for url in screenshots)
    for line in ("find_package(Slicer REQUIRED)", "include(${Slicer_USE_FILE})", "add_subdirectory(AbdoSeg)",
                 "include(${Slicer_EXTENSION_GENERATE_CONFIG})", "include(${Slicer_EXTENSION_CPACK})"):
        assert line in text
    assert (ROOT / "LICENSE").is_file()


def test_the_extension_package_carries_abdosegs_licence_and_readme_and_says_which_slicer():
    # Slicer's UseSlicer.cmake sets both to Slicer's own files unless they are defined before find_package(Slicer).
    text = (ROOT / "CMakeLists.txt").read_text()
    for name, file in (("EXTENSION_LICENSE_FILE", "LICENSE"), ("EXTENSION_README_FILE", "README.md")):
        value = cmake_set(text, name)
        assert value == "${CMAKE_CURRENT_SOURCE_DIR}/" + file and (ROOT / file).is_file()
        assert text.index(f"set({name} ") < text.index("find_package(Slicer REQUIRED)")
    assert "Apache License" in (ROOT / "LICENSE").read_text() and "Version 2.0" in (ROOT / "LICENSE").read_text()
    assert cmake_set(text, "EXTENSION_DESCRIPTION").endswith("Needs Slicer 5.10 or later.")
    assert "Slicer versions: 5.10 or later." in (MODULE_DIR / "AbdoSeg.py").read_text()
    assert "In Slicer 5.10 or later" in (ROOT / "README.md").read_text()


# The module's CMakeLists.txt lists every file ----------------------------------------------------


def test_the_module_cmake_file_lists_every_lib_file_and_resource():
    text = (MODULE_DIR / "CMakeLists.txt").read_text()
    scripts = cmake_list(text, "MODULE_PYTHON_SCRIPTS")
    resources = cmake_list(text, "MODULE_PYTHON_RESOURCES")
    on_disk_scripts = sorted(p.relative_to(MODULE_DIR).as_posix() for p in (MODULE_DIR / "AbdoSegLib").rglob("*.py") if "__pycache__" not in p.parts)
    on_disk_resources = sorted(p.relative_to(MODULE_DIR).as_posix() for p in RESOURCES.rglob("*") if p.is_file() and "__pycache__" not in p.parts)
    assert "${MODULE_NAME}.py" in text
    assert sorted(scripts) == on_disk_scripts, "AbdoSeg/CMakeLists.txt MODULE_PYTHON_SCRIPTS is out of date"
    assert sorted(resources) == on_disk_resources, "AbdoSeg/CMakeLists.txt MODULE_PYTHON_RESOURCES is out of date"
    assert "slicerMacroBuildScriptedModule(" in text and "WITH_GENERIC_TESTS" in text
    assert "slicer_add_python_unittest(SCRIPT ${MODULE_NAME}.py)" in text


# AbdoSeg.py and its .ui file ----------------------------------------------------------------------


def abdoseg_tree() -> ast.Module:
    return ast.parse((MODULE_DIR / "AbdoSeg.py").read_text())


def constant(name: str):
    for node in abdoseg_tree().body:
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == name for t in node.targets):
            return ast.literal_eval(node.value)
    raise AssertionError(f"AbdoSeg.py has no constant {name}")


def abdoseg_definitions(*names: str, logic_methods: tuple[str, ...] = (), **given) -> dict:
    """Run the top-level assignments, functions and classes ``names`` of AbdoSeg.py (which needs Slicer to import) alone.

    logic_methods: methods of AbdoSegLogic to define as plain functions of ``self``; given: names they use.
    """
    tree = abdoseg_tree()
    logic = next(node for node in tree.body if isinstance(node, ast.ClassDef) and node.name == "AbdoSegLogic")
    nodes = [node for node in tree.body
             if (isinstance(node, (ast.FunctionDef, ast.ClassDef)) and node.name in names)
             or (isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id in names for t in node.targets))]
    nodes += [node for node in logic.body if isinstance(node, ast.FunctionDef) and node.name in logic_methods]
    names += logic_methods
    namespace = {"__file__": str(MODULE_DIR / "AbdoSeg.py"), "pathlib": pathlib, "re": re, **given}
    exec(compile(ast.Module(nodes, type_ignores=[]), "AbdoSeg.py", "exec"), namespace)
    assert set(names) <= set(namespace), f"AbdoSeg.py lacks {set(names) - set(namespace)}"
    return namespace


def python_requirements() -> list[str]:
    """The pip requirements as AbdoSeg.py reads them from its requirements file."""
    return abdoseg_definitions("REQUIREMENTS_FILE", "pythonRequirements")["pythonRequirements"]()


def parameters() -> dict[str, str]:
    """{parameter: annotation source} of AbdoSegParameterNode."""
    for node in abdoseg_tree().body:
        if isinstance(node, ast.ClassDef) and node.name == "AbdoSegParameterNode":
            return {item.target.id: ast.unparse(item.annotation) for item in node.body if isinstance(item, ast.AnnAssign)}
    raise AssertionError("AbdoSeg.py has no AbdoSegParameterNode")


def ui_widgets() -> dict[str, ET.Element]:
    root = ET.parse(RESOURCES / "UI" / "AbdoSeg.ui").getroot()
    return {widget.get("name"): widget for widget in root.iter("widget")}


def widget_property(widget: ET.Element, name: str) -> ET.Element | None:
    for prop in widget.findall("property"):
        if prop.get("name") == name:
            return prop
    return None


def test_every_parameter_has_a_fitting_widget_in_the_ui_file():
    widgets = ui_widgets()
    by_parameter = {}
    for widget in widgets.values():
        prop = widget_property(widget, "SlicerParameterName")
        if prop is not None:
            assert prop.get("stdset") == "0"  # a dynamic property, as connectGui reads it
            by_parameter[prop.findtext("string")] = widget
    params = parameters()
    assert set(by_parameter) == set(params)
    for name, annotation in params.items():
        widget = by_parameter[name]
        kind = widget.get("class")
        if annotation.startswith("vtkMRML"):
            assert kind == "qMRMLNodeComboBox", name
            node_types = [s.text for s in widget_property(widget, "nodeTypes").iter("string")]
            assert node_types == [annotation], name
        elif annotation == "pathlib.Path":
            assert kind in ("ctkPathLineEdit", "ctkDirectoryButton"), name
        elif annotation in ("Device", "SurfaceFormat", "Coordinates"):
            assert kind == "QComboBox", name
        elif annotation == "bool":
            assert kind == "QCheckBox", name
        else:
            match = re.fullmatch(r"Annotated\[float, WithinRange\(([-\d.]+), ([-\d.]+)\)\]", annotation)
            assert match and kind == "ctkSliderWidget", name  # connectGui needs a bounded float for a slider
            low, high = (float(v) for v in match.groups())
            assert float(widget_property(widget, "minimum").findtext("double")) == low
            assert float(widget_property(widget, "maximum").findtext("double")) == high


def test_the_ui_file_has_the_sections_and_every_widget_the_code_uses():
    widgets = ui_widgets()
    sections = [w.findtext("property/string") for w in widgets.values() if w.get("class") == "ctkCollapsibleButton"]
    assert sections == ["Inputs", "Outputs", "Advanced", "Compare", "Export"]
    used = set(re.findall(r"self\.ui\.(\w+)", (MODULE_DIR / "AbdoSeg.py").read_text()))
    assert used <= set(widgets), f"widgets missing in AbdoSeg.ui: {used - set(widgets)}"
    root = ET.parse(RESOURCES / "UI" / "AbdoSeg.ui").getroot()
    receivers = {c.findtext("receiver") for c in root.iter("connection") if c.findtext("slot") == "setMRMLScene(vtkMRMLScene*)"}
    assert receivers == {name for name, w in widgets.items() if w.get("class") == "qMRMLNodeComboBox"}
    declared = {c.findtext("class") for c in root.iter("customwidget")}
    assert {w.get("class") for w in widgets.values() if w.get("class").startswith(("ctk", "qMRML"))} <= declared


def test_reload_and_test_runs_every_self_test_that_ctest_runs():
    """ctest runs each test_ method of AbdoSegTest (unittest's loader); Reload & Test runs only what runTest calls."""
    test_class = next(node for node in abdoseg_tree().body if isinstance(node, ast.ClassDef) and node.name == "AbdoSegTest")
    methods = {node.name: node for node in test_class.body if isinstance(node, ast.FunctionDef)}
    called = {node.attr for node in ast.walk(methods["runTest"]) if isinstance(node, ast.Attribute) and node.attr.startswith("test_")}
    assert called == {name for name in methods if name.startswith("test_")}


def test_abdoseg_py_takes_the_output_names_from_the_engine():
    tree = abdoseg_tree()
    imported = {alias.name for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module == "AbdoSegLib.outputs"
                for alias in node.names}
    assert {"LABELS_FILE", "SUMMARY_FILE"} <= imported
    names = {value for name, value in vars(outputs).items() if name.isupper() and isinstance(value, str)}
    written_out = {node.value for node in ast.walk(tree) if isinstance(node, ast.Constant)} & names
    assert not written_out, f"AbdoSeg.py spells out {written_out}; import them from AbdoSegLib.outputs"


def test_the_requirements_file_is_read_by_abdoseg_py_and_holds_pip_requirements():
    namespace = abdoseg_definitions("REQUIREMENTS_FILE")
    assert namespace["REQUIREMENTS_FILE"] == RESOURCES / "requirements.txt"
    requirements = python_requirements()
    text_lines = [line for line in (RESOURCES / "requirements.txt").read_text().splitlines() if line.strip() and not line.startswith("#")]
    assert len(requirements) == len(text_lines) and "psutil>=5.9" in requirements  # a trailing comment is not part of it
    names = [Requirement(text).name.lower() for text in requirements]  # each line parses as a requirement
    assert len(set(names)) == len(names)
    assert not {"torch", "simpleitk", "vtk"} & set(names)  # the PyTorch extension and Slicer itself provide these


def installed_closure(requirements: list[str]) -> dict[str, list[str]]:
    """{distribution: the chain of distributions that leads to it} for every distribution the requirements pull in.

    Follows the installed distributions' own metadata (importlib.metadata.requires), with each
    dependency's markers evaluated for this Python and the extras asked for: offline and deterministic.
    """
    chains: dict[str, list[str]] = {}
    todo = [(Requirement(text), []) for text in requirements]
    while todo:
        requirement, chain = todo.pop()
        name = canonicalize_name(requirement.name)
        if name in chains:
            continue
        chains[name] = [*chain, name]
        try:
            dependencies = importlib.metadata.requires(requirement.name) or []
        except importlib.metadata.PackageNotFoundError:
            raise AssertionError(f"{' -> '.join(chains[name])} is not installed here: install the test extra") from None
        for text in dependencies:
            dependency = Requirement(text)
            extras = ("", *requirement.extras)
            if dependency.marker is None or any(dependency.marker.evaluate({"extra": extra}) for extra in extras):
                todo.append((dependency, chains[name]))
    return chains


def test_the_module_requirements_neither_name_nor_pull_in_torch():
    # AbdoSeg.py installs these into Slicer's Python with torch pinned; a requirement that needed torch
    # (as MONAI does, in a recent version) would make that pin fail, or without it replace the user's PyTorch.
    requirements = python_requirements()
    assert "torch" not in {canonicalize_name(Requirement(text).name) for text in requirements}
    chains = installed_closure(requirements)
    assert {"numpy", "nibabel", "psutil"} <= set(chains)  # the walk reaches what it should
    assert "torch" not in chains, " -> ".join(chains.get("torch", []))
    assert "monai" not in chains


def setup_requirements(monkeypatch, missing: list[str], slicer_5_12: bool, answer: bool = True, pip_fails: bool = False) -> list[tuple]:
    """Run AbdoSegLogic.setupPythonRequirements with stand-ins for the Slicer calls it makes; returns the calls.

    The stand-ins (named so, and no more than the method uses): the PyTorch extension with torch installed,
    slicer.util's question and pip_install (Slicer 5.10), and slicer.packaging.pip_ensure (Slicer 5.12+), which
    record their arguments and the constraints file's text while it exists.
    """
    calls = []

    def pip(api, arguments, constraints):
        calls.append((api, arguments, Path(constraints).read_text()))
        if pip_fails:
            raise subprocess.CalledProcessError(1, ["pip", "install"])

    def ask(message, title, detailedText):
        calls.append(("ask", message, detailedText))
        return answer

    slicer_stand_in = types.SimpleNamespace(
        util=types.SimpleNamespace(confirmOkCancelDisplay=ask, pip_install=lambda arguments: pip("pip_install", arguments, arguments[-1])),
    )
    packaging_stand_in = types.SimpleNamespace(
        pip_ensure=lambda requirements, constraints, **options: pip("pip_ensure", (requirements, options), constraints),
    )
    torch_utils_stand_in = types.SimpleNamespace(PyTorchUtilsLogic=lambda: types.SimpleNamespace(torchInstalled=lambda: True))
    monkeypatch.setitem(sys.modules, "slicer", types.ModuleType("slicer"))
    monkeypatch.setitem(sys.modules, "slicer.packaging", packaging_stand_in if slicer_5_12 else None)  # None: ImportError, as in 5.10
    monkeypatch.setitem(sys.modules, "PyTorchUtils", torch_utils_stand_in)
    namespace = abdoseg_definitions("DependencyError", "MINIMUM_TORCH_VERSION", logic_methods=("setupPythonRequirements",),
                                    importlib=importlib, slicer=slicer_stand_in, _=str)
    logic = types.SimpleNamespace(missingRequirements=lambda: list(missing))
    try:
        namespace["setupPythonRequirements"](logic, askConfirmation=True)
    except namespace["DependencyError"] as error:
        calls.append(("DependencyError", str(error)))
    return calls


@pytest.mark.parametrize("slicer_5_12", [True, False])
def test_the_module_installs_its_packages_with_torch_pinned_after_naming_them(monkeypatch, slicer_5_12):
    missing = ["nibabel>=5.0", "slicerio>=1.0"]
    torch = importlib.metadata.version("torch")
    ask, install = setup_requirements(monkeypatch, missing, slicer_5_12)
    assert ask[0] == "ask" and "nibabel>=5.0, slicerio>=1.0" in ask[1] and f"PyTorch stays at version {torch}." in ask[1]
    assert ask[2] == "nibabel>=5.0\nslicerio>=1.0"
    api, arguments, constraints = install
    assert constraints == f"torch=={torch}\n"
    if slicer_5_12:  # slicer.packaging.pip_ensure(requirements, constraints=FILE): pip install ... -c FILE
        assert api == "pip_ensure" and arguments == (missing, {"prompt_install": False, "requester": "AbdoSeg", "skip_in_testing": False})
    else:  # slicer.util.pip_install(list): pip install <list>
        assert api == "pip_install" and arguments[:-1] == [*missing, "-c"]


@pytest.mark.parametrize("slicer_5_12", [True, False])
def test_the_module_installs_nothing_when_declined_or_complete_and_says_when_pip_fails(monkeypatch, slicer_5_12):
    declined = setup_requirements(monkeypatch, ["tqdm>=4.60"], slicer_5_12, answer=False)
    assert [call[0] for call in declined] == ["ask", "DependencyError"] and "tqdm>=4.60" in declined[1][1]
    assert setup_requirements(monkeypatch, [], slicer_5_12) == []
    failed = setup_requirements(monkeypatch, ["tqdm>=4.60"], slicer_5_12, pip_fails=True)
    assert [call[0] for call in failed] == ["ask", "pip_ensure" if slicer_5_12 else "pip_install", "DependencyError"]
    assert "with PyTorch kept at" in failed[-1][1]


def test_the_readme_names_the_packages_the_module_installs():
    sentence = re.search(r"torch through the PyTorch extension, and (.*?) with pip", " ".join((ROOT / "README.md").read_text().split()))
    assert sentence, "README.md's 'In 3D Slicer' no longer says which packages the module installs with pip"
    named = set(re.split(r", | and ", sentence.group(1)))
    assert named == {Requirement(text).name for text in python_requirements()}


def test_the_closure_walk_would_see_torch_behind_monai():
    # The same walk on the training requirement that used to be among the module's: it reaches torch.
    assert installed_closure(["monai>=1.3"])["torch"] == ["monai", "torch"]


def test_slicer_gets_every_package_the_engine_imports():
    """Slicer's Python must get (requirements.txt) what AbdoSeg.py and the command line it runs import."""
    distribution = {"nrrd": "pynrrd", "PIL": "pillow", "yaml": "pyyaml", "sklearn": "scikit-learn", "skimage": "scikit-image"}
    # Slicer itself, the PyTorch extension, ourselves.
    provided = {"vtk", "vtkmodules", "SimpleITK", "slicer", "qt", "ctk", "SampleData", "packaging", "PyTorchUtils", "torch", "AbdoSegLib"}
    # Imported only for an option the Slicer module never passes, from an extra of the pip distribution (pyproject.toml):
    # ray (abdoseg segment --ray, abdoseg[cluster]) and highdicom (abdoseg segment --dicom-seg, abdoseg[dicom]).
    provided |= {"ray", "highdicom"}
    required = {Requirement(text).name.lower() for text in python_requirements()}
    lib = MODULE_DIR / "AbdoSegLib"
    seen, todo, imported = set(), [MODULE_DIR / "AbdoSeg.py", lib / "cli.py"], set()
    while todo:
        path = todo.pop()
        if path in seen:
            continue
        seen.add(path)
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                imported |= {alias.name.split(".")[0] for alias in node.names}
                continue
            if not isinstance(node, ast.ImportFrom):
                continue
            if node.level == 0 and not (node.module or "").startswith("AbdoSegLib"):
                imported.add(node.module.split(".")[0])
                continue
            base = path.parent
            for _ in range(max(node.level - 1, 0)):
                base = base.parent
            parts = (node.module or "").split(".") if node.level else node.module.split(".")[1:]
            target = lib.joinpath(*parts) if node.level == 0 else base.joinpath(*[p for p in parts if p])
            candidates = [target.with_suffix(".py"), target / "__init__.py"] + [target / f"{a.name}.py" for a in node.names]
            todo += [c for c in candidates if c.is_file()]
    third_party = {name for name in imported if name not in sys.stdlib_module_names and name not in provided}
    missing = {name for name in third_party if distribution.get(name, name).lower() not in required}
    assert not missing, f"AbdoSeg/Resources/requirements.txt lacks {missing}"


def test_the_sample_data_checksum_and_attribution():
    assert constant("SAMPLE_CT_SHA256") == hashlib.sha256(SAMPLE_CT.read_bytes()).hexdigest()
    assert constant("SAMPLE_CT_URL") == RAW_URL + SAMPLE_CT.relative_to(ROOT).as_posix()
    source = (MODULE_DIR / "AbdoSeg.py").read_text()
    for words in ("TotalSegmentator dataset", "CC BY 4.0", "Wasserthal", "Radiology: Artificial Intelligence, 2023"):
        assert words in source
    readme = (RESOURCES / "SampleData" / "README.md").read_text()
    assert "CC BY 4.0" in readme and "Wasserthal" in readme


# Icons ------------------------------------------------------------------------------------------


def test_the_icon_is_a_128_pixel_render_of_the_organs_in_both_places():
    top, module = ROOT / "AbdoSeg.png", RESOURCES / "Icons" / "AbdoSeg.png"
    assert top.read_bytes() == module.read_bytes()
    with PILImage.open(top) as image:
        assert image.format == "PNG" and image.size == (128, 128) and image.mode == "RGBA"
        pixels = np.asarray(image)
    alpha = pixels[..., 3]
    assert 0.2 < np.mean(alpha == 255) < 0.9 and np.mean(alpha == 0) > 0.1  # organs on a transparent background
    opaque = pixels[alpha == 255][:, :3]
    assert len(np.unique(opaque // 8, axis=0)) > 100  # shaded surfaces, not flat placeholder colours


def test_the_sample_data_thumbnail_is_there():
    with PILImage.open(RESOURCES / "Icons" / "AbdoSegSampleCT.png") as image:
        assert image.format == "PNG" and image.size == (260, 260)
