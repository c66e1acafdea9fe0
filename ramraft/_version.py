"""The one version source: the installed distribution's metadata
(pyproject.toml's ``[project] version``). A checkout that was never installed
reports ``0+unknown``."""

from __future__ import annotations

from importlib import metadata

try:
    __version__: str = metadata.version("ramraft")
except metadata.PackageNotFoundError:  # pragma: no cover - running from a bare checkout
    __version__ = "0+unknown"
