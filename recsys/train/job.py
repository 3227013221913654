"""One rank's whole training job: its groups, one after another, then the merged report.

Why a module of its own: this is the order of a run -- directories readied (``run_dir``), the
schedule's groups (``schedule``), each group built (``build``) and trained (``loop`` with
``callbacks``), the groups' logits merged (``schedule``), the report written (``recsys.tb``),
the previous run released -- and nothing else, so each step's details live in its module.

Example::

    env = init_distributed(cfg.device)
    report = train(cfg, env)     # the report dict on global rank 0, else None
"""
from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any, Sequence

import torch.distributed as dist

from recsys.tb import RunLogger
from recsys.train.build import build_group_parts
from recsys.train.callbacks import default_callbacks
from recsys.train.loop import GroupTrainer
from recsys.train.run_dir import prepare_run_dirs, release_previous_run
from recsys.train.schedule import GroupResult, member_examples_per_s, merge_across_groups, plan_groups

if TYPE_CHECKING:
    from torch.utils.tensorboard import SummaryWriter

    from recsys.config import ExperimentConfig
    from recsys.distributed import DistEnv
    from recsys.train.callbacks import Callback

EVAL_TIMINGS = ("forward", "wait", "gather", "merge")  # recsys.eval.runner's EvalResult.timings keys


def train(
    cfg: ExperimentConfig, env: DistEnv, resume: bool = False, sequential: bool = False,
    callbacks: Sequence[Callback] = (),
) -> dict[str, Any] | None:
    """Trains all groups this rank belongs to and writes the merged report on rank 0.

    ``callbacks`` run for every group after the default ones
    (``recsys.train.callbacks.default_callbacks``).
    Returns the report as a dict on rank 0 (``None`` on the other ranks).
    """
    resume = prepare_run_dirs(cfg, env, resume)
    groups, parallel = plan_groups(cfg, env, sequential)
    names = cfg.member_names
    if env.rank == 0:
        mode = "parallel" if parallel else "sequential"
        print(
            f"train_group: {len(cfg.members)} members in {len(cfg.groups)} groups, {env.world_size} ranks, "
            f"{mode} schedule, device {env.device} ({env.backend})", flush=True,
        )
    logger = RunLogger(cfg) if env.rank == 0 else None
    results: list[GroupResult] = []
    for run in groups:
        def open_writer(purge_step: int | None, k: int = run.index) -> SummaryWriter:
            return RunLogger.group_writer(cfg, k, purge_step=purge_step)

        parts = build_group_parts(cfg, env, run)
        trainer = GroupTrainer(cfg, env, run, parts, open_writer if run.is_leader else None,
                               show_progress=env.rank == 0)
        trainer.fit(resume, [*default_callbacks(cfg), *callbacks])
        results.append(trainer.finish())
        if trainer.writer is not None:
            trainer.writer.close()
        del trainer, parts
    dist.barrier()  # parallel groups finish at different times: keep that wait out of the gather time
    t0 = time.perf_counter()
    val = merge_across_groups(results, len(names), parallel, "val", env)
    test = merge_across_groups(results, len(names), parallel, "test", env)
    t_cross = time.perf_counter() - t0
    # Rank 0's evaluation timings (both splits, all its groups): forward passes vs moving and
    # merging logits (in-group gather + cross-group assembly + merge); see recsys.eval.
    timings = {k: sum(float(r.split(s).timings[k]) for r in results for s in ("val", "test")) for k in EVAL_TIMINGS}
    timings["gather"] += t_cross
    eps = member_examples_per_s(results, parallel, len(cfg.groups), env)
    if env.rank != 0:
        return None
    assert logger is not None and val is not None and test is not None
    extra = {"schedule": "parallel" if parallel else "sequential", "eval_timings": timings}
    report = logger.final(val, test, eps, extra=extra)
    logger.close()
    release_previous_run(cfg)  # this run has finished: the one it replaced can go
    return report
