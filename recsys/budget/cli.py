"""``python -m recsys.budget``: the inference budget of a list of members, as a markdown table,
and optionally the single model whose FLOPs match the ensemble's.

User errors (a bad schema path, an unknown model, an unmatched knob) are one ``error: ...``
line and exit status 2, through ``recsys.cli.run_main``.

Example::

    python -m recsys.budget --schema data/criteo/meta.json --members "dcnv2,wukong,rankmixer"
"""
from __future__ import annotations

import argparse
from typing import Callable, Sequence, TypeVar

from recsys.budget.counting import member_budget
from recsys.budget.latency import forward_latency_ms
from recsys.budget.matching import match_flops
from recsys.budget.table import budget_table, human, split_member_list
from recsys.cli import parser_with_examples, run_main
from recsys.data.schema import Schema
from recsys.ensemble import EnsembleGroup, member_names
from recsys.errors import UserError
from recsys.models.member import Member
from recsys.models.registry import build_member

_T = TypeVar("_T")


class BudgetError(UserError, ValueError):
    """A bad command line (empty member list, non-positive batch size) or a member that does
    not build."""


def _parser() -> argparse.ArgumentParser:
    p = parser_with_examples(
        "python -m recsys.budget",
        "Inference budget per member (exact params, FLOPs/example, embedding bytes) and measured latency.",
        """examples:
  python -m recsys.budget --schema data/criteo/meta.json --members "dcnv2,wukong,rankmixer"
  python -m recsys.budget --schema data/criteo --members "dcnv2:seed=1,cross_layers=4;dcnv2:seed=2" --batch-size 4096
  python -m recsys.budget --schema data/criteo --members "dcnv2:seed=1,dcnv2:seed=2" --no-latency \\
      --match mlp_width --base dcnv2        # a single DCNv2 with the ensemble's FLOPs
  python -m recsys.budget --schema data/criteo --no-latency --exact \
      --members "rankmixer:preset=tts4ctr;dcnv2:preset=tts4ctr"   # the official models, exact counts

Members are separated by ',' (a 'key=value' item belongs to the spec before it) or ';'.
Latency: median of --repeats forwards after --warmup, eval mode, random ids; the total
row times one forward of all members together (one EnsembleGroup).
A spec with preset=tts4ctr is resolved against the schema first (recsys.models.preset):
it builds the official TTS4CTR model for this data (docs/preset.md).
""",
    )
    p.add_argument("--schema", required=True, help="meta.json, or the data directory holding it")
    p.add_argument("--members", required=True, help='member specs, e.g. "dcnv2,wukong:layers=2,rankmixer"')
    p.add_argument("--batch-size", type=int, default=1024, help="batch size for latency (default 1024)")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--no-latency", action="store_true", help="skip latency measurement")
    p.add_argument("--exact", action="store_true", help="print counts as exact integers (default: 1.30M style)")
    p.add_argument("--device", default="cpu", help="cpu or cuda (latency only)")
    p.add_argument("--match", metavar="KNOB", help="also find the KNOB (mlp_width, cross_layers, layers, ...) "
                   "of --base whose FLOPs match the ensemble's")
    p.add_argument("--base", help="base spec for --match (default: the first member)")
    return p


def _user_errors(fn: Callable[[], _T]) -> _T:
    """``fn()``, with a plain ``ValueError`` (a model builder's own check) raised as a
    ``BudgetError``: this CLI has always reported those as one line too."""
    try:
        return fn()
    except ValueError as e:
        if isinstance(e, UserError):
            raise
        raise BudgetError(str(e)) from None


def _run(args: argparse.Namespace) -> int:
    def load() -> tuple[Schema, list[str], list[Member]]:
        schema = Schema.load(args.schema)
        specs = split_member_list(args.members)
        if not specs:
            raise BudgetError("--members is empty")
        if args.batch_size <= 0 and not args.no_latency:
            raise BudgetError(f"--batch-size must be positive, got {args.batch_size}")
        names = member_names(specs)
        return schema, specs, [build_member(s, schema, n).to(args.device) for s, n in zip(specs, names)]

    schema, specs, members = _user_errors(load)
    bs = 0 if args.no_latency else args.batch_size
    rows = [member_budget(m, schema, bs, args.warmup, args.repeats, args.device) for m in members]
    total_latency = None
    if bs:
        group = EnsembleGroup(members).to(args.device)
        total_latency = forward_latency_ms(group, schema, bs, args.warmup, args.repeats, args.device)
    print(f"# Inference budget: {schema.dataset}, {schema.num_sparse} sparse + {schema.num_dense} dense features"
          + (f", latency at batch {bs} on {args.device}" if bs else ""))
    print()
    print(budget_table(rows, total_latency, exact=args.exact))
    if args.match:
        target = sum(r.flops_per_example for r in rows)
        m = _user_errors(lambda: match_flops(args.base or specs[0], args.match, target, schema))
        print()
        print(f"FLOP-matched single model ({args.match}): {m.spec}  "
              f"{human(m.flops)} FLOPs/ex vs ensemble {human(target)} ({m.rel_error:.1%} off)")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the command line ``argv``; returns 0, or 2 after one ``error: ...`` line."""
    args = _parser().parse_args(argv)
    return run_main("", lambda: _run(args))
