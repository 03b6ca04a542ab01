"""User-facing errors.

Every error a user can cause (bad name, missing data, corrupt file, unreachable
storage...) is a :class:`NasDistillError`: its message is one line that names the
problem and the fix. The CLI prints that line and exits non-zero without a traceback.
"""

from __future__ import annotations

import errno


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


class OutputError(NasDistillError):
    """A result that cannot be written: a full disk, a file-size limit, a folder that cannot be written."""


#: errno values that mean "no room left" (ENOSPC, EFBIG, EDQUOT), told apart from other write errors.
DISK_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EFBIG, errno.EDQUOT})


def os_error_line(e: OSError) -> str:
    """One line (problem; fix) for an :class:`OSError` that reached the command line."""
    where = f" {e.filename}" if getattr(e, "filename", None) else ""
    what = e.strerror or str(e) or type(e).__name__
    if e.errno in DISK_FULL_ERRNOS:
        fix = "free some space (or raise the quota / file-size limit), then run the same command again to resume"
    elif e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        fix = "pass a writable location (--out, --store, --reference-store, NASDISTILL_HOME)"
    elif e.errno == errno.ENOENT:
        fix = "check that the path exists"
    else:
        fix = "check the path and the file system, then run the same command again"
    return " ".join(f"{what}{':' if where else ''}{where}; {fix}".split())


class NasDistillWarning(UserWarning):
    """Something was wrong and was repaired (a corrupt checkpoint discarded, a damaged file rebuilt):
    the command line prints it as one line, ``nasdistill: warning: <what happened>``."""


def warn(message: str) -> None:
    """Issue a :class:`NasDistillWarning` (one line) from library code."""
    import warnings

    warnings.warn(NasDistillWarning(" ".join(message.split())), stacklevel=2)
