"""Inference budget per member: parameters, FLOPs, embedding bytes, measured latency.

The paper compares an M-member ensemble against one scaled-up model at the
SAME inference budget, so every number here is exact rather than estimated:

- dense parameters: every parameter outside embedding tables (numel);
- embedding parameters: every embedding-table parameter (EBC, nn.Embedding[Bag]);
- FLOPs per example of the dense part: ``Member.flops_per_example()``, the
  convention of ``recsys.models.blocks`` (matmul family only, 2 per multiply-add),
  checked against ``torch.utils.flop_counter.FlopCounterMode`` in tests;
- embedding bytes read per example: each table reads one row per feature it
  serves per example (the npy layout has exactly one id per field), so
  ``sum over tables of len(feature_names) * dim * element_size``.  Lookups are
  reported as bytes because they are memory traffic, not arithmetic;
- latency: median wall time of several timed forwards at a batch size, after warm-up.

Example::

    python -m recsys.budget --schema data/criteo/meta.json --members "dcnv2,wukong,rankmixer"
    python -m recsys.budget --schema data/criteo --members "dcnv2:seed=1,dcnv2:seed=2" \\
        --match mlp_width --base dcnv2
"""
from __future__ import annotations

import argparse
import dataclasses
import math
import statistics
import sys
import time
import typing
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch
from torch import nn
from torchrec.modules.embedding_modules import EmbeddingBagCollection, EmbeddingCollection

from recsys.data.batch import kjt_from_ids
from recsys.data.schema import Schema, SchemaError, SparseFeature
from recsys.models.member import Member
from recsys.models.registry import MODELS, build_member
from recsys.models.spec import MemberConfig, SpecError, parse_spec

_EMBEDDING_MODULES = (EmbeddingBagCollection, EmbeddingCollection, nn.Embedding, nn.EmbeddingBag)


@dataclass
class MemberBudget:
    name: str
    spec: str
    dense_params: int
    embedding_params: int
    flops_per_example: int
    embedding_bytes_per_example: int
    latency_ms: float | None = None  # median forward time at `batch_size`; None = not measured
    batch_size: int = 0

    @property
    def params(self) -> int:
        return self.dense_params + self.embedding_params


def _embedding_param_ids(module: nn.Module) -> set[int]:
    return {id(p) for m in module.modules() if isinstance(m, _EMBEDDING_MODULES) for p in m.parameters()}


def count_params(module: nn.Module) -> tuple[int, int]:
    """(dense, embedding) parameter counts; shared parameters are counted once."""
    emb_ids = _embedding_param_ids(module)
    dense = emb = 0
    for p in module.parameters():  # parameters() de-duplicates shared tensors
        if id(p) in emb_ids:
            emb += p.numel()
        else:
            dense += p.numel()
    return dense, emb


def embedding_bytes_per_example(module: nn.Module) -> int:
    """Bytes of embedding rows read per example: one row per (table, feature) pair.

    Only TorchRec collections are counted: they carry their feature mapping.  A
    member using a bare nn.Embedding would need its own accounting (none does).
    """
    total = 0
    for m in module.modules():
        if isinstance(m, EmbeddingBagCollection):
            weights = {n: b.weight for n, b in m.embedding_bags.items()}
            configs = m.embedding_bag_configs()
        elif isinstance(m, EmbeddingCollection):
            weights = {n: b.weight for n, b in m.embeddings.items()}
            configs = m.embedding_configs()
        else:
            continue
        for cfg in configs:
            total += len(cfg.feature_names) * cfg.embedding_dim * weights[cfg.name].element_size()
    return total


def random_inputs(
    schema: Schema, batch_size: int, seed: int = 0, device: torch.device | str = "cpu"
) -> tuple[torch.Tensor, Any]:
    """A random (dense [B, Dd], KJT) input with ids inside every field's vocabulary."""
    g = torch.Generator().manual_seed(seed)
    dense = torch.randn(batch_size, schema.num_dense, generator=g)
    ids = torch.stack([torch.randint(0, v, (batch_size,), generator=g) for v in schema.vocab_sizes], dim=1)
    kjt = kjt_from_ids(ids, schema.sparse_names)
    return dense.to(device), kjt.to(torch.device(device))


@torch.no_grad()
def measure_latency_ms(
    fn: Callable[[], Any], warmup: int = 2, repeats: int = 5, device: torch.device | str = "cpu"
) -> float:
    """Median wall time of ``fn()`` in ms over ``repeats`` calls after ``warmup`` calls.

    The median, not the mean, because the machine is shared and outliers are
    other people's work.
    """
    dev = torch.device(device)
    sync = (lambda: torch.cuda.synchronize(dev)) if dev.type == "cuda" else (lambda: None)
    for _ in range(warmup):
        fn()
    sync()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
    return 1000.0 * statistics.median(times)


def member_budget(
    member: Member,
    schema: Schema,
    batch_size: int = 0,
    warmup: int = 2,
    repeats: int = 5,
    device: torch.device | str = "cpu",
) -> MemberBudget:
    """Exact counts for one member; latency too when ``batch_size > 0``.

    Example::

        b = member_budget(build_member("dcnv2", schema, "m0"), schema, batch_size=1024)
        b.flops_per_example, b.latency_ms
    """
    dense, emb = count_params(member)
    out = MemberBudget(
        name=member.name,
        spec=getattr(member, "spec", ""),
        dense_params=dense,
        embedding_params=emb,
        flops_per_example=int(member.flops_per_example()),
        embedding_bytes_per_example=embedding_bytes_per_example(member),
    )
    if batch_size > 0:
        out.latency_ms = forward_latency_ms(member, schema, batch_size, warmup, repeats, device)
        out.batch_size = batch_size
    return out


def forward_latency_ms(
    module: nn.Module,
    schema: Schema,
    batch_size: int,
    warmup: int = 2,
    repeats: int = 5,
    device: torch.device | str = "cpu",
) -> float:
    """Latency of ``module(dense, kjt)`` (a Member or an EnsembleGroup) in eval mode."""
    was_training = module.training
    module.eval()
    dense, kjt = random_inputs(schema, batch_size, device=device)
    try:
        return measure_latency_ms(lambda: module(dense, kjt), warmup, repeats, device)
    finally:
        module.train(was_training)


# --------------------------------------------------------------------------- FLOP matching


def flops_schema(schema: Schema) -> Schema:
    """The schema with 1-row tables: FLOPs do not depend on vocabulary sizes, and
    building a member on it costs nothing for terabyte-scale vocabularies."""
    return dataclasses.replace(schema, sparse_features=tuple(SparseFeature(f.name, 1) for f in schema.sparse_features))


def spec_flops(spec: str, schema: Schema) -> int:
    """FLOPs per example of the member a spec builds (dense weights on the meta device)."""
    small = flops_schema(schema)
    with torch.device("meta"):
        member = build_member(spec, small, "flops", materialize=False)
    return int(member.flops_per_example())


def ensemble_flops(specs: Sequence[str], schema: Schema) -> int:
    """Total FLOPs per example of an ensemble: every member runs on every example."""
    return sum(spec_flops(s, schema) for s in specs)


def _format_value(v: Any) -> str:
    if isinstance(v, tuple):
        return "-".join(str(x) for x in v) if v else "none"
    if isinstance(v, bool):
        return "true" if v else "false"
    return str(v)


def config_to_spec(model: str, cfg: MemberConfig) -> str:
    """Inverse of ``parse_spec``: only the fields that differ from the defaults."""
    default = type(cfg)()
    items = [
        f"{f.name}={_format_value(getattr(cfg, f.name))}"
        for f in dataclasses.fields(cfg)
        if getattr(cfg, f.name) != getattr(default, f.name)
    ]
    return model + (":" + ",".join(items) if items else "")


_KNOB_ALIASES = {"num_layers": "layers", "depth": "layers"}


@dataclass
class FlopMatch:
    spec: str
    flops: int
    target_flops: int
    knob: str
    value: float  # the width scale factor, or the integer depth/width

    @property
    def rel_error(self) -> float:
        return abs(self.flops - self.target_flops) / self.target_flops


def match_flops(
    base_spec: str, knob: str, target_flops: int, schema: Schema, tol: float = 0.05
) -> FlopMatch:
    """Finds the width or depth of ``base_spec`` whose FLOPs per example match ``target_flops``.

    Knobs:

    - ``"mlp_width"``: scales every MLP of the model (config fields of int tuples
      whose name contains ``mlp``) by one factor ``s``;
    - ``"<field>_width"`` for one int-tuple field, e.g. ``"fmb_mlp_width"``;
    - an int field, e.g. ``"cross_layers"``, ``"layers"`` (alias ``num_layers``),
      ``"embedding_dim"``, searched over 1, 2, 3, ... (embedding_dim over 4, 8, 12, ...)

    Raises ``ValueError`` when no value lands within ``tol`` (relative).

    Example::

        # criteo: 39 sparse fields, no dense features
        target = ensemble_flops(["dcnv2:seed=1", "dcnv2:seed=2", "dcnv2:seed=3"], criteo)
        match_flops("dcnv2", "mlp_width", target, criteo).spec     # "dcnv2:mlp=2695-1347-674"
        match_flops("dcnv2", "cross_layers", target, criteo).spec  # "dcnv2:cross_layers=16" (1.8% off)
    """
    if target_flops <= 0:
        raise ValueError(f"match_flops: target_flops must be positive, got {target_flops}")
    model, cfg = parse_spec(base_spec, {k: v.config for k, v in MODELS.items()})
    hints = typing.get_type_hints(type(cfg))
    fields = [f.name for f in dataclasses.fields(cfg)]
    field_name = _KNOB_ALIASES.get(knob, knob) if _KNOB_ALIASES.get(knob) in fields else knob
    tuple_fields = [f for f in fields if typing.get_origin(hints[f]) is tuple]

    def flops_of(c: MemberConfig) -> int | None:
        try:
            return spec_flops(config_to_spec(model, c), schema)
        except (SpecError, ValueError):
            return None  # an invalid setting (e.g. heads no longer divide a width)

    candidates: list[tuple[float, MemberConfig, int]] = []
    if knob.endswith("_width"):
        base = knob[: -len("_width")]
        scaled = [f for f in tuple_fields if ("mlp" in f if base == "mlp" else f == base) and getattr(cfg, f)]
        if not scaled:
            raise ValueError(f"match_flops: {model} has no non-empty {'MLP' if base == 'mlp' else base!r} tuple field for knob {knob!r}; tuple fields: {tuple_fields}")

        def at_scale(s: float) -> MemberConfig:
            return dataclasses.replace(
                cfg, **{f: tuple(max(1, round(h * s)) for h in getattr(cfg, f)) for f in scaled}
            )

        def f_of(s: float) -> int | None:
            return flops_of(at_scale(s))

        lo, hi = 1e-3, 1.0
        while (f_of(hi) or 0) < target_flops and hi < 1e4:
            lo, hi = hi, hi * 2
        for _ in range(40):  # FLOPs grow with s (quadratically in MLP width)
            mid = math.sqrt(lo * hi)
            fm = f_of(mid)
            if fm is not None and fm >= target_flops:
                hi = mid
            else:
                lo = mid
        for s in (lo, hi):
            fs = f_of(s)
            if fs is not None:
                candidates.append((s, at_scale(s), fs))
    elif field_name in fields and hints[field_name] is int:
        step = 4 if field_name == "embedding_dim" else 1  # FBGEMM needs dim % 4 == 0

        def at(v: int) -> MemberConfig:
            return dataclasses.replace(cfg, **{field_name: v * step})

        v = 1
        while v < 1 << 16:
            fv = flops_of(at(v))
            if fv is not None and fv >= target_flops:
                break
            v *= 2
        lo_v, hi_v = max(1, v // 2), v
        while hi_v - lo_v > 1:  # smallest v with FLOPs >= target
            mid_v = (lo_v + hi_v) // 2
            fm = flops_of(at(mid_v))
            if fm is not None and fm >= target_flops:
                hi_v = mid_v
            else:
                lo_v = mid_v
        for cand in (lo_v, hi_v):
            fc = flops_of(at(cand))
            if fc is not None:
                candidates.append((float(cand * step), at(cand), fc))
    else:
        ints = [f for f in fields if hints[f] is int and f != "seed"]
        raise ValueError(
            f"match_flops: unknown knob {knob!r} for {model}; use mlp_width, <tuple field>_width "
            f"({', '.join(f + '_width' for f in tuple_fields)}) or an int field ({', '.join(ints)})"
        )
    if not candidates:
        raise ValueError(f"match_flops: no valid {model} setting of {knob!r} builds")
    value, best_cfg, best = min(candidates, key=lambda c: abs(c[2] - target_flops))
    result = FlopMatch(config_to_spec(model, best_cfg), best, int(target_flops), knob, value)
    if result.rel_error > tol:
        raise ValueError(
            f"match_flops: cannot match {target_flops:,} FLOPs with {knob!r} of {base_spec!r} within "
            f"{tol:.0%}: closest is {result.spec} with {best:,} ({result.rel_error:.1%} off)"
        )
    return result


# --------------------------------------------------------------------------- table + CLI


def split_member_list(text: str) -> list[str]:
    """Splits ``"dcnv2:seed=1,cross_layers=4,wukong"`` into member specs.

    Spec keys are ``key=value`` and model names never contain ``=``, so an item
    with ``=`` continues the previous spec.  ``;`` always separates members.
    """
    specs: list[str] = []
    for chunk in text.split(";"):
        for item in (s.strip() for s in chunk.split(",")):
            if not item:
                continue
            if "=" in item and ":" not in item.split("=", 1)[0]:
                if not specs:
                    raise ValueError(f"member list {text!r} starts with a key {item!r}, not a model name")
                specs[-1] += ("," if ":" in specs[-1] else ":") + item
            else:
                specs.append(item)
        specs.append("\0")  # `;` boundary: keys after it never attach to the spec before
    return [s for s in specs if s != "\0"]


def _human(n: float) -> str:
    for unit, div in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(n) >= div:
            return f"{n / div:.2f}{unit}"
    return f"{n:.0f}"


def budget_table(rows: Sequence[MemberBudget], total_latency_ms: float | None = None) -> str:
    """A markdown table with one row per member and a total row for the ensemble."""
    head = "| member | spec | dense params | emb params | FLOPs/ex | emb bytes/ex | latency ms |"
    lines = [head, "|---|---|---:|---:|---:|---:|---:|"]

    def lat(v: float | None) -> str:
        return "-" if v is None else f"{v:.2f}"

    for r in rows:
        lines.append(
            f"| {r.name} | {r.spec} | {_human(r.dense_params)} | {_human(r.embedding_params)} | "
            f"{_human(r.flops_per_example)} | {r.embedding_bytes_per_example:,} | {lat(r.latency_ms)} |"
        )
    lines.append(
        f"| **total** | {len(rows)} members | {_human(sum(r.dense_params for r in rows))} | "
        f"{_human(sum(r.embedding_params for r in rows))} | {_human(sum(r.flops_per_example for r in rows))} | "
        f"{sum(r.embedding_bytes_per_example for r in rows):,} | {lat(total_latency_ms)} |"
    )
    return "\n".join(lines)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m recsys.budget",
        description="Inference budget per member (exact params, FLOPs/example, embedding bytes) and measured latency.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="""examples:
  python -m recsys.budget --schema data/criteo/meta.json --members "dcnv2,wukong,rankmixer"
  python -m recsys.budget --schema data/criteo --members "dcnv2:seed=1,cross_layers=4;dcnv2:seed=2" --batch-size 4096
  python -m recsys.budget --schema data/criteo --members "dcnv2:seed=1,dcnv2:seed=2" --no-latency \\
      --match mlp_width --base dcnv2        # a single DCNv2 with the ensemble's FLOPs

Members are separated by ',' (a 'key=value' item belongs to the spec before it) or ';'.
Latency: median of --repeats forwards after --warmup, eval mode, random ids; the total
row times one forward of all members together (one EnsembleGroup).
""",
    )
    p.add_argument("--schema", required=True, help="meta.json, or the data directory holding it")
    p.add_argument("--members", required=True, help='member specs, e.g. "dcnv2,wukong:layers=2,rankmixer"')
    p.add_argument("--batch-size", type=int, default=1024, help="batch size for latency (default 1024)")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--no-latency", action="store_true", help="skip latency measurement")
    p.add_argument("--device", default="cpu", help="cpu or cuda (latency only)")
    p.add_argument("--match", metavar="KNOB", help="also find the KNOB (mlp_width, cross_layers, layers, ...) "
                   "of --base whose FLOPs match the ensemble's")
    p.add_argument("--base", help="base spec for --match (default: the first member)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    from recsys.ensemble import EnsembleGroup, member_names

    try:
        schema = Schema.load(args.schema)
        specs = split_member_list(args.members)
        if not specs:
            raise ValueError("--members is empty")
        if args.batch_size <= 0 and not args.no_latency:
            raise ValueError(f"--batch-size must be positive, got {args.batch_size}")
        names = member_names(specs)
        members = [build_member(s, schema, n).to(args.device) for s, n in zip(specs, names)]
    except (SchemaError, SpecError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    bs = 0 if args.no_latency else args.batch_size
    rows = [member_budget(m, schema, bs, args.warmup, args.repeats, args.device) for m in members]
    total_latency = None
    if bs:
        group = EnsembleGroup(members).to(args.device)
        total_latency = forward_latency_ms(group, schema, bs, args.warmup, args.repeats, args.device)
    print(f"# Inference budget: {schema.dataset}, {schema.num_sparse} sparse + {schema.num_dense} dense features"
          + (f", latency at batch {bs} on {args.device}" if bs else ""))
    print()
    print(budget_table(rows, total_latency))
    if args.match:
        target = sum(r.flops_per_example for r in rows)
        try:
            m = match_flops(args.base or specs[0], args.match, target, schema)
        except (SpecError, ValueError) as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        print()
        print(f"FLOP-matched single model ({args.match}): {m.spec}  "
              f"{_human(m.flops)} FLOPs/ex vs ensemble {_human(target)} ({m.rel_error:.1%} off)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
