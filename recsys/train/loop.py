"""The step loop of one group on this rank; what happens around the steps is in callbacks.

Why: the loop owns only what every run needs in the same order -- seeding, resuming from the
newest intact checkpoint, epochs cut into segments at checkpoint / evaluation boundaries (the
pipeline is drained at each one, so a checkpoint has trained exactly the batches the loader
handed out), the step and epoch counters, and the training clock.  Logging, checkpoints,
validation and early stopping are ``recsys.train.callbacks``; a test adds its own (fault
injection) without a flag in the production CLI.

Hooks, per epoch (``Callback``)::

    on_fit_start                      once, after a resume, with the writer open
    on_epoch_start(total)             total = this epoch's steps
      on_step(loss) ...               after each optimizer step (state.step already counted)
      on_segment_end(total)           at each checkpoint/eval boundary and at the epoch's end
    on_epoch_end(end)                 validation, early stopping: fill ``end``
    after_epoch(end)                  state.epoch_done / finished are final: checkpoint here

Example::

    trainer = GroupTrainer(cfg, env, run, build_group_parts(cfg, env, run), open_writer, True)
    trainer.fit(resume=False, callbacks=default_callbacks(cfg))
    result = trainer.finish()         # best checkpoint restored, val and test scored
"""
from __future__ import annotations

import time
from typing import TYPE_CHECKING, Callable, Iterator, Sequence

import numpy as np
import torch
import torch.distributed as dist
from torchrec.datasets.utils import Batch

from recsys.checkpoint import TrainState, rng_state, set_rng_state
from recsys.distributed.planning import uses_dense_kernel
from recsys.errors import UserError
from recsys.eval.runner import evaluate_split
from recsys.train.callbacks import EpochEnd
from recsys.train.schedule import GroupResult

if TYPE_CHECKING:
    from torch.utils.tensorboard import SummaryWriter

    from recsys.config import ExperimentConfig
    from recsys.distributed import DistEnv
    from recsys.eval.runner import EvalResult
    from recsys.train.build import GroupParts
    from recsys.train.callbacks import Callback
    from recsys.train.schedule import GroupRun


class ResumeUnsupported(UserError):
    """``--resume`` of a group whose checkpoints cannot be loaded back: Adam on CPU tables (the
    dense kernel) over more than one rank.

    Why refused by name: ``torch.optim.Adam``'s moments of a sharded table are plain local tensors
    (empty on a rank without a shard of it), while DCP saved them at the table's global size, so
    every checkpoint fails to load and would read as "damaged".  One process (any sharding) and
    the fused optimizers resume exactly.  ``report_here``: the group's leader prints the line.
    """

    def __init__(self, message: str, report_here: bool) -> None:
        super().__init__(message)
        self.report_here = report_here


def adam_state_reshards(cfg: ExperimentConfig, device: torch.device, group_world: int) -> bool:
    """Whether a group's checkpoints can be resumed: False for Adam on CPU tables over > 1 rank.

    Example: ``adam_state_reshards(cfg, torch.device("cpu"), 2)`` -> False with the tts4ctr preset.
    """
    return group_world == 1 or not uses_dense_kernel(cfg.embedding_optimizer.resolve(device.type), device)


class TrainingDiverged(UserError):
    """The training loss became NaN or inf: the run stops before it can checkpoint NaN weights.

    ``report_here`` is True on the group's leader only, so the line is printed once per group
    whichever rank leads it (see ``recsys.train.cli``).
    """

    def __init__(self, message: str, report_here: bool) -> None:
        super().__init__(message)
        self.report_here = report_here


def _segments(total: int, done: int, *intervals: int) -> Iterator[int]:
    """Splits the remaining steps of an epoch at multiples of the given intervals.

    The train pipeline is drained at each boundary, so a checkpoint taken there
    has trained exactly the batches the loader handed out.

    Example::

        list(_segments(8, 0, 3, 4))   # [3, 1, 2, 2]: boundaries at steps 3, 4, 6 and 8
    """
    step = done
    while step < total:
        nxt = total
        for iv in intervals:
            if iv > 0:
                nxt = min(nxt, (step // iv + 1) * iv)
        yield nxt - step
        step = nxt


def _take(it: Iterator[Batch], n: int) -> Iterator[Batch]:
    for _ in range(n):
        try:
            yield next(it)
        except StopIteration:
            return


class TrainClock:
    """Seconds spent in training steps; evaluation and checkpoints (between segments) excluded."""

    def __init__(self) -> None:
        self.total = 0.0  # finished segments
        self._t0: float | None = None

    def start(self) -> None:
        self._t0 = time.perf_counter()

    def stop(self) -> None:
        assert self._t0 is not None
        self.total += time.perf_counter() - self._t0
        self._t0 = None

    def now(self) -> float:
        """Training seconds so far, the running segment included."""
        return self.total + (0.0 if self._t0 is None else time.perf_counter() - self._t0)


class GroupTrainer:
    """Trains one group on this rank from ready-built parts (``recsys.train.build``).

    ``open_writer(purge_step)``: the group's TensorBoard writer (group leader only, else None);
    opened in ``fit`` once the resume step is known.  ``writer``, ``clock`` and ``show_progress``
    are what callbacks use besides the methods below.
    """

    def __init__(
        self, cfg: ExperimentConfig, env: DistEnv, run: GroupRun, parts: GroupParts,
        open_writer: Callable[[int | None], SummaryWriter] | None, show_progress: bool,
    ) -> None:
        self.cfg, self.env, self.run = cfg, env, run
        self.model, self.optimizer, self.pipeline = parts.model, parts.optimizer, parts.pipeline
        self.train_loader, self.ckpt, self.eval_batch = parts.train_loader, parts.ckpt, parts.eval_batch
        self.open_writer = open_writer
        self.writer: SummaryWriter | None = None
        self.show_progress = show_progress
        self.clock = TrainClock()
        self.examples = 0

    @property
    def train_seconds(self) -> float:
        return self.clock.total

    # -- the loop ---------------------------------------------------------------------------
    def fit(self, resume: bool, callbacks: Sequence[Callback]) -> None:
        cfg, t, run = self.cfg, self.cfg.train, self.run
        # Same seed for every group and rank count, so a member's dropout/shuffle stream does
        # not depend on the schedule; group_rank keeps ranks of one group decorrelated.
        torch.manual_seed(cfg.seed * 1000 + run.group_rank)
        np.random.seed(cfg.seed * 1000 + run.group_rank)
        if not adam_state_reshards(cfg, self.env.device, run.group_world) and run.is_leader and not resume:
            print(f"[group {run.index}] warning: Adam on CPU tables over {run.group_world} ranks: this run's "
                  "checkpoints cannot be resumed (--resume refuses them); train each group on 1 rank to resume",
                  flush=True)
        state, loader_state = self._restore() if resume else (TrainState(), None)
        if self.open_writer is not None:
            # After a resume, the steps past the checkpoint are trained again: purge_step drops
            # the killed run's events from that step on, so TensorBoard shows each step once
            # (all of them for a group that had not checkpointed yet: it starts at step 0).
            self.writer = self.open_writer(state.step + 1 if resume else None)
        for cb in callbacks:
            cb.on_fit_start(self, state)
        while not state.finished and state.epoch < t.epochs:
            self.train_loader.set_epoch(state.epoch)
            if loader_state is not None and not state.epoch_done:
                self.train_loader.load_state_dict(loader_state)
            loader_state = None
            if state.epoch_done:  # resumed right after an epoch-end checkpoint
                state.epoch, state.epoch_step, state.epoch_done = state.epoch + 1, 0, False
                continue
            self._epoch(state, callbacks)

    def _restore(self) -> tuple[TrainState, dict[str, object] | None]:
        """The newest intact checkpoint's state and this rank's loader position (collective);
        a fresh state if the group has none.  RNG states are restored as saved."""
        run = self.run
        if not adam_state_reshards(self.cfg, self.env.device, run.group_world) and self.ckpt.complete_steps():
            raise ResumeUnsupported(
                f"group {run.index}: --resume: Adam on CPU embedding tables (TorchRec's dense kernel) cannot resume "
                f"a group sharded over {run.group_world} ranks (torch.optim.Adam's state does not reshard); rerun "
                "without --resume, give each group 1 rank, or set embedding_optimizer.name = \"rowwise_adagrad\"",
                report_here=run.is_leader)

        def warn(msg: str) -> None:
            if run.is_leader:
                print(f"[group {run.index}] warning: {msg}", flush=True)

        found = self.ckpt.load_latest(self.model, self.optimizer, log=warn)
        if found is None:
            return TrainState(), None
        state, extras = found
        set_rng_state(extras["rng"])
        if run.is_leader:
            print(f"[group {run.index}] resumed from step {state.step} (epoch {state.epoch})", flush=True)
        return state, extras.get("loader")

    def _epoch(self, state: TrainState, callbacks: Sequence[Callback]) -> None:
        t = self.cfg.train
        total = len(self.train_loader)
        if t.max_steps_per_epoch:
            total = min(total, t.max_steps_per_epoch)
        it = iter(self.train_loader)
        for cb in callbacks:
            cb.on_epoch_start(self, state, total)
        for n in _segments(total, state.epoch_step, t.checkpoint_interval, t.eval_interval):
            self.clock.start()
            self._train_steps(it, n, state, callbacks)
            self.clock.stop()
            self.examples += n * t.batch_size
            for cb in callbacks:
                cb.on_segment_end(self, state, total)
        end = EpochEnd()
        for cb in callbacks:
            cb.on_epoch_end(self, state, end)
        state.epoch_done = True
        if state.epoch + 1 >= t.epochs or end.stop:
            state.finished = True
        for cb in callbacks:
            cb.after_epoch(self, state, end)
        state.epoch, state.epoch_step, state.epoch_done = state.epoch + 1, 0, False

    def _train_steps(self, it: Iterator[Batch], n: int, state: TrainState, callbacks: Sequence[Callback]) -> None:
        """Runs exactly n optimizer steps (n batches from `it`), calling each callback's
        ``on_step`` after each.

        The pipeline is drained at the end, so afterwards the model has trained on exactly
        the batches the loader handed out.
        """
        done = 0
        self.model.train()
        seg = _take(it, n)
        while True:
            try:
                loss_d, _logits, _labels = self.pipeline.progress(seg)
            except StopIteration:
                break
            done += 1
            state.step += 1
            state.epoch_step += 1
            for cb in callbacks:
                cb.on_step(self, state, loss_d)
        if done != n:
            raise RuntimeError(f"group {self.run.index}: the loader ran dry after {done} of {n} steps")

    # -- what callbacks call ----------------------------------------------------------------
    def group_mean(self, local: torch.Tensor) -> float:
        """Mean over the group's ranks of a per-rank mean (equal slices): the global-batch value,
        the same on any rank count.  Collective: every rank of the group logs at the same steps."""
        if self.run.group_world == 1:
            return float(local)
        t = local.detach().to(self.env.device, torch.float64).reshape(1)
        dist.all_reduce(t, group=self.run.pg)
        return float(t[0]) / self.run.group_world

    def check_finite(self, window: list[torch.Tensor], state: TrainState) -> float:
        """The group mean of the losses in ``window`` (the steps up to ``state.step``); raises
        ``TrainingDiverged`` naming the first non-finite step, on every rank of the group.

        Collective over the group (every rank calls it at the same steps), so the ranks agree
        on stopping; a NaN on any rank makes the reduced mean NaN.  The stop comes before the
        next checkpoint or evaluation, so no NaN weights are ever saved or kept as "best".
        """
        if not window:
            return float("nan")
        losses = torch.stack(window).detach().float().reshape(-1)
        mean = self.group_mean(losses.mean())
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

    def detach(self) -> None:
        """Gives the model its own forward back: calling it directly while the pipeline's
        PipelinedForward is installed fails ("Invalid PipelinedForward usage")."""
        self.pipeline.detach()

    def save(self, state: TrainState, is_best: bool = False) -> None:
        """Checkpoints the group at ``state.step`` (collective), with this rank's loader
        position and RNG states."""
        self.detach()
        extras = {"loader": self.train_loader.state_dict(), "rng": rng_state()}
        self.ckpt.save(state.step, self.model, self.optimizer, state, extras, is_best=is_best)

    def evaluate(self, split: str) -> EvalResult:
        """Scores `split` with this group: an EvalResult whose [N, M_k] logits sit on the group leader."""
        self.detach()
        mk = len(self.run.members)
        return evaluate_split(
            self.model, self.cfg.data_source(), split, self.eval_batch, columns=list(range(mk)), num_members=mk,
            group=self.run.pg, group_rank=self.run.group_rank, group_size=self.run.group_world,
            world=self.run.pg, dst=0, device=self.env.device, progress=self.show_progress,
            pin_memory=self.env.device.type == "cuda",
        )

    def finish(self) -> GroupResult:
        """Restores the best checkpoint, then scores val and test."""
        self.detach()
        best = self.ckpt.load_best(self.model)
        run = self.run
        return GroupResult(
            run.index, run.members, self.evaluate("val"), self.evaluate("test"), self.examples,
            self.train_seconds, best,
        )
