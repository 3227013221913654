"""Sharding plans and per-rank memory for any cluster, computed without allocating a table.

Why: a plan that cannot fit should be refused before a single shard exists, in one line that
says what is too big and by how much, and a user should be able to size a cluster (8 or 16
GPUs of 80 GB?) from a laptop.  Members are built with their tables on ``meta``
(``build_group(..., materialize=False)``), TorchRec's ``EmbeddingShardingPlanner`` plans them
against a ``Topology`` with the given per-rank memory, and the plan's shard sizes give exact
table and optimizer-state bytes per rank.  Input distribution and activation memory are
estimates (stated as such): they depend on the batch and the id distribution.

Example::

    python -m recsys.plan --config configs/criteo_1tb_dlrmv2.toml --world-size 8 --local-world-size 8 \\
        --device cuda --hbm-gb 80

    topo = TopologySpec(world_size=8, local_world_size=8, device="cuda", hbm_gb=80)
    for gp in plan_experiment(cfg, topo):      # one GroupPlan per group (its ranks, per-rank bytes)
        print(gp.table())
"""
from __future__ import annotations

import argparse
import math
import os
import sys
from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Sequence

from recsys.cli import run_main
from recsys.config import ExperimentConfig, load_config
from recsys.data.criteo_layout import torchrec_criteo_schema
from recsys.data.schema import Schema
from recsys.errors import UserError

if TYPE_CHECKING:
    from torch import nn
    from torchrec.distributed.planner import Topology
    from torchrec.distributed.types import ShardingPlan

GB = 1e9
RESERVED_FRACTION = 0.15  # TorchRec's default HeuristicalStorageReservation: kept free for dense parts, buffers
OPTIMIZER_STATE_FACTOR = {"rowwise_adagrad": None, "adagrad": 1.0, "sgd": 0.0, "adam": 2.0}  # x table bytes
ID_BYTES = 12  # one int64 id + its int32 length/offset in the KJT sent by the input all-to-all


class PlanDoesNotFit(UserError):
    """The tables (with their optimizer state) cannot be placed on the group's ranks.

    ``report_here`` is the group's rank 0, which planned; the others stay quiet (see
    ``recsys.train.cli``)."""

    def __init__(self, message: str, report_here: bool = True) -> None:
        super().__init__(message)
        self.report_here = report_here


@dataclass(frozen=True)
class TopologySpec:
    """What the planner knows of one group's hardware.  ``hbm_gb`` / ``ddr_gb`` are per rank;
    None takes the detected size (this machine's GPU, or its RAM split over the local ranks)
    on the device the plan is for, and TorchRec's default for the other."""

    world_size: int
    local_world_size: int
    device: str = "cpu"  # "cpu" | "cuda"
    hbm_gb: float | None = None
    ddr_gb: float | None = None
    uvm_caching_ratio: float | None = None  # cuda: fraction of a UVM-cached table kept in HBM

    def capacity_bytes(self) -> tuple[int, int]:
        """(HBM, DDR) bytes per rank."""
        # lazy: `python -m recsys.plan --help` and `import recsys.plan` stay torch-free
        from torchrec.distributed.planner import constants

        hbm = constants.HBM_CAP if self.hbm_gb is None else int(self.hbm_gb * GB)
        ddr = constants.DDR_CAP if self.ddr_gb is None else int(self.ddr_gb * GB)
        if self.hbm_gb is None and self.device == "cuda":
            import torch  # lazy: as above

            if torch.cuda.is_available():
                hbm = int(torch.cuda.get_device_properties(0).total_memory)
        if self.ddr_gb is None and self.device == "cpu":
            ddr = int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / max(1, self.local_world_size))
        return hbm, ddr

    def usable_bytes(self) -> tuple[int, float]:
        """(capacity, usable) bytes per rank on the device the plan is for: usable keeps
        TorchRec's planner reservation free."""
        hbm, ddr = self.capacity_bytes()
        cap = hbm if self.device == "cuda" else ddr
        return cap, cap * (1 - RESERVED_FRACTION)

    @property
    def cache_ratio(self) -> float:
        """Share of a UVM-cached table (and its state) held on the device."""
        return self.uvm_caching_ratio if self.uvm_caching_ratio is not None else 0.2

    def topology(self) -> Topology:
        """TorchRec's ``Topology`` for the planner (torchrec is imported here: ``--help`` stays light)."""
        from torchrec.distributed.planner import Topology  # lazy: as in capacity_bytes

        hbm, ddr = self.capacity_bytes()
        return Topology(world_size=self.world_size, local_world_size=min(self.local_world_size, self.world_size),
                        compute_device=self.device, hbm_cap=hbm, ddr_cap=ddr)


def topology_from_config(cfg: ExperimentConfig, world_size: int, local_world_size: int, device: str) -> TopologySpec:
    """The ``[topology]`` section (0 = detect) for a group of ``world_size`` ranks."""
    t = cfg.topology
    return TopologySpec(
        world_size=world_size, local_world_size=t.local_world_size or local_world_size, device=device,
        hbm_gb=t.hbm_gb or None, ddr_gb=t.ddr_gb or None, uvm_caching_ratio=t.uvm_caching_ratio or None,
    )


@dataclass
class TableShard:
    table: str
    rank: int  # group-local
    rows: int
    cols: int
    kernel: str
    sharding_type: str

    @property
    def bytes(self) -> int:
        return self.rows * self.cols * 4


@dataclass
class RankMemory:
    """Bytes on one rank.  ``tables`` and ``optimizer`` are exact (fp32 shards of the plan);
    ``input_dist`` and ``activations`` are estimates for one global batch."""

    rank: int
    tables: int = 0
    optimizer: int = 0
    input_dist: int = 0
    activations: int = 0
    tables_uvm: int = 0  # held in host memory by UVM-caching kernels (their HBM cache is in `tables`)
    num_shards: int = 0

    @property
    def total(self) -> int:
        return self.tables + self.optimizer + self.input_dist + self.activations


@dataclass
class GroupPlan:
    group: int
    members: list[str]
    topology: TopologySpec
    shards: list[TableShard]
    ranks: list[RankMemory]
    sharding_types: dict[str, str] = field(default_factory=dict)

    def table(self) -> str:
        """Markdown: per rank, exact table and optimizer bytes, estimated input-dist and activations."""
        cap, usable = self.topology.usable_bytes()
        kinds = sorted(set(self.sharding_types.values()))
        lines = [
            f"group {self.group} ({', '.join(self.members)}): {len(self.shards)} shards of "
            f"{len(self.sharding_types)} tables ({', '.join(kinds)}) on {self.topology.world_size} "
            f"{self.topology.device} ranks of {cap / GB:.1f} GB",
            "",
            "| rank | shards | tables GB | optimizer GB | input dist GB (est.) | activations GB (est.) | total GB "
            "| of capacity |",
            "|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for r in self.ranks:
            uvm = f" (+{r.tables_uvm / GB:.2f} in host memory)" if r.tables_uvm else ""
            lines.append(f"| {r.rank} | {r.num_shards} | {r.tables / GB:.2f}{uvm} | {r.optimizer / GB:.2f} | "
                         f"{r.input_dist / GB:.3f} | {r.activations / GB:.3f} | {r.total / GB:.2f} | "
                         f"{100 * r.total / cap:.0f}% |")
        worst = max(self.ranks, key=lambda r: r.total)
        verdict = "fits: yes" if worst.total <= usable else (
            "fits: NO with the estimates (the exact tables and optimizer state fit; the estimated input "
            "distribution and activations do not)")
        lines += ["", f"{verdict}; fullest rank {worst.rank} at {worst.total / GB:.2f} GB of {usable / GB:.1f} GB "
                      f"usable ({RESERVED_FRACTION:.0%} of {cap / GB:.0f} GB kept free as TorchRec's planner does), "
                      f"headroom {(usable - worst.total) / GB:.2f} GB"]
        return "\n".join(lines)


def schema_for_plan(cfg: ExperimentConfig) -> Schema:
    """The table sizes, without opening data files: TorchRec's layout takes them from the
    ``[torchrec_criteo]`` section; our layout from ``meta.json``."""
    tr = cfg.torchrec_criteo
    if tr is None:
        return Schema.load(cfg.data_dir)
    return torchrec_criteo_schema(tr.num_embeddings_per_feature, dataset="criteo_1tb")


def _optimizer_bytes(rows: int, cols: int, optimizer: str) -> int:
    """Optimizer-state bytes of a [rows, cols] fp32 table (shard)."""
    factor = OPTIMIZER_STATE_FACTOR[optimizer]
    if factor is None:  # row-wise Adagrad: one float per row
        return rows * 4
    return int(rows * cols * 4 * factor)


def plan_shards(plan: ShardingPlan) -> tuple[list[TableShard], dict[str, str]]:
    """Every shard of the plan (group-local ranks), and each table's sharding type."""
    shards: list[TableShard] = []
    types: dict[str, str] = {}
    for module_plan in plan.plan.values():
        for table, ps in module_plan.items():
            types[table] = ps.sharding_type
            for sh in ps.sharding_spec.shards:
                rows, cols = sh.shard_sizes
                shards.append(TableShard(table, int(sh.placement.rank()), rows, cols, ps.compute_kernel,
                                         ps.sharding_type))
    return shards, types


def rank_memory(shards: Sequence[TableShard], topo: TopologySpec, optimizer: str, global_batch: int,
                dense_activation_floats: int) -> list[RankMemory]:
    """Per-rank bytes: exact tables and optimizer state; estimated input distribution (the
    ids of the global batch for the tables a rank serves, once for each shard of a table that
    receives them) and activations (pooled embeddings out and their gradients back, plus the
    dense part's activations for the rank's slice of the batch)."""
    ratio = topo.cache_ratio
    shards_per_table = Counter(s.table for s in shards)
    out = [RankMemory(r) for r in range(topo.world_size)]
    for s in shards:
        r = out[s.rank]
        r.num_shards += 1
        opt = _optimizer_bytes(s.rows, s.cols, optimizer)
        if "uvm" in s.kernel:  # the device holds a cache of the rows (and their state); host memory the rest
            r.tables += int(s.bytes * ratio)
            r.optimizer += int(opt * ratio)
            r.tables_uvm += s.bytes + opt
        else:
            r.tables += s.bytes
            r.optimizer += opt
        # row-wise shards each get the ids of their rows only (~1/n of the batch's)
        n_row_shards = shards_per_table[s.table] if s.sharding_type in ("row_wise", "table_row_wise") else 1
        r.input_dist += global_batch * ID_BYTES // n_row_shards
        r.activations += 2 * global_batch * s.cols * 4
    per_rank_batch = math.ceil(global_batch / topo.world_size)
    for r in out:
        r.activations += 2 * per_rank_batch * dense_activation_floats * 4
    return out


def _dense_activation_floats(module: nn.Module) -> int:
    """Output features of every Linear layer (a rough per-example activation count)."""
    from torch import nn  # lazy: `import recsys.plan` stays torch-free

    return sum(m.out_features for m in module.modules() if isinstance(m, nn.Linear))


def does_not_fit_message(group: int, shards_of: dict[str, tuple[int, int]], optimizer: str, topo: TopologySpec,
                         sharding_type: str | None, cause: str) -> str:
    """One line: what must fit, what there is, the shortfall, and the largest table."""
    cap, usable = topo.usable_bytes()
    need = sum(r * c * 4 + _optimizer_bytes(r, c, optimizer) for r, c in shards_of.values())
    largest, (rows, cols) = max(shards_of.items(), key=lambda kv: kv[1][0] * kv[1][1])
    big = rows * cols * 4 + _optimizer_bytes(rows, cols, optimizer)
    where = (f"{topo.world_size} {topo.device} ranks of {cap / GB:.1f} GB ({usable / GB:.1f} GB usable each after "
             f"the planner's {RESERVED_FRACTION:.0%} reservation)")
    if need > usable * topo.world_size:
        short = f"shortfall {(need - usable * topo.world_size) / GB:.2f} GB"
    elif sharding_type == "table_wise" and big > usable:
        short = f"the largest table alone is {(big - usable) / GB:.2f} GB over one rank (table_wise cannot split it)"
    else:
        short = f"no placement found ({cause})"
    return (f"group {group}: the sharding plan does not fit: {len(shards_of)} tables need {need / GB:.2f} GB "
            f"(fp32 tables + {optimizer} state) on {where}; {short}; the largest table is {largest} "
            f"({rows:,} x {cols}, {big / GB:.2f} GB with its optimizer state). Add ranks, set [topology] "
            "hbm_gb/ddr_gb to the real sizes, or allow row_wise sharding")


def check_fits(group: int, shards: Sequence[TableShard], topo: TopologySpec, optimizer: str,
               report_here: bool = True) -> None:
    """Refuses a plan whose exact table + optimizer bytes overflow a rank.

    Why on top of TorchRec's planner: TorchRec 1.8's storage estimate leaves out fused Adam's
    two moment tables (it placed 187 GB on an 80 GB GPU for the DLRMv2 config with Adam), so
    its "fits" is not trusted alone.  Input-distribution and activation memory are estimates
    and stay inside the planner's reservation.
    """
    cap, usable = topo.usable_bytes()
    # The exact part of rank_memory (tables and optimizer state on the device); no batch estimates.
    need = [r.tables + r.optimizer for r in rank_memory(shards, topo, optimizer, 0, 0)]
    worst = max(range(topo.world_size), key=lambda r: need[r])
    if need[worst] > usable:
        largest = max((sh for sh in shards if sh.rank == worst), key=lambda sh: sh.bytes)
        raise PlanDoesNotFit(
            f"group {group}: the sharding plan does not fit: rank {worst} needs {need[worst] / GB:.2f} GB for its "
            f"tables and {optimizer} state, {usable / GB:.1f} GB usable of {cap / GB:.1f} GB "
            f"({RESERVED_FRACTION:.0%} reserved); shortfall {(need[worst] - usable) / GB:.2f} GB; its largest shard "
            f"is {largest.table} ({largest.rows:,} x {largest.cols}). Add ranks, use an optimizer with less state "
            "(rowwise_adagrad keeps one float per row), or set [topology] to the real sizes",
            report_here=report_here,
        )


def plan_experiment(cfg: ExperimentConfig, world_size: int, local_world_size: int, device: str,
                    sequential: bool = False) -> list[GroupPlan]:
    """Plans every group of ``cfg`` as training would place it on ``world_size`` ranks (the
    parallel schedule gives each group W/K ranks; else each group gets all W), on ``meta``:
    nothing is allocated.  Raises ``PlanDoesNotFit`` (one line) for the first group that
    cannot be placed."""
    import torch  # the planner stack (torch, torchrec): only when a plan is made, not for --help

    # lazy: recsys.distributed.planning imports this module's memory model (a cycle at the top),
    # and recsys.ensemble loads torchrec
    from recsys.distributed import group_schedule, make_sharder, plan_group
    from recsys.ensemble import GroupTrain, build_group

    schema = schema_for_plan(cfg)
    schedule = None if sequential else group_schedule(world_size, cfg.groups)
    emb_opt = cfg.embedding_optimizer.resolve(device)
    sharding = cfg.sharding.resolve()
    out = []
    for k, idx in enumerate(cfg.groups):
        ranks = len(schedule[k]) if schedule is not None else world_size
        topo = topology_from_config(cfg, ranks, local_world_size, device)
        with torch.device("meta"):
            module = GroupTrain(build_group(cfg.members, cfg.member_names, idx, schema, materialize=False))
        sharder, dense_kernel = make_sharder(emb_opt, torch.device(device))
        plan = plan_group(module, topo, torch.device(device), sharder, sharding, dense_kernel, k, emb_opt.name)
        shards, types = plan_shards(plan)
        mem = rank_memory(shards, topo, emb_opt.name, cfg.train.batch_size, _dense_activation_floats(module))
        out.append(GroupPlan(k, [cfg.member_names[i] for i in idx], topo, shards, mem, types))
    return out


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m recsys.plan",
        description="Print the sharding plan of every group of an experiment for a hypothetical cluster, and each "
                    "rank's memory (exact table and optimizer-state bytes, estimated input-distribution and "
                    "activation bytes), without allocating a table.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n"
               "  python -m recsys.plan --config configs/criteo_1tb_dlrmv2.toml --world-size 8 --local-world-size 8 "
               "--device cuda --hbm-gb 80\n"
               "  python -m recsys.plan --config configs/criteo_1tb_dlrmv2.toml --world-size 16 --local-world-size 8 "
               "--device cuda --hbm-gb 80\n"
               "  python -m recsys.plan --config configs/demo.toml --world-size 2",
    )
    p.add_argument("--config", required=True)
    p.add_argument("--world-size", type=int, required=True, help="ranks of the whole job")
    p.add_argument("--local-world-size", type=int, default=0, help="ranks per node (default: min(world, 8))")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu", help="what the plan is for (no GPU needed)")
    p.add_argument("--hbm-gb", type=float, default=None, help="GPU memory per rank (overrides [topology] hbm_gb)")
    p.add_argument("--ddr-gb", type=float, default=None, help="host memory per rank (overrides [topology] ddr_gb)")
    p.add_argument("--schedule", choices=["auto", "sequential"], default="auto")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override")
    args = p.parse_args(argv)
    return run_main("plan", lambda: _run(args))


def _run(args: argparse.Namespace) -> int:
    if args.world_size < 1 or args.local_world_size < 0:
        raise PlanDoesNotFit("--world-size must be >= 1 and --local-world-size >= 0")
    overrides = list(args.set)
    if args.hbm_gb is not None:
        overrides.append(f"topology.hbm_gb={args.hbm_gb}")
    if args.ddr_gb is not None:
        overrides.append(f"topology.ddr_gb={args.ddr_gb}")
    cfg = load_config(args.config, overrides, check_data=False)
    local = args.local_world_size or min(args.world_size, 8)
    plans = plan_experiment(cfg, args.world_size, local, args.device, args.schedule == "sequential")
    for gp in plans:
        print(gp.table())
        print()
    return 0

if __name__ == "__main__":
    sys.exit(main())
