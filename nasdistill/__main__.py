"""``python -m nasdistill``: the ``nasdistill`` command (same as ``python -m nasdistill.cli``)."""

import sys

from .cli import main

sys.exit(main())
