"""Train-step throughput: each member sharded by TorchRec DMP vs a plain-PyTorch twin.

For every model, at the same batch size and on the same batches:

(a) ``torchrec``: the member wrapped by ``recsys.distributed.shard_module`` on a
    1-rank gloo world (table-wise, FBGEMM fused embedding optimizer, default
    EXACT_ROWWISE_ADAGRAD) with the dense part under DDP, stepped by
    ``make_optimizer`` (Adam on dense params).
(b) ``plain``: a deep copy of the same member whose EBC is replaced by
    ``PlainEBC`` -- one ``nn.EmbeddingBag(sparse=True)`` per table, same dense
    modules -- stepped by Adam (dense) + ``torch.optim.Adagrad`` (sparse grads on
    the tables), the usual plain-PyTorch recipe (as in the original DLRM code).

It prints examples/s for both, their ratio (target >= 0.9), and the achieved dense
GFLOP/s of (a) (``member.flops_per_example() * 3 * examples/s``: forward + 2x for
backward) as a fraction of an fp32 4096x1024x1024 matmul measured in the same run
(the roofline).  ``--profile`` prints torch.profiler's hottest ops for both paths.

Example::

    python -m recsys.bench.train_step                                  # all models, batch 4096
    python -m recsys.bench.train_step --models fnn,dcnv2 --steps 3 --vocab 1000
    python -m recsys.bench.train_step --models dcnv2 --profile --json out.json
"""
from __future__ import annotations

import argparse
import copy
import json
import logging
import sys
import time
import warnings
from dataclasses import asdict, dataclass
from typing import Callable

import numpy as np
import torch
from torch import nn
from torchrec.modules.embedding_modules import EmbeddingBagCollection
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor, KeyedTensor
from tqdm import tqdm

from recsys.data.batch import kjt_from_ids
from recsys.data.schema import Schema, SparseFeature
from recsys.distributed import (
    EMBEDDING_OPTIMIZERS,
    EmbeddingOptimizerConfig,
    ShardingConfig,
    init_distributed,
    make_optimizer,
    shard_module,
)
from recsys.models import MODELS, build_member
from recsys.models.member import Member

PAPER_MODELS = ("fnn", "ipnn", "deepfm", "dcn", "dcnv2", "finalmlp", "wukong", "rankmixer", "multiembed", "dmoe")


class PlainEBC(nn.Module):
    """Drop-in for an ``EmbeddingBagCollection``: same tables, same KeyedTensor out,
    but plain ``nn.EmbeddingBag(mode="sum", sparse=True)`` modules.

    It slices the KJT's flat values/offsets per key (no ``to_dict``), so its own
    overhead is a few tensor views per table.
    """

    def __init__(self, ebc: EmbeddingBagCollection) -> None:
        super().__init__()
        configs = ebc.embedding_bag_configs()
        self.bags = nn.ModuleList()
        self.features: list[str] = []
        for cfg in configs:
            src = ebc.embedding_bags[cfg.name].weight
            bag = nn.EmbeddingBag(cfg.num_embeddings, cfg.embedding_dim, mode="sum", sparse=True)
            with torch.no_grad():
                bag.weight.copy_(src)
            assert len(cfg.feature_names) == 1, "one feature per table"
            self.bags.append(bag)
            self.features.append(cfg.feature_names[0])
        self.keys: list[str] = list(ebc._embedding_names)  # the EBC's own output names
        self.lengths: list[int] = list(ebc._lengths_per_embedding)

    def forward(self, features: KeyedJaggedTensor) -> KeyedTensor:
        index = {k: i for i, k in enumerate(features.keys())}
        values = features.values()
        offsets = features.offsets()  # [F*B + 1], feature-major
        vstart = features.offset_per_key()
        batch = features.stride()
        pooled = []
        for bag, feature in zip(self.bags, self.features):
            f = index[feature]
            off = offsets[f * batch : (f + 1) * batch] - offsets[f * batch]
            pooled.append(bag(values[vstart[f] : vstart[f + 1]], off))  # [B, D]
        return KeyedTensor(keys=self.keys, length_per_key=self.lengths, values=torch.cat(pooled, dim=1))


def plain_twin(member: Member) -> Member:
    """A deep copy of ``member`` with every EBC replaced by a ``PlainEBC``."""
    twin = copy.deepcopy(member)
    for name, module in list(twin.named_modules()):
        for child_name, child in list(module.named_children()):
            if isinstance(child, EmbeddingBagCollection):
                setattr(module, child_name, PlainEBC(child))
    return twin


def bench_schema(num_fields: int, vocab: int, num_dense: int) -> Schema:
    return Schema(
        "bench",
        tuple(SparseFeature(f"C{i + 1}", vocab) for i in range(num_fields)),
        tuple(f"I{i + 1}" for i in range(num_dense)),
    )


def make_batches(
    schema: Schema, batch_size: int, n: int, zipf: float, seed: int = 0
) -> list[tuple[torch.Tensor, KeyedJaggedTensor, torch.Tensor]]:
    """n random batches.  Ids follow a bounded Zipf law, P(rank k) ~ k^-zipf over each
    field's vocabulary, as CTR data does: hot rows repeat many times per batch, which
    is exactly what stresses an exact (deduplicating) embedding backward."""
    rng = np.random.default_rng(seed)
    ids = np.empty((n * batch_size, schema.num_sparse), dtype=np.int64)
    for j, v in enumerate(schema.vocab_sizes):
        p = 1.0 / np.arange(1, v + 1) ** zipf
        ids[:, j] = rng.choice(v, size=n * batch_size, p=p / p.sum())
    out = []
    for i in range(n):
        dense = torch.from_numpy(rng.standard_normal((batch_size, schema.num_dense)).astype(np.float32))
        labels = torch.from_numpy((rng.random(batch_size) < 0.25).astype(np.float32))
        block = torch.from_numpy(ids[i * batch_size : (i + 1) * batch_size])
        out.append((dense, kjt_from_ids(block, schema.sparse_names), labels))
    return out


def time_interleaved(
    steps_fns: list[Callable[[int], None]], warmup: int, steps: int
) -> list[float]:
    """Median seconds per step of each function, timed alternately (A B A B ...).

    The machine is shared, so its load drifts; alternating puts both paths under
    the same drift, and the median drops steps hit by a burst.
    """
    for i in range(warmup):
        for fn in steps_fns:
            fn(i)
    times: list[list[float]] = [[] for _ in steps_fns]
    for i in range(steps):
        for fn, ts in zip(steps_fns, times):
            t0 = time.perf_counter()
            fn(warmup + i)
            ts.append(time.perf_counter() - t0)
    return [float(np.median(ts)) for ts in times]


def matmul_gflops(reps: int = 5) -> float:
    """fp32 4096x1024 @ 1024x1024 GFLOP/s on this machine, now."""
    a, b = torch.randn(4096, 1024), torch.randn(1024, 1024)
    for _ in range(2):
        a @ b
    t0 = time.perf_counter()
    for _ in range(reps):
        a @ b
    return 2 * 4096 * 1024 * 1024 * reps / (time.perf_counter() - t0) / 1e9


@dataclass
class Row:
    model: str
    spec: str
    torchrec_eps: float
    plain_eps: float
    ratio: float
    mflops_per_example: float
    dense_gflops: float
    matmul_gflops: float
    roofline_fraction: float


def bce(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return nn.functional.binary_cross_entropy_with_logits(logits, labels)


def paired_steps(
    member: Member, emb_opt: EmbeddingOptimizerConfig, env, batches: list
) -> tuple[Callable[[int], None], Callable[[int], None]]:
    """``(tr_step, plain_step)``: one training step of ``member`` sharded by DMP with the fused
    embedding optimizer, and one of its plain ``nn.EmbeddingBag`` twin (dense Adam, sparse
    Adagrad at ``emb_opt``'s lr and eps), each on batch ``i % len(batches)``.  On CUDA each step
    ends with a synchronize, so wall time is the step's real time.  ``member`` is consumed
    (DMP swaps its EBC); both ``recsys.bench.train_step`` and ``recsys.bench.gpu_check`` time
    these two.
    """
    dev = env.device
    twin = plain_twin(member).to(dev)
    dmp = shard_module(member, None, env, emb_opt, ShardingConfig("table_wise"))
    opt = make_optimizer(dmp, lr=1e-3, emb_opt=emb_opt)
    emb_params = [p for m in twin.modules() if isinstance(m, PlainEBC) for p in m.parameters()]
    emb_ids = {id(p) for p in emb_params}
    dense_opt = torch.optim.Adam([p for p in twin.parameters() if id(p) not in emb_ids], lr=1e-3)
    sparse_opt = torch.optim.Adagrad(emb_params, lr=emb_opt.lr, eps=emb_opt.eps)

    def sync() -> None:
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)

    def tr_step(i: int) -> None:
        dense, kjt, labels = batches[i % len(batches)]
        loss = bce(dmp(dense, kjt), labels)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sync()

    def plain_step(i: int) -> None:
        dense, kjt, labels = batches[i % len(batches)]
        loss = bce(twin(dense, kjt), labels)
        dense_opt.zero_grad()
        sparse_opt.zero_grad()
        loss.backward()
        dense_opt.step()
        sparse_opt.step()
        sync()

    return tr_step, plain_step


def bench_model(
    spec: str,
    schema: Schema,
    batches: list,
    emb_opt: EmbeddingOptimizerConfig,
    env,
    warmup: int,
    steps: int,
    profile: bool,
) -> Row:
    member = build_member(spec, schema, name="m0")
    flops = member.flops_per_example()
    tr_step, plain_step = paired_steps(member, emb_opt, env, batches)
    t_tr, t_plain = time_interleaved([tr_step, plain_step], warmup, steps)
    # The roofline is re-measured next to each model: the shared machine's load
    # drifts by 2x over a run, and the fraction should compare like with like.
    roofline = matmul_gflops()
    if profile:
        for label, fn in (("torchrec", tr_step), ("plain", plain_step)):
            with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
                for i in range(2):
                    fn(i)
            print(f"\n== {spec} / {label}: top ops by self CPU time (2 steps) ==")
            print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=15))
    bsz = batches[0][0].shape[0]
    tr_eps, plain_eps = bsz / t_tr, bsz / t_plain
    gflops = flops * 3 * tr_eps / 1e9
    return Row(
        model=spec.split(":")[0],
        spec=spec,
        torchrec_eps=tr_eps,
        plain_eps=plain_eps,
        ratio=tr_eps / plain_eps,
        mflops_per_example=flops / 1e6,
        dense_gflops=gflops,
        matmul_gflops=roofline,
        roofline_fraction=gflops / roofline,
    )


def markdown(rows: list[Row], notes: list[str]) -> str:
    lines = [
        "| model | torchrec ex/s | plain ex/s | ratio | dense MFLOP/ex | dense GFLOP/s | matmul GFLOP/s | of roofline |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r.model} | {r.torchrec_eps:,.0f} | {r.plain_eps:,.0f} | {r.ratio:.2f}x | "
            f"{r.mflops_per_example:.2f} | {r.dense_gflops:.1f} | {r.matmul_gflops:.1f} | {r.roofline_fraction:.0%} |"
        )
    lines += [f"- {n}" for n in notes]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog=__doc__[__doc__.index("Example::") :],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--models", default=",".join(PAPER_MODELS), help="comma-separated model names or specs (';'-separated if specs contain commas)")
    p.add_argument("--batch-size", type=int, default=4096)
    p.add_argument("--steps", type=int, default=5, help="timed steps per model and path")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--num-fields", type=int, default=39, help="sparse fields (Criteo default: 39)")
    p.add_argument("--num-dense", type=int, default=0)
    p.add_argument("--vocab", type=int, default=100_000, help="rows per table")
    p.add_argument("--zipf", type=float, default=1.1, help="id skew: P(row k) ~ k^-zipf (0 = uniform)")
    p.add_argument("--emb-opt", default="rowwise_adagrad", choices=[o for o in EMBEDDING_OPTIMIZERS if o != "adam"])
    p.add_argument("--emb-lr", type=float, default=0.01)
    p.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: torch default)")
    p.add_argument("--profile", action="store_true", help="print torch.profiler top ops per model and path")
    p.add_argument("--json", default=None, help="also write the rows as JSON here")
    args = p.parse_args(argv)
    for name, value in (("--batch-size", args.batch_size), ("--steps", args.steps), ("--vocab", args.vocab), ("--num-fields", args.num_fields)):
        if value < 1:
            p.error(f"{name} must be >= 1, got {value}")
    if args.threads:
        torch.set_num_threads(args.threads)
    # TorchRec's planner and DDP warn on every model about things that do not apply
    # to a 1-rank benchmark; keep the table readable.
    logging.getLogger("torchrec").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=DeprecationWarning)

    sep = ";" if ";" in args.models else ","
    specs = [s.strip() for s in args.models.split(sep) if s.strip()]
    notes: list[str] = []
    runnable = []
    for spec in specs:
        name = spec.split(":")[0]
        if name not in MODELS:
            notes.append(f"{name}: skipped (not registered in recsys.models.MODELS)")
        else:
            runnable.append(spec)

    env = init_distributed("cpu")
    schema = bench_schema(args.num_fields, args.vocab, args.num_dense)
    batches = make_batches(schema, args.batch_size, n=4, zipf=args.zipf)
    emb_opt = EmbeddingOptimizerConfig(args.emb_opt, lr=args.emb_lr)
    rows: list[Row] = []
    for spec in tqdm(runnable, desc="models", file=sys.stderr):
        try:
            rows.append(bench_model(spec, schema, batches, emb_opt, env, args.warmup, args.steps, args.profile))
        except Exception as e:  # noqa: BLE001 -- one broken model must not hide the others
            notes.append(f"{spec}: failed: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")
    notes.append("roofline = fp32 4096x1024 @ 1024x1024 matmul GFLOP/s, measured right after each model's steps")
    notes.append(
        f"batch {args.batch_size}, {args.num_fields} fields x {args.vocab:,} rows x dim from spec, "
        f"{args.num_dense} dense, ids Zipf({args.zipf}), emb optimizer {args.emb_opt}, torch threads {torch.get_num_threads()}, "
        f"{args.warmup} warmup + {args.steps} timed steps per path, interleaved, median"
    )
    print(markdown(rows, notes))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"rows": [asdict(r) for r in rows], "notes": notes}, f, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
