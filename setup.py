"""Build hook for the optional C++ extension in csrc/ (metadata lives in pyproject.toml).

`csrc._native` is one C++17 file compiled against the pybind11 headers that torch ships
(pip's --no-build-isolation, see the Makefile, lets this script see the torch already
installed). It does not link libtorch: it only needs pybind11, so it imports without torch
and compiles in seconds. Without torch, pybind11 headers or a compiler, the install still
succeeds with a warning and dolmino uses the pure-Python fallbacks in csrc/__init__.py.
Set DOLMINO_NO_NATIVE=1 to skip the build on purpose.
"""

from __future__ import annotations

import importlib.util
import os
import sys
import warnings

from setuptools import setup
from setuptools.command.build_ext import build_ext

SOURCES = ["csrc/native.cpp"]


def _pybind11_include() -> str | None:
    """torch's bundled pybind11 headers, else a standalone pybind11 install, else None.

    torch is located, never imported: importing it here runs before pip has installed
    numpy (a dependency of this project, not of torch) and makes torch warn "Failed to
    initialize NumPy" in the middle of `make setup`. The headers are plain files under
    torch/include, which is all the compiler needs.
    """
    try:
        spec = importlib.util.find_spec("torch")
    except (ImportError, ValueError):
        spec = None
    for location in (spec.submodule_search_locations or []) if spec else []:
        include = os.path.join(location, "include")
        if os.path.isfile(os.path.join(include, "pybind11", "pybind11.h")):
            return include
    try:
        import pybind11

        return pybind11.get_include()
    except Exception:  # noqa: BLE001 - no pybind11 either: build without the extension
        return None


class OptionalBuildExt(build_ext):
    """Build the extension when possible; a failed compile is a warning, not a failed install."""

    def run(self):
        try:
            super().run()
        except Exception as exc:  # noqa: BLE001 - any toolchain failure means "use the fallback"
            self._warn(exc)

    def build_extension(self, ext):
        try:
            super().build_extension(ext)
        except Exception as exc:  # noqa: BLE001
            self._warn(exc)

    @staticmethod
    def _warn(exc: Exception) -> None:
        msg = f"dolmino: building the csrc._native extension failed ({exc}); the pure-Python fallbacks will be used"
        warnings.warn(msg)
        print(msg, file=sys.stderr)


def _extensions():
    if os.environ.get("DOLMINO_NO_NATIVE"):
        return []
    include = _pybind11_include()
    if include is None:
        print("dolmino: no pybind11 headers (torch not installed?); csrc._native is not built, "
              "the pure-Python fallbacks will be used", file=sys.stderr)
        return []
    from setuptools import Extension

    return [Extension(
        "csrc._native",
        SOURCES,
        include_dirs=[include],
        language="c++",
        extra_compile_args=["-O3", "-std=c++17", "-fvisibility=hidden"],
    )]


setup(ext_modules=_extensions(), cmdclass={"build_ext": OptionalBuildExt})
