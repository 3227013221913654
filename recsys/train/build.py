"""Everything one group needs to train on this rank, built from the config in one place.

Why: the model (born sharded by DMP over the group's ranks), its fused + dense optimizer,
the global-batch train loader, the checkpointer and the train pipeline all depend on the same
few facts (the group's ranks, the device, the config), and their order matters (the tables
exist only after ``shard_module``; the optimizer needs the DMP).  The loop receives them
ready, so it holds no construction code.

Example::

    parts = build_group_parts(cfg, env, run)
    parts.pipeline.progress(iter(parts.train_loader))   # one optimizer step: -> (loss, logits, labels)
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Iterator, Protocol

import torch
from torch import nn
from torchrec.datasets.utils import Batch
from torchrec.distributed.train_pipeline import TrainPipelineBase, TrainPipelineSparseDist

from recsys.checkpoint import GroupCheckpointer
from recsys.config import ConfigError
from recsys.data.loader import make_loader
from recsys.distributed import make_optimizer, shard_module
from recsys.ensemble import GroupTrain, build_group
from recsys.grad_sync import require_global_mean_gradients
from recsys.plan import topology_from_config

if TYPE_CHECKING:
    from torchrec.optim.keyed import CombinedOptimizer

    from recsys.config import ExperimentConfig
    from recsys.data.loader import CTRLoader
    from recsys.distributed import DistEnv
    from recsys.train.schedule import GroupRun


StepOutput = tuple[torch.Tensor, torch.Tensor, torch.Tensor]  # GroupTrain's (detached loss, logits [B, M_k], labels [B])


class StepPipeline(Protocol):
    """What the loop needs of a train pipeline: one optimizer step per ``progress`` call
    (``StopIteration`` once ``it`` is exhausted and every batch taken from it has trained),
    and ``detach`` to give the model its own forward back before it is called directly."""

    def progress(self, dataloader_iter: Iterator[Batch]) -> StepOutput: ...

    def detach(self) -> nn.Module: ...


class PlainPipeline(TrainPipelineBase):
    """``TrainPipelineBase`` (copy to device, zero_grad, forward, backward, optimizer step; no
    overlap) that starts afresh on each new iterator, as ``TrainPipelineSparseDist`` does: the
    loop hands it one iterator per segment, and the base class would otherwise stay stopped
    after the first one ran dry.  Its forward is never replaced, so ``detach`` has nothing to undo.
    """

    def __init__(self, model: nn.Module, optimizer: CombinedOptimizer, device: torch.device) -> None:
        super().__init__(model, optimizer, device)
        self._segment: Iterator[Batch] | None = None

    def progress(self, dataloader_iter: Iterator[Batch]) -> StepOutput:
        if dataloader_iter is not self._segment:
            self.reset()
            self._segment = dataloader_iter
        out: StepOutput = super().progress(dataloader_iter)
        return out

    def detach(self) -> nn.Module:
        model: nn.Module = self._model
        return model


@dataclass
class GroupParts:
    """One group's training objects on this rank.

    ``pipeline.progress(it)`` runs one optimizer step on the next batch of ``it``:
    ``TrainPipelineSparseDist`` (overlaps the next batch's input distribution with this
    batch's compute) or, with ``train.pipeline = false``, ``TrainPipelineBase`` (same math,
    no overlap).  ``eval_batch``: rows per rank per evaluation batch.
    """

    model: nn.Module  # DistributedModelParallel over GroupTrain
    optimizer: CombinedOptimizer
    train_loader: CTRLoader
    ckpt: GroupCheckpointer
    pipeline: StepPipeline
    eval_batch: int


def make_pipeline(model: nn.Module, optimizer: CombinedOptimizer, device: torch.device, overlap: bool) -> StepPipeline:
    """TorchRec's train pipeline for ``model``: input distribution overlapped with compute
    (``overlap``: ``TrainPipelineSparseDist``), or the plain step (``PlainPipeline``).  Both
    give the same numbers: the overlap only moves when the next batch's ids are sent.

    ``execute_all_batches``: a segment's last batches are trained, not left in the pipeline.
    """
    if overlap:
        pipeline: StepPipeline = TrainPipelineSparseDist(model, optimizer, device, execute_all_batches=True)
        return pipeline
    return PlainPipeline(model, optimizer, device)


def build_group_parts(cfg: ExperimentConfig, env: DistEnv, run: GroupRun) -> GroupParts:
    """Builds group ``run``'s model, optimizer, loader, checkpointer and pipeline on this rank.

    Collective over the group (DMP's planner and sharding).
    """
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
    # Ranks on this node, whatever group they train: they share its RAM (torchrun's LOCAL_WORLD_SIZE).
    topo = topology_from_config(cfg, run.group_world, env.local_world_size, env.device.type)
    model = shard_module(module, run.pg, env, emb_opt, cfg.sharding.resolve(), topo, run.index)
    optimizer = make_optimizer(model, cfg.dense_optimizer.lr, cfg.dense_optimizer.weight_decay, emb_opt=emb_opt)
    # Global batches (not per-rank row ranges): step i trains on the same t.batch_size rows
    # whatever the group's rank count, so the schedule does not change the result.
    train_loader = make_loader(
        cfg.data_source(), "train", t.batch_size, rank=run.group_rank, world_size=run.group_world,
        shuffle=t.shuffle, seed=cfg.seed, drop_last=True, global_batch=True, prefetch=2,
        pin_memory=env.device.type == "cuda",  # else the non_blocking host-to-device copies are synchronous
    )
    return GroupParts(
        model=model,
        optimizer=optimizer,
        train_loader=train_loader,
        ckpt=GroupCheckpointer(Path(cfg.ckpt_dir) / f"group{run.index}", run.pg, run.group_rank),
        pipeline=make_pipeline(model, optimizer, env.device, overlap=t.pipeline),
        eval_batch=(t.eval_batch_size or t.batch_size) // run.group_world or 1,
    )
