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
from typing import Any, Required, TypedDict

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


class RngState(TypedDict, total=False):
    """One rank's RNG states, as ``rng_state`` takes them: torch's CPU generator (a uint8 tensor),
    numpy's legacy global generator (``np.random.get_state()``) and, where CUDA is available,
    every CUDA device's generator."""

    torch: Required[torch.Tensor]
    numpy: Required[dict[str, Any] | tuple[str, np.ndarray, int, int, float]]  # numpy's own type
    cuda: list[torch.Tensor]


def rng_state() -> RngState:
    out: RngState = {"torch": torch.get_rng_state(), "numpy": np.random.get_state()}
    if torch.cuda.is_available():
        out["cuda"] = torch.cuda.get_rng_state_all()
    return out


def set_rng_state(state: RngState) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
