"""recsys/train_group.py with a planted crash: rank R dies right after step N, like a killed process.

Why in tests/: a crash on demand is a test hook, not a production option; this entry point
installs it as a loop callback (``recsys.train.callbacks.Callback``) and then runs the real
command line with the remaining arguments.  The dying rank prints one line and leaves with
``os._exit(17)`` (no cleanup, no checkpoint, no report); torchrun then tears the others down.

Example::

    torchrun --nproc_per_node 2 tests/fault_injection.py --config c.toml --fail-at-step 12 --fail-rank 1
    python tests/fault_injection.py --config c.toml --fail-at-step 13        # exit status 17
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

if __name__ == "__main__" and __package__ in (None, ""):
    # launched by path (torchrun tests/fault_injection.py): make `recsys` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from recsys.train.callbacks import Callback

if TYPE_CHECKING:
    import torch

    from recsys.checkpoint import TrainState
    from recsys.train.loop import GroupTrainer

SCRIPT = Path(__file__).resolve()
EXIT_STATUS = 17


class FailAtStep(Callback):
    """On global rank ``rank``, exits hard once a group has trained ``step`` steps."""

    def __init__(self, step: int, rank: int) -> None:
        self.step, self.rank = step, rank

    def on_step(self, loop: GroupTrainer, state: TrainState, loss: torch.Tensor) -> None:
        if 0 < self.step <= state.step and loop.env.rank == self.rank:
            # The events are flushed first, as a periodic flush could have done, so a resume
            # has replayed steps' events on disk to purge (see the loop's purge_step).
            print(f"\n[rank {loop.env.rank}] --fail-at-step {self.step}: exiting", flush=True)
            if loop.writer is not None:
                loop.writer.flush()
            os._exit(EXIT_STATUS)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("--fail-at-step", type=int, required=True)
    p.add_argument("--fail-rank", type=int, default=0)
    known, rest = p.parse_known_args(argv)
    from recsys.train.cli import main as train_main

    return train_main(rest, callbacks=[FailAtStep(known.fail_at_step, known.fail_rank)])


if __name__ == "__main__":
    sys.exit(main())
