"""Packaging: honest metadata, one version, role extras that the code really respects."""

from __future__ import annotations

import ast
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PACKAGE = REPO / "fedpoint"
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())

# Import names the base install provides (dependencies of [project] and what they bring).
BASE = {"torch", "monai", "numpy", "scipy", "pydantic", "pydantic_core", "typer", "click", "rich",
        "safetensors", "fastapi", "starlette", "uvicorn", "multipart", "python_multipart", "nibabel",
        "nrrd", "tifffile", "PIL", "versioneer", "setuptools", "filelock"}
# Modules that may import an extra's package at import time: they only run where it is installed.
EXTRA_MODULES = {
    "fedpoint.server": "federation",  # the coordinator (ServerApp, strategy): Flower
    "fedpoint.client.client_app": "federation",  # the SuperNode's ClientApp: Flower
    "fedpoint.benchmarks.robustness": "federation",  # drives the coordinator's strategy: Flower
}


def _module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _import_time_imports(path: Path) -> set[str]:
    """Modules imported when `path` is imported: not inside functions, TYPE_CHECKING or
    try/except ImportError fallbacks."""
    found: set[str] = set()
    module = _module_name(path)

    def visit(node):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
                continue
            if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                continue
            if isinstance(child, ast.Try) and any(("ImportError" in ast.unparse(h.type or ast.Name("x"))
                                                   or "ModuleNotFoundError" in ast.unparse(h.type or ast.Name("x")))
                                                  for h in child.handlers):
                continue
            if isinstance(child, ast.Import):
                found.update(a.name for a in child.names)
            elif isinstance(child, ast.ImportFrom):
                if child.level:
                    base = module.split(".")
                    base = base[: len(base) - child.level + (1 if path.name == "__init__.py" else 0)]
                    found.add(".".join(base + ([child.module] if child.module else [])))
                else:
                    found.add(child.module)
                    found.update(f"{child.module}.{a.name}" for a in child.names)
            else:
                visit(child)

    visit(ast.parse(path.read_text()))
    return found


def _graph() -> dict[str, set[str]]:
    return {_module_name(p): _import_time_imports(p) for p in PACKAGE.rglob("*.py")}


def _closure(graph: dict[str, set[str]], start: str) -> set[str]:
    """Every module imported when `start` is: own modules followed, with their parent packages."""
    seen, todo, third = set(), [start], set()
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        parts = name.split(".")
        todo += [".".join(parts[:i]) for i in range(1, len(parts)) if ".".join(parts[:i]) in graph]
        for imported in graph.get(name, ()):
            if imported.split(".")[0] == "fedpoint":
                if imported in graph:
                    todo.append(imported)
                elif imported.rsplit(".", 1)[0] in graph:  # `from pkg import name` of a non-module
                    todo.append(imported.rsplit(".", 1)[0])
            else:
                third.add(imported.split(".")[0])
    return third


def _is_extra_module(name: str) -> bool:
    return any(name == m or name.startswith(m + ".") for m in EXTRA_MODULES)


def test_base_modules_import_only_base_packages():
    """A site with the base install can import every module but the coordinator's and the ClientApp."""
    graph = _graph()
    std = set(sys.stdlib_module_names)
    problems = {}
    for name in sorted(graph):
        if _is_extra_module(name):
            continue
        extra = _closure(graph, name) - std - BASE
        if extra:
            problems[name] = sorted(extra)
    assert not problems, f"base modules that import extra-only packages when imported: {problems}"


def test_the_extras_cover_what_the_code_imports_lazily():
    """Every third-party package the code imports anywhere is in the base or in an extra."""
    from fedpoint.extras import EXTRA_OF

    std = set(sys.stdlib_module_names) | {"fedpoint", "tomli"}  # tomli: dead 3.10 fallbacks
    used = set()
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                used.update(a.name.split(".")[0] for a in node.names)
            elif isinstance(node, ast.ImportFrom) and not node.level:
                used.add(node.module.split(".")[0])
    unknown = used - std - BASE - set(EXTRA_OF)
    assert not unknown, f"imported but in no extra: {sorted(unknown)}"
    extras = PYPROJECT["project"]["optional-dependencies"]
    for extra in set(EXTRA_OF.values()):
        assert extra in extras, extra
    assert {"lora", "coordinator", "simulation", "dicom", "dev", "all"} <= set(extras)


def test_base_dependencies_hold_no_extra_package():
    base = " ".join(PYPROJECT["project"]["dependencies"]).lower()
    for heavy in ("peft", "flwr", "ray", "matplotlib", "nilearn", "scikit-image", "pydicom"):
        assert heavy not in base, heavy


def test_metadata_is_honest():
    project = PYPROJECT["project"]
    assert project["requires-python"] == ">=3.11"
    assert project["license"] == "Apache-2.0" and (REPO / "LICENSE").read_text().count("Apache License") >= 1
    assert "Version 2.0" in (REPO / "LICENSE").read_text()
    citation = (REPO / "CITATION.cff").read_text()
    assert "2503.06717" in citation and "2603.06426" in citation  # both seed papers
    assert f"version: {project['version']}" in citation
    assert "not a medical device" in (REPO / "README.md").read_text()


def test_one_version_and_python_m_fedpoint():
    import fedpoint

    assert fedpoint.__version__ == PYPROJECT["project"]["version"]
    out = subprocess.run([sys.executable, "-m", "fedpoint", "--version"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and out.stdout.strip() == f"fedpoint {fedpoint.__version__}"


def test_the_fab_leaves_out_tests_and_docs():
    include = PYPROJECT["tool"]["flwr"]["app"]["fab-include"]
    assert all(p.startswith(("fedpoint/", "/")) for p in include)


def test_lora_without_peft_names_the_extra(monkeypatch):
    from fedpoint.extras import MissingExtraError
    from fedpoint.shared.adapters import _peft

    monkeypatch.setitem(sys.modules, "peft", None)  # as if peft were not installed
    with pytest.raises(MissingExtraError, match=r"fedpoint\[lora\]"):
        _peft()


def test_cli_names_the_extra_of_a_missing_package():
    from fedpoint.extras import explain

    err = ModuleNotFoundError("No module named 'ray'", name="ray")
    assert "pip install 'fedpoint[simulation]'" in explain(err)
    assert explain(ModuleNotFoundError("x", name="nothing_we_know")) is None


def test_importing_fedpoint_leaves_the_thread_count_alone():
    """Only runners and simulated sites set torch's threads, when they run: never an import."""
    modules = sorted(_module_name(p) for p in PACKAGE.rglob("*.py") if p.name != "__main__.py")
    probe = ("import importlib, torch\n"
             "torch.set_num_threads(3)\n"
             f"for name in {modules!r}:\n"
             "    try:\n        importlib.import_module(name)\n    except ImportError:\n        pass\n"
             "print(torch.get_num_threads())\n")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=300, cwd=REPO)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split()[-1] == "3"
