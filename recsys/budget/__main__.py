"""``python -m recsys.budget``: see ``recsys.budget.cli``."""
from __future__ import annotations

import sys

from recsys.budget.cli import main

if __name__ == "__main__":
    sys.exit(main())
