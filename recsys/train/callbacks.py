"""What happens around a group's steps: loss log and throughput, checkpoints, validation and
early stopping, each a callback of ``recsys.train.loop.GroupTrainer``.

Why callbacks: each concern reads a few of the loop's counters at a few points and keeps its
own state (a loss window, a progress bar, the best AUC's decision), so each fits in one small
class, and a test adds behaviour (``tests/fault_injection.py`` kills a rank at a step) without a
flag in the production CLI.  Callbacks run in list order at every hook; several are
collective over the group (every rank of it calls them at the same steps).

Example::

    class PrintEvery100(Callback):
        def on_step(self, loop: GroupTrainer, state: TrainState, loss: torch.Tensor) -> None:
            if state.step % 100 == 0:
                print(state.step, float(loss))

    trainer.fit(resume=False, callbacks=[*default_callbacks(cfg), PrintEvery100()])
"""
from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.distributed as dist
from tqdm import tqdm

from recsys.eval.report import score

if TYPE_CHECKING:
    from recsys.checkpoint import TrainState
    from recsys.config import ExperimentConfig, TrainConfig
    from recsys.eval.runner import EvalResult
    from recsys.train.loop import GroupTrainer


@dataclass
class EpochEnd:
    """What the epoch-end callbacks decided: the val AUC of the group mean, whether it beat
    the best so far (that checkpoint becomes ``best.json``), and whether to stop early."""

    val_auc: float | None = None
    improved: bool = False
    stop: bool = False


class Callback:
    """No-op hooks; subclasses override the ones they need (see ``recsys.train.loop``)."""

    def on_fit_start(self, loop: GroupTrainer, state: TrainState) -> None:
        """Once per fit, after a resume restored ``state``; ``loop.writer`` is open."""

    def on_epoch_start(self, loop: GroupTrainer, state: TrainState, total: int) -> None:
        """Before the epoch's first step; ``total``: its steps, ``state.epoch_step`` done already."""

    def on_step(self, loop: GroupTrainer, state: TrainState, loss: torch.Tensor) -> None:
        """After each optimizer step; ``loss``: this rank's detached mean loss (0-dim)."""

    def on_segment_end(self, loop: GroupTrainer, state: TrainState, total: int) -> None:
        """At each checkpoint/eval boundary (the pipeline drained), the epoch's last included."""

    def on_epoch_end(self, loop: GroupTrainer, state: TrainState, end: EpochEnd) -> None:
        """After the epoch's steps, before ``state.epoch_done``/``finished`` are set: fill ``end``."""

    def after_epoch(self, loop: GroupTrainer, state: TrainState, end: EpochEnd) -> None:
        """``state`` is the epoch's final one (``epoch_done``, ``finished``): what is saved now resumes right."""


class TrainLog(Callback):
    """Train loss and examples/s every ``log_every`` steps (and at the epoch's last step) to
    TensorBoard and the tqdm bar; also the divergence guard: the losses since the last log are
    checked for NaN/inf (``GroupTrainer.check_finite``, collective) at each log and at each
    segment's end, so a non-finite loss stops the run before any checkpoint or evaluation."""

    def __init__(self, t: TrainConfig) -> None:
        self.t = t
        self.window: list[torch.Tensor] = []  # detached losses since the last log (no per-step sync)
        self.total = 0
        self.logged_at = 0.0  # training seconds at the last log
        self.bar: tqdm[None] | None = None

    def on_epoch_start(self, loop: GroupTrainer, state: TrainState, total: int) -> None:
        self.total, self.window = total, []
        self.logged_at = loop.clock.now()
        self.bar = tqdm(
            total=total, initial=state.epoch_step, disable=not loop.show_progress, unit="batch",
            desc=f"group {loop.run.index} epoch {state.epoch}", dynamic_ncols=True, file=sys.stdout,
        )

    def on_step(self, loop: GroupTrainer, state: TrainState, loss: torch.Tensor) -> None:
        assert self.bar is not None
        self.window.append(loss)
        self.bar.update(1)
        if state.step % self.t.log_every == 0 or state.epoch_step == self.total:
            now = loop.clock.now()
            mean_loss = loop.check_finite(self.window, state)
            eps = len(self.window) * self.t.batch_size / max(now - self.logged_at, 1e-9)
            self.bar.set_postfix(loss=f"{mean_loss:.4f}", ex_s=f"{eps:,.0f}")
            if loop.writer is not None:
                loop.writer.add_scalar(f"train/loss/group{loop.run.index}", mean_loss, state.step)
                loop.writer.add_scalar(f"train/examples_per_s/group{loop.run.index}", eps, state.step)
            self.window.clear()
            self.logged_at = now

    def on_segment_end(self, loop: GroupTrainer, state: TrainState, total: int) -> None:
        if self.window:  # steps since the last log: checked before any checkpoint or eval
            loop.check_finite(self.window, state)

    def on_epoch_end(self, loop: GroupTrainer, state: TrainState, end: EpochEnd) -> None:
        if self.bar is not None:
            self.bar.close()


class Checkpoints(Callback):
    """Checkpoints every ``checkpoint_interval`` steps within an epoch and at each epoch's end
    (that one marked best when validation improved).  Collective over the group."""

    def __init__(self, t: TrainConfig) -> None:
        self.interval = t.checkpoint_interval

    def on_segment_end(self, loop: GroupTrainer, state: TrainState, total: int) -> None:
        if state.epoch_step < total and self.interval and state.epoch_step % self.interval == 0:
            loop.save(state)

    def after_epoch(self, loop: GroupTrainer, state: TrainState, end: EpochEnd) -> None:
        loop.save(state, is_best=end.improved)


class Validation(Callback):
    """Val AUC of the group mean every ``eval_interval`` steps and at each epoch's end (logged
    per member and for the group); at the epoch's end it is the early-stopping signal: the best
    step is kept, and ``patience`` epochs without a gain stop the group (the reference's rule).
    Collective over the group (the AUC is broadcast from the leader)."""

    def __init__(self, t: TrainConfig) -> None:
        self.interval, self.patience = t.eval_interval, t.patience

    def on_segment_end(self, loop: GroupTrainer, state: TrainState, total: int) -> None:
        if state.epoch_step < total and self.interval and state.epoch_step % self.interval == 0:
            self._log_val(loop, state, loop.evaluate("val"))

    def on_epoch_end(self, loop: GroupTrainer, state: TrainState, end: EpochEnd) -> None:
        auc = self._log_val(loop, state, loop.evaluate("val"))
        end.val_auc, end.improved = auc, auc > state.best_auc
        if end.improved:
            state.best_auc, state.best_step, state.bad_epochs = auc, state.step, 0
        else:
            state.bad_epochs += 1
        end.stop = bool(self.patience) and state.bad_epochs >= self.patience
        if loop.run.is_leader:
            print(
                f"[group {loop.run.index}] epoch {state.epoch} step {state.step}: val AUC {auc:.5f}"
                f" (best {state.best_auc:.5f} at step {state.best_step})", flush=True,
            )

    @staticmethod
    def _log_val(loop: GroupTrainer, state: TrainState, res: EvalResult) -> float:
        """Val AUC of the group mean (the early-stopping signal), broadcast over the group."""
        run = loop.run
        auc = torch.zeros(1, dtype=torch.float64, device=loop.env.device)
        if res.member_logits is not None and res.labels is not None:
            rep = score(res.member_logits, res.labels, run.names, [list(range(len(run.names)))], compare=False)
            auc[0] = rep.group_metrics[0].auc
            w = loop.writer
            if w is not None:
                rows = [*zip(rep.names, rep.members), (f"group{run.index}", rep.group_metrics[0])]
                for name, m in rows:
                    for metric in ("auc", "logloss", "ne", "calibration"):
                        w.add_scalar(f"val/{metric}/{name}", getattr(m, metric), state.step)
                w.flush()
        dist.broadcast(auc, src=run.ranks[0], group=run.pg)
        return float(auc[0])


def default_callbacks(cfg: ExperimentConfig) -> list[Callback]:
    """The production set, in the order they must run: the divergence check comes before a
    mid-epoch checkpoint, that before a mid-epoch evaluation (as they always ran)."""
    t = cfg.train
    return [TrainLog(t), Checkpoints(t), Validation(t)]
