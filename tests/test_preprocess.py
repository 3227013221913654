"""Converters (recsys/data/preprocess.py): round trips, ln^2 tokens, train-only vocab, hash mode."""
from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest

from recsys.data.preprocess import ConvertConfig, NpyAppender, convert
from recsys.data.raw_formats import _P, _P_INV, criteo_token, hash_binary, mix64
from recsys.data.schema import Schema
from recsys.data.synth import write_avazu, write_criteo, write_kdd12

import pyarrow as pa


def criteo_line(label: str = "0", ints: list[str] | None = None, cats: list[str] | None = None) -> str:
    ints = ints if ints is not None else ["1"] * 13
    cats = cats if cats is not None else ["68fd1e64"] * 26
    return "\t".join([label, *ints, *cats]) + "\n"


def load(out: Path, split: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return (np.load(out / f"{split}_dense.npy"), np.load(out / f"{split}_sparse.npy"),
            np.load(out / f"{split}_labels.npy"))


def run(tmp_path: Path, dataset: str, name: str = "out", **kw) -> tuple[Schema, Path]:
    out = tmp_path / name
    cfg = ConvertConfig(dataset=dataset, output=str(out), progress=False, **kw)
    return convert(cfg, log=lambda s: None), out


def raw_columns(path: Path, delimiter: str, header: bool) -> list[list[str]]:
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "rt") as f:
        lines = f.read().splitlines()
    return [line.split(delimiter) for line in lines[1 if header else 0:]]


def check_consistent(raw: list[str], ids: np.ndarray) -> None:
    """Equal raw values <-> equal ids (a bijection between kept values and non-OOV ids)."""
    by_value: dict[str, set[int]] = {}
    by_id: dict[int, set[str]] = {}
    for v, i in zip(raw, ids.tolist()):
        by_value.setdefault(v, set()).add(i)
        by_id.setdefault(i, set()).add(v)
    assert all(len(s) == 1 for s in by_value.values())
    assert all(len(s) == 1 for i, s in by_id.items() if i != 0)


# ----------------------------------------------------------------------------- numeric tokens


def test_ln2_spot_values_function() -> None:
    v = np.array([-2, -1, 0, 1, 2, 3, 1000, 260.0, 2.5])
    assert criteo_token(v).tolist() == [-2, -1, 0, 1, 2, int(np.floor(np.log(3) ** 2)),
                                        int(np.floor(np.log(1000) ** 2)), int(np.floor(np.log(260) ** 2)),
                                        int(np.floor(np.log(2.5) ** 2))]
    assert criteo_token(np.array([3.0, 1000.0])).tolist() == [1, 47]


def test_ln2_spot_values_end_to_end(tmp_path: Path) -> None:
    # I1 carries the spot values; equal tokens must share an id, distinct tokens must not
    values = ["-2", "-1", "0", "2", "3", "1000", "260.0", "", "260", "1", "300", "1000.0"]
    expect = {"-2": -2, "-1": -1, "0": 0, "2": 2, "3": 1, "1000": 47, "260.0": 30, "": "empty",
              "260": 30, "1": 1, "300": 32, "1000.0": 47}
    src = tmp_path / "spot.tsv"
    src.write_text("".join(criteo_line(ints=[v] + ["5"] * 12) for v in values))
    schema, out = run(tmp_path, "criteo", split_files={"train": [str(src)]}, min_count=1)
    assert schema.sparse_names[:2] == ["I1", "I2"] and schema.sparse_names[13] == "C1"
    assert schema.num_sparse == 39 and schema.num_dense == 0
    ids = load(out, "train")[1][:, 0]
    assert (ids > 0).all()
    for a in range(len(values)):
        for b in range(len(values)):
            same_token = expect[values[a]] == expect[values[b]]
            assert (ids[a] == ids[b]) == same_token, (values[a], values[b])
    # 7 distinct tokens + OOV
    assert schema.sparse_features[0].num_embeddings == len(set(map(str, expect.values()))) + 1


def test_numeric_dense_mode(tmp_path: Path) -> None:
    src = tmp_path / "d.tsv"
    src.write_text(criteo_line(ints=["3"] + ["-2"] * 12) + criteo_line(ints=[""] + ["260.0"] * 12))
    schema, out = run(tmp_path, "criteo", split_files={"train": [str(src)]}, numeric="dense", min_count=1)
    assert schema.dense_features == tuple(f"I{i}" for i in range(1, 14))
    assert schema.sparse_names == [f"C{i}" for i in range(1, 27)]
    dense = load(out, "train")[0]
    assert dense.dtype == np.float32 and dense.shape == (2, 13)
    np.testing.assert_allclose(dense[0, :2], [np.log(4.0), 0.0], rtol=1e-6)
    np.testing.assert_allclose(dense[1, :2], [0.0, np.log(261.0)], rtol=1e-6)


# ----------------------------------------------------------------------------- vocabularies


def test_vocab_counts_train_only_and_min_count(tmp_path: Path) -> None:
    train, test = tmp_path / "train.tsv", tmp_path / "test.tsv"
    # C1: "aaaaaaaa" x3 and "bbbbbbbb" x1 in train; "cccccccc" only in test (x5)
    c = ["68fd1e64"] * 26
    train.write_text("".join(criteo_line(cats=[v] + c[1:]) for v in ["aaaaaaaa"] * 3 + ["bbbbbbbb"]))
    test.write_text("".join(criteo_line(cats=["cccccccc"] + c[1:]) for _ in range(5))
                    + criteo_line(cats=["aaaaaaaa"] + c[1:]))
    schema, out = run(tmp_path, "criteo", split_files={"train": [str(train)], "test": [str(test)]}, min_count=2)
    c1 = schema.sparse_names.index("C1")
    assert schema.sparse_features[c1].num_embeddings == 2  # OOV + "aaaaaaaa"
    tr, te = load(out, "train")[1][:, c1], load(out, "test")[1][:, c1]
    assert tr.tolist() == [1, 1, 1, 0]  # "bbbbbbbb" seen once < min_count -> OOV
    assert te.tolist() == [0, 0, 0, 0, 0, 1]  # test-only value -> OOV even though it occurs 5 times
    assert schema.splits == {"train": 4, "val": 0, "test": 6}
    assert load(out, "val")[1].shape == (0, 39)


def test_ids_ordered_by_train_frequency(tmp_path: Path) -> None:
    src = tmp_path / "f.tsv"
    c = ["68fd1e64"] * 25
    vals = ["0000000a"] * 1 + ["0000000b"] * 4 + ["0000000c"] * 2
    src.write_text("".join(criteo_line(cats=[v] + c) for v in vals))
    _, out = run(tmp_path, "criteo", split_files={"train": [str(src)]}, min_count=1)
    ids = load(out, "train")[1][:, 13]
    assert ids.tolist() == [3] + [1] * 4 + [2] * 2


# ----------------------------------------------------------------------------- round trips


@pytest.mark.parametrize("gz", [False, True])
def test_criteo_round_trip(tmp_path: Path, gz: bool) -> None:
    src = tmp_path / ("c.tsv.gz" if gz else "c.tsv")
    write_criteo(src, 3000, seed=3)
    schema, out = run(tmp_path, "criteo", inputs=[str(src)], split=(1.0, 0.0, 0.0), min_count=2, chunk_mb=0.1)
    raw = raw_columns(src, "\t", False)
    dense, sparse, labels = load(out, "train")
    assert sparse.dtype == np.int32 and labels.dtype == np.float32 and dense.dtype == np.float32
    assert sparse.shape == (3000, 39) and dense.shape == (3000, 0)
    np.testing.assert_array_equal(labels, [float(r[0]) for r in raw])  # file order kept
    assert ((sparse >= 0) & (sparse < np.array(schema.vocab_sizes))).all()
    for f in (0, 1):  # I1, I2: equal ln^2 tokens <-> equal ids
        tok = [str(criteo_token(np.array([float(r[1 + f])]))[0]) if r[1 + f] else "empty" for r in raw]
        check_consistent(tok, sparse[:, f])
    for f in (13, 15, 38):  # C1, C3, C26
        check_consistent([r[1 + f] for r in raw], sparse[:, f])
    assert Schema.load(out).to_json() == schema.to_json()
    assert schema.preprocessing["rows_read"] == 3000 and schema.preprocessing["vocab_counted_on"] == "train"


def test_random_split_is_seeded_and_worker_independent(tmp_path: Path) -> None:
    src = tmp_path / "c.tsv"
    write_criteo(src, 4000, seed=4)
    a, out_a = run(tmp_path, "criteo", "a", inputs=[str(src)], seed=7, workers=1, chunk_mb=0.2)
    b, out_b = run(tmp_path, "criteo", "b", inputs=[str(src)], seed=7, workers=2, chunk_mb=0.2)
    gz = tmp_path / "c.tsv.gz"
    gz.write_bytes(gzip.compress(src.read_bytes()))
    c, out_c = run(tmp_path, "criteo", "c", inputs=[str(gz)], seed=7, workers=1, chunk_mb=0.2)
    d, _ = run(tmp_path, "criteo", "d", inputs=[str(src)], seed=8, workers=1, chunk_mb=0.2)
    assert a.splits == b.splits == c.splits != d.splits
    assert sum(a.splits.values()) == 4000
    assert abs(a.splits["train"] / 4000 - 0.8) < 0.05
    for split in ("train", "val", "test"):
        for x, y, z in zip(load(out_a, split), load(out_b, split), load(out_c, split)):
            np.testing.assert_array_equal(x, y)
            np.testing.assert_array_equal(x, z)


def test_avazu_round_trip(tmp_path: Path) -> None:
    src = tmp_path / "avazu.csv"
    write_avazu(src, 2000, seed=5)
    schema, out = run(tmp_path, "avazu", inputs=[str(src)], split=(1.0, 0.0, 0.0), min_count=1)
    assert schema.num_sparse == 24 and schema.sparse_names[:4] == ["hour", "weekday", "is_weekend", "C1"]
    assert "id" not in schema.sparse_names and "click" not in schema.sparse_names
    raw = raw_columns(src, ",", True)
    _, sparse, labels = load(out, "train")
    np.testing.assert_array_equal(labels, [float(r[1]) for r in raw])
    import datetime as dt
    hours = [r[2][6:8] for r in raw]
    days = [dt.date(2000 + int(r[2][:2]), int(r[2][2:4]), int(r[2][4:6])).weekday() for r in raw]
    check_consistent(hours, sparse[:, 0])
    check_consistent([str(d) for d in days], sparse[:, 1])
    check_consistent([str(d >= 5) for d in days], sparse[:, 2])
    check_consistent([r[5] for r in raw], sparse[:, 5])  # site_id
    assert schema.sparse_features[0].num_embeddings <= 25


def test_kdd12_round_trip(tmp_path: Path) -> None:
    src = tmp_path / "training.txt"
    write_kdd12(src, 2000, seed=6)
    schema, out = run(tmp_path, "kdd12", inputs=[str(src)], split=(1.0, 0.0, 0.0), min_count=1)
    assert schema.num_sparse == 11 and schema.sparse_names[0] == "Impression"
    raw = raw_columns(src, "\t", False)
    _, sparse, labels = load(out, "train")
    np.testing.assert_array_equal(labels, [float(int(r[0]) > 0) for r in raw])
    assert 0 < labels.mean() < 1
    for f in range(11):
        check_consistent([r[1 + f] for r in raw], sparse[:, f])


# ----------------------------------------------------------------------------- hash mode


def test_hash_binary_matches_scalar_formula() -> None:
    vals = [b"", b"a", b"68fd1e64", b"\x00\x00", b"x" * 37]

    def scalar(v: bytes) -> int:
        h = 0
        for j, byte in enumerate(v):
            h = (h + (byte + 1) * pow(_P, j, 1 << 64)) % (1 << 64)
        h ^= (len(v) * 0xC2B2AE3D27D4EB4F) % (1 << 64)
        return int(mix64(np.array([h], dtype=np.uint64))[0])

    got = hash_binary(pa.array(vals, pa.binary()))
    assert got.tolist() == [scalar(v) for v in vals]
    assert len(set(got.tolist())) == len(vals)
    assert (_P * _P_INV) % (1 << 64) == 1
    # a sliced array (non-zero offset) hashes the same values
    assert hash_binary(pa.array(vals, pa.binary()).slice(2)).tolist() == got[2:].tolist()


def test_hash_mode(tmp_path: Path) -> None:
    src = tmp_path / "c.tsv"
    write_criteo(src, 3000, seed=9)
    schema, out = run(tmp_path, "criteo", inputs=[str(src)], hash_size=97, split=(1.0, 0.0, 0.0), chunk_mb=0.1)
    assert schema.vocab_sizes == [97] * 39
    assert schema.preprocessing["vocab"] == "hash" and schema.preprocessing["hash_size"] == 97
    sparse = load(out, "train")[1]
    assert sparse.min() >= 0 and sparse.max() < 97
    raw = raw_columns(src, "\t", False)
    c3 = [r[16] for r in raw]
    by_value = {}
    for v, i in zip(c3, sparse[:, 15].tolist()):
        assert by_value.setdefault(v, i) == i  # same value -> same bucket
    assert len(set(sparse[:, 15].tolist())) > 50  # values spread over the buckets
    # stable: a second run (other chunking, 2 workers) gives identical ids
    _, out2 = run(tmp_path, "criteo", "out2", inputs=[str(src)], hash_size=97, split=(1.0, 0.0, 0.0), chunk_mb=0.05)
    np.testing.assert_array_equal(load(out2, "train")[1], sparse)


def test_npy_appender_streams_unknown_row_count(tmp_path: Path) -> None:
    path = tmp_path / "x.npy"
    w = NpyAppender(path, np.int32, (3,))
    parts = [np.arange(6, dtype=np.int32).reshape(2, 3), np.arange(9, dtype=np.int32).reshape(3, 3)]
    for p in parts:
        w.append(p)
    w.close()
    np.testing.assert_array_equal(np.load(path), np.concatenate(parts))
    np.testing.assert_array_equal(np.load(path, mmap_mode="r")[4], parts[1][2])
