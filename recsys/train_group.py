"""Grouped ensemble training: the entry point that torchrun / TorchX launch.

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
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

if __package__ in (None, ""):
    # `python recsys/train_group.py` / torchrun with a script path: make `recsys` importable.
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np
import torch
import torch.distributed as dist

from recsys.config import ConfigError, ExperimentConfig, load_config
from recsys.ensemble import GroupTrain
from recsys.errors import UserError, one_line


DEFAULT_CONFIG = "configs/demo.toml"
PREVIOUS_SUFFIX = ".previous"  # runs/<name>.previous, checkpoints/<name>.previous: the run a fresh one replaces


class TrainingDiverged(UserError):
    """The training loss became NaN or inf: the run stops before it can checkpoint NaN weights.

    ``report_here`` is True on the group's leader only, so the line is printed once per group
    whichever rank leads it (see ``_fail``).
    """

    def __init__(self, message: str, report_here: bool) -> None:
        super().__init__(message)
        self.report_here = report_here


@dataclass
class GroupRun:
    """One group as seen from this rank."""

    index: int  # k
    members: list[int]  # member indices, config order
    names: list[str]
    ranks: list[int]  # global ranks training this group
    pg: Any  # ProcessGroup, or None = the whole world
    group_rank: int
    group_world: int

    @property
    def is_leader(self) -> bool:
        return self.group_rank == 0


@dataclass
class GroupResult:
    index: int
    members: list[int]
    val: Any  # recsys.evaluate.EvalResult: [N, M_k] logits + labels on the group leader
    test: Any
    examples: int  # examples this group trained on in this process (global batch x steps)
    train_seconds: float  # wall time of its training steps (not eval/checkpoint)
    best_step: int | None


def plan_groups(cfg: ExperimentConfig, env: Any, sequential: bool = False) -> tuple[list[GroupRun], bool]:
    """-> (the groups this rank trains, in order; whether the schedule is parallel).

    Every rank creates every subgroup (``dist.new_group`` is collective), even
    those it is not part of.  ``sequential`` forces every group onto all ranks.
    """
    from recsys.distributed import group_schedule, new_subgroups

    names = cfg.member_names
    schedule = None if sequential else group_schedule(env.world_size, cfg.groups)
    runs: list[GroupRun] = []
    if schedule is not None:
        pgs = new_subgroups(schedule)
        for k, ranks in enumerate(schedule):
            if env.rank in ranks:
                g = cfg.groups[k]
                runs.append(GroupRun(k, g, [names[i] for i in g], ranks, pgs[k], ranks.index(env.rank), len(ranks)))
        return runs, True
    world = list(range(env.world_size))
    for k, g in enumerate(cfg.groups):
        runs.append(GroupRun(k, g, [names[i] for i in g], world, None, env.rank, env.world_size))
    return runs, False


def _segments(total: int, done: int, *intervals: int) -> Iterator[int]:
    """Splits the remaining steps of an epoch at multiples of the given intervals.

    The train pipeline is drained at each boundary, so a checkpoint taken there
    has trained exactly the batches the loader handed out.
    """
    step = done
    while step < total:
        nxt = total
        for iv in intervals:
            if iv > 0:
                nxt = min(nxt, (step // iv + 1) * iv)
        yield nxt - step
        step = nxt


class GroupTrainer:
    """Trains one group on this rank: DMP, fused + dense optimizer, pipeline, checkpoints, early stopping."""

    def __init__(
        self, cfg: ExperimentConfig, env: Any, run: GroupRun, open_writer: Callable[[int | None], Any] | None,
        show_progress: bool,
    ) -> None:
        from recsys.checkpoint import GroupCheckpointer
        from recsys.data.loader import make_loader
        from recsys.distributed import make_optimizer, shard_module
        from recsys.ensemble import build_group
        from recsys.grad_sync import require_global_mean_gradients

        self.cfg, self.env, self.run = cfg, env, run
        # The writer opens in fit(), once the resume step is known (purge_step, see there).
        self.open_writer = open_writer
        self.writer: Any = None
        self.show_progress = show_progress
        t = cfg.train
        if t.batch_size % run.group_world:
            raise ConfigError(
                f"{cfg.source}: train.batch_size={t.batch_size} must be divisible by the group's "
                f"{run.group_world} ranks"
            )
        require_global_mean_gradients()
        schema = cfg.schema()  # meta.json, or [torchrec_criteo]'s day files
        module = GroupTrain(build_group(cfg.members, cfg.member_names, run.members, schema, materialize=False))
        emb_opt = cfg.embedding_optimizer.resolve(env.device.type)
        from recsys.plan import topology_from_config

        # Ranks on this node, whatever group they train: they share its RAM (torchrun sets it).
        local = int(os.environ.get("LOCAL_WORLD_SIZE", env.world_size))
        topo = topology_from_config(cfg, run.group_world, local, env.device.type)
        self.model = shard_module(module, run.pg, env, emb_opt, cfg.sharding.resolve(), topo, run.index)
        self.optimizer = make_optimizer(
            self.model, cfg.dense_optimizer.lr, cfg.dense_optimizer.weight_decay, emb_opt=emb_opt
        )
        self.eval_batch = (t.eval_batch_size or t.batch_size) // run.group_world or 1
        # Global batches (not per-rank row ranges): step i trains on the same t.batch_size rows
        # whatever the group's rank count, so the schedule does not change the result.
        self.train_loader = make_loader(
            cfg.data_source(), "train", t.batch_size, rank=run.group_rank, world_size=run.group_world,
            shuffle=t.shuffle, seed=cfg.seed, drop_last=True, global_batch=True, prefetch=2,
            pin_memory=env.device.type == "cuda",  # else the non_blocking host-to-device copies are synchronous
        )
        self.ckpt = GroupCheckpointer(Path(cfg.ckpt_dir) / f"group{run.index}", run.pg, run.group_rank)
        self.pipeline: Any = None
        if t.pipeline:
            from torchrec.distributed.train_pipeline import TrainPipelineSparseDist

            self.pipeline = TrainPipelineSparseDist(self.model, self.optimizer, env.device, execute_all_batches=True)
        self.examples, self.train_seconds = 0, 0.0

    # -- training ---------------------------------------------------------------------------
    def _train_steps(self, it: Iterator[Any], n: int, on_step: Callable[[torch.Tensor], None]) -> None:
        """Runs exactly n optimizer steps (n batches from `it`), calling on_step(loss) after each.

        The pipeline is drained at the end (``execute_all_batches``), so afterwards the
        model has trained on exactly the batches the loader handed out.
        """
        done = 0
        self.model.train()
        if self.pipeline is not None:
            seg = _take(it, n)
            while True:
                try:
                    loss_d, _logits, _labels = self.pipeline.progress(seg)
                except StopIteration:
                    break
                done += 1
                on_step(loss_d)
        else:  # the plain loop (train.pipeline = false): same math, no overlap
            for batch in _take(it, n):
                batch = batch.to(self.env.device)
                loss, (loss_d, _logits, _labels) = self.model(batch)
                self.optimizer.zero_grad()
                loss.backward()
                self.optimizer.step()
                done += 1
                on_step(loss_d)
        if done != n:
            raise RuntimeError(f"group {self.run.index}: the loader ran dry after {done} of {n} steps")

    def _group_mean(self, local: torch.Tensor) -> float:
        """Mean over the group's ranks of a per-rank mean (equal slices): the global-batch value,
        the same on any rank count.  Collective: every rank of the group logs at the same steps."""
        if self.run.group_world == 1:
            return float(local)
        t = local.detach().to(self.env.device, torch.float64).reshape(1)
        dist.all_reduce(t, group=self.run.pg)
        return float(t[0]) / self.run.group_world

    def _detach(self) -> None:
        # Calling the model directly while the pipeline's PipelinedForward is installed fails
        # ("Invalid PipelinedForward usage"): give the original forwards back first.
        if self.pipeline is not None:
            self.pipeline.detach()

    def _extras(self) -> dict[str, Any]:
        from recsys.checkpoint import rng_state

        return {"loader": self.train_loader.state_dict(), "rng": rng_state()}

    def _save(self, state: Any, is_best: bool = False) -> None:
        self._detach()
        self.ckpt.save(state.step, self.model, self.optimizer, state, self._extras(), is_best=is_best)

    def _check_finite(self, window: list[torch.Tensor], state: Any) -> float:
        """The group mean of the losses in ``window`` (the steps up to ``state.step``); raises
        ``TrainingDiverged`` naming the first non-finite step, on every rank of the group.

        Collective over the group (every rank calls it at the same steps), so the ranks agree
        on stopping; a NaN on any rank makes the reduced mean NaN.  The stop comes before the
        next checkpoint or evaluation, so no NaN weights are ever saved or kept as "best".
        """
        if not window:
            return float("nan")
        losses = torch.stack(window).detach().float().reshape(-1)
        mean = self._group_mean(losses.mean())
        if np.isfinite(mean):
            return mean
        bad = (~torch.isfinite(losses)).nonzero()
        first = torch.tensor([float(bad[0, 0]) if len(bad) else float(len(window))], dtype=torch.float64,
                             device=self.env.device)
        if self.run.group_world > 1:
            dist.all_reduce(first, op=dist.ReduceOp.MIN, group=self.run.pg)
        step = state.step - len(window) + 1 + int(first[0])
        t = self.cfg
        raise TrainingDiverged(
            f"group {self.run.index}: training loss is {mean} at step {step} (epoch {state.epoch}); stopped "
            f"before saving a checkpoint. Check the data for extreme values, or lower the learning rates "
            f"(dense_optimizer.lr={t.dense_optimizer.lr}, embedding_optimizer.lr={t.embedding_optimizer.lr})",
            report_here=self.run.is_leader,
        )

    def evaluate(self, split: str) -> Any:
        """Scores `split` with this group: an EvalResult whose [N, M_k] logits sit on the group leader."""
        from recsys.evaluate import evaluate_split

        self._detach()
        mk = len(self.run.members)
        return evaluate_split(
            self.model, self.cfg.data_source(), split, self.eval_batch, columns=list(range(mk)), num_members=mk,
            group=self.run.pg, group_rank=self.run.group_rank, group_size=self.run.group_world,
            world=self.run.pg, dst=0, device=self.env.device, progress=self.show_progress,
            pin_memory=self.env.device.type == "cuda",
        )

    def _log_val(self, state: Any, res: Any) -> float:
        """Val AUC of the group mean (the early-stopping signal), broadcast over the group."""
        from recsys.evaluate import score

        auc = torch.zeros(1, dtype=torch.float64, device=self.env.device)
        if res.member_logits is not None:
            rep = score(res.member_logits, res.labels, self.run.names, [list(range(len(self.run.names)))])
            auc[0] = rep.group_metrics[0].auc
            if self.writer is not None:
                for name, m in zip(rep.names, rep.members):
                    self.writer.add_scalar(f"val/auc/{name}", m.auc, state.step)
                    self.writer.add_scalar(f"val/logloss/{name}", m.logloss, state.step)
                self.writer.add_scalar(f"val/auc/group{self.run.index}", rep.group_metrics[0].auc, state.step)
                self.writer.add_scalar(f"val/logloss/group{self.run.index}", rep.group_metrics[0].logloss, state.step)
                self.writer.flush()
        dist.broadcast(auc, src=self.run.ranks[0], group=self.run.pg)
        return float(auc[0])

    def fit(self, resume: bool, fail_at_step: int, fail_rank: int) -> None:
        from tqdm import tqdm

        from recsys.checkpoint import TrainState, set_rng_state

        cfg, t, run = self.cfg, self.cfg.train, self.run
        # Same seed for every group and rank count, so a member's dropout/shuffle stream does
        # not depend on the schedule; group_rank keeps ranks of one group decorrelated.
        torch.manual_seed(cfg.seed * 1000 + run.group_rank)
        np.random.seed(cfg.seed * 1000 + run.group_rank)
        state = TrainState()
        loader_state = None
        if resume:
            def warn(msg: str) -> None:
                if run.is_leader:
                    print(f"[group {run.index}] warning: {msg}", flush=True)

            found = self.ckpt.load_latest(self.model, self.optimizer, log=warn)
            if found is not None:
                state, extras = found
                set_rng_state(extras["rng"])
                loader_state = extras.get("loader")
                if run.is_leader:
                    print(f"[group {run.index}] resumed from step {state.step} (epoch {state.epoch})", flush=True)
        if self.open_writer is not None:
            # After a resume, the steps past the checkpoint are trained again: purge_step drops
            # the killed run's events from that step on, so TensorBoard shows each step once
            # (all of them for a group that had not checkpointed yet: it starts at step 0).
            self.writer = self.open_writer(state.step + 1 if resume else None)
        n_examples, t_train = 0, 0.0
        while not state.finished and state.epoch < t.epochs:
            self.train_loader.set_epoch(state.epoch)
            if loader_state is not None and not state.epoch_done:
                self.train_loader.load_state_dict(loader_state)
            loader_state = None
            if state.epoch_done:  # resumed right after an epoch-end checkpoint
                state.epoch, state.epoch_step, state.epoch_done = state.epoch + 1, 0, False
                continue
            total = len(self.train_loader)
            if t.max_steps_per_epoch:
                total = min(total, t.max_steps_per_epoch)
            it = iter(self.train_loader)
            bar = tqdm(
                total=total, initial=state.epoch_step, disable=not self.show_progress, unit="batch",
                desc=f"group {run.index} epoch {state.epoch}", dynamic_ncols=True, file=sys.stdout,
            )
            window: list[torch.Tensor] = []  # detached losses since the last log (no per-step sync)
            seg_t0 = time.perf_counter()
            logged_at = t_train  # training seconds (eval/checkpoint time excluded) at the last log

            def on_step(loss: torch.Tensor) -> None:
                nonlocal logged_at
                state.step += 1
                state.epoch_step += 1
                window.append(loss)
                bar.update(1)
                if state.step % t.log_every == 0 or state.epoch_step == total:
                    now = t_train + time.perf_counter() - seg_t0
                    mean_loss = self._check_finite(window, state)
                    eps = len(window) * t.batch_size / max(now - logged_at, 1e-9)
                    bar.set_postfix(loss=f"{mean_loss:.4f}", ex_s=f"{eps:,.0f}")
                    if self.writer is not None:
                        self.writer.add_scalar(f"train/loss/group{run.index}", mean_loss, state.step)
                        self.writer.add_scalar(f"train/examples_per_s/group{run.index}", eps, state.step)
                    window.clear()
                    logged_at = now
                if fail_at_step and state.step >= fail_at_step and self.env.rank == fail_rank:
                    # Test hook: die like a killed process (no cleanup, no checkpoint).  The events
                    # are flushed first, as a periodic flush could have done, so a resume has
                    # replayed steps' events on disk to purge (see fit's purge_step).
                    print(f"\n[rank {self.env.rank}] --fail-at-step {fail_at_step}: exiting", flush=True)
                    if self.writer is not None:
                        self.writer.flush()
                    os._exit(17)

            for n in _segments(total, state.epoch_step, t.checkpoint_interval, t.eval_interval):
                seg_t0 = time.perf_counter()
                self._train_steps(it, n, on_step)
                t_train += time.perf_counter() - seg_t0
                n_examples += n * t.batch_size
                if window:  # steps since the last log: checked before any checkpoint or eval
                    self._check_finite(window, state)
                if state.epoch_step < total:
                    if t.checkpoint_interval and state.epoch_step % t.checkpoint_interval == 0:
                        self._save(state)
                    if t.eval_interval and state.epoch_step % t.eval_interval == 0:
                        self._log_val(state, self.evaluate("val"))
            bar.close()
            auc = self._log_val(state, self.evaluate("val"))
            improved = auc > state.best_auc
            if improved:
                state.best_auc, state.best_step, state.bad_epochs = auc, state.step, 0
            else:
                state.bad_epochs += 1
            state.epoch_done = True
            if state.epoch + 1 >= t.epochs or (t.patience and state.bad_epochs >= t.patience):
                state.finished = True
            if run.is_leader:
                print(
                    f"[group {run.index}] epoch {state.epoch} step {state.step}: val AUC {auc:.5f}"
                    f" (best {state.best_auc:.5f} at step {state.best_step})", flush=True,
                )
            self._save(state, is_best=improved)
            state.epoch, state.epoch_step, state.epoch_done = state.epoch + 1, 0, False
        self.examples, self.train_seconds = n_examples, t_train

    def finish(self) -> GroupResult:
        """Restores the best checkpoint, then scores val and test."""
        self._detach()
        best = self.ckpt.load_best(self.model)
        run = self.run
        return GroupResult(
            run.index, run.members, self.evaluate("val"), self.evaluate("test"), self.examples,
            self.train_seconds, best,
        )


def _take(it: Iterator[Any], n: int) -> Iterator[Any]:
    for _ in range(n):
        try:
            yield next(it)
        except StopIteration:
            return


def merge_across_groups(
    results: list[GroupResult], num_members: int, parallel: bool, split: str, env: Any
) -> tuple[torch.Tensor, torch.Tensor] | None:
    """All members' logits [N, M] and labels [N] on global rank 0 (None elsewhere).

    Sequential schedule: rank 0 led every group, so it holds every column already.
    Parallel schedule: each group's leader holds its columns; one
    ``assemble_member_logits`` over the world (leaders send [N, M_k], the others
    empty blocks) places them and checks every cell is written once.
    """
    from recsys.evaluate import assemble_member_logits

    if parallel:
        (r,) = results  # exactly one group per rank in the parallel schedule
        res = r.val if split == "val" else r.test
        n = torch.tensor([0 if res.member_logits is None else res.member_logits.shape[0]], device=env.device)
        dist.all_reduce(n, op=dist.ReduceOp.MAX)
        if res.member_logits is not None:
            local, labels = res.member_logits.to(env.device), res.labels.to(env.device)
        else:
            local = torch.zeros((0, len(r.members)), device=env.device)
            labels = torch.zeros((0,), device=env.device)
        return assemble_member_logits(local, labels, 0, int(n.item()), r.members, num_members, group=None, dst=0)
    if env.rank != 0:
        return None
    first = results[0].val if split == "val" else results[0].test
    from recsys.ensemble import stack_member_logits

    blocks = []
    for r in results:
        res = r.val if split == "val" else r.test
        if not torch.equal(res.labels, first.labels):
            raise RuntimeError(f"{split}: group {r.index} scored different rows than group 0 (loader mismatch)")
        blocks.append(res.member_logits)
    return stack_member_logits(blocks, [r.members for r in results], num_members), first.labels.float().cpu()


def train(
    cfg: ExperimentConfig, env: Any, resume: bool = False, fail_at_step: int = 0, fail_rank: int = 0,
    sequential: bool = False,
) -> dict[str, Any] | None:
    """Trains all groups this rank belongs to and writes the merged report on rank 0.

    Returns the report as a dict on rank 0 (``None`` on the other ranks).
    """
    from recsys.tb import RunLogger

    if resume:
        if env.rank == 0:
            restore_previous_for_resume(cfg)
        dist.barrier()
        # Every rank looks before rank 0 may move anything (the barrier), so all agree.
        has_ckpt = _has_checkpoint(cfg.ckpt_dir)
        dist.barrier()
        if not has_ckpt:
            if env.rank == 0:
                print(f"train_group: --resume: no checkpoint under {cfg.ckpt_dir}; starting fresh", flush=True)
            resume = False
    if not resume:
        # A fresh run of a name replaces that name's old checkpoints and TensorBoard events (a
        # stale best.json or event file would otherwise mix two runs), but only once it has
        # something to show: the old run is set aside now and deleted when the new run has
        # finished, so a run that fails, in any group, loses nothing.
        if env.rank == 0:
            set_aside_previous_run(cfg)
        dist.barrier()
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
        def open_writer(purge_step: int | None, k: int = run.index) -> Any:
            return RunLogger.group_writer(cfg, k, purge_step=purge_step)

        trainer = GroupTrainer(cfg, env, run, open_writer if run.is_leader else None, show_progress=env.rank == 0)
        trainer.fit(resume, fail_at_step, fail_rank)
        results.append(trainer.finish())
        if trainer.writer is not None:
            trainer.writer.close()
        del trainer
    dist.barrier()  # parallel groups finish at different times: keep that wait out of the gather time
    t0 = time.perf_counter()
    val = merge_across_groups(results, len(names), parallel, "val", env)
    test = merge_across_groups(results, len(names), parallel, "test", env)
    t_cross = time.perf_counter() - t0
    # Rank 0's evaluation timings (both splits, all its groups): forward passes vs moving and
    # merging logits (in-group gather + cross-group assembly + merge); see recsys.evaluate.
    timings = {k: sum(float(getattr(r, s).timings[k]) for r in results for s in ("val", "test"))
               for k in ("forward", "wait", "gather", "merge")}
    timings["gather"] += t_cross
    # Throughput of the whole ensemble: member-examples (rows x members trained on them) per
    # second of training wall time.  Parallel groups overlap in time (max over ranks); sequential
    # ones add up.  examples/s = member-examples/s / M: rows per second through all M members.
    member_ex = torch.tensor([sum(r.examples * len(r.members) for r in results)], dtype=torch.float64,
                             device=env.device)
    secs = torch.tensor([sum(r.train_seconds for r in results)], dtype=torch.float64, device=env.device)
    if parallel:
        dist.all_reduce(member_ex)
        member_ex /= env.world_size // len(cfg.groups)  # every rank of a group counted its examples
        dist.all_reduce(secs, op=dist.ReduceOp.MAX)
    eps = member_ex / secs.clamp_min(1e-9)
    if env.rank != 0:
        return None
    assert logger is not None and val is not None and test is not None
    extra = {"schedule": "parallel" if parallel else "sequential", "eval_timings": timings}
    report = logger.final(val, test, float(eps[0]), extra=extra)
    logger.close()
    release_previous_run(cfg)  # this run has finished: the one it replaced can go
    return report


def _has_checkpoint(ckpt_dir: Path) -> bool:
    return any(any(d.glob("step-*/state.json")) for d in ckpt_dir.glob("group*"))


def _previous(d: Path) -> Path:
    return d.with_name(d.name + PREVIOUS_SUFFIX)


def _run_dirs(cfg: ExperimentConfig) -> list[Path]:
    """runs/<name> and checkpoints/<name>, once each (they may be one directory)."""
    out: list[Path] = []
    for d in (cfg.run_dir, cfg.ckpt_dir):
        if all(d.resolve() != o.resolve() for o in out):
            out.append(d)
    return out


def _has_previous_checkpoint(cfg: ExperimentConfig) -> bool:
    return _has_checkpoint(_previous(cfg.ckpt_dir))


def check_previous_run(cfg: ExperimentConfig, resume: bool) -> None:
    """Refuses, before anything is touched, a fresh run that could only proceed by deleting
    checkpoints: ``checkpoints/<name>`` holds an unfinished run that checkpointed while
    ``<name>.previous`` still holds the run before it (set aside by that unfinished run).
    Every rank runs it (file reads only), so all refuse alike."""
    if resume or not _has_checkpoint(cfg.ckpt_dir) or not _has_previous_checkpoint(cfg):
        return
    raise ConfigError(
        f"{cfg.source}: {cfg.ckpt_dir} holds an unfinished run with checkpoints, and {_previous(cfg.ckpt_dir)} "
        "the run before it: continue the unfinished one with --resume, or delete one of them"
    )


def set_aside_previous_run(cfg: ExperimentConfig) -> None:
    """Moves the last run of this name (``runs/<name>``, ``checkpoints/<name>``) to
    ``<dir>.previous``, where it stays until the new run has finished (report written).

    If a ``.previous`` pair is already there, the run after it never finished and (see
    ``check_previous_run``) never checkpointed: what it left, at most a few TensorBoard
    events, is dropped and the ``.previous`` pair kept.  No checkpoint is deleted before a
    newer finished run exists.  Runs on global rank 0 only.
    """
    import shutil

    dirs = [d for d in _run_dirs(cfg) if d.exists()]
    if not dirs:
        return
    keep_current = not any(_previous(d).exists() for d in _run_dirs(cfg))
    if not keep_current:
        check_previous_run(cfg, resume=False)  # never drop checkpoints (main checks it first, on every rank)
    for d in dirs:
        if keep_current:
            d.rename(_previous(d))
        else:
            shutil.rmtree(d)
    where = " and ".join(str(_previous(d)) for d in _run_dirs(cfg) if _previous(d).exists())
    print(f"train_group: the previous run of {cfg.name!r} is kept in {where} until this run finishes "
          "(use --resume to continue a run instead)", flush=True)


def restore_previous_for_resume(cfg: ExperimentConfig) -> bool:
    """``--resume`` where ``checkpoints/<name>`` has no checkpoint but ``<name>.previous`` has
    (a fresh run set it aside and died before checkpointing): moves it back, dropping the dead
    run's leftovers, so the resume continues it.  Global rank 0 only; True if it did."""
    import shutil

    if _has_checkpoint(cfg.ckpt_dir) or not _has_previous_checkpoint(cfg):
        return False
    for d in _run_dirs(cfg):
        if d.exists():
            shutil.rmtree(d)
        if _previous(d).exists():
            _previous(d).rename(d)
    print(f"train_group: --resume: continuing the run kept in {_previous(cfg.ckpt_dir)} (the fresh run after it "
          "never checkpointed)", flush=True)
    return True


def release_previous_run(cfg: ExperimentConfig) -> None:
    """Deletes the ``.previous`` pair once the new run has finished."""
    import shutil

    for d in _run_dirs(cfg):
        if _previous(d).exists():
            shutil.rmtree(_previous(d), ignore_errors=True)


def preflight(cfg: ExperimentConfig) -> None:
    """Opens every split the run will read (train, val, test) and checks what a run needs of
    them, before anything is written, moved or removed; every rank runs it before the process
    group exists, so a bad input costs one line and no work.

    Checks: each split's arrays exist, are readable .npy files (a truncated file is caught by
    its header's size), have the schema's shapes, dtypes and row counts; the train split holds
    at least one global batch (else an epoch runs 0 steps and reports an untrained model).
    """
    from recsys.data.loader import LoaderError, open_split

    source = cfg.data_source()
    splits = {}
    for split in ("train", "val", "test"):
        try:
            splits[split] = open_split(source, split)
        except LoaderError as e:
            raise LoaderError(f"{cfg.source}: data_dir: {one_line(e)}") from None
    rows, batch = splits["train"].num_rows, cfg.train.batch_size
    if rows < batch:
        raise ConfigError(
            f"{cfg.source}: train.batch_size={batch} is larger than the train split ({rows} rows): "
            "an epoch would run 0 steps; lower train.batch_size"
        )


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="train_group.py",
        description="Train an ensemble of CTR models in groups (each on the BCE of its mean logit), "
        "sharded with TorchRec DMP, then merge and report.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split("Examples::", 1)[1] if __doc__ else None,
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
    # Test hook: rank --fail-rank exits hard right after step N, like a killed process.
    p.add_argument("--fail-at-step", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--fail-rank", type=int, default=0, help=argparse.SUPPRESS)
    return p


def _quiet_libraries() -> None:
    """TorchRec 1.8 / torch 2.13 log deprecation notices on every rank at every plan and
    checkpoint (ShardedTensor -> DTensor, Topology construction, ...) that say nothing
    about this run; keep warnings and errors of our own visible."""
    import logging
    import warnings

    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=UserWarning, module="torch.distributed")
    for name in ("torchrec", "torch.fx._symbolic_trace", "torch.distributed.checkpoint"):
        logging.getLogger(name).setLevel(logging.ERROR)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    _quiet_libraries()
    if args.target is not None:
        if args.target.endswith(".toml"):
            if args.config is not None:
                parser.error(f"two configs given: {args.target} and --config {args.config}")
            args.config = args.target
        elif Path(args.target).resolve() != Path(__file__).resolve():
            parser.error(f"unexpected argument {args.target!r} (expected a .toml config)")
    if args.config is None:
        args.config = DEFAULT_CONFIG
    overrides = list(args.set) + ([f"device={args.device}"] if args.device else [])
    try:
        # Every config error (bad values, missing splits, cuda without CUDA) surfaces here,
        # before any process group.
        cfg = load_config(args.config, overrides)
        preflight(cfg)
        check_previous_run(cfg, args.resume)
        from recsys.distributed import init_distributed

        env = init_distributed(cfg.device)
        report = train(cfg, env, resume=args.resume, fail_at_step=args.fail_at_step, fail_rank=args.fail_rank,
                       sequential=args.schedule == "sequential")
        if report is not None:
            print(f"train_group: report {cfg.run_dir / 'results.md'}", flush=True)
    except user_errors() as e:
        return _fail(e)
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    return 0


def user_errors() -> tuple[type[BaseException], ...]:
    """Errors caused by the config or the data (not bugs): reported as one line, exit status 2."""
    return (UserError,)


def _fail(e: BaseException) -> int:
    """Prints ``train_group: error: ...`` once.

    Before the process group exists (config and preflight errors), every rank hits the same
    error, and only global rank 0 prints it.  Afterwards an error can be one rank's own (a bad
    row in its slice of a batch, a group's diverged loss): that rank prints it, with its rank,
    unless the error says otherwise (``report_here``).  Ranks that stay quiet wait a moment
    before exiting, because torchrun tears the whole job down as soon as one rank exits
    non-zero, which could kill the reporting rank before it has printed.
    """
    from recsys.data.loader import LoaderError

    initialized = dist.is_initialized()
    rank = dist.get_rank() if initialized else int(os.environ.get("RANK", "0"))
    # Config and spec errors are the same on every rank; a data error after start-up is the
    # rank's own (it reads its own slice of each batch).
    own = initialized and isinstance(e, LoaderError)
    report = e.report_here if isinstance(e, UserError) else None
    if report is None:
        report = rank == 0 or own
    if report:
        where = f"[rank {rank}] " if initialized and dist.get_world_size() > 1 else ""
        print(f"train_group: error: {where}{one_line(e)}", file=sys.stderr, flush=True)
    else:
        time.sleep(2.0)
    return 2


if __name__ == "__main__":
    sys.exit(main())
