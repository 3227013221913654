"""The entry point that torchrun / TorchX launch: ``recsys/train_group.py`` -> ``recsys.train.cli``.

Why a file of its own: TorchX components, ``.torchxconfig``, configs and docs launch this path
(``torchrun recsys/train_group.py``, ``python -m recsys.train_group``); the code lives in the
``recsys.train`` package (build, loop + callbacks, run_dir, schedule, job, cli).  The names
older imports use are re-exported here.

Example::

    torchrun --nproc_per_node 2 recsys/train_group.py --config configs/demo.toml
    python -m recsys.train_group --config configs/demo.toml --set train.epochs=1
"""
from __future__ import annotations

import importlib
import sys
from pathlib import Path
from typing import TYPE_CHECKING

if __name__ == "__main__" and __package__ in (None, ""):
    # `python recsys/train_group.py` / torchrun with a script path: make `recsys` importable.
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from recsys.train.cli import DEFAULT_CONFIG, build_parser, main  # no torch: `--help` stays fast

if TYPE_CHECKING:
    from recsys.train.build import GroupParts, build_group_parts
    from recsys.train.callbacks import Callback, default_callbacks
    from recsys.train.job import train
    from recsys.train.loop import GroupTrainer, TrainingDiverged, _segments
    from recsys.train.run_dir import (
        PREVIOUS_SUFFIX,
        check_previous_run,
        preflight,
        release_previous_run,
        restore_previous_for_resume,
        set_aside_previous_run,
    )
    from recsys.train.schedule import GroupResult, GroupRun, merge_across_groups, plan_groups

# The older names, each imported from its recsys.train module on first use (PEP 562): they load
# torch and torchrec, which `train_group.py --help` and a config error do not need.
_HOMES = {
    **dict.fromkeys(("GroupParts", "build_group_parts"), "recsys.train.build"),
    **dict.fromkeys(("Callback", "default_callbacks"), "recsys.train.callbacks"),
    "train": "recsys.train.job",
    **dict.fromkeys(("GroupTrainer", "TrainingDiverged", "_segments"), "recsys.train.loop"),
    **dict.fromkeys(("PREVIOUS_SUFFIX", "check_previous_run", "preflight", "release_previous_run",
                     "restore_previous_for_resume", "set_aside_previous_run"), "recsys.train.run_dir"),
    **dict.fromkeys(("GroupResult", "GroupRun", "merge_across_groups", "plan_groups"), "recsys.train.schedule"),
}


def __getattr__(name: str) -> object:
    if name in _HOMES:
        return getattr(importlib.import_module(_HOMES[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "DEFAULT_CONFIG", "PREVIOUS_SUFFIX", "Callback", "GroupParts", "GroupResult", "GroupRun", "GroupTrainer",
    "TrainingDiverged", "_segments", "build_group_parts", "build_parser", "check_previous_run",
    "default_callbacks", "main", "merge_across_groups", "plan_groups", "preflight", "release_previous_run",
    "restore_previous_for_resume", "set_aside_previous_run", "train",
]

if __name__ == "__main__":
    sys.exit(main())
