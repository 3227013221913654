"""``python -m recsys.study``: see ``recsys.study.cli``."""
from __future__ import annotations

import sys

from recsys.study.cli import main

if __name__ == "__main__":
    sys.exit(main())
