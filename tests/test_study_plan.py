"""The study's arms, recipe, lr sweep, restart and launchers (recsys.study: plan, rivals, sweep,
configs, run, options), on a toy schema; nothing here trains (``--plan-only``, ``--dry-run``
and hand-written run directories, laid out as train_group.py writes them)."""
from __future__ import annotations

import json
import shlex
import tomllib
from pathlib import Path

import numpy as np
import pytest
import torch

from recsys import study as tts
from recsys.budget import spec_flops
from recsys.config import config_from_dict
from recsys.errors import UserError
from recsys.eval.metrics import auc_score
from recsys.study import options as tts_options
from recsys.study.options import build_parser, knobs_from_arg, plan_from_args, settings_from_args
from recsys.study.rivals import MAX_RIVAL_LAYERS
from recsys.study.run import DONE_FILE, pending_runs
from tests.toy_data import toy_schema

BASE = "dcnv2:embedding_dim=4,mlp=16-8,cross_layers=2"


@pytest.fixture(scope="module")
def schema():
    return toy_schema(num_fields=6, vocab=20)


def test_grouped_k_splits_each_replica_into_k_groups(schema):
    runs, arms, _ = tts.build_plan(BASE, schema, ms=(1, 2, 4), ens_seeds=8, knobs=(), hetero=(), groups_k=(1, 2, 4))
    by_name = {r.name: r for r in runs}
    assert sorted(by_name) == ["tts_grouped_k2", "tts_indep", "tts_joint"]  # K = M is the independent run
    assert by_name["tts_joint"].groups == [[0, 1, 2, 3], [4, 5, 6, 7]]
    assert by_name["tts_grouped_k2"].groups == [[0, 1], [2, 3], [4, 5], [6, 7]]
    assert by_name["tts_grouped_k2"].members == by_name["tts_indep"].members[:8]  # same initializations
    grouped = {a.k: a for a in arms if a.kind in ("joint", "grouped", "ensemble") and a.m == 4}
    assert sorted(grouped) == [1, 2, 4] and grouped[2].replicas == [[0, 1, 2, 3], [4, 5, 6, 7]]
    assert grouped[2].label == "homogeneous ensemble (K=2)" and grouped[1].kind == "joint"
    assert all(a.scales_test_time for a in grouped.values())
    runs, _, _ = tts.build_plan(BASE, schema, ms=(1, 4), ens_seeds=4, knobs=(), hetero=(), joint=False)
    assert [r.name for r in runs] == ["tts_indep"]  # --no-joint: no grouped run by default
    with pytest.raises(tts.PlanError, match="divide the largest M"):
        tts.build_plan(BASE, schema, ms=(1, 4), ens_seeds=4, knobs=(), hetero=(), groups_k=(3,))


def test_hetero_all_is_the_papers_eight_models_sized_like_the_base(schema):
    extra = tts.hetero_specs(BASE)
    assert [tts.spec_model(s) for s in extra] == [m for m in tts.HETERO_MODELS if m != "dcnv2"]
    assert all(tts.spec_field(s, "embedding_dim") == 4 for s in extra)
    assert tts.spec_field(extra[0], "mlp") == (16, 8) and tts.spec_field(extra[3], "cross_layers") == 2  # fnn, dcn
    runs, arms, _ = tts.build_plan(BASE, schema, ms=(1, 2), ens_seeds=2, knobs=(), hetero=extra, joint=False,
                                   hetero_seeds=2)
    (het,) = [a for a in arms if a.kind == "hetero"]
    members = runs[0].members
    assert het.m == 8 and het.replicas == [[0, *range(2, 9)], [1, *range(9, 16)]]
    assert sorted({tts.spec_model(members[i]) for i in het.replicas[1]}) == sorted(tts.HETERO_MODELS)
    seeds = [tts.spec_field(s, "seed") for s in members]
    assert len(set(seeds)) == len(seeds)
    with pytest.raises(tts.PlanError, match="hetero-seeds"):
        tts.build_plan(BASE, schema, ms=(1, 2), ens_seeds=2, hetero=extra, hetero_seeds=3)


@pytest.mark.parametrize("kinds", [("multiembed", "dmoe"), ("wukong", "rankmixer")])
def test_rivals_are_flop_matched(schema, kinds):
    target = 2 * spec_flops(BASE, schema)
    _, arms, notes = tts.build_plan(BASE, schema, ms=(1, 2), ens_seeds=2, seeds=1, knobs=kinds, hetero=(),
                                    joint=False)
    assert notes == []
    rivals = {a.kind: a for a in arms if not a.scales_test_time}
    assert sorted(rivals) == sorted(kinds)
    for kind, a in rivals.items():
        assert tts.spec_model(a.specs[0]) == kind and a.budget == "flops" and a.target_flops == target
        assert abs(spec_flops(a.specs[0], schema) - target) / target <= 0.05, a.specs[0]
        assert tts.spec_field(a.specs[0], "embedding_dim") == 4
        if kind == "multiembed":  # more embedding sets carry the FLOPs (the model's default is 2)
            assert tts.spec_field(a.specs[0], "num_embeddings_sets") >= 2
        if kind in ("wukong", "rankmixer"):
            assert tts.spec_field(a.specs[0], "layers") in range(1, MAX_RIVAL_LAYERS + 1)
        if kind == "rankmixer":  # one layer adds little compute here: depth grows before the width
            assert tts.spec_field(a.specs[0], "layers") > 1


def test_knobs_all():
    assert knobs_from_arg("all") == list(tts.ALL_KNOBS) and set(tts.ALL_KNOBS) == {*tts.DEFAULT_KNOBS, *tts.RIVALS}
    assert knobs_from_arg("dmoe, all")[:2] == ["dmoe", "mlp_width"] and len(knobs_from_arg("dmoe,all")) == 7
    assert knobs_from_arg("") == [] and all(k in tts.KIND_LABELS for k in tts.ALL_KNOBS)


def _write_run(log_dir: Path, name: str, val_logits: torch.Tensor, labels: torch.Tensor) -> None:
    d = log_dir / name
    d.mkdir(parents=True)
    members = [{"index": i, "name": f"m{i}", "auc": auc_score(val_logits[:, i], labels), "logloss": 0.5}
               for i in range(val_logits.shape[1])]
    merged = val_logits.mean(1)
    ensemble = {"auc": auc_score(merged, labels), "logloss": 0.5}
    (d / "val_results.json").write_text(json.dumps({"members": members, "groups": [], "ensemble": ensemble}))
    torch.save({"member_logits": val_logits, "labels": labels}, d / "logits_val.pt")


def test_lr_sweep_keeps_each_arm_at_its_best_val_auc(schema, tmp_path):
    runs, arms, _ = tts.build_plan(BASE, schema, ms=(1, 2), ens_seeds=2, seeds=1, knobs=("mlp_width",), hetero=(),
                                   joint=False)
    runs2, arms2 = tts.expand_lrs(runs, arms, [1e-3, 3e-3])
    assert [(r.name, r.lr) for r in runs2] == [("tts_indep_lr0.001", 1e-3), ("tts_params_lr0.001", 1e-3),
                                               ("tts_indep_lr0.003", 3e-3), ("tts_params_lr0.003", 3e-3)]
    assert len(arms2) == 2 * len(arms) and {a.lr for a in arms2} == {1e-3, 3e-3}
    cfg = tomllib.loads(tts.config_toml(runs2[2], tts.TrainSettings()))
    assert cfg["dense_optimizer"]["lr"] == 3e-3 and cfg["embedding_optimizer"]["lr"] == 0.02
    g = torch.Generator().manual_seed(0)
    labels = (torch.rand(300, generator=g) < 0.4).float()
    good = labels[:, None] * 2 + torch.randn(300, 2, generator=g)
    bad = labels[:, None] * 0.2 + torch.randn(300, 2, generator=g)
    _write_run(tmp_path, "tts_indep_lr0.001", good, labels)  # the ensembles are best at 1e-3
    _write_run(tmp_path, "tts_indep_lr0.003", bad, labels)
    _write_run(tmp_path, "tts_params_lr0.001", bad[:, :1], labels)  # the wider MLP at 3e-3
    _write_run(tmp_path, "tts_params_lr0.003", good[:, :1], labels)
    best, lines = tts.best_lr_arms(arms2, tmp_path)
    assert [(a.kind, a.m, a.lr) for a in best] == [("ensemble", 1, 1e-3), ("ensemble", 2, 1e-3),
                                                   ("mlp_width", 1, 3e-3)]
    assert len(lines) == 3 and "lr 0.003 (val AUC 0.001: " in lines[2]
    merged = good.mean(1)  # a 2-member replica is scored on its mean logit, as the test split is
    assert tts.val_auc(best[1], tmp_path) == pytest.approx(auc_score(merged, labels))
    assert tts.expand_lrs(runs, arms, []) == (runs, arms)
    with pytest.raises(tts.PlanError):
        tts.expand_lrs(runs, arms, [0.0])
    (tmp_path / "tts_indep_lr0.001" / "logits_val.pt").unlink()  # a 2-member replica needs the val logits
    with pytest.raises(tts.LogitsMissing, match="logits_val.pt is missing"):
        tts.val_auc(best[1], tmp_path)
    singles = (auc_score(good[:, 0], labels) + auc_score(good[:, 1], labels)) / 2  # M=1: replicas [0], [1]
    assert tts.val_auc(best[0], tmp_path) == pytest.approx(singles)  # single members: read from val_results.json


def _args(*argv: str):
    return build_parser().parse_args(list(argv))


def test_default_recipe_trains_to_convergence_and_the_preset_supplies_its_own():
    ours = settings_from_args(_args())
    assert (ours.epochs, ours.patience, ours.batch_size, ours.dense_lr, ours.preset) == (100, 2, 1024, 1e-3, "")
    run = tts.RunPlan("r", ["dcnv2:seed=1"], [[0]])
    pre = settings_from_args(_args("--preset", "tts4ctr", "--dense-lr", "1e-3"))
    assert pre.from_preset == ("batch_size", "embedding_optimizer", "embedding_lr")
    text = tts.config_toml(run, pre)
    raw = tomllib.loads(text)
    assert raw["preset"] == "tts4ctr" and raw["dense_optimizer"]["lr"] == 1e-3  # given: written, even at default
    assert "batch_size" not in raw["train"] and "embedding_optimizer" not in raw  # left to the preset
    assert (raw["train"]["epochs"], raw["train"]["patience"]) == (100, 2)  # the study's, not the preset's 20 / 1
    cfg = config_from_dict(raw, source="r", check_data=False)
    assert (cfg.train.batch_size, cfg.dense_optimizer.lr, cfg.embedding_optimizer.name) == (4096, 1e-3, "adam")
    assert cfg.train.epochs == 100 and cfg.members == ["dcnv2:seed=1,preset=tts4ctr"]
    # a swept lr under the preset is its one lr for all parameters, tables included
    swept = config_from_dict(tomllib.loads(tts.config_toml(tts.RunPlan("r", run.members, run.groups, lr=3e-4),
                                                           settings_from_args(_args("--preset", "tts4ctr")))),
                             source="r", check_data=False)
    assert (swept.dense_optimizer.lr, swept.embedding_optimizer.lr) == (3e-4, 3e-4)
    with pytest.raises(ValueError, match="from_preset"):
        tts.TrainSettings(from_preset=("batch_size",))


def test_preset_with_another_embedding_optimizer_gets_that_optimizers_lr():
    """--preset tts4ctr --embedding-optimizer rowwise_adagrad: Adagrad's own lr (0.02), not Adam's 1e-4."""
    from recsys.config.schema import AUTO_EMBEDDING_LR

    def emb(*argv: str, lr: float | None = None) -> tuple[str, float]:
        s = settings_from_args(_args("--preset", "tts4ctr", *argv))
        raw = tomllib.loads(tts.config_toml(tts.RunPlan("r", ["fnn:seed=1"], [[0]], lr=lr), s))
        e = config_from_dict(raw, source="r", check_data=False).embedding_optimizer.resolve("cpu")
        return e.name, e.lr

    assert emb("--embedding-optimizer", "rowwise_adagrad") == ("rowwise_adagrad", AUTO_EMBEDDING_LR["rowwise_adagrad"])
    # a swept lr is the preset's one lr for Adam; it does not go to Adagrad's tables
    assert emb("--embedding-optimizer", "rowwise_adagrad", lr=3e-4) == ("rowwise_adagrad", 0.02)
    assert emb("--embedding-optimizer", "rowwise_adagrad", "--embedding-lr", "0.05") == ("rowwise_adagrad", 0.05)
    assert emb("--embedding-optimizer", "adam") == ("adam", 1e-4)  # the preset's own optimizer: its lr
    s = settings_from_args(_args("--preset", "tts4ctr", "--embedding-optimizer", "rowwise_adagrad"))
    assert "embedding_lr" not in s.from_preset
    assert "embedding lr 0.02" in tts_options.recipe_summary(s)


def test_plan_from_args_expands_all_and_sets_the_preset_on_members(schema):
    runs, arms, notes = plan_from_args(_args("--ms", "1", "2", "--ens-seeds", "2", "--seeds", "1", "--knobs",
                                             "mlp_width", "--hetero-all", "--groups-k", "1", "--lr-sweep", "1e-3",
                                             "3e-3", "--preset", "tts4ctr", "--base", BASE), schema)
    assert [r.name for r in runs] == [f"tts_{n}_lr{lr}" for lr in ("0.001", "0.003") for n in ("indep", "params", "joint")]
    assert all("preset=tts4ctr" in s for r in runs for s in r.members)
    assert {a.kind for a in arms} == {"ensemble", "hetero", "mlp_width", "joint"} and notes == []
    assert len(arms) == 2 * 5  # M = 1, 2, hetero, one wider MLP, joint; at each lr


def _toy_data(d: Path, rows: dict[str, int], vocab: int = 20) -> Path:
    """A data dir as the converter writes it: meta.json (with the split row counts) and npy files."""
    from recsys.data.schema import Schema

    base = toy_schema(num_fields=6, vocab=vocab)
    schema = Schema(base.dataset, base.sparse_features, base.dense_features, splits=dict(rows))
    d.mkdir(parents=True, exist_ok=True)
    schema.save(d)
    for split, n in rows.items():
        np.save(d / f"{split}_dense.npy", np.zeros((n, 0), np.float32))
        np.save(d / f"{split}_sparse.npy", np.zeros((n, schema.num_sparse), np.int32))
        np.save(d / f"{split}_labels.npy", np.zeros(n, np.float32))
    return d


def _finished(settings, run: "tts.RunPlan", config=None, data="now") -> None:
    """runs/<name> as a finished run leaves it: results.json and study_run.json."""
    from recsys.study.run import data_fingerprint

    text = tts.config_toml(config or run, settings)
    d = Path(settings.log_dir) / run.name
    d.mkdir(parents=True, exist_ok=True)
    (d / "results.json").write_text("{}")
    done = {"config": text, "seconds": 12.5}
    if data == "now":
        done["data"] = data_fingerprint(text)
    elif data is not None:
        done["data"] = data
    (d / DONE_FILE).write_text(json.dumps(done))


ROWS = {"train": 40, "val": 20, "test": 20}


def test_restart_skips_done_runs_and_retrains_killed_ones(tmp_path, capsys):
    data = _toy_data(tmp_path / "data", ROWS)
    settings = tts.TrainSettings(data_dir=str(data), log_dir=str(tmp_path / "runs"), epochs=1)
    work = tmp_path / "work"
    work.mkdir()
    runs = [tts.RunPlan(n, [f"fnn:seed={i}"], [[0]]) for i, n in
            enumerate(["done", "killed", "changed", "old", "older"], 1)]
    _finished(settings, runs[0])
    _finished(settings, runs[1])
    (tmp_path / "runs" / "killed" / "results.json").unlink()  # train_group.py set it aside and died
    _finished(settings, runs[2], config=tts.RunPlan("changed", ["fnn:seed=9"], [[0]]))
    _finished(settings, runs[3], data=None)  # a study_run.json from before data fingerprints
    (tmp_path / "runs" / "older").mkdir()  # a run from before study_run.json
    (tmp_path / "runs" / "older" / "results.json").write_text("{}")
    (work / "older.toml").write_text(tts.config_toml(runs[4], settings))
    todo, done = pending_runs(runs, settings, retrain=False)
    assert [r.name for r in todo] == ["killed", "changed", "old", "older"] and done == {"done": 12.5}
    out = capsys.readouterr().out
    assert out.count("\n") == 1 and "retraining old:" in out and "from before data fingerprints" in out
    assert pending_runs(runs, settings, retrain=True)[0] == runs


def test_restart_retrains_when_the_data_or_what_a_preset_builds_changed(tmp_path, capsys):
    """The config names only a path: the same path holding other data is not the same run."""
    from recsys.study.run import data_fingerprint

    data = _toy_data(tmp_path / "data", ROWS)
    settings = tts.TrainSettings(data_dir=str(data), log_dir=str(tmp_path / "runs"), epochs=1)
    run = tts.RunPlan("r", ["fnn:seed=1,preset=tts4ctr"], [[0]])
    _finished(settings, run)
    assert pending_runs([run], settings, retrain=False)[1] == {"r": 12.5}
    fp = data_fingerprint(tts.config_toml(run, settings))
    assert fp is not None and fp["rows"] == ROWS and len(fp["meta_sha256"]) == 64
    assert fp["members"][0].startswith("fnn:seed=1,preset=tts4ctr,") and "embedding_init" in fp["members"][0]
    # what the preset builds changed since (e.g. a new version of the preset): retrained
    _finished(settings, run, data={**fp, "members": ["fnn:seed=1,preset=tts4ctr,mlp=8"]})
    assert pending_runs([run], settings, retrain=False)[0] == [run]
    assert "retraining r: its data" in capsys.readouterr().out
    _finished(settings, run)
    # the data converted again in place: more rows, the same vocabulary
    _toy_data(data, {**ROWS, "train": 41})
    assert pending_runs([run], settings, retrain=False)[0] == [run]
    # other vocabulary sizes, the same rows
    _toy_data(data, ROWS)
    _finished(settings, run)
    _toy_data(data, ROWS, vocab=21)
    assert pending_runs([run], settings, retrain=False)[0] == [run]
    # the data gone: not done (training will name what is missing)
    _finished(settings, run)
    for f in data.iterdir():
        f.unlink()
    assert pending_runs([run], settings, retrain=False)[0] == [run]


def test_torchx_commands_and_dry_run(tmp_path, capsys, monkeypatch):
    run = tts.RunPlan("tts_indep", ["fnn:seed=1"], [[0]])
    cmd = tts.torchx_command(run, Path("w/tts_indep.toml"), tts.Launcher(
        "torchx", nproc=2, scheduler="slurm", scheduler_args="partition=gpu", component_args="--gpu 1 --cpu 8"))
    assert cmd[1:] == ["-m", "torchx.cli.main", "run", "-s", "slurm", "--wait", "-cfg", "partition=gpu",
                       str(tts.ROOT / "torchx_components/recsys.py") + ":grouped_train", "--config", "w/tts_indep.toml",
                       "--nproc_per_node", "2", "--name", "recsys_study/tts_indep", "--gpu", "1", "--cpu", "8"]
    assert tts.launch_command(run, Path("c.toml"), tts.Launcher())[-2:] == ["--config", "c.toml"]
    with pytest.raises(UserError):
        tts.Launcher("ray")
    monkeypatch.chdir(tmp_path)  # the CLI changes into the repository; the fixture changes back
    toy_schema(num_fields=6, vocab=20).save(tmp_path / "data")
    work = tmp_path / "work"
    assert tts.main(["--data", str(tmp_path / "data"), "--base", BASE, "--ms", "1", "2", "--ens-seeds", "2",
                     "--knobs", "mlp_width", "--no-hetero", "--launcher", "torchx", "--dry-run", "--work-dir",
                     str(work), "--log-dir", str(tmp_path / "runs")]) == 0
    lines = [shlex.split(x) for x in capsys.readouterr().out.splitlines() if "torchx.cli.main" in x]
    assert [x[x.index("--name") + 1] for x in lines] == ["recsys_study/tts_indep", "recsys_study/tts_params",
                                                         "recsys_study/tts_joint"]
    for x in lines:  # each command's config is written and loads
        cfg = config_from_dict(tomllib.loads(Path(x[x.index("--config") + 1]).read_text()), check_data=False)
        assert cfg.train.patience == 2 and cfg.log_dir == str(tmp_path / "runs")


def test_relative_paths_are_the_callers_and_dry_run_commands_run_from_anywhere(tmp_path, capsys, monkeypatch):
    """--data/--work-dir/--log-dir/--checkpoint-dir/--plot given relative from another directory
    name that directory's files, not the repository's (the study changes into the repository)."""
    monkeypatch.chdir(tmp_path)  # the fixture changes back after the CLI's chdir
    _toy_data(tmp_path / "mydata", ROWS)
    rel = ["--data", "mydata", "--work-dir", "w", "--log-dir", "r", "--checkpoint-dir", "c", "--plot", "p.png"]
    args = build_parser().parse_args(rel)
    assert [args.data, args.work_dir, args.log_dir, args.checkpoint_dir, args.plot] == [
        str(tmp_path / x) for x in ("mydata", "w", "r", "c", "p.png")]
    common = [*rel, "--base", BASE, "--ms", "1", "--ens-seeds", "1", "--knobs", "mlp_width", "--no-hetero",
              "--no-joint"]
    assert tts.main([*common, "--plan-only"]) == 0  # the data is found: it is ./mydata, not the repository's
    capsys.readouterr()
    monkeypatch.chdir(tmp_path)  # a new command, from the same directory
    assert tts.main([*common, "--launcher", "torchx", "--dry-run"]) == 0
    lines = [x for x in capsys.readouterr().out.splitlines() if "torchx.cli.main" in x]
    assert lines and (tmp_path / "w").is_dir() and not (tts.ROOT / "w").exists()
    for line in lines:
        assert line.startswith(f"cd {shlex.quote(str(tts.ROOT))} && ")
        x = shlex.split(line.partition(" && ")[2])
        config = Path(x[x.index("--config") + 1])
        component = x[x.index("--wait") + 1]
        assert config.is_absolute() and config.parent == tmp_path / "w" and Path(component.partition(":")[0]).is_file()
        cfg = config_from_dict(tomllib.loads(config.read_text()), check_data=False)
        assert (cfg.data_dir, cfg.log_dir, cfg.checkpoint_dir) == tuple(str(tmp_path / d) for d in ("mydata", "r", "c"))
    # the defaults stay the repository's, written as before (so runs done with them still count)
    d = build_parser().parse_args([])
    assert (d.data, d.log_dir, d.work_dir, d.plot) == ("data/demo/criteo", "runs", "runs/tts_vs_params",
                                                       "docs/tts_vs_params.png")
    assert settings_from_args(d).data_dir == "data/demo/criteo"


def test_hetero_wukong_scales_its_fm_mlp_with_the_base_at_the_official_ratio() -> None:
    from recsys.study.plan_specs import spec_field
    from recsys.study.rivals import hetero_specs

    def wukong(base: str) -> str:
        return next(s for s in hetero_specs(base) if s.startswith("wukong"))

    assert spec_field(wukong("dcnv2:mlp=1024-512-256"), "fmb_mlp") == (512, 512)  # the official pair
    assert spec_field(wukong("dcnv2:embedding_dim=8,mlp=64-32,cross_layers=2"), "fmb_mlp") == (32, 32)
    assert "fmb_mlp" not in wukong("dcnv2:preset=tts4ctr")  # the preset's own 512-512 applies
