"""The study's scoring and report beyond AUC: paired DeLong tests on the same test rows,
member diversity, NE and calibration per row, the two latencies and the equal-latency rival.

Pure functions are tested on constructed tensors; the CLI's scoring path runs on runs written
by hand as train_group.py lays them out (their ``study_run.json`` says they are done), so no model is trained.
"""
from __future__ import annotations

import dataclasses

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from recsys.eval.metrics import Metrics, logloss_score
from recsys.study import Arm, Budget, Score, build_plan, build_rows, config_toml, table_markdown, verdict_lines
from recsys.study.cli import build_parser, main, settings_from_args
from recsys.study.cost import measure_budgets
from recsys.study.diversity import ambiguity, diversity, logit_correlation, prob_ambiguity
from recsys.study.paired import ALPHA, best_within_latency, gain_threshold, paired_tests
from recsys.study.report import latency_verdict_lines, plot_diversity
from recsys.study.run import DONE_FILE, data_fingerprint
from recsys.study.score import ArmLogits, TestRowsDiffer, arm_scores, load_test_logits
from tests.toy_data import toy_schema

BASE = "dcnv2:embedding_dim=4,mlp=16-8,cross_layers=2"


def _signal(n: int = 4000, m: int = 4, noise: float = 1.5, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Labels [n] and m members' logits [n, m]: a shared true logit plus independent noise each."""
    g = torch.Generator().manual_seed(seed)
    truth = 1.5 * torch.randn(n, generator=g)
    labels = (torch.rand(n, generator=g) < torch.sigmoid(truth)).float()
    return truth[:, None] + noise * torch.randn(n, m, generator=g), labels


# --- diversity ------------------------------------------------------------------------------

def test_identical_members_have_correlation_one_and_no_ambiguity():
    x, y = _signal(m=1)
    same = x.repeat(1, 3)
    d = diversity(same, y)
    assert d.logit_correlation == pytest.approx(1.0)
    assert d.ambiguity == pytest.approx(0.0, abs=1e-12) and d.prob_ambiguity == pytest.approx(0.0, abs=1e-12)
    assert d.auc_gain_over_mean == pytest.approx(0.0) and d.auc_gain_over_best == pytest.approx(0.0)
    assert math.isnan(logit_correlation(x))  # one member: no pair


def test_independent_noise_lowers_correlation_and_the_ensemble_gains():
    x, y = _signal(m=4, noise=1.5)
    d = diversity(x, y)
    # each member is truth + noise of the same variance: corr = var(truth) / (var(truth) + var(noise)) ~ 0.5
    assert 0.4 < d.logit_correlation < 0.6
    assert d.auc_gain_over_mean > 0.01 and d.auc_gain_over_best > 0.0
    assert d.ambiguity > 0.0 and d.prob_ambiguity > 0.0
    # less noise, less diversity, less to gain
    quiet = diversity(*_signal(m=4, noise=0.3))
    assert quiet.logit_correlation > d.logit_correlation and quiet.ambiguity < d.ambiguity
    assert quiet.auc_gain_over_mean < d.auc_gain_over_mean


def test_ambiguity_is_the_logloss_gap_and_needs_no_labels():
    x, y = _signal(n=500, m=3)
    gap = np.mean([logloss_score(x[:, i], y) for i in range(3)]) - logloss_score(x.double().mean(1), y)
    assert ambiguity(x) == pytest.approx(gap, rel=1e-9)  # the label term cancels ...
    assert diversity(x, 1 - y).ambiguity == pytest.approx(ambiguity(x), rel=1e-12)  # ... so labels do not matter
    d = diversity(x, y)
    assert d.mean_member_logloss - d.ensemble_logloss == pytest.approx(d.ambiguity, rel=1e-9)
    # the probability-space gap does depend on the labels, and is >= 0 (convexity in p) for any of them
    flipped = prob_ambiguity(x, 1 - y)
    assert flipped != pytest.approx(prob_ambiguity(x, y)) and flipped >= 0.0
    # Jensen holds per row, so the gaps stay >= 0 for any logits at all
    g = torch.Generator().manual_seed(3)
    wild = 20 * torch.randn(64, 5, generator=g)
    assert ambiguity(wild) >= 0.0 and prob_ambiguity(wild, torch.rand(64, generator=g) < 0.5) >= 0.0
    assert ambiguity(np.array([[-1.0, 1.0]])) == pytest.approx(math.log1p(math.e) - 0.5 - math.log(2.0))
    with pytest.raises(ValueError, match="shape"):
        diversity(torch.zeros(5), torch.zeros(5))


# --- paired tests ---------------------------------------------------------------------------

def test_paired_tests_replica_by_replica():
    x, y = _signal(m=8)
    single = ArmLogits(y, [x[:, [0]], x[:, [1]]])
    ens = ArmLogits(y, [x[:, :4], x[:, 4:]])
    c = paired_tests(ens, single, "base")
    assert c is not None and len(c.tests) == 2 and c.against == "base"
    t = c.first
    assert t.diff > gain_threshold() and t.p < ALPHA and t.passes and t.decisive
    assert t.auc_a == pytest.approx(Metrics.of(x[:, :4].mean(1), y).auc)
    back = c.flipped("ens").first
    assert back.diff == -t.diff and back.p == t.p and not back.passes and back.decisive
    assert "2 of 2 replica pairs pass" in c.summary() and "significant, clears" in c.summary()
    same = paired_tests(single, single)
    assert same is not None and same.first.p == 1.0 and not same.first.significant
    with pytest.raises(ValueError, match="different test labels"):
        paired_tests(ens, ArmLogits(1 - y, single.replicas))
    one_class = ArmLogits(torch.ones(10), [torch.randn(10, 1)])
    assert paired_tests(one_class, one_class) is None


def test_best_within_latency_rule():
    cands = [(0, 1.0, 0.70), (1, 1.9, 0.72), (2, 2.5, 0.80), (3, None, 0.99), (4, 1.9, 0.72)]
    assert best_within_latency(2.0, cands) == 1  # 2 too slow, 3 not measured; tie 1/4 at equal latency
    assert best_within_latency(1.0, cands) == 0  # <=, not <
    assert best_within_latency(0.5, cands) is None
    assert best_within_latency(3.0, [(0, 1.0, 0.7), (1, 0.9, 0.7)]) == 1  # tie on AUC: the faster


# --- scoring from runs on disk --------------------------------------------------------------

def _write_run(log_dir: Path, name: str, logits: torch.Tensor, labels: torch.Tensor, groups: list[list[int]]) -> None:
    """results.json (with NE and calibration, as the evaluator writes them) and logits_test.pt."""
    run = log_dir / name
    run.mkdir(parents=True, exist_ok=True)
    js = lambda z: Metrics.of(z, labels).__dict__  # noqa: E731
    (run / "results.json").write_text(json.dumps({
        "num_rows": len(labels), "members": [js(logits[:, i]) for i in range(logits.shape[1])],
        "groups": [{"members": g, **js(logits[:, g].mean(1))} for g in groups],
        "ensemble": js(logits.mean(1))}))
    torch.save({"member_logits": logits, "labels": labels}, run / "logits_test.pt")


def test_scores_carry_ne_and_calibration(tmp_path):
    x, y = _signal(n=600, m=4)
    _write_run(tmp_path, "r", x, y, [[i] for i in range(4)])
    s = arm_scores(Arm("ensemble", 2, 2, "r", [[0, 1], [2, 3]], ["x", "x"]), tmp_path)
    want = Metrics.of(x[:, [2, 3]].double().mean(1), y)
    assert (s[1].ne, s[1].calibration) == (pytest.approx(want.ne), pytest.approx(want.calibration))
    single = arm_scores(Arm("mlp_width", 1, 2, "r", [[3]], ["x"]), tmp_path)[0]  # read from results.json
    assert single.ne == pytest.approx(Metrics.of(x[:, 3], y).ne) and not math.isnan(single.calibration)
    assert math.isnan(Score.of_json({"auc": 0.7, "logloss": 0.5}).ne)  # a results.json from before NE


def test_scores_and_paired_logits_read_each_run_once(tmp_path):
    x, y = _signal(n=300, m=4)
    _write_run(tmp_path, "r", x, y, [[i] for i in range(4)])
    arms = [Arm("ensemble", 2, 2, "r", [[0, 1], [2, 3]], ["x", "x"]), Arm("ensemble", 4, 4, "r", [[0, 1, 2, 3]], ["x"] * 4)]
    cache: dict = {}
    scores = [arm_scores(a, tmp_path, cache) for a in arms]
    (tmp_path / "r" / "logits_test.pt").unlink()  # from here on only the cache holds it
    got = load_test_logits(arms, tmp_path, cache)
    assert list(cache) == ["r"] and got[0] is not None and torch.equal(got[0].merged(1), x[:, 2:].double().mean(1))
    assert scores[0][1].auc == pytest.approx(Metrics.of(x[:, 2:].double().mean(1), y).auc)
    assert load_test_logits(arms, tmp_path) == [None, None]  # without the cache the file is read (and gone)


def test_load_test_logits_refuses_other_test_rows(tmp_path):
    x, y = _signal(n=300, m=2)
    _write_run(tmp_path, "a", x, y, [[0], [1]])
    _write_run(tmp_path, "b", x, y, [[0], [1]])
    arms = [Arm("ensemble", 1, 1, "a", [[0], [1]], ["x"]), Arm("ensemble", 2, 2, "a", [[1, 0]], ["x", "x"]),
            Arm("mlp_width", 1, 2, "b", [[1]], ["x"])]
    got = load_test_logits(arms, tmp_path)
    assert got[1] is not None and got[1].replicas[0].shape == (300, 2)
    assert torch.equal(got[1].merged(0), x.double().mean(1)) and torch.equal(got[2].replicas[0][:, 0], x[:, 1])
    _write_run(tmp_path, "b", x, 1 - y, [[0], [1]])
    with pytest.raises(TestRowsDiffer, match=r"runs a and b were scored on different test rows \(labels differ at 300 of 300"):
        load_test_logits(arms, tmp_path)
    _write_run(tmp_path, "b", x[:200], y[:200], [[0], [1]])
    with pytest.raises(TestRowsDiffer, match="300 vs 200 test rows"):
        load_test_logits(arms, tmp_path)


def test_rows_with_logits_tables_and_verdicts(tmp_path):
    x, y = _signal(n=3000, m=4)
    big = torch.stack([x[:, 0] * 0.2 + x[:, 1:].mean(1) * 0.8, x[:, 1]], 1)  # a better "wide" single model
    _write_run(tmp_path, "r", x, y, [[i] for i in range(4)])
    _write_run(tmp_path, "p", big, y, [[0], [1]])
    arms = [Arm("ensemble", 1, 1, "r", [[0], [1]], [BASE]), Arm("ensemble", 2, 2, "r", [[0, 1], [2, 3]], [BASE] * 2),
            Arm("mlp_width", 1, 2, "p", [[0], [1]], [BASE], target_flops=1000)]
    budgets = [Budget(100, 1000, 500, 1.0, 1.0), Budget(200, 2000, 1000, 2.1, 1.05), Budget(400, 1000, 1000, 1.5, 1.5)]
    rows = build_rows(arms, [arm_scores(a, tmp_path) for a in arms], budgets, load_test_logits(arms, tmp_path))
    base, ens, wide = rows
    assert base.vs_ensemble is None and base.vs_base is None and not base.diversity  # the reference itself
    assert wide.vs_ensemble is not None and wide.vs_ensemble.against == "homogeneous ensemble (K=M), M=2"
    assert wide.vs_ensemble.first.diff == pytest.approx(wide.aucs[0] - ens.aucs[0])
    assert ens.vs_base is not None and ens.vs_base.first.diff == pytest.approx(ens.aucs[0] - base.aucs[0])
    assert [d.m for d in ens.diversity] == [2, 2] and ens.diversity[1].ensemble_auc == pytest.approx(ens.aucs[1])
    assert ens.ne == pytest.approx(np.mean([Metrics.of(x[:, r].double().mean(1), y).ne for r in ([0, 1], [2, 3])]))
    # equal latency: served in parallel (1.05 ms) only the base (1.0 ms) fits; in one process (2.1 ms) the wide one
    par, one = ens.latency_match
    assert (par.layout, par.rival, one.layout, one.rival) == ("parallel", "base model (M=1)", "1-proc", "single, wider MLP")
    assert one.comparison is not None and one.comparison.first.diff == pytest.approx(ens.aucs[0] - wide.aucs[0])
    table = table_markdown(rows)
    acc, legend, cost, div, _ = table.split("\n\n")
    assert "| NE | calibration | Δ AUC vs homog. ens. (p) | Δ AUC vs M=1 (p) |" in acc.splitlines()[0]
    assert f"| {wide.ne:.4f} | {wide.calibration:.4f} | " in acc and "**bold**" in legend
    assert "| latency 1-proc ms | latency parallel ms |" in cost and "| 2.10 | 1.05 |" in cost
    assert len(div.splitlines()) == 2 + 2 and "| logit corr |" in div
    lines = verdict_lines(rows)
    assert len(lines) == 2 and "paired, ensemble minus single:" in lines[0] and "DeLong p" in lines[0]
    assert lines[1].startswith("M=2 at 2.00x FLOPs: homogeneous ensemble (K=M), M=2 vs the base model (M=1): +")
    lat = latency_verdict_lines(rows)
    assert len(lat) == 2 and lat[0].startswith("equal latency, parallel: homogeneous ensemble (K=M), M=2 at 1.05 ms")
    d = ens.to_dict()
    assert d["vs_base"]["tests"][0]["p"] == ens.vs_base.first.p and "auc_gain_over_best" in d["diversity"][0]
    json.dumps([r.to_dict() for r in rows])  # JSON-able
    png = tmp_path / "d.png"
    assert plot_diversity(rows, png) and png.read_bytes()[:4] == b"\x89PNG"
    assert not plot_diversity(rows[:1], tmp_path / "none.png") and not (tmp_path / "none.png").exists()
    # a joint ensemble's members are not models alone: it is left out of the diversity plot
    joint = [dataclasses.replace(r, kind="joint") if r.diversity else r for r in rows]
    assert not plot_diversity(joint, tmp_path / "joint.png") and not (tmp_path / "joint.png").exists()


def test_parallel_latency_is_the_slowest_member():
    schema = toy_schema(num_fields=6, vocab=20)
    wide = "dcnv2:embedding_dim=4,mlp=256-128,cross_layers=2"
    arms = [Arm("ensemble", 1, 1, "r", [[0]], [f"{BASE},seed=1"]),
            Arm("ensemble", 2, 2, "r", [[0, 1]], [f"{BASE},seed=1", f"{BASE},seed=2"]),
            Arm("hetero", 2, 2, "r", [[0, 2]], [f"{BASE},seed=1", f"{wide},seed=3"]),
            Arm("mlp_width", 1, 2, "p", [[0]], [wide])]
    b = measure_budgets(arms, schema, 64, 3, 1)
    assert b[0].latency_ms == b[0].latency_parallel_ms == b[1].latency_parallel_ms  # one spec, one timing
    assert b[2].latency_parallel_ms == max(b[0].latency_ms, b[3].latency_ms) and b[3].latency_ms is not None
    assert all(x.latency_ms is not None and x.latency_ms > 0 for x in b)
    assert measure_budgets(arms, schema, 0, 3, 1)[1].latency_parallel_ms is None  # latency off


# --- the CLI's scoring path on hand-written runs ----------------------------------------------

def _fake_study(tmp_path: Path, argv: list[str]) -> None:
    """Writes, per run, results and logits on shared labels and the study_run.json a finished run
    leaves (its config and data fingerprint), so the CLI skips training and scores them."""
    schema = toy_schema(num_fields=6, vocab=20)
    schema.save(tmp_path / "data")
    args = build_parser().parse_args(argv)
    runs, _, _ = build_plan(args.base, schema, args.ms, args.ens_seeds, args.seeds, args.knobs.split(","), [],
                            not args.no_joint, args.prefix, args.tol)
    work = Path(args.work_dir)
    work.mkdir(parents=True)
    for k, run in enumerate(runs):
        text = config_toml(run, settings_from_args(args))
        (work / f"{run.name}.toml").write_text(text)
        x, y = _signal(n=800, m=len(run.members), seed=0)
        x = x + 0.1 * k * torch.randn(x.shape, generator=torch.Generator().manual_seed(k))
        _write_run(Path(args.log_dir), run.name, x, y, run.groups)
        done = {"config": text, "seconds": 1.0, "data": data_fingerprint(text)}
        (Path(args.log_dir) / run.name / DONE_FILE).write_text(json.dumps(done))


def test_cli_scores_reused_runs_and_refuses_mixed_test_rows(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # the CLI changes into the repository; the fixture changes back
    argv = ["--data", str(tmp_path / "data"), "--base", BASE, "--ms", "1", "2", "--ens-seeds", "4", "--seeds", "2",
            "--knobs", "mlp_width", "--no-hetero", "--no-joint", "--reuse", "--latency-batch", "16",
            "--latency-repeats", "1", "--log-dir", str(tmp_path / "runs"), "--work-dir", str(tmp_path / "work"),
            "--checkpoint-dir", str(tmp_path / "ck"), "--plot", str(tmp_path / "plot.png")]
    _fake_study(tmp_path, argv)
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "latency parallel ms" in out and "vs the base model (M=1)" in out and "equal latency, parallel" in out
    assert (tmp_path / "plot_diversity.png").is_file() and "plot_diversity.png" in out
    js = json.loads((tmp_path / "work" / "tts_vs_params.json").read_text())
    assert js["significance"]["auc_gain_threshold"] == gain_threshold()
    ens2 = next(r for r in js["rows"] if r["kind"] == "ensemble" and r["m"] == 2)
    assert ens2["vs_base"]["tests"][0]["p"] <= 1.0 and len(ens2["diversity"]) == 2
    assert ens2["latency_parallel_ms"] == next(r for r in js["rows"] if r["m"] == 1)["latency_ms"]
    # one run scored on other rows: one line, exit 2
    d = torch.load(tmp_path / "runs" / "tts_params" / "logits_test.pt")
    torch.save({"member_logits": d["member_logits"], "labels": 1 - d["labels"]},
               tmp_path / "runs" / "tts_params" / "logits_test.pt")
    assert main(argv) == 2
    err = [x for x in capsys.readouterr().err.splitlines() if "error" in x]  # (tqdm's progress goes there too)
    assert len(err) == 1
    assert err[0].startswith("tts_vs_params: error: runs tts_indep and tts_params were scored on different test rows")
    assert err[0].endswith("train them again with --retrain") and "without --reuse" not in err[0]  # a flag that exists


def test_every_arm_kind_has_its_own_plot_style() -> None:
    # a kind without a style falls back to black crosses, indistinguishable from another such kind
    from recsys.study.plan import KIND_LABELS, TTS_KINDS
    from recsys.study.report import _STYLES, _TAGS

    assert set(KIND_LABELS) <= set(_STYLES)
    assert len({_STYLES[k][:2] for k in KIND_LABELS}) == len(KIND_LABELS)  # color and marker differ
    assert set(TTS_KINDS) <= set(_TAGS)


def test_report_only_scores_the_runs_on_disk_without_training(tmp_path, monkeypatch, capsys):
    # records from before data fingerprints would retrain; --report-only scores them as they are
    monkeypatch.chdir(tmp_path)
    argv = ["--data", str(tmp_path / "data"), "--base", BASE, "--ms", "1", "2", "--ens-seeds", "2", "--seeds", "1",
            "--knobs", "mlp_width", "--no-hetero", "--no-joint", "--latency-batch", "0", "--log-dir",
            str(tmp_path / "runs"), "--work-dir", str(tmp_path / "work"), "--checkpoint-dir", str(tmp_path / "ck"),
            "--plot", str(tmp_path / "plot.png")]
    _fake_study(tmp_path, argv)
    for done in (tmp_path / "runs").glob(f"*/{DONE_FILE}"):
        record = json.loads(done.read_text())
        del record["data"]
        record["seconds"] = 7.0
        done.write_text(json.dumps(record))
    assert main([*argv, "--report-only"]) == 0
    out = capsys.readouterr().out
    assert "retraining" not in out and "training 14 s" in out  # the recorded seconds of both runs, nothing trained
    (tmp_path / "runs" / "tts_params" / "results.json").unlink()
    assert main([*argv, "--report-only"]) == 1  # results that cannot be read: exit 1 (the CLI's doc), one line
    err = [x for x in capsys.readouterr().err.splitlines() if "error" in x]
    assert len(err) == 1 and "results.json" in err[0]
