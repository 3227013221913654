"""A trained group, loaded for evaluation or serving: unsharded, on CPU, from its checkpoints.

Why apart from the checkpointer: training reads and writes checkpoints of a sharded model;
evaluation and serving only read one into the plain module, with the config's member specs.

Example::

    group, step = load_trained_group(load_config("configs/demo.toml"), 0, "checkpoints/demo")
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from recsys.checkpoint.group import GroupCheckpointer
from recsys.errors import UserError

if TYPE_CHECKING:
    from recsys.config import ExperimentConfig
    from recsys.ensemble import EnsembleGroup


class CheckpointMissing(UserError, RuntimeError):
    """A group directory without any complete checkpoint; the message names it."""


def load_trained_group(
    cfg: ExperimentConfig, k: int, checkpoint_root: str | Path, which: str = "best"
) -> tuple[EnsembleGroup, int]:
    """Group ``k`` of the experiment ``cfg`` (an ``ExperimentConfig``) with the weights of its best
    (early stopping's) or latest checkpoint, unsharded, on CPU: ``(EnsembleGroup, step)``.

    DCP reshards whatever layout training saved into the plain module; used by
    ``python -m recsys.eval`` and by ``recsys.serve``.

    Example::

        group, step = load_trained_group(load_config("configs/demo.toml"), 0, "checkpoints/demo")
    """
    # lazy: the models load torchrec (~2 s); `import recsys.checkpoint` (manifests, state) needs only torch
    from recsys.ensemble import GroupTrain, build_group
    from recsys.models.embedding_init import materialize_embeddings

    # Tables allocated but not initialized: the checkpoint overwrites every value.
    model = GroupTrain(build_group(cfg.members, cfg.member_names, cfg.groups[k], cfg.schema(), materialize=False))
    materialize_embeddings(model, fill=False)
    ckpt = GroupCheckpointer(Path(checkpoint_root) / f"group{k}", None, group_rank=0)
    steps = ckpt.complete_steps()
    if not steps:
        raise CheckpointMissing(f"{Path(checkpoint_root) / f'group{k}'}: no complete checkpoint (step-*/state.json)")
    step = ckpt.load_best(model) if which == "best" else None
    if step is None:
        step = steps[-1]
        ckpt.load(step, model, None)
    return model.group, step
