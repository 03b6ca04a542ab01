"""``python -m nasdistill.cli``: the ``nasdistill`` command."""

import sys

from . import main

sys.exit(main())
