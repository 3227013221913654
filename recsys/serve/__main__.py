"""``python -m recsys.serve``: the serving latency command (``recsys.serve.cli``).

Example::

    python -m recsys.serve --config configs/demo.toml --checkpoint checkpoints/demo --sweep
"""
from __future__ import annotations

import sys

from recsys.serve.cli import main

if __name__ == "__main__":
    sys.exit(main())
