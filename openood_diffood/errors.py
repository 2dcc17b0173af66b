"""User errors: one family, which the commands (and only they) turn into one ``error:`` line and exit status 2;
any other exception is a bug and keeps its traceback."""
from __future__ import annotations

import sys
from typing import Any, Callable


class ConfigError(ValueError):
    """Bad input (a config value, path, model, checkpoint, data set); the message names the problem and the fix."""


class MissingFileError(ConfigError, FileNotFoundError):
    """A file, folder or model the input names does not exist (or cannot be reached)."""


class OutputExistsError(ConfigError, FileExistsError):
    """An output path that would overwrite earlier results."""


class MissingPackageError(ConfigError, ImportError):
    """An optional package this input needs is not installed."""


def report_errors(run: Callable[..., Any], *args: Any) -> int:
    """``run(*args)``: 0, or 2 after one ``error: <problem>; <fix>`` line for a :class:`ConfigError`."""
    try:
        run(*args)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0
