"""The TorchRec 1.8 bugs that ``recsys.torchrec_compat`` works around are still there.

When a TorchRec upgrade fixes one, its check here fails with a message saying which
workaround to delete.  (That the workarounds WORK is checked end to end by
tests/test_distributed.py::test_subgroup_without_rank0.)
"""
from __future__ import annotations

import torch

from recsys import torchrec_compat
from recsys.distributed import RowWiseEBCSharder, new_subgroups
from recsys.models import build_member
from tests.dist_harness import run_ranks
from tests.toy_data import toy_schema


def _body(rank: int, world_size: int) -> dict[str, str]:
    from torchrec.distributed.planner import EmbeddingShardingPlanner, Topology

    # A 1-rank group skips TorchRec's broadcast, so the group without global rank 0
    # needs 2 ranks: {0}, {1, 2}.
    pgs = new_subgroups([[0], [1, 2]])
    pg = pgs[min(rank, 1)]
    member = build_member("fnn:mlp=8", toy_schema(num_fields=2, vocab=20), name="m0")
    sharder = RowWiseEBCSharder()
    planner = EmbeddingShardingPlanner(topology=Topology(world_size=pg.size(), local_world_size=pg.size(), compute_device="cpu")
    )
    out = {}
    try:
        planner.collective_plan(member, [sharder], pg)
        out["collective_plan"] = "ok"
    except Exception as e:  # noqa: BLE001
        out["collective_plan"] = f"{type(e).__name__}: {e}"
    # The second bug (ShardedTensor rejecting group-local placements) is not probed here:
    # the failing DMP construction can leave one rank of {1, 2} waiting in a collective
    # its peer never joins, which hung this test intermittently.  That the workaround
    # (torchrec_compat.globalize_placements) is needed and works is covered end to end by
    # tests/test_distributed.py::test_subgroup_without_rank0.
    return out


def test_torchrec_18_subgroup_bugs_still_present() -> None:
    rank0, *others = run_ranks(_body, 3)
    # Group {0} contains global rank 0: plain TorchRec works there.
    assert rank0 == {"collective_plan": "ok"}, rank0
    # Group {1, 2} does not.
    for rank1 in others:
        assert "Global rank 0 is not part of group" in rank1["collective_plan"], (
            "TorchRec now plans on subgroups: delete torchrec_compat.plan_on_group; got " + rank1["collective_plan"]
        )
