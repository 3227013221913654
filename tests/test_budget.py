"""Budget accounting: exact parameter counts, FLOPs against FlopCounterMode, FLOP matching, CLI."""
from __future__ import annotations

import dataclasses
import typing

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from recsys import budget
from recsys.budget import (
    config_to_spec,
    count_params,
    embedding_bytes_per_example,
    ensemble_flops,
    match_flops,
    member_budget,
    random_inputs,
    spec_flops,
    split_member_list,
)
from recsys.models import MODELS, build_member
from recsys.models.spec import parse_spec
from tests.toy_data import toy_schema

SCHEMAS = {"sparse_only": toy_schema(num_fields=4, vocab=20, num_dense=0),
           "with_dense": toy_schema(num_fields=4, vocab=20, num_dense=3)}


def small_spec(model: str) -> str:
    """The model with every MLP shrunk and dim 8, so 20 forwards stay cheap on 1 thread."""
    cfg_cls = MODELS[model].config
    hints = typing.get_type_hints(cfg_cls)
    items = ["embedding_dim=8", "seed=3"]
    for f in dataclasses.fields(cfg_cls):
        if "mlp" in f.name and typing.get_origin(hints[f.name]) is tuple and f.default:
            items.append(f"{f.name}={'-'.join(['32', '16'][: len(f.default)])}")
    return f"{model}:{','.join(items)}"


@pytest.mark.parametrize("schema_name", sorted(SCHEMAS))
@pytest.mark.parametrize("model", sorted(MODELS))
def test_counts_match_parameters_and_flop_counter(model: str, schema_name: str):
    schema = SCHEMAS[schema_name]
    member = build_member(small_spec(model), schema, "m0")
    # Parameter counts: embedding = the tables' rows x dims, dense = everything else.
    dense, emb = count_params(member)
    tables = {n: p for n, p in member.named_parameters() if "embedding_bag" in n}
    assert emb == sum(p.numel() for p in tables.values()) > 0
    assert dense == sum(p.numel() for n, p in member.named_parameters() if n not in tables) > 0
    assert emb % sum(schema.vocab_sizes) == 0  # whole sets of one table per field
    # Embedding bytes: one D-dim fp32 row per (table, field) per example.
    num_sets = emb // (sum(schema.vocab_sizes) * 8)
    assert embedding_bytes_per_example(member) == num_sets * schema.num_sparse * 8 * 4
    # FLOPs: the member's formula equals FlopCounterMode's count of one forward, per example.
    batch = 6
    dense_x, kjt = random_inputs(schema, batch, seed=1)
    member.eval()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        logits = member(dense_x, kjt)
    assert logits.shape == (batch,)
    counted = counter.get_total_flops()
    assert counted > 0
    assert member.flops_per_example() * batch == counted, (member.flops_per_example(), counted / batch)
    # The meta-device shortcut used for matching gives the same number.
    assert spec_flops(small_spec(model), schema) == member.flops_per_example()


def test_member_budget_and_latency():
    schema = SCHEMAS["with_dense"]
    member = build_member("fnn:mlp=32-16", schema, "m0_fnn")
    b = member_budget(member, schema, batch_size=64, warmup=1, repeats=3)
    assert b.dense_params == (3 * 16 + 16) + (5 * 16 * 32 + 32) + (32 * 16 + 16) + (16 + 1)
    assert b.embedding_params == sum(schema.vocab_sizes) * 16
    assert b.flops_per_example == 2 * (3 * 16 + 5 * 16 * 32 + 32 * 16 + 16)
    assert b.embedding_bytes_per_example == 4 * 16 * 4
    assert b.latency_ms is not None and b.latency_ms > 0 and b.batch_size == 64
    assert member.training  # measuring does not leave the member in eval mode
    assert member_budget(member, schema).latency_ms is None


def test_config_to_spec_round_trips():
    configs = {k: v.config for k, v in MODELS.items()}
    for spec in ["fnn", "fnn:mlp=64-32,seed=4", "fnn:mlp=none,embedding_dim=8"]:
        model, cfg = parse_spec(spec, configs)
        assert parse_spec(config_to_spec(model, cfg), configs) == (model, cfg)


def test_match_flops_width_within_tolerance():
    schema = SCHEMAS["sparse_only"]
    specs = ["fnn:mlp=64-32,seed=1", "fnn:mlp=64-32,seed=2", "fnn:mlp=64-32,seed=3"]
    target = ensemble_flops(specs, schema)
    assert target == 3 * spec_flops(specs[0], schema)
    m = match_flops("fnn:mlp=64-32", "mlp_width", target, schema)
    assert abs(m.flops - target) / target <= 0.05
    assert m.flops == spec_flops(m.spec, schema)
    widths = parse_spec(m.spec, {"fnn": MODELS["fnn"].config})[1].mlp  # type: ignore[attr-defined]
    assert widths[0] > 64 and widths[1] > 32  # every MLP layer grew
    # Impossible: a target below the smallest model.
    with pytest.raises(ValueError, match="within 5%"):
        match_flops("fnn:mlp=64-32", "embedding_dim", 10, schema)
    with pytest.raises(ValueError, match="unknown knob"):
        match_flops("fnn", "heads", target, schema)


@pytest.mark.parametrize("model, knob", [("dcnv2", "cross_layers"), ("wukong", "num_layers"), ("rankmixer", "layers")])
def test_match_flops_depth(model, knob):
    assert model in MODELS, f"{model} is not in the registry (renamed? update this test's parameters)"
    schema = SCHEMAS["sparse_only"]
    base = f"{model}:mlp=16,embedding_dim=8"
    target = 2 * spec_flops(base, schema)
    # Depth is discrete (one layer is a big FLOP step at this tiny width), hence 10%.
    m = match_flops(base, knob, target, schema, tol=0.10)
    assert m.rel_error <= 0.10 and m.value >= 2
    assert m.flops == spec_flops(m.spec, schema)
    # Halfway between two depths no integer value is within 1%: a clear error, not a guess.
    deeper = spec_flops(m.spec.replace(f"{knob if knob != 'num_layers' else 'layers'}={int(m.value)}",
                                       f"{knob if knob != 'num_layers' else 'layers'}={int(m.value) + 1}"), schema)
    assert deeper > m.flops
    with pytest.raises(ValueError, match="within 1%"):
        match_flops(base, knob, (m.flops + deeper) // 2, schema, tol=0.01)


def test_split_member_list():
    assert split_member_list("dcnv2,wukong, rankmixer") == ["dcnv2", "wukong", "rankmixer"]
    assert split_member_list("dcnv2:seed=1,cross_layers=4,wukong,fnn:mlp=8") == [
        "dcnv2:seed=1,cross_layers=4", "wukong", "fnn:mlp=8"]
    assert split_member_list("fnn;fnn:seed=2") == ["fnn", "fnn:seed=2"]
    with pytest.raises(ValueError, match="starts with a key"):
        split_member_list("seed=1,fnn")


def test_cli_prints_table_for_mixed_ensemble(tmp_path, capsys):
    schema = SCHEMAS["with_dense"]
    schema.save(tmp_path)
    mixed = ["fnn", "dcnv2", "wukong", "rankmixer"]
    assert all(n in MODELS for n in mixed), sorted(MODELS)  # a renamed model fails here, not silently drops
    members = ";".join(small_spec(n) for n in mixed)
    rc = budget.main(["--schema", str(tmp_path / "meta.json"), "--members", members,
                      "--batch-size", "32", "--repeats", "2", "--warmup", "1",
                      "--match", "mlp_width", "--base", small_spec(mixed[0])])
    out = capsys.readouterr().out
    assert rc == 0, out
    rows = [l for l in out.splitlines() if l.startswith("| ")]
    assert len(rows) == 1 + len(mixed) + 1  # header, members, total
    assert rows[-1].startswith("| **total** |")
    assert all(f"m{i}_{n}" in out for i, n in enumerate(mixed))
    assert "FLOP-matched single model" in out and "% off" in out
    assert float(rows[-1].rsplit("|", 2)[1]) > 0  # the ensemble's measured latency


def test_cli_bad_input_is_one_line(tmp_path, capsys):
    SCHEMAS["with_dense"].save(tmp_path)
    assert budget.main(["--schema", str(tmp_path), "--members", "fnn,nosuchmodel", "--no-latency"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "nosuchmodel" in err and "\n" not in err
    assert budget.main(["--schema", str(tmp_path / "missing"), "--members", "fnn"]) == 2
    assert "no such file" in capsys.readouterr().err
