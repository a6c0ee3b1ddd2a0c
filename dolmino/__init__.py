"""dolmino: rebuild the OLMo 2 data mixes with Spark and train OLMo 2 on them."""

# The one place the version lives: pyproject.toml reads it (tool.setuptools.dynamic),
# `dolmino --version` prints it, and build records can name it.
__version__ = "0.1.0"
