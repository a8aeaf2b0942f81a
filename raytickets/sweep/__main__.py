"""`python -m raytickets.sweep --config FILE`: see `cli.py`."""

import sys

from .cli import main

sys.exit(main())
