"""Grouped ensemble training: the command line that torchrun / TorchX launch.

M members in K groups; each group trains on the BCE of its members' mean logit,
as one ``EnsembleGroup`` sharded by DMP over the group's ranks.  With W ranks,
``group_schedule`` gives every group its own W/K ranks and process group when
W >= K and W % K == 0 (the groups then train in parallel); otherwise the groups
train one after another on all ranks.  A member's result does not depend on
the schedule, nor on how many ranks its group has:

- weights come from the member's seeded spec (``build_group``);
- ``train.batch_size`` is the group's GLOBAL batch: every rank computes the same
  seeded order of the training rows and reads its 1/G slice of each global batch
  (``make_loader(..., global_batch=True)``), so step i sees the same rows on any
  number of ranks;
- the gradients are those of the global batch's mean loss on any number of ranks
  (DDP averages dense grads; TorchRec divides the summed embedding grads by the
  group size; ``recsys.grad_sync`` checks that this is on).

Dropout masks are drawn per rank, so members with dropout > 0 match across rank
counts in distribution only.  ``--schedule sequential`` forces the sequential
schedule (for comparisons and tests).

After training, every group restores its best checkpoint (by validation AUC,
the reference's early stopping), scores the same validation and test rows, and
global rank 0 merges all members' logits and writes the report, the AUC-vs-m
plot and TensorBoard.

Torchrun's variables are read once: by ``init_distributed`` (the ``DistEnv`` everything below
takes), and ``RANK`` here, for an error before the process group exists.  The script TorchX
and torchrun launch is ``recsys/train_group.py``.

Examples::

    # 2 ranks, 2 groups in parallel (one rank each), under TorchX:
    torchx run -s local_cwd dist.ddp -j 1x2 --script recsys/train_group.py -- --config configs/demo.toml
    # the same with torchrun, or in one process (groups then train one after another):
    torchrun --nproc_per_node 2 recsys/train_group.py --config configs/demo.toml
    python recsys/train_group.py --config configs/demo.toml --set train.epochs=1
    # TorchX's short form (script from .torchxconfig; with no --config it trains configs/demo.toml):
    torchx run -s local_cwd dist.ddp -j 1x2 recsys/train_group.py
    torchx run -s local_cwd dist.ddp -j 1x2 recsys/train_group.py --config configs/paper_homogeneous.toml
    # both groups one after another on both ranks (same members as the parallel run):
    torchrun --nproc_per_node 2 recsys/train_group.py --config configs/demo.toml --schedule sequential
    # continue a killed run from its latest checkpoint:
    torchrun --nproc_per_node 2 recsys/train_group.py --config configs/demo.toml --resume
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
import time
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

from recsys.cli import parser_with_examples, run_main
from recsys.config import load_config
from recsys.data.errors import LoaderError
from recsys.errors import UserError, one_line

if TYPE_CHECKING:
    from recsys.train.callbacks import Callback

PROG = "train_group"
DEFAULT_CONFIG = "configs/demo.toml"
ENTRY_SCRIPT = Path(__file__).resolve().parent.parent / "train_group.py"  # what TorchX's short form passes


class RankError(UserError):
    """A user error raised after the process group exists, as the one line names it:
    ``[rank R] <message>`` in a multi-rank world.

    ``report_here``: the error's own choice, else the rank reports it if it is global rank 0
    or the error is the rank's own (a bad row in its slice of a batch, ``LoaderError``).
    """

    def __init__(self, error: UserError, rank: int, world_size: int) -> None:
        super().__init__(f"[rank {rank}] {one_line(error)}" if world_size > 1 else one_line(error))
        report = error.report_here
        self.report_here = (rank == 0 or isinstance(error, LoaderError)) if report is None else report


def build_parser() -> argparse.ArgumentParser:
    p = parser_with_examples(
        "train_group.py",
        "Train an ensemble of CTR models in groups (each on the BCE of its mean logit), "
        "sharded with TorchRec DMP, then merge and report.",
        __doc__.split("Examples::", 1)[1] if __doc__ else None,
    )
    p.add_argument(
        "target", nargs="?", default=None,
        help="optional: a config TOML (same as --config), or this script's own path, which is ignored "
        "(TorchX's short form `dist.ddp -j 1x2 recsys/train_group.py` passes it, see .torchxconfig)",
    )
    p.add_argument("--config", default=None, help=f"experiment TOML (see configs/; default {DEFAULT_CONFIG})")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set train.epochs=1 --set name=try2 (repeatable)")
    p.add_argument("--resume", action="store_true",
                   help="continue from the latest checkpoint of each group (with none, it says so and starts "
                   "fresh; without --resume, a run replaces the checkpoints and TensorBoard events of an earlier "
                   "run of the same name)")
    p.add_argument("--schedule", choices=["auto", "sequential"], default="auto",
                   help="auto: groups in parallel when W %% K == 0 (else one after another); sequential: "
                   "every group on all ranks, one after another (same members, up to float noise)")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default=None,
                   help="override the config's device (auto: cuda+nccl if available, else cpu+gloo)")
    return p


def _quiet_libraries() -> None:
    """TorchRec 1.8 / torch 2.13 log deprecation notices on every rank at every plan and
    checkpoint (ShardedTensor -> DTensor, Topology construction, ...) that say nothing
    about this run; keep warnings and errors of our own visible."""
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=UserWarning, module="torch.distributed")
    for name in ("torchrec", "torch.fx._symbolic_trace", "torch.distributed.checkpoint"):
        logging.getLogger(name).setLevel(logging.ERROR)


def _should_report(e: UserError, launch_rank: int) -> bool:
    """Whether this process prints the error line (``train_group: error: ...``), once per job.

    Before the process group exists (config and preflight errors), every rank hits the same
    error, and only global rank 0 prints it; afterwards the error is a ``RankError`` that knows
    (see there).  Ranks that stay quiet wait a moment before exiting, because torchrun tears
    the whole job down as soon as one rank exits non-zero, which could kill the reporting rank
    before it has printed.
    """
    report = e.report_here
    if report is None:
        report = launch_rank == 0
    if not report:
        time.sleep(2.0)
    return report


def _destroy_process_group() -> None:
    import torch.distributed as dist  # lazy: `--help` and config errors stay torch-free and fast

    if dist.is_initialized():
        dist.destroy_process_group()


def main(argv: list[str] | None = None, callbacks: Sequence[Callback] = ()) -> int:
    """Parses ``argv``, trains, reports; 0, or 2 with one error line for a user error.

    ``callbacks``: extra loop callbacks for every group (tests: ``tests/fault_injection.py``).
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    _quiet_libraries()
    if args.target is not None:
        if args.target.endswith(".toml"):
            if args.config is not None:
                parser.error(f"two configs given: {args.target} and --config {args.config}")
            args.config = args.target
        elif Path(args.target).resolve() != ENTRY_SCRIPT:
            parser.error(f"unexpected argument {args.target!r} (expected a .toml config)")
    config = DEFAULT_CONFIG if args.config is None else args.config
    overrides = list(args.set) + ([f"device={args.device}"] if args.device else [])
    launch_rank = int(os.environ.get("RANK", "0"))  # torchrun's; the process group does not exist yet

    def body() -> int:
        # lazy: torch and torchrec load only once the arguments parse (`--help` stays fast)
        from recsys.distributed import init_distributed
        from recsys.train.job import train
        from recsys.train.run_dir import check_previous_run, preflight

        # Every config error (bad values, missing splits, cuda without CUDA) surfaces here,
        # before any process group.
        cfg = load_config(config, overrides)
        preflight(cfg)
        check_previous_run(cfg, args.resume)
        env = init_distributed(cfg.device)  # reads torchrun's RANK, LOCAL_WORLD_SIZE, ... once
        try:
            report = train(cfg, env, resume=args.resume, sequential=args.schedule == "sequential",
                           callbacks=callbacks)
        except UserError as e:
            raise RankError(e, env.rank, env.world_size) from None
        if report is not None:
            print(f"train_group: report {cfg.run_dir / 'results.md'}", flush=True)
        return 0

    return run_main(PROG, body, should_report=lambda e: _should_report(e, launch_rank),
                    cleanup=_destroy_process_group)


if __name__ == "__main__":
    sys.exit(main())
