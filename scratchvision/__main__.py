"""``python -m scratchvision`` is the ``scratchvision`` command."""

import sys

from .cli import main

sys.exit(main())
