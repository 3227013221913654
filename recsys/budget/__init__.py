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

Modules: ``counting`` (parameters, embedding bytes, ``member_budget``), ``latency``
(random inputs, timed forwards), ``matching`` (FLOPs of a spec, ``match_flops``), ``table``
(member lists, the markdown table, ``human``), ``cli`` (``python -m recsys.budget``).

Example::

    python -m recsys.budget --schema data/criteo/meta.json --members "dcnv2,wukong,rankmixer"
    python -m recsys.budget --schema data/criteo --members "dcnv2:seed=1,dcnv2:seed=2" \\
        --match mlp_width --base dcnv2
"""

from __future__ import annotations

from recsys.budget.cli import BudgetError, main
from recsys.budget.counting import MemberBudget, count_params, embedding_bytes_per_example, member_budget
from recsys.budget.latency import forward_latency_ms, measure_latency_ms, random_inputs
from recsys.budget.matching import (
    FlopMatch,
    MatchError,
    config_to_spec,
    ensemble_flops,
    flops_schema,
    match_flops,
    spec_flops,
)
from recsys.budget.table import MemberListError, budget_table, human, split_member_list

__all__ = [
    "BudgetError",
    "FlopMatch",
    "MatchError",
    "MemberBudget",
    "MemberListError",
    "budget_table",
    "config_to_spec",
    "count_params",
    "embedding_bytes_per_example",
    "ensemble_flops",
    "flops_schema",
    "forward_latency_ms",
    "human",
    "main",
    "match_flops",
    "measure_latency_ms",
    "member_budget",
    "random_inputs",
    "spec_flops",
    "split_member_list",
]
