"""The budget CLI's text: member lists in, a markdown table and human-readable counts out.

``human`` is the one formatter for counts (also used by ``recsys.study.report``).

Example::

    split_member_list("dcnv2:seed=1,cross_layers=4,wukong")  # ["dcnv2:seed=1,cross_layers=4", "wukong"]
    human(434_100)                                           # "434.10K"
"""
from __future__ import annotations

from typing import Sequence

from recsys.budget.counting import MemberBudget
from recsys.errors import UserError


class MemberListError(UserError, ValueError):
    """A ``--members`` list that does not start with a model name."""


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
                    raise MemberListError(f"member list {text!r} starts with a key {item!r}, not a model name")
                specs[-1] += ("," if ":" in specs[-1] else ":") + item
            else:
                specs.append(item)
        specs.append("\0")  # `;` boundary: keys after it never attach to the spec before
    return [s for s in specs if s != "\0"]


def human(n: float) -> str:
    """A count with a G/M/K suffix and 2 decimals: ``human(1_160_580) == "1.16M"``."""
    for unit, div in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(n) >= div:
            return f"{n / div:.2f}{unit}"
    return f"{n:.0f}"


def budget_table(rows: Sequence[MemberBudget], total_latency_ms: float | None = None, exact: bool = False) -> str:
    """A markdown table with one row per member and a total row for the ensemble.

    ``exact``: counts as exact integers (``1,296,385``) instead of ``human`` ones
    (``1.30M``), e.g. to compare dense parameter counts with the official code's.
    """
    fmt = (lambda n: f"{n:,}") if exact else human
    head = "| member | spec | dense params | emb params | FLOPs/ex | emb bytes/ex | latency ms |"
    lines = [head, "|---|---|---:|---:|---:|---:|---:|"]

    def lat(v: float | None) -> str:
        return "-" if v is None else f"{v:.2f}"

    for r in rows:
        lines.append(
            f"| {r.name} | {r.spec} | {fmt(r.dense_params)} | {fmt(r.embedding_params)} | "
            f"{fmt(r.flops_per_example)} | {r.embedding_bytes_per_example:,} | {lat(r.latency_ms)} |"
        )
    lines.append(
        f"| **total** | {len(rows)} members | {fmt(sum(r.dense_params for r in rows))} | "
        f"{fmt(sum(r.embedding_params for r in rows))} | {fmt(sum(r.flops_per_example for r in rows))} | "
        f"{sum(r.embedding_bytes_per_example for r in rows):,} | {lat(total_latency_ms)} |"
    )
    return "\n".join(lines)
