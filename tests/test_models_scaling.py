"""Model-specific checks for the scaling architectures: the stacked-layer models
Wukong and RankMixer, and the embedding-scaling baselines Multi-Embed and D-MoE.

The generic checks (shapes, gradients, seeds, learning the planted signal) run
for every registered model in tests/test_models.py.
"""
from __future__ import annotations

import copy

import pytest
import torch
import torch.distributed as dist
from torch.utils.flop_counter import FlopCounterMode
from torchrec.datasets.utils import Batch

from recsys.data.batch import batch_from_arrays
from recsys.data.schema import Schema
from recsys.models import SpecError, build_member
from recsys.models.dmoe import DMoEInteraction
from recsys.modules.decorrelation import decorrelation_loss
from recsys.modules.token_mixing import RankMixerLayer, token_mixing_permutation
from recsys.modules.wukong_layers import WukongLayer
from tests.dist_harness import run_ranks
from tests.toy_data import toy_arrays, toy_schema

SMALL = "mlp=32-16"


def make_batch(schema: Schema, n: int = 64, seed: int = 0) -> Batch:
    dense, sparse, labels = toy_arrays(schema, n, seed)
    return batch_from_arrays(dense, sparse, labels, schema.sparse_names)


@pytest.mark.parametrize("num_dense", [0, 3])
@pytest.mark.parametrize(
    "spec",
    [
        f"wukong:{SMALL},fmb_mlp=24,lcb_tokens=4,fmb_tokens=5,fmb_rank=3",
        f"wukong:{SMALL},layers=2,lcb_tokens=3,fmb_tokens=4,fmb_rank=2",  # 7 tokens in = 7 out at 6+1
        f"rankmixer:{SMALL}",
        f"rankmixer:{SMALL},tokens=5,token_dim=7,heads=3,expansion=3",
        f"multiembed:{SMALL},num_embeddings_sets=3,cross_layers=2",
        f"dmoe:{SMALL},expert_mlp=16,experts=cross-ipnn-mlp-mlp",
    ],
)
def test_flops_match_flop_counter(spec: str, num_dense: int) -> None:
    schema = toy_schema(num_fields=6, vocab=30, num_dense=num_dense)
    batch = make_batch(schema)
    member = build_member(spec, schema, name="m")
    assert member.flops_per_example() > 0
    for train in (True, False):  # D-MoE's training-only de-correlation term adds no forward FLOPs
        member.train(train)
        with FlopCounterMode(display=False) as counter:
            member(batch.dense_features, batch.sparse_features)
        assert counter.get_total_flops() == member.flops_per_example() * batch.labels.shape[0]


def test_wukong_layers_and_residual_projection() -> None:
    schema = toy_schema(num_fields=6, vocab=30)
    member = build_member("wukong:layers=3,lcb_tokens=2,fmb_tokens=4,fmb_rank=3,fmb_mlp=8", schema, "wk")
    layers = list(member.interaction.layers)
    assert len(layers) == 3
    assert member.interaction.output_dim == (2 + 4) * 16
    assert layers[0].split == [2, 3, 0]  # 6 fields in, 2 + 4 tokens out: identity residual
    member = build_member("wukong:layers=2,lcb_tokens=3,fmb_tokens=4,fmb_rank=5", schema, "wk")
    assert [layer.split for layer in member.interaction.layers] == [[3, 5, 7], [3, 5, 0]]  # 6 -> 7 projected


def test_wukong_layer_matches_direct_formula() -> None:
    torch.manual_seed(0)
    layer = WukongLayer(5, dim=4, lcb_tokens=2, fmb_tokens=4, rank=3, fmb_mlp=(8,))
    x = torch.randn(7, 5, 4)
    w_lcb, w_r, w_res = layer.token_maps.weight.split(layer.split, dim=0)  # [k, n] each
    lcb = torch.einsum("kn,bnd->bkd", w_lcb, x)
    fm = x @ x.transpose(1, 2) @ w_r.t()  # X X^T W_r, [B, n, r]
    fmb = layer.fmb_mlp(layer.fmb_norm(fm.flatten(1))).view(7, 4, 4)
    res = torch.einsum("kn,bnd->bkd", w_res, x)
    expected = layer.norm(torch.cat([fmb, lcb], dim=1) + res)
    torch.testing.assert_close(layer(x), expected)


def test_rankmixer_mixing_matches_reference_when_divisible() -> None:
    # The reference: [B, T, H, D/H] -> [B, H, T, D/H] -> [B, H, T*D/H] with H == T.
    T, D = 4, 8
    x = torch.randn(3, T, D)
    reference = x.view(3, T, T, D // T).permute(0, 2, 1, 3).reshape(3, T, D)
    perm = token_mixing_permutation(T, D, T)
    assert torch.equal(x.flatten(1)[:, perm].view(3, T, D), reference)


@pytest.mark.parametrize("T,D,H", [(5, 7, 5), (6, 4, 6), (3, 11, 2), (7, 3, 7)])
def test_rankmixer_mixing_is_a_permutation_across_tokens(T: int, D: int, H: int) -> None:
    perm = token_mixing_permutation(T, D, H)
    assert torch.equal(perm.sort().values, torch.arange(T * D))  # parameter-free, lossless
    source_token = (perm // D).view(T, D)  # which input token each output value comes from
    # Every output token draws values from several input tokens (that is the mixing) ...
    assert all(len(set(row.tolist())) > 1 for row in source_token)
    # ... and no input token gives any output token more than one head's chunk.
    per_source = [torch.bincount(row, minlength=T) for row in source_token]
    assert max(int(c.max()) for c in per_source) <= -(-D // H)


def test_rankmixer_free_tokens_and_width() -> None:
    schema = toy_schema(num_fields=6, vocab=30, num_dense=2)  # 7 input tokens of width 16
    batch = make_batch(schema, n=16)
    member = build_member(f"rankmixer:{SMALL},tokens=5,token_dim=7", schema, "rm")
    inter = member.interaction
    assert (inter.num_tokens, inter.dim) == (5, 7)
    assert inter.tokenizer is not None and inter.tokenizer.in_features == 7 * 16
    assert member(batch.dense_features, batch.sparse_features).shape == (16,)
    # With the defaults (T = tokens, D = embedding dim) there is no tokenizer, as in the reference.
    assert build_member("rankmixer", schema, "rm").interaction.tokenizer is None
    layer = RankMixerLayer(num_tokens=5, dim=7, heads=5, expansion=2)
    assert layer(torch.randn(4, 5, 7)).shape == (4, 5, 7)


def test_multiembed_sets_are_distinct_and_all_used() -> None:
    schema = toy_schema(num_fields=4, vocab=30, num_dense=2)
    batch = make_batch(schema, n=32)
    member = build_member(f"multiembed:{SMALL},num_embeddings_sets=3", schema, "me")
    ebc = member.sparse_arch.embedding_bag_collection
    names = [c.name for c in ebc.embedding_bag_configs()]
    assert names == [f"me__e{k}__{f}" for k in range(3) for f in schema.sparse_names]

    tokens = member.tokens(batch.dense_features, batch.sparse_features)
    assert tokens.shape == (32, 3, 5, 16)  # [B, M, F + dense token, D]
    for a in range(3):
        for b in range(a + 1, 3):
            assert not torch.allclose(tokens[:, a], tokens[:, b])
            w_a = ebc.embedding_bags[f"me__e{a}__C0"].weight
            w_b = ebc.embedding_bags[f"me__e{b}__C0"].weight
            assert not torch.allclose(w_a, w_b)

    member(batch.dense_features, batch.sparse_features).sum().backward()
    for name in names:
        grad = ebc.embedding_bags[name].weight.grad
        assert grad is not None and grad.abs().sum() > 0, name

    # Each set matters: zeroing any one of them changes the logits.
    with torch.no_grad():
        base = member(batch.dense_features, batch.sparse_features)
        for k in range(3):
            saved = ebc.embedding_bags[f"me__e{k}__C1"].weight.clone()
            ebc.embedding_bags[f"me__e{k}__C1"].weight.zero_()
            assert not torch.allclose(member(batch.dense_features, batch.sparse_features), base)
            ebc.embedding_bags[f"me__e{k}__C1"].weight.copy_(saved)


def test_decorrelation_loss_low_for_independent_high_for_identical() -> None:
    torch.manual_seed(0)
    B, P = 2048, 8
    z = torch.randn(B, P, requires_grad=True)
    identical = decorrelation_loss([z, z * 3 + 1])  # correlation ignores scale and shift
    independent = decorrelation_loss([z, torch.randn(B, P), torch.randn(B, P)])
    assert identical.item() >= 1.0
    assert independent.item() < 3 * P / B
    identical.backward()
    assert torch.isfinite(z.grad).all() and z.grad.abs().sum() > 0
    dead = torch.ones(B, P, requires_grad=True)
    constant = decorrelation_loss([dead, torch.randn(B, P)])  # dead units: no NaN, forward or backward
    constant.backward()
    assert torch.isfinite(constant) and torch.isfinite(dead.grad).all()


def _reference_decorrelation(outputs: list[torch.Tensor], eps: float = 1e-5) -> torch.Tensor:
    """The module doc's formula, standardizing each output over the local batch."""
    B, P = outputs[0].shape
    zhat = [(z - z.mean(0)) / (z.std(0, correction=0) + eps) for z in outputs]
    pairs = [(i, j) for i in range(len(zhat)) for j in range(i + 1, len(zhat))]
    return torch.stack([(zhat[i].t() @ zhat[j] / B).pow(2).sum() / P for i, j in pairs]).mean()


def test_decorrelation_loss_matches_standardized_formula() -> None:
    torch.manual_seed(1)
    B, P = 96, 6
    base = torch.randn(B, P)
    outputs = [base + 0.5 * torch.randn(B, P) * k for k in range(4)]  # correlated, partly
    got, want = decorrelation_loss(outputs), _reference_decorrelation(outputs)
    assert got.item() == pytest.approx(want.item(), rel=1e-5)
    assert decorrelation_loss(outputs[:1]).item() == 0.0  # one expert: nothing to de-correlate


def test_dmoe_auxiliary_loss_is_finite_differentiable_and_training_only() -> None:
    schema = toy_schema(num_fields=5, vocab=30)
    batch = make_batch(schema, n=128)
    member = build_member(f"dmoe:{SMALL},expert_mlp=8,decorrelation_weight=0.5", schema, "moe")
    assert member.auxiliary_loss() is None  # nothing before a forward
    member.train()
    member(batch.dense_features, batch.sparse_features)
    aux = member.auxiliary_loss()
    assert aux is not None and aux.dim() == 0 and torch.isfinite(aux) and aux.requires_grad
    # Consumed: the member no longer holds the batch's graph; a second call has nothing.
    assert member.interaction.last_expert_outputs is None
    assert member.auxiliary_loss() is None
    aux.backward()
    ebc = member.sparse_arch.embedding_bag_collection
    for k in range(3):  # the term reaches every expert's own embeddings
        assert ebc.embedding_bags[f"moe__e{k}__C0"].weight.grad.abs().sum() > 0
    member.eval()
    member(batch.dense_features, batch.sparse_features)
    assert member.auxiliary_loss() is None


def test_dmoe_decorrelation_weight_scales_and_bad_experts_fail() -> None:
    schema = toy_schema(num_fields=5, vocab=30)
    batch = make_batch(schema, n=64)
    losses = []
    for w in (0.5, 1.0):
        member = build_member(f"dmoe:{SMALL},expert_mlp=8,decorrelation_weight={w}", schema, "moe")
        member(batch.dense_features, batch.sparse_features)
        losses.append(member.auxiliary_loss().item())
    assert losses[1] == pytest.approx(2 * losses[0], rel=1e-5)
    with pytest.raises(SpecError, match="bad experts"):
        build_member("dmoe:experts=cross-attention", schema)
    with pytest.raises(SpecError, match="unknown key"):
        build_member("multiembed:sets=2", schema)


def _body_dmoe_group_moments(rank: int, world_size: int, spec: str) -> dict[str, float]:
    """D-MoE sharded on 2 ranks, each with half of a batch: the de-correlation term
    and the gradients equal the unsharded member's on the whole batch."""
    from recsys.distributed import DistEnv, EmbeddingOptimizerConfig, ShardingConfig, shard_module

    schema = toy_schema(num_fields=4, vocab=30)
    full = make_batch(schema, n=64)
    member = build_member(spec, schema, "moe")
    ref = copy.deepcopy(member).train()
    ref_logits = ref(full.dense_features, full.sparse_features)
    ref_aux = ref.auxiliary_loss()
    ref_loss = torch.nn.functional.binary_cross_entropy_with_logits(ref_logits, full.labels) + ref_aux
    ref_loss.backward()
    (ref_inter,) = [m for m in ref.modules() if isinstance(m, DMoEInteraction)]
    ref_grad = ref_inter.experts[0].mlp.layers[0].weight.grad  # type: ignore[index]

    env = DistEnv(rank, world_size, rank, torch.device("cpu"), "gloo")
    dmp = shard_module(member, None, env, EmbeddingOptimizerConfig(), ShardingConfig("table_wise"))
    (inter,) = [m for m in dmp.modules() if isinstance(m, DMoEInteraction)]
    dense, sparse, labels = toy_arrays(schema, 64, 0)  # the arrays of ``full``
    sl = slice(rank * 32, (rank + 1) * 32)
    local = batch_from_arrays(dense[sl], sparse[sl], labels[sl], schema.sparse_names)
    dmp.train()
    logits = dmp(local.dense_features, local.sparse_features)
    aux = inter.decorrelation()
    loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, local.labels) + aux
    loss.backward()
    grad = inter.experts[0].mlp.layers[0].weight.grad  # type: ignore[index]
    dist.barrier()
    return {
        "same_group": float(inter.process_group is dist.group.WORLD),
        "aux_err": abs(aux.item() - ref_aux.item()) / ref_aux.item(),
        "grad_err": ((grad - ref_grad).abs().max() / ref_grad.abs().max()).item(),
    }


def test_dmoe_decorrelation_uses_the_groups_whole_batch() -> None:
    results = run_ranks(_body_dmoe_group_moments, 2, f"dmoe:{SMALL},expert_mlp=8,decorrelation_weight=0.5,dropout=0")
    for r, res in enumerate(results):
        assert res["same_group"] == 1.0, f"rank {r}: shard_module did not hand the group's pg to D-MoE"
        assert res["aux_err"] < 1e-5, f"rank {r}: 2-rank term differs from the whole batch's: {res}"
        assert res["grad_err"] < 1e-4, f"rank {r}: 2-rank gradient differs from the whole batch's: {res}"
