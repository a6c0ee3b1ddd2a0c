"""Build hook for the optional C++ extension in csrc/ (metadata lives in pyproject.toml).

The extension is compiled against the torch already installed (pip's --no-build-isolation,
see the Makefile). Without torch or a compiler the install still succeeds and dolmino uses
its pure-Python fallbacks.
"""

from setuptools import setup

setup()
