"""Evaluation: exact AUC/logloss, the ensemble report, and gathering rows over 2 gloo ranks."""
from __future__ import annotations

import json
import math

import pytest
import torch

from recsys.ensemble import EnsembleGroup, build_group, member_names
from recsys.eval.gather import assemble_member_logits, gather_rows
from recsys.eval.metrics import auc_score, logloss_score
from recsys.eval.report import EnsembleReport, report_markdown, score, write_report
from recsys.eval.runner import evaluate_batches
from tests.dist_harness import run_ranks
from recsys.data.batch import batch_from_arrays
from tests.toy_data import toy_arrays, toy_batches, toy_schema


def _pairwise_auc(s: list[float], y: list[float]) -> float:
    """The definition: P(score_pos > score_neg) + 1/2 P(tie), over all pos/neg pairs."""
    pos = [a for a, l in zip(s, y) if l == 1]
    neg = [a for a, l in zip(s, y) if l == 0]
    wins = sum((p > n) + 0.5 * (p == n) for p in pos for n in neg)
    return wins / (len(pos) * len(neg))


def test_auc_by_hand_with_ties():
    # pos 0.4 vs neg 0.1 -> 1, pos 0.4 vs neg 0.4 -> 1/2, pos 0.8 vs both -> 2  => 3.5 / 4
    assert auc_score(torch.tensor([0.1, 0.4, 0.4, 0.8]), torch.tensor([0.0, 0.0, 1.0, 1.0])) == 0.875
    assert auc_score(torch.tensor([1.0, 2.0, 3.0]), torch.tensor([0.0, 1.0, 1.0])) == 1.0
    assert auc_score(torch.tensor([3.0, 2.0, 1.0]), torch.tensor([0.0, 1.0, 1.0])) == 0.0
    assert auc_score(torch.tensor([5.0, 5.0, 5.0, 5.0]), torch.tensor([0.0, 1.0, 1.0, 0.0])) == 0.5
    assert math.isnan(auc_score(torch.tensor([1.0, 2.0]), torch.tensor([1.0, 1.0])))


def test_auc_matches_pairwise_definition_on_heavy_ties():
    g = torch.Generator().manual_seed(0)
    s = torch.randint(0, 6, (300,), generator=g).float()  # 6 distinct scores: mostly ties
    y = (torch.rand(300, generator=g) < 0.4).float()
    assert math.isclose(auc_score(s, y), _pairwise_auc(s.tolist(), y.tolist()), rel_tol=0, abs_tol=1e-12)


def test_auc_agrees_with_torchmetrics_where_it_is_exact():
    from torchmetrics.functional.classification import binary_auroc

    g = torch.Generator().manual_seed(1)
    p = torch.rand(2000, generator=g).round(decimals=2)  # probabilities in [0, 1] with ties
    y = (torch.rand(2000, generator=g) < p).long()
    assert math.isclose(auc_score(p, y.float()), float(binary_auroc(p, y)), abs_tol=1e-6)


def test_logloss_by_hand():
    z = torch.tensor([0.0, 2.0, -1.0])
    y = torch.tensor([1.0, 0.0, 0.0])
    by_hand = -(math.log(0.5) + math.log(1 - 1 / (1 + math.exp(-2))) + math.log(1 - 1 / (1 + math.exp(1)))) / 3
    assert math.isclose(logloss_score(z, y), by_hand, rel_tol=1e-12)
    # Large logits stay finite (computed from logits, not from saturated probabilities).
    assert math.isclose(logloss_score(torch.tensor([-40.0]), torch.tensor([1.0])), 40.0, rel_tol=1e-12)


def _toy_logits(n: int = 400, m: int = 4, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    y = (torch.rand(n, generator=g) < 0.3).float()
    x = (2 * y - 1)[:, None] * torch.rand(m, generator=g) + 1.5 * torch.randn(n, m, generator=g)
    return x, y


def test_score_members_groups_ensemble_curve():
    x, y = _toy_logits()
    names = ["m0_a", "m1_b", "m2_c", "m3_d"]
    groups = [[0, 3], [1], [2]]
    rep = score(x, y, names, groups)
    assert len(rep.curve) == 4 and len(rep.members) == 4 and len(rep.group_metrics) == 3
    for j in range(4):
        assert rep.members[j].auc == _pairwise_auc(x[:, j].tolist(), y.tolist())
        assert math.isclose(rep.members[j].logloss, logloss_score(x[:, j], y), rel_tol=1e-12)
    g0 = (x[:, 0].double() + x[:, 3].double()) / 2
    assert math.isclose(rep.group_metrics[0].auc, _pairwise_auc(g0.tolist(), y.tolist()), abs_tol=1e-12)
    assert rep.group_metrics[1] == rep.members[1]
    ens = x.double().sum(1) / 4
    assert math.isclose(rep.ensemble.auc, _pairwise_auc(ens.tolist(), y.tolist()), abs_tol=1e-12)
    assert rep.curve[3] == rep.ensemble
    assert rep.curve[0] == rep.members[0]
    c2 = (x[:, 0].double() + x[:, 1].double()) / 2
    assert math.isclose(rep.curve[1].logloss, logloss_score(c2, y), rel_tol=1e-12)
    # Averaging diverse members helps on this data: the ensemble beats the mean member.
    assert rep.ensemble.auc > sum(m.auc for m in rep.members) / 4


def test_score_rejects_bad_input():
    x, y = _toy_logits(n=10, m=2)
    with pytest.raises(ValueError, match="2 member columns"):
        score(x, y, ["a"], [[0]])
    with pytest.raises(ValueError, match="0 or 1"):
        score(x, y * 2, ["a", "b"], [[0, 1]])
    with pytest.raises(ValueError, match="9 labels for 10 rows"):
        score(x, y[:9], ["a", "b"], [[0, 1]])


def test_write_report_files_parse(tmp_path):
    x, y = _toy_logits(m=3)
    rep = score(x, y, ["m0_a", "m1_b", "m2_c"], [[0, 1], [2]], extra={"split": "test"})
    paths = write_report(rep, tmp_path / "run")
    d = json.loads(paths["json"].read_text())
    assert [c["m"] for c in d["curve"]] == [1, 2, 3]
    assert d["ensemble"]["auc"] == rep.ensemble.auc
    back = EnsembleReport.from_json(d)
    assert back.curve == rep.curve and back.names == rep.names and back.groups == [[0, 1], [2]]
    md = paths["md"].read_text()
    assert md == report_markdown(rep)
    assert "| member 1 | m1_b |" in md and "| group 0 | m0_a, m1_b |" in md
    assert f"{rep.ensemble.auc:.5f}" in md
    assert md.count("\n| ") == 3 + 2 + 1 + 3 + 2  # members, groups, ensemble, curve rows, 2 headers
    import matplotlib.image

    img = matplotlib.image.imread(paths["png"])
    assert img.shape[0] > 100 and img.shape[1] > 100
    assert not list((tmp_path / "run").glob("*.tmp*"))


def test_report_json_writes_nan_as_null(tmp_path):
    x = torch.randn(5, 2)
    rep = score(x, torch.ones(5), ["a", "b"], [[0, 1]])  # one class only: AUC undefined
    d = json.loads(write_report(rep, tmp_path)["json"].read_text())
    assert d["ensemble"]["auc"] is None and d["ensemble"]["logloss"] > 0


def test_ne_and_calibration_match_torchrec():
    from torchrec.metrics.calibration import compute_calibration
    from torchrec.metrics.ne import compute_cross_entropy, compute_ne

    from recsys.eval.metrics import Metrics, calibration_score

    g = torch.Generator().manual_seed(5)
    for base_rate in (0.03, 0.3, 0.7):
        y = (torch.rand(3000, generator=g) < base_rate).double()
        x = 3 * torch.randn(3000, generator=g, dtype=torch.float64) + 2 * y - 1
        p = torch.sigmoid(x)
        pos, neg = y.sum(), (1 - y).sum()
        ce_sum = compute_cross_entropy(y, p, torch.ones_like(y), 1e-12).sum()
        want_ne = float(compute_ne(ce_sum, pos + neg, pos, neg, 1e-12))
        want_cal = float(compute_calibration(p.sum(), y.sum()))
        m = Metrics.of(x, y)
        assert m.ne == pytest.approx(want_ne, rel=1e-6)
        assert m.calibration == pytest.approx(want_cal, rel=1e-6)
        assert calibration_score(x.numpy(), y.numpy()) == m.calibration
        assert m.auc == auc_score(x, y) and m.logloss == logloss_score(x, y)


def test_report_ne_calibration_and_ensemble_vs_best_member(tmp_path):
    from recsys.eval.metrics import Metrics
    from recsys.eval.significance import delong_test
    from recsys.ensemble import merge_logits

    x, y = _toy_logits(m=3)
    rep = score(x, y, ["m0_a", "m1_b", "m2_c"], [[0, 1], [2]])
    for got, col in [(rep.members[1], x[:, 1]), (rep.group_metrics[0], merge_logits(x[:, :2].double())),
                     (rep.ensemble, merge_logits(x.double())), (rep.curve[1], merge_logits(x[:, :2].double()))]:
        want = Metrics.of(col.double(), y.double())
        assert got.ne == pytest.approx(want.ne, rel=1e-12) and got.calibration == pytest.approx(want.calibration, rel=1e-12)
        assert 0 < got.ne < 1.2 and 0 < got.calibration < 5
    c = rep.ensemble_vs_best_member
    best = max(range(3), key=lambda j: rep.members[j].auc)
    assert c is not None and c.member == best and c.name == rep.names[best]
    want = delong_test(merge_logits(x.double()), x[:, best].double(), y)
    assert c.diff == pytest.approx(rep.ensemble.auc - rep.members[best].auc, abs=1e-12)
    assert c.p == pytest.approx(want.p, rel=1e-12) and c.clears_threshold == (c.diff >= 0.001)
    d = json.loads(write_report(rep, tmp_path)["json"].read_text())
    assert d["ensemble_vs_best_member"]["clears_0.001"] == c.clears_threshold
    assert d["members"][1]["ne"] == rep.members[1].ne and d["curve"][2]["calibration"] == rep.curve[2].calibration
    back = EnsembleReport.from_json(d)
    assert back.ensemble_vs_best_member == c and back.members == rep.members
    quick = score(x, y, ["m0_a", "m1_b", "m2_c"], [[0, 1], [2]], compare=False)  # per-epoch validation's call
    assert quick.ensemble_vs_best_member is None and quick.members == rep.members and quick.ensemble == rep.ensemble
    md = report_markdown(rep)
    assert f"Ensemble vs best member ({c.name}): AUC {c.diff:+.5f}, DeLong p = {c.p:.3g}" in md
    assert f"{rep.ensemble.ne:.5f}" in md and f"{rep.ensemble.calibration:.5f}" in md
    # A results.json from before NE/calibration reads back with NaN and no comparison.
    for row in (*d["members"], *d["groups"], d["ensemble"], *d["curve"]):
        del row["ne"], row["calibration"]
    del d["ensemble_vs_best_member"]
    old = EnsembleReport.from_json(d)
    assert math.isnan(old.ensemble.ne) and old.ensemble_vs_best_member is None
    assert old.ensemble.auc == rep.ensemble.auc
    # One class: NE and the comparison undefined (null), calibration still defined for positives.
    one = score(x, torch.ones(x.shape[0]), ["a", "b", "c"], [[0, 1, 2]])
    j = one.to_json()
    assert j["ensemble"]["ne"] is None and j["ensemble_vs_best_member"] is None and j["ensemble"]["calibration"] > 0


def test_tb_report_tags_include_ne_calibration_and_delong():
    from recsys.tb import RunLogger

    logged: dict[str, float] = {}

    class Writer:
        def add_scalar(self, tag: str, value: float, step: int) -> None:
            logged[tag] = value

    x, y = _toy_logits(m=2)
    rep = score(x, y, ["m0_a", "m1_b"], [[0], [1]])
    log = RunLogger.__new__(RunLogger)  # only the writer is used
    log.writer = Writer()  # type: ignore[assignment]
    log._log_report("test", rep)
    for metric in ("auc", "logloss", "ne", "calibration"):
        for row in ("m0_a", "m1_b", "group0", "group1", "ensemble"):
            assert f"test/{metric}/{row}" in logged
    assert logged["test/ne/ensemble"] == rep.ensemble.ne
    assert logged["test/calibration/m1_b"] == rep.members[1].calibration
    assert logged["test/ensemble_vs_best_member/delong_p"] == rep.ensemble_vs_best_member.p


# --------------------------------------------------------------------- 2 gloo ranks

N_ROWS = 37
SPECS = ["fnn:mlp=8,seed=1", "fnn:mlp=8,seed=2", "fnn:mlp=4,seed=3"]


def _dist_checks(rank: int, world: int) -> dict:
    out: dict = {}
    # 1. gather_rows: uneven blocks [0, 12) and [12, 37), 2-D rows.
    start, stop = (0, 12) if rank == 0 else (12, N_ROWS)
    local = torch.arange(start, stop, dtype=torch.float32)[:, None] * torch.tensor([1.0, -1.0])
    full = gather_rows(local, start, N_ROWS, group=None)
    out["all"] = full
    out["dst"] = gather_rows(local, start, N_ROWS, group=None, dst=0)
    # A rank with no rows is fine; bad tilings are errors on the receiving rank.
    empty_ok = gather_rows(local[:0] if rank == 1 else full, 0, N_ROWS, group=None)
    out["empty_ok"] = empty_ok
    try:
        gather_rows(local, 0, N_ROWS, group=None)  # both ranks claim row 0
        out["overlap_error"] = None
    except ValueError as e:
        out["overlap_error"] = str(e)

    # 2. Parallel schedule: group 0 = members [0, 2] on rank 0, group 1 = member [1] on rank 1.
    schema = toy_schema(num_fields=3, vocab=10, num_dense=1)
    names = member_names(SPECS)
    idx = [0, 2] if rank == 0 else [1]
    group = build_group(SPECS, names, idx, schema)
    res = evaluate_batches(group, toy_batches(schema, N_ROWS, 8, seed=3), row_start=0, num_rows=N_ROWS,
                           columns=idx, num_members=3, dst=0)
    out["parallel"] = (res.member_logits, res.labels, res.timings)

    # 3. Sequential schedule: every group on both ranks, each rank its own uneven row range,
    #    so rank 0 runs 2 batches and rank 1 runs 3 (the dummy-forward path).
    rows = (0, 10) if rank == 0 else (10, N_ROWS)
    all_batches = next(toy_batches(schema, N_ROWS, N_ROWS, seed=3))
    dense, sparse, labels = toy_arrays(schema, N_ROWS, seed=3)
    mine = [batch_from_arrays(dense[i : min(i + 8, rows[1])], sparse[i : min(i + 8, rows[1])],
                              labels[i : min(i + 8, rows[1])], schema.sparse_names) for i in range(rows[0], rows[1], 8)]
    groups = [[0, 2], [1]]
    blocks, cols = [], []
    for g in groups:
        gm = build_group(SPECS, names, g, schema)
        gm.eval()
        with torch.no_grad():
            blocks.append(torch.cat([gm(b.dense_features, b.sparse_features) for b in mine]))
        cols += g
    lab = torch.cat([b.labels for b in mine])
    seq = assemble_member_logits(torch.cat(blocks, 1), lab, rows[0], N_ROWS, cols, 3, dst=None)
    out["sequential"] = seq
    res2 = evaluate_batches(EnsembleGroup(list(build_group(SPECS, names, [0, 1, 2], schema).members.values())),
                            mine, row_start=rows[0], num_rows=N_ROWS, columns=[0, 1, 2], num_members=3,
                            group=None, dst=1)
    out["seq_dst1"] = res2.member_logits
    out["reference"] = (all_batches, names)
    return out


def test_two_rank_gather_and_assembly():
    r0, r1 = run_ranks(_dist_checks, 2)
    expected = torch.arange(N_ROWS, dtype=torch.float32)[:, None] * torch.tensor([1.0, -1.0])
    for r in (r0, r1):
        assert torch.equal(r["all"], expected)  # every row exactly once, in order
        assert "overlaps row" in r["overlap_error"] or "gap" in r["overlap_error"]
    assert torch.equal(r0["dst"], expected) and r1["dst"] is None
    assert torch.equal(r0["empty_ok"], expected)

    # The assembled matrix equals the single-process logits of every member, in config order.
    schema = toy_schema(num_fields=3, vocab=10, num_dense=1)
    batch, names = r0["reference"]
    ref = build_group(SPECS, names, [0, 1, 2], schema).eval()
    with torch.no_grad():
        want = ref(batch.dense_features, batch.sparse_features)
    logits, labels, timings = r0["parallel"]
    torch.testing.assert_close(logits, want, rtol=0, atol=1e-6)
    assert torch.equal(labels, batch.labels)
    assert set(timings) == {"forward", "wait", "gather", "merge"} and timings["forward"] > 0
    assert r1["parallel"][0] is None

    for r in (r0, r1):  # dst=None: every rank gets it
        seq_logits, seq_labels = r["sequential"]
        torch.testing.assert_close(seq_logits, want, rtol=0, atol=1e-6)
        assert torch.equal(seq_labels, batch.labels)
    assert r0["seq_dst1"] is None
    torch.testing.assert_close(r1["seq_dst1"], want, rtol=0, atol=1e-6)


def _assembly_errors(rank: int, world: int) -> list[str]:
    errs = []
    x = torch.zeros(5, 1)
    y = torch.zeros(5)
    # Both ranks score member 0 on the same rows; member 1 never.
    for cols, labels in (([0], y), ([rank], y + rank)):
        try:
            assemble_member_logits(x, labels, 0, 5, cols, 2, dst=None)
            errs.append("")
        except ValueError as e:
            errs.append(str(e))
    # Member 0 on rank 0, member 1 on rank 1 but only rows [0, 3): rows 3, 4 of member 1 missing.
    n = 5 if rank == 0 else 3
    try:
        assemble_member_logits(x[:n], y[:n], 0, 5, [rank], 2, dst=None)
        errs.append("")
    except ValueError as e:
        errs.append(str(e))
    return errs


def test_two_rank_assembly_detects_double_and_missing_cells_and_label_mismatch():
    e0, _ = run_ranks(_assembly_errors, 2)
    assert "member 0 row 0 was scored 2 times" in e0[0]
    assert "different label for row 0" in e0[1]
    assert "member 1 row 3 was scored 0 times" in e0[2] and "2 cells bad" in e0[2]


# --------------------------------------------------------------------- npy split + CLI

def _write_split(d, n: int, split: str = "val"):
    """The same rows as train, val and test (configs require all three), in the npy layout."""
    import dataclasses

    import numpy as np

    schema = toy_schema(num_fields=3, vocab=10, num_dense=1)
    dense, sparse, labels = toy_arrays(schema, n, seed=7)
    dataclasses.replace(schema, splits={"train": n, "val": n, "test": n}).save(d)
    for name in ("train", "val", "test"):
        np.save(d / f"{name}_dense.npy", dense)
        np.save(d / f"{name}_sparse.npy", sparse)
        np.save(d / f"{name}_labels.npy", labels)
    return schema, batch_from_arrays(dense, sparse, labels, schema.sparse_names)


def _split_checks(rank: int, world: int, data_dir: str) -> dict:
    from recsys.eval.runner import evaluate_split

    schema = toy_schema(num_fields=3, vocab=10, num_dense=1)
    names = member_names(SPECS)
    # Parallel: rank r is group r (1 rank each), both score all rows; assembled over the world.
    idx = [0, 2] if rank == 0 else [1]
    par = evaluate_split(build_group(SPECS, names, idx, schema), data_dir, "val", 8,
                         columns=idx, num_members=3, group_rank=0, group_size=1)
    # Sequential: one group of all members on both ranks, 21 + 20 rows.
    seq = evaluate_split(build_group(SPECS, names, [0, 1, 2], schema), data_dir, "val", 8,
                         columns=[0, 1, 2], num_members=3, group_rank=rank, group_size=2, dst=None)
    return {"par": par.member_logits, "seq": seq.member_logits, "labels": seq.labels,
            "rows": seq.num_local_rows, "fraction": par.gather_fraction}


def test_two_rank_evaluate_split_on_npy(tmp_path):
    schema, batch = _write_split(tmp_path, 41)
    r0, r1 = run_ranks(_split_checks, 2, str(tmp_path))
    ref = build_group(SPECS, member_names(SPECS), [0, 1, 2], schema).eval()
    with torch.no_grad():
        want = ref(batch.dense_features, batch.sparse_features)
    torch.testing.assert_close(r0["par"], want, rtol=0, atol=1e-6)
    assert r1["par"] is None
    for r in (r0, r1):
        torch.testing.assert_close(r["seq"], want, rtol=0, atol=1e-6)
        assert torch.equal(r["labels"], batch.labels)
    assert (r0["rows"], r1["rows"]) == (21, 20)
    assert 0 <= r0["fraction"] < 1


def _save_checkpoints(rank: int, world: int, ckpt_root: str, specs: list, groups: list) -> None:
    from pathlib import Path

    from recsys.checkpoint import GroupCheckpointer, TrainState
    from recsys.ensemble import GroupTrain

    schema = toy_schema(num_fields=3, vocab=10, num_dense=1)
    names = member_names(specs)
    for k, idx in enumerate(groups):
        model = GroupTrain(build_group(specs, names, idx, schema))
        with torch.no_grad():
            for p in model.parameters():
                p.add_(0.01 * (k + 1))  # "trained": differs from the seeded init
        opt = torch.optim.Adam(model.parameters())
        GroupCheckpointer(Path(ckpt_root) / f"group{k}", None, group_rank=0).save(
            5, model, opt, TrainState(step=5, best_auc=0.6, best_step=5), {}, is_best=True)


def _checkpointed_logits(schema, batch, specs: list, groups: list) -> torch.Tensor:
    """[N, M] logits of the members with the weights ``_save_checkpoints`` gave them."""
    names = member_names(specs)
    out = []
    for j in range(len(specs)):
        k = next(k for k, idx in enumerate(groups) if j in idx)
        m = build_group(specs, names, [j], schema).eval()
        with torch.no_grad():
            for p in m.parameters():
                p.add_(0.01 * (k + 1))
            out.append(m(batch.dense_features, batch.sparse_features)[:, 0])
    return torch.stack(out, 1)


def test_cli_evaluates_saved_checkpoints(tmp_path, capsys):
    from recsys.eval import cli as evaluate

    data = tmp_path / "data"
    data.mkdir()
    schema, batch = _write_split(data, 30, split="test")
    groups = [[0, 2], [1]]
    run_ranks(_save_checkpoints, 1, str(tmp_path / "ckpt"), SPECS, groups)
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'name = "t"\ndata_dir = "{data}"\nmembers = {SPECS!r}\ngroups = {groups!r}\n'.replace("'", '"'))
    rc = evaluate.main(["--config", str(cfg), "--checkpoint", str(tmp_path / "ckpt"), "--out", str(tmp_path / "out")])
    assert rc == 0, capsys.readouterr()
    d = json.loads((tmp_path / "out" / "test_results.json").read_text())
    assert [m["name"] for m in d["members"]] == member_names(SPECS)
    assert (tmp_path / "out" / "test_auc_vs_m.png").is_file()
    # The reported AUCs are those of the checkpointed (shifted) weights, not of the seeded init.
    names = member_names(SPECS)
    rep = score(_checkpointed_logits(schema, batch, SPECS, groups), batch.labels, names, groups)
    assert [m["auc"] for m in d["members"]] == pytest.approx([m.auc for m in rep.members], abs=1e-9)
    assert d["ensemble"]["logloss"] == pytest.approx(rep.ensemble.logloss, rel=1e-5)
    # Missing checkpoints: one-line error, exit code 2.
    assert evaluate.main(["--config", str(cfg), "--checkpoint", str(tmp_path / "nope")]) == 2
    assert "no complete checkpoint" in capsys.readouterr().err
    # --device cuda without CUDA: the config check's one line, before any work.
    if not torch.cuda.is_available():
        assert evaluate.main(["--config", str(cfg), "--checkpoint", str(tmp_path / "ckpt"), "--device", "cuda"]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "torch.cuda.is_available() is False" in err, err
    # Data that meta.json promises but the directory lacks (a LoaderError): one line, exit 2.
    (data / "test_labels.npy").unlink()
    assert evaluate.main(["--config", str(cfg), "--checkpoint", str(tmp_path / "ckpt")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "test_labels.npy" in err, err


def test_cli_rejects_unknown_split_without_traceback(tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    r = subprocess.run(
        [sys.executable, "-m", "recsys.evaluate", "--config", str(tmp_path / "c.toml"),
         "--checkpoint", str(tmp_path), "--split", "nosuch"],
        capture_output=True, text=True, timeout=120, cwd=root,
    )
    assert r.returncode == 2
    assert "Traceback" not in r.stderr
    assert "argument --split: invalid choice: 'nosuch'" in r.stderr, r.stderr


DMP_SPECS = ["fnn:mlp=8,seed=1", "dcnv2:mlp=8,seed=2,cross_layers=1"]


def _dmp_eval(rank: int, world: int) -> tuple:
    from recsys.distributed import EmbeddingOptimizerConfig, ShardingConfig, init_distributed, shard_module
    from recsys.ensemble import GroupTrain

    env = init_distributed("cpu")
    schema = toy_schema(num_fields=3, vocab=10, num_dense=1)
    dmp = shard_module(GroupTrain(build_group(DMP_SPECS, member_names(DMP_SPECS), [0, 1], schema)), None, env,
                       EmbeddingOptimizerConfig(), ShardingConfig("row_wise"))
    d, s, y = toy_arrays(schema, 45, seed=2)
    lo, hi = (0, 25) if rank == 0 else (25, 45)  # 4 batches vs 3: rank 1 must run one discarded forward
    batches = [batch_from_arrays(d[i : min(i + 8, hi)], s[i : min(i + 8, hi)], y[i : min(i + 8, hi)], schema.sparse_names)
               for i in range(lo, hi, 8)]
    kw = dict(row_start=lo, num_rows=45, columns=[0, 1], num_members=2, dst=0)
    with_len = evaluate_batches(dmp, batches, **kw).member_logits  # batch counts agreed up front
    no_len = evaluate_batches(dmp, iter(batches), **kw).member_logits  # agreed step by step
    return with_len, no_len


def test_two_rank_sharded_group_uneven_batches_does_not_hang():
    (with_len, no_len), _ = run_ranks(_dmp_eval, 2, timeout=90)
    schema = toy_schema(num_fields=3, vocab=10, num_dense=1)
    d, s, y = toy_arrays(schema, 45, seed=2)
    b = batch_from_arrays(d, s, y, schema.sparse_names)
    with torch.no_grad():
        want = build_group(DMP_SPECS, member_names(DMP_SPECS), [0, 1], schema).eval()(b.dense_features, b.sparse_features)
    torch.testing.assert_close(with_len, want, rtol=0, atol=1e-5)
    torch.testing.assert_close(no_len, want, rtol=0, atol=1e-5)


def test_auc_takes_numpy_arrays_and_tensors_alike():
    import numpy as np

    g = torch.Generator().manual_seed(3)
    s = torch.randint(0, 5, (200,), generator=g).float()
    y = (torch.rand(200, generator=g) < 0.4).float()
    want = _pairwise_auc(s.tolist(), y.tolist())
    assert auc_score(s, y) == auc_score(s.numpy(), y.numpy()) == auc_score(s.numpy(), y.numpy() > 0.5)
    assert math.isclose(auc_score(s.numpy(), y.bool().numpy()), want, abs_tol=1e-12)
    from recsys.data import synth

    assert synth.auc(y.numpy(), s.numpy()) == auc_score(s, y)  # one AUC, the old name's argument order


def test_old_module_re_exports_the_same_objects():
    from recsys import evaluate
    from recsys.eval import cli, gather, metrics, report, runner

    homes = {name: mod for mod in (cli, gather, metrics, report, runner) for name in evaluate.__all__
             if getattr(getattr(mod, name, None), "__module__", None) == mod.__name__}
    assert sorted(homes) == sorted(evaluate.__all__)
    for name, mod in homes.items():
        assert getattr(evaluate, name) is getattr(mod, name), name


def test_new_and_old_command_and_light_imports():
    """``python -m recsys.eval`` is the command; ``python -m recsys.evaluate`` says so in one
    stderr line and runs it.  The metrics load no torch, and writing a report selects no
    matplotlib backend (nothing process-wide changes)."""
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent

    def py(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=300, cwd=root)

    new = py("-m", "recsys.eval", "--help")
    assert new.returncode == 0 and "python -m recsys.eval --config configs/demo.toml" in new.stdout, new.stderr
    old = py("-m", "recsys.evaluate", "--help")
    assert old.returncode == 0 and old.stdout == new.stdout
    assert old.stderr.strip().splitlines() == ["python -m recsys.evaluate is deprecated; use python -m recsys.eval (same options)"]
    assert new.stderr == ""
    light = py("-c", "import sys, numpy as np, recsys.eval.metrics as m, recsys.data.synth; "
                     "assert m.auc_score(np.array([1., 2.]), np.array([0, 1])) == 1.0; "
                     "assert 'torch' not in sys.modules, 'torch loaded'")
    assert light.returncode == 0, light.stderr
    plot = py("-c", "import sys, tempfile, torch; from pathlib import Path; "
                    "from recsys.eval.report import score, write_report; "
                    "r = score(torch.randn(50, 2), (torch.arange(50) % 2).float(), ['a', 'b'], [[0, 1]]); "
                    "write_report(r, Path(tempfile.mkdtemp())); "
                    "assert 'matplotlib.pyplot' not in sys.modules, 'pyplot loaded'")
    assert plot.returncode == 0, plot.stderr
