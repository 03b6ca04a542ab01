"""Exit statuses of the ``nasdistill`` command."""

from __future__ import annotations


EXIT_USAGE = 2


EXIT_INTERRUPTED = 130


EXIT_TARGET_NOT_MET = 3  #: distill --target-spearman: no candidate met the target (the best one is kept)
