"""``python -m recsys.data.convert DATASET [flags]``: the converter CLI (``cli.module_main``).

Example::

    python -m recsys.data.convert criteo --input day_0.gz --output data/criteo --preset tts4ctr
"""
from __future__ import annotations

import sys

from recsys.data.convert.cli import module_main

if __name__ == "__main__":
    sys.exit(module_main())
