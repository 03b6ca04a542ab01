"""User-facing errors.

Every error a user can cause (bad name, missing data, corrupt file, unreachable
storage...) is a :class:`NasDistillError`: its message is one line that names the
problem and the fix. The CLI prints that line and exits non-zero without a traceback.
"""

from __future__ import annotations


class NasDistillError(Exception):
    """A problem the user can fix. ``str(err)`` is ``"<problem>; <fix>"`` on one line."""

    def __init__(self, problem: str, fix: str | None = None):
        self.problem = " ".join(str(problem).split())
        self.fix = " ".join(str(fix).split()) if fix else None
        super().__init__(self.problem + (f"; {self.fix}" if self.fix else ""))


class UnknownNameError(NasDistillError, KeyError):
    """A name (dataset, method, space, sampler...) that no registry knows."""

    def __str__(self) -> str:  # KeyError would otherwise quote the message
        return self.args[0]


class DatasetError(NasDistillError):
    """Data that cannot be found, read or used."""


class ProxyError(NasDistillError):
    """A proxy artifact that is missing, corrupt or does not match the data."""


class StorageError(NasDistillError):
    """A study or results storage that cannot be reached or used."""


class ConfigError(NasDistillError, ValueError):
    """Settings that cannot work together."""
