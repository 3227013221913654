"""The members a server runs: loaded from the training checkpoints, and one forward for all.

Why a module of its own: the fan-out worker (one member, in its own process) and the inline
baseline (all members, in the caller's process) load and run members the same way, so the
answers of the two modes agree to the bit; a member deployment would reuse both functions.

A request reaches a member as ``dense`` float32 [B, Dd] and ``ids`` int64 [B, F] (one id per
sparse field, already checked by ``recsys.serve.request``); a member answers logits [B].

Example::

    members = load_trained_members(cfg, [0, 2], "checkpoints/demo")   # config indices 0 and 2
    logits = forward_members(members, dense, ids, cfg.schema().sparse_names)   # [B, 2]
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Callable, Sequence

import numpy as np
import torch

from recsys.checkpoint import load_trained_group
from recsys.data.batch import kjt_from_ids
from recsys.ensemble import EnsembleGroup
from recsys.errors import one_line
from recsys.models.member import Member

if TYPE_CHECKING:
    from recsys.config import ExperimentConfig

__all__ = ["WorkerHook", "error_text", "forward_members", "load_trained_members"]

WorkerHook = Callable[[str, np.ndarray, np.ndarray], None]
"""``hook(member name, dense float32 [B, Dd], ids int64 [B, F])``, run before each forward."""


def load_trained_members(
    cfg: ExperimentConfig, indices: Sequence[int], checkpoint_root: str | Path, which: str = "best"
) -> list[Member]:
    """Members ``indices`` (config order) with their groups' checkpointed weights, in eval mode.

    Each group's checkpoint is read once, however many of its members are asked for; only
    the wanted members are kept (the rest of a group is freed when this returns).
    """
    groups: dict[int, EnsembleGroup] = {}
    members = []
    for j in indices:
        k = next(k for k, idx in enumerate(cfg.groups) if j in idx)
        if k not in groups:
            group = load_trained_group(cfg, k, checkpoint_root, which)[0]
            assert isinstance(group, EnsembleGroup)
            groups[k] = group
        member = groups[k].members[cfg.member_names[j]]
        assert isinstance(member, Member)
        members.append(member.eval())
    return members


def forward_members(members: Sequence[Member], dense: np.ndarray, ids: np.ndarray,
                    names: Sequence[str]) -> np.ndarray:
    """Logits [B, len(members)]; the request's KJT (keyed by the sparse field ``names``) is built
    once for all of them."""
    with torch.inference_mode():
        kjt = kjt_from_ids(torch.from_numpy(ids), list(names))
        dense_t = torch.from_numpy(dense)
        return torch.stack([m(dense_t, kjt) for m in members], dim=1).numpy()


def error_text(e: BaseException) -> str:
    """``"<ExceptionType>: <message on one line>"``: how a member's failure reads in a reply."""
    return f"{type(e).__name__}: {one_line(e)}"
