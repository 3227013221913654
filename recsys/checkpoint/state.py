"""The scalars and RNG states that make a group's training loop resumable.

Why apart from the checkpointer: ``state.json`` is read by people and by the train loop's
callbacks (best AUC, early-stopping counter), the RNG states travel in each rank's extras;
neither needs DCP.

Example::

    state = TrainState(epoch=1, step=16, best_auc=0.71, best_step=8)
    TrainState.from_json(state.to_json()) == state        # True (-inf best AUC is saved as null)
    extras = {"rng": rng_state()}; ...; set_rng_state(extras["rng"])
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch


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
