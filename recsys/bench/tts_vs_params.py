"""Deprecated: the study moved to ``recsys.study`` (``python -m recsys.study``, same options).

This module re-exports the study's names for one release; as a command it prints one
deprecation line to stderr and runs ``python -m recsys.study`` with the same arguments.

Example::

    python -m recsys.study --plan-only      # was: python -m recsys.bench.tts_vs_params --plan-only
"""
from __future__ import annotations

from recsys.cli import warn_moved

warn_moved("recsys.bench.tts_vs_params", "recsys.study", __name__)

import sys
from typing import Sequence

from recsys.study import *  # noqa: F403  # the old import path keeps every public name
from recsys.study import __all__ as _STUDY_NAMES
from recsys.study.cli import main as _study_main

__all__ = list(_STUDY_NAMES)  # `main` is this module's own: the deprecated command


def deprecated_main(argv: Sequence[str] | None = None) -> int:
    """The old command: one deprecation line on stderr, then ``python -m recsys.study``."""
    print("tts_vs_params: python -m recsys.bench.tts_vs_params is deprecated; use python -m recsys.study "
          "(same options)", file=sys.stderr, flush=True)
    return _study_main(argv)


main = deprecated_main  # the old entry point, ``tts_vs_params.main(argv)``, says it is deprecated too

if __name__ == "__main__":
    sys.exit(main())
