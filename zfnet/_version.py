"""The one place zfnet's version is written (pyproject.toml reads it: `dynamic = ["version"]`)."""

__version__ = "0.3.0"
