"""Sharded, atomic, resumable checkpoints of one training group (DCP save, verified load).

Layout (one directory per group, because parallel groups stop at different epochs)::

    checkpoints/<run>/group0/
        step-00000120/            a complete checkpoint (DCP shards + per-rank extras)
            .metadata, __0_0.distcp, ...   model + optimizer, torch.distributed.checkpoint
            rank0.pt, rank1.pt             loader position and RNG states of each group rank
            state.json                     epoch, step, best AUC so far, early-stopping counter
        .tmp-step-00000240/       being written; never read
        best.json                 {"step": 120, "auc": 0.71}: that directory is never pruned

Atomicity: every rank writes into ``.tmp-step-N``; after a barrier over the group
the group's rank 0 renames it to ``step-N``.  A directory named ``step-N`` is
therefore always complete, and a run killed mid-write leaves only a ``.tmp-``
directory that the next save removes.

Verification: before the rename, rank 0 writes ``manifest.json`` with every file's size and
the sha256 of the small files (``.metadata``, ``state.json``, ``rank*.pt``; the DCP shards,
which can be gigabytes, get their size only).  Every load verifies it first, so a truncated
or missing file (disk full, a copy cut short, a bad sector that shortens a file) is named in
one line instead of failing deep inside DCP or ``torch.load``; ``load_latest`` then falls back
to the newest intact checkpoint and says so.  A flipped bit inside a large shard is not
detected (DCP keeps no checksums of its own).

Example::

    ckpt = GroupCheckpointer(Path("checkpoints/demo/group0"), pg, group_rank=0)
    ckpt.save(step, model, optimizer, state, extras)     # each epoch / every N steps
    found = ckpt.load_latest(model, optimizer)           # -> (state, extras) or None
"""
from __future__ import annotations

import json
import pickle
import shutil
from pathlib import Path
from typing import Any, Callable, Protocol

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed.checkpoint.api import CheckpointException

from recsys.checkpoint.manifest import CheckpointCorrupt, verify_checkpoint, write_manifest
from recsys.checkpoint.state import TrainState
from recsys.errors import one_line


class Optimizer(Protocol):
    """What a checkpoint needs of an optimizer: torch's, or TorchRec's ``CombinedOptimizer``."""

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state_dict: dict[str, Any]) -> None: ...


def init_lazy_optimizer_state(optimizer: Optimizer) -> None:
    """Materializes the state of lazily-initialized optimizers (torch Adam) before a load.

    DCP loads in place into the tensors of ``optimizer.state_dict()``, and torchrec's
    ``KeyedOptimizer.load_state_dict`` silently skips parameters without state, so a
    fresh Adam (no step taken yet) would resume with zero moments and step 0.  The
    dummy step of ``init_state()`` may move parameters (weight decay); the model is
    loaded afterwards, so that does not matter.
    """
    from torchrec.optim.keyed import CombinedOptimizer, KeyedOptimizer  # lazy: checkpoint loads no torchrec

    parts = optimizer.optimizers if isinstance(optimizer, CombinedOptimizer) else [("", optimizer)]
    for _, opt in parts:
        if isinstance(opt, KeyedOptimizer):
            trainable = [p for p in opt.params.values() if getattr(p, "requires_grad", False)]
            if len(opt.state) < len(trainable):
                opt.init_state()


def _step_dir(step: int) -> str:
    return f"step-{step:08d}"



class GroupCheckpointer:
    """Saves/loads one group's sharded model + optimizer with DCP over the group's process group."""

    def __init__(self, directory: Path, pg: dist.ProcessGroup | None, group_rank: int, keep: int = 1) -> None:
        self.dir = Path(directory)
        self.pg = pg
        self.group_rank = group_rank
        self.keep = keep  # newest complete checkpoints kept, besides the best one

    def _barrier(self) -> None:
        if dist.is_available() and dist.is_initialized():  # one process (evaluate, serve, tools): nothing to wait for
            dist.barrier(group=self.pg)

    def _corrupt(self, e: CheckpointCorrupt) -> CheckpointCorrupt:
        e.report_here = self.group_rank == 0
        return e

    def complete_steps(self) -> list[int]:
        if not self.dir.is_dir():
            return []
        steps = []
        for p in self.dir.iterdir():
            if p.is_dir() and p.name.startswith("step-") and (p / "state.json").is_file():
                steps.append(int(p.name[len("step-"):]))
        return sorted(steps)

    def best(self) -> dict[str, Any] | None:
        p = self.dir / "best.json"
        if not p.is_file():
            return None
        try:
            best = json.loads(p.read_text())
            int(best["step"])
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise CheckpointCorrupt(f"{p}: unreadable ({one_line(e)})") from None
        return best

    def save(
        self,
        step: int,
        model: nn.Module,
        optimizer: Optimizer,
        state: TrainState,
        extras: dict[str, Any],
        is_best: bool = False,
    ) -> Path:
        """Collective over the group.  ``extras`` (loader position, RNG) is per rank."""
        final = self.dir / _step_dir(step)
        tmp = self.dir / f".tmp-{_step_dir(step)}"
        if self.group_rank == 0:
            self.dir.mkdir(parents=True, exist_ok=True)
            for stale in self.dir.glob(".tmp-*"):
                shutil.rmtree(stale, ignore_errors=True)
            if final.exists():  # re-saving the same step after a resume
                shutil.rmtree(final)
            tmp.mkdir()
        self._barrier()
        # One file per tensor, not one per rank: torch 2.13's DCP writer keeps every tensor it
        # has written to a file alive until that file is closed (its safetensors dict is filled
        # for every format), and it clones each table first (a table is a view into the kernel's
        # one flat weight buffer).  One file per rank therefore held a full copy of the rank's
        # tables for the whole save (measured: +2.1 GB peak RSS on a rank holding 2 GB of
        # tables); one file per tensor holds at most one table's copy at a time.
        dcp.save(
            {"model": model.state_dict(), "optim": optimizer.state_dict()},
            storage_writer=dcp.FileSystemWriter(str(tmp), single_file_per_rank=False),
            checkpoint_id=str(tmp),
            process_group=self.pg,
        )
        torch.save(extras, tmp / f"rank{self.group_rank}.pt")
        self._barrier()
        if self.group_rank == 0:
            (tmp / "state.json").write_text(json.dumps(state.to_json(), indent=1))
            write_manifest(tmp)
            tmp.rename(final)
            if is_best:
                best_tmp = self.dir / "best.json.tmp"
                best_tmp.write_text(json.dumps({"step": step, "auc": state.best_auc}))
                best_tmp.replace(self.dir / "best.json")
            self._prune()
        self._barrier()
        return final

    def _prune(self) -> None:
        best = self.best()
        keep = set(self.complete_steps()[-self.keep:])
        if best is not None:
            keep.add(int(best["step"]))
        for s in self.complete_steps():
            if s not in keep:
                shutil.rmtree(self.dir / _step_dir(s), ignore_errors=True)

    def load(self, step: int, model: nn.Module, optimizer: Optimizer | None) -> tuple[TrainState, dict[str, Any]]:
        """Loads a checkpoint in place (collective); returns its TrainState and this rank's extras.

        Verified first (``verify_checkpoint``, the same files on every rank, so all ranks agree);
        anything unreadable is a ``CheckpointCorrupt`` naming the checkpoint.
        """
        path = self.dir / _step_dir(step)
        try:
            verify_checkpoint(path)
        except CheckpointCorrupt as e:
            raise self._corrupt(e) from None
        if optimizer is not None:
            init_lazy_optimizer_state(optimizer)  # before model.state_dict(): it moves the params
        sd: dict[str, Any] = {"model": model.state_dict()}
        if optimizer is not None:
            sd["optim"] = optimizer.state_dict()
        try:
            dcp.load(sd, checkpoint_id=str(path), process_group=self.pg)
            state = TrainState.from_json(json.loads((path / "state.json").read_text()))
            extras_path = path / f"rank{self.group_rank}.pt"
            extras = torch.load(extras_path, weights_only=False) if extras_path.is_file() else {}
        except (OSError, ValueError, RuntimeError, EOFError, KeyError, TypeError, pickle.UnpicklingError,
                CheckpointException) as e:  # DCP's CheckpointException is a BaseException: named here
            raise self._corrupt(CheckpointCorrupt(
                f"{path}: cannot be loaded ({type(e).__name__}: {one_line(e)[:300]})")) from None
        model.load_state_dict(sd["model"])
        if optimizer is not None:
            optimizer.load_state_dict(sd["optim"])
        return state, extras

    def newest_intact(self, log: Callable[[str], None] | None = None) -> int | None:
        """The newest complete checkpoint that passes ``verify_checkpoint``; each damaged newer
        one is reported through ``log`` (one line each) and skipped."""
        for step in reversed(self.complete_steps()):
            try:
                verify_checkpoint(self.dir / _step_dir(step))
            except CheckpointCorrupt as e:
                if log is not None:
                    log(f"checkpoint {_step_dir(step)} is damaged, skipping it: {e}")
                continue
            return step
        return None

    def load_latest(
        self, model: nn.Module, optimizer: Optimizer | None, log: Callable[[str], None] | None = None
    ) -> tuple[TrainState, dict[str, Any]] | None:
        """Resumes from the newest intact checkpoint (None if there is none); see ``newest_intact``."""
        steps = self.complete_steps()
        if not steps:
            return None
        # Newest first; a checkpoint that passes verification but fails to load (a flipped bit
        # inside a large shard, a pre-manifest checkpoint) is skipped like a damaged one.  The
        # files are shared, so every rank verifies and loads the same ones and decides alike;
        # DCP gathers a failed read's error to every rank of the group.
        while True:
            step = self.newest_intact(log)
            if step is None:
                raise self._corrupt(CheckpointCorrupt(
                    f"{self.dir}: every checkpoint is damaged ({', '.join(map(_step_dir, steps))})"))
            damaged = [s for s in self.complete_steps() if s > step]
            if damaged:
                self._quarantine(damaged)
            try:
                state, extras = self.load(step, model, optimizer)
            except CheckpointCorrupt as e:
                if log is not None:
                    log(f"checkpoint {_step_dir(step)} is damaged, skipping it: {e}")
                self._quarantine([step])
                continue
            self._repair_best(state, log)
            return state, extras

    def _quarantine(self, steps: list[int]) -> None:
        """Renames damaged checkpoints newer than the one resumed from to ``.damaged-step-N``:
        otherwise pruning would keep them as "newest" and delete the good checkpoints the
        resumed run writes.  Every rank has verified before the group's rank 0 renames."""
        self._barrier()
        if self.group_rank == 0:
            self._quarantine_now(steps)
        self._barrier()

    def _quarantine_now(self, steps: list[int]) -> None:
        for s in steps:
            src, target = self.dir / _step_dir(s), self.dir / f".damaged-{_step_dir(s)}"
            if target.exists():
                shutil.rmtree(target, ignore_errors=True)
            if src.exists():
                src.rename(target)

    def _repair_best(self, state: TrainState, log: Callable[[str], None] | None) -> None:
        """On resume, ``best.json`` may be unreadable, name a quarantined checkpoint, or name a
        damaged one (restored only when training ends, so checked now).  Unreadable or gone:
        point it at the best step the resumed state knows (kept, never pruned), or drop it if
        that is gone too.  Damaged: set it aside, drop ``best.json`` and forget the best AUC on
        every rank alike (early stopping compares against it), so the run ends with the best
        checkpoint it writes from here on.  Collective over the group."""
        log = log if self.group_rank == 0 else None
        try:
            best = self.best()
            best_step = None if best is None else int(best["step"])
            unreadable = False
        except CheckpointCorrupt as e:
            best_step, unreadable = None, True
            if log is not None:
                log(f"{e}; rewriting it from the resumed state")
        damaged = False
        if best_step is not None and best_step in self.complete_steps():
            try:  # every rank checks the same files, so all decide alike
                verify_checkpoint(self.dir / _step_dir(best_step))
            except CheckpointCorrupt as e:
                damaged = True
                if log is not None:
                    log(f"the best checkpoint is damaged ({e}); it is set aside, and the run ends with the best "
                        "checkpoint it writes from here on, or its last weights")
        broken = unreadable or (best_step is not None and best_step not in self.complete_steps())
        if damaged:
            state.best_auc, state.best_step = float("-inf"), -1
        self._barrier()  # every rank has read best.json before it may change
        if self.group_rank == 0:
            if damaged:
                assert best_step is not None
                self._quarantine_now([best_step])
                (self.dir / "best.json").unlink()
            elif broken:
                if state.best_step in self.complete_steps():
                    tmp = self.dir / "best.json.tmp"
                    tmp.write_text(json.dumps({"step": state.best_step, "auc": state.best_auc}))
                    tmp.replace(self.dir / "best.json")
                else:
                    (self.dir / "best.json").unlink(missing_ok=True)
        self._barrier()

    def load_best(self, model: nn.Module) -> int | None:
        """Restores the best checkpoint's model weights (the reference's early-stopping restore)."""
        best = self.best()
        if best is None:
            return None
        step = int(best["step"])
        if not (self.dir / _step_dir(step) / "state.json").is_file():
            raise CheckpointCorrupt(f"{self.dir / 'best.json'}: names {_step_dir(step)}, which is not there")
        self.load(step, model, None)
        return step
