"""User-facing errors. The CLI prints them as one line and exits with code 2."""

from __future__ import annotations


class ReconError(Exception):
    """An error caused by the user's input or environment, with a message that says
    what is wrong, where (file, view, key) and what to do about it."""

    exit_code = 2


class SceneError(ReconError):
    """A scene folder cannot be read as asked."""


class ConfigError(ReconError):
    """A configuration key or value is wrong."""


class MissingDependencyError(ReconError):
    """An optional package, compiler or model weight is not available."""
