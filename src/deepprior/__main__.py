"""``python -m deepprior``: the same as the ``deepprior`` command."""

import sys

from .cli import main

sys.exit(main())
