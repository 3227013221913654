"""The tts4ctr preset: exact parity of dense parameter counts with the official TTS4CTR code,
and the knobs it sets (xavier_global init, the 40-stored / 39-seen RankMixer, overrides)."""
from __future__ import annotations

import math

import pytest
import torch

from recsys import budget
from recsys.budget import count_params, match_flops, member_budget, random_inputs, spec_flops
from recsys.data.schema import Schema, SparseFeature
from recsys.models.embedding_init import table_inits
from recsys.models.preset import PRESETS, preset_values, resolve_spec
from recsys.models.registry import build_member
from recsys.models.spec import SpecError
from recsys.modules.cross import ParallelCrossInteraction
from recsys.modules.inner_product import InnerProductInteraction
from recsys.modules.token_mixing import RankMixerLayer

# Dense parameter counts (all parameters minus the one global embedding table) of the official
# models at trainer_group.py's defaults (dim 16, MLP 1024-512-256, cross 3, Wukong 3 x (LCB 16,
# FMB 16, rank 24, FMB MLP 512-512), RankMixer 3 layers, expansion 2, latent_dim = fields).
# Produced by running the official code (aTitye/TTS4CTR HEAD, modules/models.py + layers.py):
#     .venv/bin/python scripts/official_param_counts.py /tmp/tts4ctr/modules --fields 39 24 --flops
# (its docstring says how to extract the modules from the mirror).
OFFICIAL_DENSE_PARAMS = {
    39: {  # Criteo: 39 categorical fields
        "fnn": 1_296_385, "ipnn": 2_055_169, "deepfm": 1_296_385, "dcn": 1_300_752,
        "dcnv2": 2_467_008, "finalmlp": 2_658_306, "wukong": 3_641_257, "rankmixer": 2_940_430,
    },
    24: {  # Avazu: 24 categorical fields
        "fnn": 1_050_625, "ipnn": 1_333_249, "deepfm": 1_050_625, "dcn": 1_053_312,
        "dcnv2": 1_494_528, "finalmlp": 2_166_786, "wukong": 3_455_137, "rankmixer": 1_418_305,
    },
}

# FLOPs per example of the same official models on 39 fields, from the same command's --flops
# columns (FlopCounterMode over one forward: matmul-family ops, 2 per multiply-add).
OFFICIAL_FLOPS_39 = {
    "fnn": 2_589_184, "ipnn": 4_106_752, "deepfm": 2_589_184, "dcn": 2_594_176,
    "dcnv2": 4_926_688, "finalmlp": 5_309_952, "wukong": 7_501_312, "rankmixer": 5_849_896,
}


def categorical_schema(fields: int, vocab: int = 3) -> Schema:
    """``fields`` categorical fields and no dense features, as the official models see the data."""
    return Schema("cat", tuple(SparseFeature(f"C{i}", vocab + i) for i in range(fields)))


@pytest.mark.parametrize("fields", sorted(OFFICIAL_DENSE_PARAMS))
def test_dense_params_match_official_exactly(fields: int) -> None:
    schema = categorical_schema(fields)
    ours = {m: count_params(build_member(f"{m}:preset=tts4ctr", schema, materialize=False))[0]
            for m in OFFICIAL_DENSE_PARAMS[fields]}
    assert ours == OFFICIAL_DENSE_PARAMS[fields]


def test_our_defaults_depart_where_documented() -> None:
    """docs/preset.md's departures, in parameters: without the preset FinalMLP carries its gates,
    DCN/DCN-v2 their head bias, RankMixer runs at D = 16 with per-token LayerNorm."""
    schema = categorical_schema(39)
    official = OFFICIAL_DENSE_PARAMS[39]

    def ours(spec: str) -> int:
        return count_params(build_member(spec, schema, materialize=False))[0]

    assert ours("fnn") == official["fnn"] and ours("wukong") == official["wukong"]
    assert ours("dcn") == official["dcn"] + 1 and ours("dcnv2") == official["dcnv2"] + 1
    assert ours("finalmlp:gating=false") == official["finalmlp"] - 1  # one bias, not two
    assert ours("finalmlp") > official["finalmlp"] + 80_000  # the two feature gates
    assert ours("rankmixer") < official["rankmixer"] / 2


def test_flops_differ_from_official_only_by_our_convention() -> None:
    """docs/preset.md's FLOP table: ours count IPNN's full Gram matrix and TorchRec's DCN bmm,
    and not FinalMLP's last bilinear contraction (an element-wise product here)."""
    T, D, N, cross, d2 = 39, 16, 39 * 16, 3, 256
    convention = {"ipnn": 2 * T * T * D, "dcn": 2 * N * cross, "finalmlp": -2 * d2}
    schema = categorical_schema(T)
    diff = {m: spec_flops(f"{m}:preset=tts4ctr", schema) - f for m, f in OFFICIAL_FLOPS_39.items()}
    assert diff == {m: convention.get(m, 0) for m in OFFICIAL_FLOPS_39}


def test_budget_cli_prints_official_counts(tmp_path, capsys) -> None:
    categorical_schema(39).save(tmp_path)
    members = "rankmixer:preset=tts4ctr;dcn:preset=tts4ctr,seed=2;finalmlp:preset=tts4ctr"
    rc = budget.main(["--schema", str(tmp_path), "--members", members, "--no-latency", "--exact"])
    out = capsys.readouterr().out
    assert rc == 0, out
    rows = {l.split("|")[1].strip(): l for l in out.splitlines() if l.startswith("| m") and "spec" not in l}
    assert len(rows) == 3
    for name, model in (("m0_rankmixer", "rankmixer"), ("m1_dcn", "dcn"), ("m2_finalmlp", "finalmlp")):
        assert f"| {OFFICIAL_DENSE_PARAMS[39][model]:,} |" in rows[name], rows[name]
    assert budget.main(["--schema", str(tmp_path), "--members", "fnn:preset=paper", "--no-latency"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "valid presets: tts4ctr" in err and "\n" not in err


def test_resolve_spec() -> None:
    schema = categorical_schema(39)
    assert PRESETS == ("tts4ctr",)
    assert resolve_spec("dcn:seed=1,cross_layers=4", schema) == "dcn:seed=1,cross_layers=4"
    assert resolve_spec("dcn:preset=", schema) == "dcn:preset="
    resolved = resolve_spec("dcn:preset=tts4ctr,cross_layers=4,head_bias=true", schema)
    assert resolved.startswith("dcn:preset=tts4ctr,cross_layers=4,head_bias=true,")
    assert resolved.count("cross_layers=") == 1 and resolved.count("head_bias=") == 1
    assert "embedding_init=xavier_global" in resolved
    assert resolve_spec(resolved, schema) == resolved  # idempotent
    with pytest.raises(SpecError, match=r"unknown preset 'paper'; valid presets: tts4ctr$"):
        resolve_spec("fnn:preset=paper", schema)
    # RankMixer's width follows the data: D = tokens, stored at the next multiple of 4
    assert {k: preset_values("tts4ctr", "rankmixer", categorical_schema(24))[k]
            for k in ("embedding_dim", "model_dim")} == {"embedding_dim": "24", "model_dim": "24"}
    # models the official code lacks get the shared member values only
    assert set(preset_values("tts4ctr", "multiembed", schema)) == {
        "embedding_init", "embedding_dim", "model_dim", "dropout"}
    build_member("multiembed:preset=tts4ctr,num_embeddings_sets=2,mlp=8", categorical_schema(4))


def test_explicit_key_overrides_preset() -> None:
    schema = categorical_schema(39)
    member = build_member("dcn:preset=tts4ctr,head_bias=true,cross_layers=4,embedding_dim=8", schema,
                          materialize=False)
    assert member.over_arch is not None and member.over_arch.out.bias is not None
    assert isinstance(member.interaction, ParallelCrossInteraction)
    assert len(list(member.interaction.cross.parameters())) == 2 * 4  # a kernel and a bias per layer
    assert member.sparse_arch.D == 8
    assert member.spec == "dcn:preset=tts4ctr,head_bias=true,cross_layers=4,embedding_dim=8"  # as given
    default = build_member("dcn:preset=tts4ctr", schema, materialize=False)
    assert default.over_arch is not None and default.over_arch.out.bias is None


def test_explicit_width_is_the_width_the_model_sees() -> None:
    # the study's small bases: RankMixer's official D = tokens (39) cannot hold at width 8
    schema = categorical_schema(39)
    spec = resolve_spec("rankmixer:preset=tts4ctr,embedding_dim=8,mlp=64-32", schema)
    assert "model_dim=0" in spec and "norm=tensor" in spec
    member = build_member("rankmixer:preset=tts4ctr,embedding_dim=8,mlp=64-32", schema, materialize=False)
    assert member.sparse_arch.D == 8
    assert "model_dim=39" in resolve_spec("rankmixer:preset=tts4ctr", schema)  # no width given: official


def test_xavier_global_bound() -> None:
    """One bound over every field's rows, as the official single global table; per field xavier
    would give each small table a much larger one."""
    schema = categorical_schema(3, vocab=4000)
    total_rows = sum(schema.vocab_sizes)
    member = build_member("fnn:preset=tts4ctr,mlp=8", schema)
    bound = math.sqrt(6 / (total_rows + 16))
    weights = [b.weight for b in member.sparse_arch.embedding_bag_collection.embedding_bags.values()]
    assert len(weights) == 3
    for w in weights:
        assert bound * 0.99 < w.abs().max().item() <= bound
        assert w.abs().max().item() < 0.6 * math.sqrt(6 / (w.shape[0] + 16))  # not the per-field bound
    # RankMixer's fan uses the width the model sees (39 of 40 stored columns)
    inits = table_inits(build_member("rankmixer:preset=tts4ctr", categorical_schema(39), materialize=False))
    init = next(iter(inits.values()))
    assert (init.dim, init.fan_dim, init.fan_rows) == (40, 39, sum(categorical_schema(39).vocab_sizes))
    assert init.bound == math.sqrt(6 / (init.fan_rows + 39))


def test_rankmixer_stored_40_sees_39() -> None:
    schema = categorical_schema(39)
    member = build_member("rankmixer:preset=tts4ctr,mlp=16", schema)
    b = member_budget(member, schema)
    assert (member.sparse_arch.stored_dim, member.sparse_arch.D) == (40, 39)
    assert b.embedding_params == sum(schema.vocab_sizes) * 40  # stored columns
    assert b.embedding_bytes_per_example == 39 * 40 * 4  # rows are read whole
    assert b.flops_per_example == spec_flops("rankmixer:preset=tts4ctr,mlp=16", schema)

    dense, kjt = random_inputs(schema, batch_size=8, seed=1)
    logits = member(dense, kjt)
    assert logits.shape == (8,)
    logits.sum().backward()
    bags = member.sparse_arch.embedding_bag_collection.embedding_bags.values()
    grads = [bag.weight.grad for bag in bags]
    assert all(g is not None for g in grads)
    assert all(torch.count_nonzero(g[:, 39]) == 0 for g in grads if g is not None)  # the unseen column
    assert any(torch.count_nonzero(g[:, :39]) > 0 for g in grads if g is not None)
    with torch.no_grad():
        for bag in bags:
            bag.weight[:, 39] += 100.0
        assert torch.equal(member(dense, kjt), logits.detach())


def test_model_dim_validated() -> None:
    schema = categorical_schema(4)
    with pytest.raises(SpecError, match=r"model_dim=20 must be in \[0, embedding_dim=16\]"):
        build_member("fnn:model_dim=20", schema)
    member = build_member("ipnn:model_dim=6,mlp=8", categorical_schema(4))
    assert isinstance(member.interaction, InnerProductInteraction) and member.interaction.dim == 6


def test_tensor_norm_is_the_official_layer_norm() -> None:
    """norm=tensor: one mean and variance over the whole [B, T, D] tensor, no parameters."""
    torch.manual_seed(0)
    token, tensor = RankMixerLayer(5, 10, 5, 2), RankMixerLayer(5, 10, 5, 2, norm="tensor")
    n_ffn = sum(p.numel() for p in tensor.ffn.parameters())
    assert sum(p.numel() for p in tensor.parameters()) == n_ffn
    assert sum(p.numel() for p in token.parameters()) == n_ffn + 2 * 2 * 10
    y = tensor(torch.randn(4, 5, 10) * 3 + 1)
    assert abs(y.mean().item()) < 1e-5 and abs(y.var(unbiased=False).item() - 1) < 1e-3
    assert y[0].mean().abs().item() > 1e-4  # per example, it is not normalized
    with pytest.raises(SpecError, match="norm must be one of token, tensor"):
        build_member("rankmixer:norm=batch", categorical_schema(4))


def test_match_flops_keeps_the_preset() -> None:
    schema = categorical_schema(6)
    target = 2 * spec_flops("dcn:preset=tts4ctr,mlp=64-32", schema)
    m = match_flops("dcn:preset=tts4ctr,mlp=64-32", "mlp_width", target, schema)
    assert "preset=tts4ctr" in m.spec and "head_bias=false" in m.spec, m.spec
    matched = build_member(m.spec, schema, materialize=False)
    assert matched.over_arch is not None and matched.over_arch.out.bias is None


def test_canonical_specs_keep_what_a_preset_spec_names() -> None:
    # A key at OUR default (finalmlp's gating=true) must survive canonicalization under a preset:
    # dropped, the preset would refill it with ITS value (no gate) and train another model.
    from recsys.study.plan_specs import set_fields

    schema = categorical_schema(39)
    spec = "finalmlp:preset=tts4ctr,gating=true,embedding_dim=8,mlp=64-32"
    assert "gating=true" in set_fields(spec, seed=3)
    assert set_fields("finalmlp:gating=true", seed=3) == "finalmlp:seed=3"  # no preset: defaults dropped
    matched = match_flops(spec, "mlp_width", 2 * spec_flops(spec, schema), schema)
    assert "gating=true" in matched.spec
    gated = build_member(matched.spec, schema, materialize=False)
    assert gated.interaction.gate1 is not None  # the matched rival still has its gate
