"""Synthetic raw files (recsys/data/synth.py, data_prep/synthesize.py): exact formats, heavy tails, planted signal."""
from __future__ import annotations

import datetime as dt
import gzip
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from recsys.data.synth import (
    AVAZU_COLUMNS, CRITEO_CAT_VOCAB, HIGHER_ORDER_SHARE, PlantedModel, auc, write, write_avazu, write_criteo,
    write_kdd12, zipf_ranks,
)

REPO = Path(__file__).resolve().parents[1]
HEX8 = re.compile(r"^[0-9a-f]{8}$")
INT = re.compile(r"^-?[0-9]+$")


def test_criteo_format(tmp_path: Path) -> None:
    path = tmp_path / "day_0"
    ceiling = write_criteo(path, 4000, seed=1)
    rows = [line.split("\t") for line in path.read_text().splitlines()]
    assert len(rows) == 4000 and all(len(r) == 40 for r in rows)
    assert {r[0] for r in rows} == {"0", "1"}
    ints = [v for r in rows for v in r[1:14]]
    assert all(v == "" or INT.match(v) for v in ints)
    assert "" in ints and "-1" in ints and "-2" in ints  # empties and negatives, like the real data
    cats = [v for r in rows for v in r[14:]]
    assert all(v == "" or HEX8.match(v) for v in cats) and "" in cats
    assert 0.6 < ceiling < 1.0


def test_avazu_format(tmp_path: Path) -> None:
    path = tmp_path / "train.csv"
    write_avazu(path, 3000, seed=2)
    lines = path.read_text().splitlines()
    assert lines[0].split(",") == AVAZU_COLUMNS and AVAZU_COLUMNS[:3] == ["id", "click", "hour"]
    rows = [line.split(",") for line in lines[1:]]
    assert len(rows) == 3000 and all(len(r) == 24 for r in rows)
    assert {r[1] for r in rows} == {"0", "1"}
    for r in rows[:200]:
        h = r[2]
        assert len(h) == 8 and h.isdigit()
        dt.date(2000 + int(h[:2]), int(h[2:4]), int(h[4:6]))  # a real date
        assert 0 <= int(h[6:]) < 24
        assert HEX8.match(r[5]) and INT.match(r[3])
    assert len({r[2][:6] for r in rows}) > 5  # several days: weekday/weekend vary


def test_kdd12_format(tmp_path: Path) -> None:
    path = tmp_path / "training.txt"
    write_kdd12(path, 3000, seed=3)
    rows = [line.split("\t") for line in path.read_text().splitlines()]
    assert all(len(r) == 12 and all(INT.match(v) for v in r) for r in rows)
    clicks, imps = np.array([int(r[0]) for r in rows]), np.array([int(r[1]) for r in rows])
    assert (imps >= 1).all() and (clicks <= imps).all() and 0 < (clicks > 0).mean() < 1
    assert all(int(r[6]) <= int(r[5]) for r in rows)  # Position <= Depth


def test_seeded_and_gzip(tmp_path: Path) -> None:
    a, b, c = tmp_path / "a.tsv", tmp_path / "b.tsv", tmp_path / "c.tsv"
    auc_a = write_criteo(a, 500, seed=5)
    assert write_criteo(b, 500, seed=5) == auc_a
    write_criteo(c, 500, seed=6)
    assert a.read_bytes() == b.read_bytes() != c.read_bytes()
    g = tmp_path / "a.tsv.gz"
    write_criteo(g, 500, seed=5)
    assert gzip.decompress(g.read_bytes()) == a.read_bytes()


def test_heavy_tailed_values(tmp_path: Path) -> None:
    path = tmp_path / "c.tsv"
    write_criteo(path, 20000, seed=7)
    c3 = Counter(line.split("\t")[16] for line in path.read_text().splitlines())
    counts = sorted(c3.values(), reverse=True)
    singletons = sum(1 for v in counts if v == 1)
    assert counts[0] > 50 * np.median(counts)  # a heavy head ...
    assert singletons > 0.3 * len(counts)  # ... and a long tail of rare values
    r = zipf_ranks(np.random.default_rng(0), 1000, 200_000)
    freq = np.bincount(r, minlength=1000)
    assert freq[0] > 5 * freq[9] > 0 and r.min() == 0 and r.max() == 999


def test_planted_interactions_matter() -> None:
    """Without its pairwise part the planted model loses AUC: interactions carry real signal."""
    rng = np.random.default_rng(0)
    vocab = [50] * 8
    model = PlantedModel.make(vocab, seed=1, bias=-1.0)
    idx = [rng.integers(0, v, 50_000) for v in vocab]
    logit = model.logits(idx)
    labels = rng.random(50_000) < 1 / (1 + np.exp(-logit))
    linear = np.sum([model.weights[f][x] for f, x in enumerate(idx)], axis=0)
    assert auc(labels, logit) > auc(labels, linear) + 0.03


def test_higher_order_signal_carries_its_share_and_is_not_pairwise() -> None:
    """On Criteo's 39 planted fields, the third-order terms carry the stated share of the
    interaction variance, the pairwise tables are the pairwise model's, and dropping the
    third-order part costs AUC that no pairwise term recovers (the planted pairwise part is the
    best pairwise fit available to the test without training one)."""
    vocab = [64] * 13 + CRITEO_CAT_VOCAB
    rng = np.random.default_rng(0)
    idx = [zipf_ranks(rng, v, 100_000) for v in vocab]
    pair_only = PlantedModel.make(vocab, seed=4, bias=-1.3)
    model = PlantedModel.make(vocab, seed=4, bias=-1.3, signal="higher-order")
    assert not pair_only.triples and len(model.triples) == 13 and all(a < b < c for a, b, c in model.triples)
    assert all(np.array_equal(a, b) for a, b in zip(model.latents, pair_only.latents))
    pair, high = model.pairwise_logits(idx), model.higher_order_logits(idx)
    share = float(high.var() / (pair + high).var())
    assert abs(share - HIGHER_ORDER_SHARE) < 0.1, share
    assert abs(np.corrcoef(pair, high)[0, 1]) < 0.05  # orthogonal parts
    logit = model.logits(idx)
    labels = rng.random(logit.shape[0]) < 1 / (1 + np.exp(-logit))
    assert auc(labels, logit) > auc(labels, logit - high) + 0.02


def test_higher_order_labels_differ_from_pairwise_for_the_same_seed(tmp_path: Path) -> None:
    a, b, c = tmp_path / "a.tsv", tmp_path / "b.tsv", tmp_path / "c.tsv"
    write_criteo(a, 3000, seed=5)
    auc_b = write("criteo", b, 3000, seed=5, signal="higher-order")
    assert write("criteo", c, 3000, seed=5, signal="higher-order") == auc_b and b.read_bytes() == c.read_bytes()
    rows_a = [line.split("\t") for line in a.read_text().splitlines()]
    rows_b = [line.split("\t") for line in b.read_text().splitlines()]
    assert [r[1:] for r in rows_a] == [r[1:] for r in rows_b]  # same features: only the labels moved
    changed = np.mean([ra[0] != rb[0] for ra, rb in zip(rows_a, rows_b)])
    assert 0.05 < changed < 0.5, changed
    with pytest.raises(ValueError, match="unknown signal 'cubic'"):
        write("criteo", tmp_path / "d.tsv", 10, signal="cubic")


def test_cli_prints_ceiling(tmp_path: Path) -> None:
    out = tmp_path / "kdd.txt.gz"
    r = subprocess.run([sys.executable, "data_prep/synthesize.py", "--dataset", "kdd12", "--rows", "300",
                        "--output", str(out), "--no-progress"], cwd=REPO, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    m = re.search(r"planted model AUC \(ceiling\) = (0\.\d+)", r.stdout)
    assert m and 0.5 < float(m.group(1)) < 1.0
    assert len(gzip.decompress(out.read_bytes()).splitlines()) == 300
    r = subprocess.run([sys.executable, "data_prep/synthesize.py", "--dataset", "avazu", "--rows", "300",
                        "--output", str(tmp_path / "a.csv"), "--no-progress", "--signal", "higher-order"],
                       cwd=REPO, capture_output=True, text=True)
    assert r.returncode == 0 and "(higher-order signal)" in r.stdout, r.stderr
    r = subprocess.run([sys.executable, "data_prep/synthesize.py", "--dataset", "kdd12", "--rows", "10",
                        "--output", str(tmp_path), "--no-progress"], cwd=REPO, capture_output=True, text=True)
    assert r.returncode == 2 and r.stderr.startswith(f"synthesize: error: {tmp_path}: "), r.stderr
    assert r.stderr.strip().count("\n") == 0 and "Traceback" not in r.stderr
