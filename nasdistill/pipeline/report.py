"""Write a run folder's report (never losing a finished run to it)."""

from __future__ import annotations

import os
from pathlib import Path

from .log import Log, quiet


def report_step(out_dir: str | os.PathLike, *, log: Log = quiet) -> dict[str, Path]:
    """Write ``report.html``, ``report.md`` and the figures of ``out_dir`` (:func:`nasdistill.report.write_report`).

    The results are already saved when this runs, so a report that cannot be written is logged
    (with the command that retries it) rather than raised; returns {} then.
    """
    from ..report import write_report

    try:
        paths = write_report(out_dir)
    except Exception as e:  # never lose a finished run to its report
        log(f"report: not written ({type(e).__name__}: {e}); retry with: nasdistill report {out_dir}")
        return {}
    log(f"report: {paths['html']}, {paths['md']}")
    return paths


__all__ = ["report_step"]
