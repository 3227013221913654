"""Converters (recsys/data/convert/): round trips, ln^2 tokens, train-only vocab, hash mode."""
from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest

from recsys.data.convert import ConvertConfig, NpyAppender, convert
from recsys.data.convert.formats import _P, _P_INV, criteo_token, hash_binary, mix64
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
    # stable: other chunkings and both kinds of pool give identical ids (threads for the C engine;
    # processes for arrow, whose rows come back through spill files)
    for engine in ("native", "arrow"):
        _, out2 = run(tmp_path, "criteo", f"out2_{engine}", inputs=[str(src)], hash_size=97, split=(1.0, 0.0, 0.0),
                      chunk_mb=0.05, workers=2, engine=engine)
        np.testing.assert_array_equal(load(out2, "train")[1], sparse)
    # and with a random split and gzip input, 2 workers give what 1 worker gives
    gz = tmp_path / "c.tsv.gz"
    gz.write_bytes(gzip.compress(src.read_bytes()))
    outs = [run(tmp_path, "criteo", f"split{w}", inputs=[str(gz)], hash_size=97, numeric="dense", chunk_mb=0.05,
                workers=w)[1] for w in (1, 2)]
    for split in ("train", "val", "test"):
        for a, b in zip(load(outs[0], split), load(outs[1], split)):
            np.testing.assert_array_equal(a, b)
    assert not (outs[1] / ".convert_cache").exists()


def test_npy_appender_streams_unknown_row_count(tmp_path: Path) -> None:
    path = tmp_path / "x.npy"
    w = NpyAppender(path, np.int32, (3,))
    parts = [np.arange(6, dtype=np.int32).reshape(2, 3), np.arange(9, dtype=np.int32).reshape(3, 3)]
    for p in parts:
        w.append(p)
    w.close()
    np.testing.assert_array_equal(np.load(path), np.concatenate(parts))
    np.testing.assert_array_equal(np.load(path, mmap_mode="r")[4], parts[1][2])


# ----------------------------------------------------------------------------- compiled scanner (C)


def _edge_criteo_text(tmp_path: Path) -> str:
    """Synthetic rows plus every edge the two parsers must agree on (values, CRLF, empty lines, bad rows)."""
    src = tmp_path / "base.tsv"
    write_criteo(src, 1500, seed=4)
    lines = src.read_text().splitlines()
    base = lines[0].split("\t")
    extra = []
    for v in ["-2", "-1", "0", "2", "3", "1000", "260.0", "", "2.5", "1e3", "-0", "+7", ".5", "5.", "65535",
              "65536", "99999.5", "123456789012345678901", "0.000001", "-1e30"]:
        for col in (1, 9):
            f = list(base)
            f[col] = v
            extra.append("\t".join(f))
    for cat in ["", "x" * 100, "68fd1e64"]:
        f = list(base)
        f[30] = cat
        extra.append("\t".join(f))
    f = list(base)
    f[0] = "0"
    extra.append("\t".join(f) + "\r")  # CRLF line ending
    extra.append("")  # empty line: skipped, not a row
    bad = [
        "\t".join(base[:20]),  # 20 columns
        "\t".join(base + ["extra"]),  # 41 columns
        "\t".join(base[:3] + ["abc"] + base[4:]),  # non-numeric I3
        "\t".join(["x"] + base[1:]),  # bad label
        "\t".join(["-1"] + base[1:]),  # negative label
        "\t".join(base[:12] + ["inf"] + base[13:]),  # non-finite I12
    ]
    rows = lines[:700] + extra + bad[:3] + lines[700:] + bad[3:]
    return "\n".join(rows) + "\n"


@pytest.mark.parametrize("mode", ["min_count", "hash", "dense"])
def test_native_engine_matches_arrow_engine(tmp_path: Path, mode: str) -> None:
    src = tmp_path / "edge.tsv"
    src.write_text(_edge_criteo_text(tmp_path))
    kw: dict = {"min_count": 2} if mode == "min_count" else {"hash_size": 1009} if mode == "hash" else {
        "numeric": "dense", "min_count": 1}
    outs = {}
    for engine in ("arrow", "native"):
        schema, out = run(tmp_path, "criteo", engine, inputs=[str(src)], engine=engine, chunk_mb=0.1,
                          max_bad_fraction=0.01, workers=1, **kw)
        assert schema.preprocessing["engine"] == engine
        assert schema.preprocessing["bad_rows"] == 6
        outs[engine] = (schema, out)
    (sa, oa), (sn, on) = outs["arrow"], outs["native"]
    assert sa.splits == sn.splits and sa.vocab_sizes == sn.vocab_sizes
    assert sa.preprocessing["rows_read"] == sn.preprocessing["rows_read"] == 1500 + 44 + 6
    for split in ("train", "val", "test"):
        for a, b in zip(load(oa, split), load(on, split)):
            np.testing.assert_array_equal(a, b)


def test_native_scanner_reports_bad_rows_at_the_same_lines(tmp_path: Path) -> None:
    data = _edge_criteo_text(tmp_path).encode()
    for s in _assert_engines_agree(data):  # discretize, dense
        assert (s.n_lines, s.n_rows, s.bad_count) == (data.count(b"\n"), 1500 + 44 + 6, 6)
        lines = [line for line, _ in s.bad_examples]
        # 700 rows, 45 edge lines (one empty), 3 bad, 800 rows, 3 bad
        assert lines == [746, 747, 748, 1549, 1550]
        assert "expected 40 columns, got 20" in s.bad_examples[0][1]
        assert s.bad_examples[2][1] == "non-numeric I3 value 'abc'"  # the value, as written
        assert s.bad_examples[3][1] == "bad label (label) value 'x'"


def _assert_engines_agree(data: bytes) -> list:
    """Both parsers on one chunk, both numeric modes: same rows, bad-row reports, labels, dense,
    splits and keys.  Returns the C scanner's results (discretize, dense)."""
    from recsys.data.convert.chunks import Task
    from recsys.data.convert.formats import CRITEO
    from recsys.data.convert.parse_arrow import parse_chunk
    from recsys.data.convert.parse_native import scan_chunk

    task = Task(0, 0, "f.tsv", 0, len(data), data, -1, True)
    scanned = []
    for numeric in ("discretize", "dense"):
        a = parse_chunk(CRITEO, data, task, (0.8, 0.1, 0.1), 5, numeric)
        s = scan_chunk(data, task, (0.8, 0.1, 0.1), 5, numeric)
        assert (s.n_lines, s.n_rows, s.bad_count, s.bad_examples) == (a.n_lines, a.n_rows, a.bad_count,
                                                                      a.bad_examples)
        for x, y in ((s.labels, a.labels), (s.dense, a.dense), (s.split, a.split)):
            np.testing.assert_array_equal(x, y)
        row_keys = np.stack([a.keys[f][a.indices[f]] for f in range(len(a.keys))])
        np.testing.assert_array_equal(s.keys[:, s.good], row_keys)
        scanned.append(s)
    return scanned


def test_engines_agree_on_spaces_and_words_in_numbers(tmp_path: Path) -> None:
    """Spaces around a number are ignored (arrow's CSV reader ignores them); inf, nan, 1_0 and
    a field of only spaces are bad in both engines, in the label column too."""
    src = tmp_path / "base.tsv"
    write_criteo(src, 20, seed=4)
    base = src.read_text().splitlines()[0].split("\t")
    rows = []
    for v in [" 4", "4 ", " -2 ", "  ", "nan", "inf", "1_0", " 1e3 ", "+ 4", "4 .5"]:
        for col in (0, 3):
            f = list(base)
            f[col] = v if col else v.replace("4", "1")
            rows.append("\t".join(f))
    _assert_engines_agree(("\n".join(rows) + "\n").encode())


def test_engines_agree_on_nan_words_in_an_otherwise_clean_chunk(tmp_path: Path) -> None:
    """arrow's typed (float64) reader parses ``nan`` as NaN, which was taken for an empty field
    (dense 0) while the C scanner rejected the row; only a chunk with some other non-numeric
    value (re-read as text) hid the difference.  Both now reject it; the text is reported."""
    src = tmp_path / "base.tsv"
    write_criteo(src, 40, seed=6)
    rows = src.read_text().splitlines()
    for i, w in enumerate(["nan", "NaN", "-nan", "+nan"]):
        f = rows[5 + i].split("\t")
        f[3] = w
        rows[5 + i] = "\t".join(f)
    for s in _assert_engines_agree(("\n".join(rows) + "\n").encode()):
        assert s.bad_count == 4
        assert [why for _, why in s.bad_examples] == [f"non-numeric I3 value {w!r}" for w in
                                                      ["nan", "NaN", "-nan", "+nan"]]


def test_engines_agree_on_carriage_returns(tmp_path: Path) -> None:
    """A CR inside a line (not CRLF) ends the line for pyarrow, not for the C scanner: it split
    such a row in two bad rows and shifted later line numbers.  Now both call it one bad row.
    CRLF endings, a CR at the very end of the data and CR CR LF are covered too."""
    src = tmp_path / "base.tsv"
    write_criteo(src, 30, seed=8)
    rows = src.read_text().splitlines()
    f = rows[3].split("\t")
    f[20] = "ab\rcd"  # line 4: lone CR in a categorical value
    rows[3] = "\t".join(f)
    f = rows[6].split("\t")
    f[2] = "7\r"  # line 7: lone CR after a number
    rows[6] = "\t".join(f)
    f = rows[9].split("\t")
    f[4] = "x"  # line 10: a bad value after them, reported at its own line
    rows[9] = "\t".join(f)
    body = "\r\n".join(rows[:20]) + "\r\r\n" + "\n".join(rows[20:]) + "\r"  # line 20 ends CR CR LF
    for s in _assert_engines_agree(body.encode()):
        assert s.n_rows == 30 and s.bad_count == 4
        assert s.bad_examples == [(4, "carriage return inside the line"), (7, "carriage return inside the line"),
                                  (10, "non-numeric I4 value 'x'"), (20, "carriage return inside the line")]


def test_engines_agree_on_rows_that_are_not_utf8(tmp_path: Path) -> None:
    """A wrong-column-count row holding bytes that are not UTF-8 made pyarrow's invalid-row
    callback raise (a traceback on stderr) and the whole chunk fail; the C scanner counted
    one bad row.  Now both count one bad row; a latin-1 value in a good row stays a value."""
    src = tmp_path / "base.tsv"
    write_criteo(src, 30, seed=9)
    rows = src.read_bytes().splitlines()
    rows[3] = rows[3].replace(b"\t", b"\t\xa2", 1) + b"\tEXTRA"  # line 4: 41 columns, not UTF-8
    rows[5] = rows[5][:rows[5].rfind(b"\t")] + b"\tcaf\xe9"  # line 6: good, a latin-1 C26
    rows[7] = rows[7][:30]  # line 8: too few columns
    short = rows[7].count(b"\t") + 1
    for s in _assert_engines_agree(b"\n".join(rows) + b"\n"):
        assert s.bad_examples == [(4, "expected 40 columns, got 41"), (8, f"expected 40 columns, got {short}")]


def test_engines_agree_on_randomly_damaged_rows(tmp_path: Path) -> None:
    """Seeded random edits (deleted bytes, inserted tabs, newlines, digits, spaces, letters)
    to real-layout rows: both parsers accept, reject and key the same rows."""
    src = tmp_path / "base.tsv"
    write_criteo(src, 200, seed=2)
    base = src.read_bytes().splitlines()
    alphabet = b"\t\n0123456789.-+eE abcdefxnif_"
    for it in range(40):
        rng = np.random.default_rng(it)
        lines = [bytearray(base[i]) for i in rng.integers(0, len(base), 30)]
        for ln in lines[:15]:
            for _ in range(rng.integers(1, 4)):
                op, pos = rng.integers(0, 3), int(rng.integers(0, len(ln) + 1))
                if op == 0 and len(ln):
                    del ln[min(pos, len(ln) - 1)]
                elif op == 1:
                    ln[pos:pos] = bytes([alphabet[rng.integers(0, len(alphabet))]])
                else:
                    ln[pos:pos] = b"9" * int(rng.integers(1, 25))
        _assert_engines_agree(b"\n".join(bytes(x) for x in lines) + b"\n")


def test_native_kernels_against_numpy() -> None:
    from recsys.data.convert import kernels as fp

    rng = np.random.default_rng(0)
    keys = mix64(rng.integers(0, 50, size=(3, 4000)).astype(np.uint64))
    rows = np.flatnonzero(rng.random(4000) < 0.7)
    train = rng.random(rows.size) < 0.5
    indices, distinct, counts, off = fp.dict_encode(keys, rows, train)
    for f in range(3):
        d = distinct[off[f]:off[f + 1]]
        np.testing.assert_array_equal(d[indices[f]], keys[f, rows])  # decodes back
        assert len(set(d.tolist())) == d.size
        u, c = np.unique(keys[f, rows[train]], return_counts=True)
        got = dict(zip(d.tolist(), counts[off[f]:off[f + 1]].tolist()))
        assert {k: v for k, v in got.items() if v} == dict(zip(u.tolist(), c.tolist()))
    k, c = fp.sum_by_key(np.array([5, 7, 5, 9, 7, 5], np.uint64), np.array([1, 2, 3, 4, 5, 6]))
    assert dict(zip(k.tolist(), c.tolist())) == {5: 10, 7: 7, 9: 4}
    # many values: the tables grow several times (they start at 1,024 slots) while being probed ahead
    many = mix64(rng.integers(0, 20_000, size=(2, 50_000)).astype(np.uint64))
    idx, dist, cnt, off2 = fp.dict_encode(many, np.arange(50_000), np.ones(50_000, dtype=bool))
    for f in range(2):
        u, c = np.unique(many[f], return_counts=True)
        d = dist[off2[f]:off2[f + 1]]
        np.testing.assert_array_equal(d[idx[f]], many[f])
        assert d.size == u.size > 10_000
        assert dict(zip(d.tolist(), cnt[off2[f]:off2[f + 1]].tolist())) == dict(zip(u.tolist(), c.tolist()))
    k, c = fp.sum_by_key(many.reshape(-1), np.arange(many.size))
    u, inv = np.unique(many.reshape(-1), return_inverse=True)
    sums = np.bincount(inv, weights=np.arange(many.size)).astype(np.int64)
    assert dict(zip(k.tolist(), c.tolist())) == dict(zip(u.tolist(), sums.tolist()))
    ids = fp.hashed_ids(keys, rows, 13)
    np.testing.assert_array_equal(ids, (keys[:, rows] % np.uint64(13)).T.astype(np.int32))


def test_lookup_gather_matches_binary_search() -> None:
    from recsys.data.convert import kernels as fp
    from recsys.data.convert.vocab import lookup

    rng = np.random.default_rng(1)
    keys = mix64(rng.integers(0, 300, size=(4, 3000)).astype(np.uint64))
    rows = np.arange(3000)
    indices, distinct, _, off = fp.dict_encode(keys, rows, np.ones(rows.size, dtype=bool))
    vocab = []
    for f in range(4):  # a random part of each field's values is in the vocabulary; field 3's is empty
        k = np.unique(distinct[off[f]:off[f + 1]])
        k = k[rng.random(k.size) < (0.6 if f < 3 else 0.0)]
        vocab.append((k, rng.permutation(k.size).astype(np.int32) + 1))
    split = rng.integers(0, 3, rows.size).astype(np.uint8)
    ids, order, starts = fp.lookup_gather(indices, distinct, off, fp.build_vocab_tables(vocab), split, 3)
    expect = np.stack([lookup(vk, vi, keys[f]) for f, (vk, vi) in enumerate(vocab)], axis=1)  # [n, F]
    assert (expect[:, :3] > 0).any() and (expect == 0).any()
    for s in range(3):
        np.testing.assert_array_equal(order[starts[s]:starts[s + 1]], np.flatnonzero(split == s))
    np.testing.assert_array_equal(ids, expect[order])
