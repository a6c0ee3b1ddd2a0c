"""Set-up stays free of warnings of the project's own making (checked by reading the files;
a full `make setup` in a fresh venv is the end-to-end check, too slow for the suite)."""

from __future__ import annotations

import ast
import subprocess
import sys
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_setup_py_never_imports_torch():
    """Importing torch in setup.py runs before pip has installed numpy and makes torch warn
    'Failed to initialize NumPy' in the middle of `make setup`."""
    tree = ast.parse((REPO / "setup.py").read_text())
    imported = {alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import)
                for alias in node.names}
    imported |= {node.module.split(".")[0] for node in ast.walk(tree)
                 if isinstance(node, ast.ImportFrom) and node.module}
    assert "torch" not in imported


def test_pybind11_headers_found_without_importing_torch():
    source = (REPO / "setup.py").read_text().split("class OptionalBuildExt")[0]
    probe = (f"import sys\nexec(compile({source!r}, 'setup.py', 'exec'))\n"
             "path = _pybind11_include()\n"
             "import os\n"
             "assert path and os.path.isfile(os.path.join(path, 'pybind11', 'pybind11.h')), path\n"
             "assert 'torch' not in sys.modules\n"
             "print(path)\n")
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().endswith("include")


def test_pyproject_uses_current_metadata_forms():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())
    assert project["project"]["license"] == "Apache-2.0"  # SPDX string, not the deprecated table
    assert "setuptools>=77" in project["build-system"]["requires"]  # first setuptools to read it
    assert project["tool"]["setuptools"]["package-dir"] == {"": "."}  # .pth editable install, no notice


def test_tqdm_is_a_pinned_direct_dependency_matching_the_venv():
    import tqdm

    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    pins = [d for d in deps if d.startswith("tqdm")]
    assert pins == [f"tqdm=={tqdm.__version__}"]
