"""The layers import one way: client -> daemon -> modalities (pipelines) -> models (backends).

A pipeline written against the daemon could not run under another front end, and a client library that
drags the daemon in would need the model runtimes installed; these tests keep both from creeping back.
"""
from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

import omnid.clients
import omnid.modalities
import omnid.models

#: package -> the omnid packages it must never import.
FORBIDDEN = {
    "modalities": ("omnid.daemon", "omnid.clients"),
    "models": ("omnid.daemon", "omnid.modalities", "omnid.clients"),
    "clients": ("omnid.daemon", "omnid.modalities", "omnid.models"),
}
PACKAGES = {"modalities": omnid.modalities, "models": omnid.models, "clients": omnid.clients}


def imported_modules(path: Path) -> list[tuple[int, str]]:
    """Every module a file imports (at any depth: lazy imports inside functions count too)."""
    tree = ast.parse(path.read_text(), str(path))
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.lineno, node.module))
    return found


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_a_layer_imports_nothing_above_it(package: str) -> None:
    folder = Path(PACKAGES[package].__path__[0])
    files = sorted(folder.glob("*.py"))
    assert files, f"no sources found in {folder}"
    wrong = [f"{path.name}:{line} imports {module}"
             for path in files for line, module in imported_modules(path)
             if module.startswith(FORBIDDEN[package])]
    assert wrong == []


def test_the_checker_sees_a_forbidden_import(tmp_path: Path) -> None:
    """The AST walk finds top-level and function-level imports (so the test above can fail)."""
    source = tmp_path / "bad.py"
    source.write_text("import os\nfrom omnid.daemon.session import X\n\ndef f():\n    import omnid.daemon.config\n")
    modules = [m for _, m in imported_modules(source)]
    assert modules == ["os", "omnid.daemon.session", "omnid.daemon.config"]


def test_the_client_library_imports_without_the_daemon() -> None:
    code = ("import json, sys\n"
            "import omnid.clients.client, omnid.clients.cli\n"
            "print(json.dumps(sorted(m for m in sys.modules if m.startswith('omnid.'))))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    loaded = json.loads(out.stdout)
    assert "omnid.clients.client" in loaded
    assert [m for m in loaded if m.startswith(("omnid.daemon", "omnid.models", "omnid.modalities"))] == []
