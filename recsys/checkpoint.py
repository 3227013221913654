"""Sharded, atomic, resumable checkpoints of one training group.

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

Example::

    ckpt = GroupCheckpointer(Path("checkpoints/demo/group0"), pg, group_rank=0)
    ckpt.save(step, model, optimizer, state, extras)     # each epoch / every N steps
    found = ckpt.load_latest(model, optimizer)           # -> (state, extras) or None
"""
from __future__ import annotations

import json
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch import nn

from recsys.errors import UserError


@dataclass
class TrainState:
    """Scalars that make a group's loop resumable (saved as state.json, human-readable)."""

    epoch: int = 0  # the epoch in progress (or the next one when epoch_done)
    step: int = 0  # global optimizer steps of this group
    epoch_step: int = 0  # steps done within `epoch`
    epoch_done: bool = False
    best_auc: float = float("-inf")
    best_step: int = -1
    bad_epochs: int = 0
    finished: bool = False  # training of this group is over (early stop or last epoch)

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["best_auc"] = None if d["best_auc"] == float("-inf") else d["best_auc"]
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> "TrainState":
        d = dict(d)
        d["best_auc"] = float("-inf") if d.get("best_auc") is None else float(d["best_auc"])
        return cls(**d)


def rng_state() -> dict[str, Any]:
    out: dict[str, Any] = {"torch": torch.get_rng_state(), "numpy": np.random.get_state()}
    if torch.cuda.is_available():
        out["cuda"] = torch.cuda.get_rng_state_all()
    return out


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def init_lazy_optimizer_state(optimizer: Any) -> None:
    """Materializes the state of lazily-initialized optimizers (torch Adam) before a load.

    DCP loads in place into the tensors of ``optimizer.state_dict()``, and torchrec's
    ``KeyedOptimizer.load_state_dict`` silently skips parameters without state, so a
    fresh Adam (no step taken yet) would resume with zero moments and step 0.  The
    dummy step of ``init_state()`` may move parameters (weight decay); the model is
    loaded afterwards, so that does not matter.
    """
    from torchrec.optim.keyed import CombinedOptimizer, KeyedOptimizer

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
        dist.barrier(group=self.pg)

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
        return json.loads(p.read_text()) if p.is_file() else None

    def save(
        self,
        step: int,
        model: nn.Module,
        optimizer: Any,
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
        dcp.save(
            {"model": model.state_dict(), "optim": optimizer.state_dict()},
            checkpoint_id=str(tmp),
            process_group=self.pg,
        )
        torch.save(extras, tmp / f"rank{self.group_rank}.pt")
        self._barrier()
        if self.group_rank == 0:
            (tmp / "state.json").write_text(json.dumps(state.to_json(), indent=1))
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

    def load(self, step: int, model: nn.Module, optimizer: Any | None) -> tuple[TrainState, dict[str, Any]]:
        """Loads a checkpoint in place (collective); returns its TrainState and this rank's extras."""
        path = self.dir / _step_dir(step)
        if optimizer is not None:
            init_lazy_optimizer_state(optimizer)  # before model.state_dict(): it moves the params
        sd: dict[str, Any] = {"model": model.state_dict()}
        if optimizer is not None:
            sd["optim"] = optimizer.state_dict()
        dcp.load(sd, checkpoint_id=str(path), process_group=self.pg)
        model.load_state_dict(sd["model"])
        if optimizer is not None:
            optimizer.load_state_dict(sd["optim"])
        state = TrainState.from_json(json.loads((path / "state.json").read_text()))
        extras_path = path / f"rank{self.group_rank}.pt"
        extras = torch.load(extras_path, weights_only=False) if extras_path.is_file() else {}
        return state, extras

    def load_latest(self, model: nn.Module, optimizer: Any) -> tuple[TrainState, dict[str, Any]] | None:
        steps = self.complete_steps()
        if not steps:
            return None
        return self.load(steps[-1], model, optimizer)

    def load_best(self, model: nn.Module) -> int | None:
        """Restores the best checkpoint's model weights (the reference's early-stopping restore)."""
        best = self.best()
        if best is None:
            return None
        self.load(int(best["step"]), model, None)
        return int(best["step"])


class CheckpointMissing(UserError, RuntimeError):
    """A group directory without any complete checkpoint; the message names it."""


def load_trained_group(cfg: Any, k: int, checkpoint_root: str | Path, which: str = "best") -> tuple[nn.Module, int]:
    """Group ``k`` of the experiment ``cfg`` (an ``ExperimentConfig``) with the weights of its best
    (early stopping's) or latest checkpoint, unsharded, on CPU: ``(EnsembleGroup, step)``.

    DCP reshards whatever layout training saved into the plain module; used by
    ``python -m recsys.evaluate`` and by ``recsys.serve``.

    Example::

        group, step = load_trained_group(load_config("configs/demo.toml"), 0, "checkpoints/demo")
    """
    from recsys.ensemble import GroupTrain, build_group

    model = GroupTrain(build_group(cfg.members, cfg.member_names, cfg.groups[k], cfg.schema()))
    ckpt = GroupCheckpointer(Path(checkpoint_root) / f"group{k}", None, group_rank=0)
    steps = ckpt.complete_steps()
    if not steps:
        raise CheckpointMissing(f"{Path(checkpoint_root) / f'group{k}'}: no complete checkpoint (step-*/state.json)")
    step = ckpt.load_best(model) if which == "best" else None
    if step is None:
        step = steps[-1]
        ckpt.load(step, model, None)
    return model.group, step

