"""Process groups, DMP wrapping, planning, sharders and optimizers for grouped training.

One code path for ``cpu`` + gloo and ``cuda`` + NCCL.  A group of ensemble members
is one ``nn.Module``; ``shard_module`` shards every ``EmbeddingBagCollection`` in it
across the ranks of that group's process group and wraps the dense part in DDP
over the same group, so several groups can train side by side in one torchrun
world (``group_schedule``) or one after another on all ranks.

TorchRec 1.8 bugs that bite when a group lacks global rank 0 are worked around in
``recsys.torchrec_compat`` and nowhere else.

Example::

    env = init_distributed()                              # torchrun env, or a 1-process world
    ranks = group_schedule(env.world_size, [[0, 1], [2, 3]])   # None -> sequential
    pgs = new_subgroups(ranks) if ranks else None
    dmp = shard_module(group_module, pgs[k] if pgs else None, env,
                       EmbeddingOptimizerConfig("rowwise_adagrad", lr=0.01))
    opt = make_optimizer(dmp, lr=1e-3, emb_opt=EmbeddingOptimizerConfig("rowwise_adagrad", lr=0.01))
    loss = loss_fn(dmp(dense, kjt), labels); loss.backward(); opt.step()
"""
from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from fbgemm_gpu.split_embedding_configs import EmbOptimType
from torch import nn
from torch.distributed._shard.sharded_tensor import ShardedTensor
from torchrec.distributed.embeddingbag import EmbeddingBagCollectionSharder
from torchrec.distributed.embedding_types import EmbeddingComputeKernel
from torchrec.distributed.model_parallel import DistributedModelParallel
from torchrec.distributed.planner import EmbeddingShardingPlanner, ParameterConstraints
from torchrec.distributed.types import ModuleSharder, ShardedModule, ShardingEnv, ShardingPlan, ShardingType
from torchrec.modules.embedding_modules import EmbeddingBagCollection
from torchrec.optim.keyed import CombinedOptimizer, KeyedOptimizer, KeyedOptimizerWrapper
from torchrec.optim.optimizers import in_backward_optimizer_filter

from recsys import torchrec_compat
from recsys.config.schema import EMBEDDING_OPTIMIZER_NAMES as EMBEDDING_OPTIMIZERS
from recsys.config.schema import SHARDING_TYPE_NAMES as SHARDING_TYPES
from recsys.config.schema import EmbeddingOptimizerConfig, ShardingConfig


@dataclass
class DistEnv:
    """This process's place in the world, and the device/backend it uses."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    backend: str  # "gloo" | "nccl"
    # Ranks per node (torchrun's LOCAL_WORLD_SIZE): a global rank's CUDA shard lives on
    # cuda:{rank % local_world_size}.  0 (a hand-built env) = one node: world_size.
    local_world_size: int = 0

    def __post_init__(self) -> None:
        if self.local_world_size <= 0:
            self.local_world_size = self.world_size


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("localhost", 0))
        return int(s.getsockname()[1])


def init_distributed(device: str = "auto") -> DistEnv:
    """Joins the torchrun/torchx world (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT).

    Without torchrun's env it starts a 1-process world on a free localhost port, so
    ``python recsys/train_group.py`` runs the same code path as a launched job.  The
    launcher's variables are read here and nowhere else: the returned ``DistEnv`` carries
    them (``local_world_size``: LOCAL_WORLD_SIZE, else the world size, i.e. one node).
    ``device``: "auto" (cuda + nccl if CUDA is available, else cpu + gloo), "cpu" or
    "cuda".  If a process group already exists it is reused.

    Example::

        env = init_distributed("cpu")   # DistEnv(rank=0, world_size=1, ..., backend="gloo")
    """
    if device not in ("auto", "cpu", "cuda"):
        raise ValueError(f"device must be auto, cpu or cuda, got {device!r}")
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' was requested but torch.cuda.is_available() is False")
    backend = "nccl" if device == "cuda" else "gloo"
    launched = "RANK" in os.environ and "WORLD_SIZE" in os.environ
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    local_world_size = int(os.environ.get("LOCAL_WORLD_SIZE", "0"))  # 0: the world size, below
    if device == "cuda":
        visible = torch.cuda.device_count()
        if local_rank >= visible:
            raise ValueError(
                f"local rank {local_rank} needs GPU {local_rank} but only {visible} are visible; "
                f"use --nproc_per_node <= {visible} or --device cpu"
            )
        torch.cuda.set_device(local_rank)
        dev = torch.device("cuda", local_rank)
    else:
        dev = torch.device("cpu")
    if not dist.is_initialized():
        if launched:
            dist.init_process_group(backend=backend, init_method="env://")
        else:
            port = _free_port()
            dist.init_process_group(
                backend=backend, init_method=f"tcp://localhost:{port}", rank=0, world_size=1
            )
    return DistEnv(dist.get_rank(), dist.get_world_size(), local_rank, dev, dist.get_backend(), local_world_size)


def group_schedule(world_size: int, groups: list[list[int]]) -> list[list[int]] | None:
    """Global ranks per group for the parallel schedule, or None for sequential.

    Parallel when W >= K and W % K == 0: group k gets ranks [k*W/K, (k+1)*W/K).
    Otherwise (None) every group trains on all ranks, one after another.

    Example::

        group_schedule(4, [[0, 1], [2]])   # [[0, 1], [2, 3]]
        group_schedule(3, [[0], [1]])      # None
    """
    if world_size < 1:
        raise ValueError(f"world_size must be >= 1, got {world_size}")
    k = len(groups)
    if k == 0:
        raise ValueError("no groups given")
    if world_size < k or world_size % k != 0:
        return None
    per = world_size // k
    return [list(range(i * per, (i + 1) * per)) for i in range(k)]


def new_subgroups(rank_lists: list[list[int]]) -> list[dist.ProcessGroup]:
    """One process group per rank list, created by every rank in the same order.

    ``dist.new_group`` is collective over the whole world, so every rank must call
    this with the same lists.  On a rank outside a list the entry is
    ``dist.GroupMember.NON_GROUP_MEMBER`` and must not be used.
    """
    return [dist.new_group(ranks=sorted(ranks)) for ranks in rank_lists]


class RowWiseEBCSharder(EmbeddingBagCollectionSharder):
    """``EmbeddingBagCollectionSharder`` that also offers ROW_WISE on CPU.

    TorchRec 1.8 lists row-wise only for CUDA, but its CPU kernels (all-to-all +
    reduce-scatter over gloo) run it correctly (tests/test_distributed.py checks the
    logits).  DATA_PARALLEL is dropped: member tables are always model-parallel, and
    data_parallel fails on subgroups without global rank 0 (torchrec_compat, bug 3).
    """

    def sharding_types(self, compute_device_type: str) -> list[str]:
        types = [t for t in super().sharding_types(compute_device_type) if t != ShardingType.DATA_PARALLEL.value]
        if ShardingType.ROW_WISE.value not in types:
            types.append(ShardingType.ROW_WISE.value)
        return types


def uses_dense_kernel(emb_opt: EmbeddingOptimizerConfig, device: torch.device) -> bool:
    """Adam on CPU: FBGEMM has no CPU fused Adam, so tables use the dense kernel."""
    return emb_opt.name == "adam" and device.type == "cpu"


def _fused_params(emb_opt: EmbeddingOptimizerConfig) -> dict[str, Any]:
    optim = {
        "rowwise_adagrad": EmbOptimType.EXACT_ROWWISE_ADAGRAD,
        "adagrad": EmbOptimType.EXACT_ADAGRAD,
        "sgd": EmbOptimType.EXACT_SGD,
        "adam": EmbOptimType.ADAM,
    }[emb_opt.name]
    return {
        "optimizer": optim,
        "learning_rate": emb_opt.lr,
        "eps": emb_opt.eps,
        "weight_decay": emb_opt.weight_decay,
    }


def planner_compute_kernels(device: torch.device, dense_kernel: bool) -> list[str]:
    """Compute kernels the planner may choose from, per table.

    On CUDA the planner picks ``fused`` when the tables fit in HBM and falls back
    to ``fused_uvm_caching`` (rows in host memory, hot rows cached on the GPU) when
    they do not.  On CPU there is only ``fused``; the dense-kernel path (Adam on
    CPU) is planned as ``fused`` and switched to ``dense`` after planning (see
    ``build_plan``).  NOTE: the CUDA branch is untested -- the tests run on CPU only.
    """
    if device.type == "cuda" and not dense_kernel:
        return [EmbeddingComputeKernel.FUSED.value, EmbeddingComputeKernel.FUSED_UVM_CACHING.value]
    return [EmbeddingComputeKernel.FUSED.value]


def _ebc_tables(module: nn.Module) -> list[tuple[str, int]]:
    """(table name, embedding dim) of every table in every EBC inside ``module``."""
    return [
        (cfg.name, cfg.embedding_dim)
        for m in module.modules()
        if isinstance(m, EmbeddingBagCollection)
        for cfg in m.embedding_bag_configs()
    ]


def planner_constraints(
    module: nn.Module, world: int, device: torch.device, sharder: ModuleSharder[nn.Module], sharding: ShardingConfig,
    dense_kernel: bool, topology: Any = None,
) -> dict[str, ParameterConstraints]:
    """One ``ParameterConstraints`` per table: the sharding types allowed (a forced type, or
    the sharder's), the kernels (``planner_compute_kernels``), column-wise's ``min_partition``
    (dim / world, so each rank really holds a slice) and, on CUDA, the UVM cache ratio of a
    ``recsys.plan.TopologySpec``."""
    from torchrec.distributed.types import CacheParams

    types = [sharding.sharding_type] if sharding.sharding_type else sharder.sharding_types(device.type)
    ratio = getattr(topology, "uvm_caching_ratio", None)
    constraints = {}
    for name, dim in _ebc_tables(module):
        min_partition = None
        if sharding.sharding_type == "column_wise":
            if dim % world != 0:
                raise ValueError(f"column_wise: embedding dim {dim} of table {name} is not divisible by {world} ranks")
            min_partition = dim // world
        constraints[name] = ParameterConstraints(
            sharding_types=types,
            compute_kernels=planner_compute_kernels(device, dense_kernel),
            min_partition=min_partition,
            cache_params=CacheParams(load_factor=ratio) if ratio and device.type == "cuda" else None,
        )
    return constraints


def build_plan(
    module: nn.Module,
    pg: dist.ProcessGroup,
    device: torch.device,
    sharder: ModuleSharder[nn.Module],
    sharding: ShardingConfig,
    dense_kernel: bool,
    topology: Any = None,
    group_index: int = 0,
    optimizer: str = "rowwise_adagrad",
    *,
    local_world_size: int,
) -> ShardingPlan:
    """Plans all EBC tables of ``module`` over the ranks of ``pg`` (ranks group-local).

    The planner gets the group's ``Topology`` with each rank's memory (``topology``, a
    ``recsys.plan.TopologySpec``; None = detected for this device, with ``local_world_size``
    ranks per node, ``DistEnv.local_world_size``) and the constraints of
    ``planner_constraints``.  A plan that cannot fit raises ``PlanDoesNotFit`` (one line:
    the shortfall and the largest table) on every rank of the group, before any shard is
    allocated (the tables are still on ``meta``).  For the dense-kernel path (Adam on CPU)
    the planner's placements are kept and the kernel is switched to ``dense`` -- what
    ``construct_module_sharding_plan(..., compute_kernel="dense")`` would build, without
    re-deriving the placements.
    """
    from recsys.plan import PlanDoesNotFit, TopologySpec, _tables_of, check_fits, does_not_fit_message, plan_shards

    world = pg.size()
    if topology is None:
        topology = TopologySpec(world_size=world, local_world_size=min(world, local_world_size), device=device.type)
    planner = EmbeddingShardingPlanner(
        topology=topology.topology(),
        constraints=planner_constraints(module, world, device, sharder, sharding, dense_kernel, topology),
    )
    try:
        plan = torchrec_compat.plan_on_group(planner, module, [sharder], pg)
    except torchrec_compat.PlannerError as e:
        msg = does_not_fit_message(group_index, _tables_of(module), optimizer, topology, sharding.sharding_type,
                                   " ".join(str(e).split())[:200])
        raise PlanDoesNotFit(msg, report_here=pg.rank() == 0) from None
    check_fits(group_index, plan_shards(plan)[0], topology, optimizer, report_here=pg.rank() == 0)
    if dense_kernel:
        for module_plan in plan.plan.values():
            for param_sharding in module_plan.values():  # type: ignore[union-attr]
                param_sharding.compute_kernel = EmbeddingComputeKernel.DENSE.value
    return plan


def plan_sharding_types(plan: ShardingPlan) -> dict[str, str]:
    """table name -> sharding type, for logs and tests."""
    return {
        table: ps.sharding_type
        for module_plan in plan.plan.values()
        for table, ps in module_plan.items()  # type: ignore[union-attr]
    }


def _load_weights(dmp: DistributedModelParallel, full: dict[str, torch.Tensor], inits: dict[str, Any]) -> None:
    """Gives the sharded module its initial values, touching only this rank's shards.

    A key in ``full`` (a tensor the caller's module held on a real device) is copied: for a
    table, each local shard takes its slice.  A table that was on ``meta`` has no values
    anywhere: each local shard is filled from its ``TableInit`` (``inits``, by table name),
    a pure function of (seed, table, row, column), so every plan and world size gives the
    same numbers without any rank holding the whole table.
    """
    state = dmp.state_dict()
    with torch.no_grad():
        for key, value in state.items():
            src = full.get(key)
            if isinstance(value, ShardedTensor):
                table = key.split(".")[-2]  # ...embedding_bags.<table>.weight
                if src is None and table not in inits:
                    raise KeyError(f"{key}: no values and no TableInit for table {table!r}")
                for shard in value.local_shards():
                    offsets = shard.metadata.shard_offsets
                    sizes = shard.metadata.shard_sizes
                    if src is not None:
                        shard.tensor.copy_(src[tuple(slice(o, o + n) for o, n in zip(offsets, sizes))])
                    else:
                        inits[table].fill(shard.tensor, offsets[0], offsets[1])
            elif src is not None:
                value.copy_(src)
            else:
                raise KeyError(f"sharded module has a key the unsharded one lacks: {key}")
    dmp.load_state_dict(state)


def shard_module(
    module: nn.Module,
    pg: dist.ProcessGroup | None,
    env: DistEnv,
    emb_opt: EmbeddingOptimizerConfig,
    sharding: ShardingConfig = ShardingConfig(),
    topology: Any = None,
    group_index: int = 0,
) -> DistributedModelParallel:
    """Shards every EBC inside ``module`` across the ranks of ``pg`` (None = world).

    Tables are born sharded: the caller builds the module with its embedding tables on
    ``meta`` (``build_group(..., materialize=False)``), DMP allocates only this rank's
    shards, and each shard is filled from its table's ``TableInit``, so no rank ever holds
    a whole table and the values do not depend on the plan or the ranks.  Tables the
    caller did materialize keep their values (each rank copies its slice).  Dense
    parameters keep the caller's (seeded) values.
    ``module`` itself is consumed (DMP swaps its EBCs for sharded ones).  Every
    submodule with a ``set_process_group(pg)`` method gets the group's ``pg``.  Works on
    subgroups without global rank 0 (``recsys.torchrec_compat``).  Dense
    parameters are wrapped in DDP over ``pg``.  ``topology`` (a ``recsys.plan.TopologySpec``
    for the group's ranks; None = detected) tells the planner each rank's memory; a plan that
    does not fit raises ``recsys.plan.PlanDoesNotFit`` before any shard exists.

    Example::

        dmp = shard_module(member, None, env, EmbeddingOptimizerConfig(),
                           ShardingConfig("row_wise"))
        logits = dmp(dense, kjt)   # [B_local]
    """
    group = pg if pg is not None else dist.group.WORLD
    assert group is not None, "call init_distributed() first"
    if group == dist.GroupMember.NON_GROUP_MEMBER:
        raise ValueError(f"rank {env.rank} is not a member of the process group it was asked to shard on")
    from recsys.models.blocks import table_inits

    # Only what holds values: meta tables are filled per shard from their TableInit.
    full = {k: v.detach().to("cpu", copy=True) for k, v in module.state_dict().items() if not v.is_meta}
    inits = table_inits(module)
    dense_kernel = uses_dense_kernel(emb_opt, env.device)
    sharder = RowWiseEBCSharder(fused_params=None if dense_kernel else _fused_params(emb_opt))
    plan = build_plan(module, group, env.device, sharder, sharding, dense_kernel, topology, group_index, emb_opt.name,
                      local_world_size=env.local_world_size)
    # Modules with batch statistics over the group's ranks (D-MoE's de-correlation
    # term) must use this group, not the world: see recsys/models/dmoe.py.
    for m in module.modules():
        set_pg = getattr(m, "set_process_group", None)
        if callable(set_pg):
            set_pg(group)
    # Ranks per node: where a global rank's CUDA shard lives is cuda:{rank % this}.
    torchrec_compat.globalize_placements(plan, group, max(env.local_world_size, 1))
    dmp = DistributedModelParallel(
        module,
        env=ShardingEnv.from_process_group(group),
        device=env.device,
        plan=plan,
        sharders=[sharder],  # type: ignore[list-item]
    )
    _load_weights(dmp, {k: v.to(env.device) for k, v in full.items()}, inits)
    return dmp


def _sharded_params(dmp: DistributedModelParallel) -> dict[str, nn.Parameter]:
    """Embedding parameters (those owned by sharded modules), by FQN."""
    out: dict[str, nn.Parameter] = {}
    for prefix, m in dmp.named_modules():
        if isinstance(m, ShardedModule):
            for name, p in m.named_parameters():
                out[f"{prefix}.{name}"] = p
    return out


def make_optimizer(
    dmp: DistributedModelParallel,
    lr: float,
    weight_decay: float = 0.0,
    *,
    emb_opt: EmbeddingOptimizerConfig,
) -> CombinedOptimizer:
    """Adam on the dense parameters, combined with the embedding optimizer.

    Fused kernels: the embeddings are updated inside backward; ``dmp.fused_optimizer``
    carries their state (and lr) for checkpoints.  Dense kernel (Adam on CPU):
    ``KeyedOptimizerWrapper(torch.optim.Adam)`` over the embedding shards, with the
    lr/eps/weight decay of ``emb_opt`` -- pass the config given to ``shard_module``.
    ``state_dict()`` / ``load_state_dict()`` work on the result (torchrec
    ``CombinedOptimizer``, keys prefixed ``dense.`` / ``embedding.``).
    """
    emb_params = _sharded_params(dmp)
    emb_ids = {id(p) for p in emb_params.values()}
    dense_params = {
        n: p
        for n, p in in_backward_optimizer_filter(dmp.named_parameters())
        if id(p) not in emb_ids and p.requires_grad
    }
    parts: list[tuple[str, KeyedOptimizer]] = [
        ("dense", KeyedOptimizerWrapper(dense_params, lambda ps: torch.optim.Adam(ps, lr=lr, weight_decay=weight_decay)))
    ]
    fused = [n for n, p in emb_params.items() if hasattr(p, "_in_backward_optimizers")]
    if fused:
        parts.append(("embedding", dmp.fused_optimizer))
    unfused = {n: p for n, p in emb_params.items() if not hasattr(p, "_in_backward_optimizers")}
    if unfused:
        parts.append(
            (
                "embedding_dense",
                KeyedOptimizerWrapper(
                    unfused,
                    lambda ps: torch.optim.Adam(ps, lr=emb_opt.lr, eps=emb_opt.eps, weight_decay=emb_opt.weight_decay),
                ),
            )
        )
    return CombinedOptimizer(parts)
