"""The ``nasdistill`` command: distill | search | validate | run | experts | report | dashboard | list.

Every user error prints one line (``nasdistill: error: <problem>; <fix>``) and exits with status 2;
an interrupt exits with 130 and says how to resume; ``distill --target-spearman`` exits with 3 when no
candidate met the target (the best one is still written).
"""

from __future__ import annotations

import sys
import warnings

from ..errors import NasDistillError, os_error_line
from .codes import EXIT_INTERRUPTED, EXIT_TARGET_NOT_MET, EXIT_USAGE
from .commands import COMMANDS
from .options import _logging_to, _preflight
from .parser import build_parser, command_in, parse

__all__ = ["main", "build_parser", "COMMANDS", "EXIT_USAGE", "EXIT_INTERRUPTED", "EXIT_TARGET_NOT_MET"]


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """Print a :class:`~nasdistill.errors.NasDistillWarning` as one line; others as Python does."""
    from ..errors import NasDistillWarning

    if issubclass(category, NasDistillWarning):
        print(f"nasdistill: warning: {message}", file=sys.stderr, flush=True)
    else:
        print(warnings.formatwarning(message, category, filename, lineno, line), end="", file=file or sys.stderr)


def main(argv: list[str] | None = None) -> int:
    code = _main(argv)
    # a rank under torchrun ends here, past Python's finalisation (see exit_now); a process that never
    # loaded the module joined no process group (`nasdistill --help` imports no torch)
    parallel = sys.modules.get("nasdistill.distill.parallel")
    if parallel is not None:
        parallel.exit_now(code)
    return code


def _main(argv: list[str] | None) -> int:
    parser = build_parser(command_in(argv))  # only the named command's flags: `nasdistill --help` needs no torch
    try:
        args = parse(parser, argv)
    except SystemExit as e:  # --help, --version, or a usage error (one line, already printed)
        return e.code if isinstance(e.code, int) else EXIT_USAGE
    if not args.command:
        parser.print_help()
        return EXIT_USAGE
    try:
        with _logging_to(args), warnings.catch_warnings():
            warnings.showwarning = _show_warning
            if args.command != "list":
                _preflight(args)
            return COMMANDS[args.command](args)
    except NasDistillError as e:
        print(f"nasdistill: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except OSError as e:  # a full disk, a vanished folder, a permission refused: one line, no traceback
        print(f"nasdistill: error: {os_error_line(e)}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("nasdistill: interrupted; run the same command again to resume from the last checkpoint",
              file=sys.stderr)
        return EXIT_INTERRUPTED
