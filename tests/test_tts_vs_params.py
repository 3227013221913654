"""The pure parts of recsys.study (formerly recsys.bench.tts_vs_params): plan, FLOP matching,
configs, scoring, table.

No training: results.json / logits_test.pt are written by hand, as train_group.py lays them out.
"""
from __future__ import annotations

import dataclasses
import json
import tomllib
from pathlib import Path

import pytest
import torch

from recsys import study as tts
from recsys.budget import spec_flops
from recsys.config import config_from_dict
from recsys.eval.metrics import auc_score, logloss_score
from tests.toy_data import toy_schema

BASE = "dcnv2:embedding_dim=4,mlp=16-8,cross_layers=2"


@pytest.fixture(scope="module")
def schema():
    return toy_schema(num_fields=6, vocab=20)


@pytest.fixture(scope="module")
def plan(schema):
    return tts.build_plan(BASE, schema, ms=(1, 2, 4), ens_seeds=8, seeds=2,
                          knobs=("mlp_width", "cross_layers", "seed"), hetero=("fnn:embedding_dim=4,mlp=16-8",))


def test_set_fields_is_canonical():
    assert tts.set_fields("dcnv2:seed=3,embedding_dim=4", seed=0) == "dcnv2:embedding_dim=4"
    assert tts.spec_field(tts.set_fields(BASE, seed=5), "seed") == 5
    assert tts.spec_field(tts.set_fields(BASE, cross_layers=7), "cross_layers") == 7


def test_match_budget_width_and_depth_land_within_tolerance(schema):
    target = 2 * spec_flops(BASE, schema)
    wide = tts.match_budget(BASE, "mlp_width", target, schema)
    assert wide.rel_error <= 0.05 and tts.spec_field(wide.spec, "cross_layers") == 2
    assert tts.spec_field(wide.spec, "mlp")[0] > 16
    deep = tts.match_budget(BASE, "cross_layers", target, schema)
    assert abs(spec_flops(deep.spec, schema) - target) / target <= 0.05
    assert tts.spec_field(deep.spec, "cross_layers") > 2  # depth carries the added compute
    # the fallback picks the largest depth under the budget, then the MLP width fills the rest
    if deep.knob == "cross_layers+mlp_width":
        over = tts.set_fields(BASE, cross_layers=tts.spec_field(deep.spec, "cross_layers") + 1)
        assert spec_flops(over, schema) > target
    with pytest.raises(ValueError):
        tts.match_budget(BASE, "mlp_width", target, schema, tol=-1.0)


def test_match_budget_embedding_dim_steps_by_four(schema):
    # FBGEMM refuses embedding dims that are not multiples of 4, so the knob steps 4 -> 8 -> 12 ...
    target = 4 * spec_flops(BASE, schema)
    wide = tts.match_budget(BASE, "embedding_dim", target, schema)
    dim = tts.spec_field(wide.spec, "embedding_dim")
    assert dim > 4 and dim % 4 == 0
    assert abs(spec_flops(wide.spec, schema) - target) / target <= 0.05
    with pytest.raises(ValueError, match="cannot grow"):  # 8 already overshoots 1.2x
        tts.match_budget(BASE, "embedding_dim", int(1.2 * spec_flops(BASE, schema)), schema)


def test_grow_int_knob_starts_from_what_the_preset_builds_and_names_why_it_stops(schema):
    from recsys.study.plan_specs import grow_int_knob

    # under the preset RankMixer's embedding_dim is 8 on this schema, not our default 16: the
    # first step is 12, which fits 3x the base's FLOPs (16 would not)
    base = "rankmixer:preset=tts4ctr,mlp=64-32"
    assert tts.spec_field(base, "embedding_dim") == 16
    grown = grow_int_knob(base, "embedding_dim", 3 * spec_flops(base, schema), schema, step=4)
    assert tts.spec_field(grown, "embedding_dim") == 12
    # a knob that adds no compute is worded as such, not as over budget
    with pytest.raises(tts.PlanError, match="adds no compute") as e:
        grow_int_knob(BASE, "seed", 10 * spec_flops(BASE, schema), schema)
    assert "exceeding" not in str(e.value)
    with pytest.raises(tts.PlanError, match="cannot grow by 1 without exceeding") as e:
        grow_int_knob(BASE, "cross_layers", spec_flops(BASE, schema), schema)
    assert "adds no compute" not in str(e.value)


def test_build_plan_runs_and_arms(schema, plan):
    runs, arms, notes = plan
    assert len(notes) == 2 and all("'seed' does not change FLOPs" in n for n in notes)  # skipped, not fatal
    assert [r.name for r in runs] == ["tts_indep", "tts_params", "tts_joint"]
    indep, params, joint = runs
    assert len(indep.members) == 8 + 1 and indep.groups == [[i] for i in range(9)]  # all independent
    seeds = [tts.spec_field(s, "seed") for s in indep.members]
    assert len(set(seeds)) == len(seeds)
    ens = {a.m: a for a in arms if a.kind == "ensemble"}
    assert [len(ens[m].replicas) for m in (1, 2, 4)] == [8, 4, 2]
    for a in ens.values():  # replicas are disjoint
        flat = [i for r in a.replicas for i in r]
        assert len(flat) == len(set(flat)) and all(len(r) == a.m for r in a.replicas)
    hetero = next(a for a in arms if a.kind == "hetero")
    assert hetero.replicas == [[0, 8]] and hetero.specs[1].startswith("fnn")
    base_flops = spec_flops(BASE, schema)
    scaled = [a for a in arms if a.kind in ("mlp_width", "cross_layers")]
    assert sorted((a.kind, a.budget_m) for a in scaled) == [("cross_layers", 2), ("cross_layers", 4),
                                                          ("mlp_width", 2), ("mlp_width", 4)]
    for a in scaled:
        assert a.target_flops == a.budget_m * base_flops and len(a.replicas) == 2
        assert abs(spec_flops(a.specs[0], schema) - a.target_flops) / a.target_flops <= 0.05
        assert all(len(r) == 1 and r[0] < len(params.members) for r in a.replicas)
    assert joint.groups == [[0, 1, 2, 3], [4, 5, 6, 7]]
    assert joint.members == indep.members[:8]  # same initializations as the independent members
    with pytest.raises(ValueError, match="ens-seeds"):
        tts.build_plan(BASE, schema, ms=(1, 4), ens_seeds=2)


def test_config_toml_is_a_valid_experiment_config(plan):
    runs, _, _ = plan
    settings = tts.TrainSettings(data_dir="data/x", epochs=3, patience=1, embedding_lr=0.05)
    for run in runs:
        raw = tomllib.loads(tts.config_toml(run, settings))
        cfg = config_from_dict(raw, source=run.name, check_data=False)
        assert cfg.name == run.name and cfg.members == run.members and cfg.groups == run.groups
        assert (cfg.train.epochs, cfg.train.patience, cfg.embedding_optimizer.lr) == (3, 1, 0.05)


def _legacy_config_toml(run: tts.RunPlan, s: tts.TrainSettings) -> str:
    """The hand-templated writer recsys/bench/tts_vs_params.py used before the study wrote its
    configs from recsys.config's dataclasses; kept here, frozen, as the "before" to compare with."""
    q = json.dumps
    return "\n".join([
        "# written by recsys/bench/tts_vs_params.py", f"name = {q(run.name)}", f"data_dir = {q(s.data_dir)}",
        "members = [", *[f"  {q(m)}," for m in run.members], "]", f"groups = {json.dumps(run.groups)}",
        f"seed = {s.seed}", f"device = {q(s.device)}", f"log_dir = {q(s.log_dir)}",
        f"checkpoint_dir = {q(s.checkpoint_dir)}", "", "[train]", f"batch_size = {s.batch_size}",
        f"eval_batch_size = {s.eval_batch_size}", f"epochs = {s.epochs}", f"patience = {s.patience}",
        f"max_steps_per_epoch = {s.max_steps_per_epoch}", "log_every = 50", "", "[dense_optimizer]",
        f"lr = {s.dense_lr!r}", "", "[embedding_optimizer]", f"name = {q(s.embedding_optimizer)}",
        f"lr = {s.embedding_lr!r}", "",
    ])


SETTINGS = [
    tts.TrainSettings(),
    tts.TrainSettings(data_dir="data/x", epochs=3, patience=1, embedding_lr=0.05),
    tts.TrainSettings(data_dir='data/"quoted" \\ dir', seed=9, device="auto", epochs=5, patience=0, batch_size=77,
                      eval_batch_size=0, max_steps_per_epoch=3, dense_lr=1e-5, embedding_optimizer="adam",
                      embedding_lr=0.5, log_dir="r2", checkpoint_dir="c2"),
]


@pytest.mark.parametrize("settings", SETTINGS, ids=["defaults", "test", "all_changed"])
def test_generated_configs_train_what_the_template_trained(plan, settings):
    # every run of the plan: the config written from the dataclasses loads to the same
    # ExperimentConfig as the one the old hand-templated writer produced
    runs, _, _ = plan
    for run in runs:
        new, old = tts.config_toml(run, settings), _legacy_config_toml(run, settings)
        assert "written by" in new.splitlines()[0]
        load = lambda text: config_from_dict(tomllib.loads(text), source=run.name, check_data=False)
        assert load(new) == load(old), run.name
        assert load(new) == dataclasses.replace(tts.experiment_config(run, settings), source=run.name)
        assert tts.same_config(new, old)  # --reuse keeps reusing runs whose config the old writer wrote
    changed = dataclasses.replace(settings, epochs=settings.epochs + 1)
    assert not tts.same_config(tts.config_toml(runs[0], changed), tts.config_toml(runs[0], settings))
    assert not tts.same_config("not = [toml", tts.config_toml(runs[0], settings))


def test_config_to_toml_round_trips_every_section():
    from recsys.config import ShardingSection, TopologySection, TrainConfig

    cfg = tts.experiment_config(tts.RunPlan("r", ["fnn:seed=1", "dcnv2"], [[0, 1]]), tts.TrainSettings())
    cfg = dataclasses.replace(cfg, sharding=ShardingSection(sharding_type="row_wise"),
                              topology=TopologySection(hbm_gb=1.5, local_world_size=2),
                              train=TrainConfig(shuffle=False, pipeline=False, eval_interval=7))
    back = config_from_dict(tomllib.loads(tts.config_to_toml(cfg)), source=cfg.source, check_data=False)
    assert back == cfg


def test_plot_leaves_the_matplotlib_backend_alone(tmp_path):
    import matplotlib

    before = matplotlib.get_backend()
    row = tts.Row("ensemble", "x", 1, 1, "s", 1, 1, 100, None, [0.7], [0.5])
    tts.plot_rows([row], tmp_path / "p.png")
    assert matplotlib.get_backend() == before and (tmp_path / "p.png").is_file()


def test_old_module_is_a_shim(capsys):
    from recsys.bench import tts_vs_params as old

    assert old.build_plan is tts.build_plan and old.TrainSettings is tts.TrainSettings
    with pytest.raises(SystemExit) as e:
        old.main(["--help"])
    assert e.value.code == 0
    out, err = capsys.readouterr()
    assert "python -m recsys.study" in err and len(err.strip().splitlines()) == 1
    assert "--plan-only" in out


def test_cli_user_error_is_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the CLI changes into the repository; the fixture changes back
    toy_schema(num_fields=6, vocab=20).save(tmp_path)
    assert tts.main(["--data", str(tmp_path), "--ms", "0", "--plan-only"]) == 2
    assert capsys.readouterr().err.strip() == "tts_vs_params: error: --ms must be positive integers, got [0]"


def _fake_run(log_dir: Path, name: str, logits: torch.Tensor, labels: torch.Tensor,
              groups: list[list[int]], save_logits: bool = True) -> None:
    run = log_dir / name
    run.mkdir(parents=True)
    members = [{"index": i, "name": f"m{i}", "auc": auc_score(logits[:, i], labels),
                "logloss": logloss_score(logits[:, i], labels)} for i in range(logits.shape[1])]
    grp = [{"index": k, "members": g, "auc": 0.5 + 0.01 * k, "logloss": 0.7} for k, g in enumerate(groups)]
    ens = logits.mean(1)
    (run / "results.json").write_text(json.dumps({
        "num_rows": len(labels), "members": members, "groups": grp,
        "ensemble": {"auc": auc_score(ens, labels), "logloss": logloss_score(ens, labels)}}))
    if save_logits:
        torch.save({"member_logits": logits, "labels": labels}, run / "logits_test.pt")


def test_scores_from_fake_results(tmp_path):
    g = torch.Generator().manual_seed(0)
    labels = (torch.rand(400, generator=g) < 0.3).float()
    logits = labels[:, None] * 0.8 + torch.randn(400, 4, generator=g)  # 4 noisy members
    _fake_run(tmp_path, "r", logits, labels, [[0], [1], [2], [3]])
    arm = tts.Arm("ensemble", 2, 2, "r", [[0, 1], [2, 3]], ["x", "x"])
    s = tts.arm_scores(arm, tmp_path)
    merged = logits[:, [2, 3]].mean(1)
    assert s[1].auc == pytest.approx(auc_score(merged, labels))
    assert s[1].logloss == pytest.approx(logloss_score(merged, labels))
    assert s[0].auc > max(auc_score(logits[:, 0], labels), auc_score(logits[:, 1], labels)) - 0.02
    single = tts.arm_scores(tts.Arm("mlp_width", 1, 2, "r", [[3]], ["x"]), tmp_path)[0]
    assert single.auc == pytest.approx(auc_score(logits[:, 3], labels))
    # a group of a joint run is read from results.json, no logits needed
    _fake_run(tmp_path, "j", logits, labels, [[0, 1], [2, 3]], save_logits=False)
    js = tts.arm_scores(tts.Arm("joint", 2, 2, "j", [[0, 1], [2, 3]], ["x", "x"]), tmp_path)
    assert [x.auc for x in js] == [0.5, 0.51]
    with pytest.raises(ValueError, match="logits_test.pt"):
        tts.arm_scores(tts.Arm("ensemble", 3, 3, "j", [[0, 1, 2]], ["x"] * 3), tmp_path)
    with pytest.raises(FileNotFoundError):
        tts.arm_scores(tts.Arm("ensemble", 1, 1, "nope", [[0]], ["x"]), tmp_path)


def test_rows_table_verdict_and_plot(tmp_path):
    spec = "dcnv2:embedding_dim=4,mlp=16-8,cross_layers=2"
    arms = [
        tts.Arm("ensemble", 1, 1, "r", [[0], [1]], [tts.set_fields(spec, seed=1)]),
        tts.Arm("ensemble", 2, 2, "r", [[0, 1]], [tts.set_fields(spec, seed=1), tts.set_fields(spec, seed=2)]),
        tts.Arm("mlp_width", 1, 2, "p", [[0], [1]], ["dcnv2:embedding_dim=4,mlp=40-20,cross_layers=2"],
                target_flops=1000),
    ]
    scores = [[tts.Score(0.70, 0.50), tts.Score(0.72, 0.48)], [tts.Score(0.75, 0.45)],
              [tts.Score(0.74, 0.46), tts.Score(0.76, 0.44)]]
    budgets = [tts.Budget(100, 1000, 500, 1.0), tts.Budget(200, 2000, 1000, 2.0), tts.Budget(400, 1000, 1030, 1.5)]
    rows = tts.build_rows(arms, scores, budgets)
    assert [(r.kind, r.budget_m) for r in rows] == [("ensemble", 1), ("ensemble", 2), ("mlp_width", 2)]
    assert rows[0].auc == pytest.approx(0.71) and rows[0].auc_sd == pytest.approx(0.0141421, rel=1e-4)
    table = tts.table_markdown(rows)
    assert "0.7100 ± 0.0141" in table and "0.7500 |" in table  # n=1: no spread
    assert "2 x dcnv2:embedding_dim=4,mlp=16-8,cross_layers=2" in table
    assert "(+3.0%)" in table  # FLOP-matching error shown
    assert "| 2.06x | single, wider MLP" in table  # budget relative to the M = 1 row
    verdict = tts.verdict_lines(rows)
    assert len(verdict) == 1 and verdict[0].startswith("budget 2x") and "(tie" in verdict[0]
    rows[2].aucs = [0.80, 0.80]
    assert "parameter scaling ahead, beyond the replica spread" in tts.verdict_lines(rows)[0]
    rows[2].aucs = [0.74, 0.755]
    assert "ensemble ahead, within the replica spread" in tts.verdict_lines(rows)[0]
    png = tmp_path / "p.png"
    tts.plot_rows(rows, png)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_budget_counts_and_interleaved_latency(schema):
    one = tts.Arm("ensemble", 1, 1, "r", [[0]], [tts.set_fields(BASE, seed=1)])
    two = tts.Arm("ensemble", 2, 2, "r", [[0, 1]], [tts.set_fields(BASE, seed=1), tts.set_fields(BASE, seed=2)])
    b1, b2 = tts.arm_budget(one, schema), tts.arm_budget(two, schema)
    assert (b2.dense_params, b2.embedding_params, b2.flops) == (2 * b1.dense_params, 2 * b1.embedding_params,
                                                               2 * b1.flops)
    assert b1.embedding_params == 4 * sum(schema.vocab_sizes) and b1.flops == spec_flops(BASE, schema)
    lat = tts.interleaved_latency_ms([tts.arm_modules(one, schema), tts.arm_modules(two, schema)], schema, 64, 3)
    assert len(lat) == 2 and all(x > 0 for x in lat)
