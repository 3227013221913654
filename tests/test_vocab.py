"""The saved vocabulary (issue 10 section 1): vocab/ beside meta.json, --vocab-from, raw rows -> ids.

The contract: raw test rows sent through ``RawRowEncoder`` give bit-identical ids to the
converted test split, whatever the engine, numeric mode or hash mode; ``--vocab-from`` with a
conversion's own vocabulary reproduces its arrays byte for byte; a damaged or mismatched vocab
dir is one line and exit code 2, with nothing written.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from recsys.data.batch import kjt_from_ids
from recsys.data.convert import ConvertConfig, convert, main
from recsys.data.convert.raw_rows import RawRowEncoder, RowError
from recsys.data.convert.saved_vocab import MANIFEST, VOCAB_FILE, VocabError, open_vocab
from recsys.data.schema import Schema
from recsys.data.synth import write_avazu, write_criteo, write_kdd12
from recsys.errors import UserError

NPY = [f"{s}_{k}.npy" for s in ("train", "val", "test") for k in ("dense", "sparse", "labels")]
WRITERS = {"criteo": write_criteo, "avazu": write_avazu, "kdd12": write_kdd12}
SUFFIX = {"criteo": "tsv", "avazu": "csv", "kdd12": "txt"}


def run(out: Path, dataset: str, **kw: object) -> Schema:
    return convert(ConvertConfig(dataset=dataset, output=str(out), progress=False, **kw), log=lambda s: None)


def raw(tmp_path: Path, dataset: str, name: str, rows: int, seed: int) -> Path:
    p = tmp_path / f"{name}.{SUFFIX[dataset]}"
    WRITERS[dataset](p, rows, seed=seed)
    return p


def data_lines(path: Path, dataset: str) -> list[str]:
    lines = path.read_text().splitlines()
    return lines[1:] if dataset == "avazu" else lines


def digests(d: Path) -> dict[str, str]:
    return {n: hashlib.sha256((d / n).read_bytes()).hexdigest() for n in NPY}


@pytest.fixture(scope="module")
def days(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, Path]]:
    """Per dataset: a train day and a test day (another seed: values the train day never saw)."""
    d = tmp_path_factory.mktemp("raw")
    return {ds: (raw(d, ds, f"{ds}_train", 1500, 1), raw(d, ds, f"{ds}_test", 300, 2)) for ds in WRITERS}


# ----------------------------------------------------------------------------- raw rows == converted test split

CASES = [
    ("criteo", dict(engine="native")),
    ("criteo", dict(engine="arrow")),
    ("criteo", dict(engine="native", numeric="dense")),
    ("criteo", dict(engine="arrow", hash_size=997)),
    ("criteo", dict(engine="native", hash_size=997)),
    ("avazu", {}),
    ("avazu", dict(hash_size=5003)),
    ("kdd12", dict(min_count=2)),
]


@pytest.mark.parametrize("dataset,kw", CASES, ids=[f"{d}-{'-'.join(map(str, k.values()))}" for d, k in CASES])
@pytest.mark.parametrize("encoder_engine", ["auto", "arrow"])
def test_raw_test_rows_give_the_converted_test_ids(tmp_path: Path, days: dict[str, tuple[Path, Path]], dataset: str,
                                                   kw: dict[str, object], encoder_engine: str) -> None:
    train, test = days[dataset]
    out = tmp_path / "out"
    schema = run(out, dataset, split_files={"train": [str(train)], "test": [str(test)]}, **kw)
    assert schema.preprocessing["bad_rows"] == 0
    enc = RawRowEncoder.from_dir(out, engine=encoder_engine)
    dense, sparse = enc.encode_lines(data_lines(test, dataset))
    want_sparse, want_dense = np.load(out / "test_sparse.npy"), np.load(out / "test_dense.npy")
    assert sparse.dtype == np.int32 and dense.dtype == np.float32
    np.testing.assert_array_equal(sparse, want_sparse)
    assert dense.tobytes() == want_dense.tobytes()  # bit-identical, not close
    assert enc.field_names == schema.sparse_names and enc.dense_names == list(schema.dense_features)
    if "hash_size" not in kw:
        assert (sparse == 0).any() and (sparse > 0).any()  # the test day has unseen values: OOV 0
    # the same rows as JSON of raw field values by name
    rows = [dict(zip([c.name for c in enc.fmt.columns], line.split(enc.fmt.delimiter)))
            for line in data_lines(test, dataset)[:50]]
    d2, s2 = enc.encode_json(rows)
    np.testing.assert_array_equal(s2, want_sparse[:50])
    assert d2.tobytes() == want_dense[:50].tobytes()


def test_rows_without_label_and_the_member_inputs(tmp_path: Path, days: dict[str, tuple[Path, Path]]) -> None:
    train, test = days["criteo"]
    out = tmp_path / "out"
    run(out, "criteo", split_files={"train": [str(train)], "test": [str(test)]})
    enc = RawRowEncoder.from_dir(out)
    lines = data_lines(test, "criteo")[:20]
    dense, sparse = enc.encode_lines(lines)
    d2, s2 = enc.encode_lines([line.split("\t", 1)[1] + "\n" for line in lines], labeled=False)
    np.testing.assert_array_equal(s2, sparse)
    dt, kjt = enc.features(dense, sparse)
    want = kjt_from_ids(torch.from_numpy(sparse), enc.field_names)
    assert dt.shape == (20, 0) and kjt.keys() == want.keys() == enc.field_names
    assert torch.equal(kjt.values(), want.values()) and torch.equal(kjt.lengths(), want.lengths())
    assert enc.encode_lines([])[1].shape == (0, 39)


@pytest.mark.parametrize("engine", ["native", "arrow"])
def test_bad_rows_name_the_row_and_field(tmp_path: Path, days: dict[str, tuple[Path, Path]], engine: str) -> None:
    train, _ = days["criteo"]
    out = tmp_path / "out"
    run(out, "criteo", split_files={"train": [str(train)]}, engine=engine)
    enc = RawRowEncoder.from_dir(out, engine=engine)
    good = data_lines(train, "criteo")[0]
    f = good.split("\t")
    cases = {
        "\t".join(f[:3] + ["abc"] + f[4:]): "row 1: non-numeric I3 value 'abc'",
        "\t".join(f[:-1]): "row 1: expected 40 columns, got 39",
        "\t".join(["x"] + f[1:]): "row 1: bad label (label) value 'x'",
        "": "row 1: empty line",
        good + "\n" + good: "row 1: holds a newline",
    }
    for line, msg in cases.items():
        with pytest.raises(RowError) as e:
            enc.encode_lines([good, line])
        assert str(e.value).startswith(msg) and "\n" not in str(e.value)
        assert isinstance(e.value, UserError) and e.value.row == 1
    row = dict(zip([c.name for c in enc.fmt.columns], f))
    json_cases = [({**row, "I2": "1.5x"}, "row 0: non-numeric I2 value"), ({**row, "nope": 1}, "row 0: unknown field 'nope'"),
                  ({k: v for k, v in row.items() if k != "C7"}, "row 0: missing field 'C7'"),
                  ({**row, "C1": {"a": 1}}, "row 0: field C1: dict value"), ({**row, "I1": True}, "row 0: field I1: bool"),
                  ({**row, "C2": "a\tb"}, "row 0: field C2: value holds a tab")]
    for bad, msg in json_cases:
        with pytest.raises(RowError, match="^" + msg):
            enc.encode_json([bad])
    d1, s1 = enc.encode_json([{**row, "I1": 3, "I2": None}])
    d2, s2 = enc.encode_lines(["\t".join([f[0], "3", ""] + f[3:])])
    np.testing.assert_array_equal(s1, s2)


# ----------------------------------------------------------------------------- the vocab/ dir


def test_vocab_dir_is_the_only_new_output_and_is_checksummed(tmp_path: Path, days: dict[str, tuple[Path, Path]]) -> None:
    train, _ = days["criteo"]
    for mode, kw in (("min_count", {}), ("hash", {"hash_size": 101})):
        out = tmp_path / mode
        schema = run(out, "criteo", inputs=[str(train)], **kw)
        assert sorted(p.name for p in out.iterdir()) == sorted(NPY + ["meta.json", "vocab"])
        files = sorted(p.name for p in (out / "vocab").iterdir())
        assert files == ([MANIFEST, VOCAB_FILE] if mode == "min_count" else [MANIFEST])
        sums = schema.preprocessing["vocab_sha256"]
        assert sums == {n: hashlib.sha256((out / "vocab" / n).read_bytes()).hexdigest() for n in files}
        m = json.loads((out / "vocab" / MANIFEST).read_text())
        assert m["format_version"] == 1 and m["mode"] == mode and m["dataset"] == "criteo"
        assert [(f["name"], f["num_embeddings"]) for f in m["fields"]] == \
            [(f.name, f.num_embeddings) for f in schema.sparse_features]
        saved = open_vocab(out)
        assert saved.mode == mode and open_vocab(out / "vocab") == saved
        if mode == "min_count":
            for (keys, ids), (_, size) in zip(saved.load(), saved.fields):
                assert keys.dtype == np.uint64 and (np.diff(keys.astype(np.float64)) > 0).all()
                assert sorted(ids.tolist()) == list(range(1, size))


def test_failed_run_keeps_the_old_vocab(tmp_path: Path, days: dict[str, tuple[Path, Path]]) -> None:
    train, _ = days["criteo"]
    out = tmp_path / "out"
    run(out, "criteo", inputs=[str(train)])
    before = {p.name: p.read_bytes() for p in (out / "vocab").iterdir()}
    bad = tmp_path / "bad.tsv"
    bad.write_text("".join(line.replace("\t", "\tx", 1) + "\n" for line in data_lines(train, "criteo")))
    assert main("criteo", ["--input", str(bad), "--output", str(out), "--no-progress"]) == 1
    assert {p.name: p.read_bytes() for p in (out / "vocab").iterdir()} == before
    open_vocab(out)  # still verifies against the kept meta.json


# ----------------------------------------------------------------------------- --vocab-from


@pytest.mark.parametrize("dataset,args", [("criteo", ["--engine", "native", "--workers", "2"]),
                                          ("criteo", ["--engine", "arrow", "--workers", "2"]),
                                          ("criteo", ["--hash", "997", "--workers", "1"]),
                                          ("criteo", ["--numeric", "dense"]),
                                          ("avazu", ["--workers", "2"]), ("kdd12", ["--hash", "50000"])])
def test_vocab_from_own_vocab_round_trips(tmp_path: Path, days: dict[str, tuple[Path, Path]], dataset: str,
                                          args: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    train, _ = days[dataset]
    common = ["--input", str(train), "--no-progress", "--chunk-mb", "0.05", "--seed", "4"]
    a, b = tmp_path / "a", tmp_path / "b"
    assert main(dataset, [*common, "--output", str(a), *args]) == 0
    keep = [x for i, x in enumerate(args) if x != "--hash" and (i == 0 or args[i - 1] != "--hash")]
    assert main(dataset, [*common, "--output", str(b), "--vocab-from", str(a), *keep]) == 0
    assert digests(a) == digests(b)
    sa, sb = Schema.load(a), Schema.load(b)
    assert sa.sparse_features == sb.sparse_features and sa.splits == sb.splits
    assert sb.preprocessing["vocab_from"] == str(a.resolve()) and sa.preprocessing["vocab_from"] is None
    assert sb.preprocessing["vocab"] == sa.preprocessing["vocab"]
    assert sb.preprocessing["vocab_sha256"] == sa.preprocessing["vocab_sha256"]  # the very same vocabulary
    assert "count_pass" not in sb.preprocessing["phase_seconds"]  # nothing counted


def test_vocab_from_new_day_maps_unseen_values_to_oov(tmp_path: Path, days: dict[str, tuple[Path, Path]]) -> None:
    train, test = days["criteo"]
    a, b = tmp_path / "a", tmp_path / "b"
    sa = run(a, "criteo", split_files={"train": [str(train)]})
    sb = run(b, "criteo", split_files={"test": [str(test)]}, vocab_from=str(a))  # a test day alone: no train rows
    assert sb.vocab_sizes == sa.vocab_sizes and sb.splits == {"train": 0, "val": 0, "test": 300}
    ids = np.load(b / "test_sparse.npy")
    enc = RawRowEncoder.from_dir(a)
    np.testing.assert_array_equal(ids, enc.encode_lines(data_lines(test, "criteo"))[1])
    assert (ids == 0).any() and (ids < np.array(sa.vocab_sizes)).all()
    # a value never seen in train is OOV; the same value as in train keeps its id
    c1 = sa.sparse_names.index("C1")
    r = int(np.flatnonzero(np.load(a / "train_sparse.npy")[:, c1] > 0)[0])  # a row whose C1 has its own id
    first = data_lines(train, "criteo")[r].split("\t")
    new = tmp_path / "new.tsv"
    new.write_text("\t".join(first[:14] + ["zzzzzzzz"] + first[15:]) + "\n" + "\t".join(first) + "\n")
    run(tmp_path / "c", "criteo", split_files={"test": [str(new)]}, vocab_from=str(a))
    got = np.load(tmp_path / "c" / "test_sparse.npy")
    assert got[0, c1] == 0 and got[1, c1] == np.load(a / "train_sparse.npy")[r, c1] > 0
    np.testing.assert_array_equal(np.delete(got[0], c1), np.delete(got[1], c1))


def _damage(d: Path, how: str) -> None:
    meta = json.loads((d / "meta.json").read_text())
    if how == "damaged":
        p = d / "vocab" / VOCAB_FILE
        data = bytearray(p.read_bytes())
        data[len(data) // 2] ^= 0xFF
        p.write_bytes(bytes(data))
    elif how == "missing file":
        (d / "vocab" / VOCAB_FILE).unlink()
    elif how in ("old conversion", "newer format"):
        if how == "old conversion":
            del meta["preprocessing"]["vocab_sha256"]
        else:
            m = json.loads((d / "vocab" / MANIFEST).read_text())
            m["format_version"] = 99
            (d / "vocab" / MANIFEST).write_text(json.dumps(m))
            meta["preprocessing"]["vocab_sha256"][MANIFEST] = hashlib.sha256((d / "vocab" / MANIFEST).read_bytes()
                                                                             ).hexdigest()
        (d / "meta.json").write_text(json.dumps(meta))


@pytest.mark.parametrize("how,message", [
    ("damaged", "vocab/vocab.npz: checksum does not match"),
    ("missing file", "vocab/vocab.npz: missing"),
    ("old conversion", "no saved vocabulary"),
    ("newer format", "vocab/manifest.json: vocabulary format_version 99 is newer"),
    ("no dir", "nope: no such directory"),
    ("not a data dir", "no meta.json: not a converted data dir"),
    ("other dataset", "a avazu vocabulary, not criteo"),
    ("other numeric", "converted with --numeric discretize, not dense"),
])
def test_bad_vocab_from_is_one_line_exit_2_nothing_written(tmp_path: Path, days: dict[str, tuple[Path, Path]],
                                                           how: str, message: str,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    train, _ = days["criteo"]
    src = tmp_path / "src"
    if how == "other dataset":
        run(src, "avazu", inputs=[str(days["avazu"][0])])
    elif how == "not a data dir":
        src.mkdir()
    elif how != "no dir":
        run(src, "criteo", inputs=[str(train)])
        _damage(src, how)
    vocab_from = tmp_path / "nope" if how == "no dir" else src
    out = tmp_path / "out"
    argv = ["--input", str(train), "--output", str(out), "--no-progress", "--vocab-from", str(vocab_from)]
    capsys.readouterr()
    rc = main("criteo", argv + (["--numeric", "dense"] if how == "other numeric" else []))
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert rc == 2 and len(err) == 1 and err[0].startswith("criteo_to_npy: error: ") and message in err[0], err
    assert not out.exists() and not list(tmp_path.glob(".out.convert-*"))
    if how not in ("no dir", "not a data dir", "other dataset", "other numeric"):
        with pytest.raises(VocabError, match=message.replace(".", r"\.")):
            RawRowEncoder.from_dir(src)


def test_vocab_from_refuses_its_own_counting_flags(tmp_path: Path, days: dict[str, tuple[Path, Path]]) -> None:
    train, _ = days["criteo"]
    src = tmp_path / "src"
    run(src, "criteo", inputs=[str(train)])
    with pytest.raises(UserError, match="give --vocab-from or --min-count/--hash, not both"):
        run(tmp_path / "o", "criteo", inputs=[str(train)], vocab_from=str(src), min_count=3)
    with pytest.raises(SystemExit) as e:
        main("criteo", ["--input", str(train), "--output", str(tmp_path / "o"), "--vocab-from", str(src),
                        "--hash", "5"])
    assert e.value.code == 2 and not (tmp_path / "o").exists()
