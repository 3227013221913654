"""``python -m recsys.eval``: see ``recsys.eval.cli``."""
from __future__ import annotations

import sys

from recsys.eval.cli import main

if __name__ == "__main__":
    sys.exit(main())
