"""Hostile inputs, flags and failures for the raw-log converters (data_prep/*_to_npy.py).

Every case asserts three things (tests/hostile_util.py): the exit code, ONE error line that
names the file, row, flag or path at fault, and that the previous conversion in --output
(arrays, meta.json and a file of the user's) is byte-identical afterwards, with no staging
dir or temp file left.  Most cases call ``recsys.data.convert.main`` in-process (fast); the ones about
the real process (truncated .gz in each CLI, kill -9, SIGTERM, a full disk) run the CLI.
"""
from __future__ import annotations

import gzip
import io
import os
import signal
import subprocess
import sys
import time
import zlib
from contextlib import redirect_stderr
from pathlib import Path
from typing import Callable

import numpy as np
import pytest

from hostile_util import (
    REPO,
    assert_unchanged,
    converter_leftovers,
    one_line_error,
    run_cli,
    run_cli_file_limit,
    snapshot,
)
from recsys.data.convert import ConvertConfig, SplitWriter, convert, main
from recsys.data.convert import cli, driver, kernels, parse_arrow, staging, writer
from recsys.data.convert import pool as convert_pool
from recsys.data.schema import Schema
from recsys.data.synth import write_avazu, write_criteo, write_kdd12

# pyarrow calling back into Python and failing there prints "Exception ignored ... Traceback" in a
# real run; pytest only turns it into this warning, so make it fail the test
pytestmark = pytest.mark.filterwarnings("error::pytest.PytestUnraisableExceptionWarning")

WRITERS: dict[str, Callable[..., float]] = {"criteo": write_criteo, "avazu": write_avazu, "kdd12": write_kdd12}
SPLITS = ("train", "val", "test")
QUIET = ["--no-progress", "--workers", "1"]


# ----------------------------------------------------------------------------- helpers


@pytest.fixture(scope="module")
def raw(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A small valid raw file per dataset (written once per module)."""
    d = tmp_path_factory.mktemp("raw")
    files = {"criteo": d / "day_0.tsv", "avazu": d / "train.csv", "kdd12": d / "training.txt"}
    for name, path in files.items():
        WRITERS[name](path, 600, seed=7)
    return files


def previous(tmp_path: Path, raw: dict[str, Path], dataset: str = "criteo", **kw: object) -> tuple[Path, dict]:
    """An earlier, good conversion in ``tmp_path/out`` plus a file of the user's beside its
    arrays; returns (out, snapshot)."""
    out = tmp_path / "out"
    convert(ConvertConfig(dataset=dataset, output=str(out), inputs=[str(raw[dataset])], min_count=1,
                          progress=False, **kw), log=lambda s: None)  # type: ignore[arg-type]
    (out / "notes.txt").write_text("the user's own notes: never lost\n")
    before = snapshot(out)
    assert "meta.json" in before and "train_sparse.npy" in before and "notes.txt" in before
    return out, before


def run_main(dataset: str, argv: list[str]) -> tuple[int, str]:
    """``recsys.data.convert.main`` in-process: (exit code, stderr); an exception escaping it fails the test."""
    err = io.StringIO()
    with redirect_stderr(err):
        try:
            rc = main(dataset, argv)
        except SystemExit as e:  # argparse's own errors (usage + one error line, exit 2)
            rc = int(e.code or 0)
    return rc, err.getvalue()


def assert_failed_cleanly(rc: int, err: str, want_rc: int, *needles: str, out: Path, before: dict) -> str:
    """The three checks: exit code, one error line holding every needle, nothing lost or left."""
    assert rc == want_rc, err
    line = one_line_error(err)
    for n in needles:
        assert n in line, f"{n!r} not in {line!r}"
    assert_unchanged(before, out)
    assert converter_leftovers(out) == []
    return line


def arrays(out: Path) -> dict[str, np.ndarray]:
    return {f"{s}_{k}": np.load(out / f"{s}_{k}.npy") for s in SPLITS for k in ("dense", "sparse", "labels")}


def criteo_lines(raw: dict[str, Path]) -> list[str]:
    return raw["criteo"].read_text().splitlines()


def with_field(line: str, col: int, value: str, sep: str = "\t") -> str:
    f = line.split(sep)
    f[col] = value
    return sep.join(f)


# ----------------------------------------------------------------------------- flags


FLAG_CASES = [
    (["--min-count", "-1"], "--min-count must be >= 1", "-1"),
    (["--min-count", "0"], "--min-count must be >= 1", "0"),
    (["--workers", "0"], "--workers must be >= 1", "0"),
    (["--workers", "-1"], "--workers must be >= 1", "-1"),
    (["--max-bad-fraction", "-1"], "--max-bad-fraction must be a fraction in [0, 1]", "-1.0"),
    (["--max-bad-fraction", "1.5"], "--max-bad-fraction must be a fraction in [0, 1]", "1.5"),
    (["--max-bad-fraction", "nan"], "--max-bad-fraction must be a fraction in [0, 1]", "nan"),
    (["--chunk-mb", "0"], "--chunk-mb must be a positive number", "0.0"),
    (["--chunk-mb", "-3"], "--chunk-mb must be a positive number", "-3.0"),
    (["--chunk-mb", "inf"], "--chunk-mb must be a positive number", "inf"),
    (["--hash", "0"], "--hash must be in 1..", "got 0"),
    (["--hash", "-7"], "--hash must be in 1..", "-7"),
    (["--hash", "3000000000"], "(ids are int32)", "3000000000"),
    (["--split", "-0.1,0.6,0.5"], "--split must be three non-negative fractions", "-0.1"),
    (["--split", "nan,0.5,0.5"], "--split must be three non-negative fractions", "nan"),
    (["--split", "0.5,0.5"], "--split must be three non-negative fractions", "0.5"),
    (["--split", "a,b,c"], "--split wants three fractions", "'a,b,c'"),
    (["--split", "0,0.5,0.5"], "no train rows to count the vocabularies on", "--hash"),
    (["--seed", "-1"], "--seed must be >= 0", "-1"),
]


@pytest.mark.parametrize("flags,message,value", FLAG_CASES, ids=[" ".join(c[0]) for c in FLAG_CASES])
def test_bad_flag_is_refused_before_any_work(tmp_path: Path, raw: dict[str, Path], flags: list[str], message: str,
                                             value: str) -> None:
    out, before = previous(tmp_path, raw)
    rc, err = run_main("criteo", ["--input", str(raw["criteo"]), "--output", str(out), *QUIET, *flags])
    assert_failed_cleanly(rc, err, 2, message, value, out=out, before=before)


def test_flags_are_checked_before_the_inputs(tmp_path: Path) -> None:
    """A bad flag is reported even when the input is missing: nothing is opened first."""
    rc, err = run_main("criteo", ["--input", str(tmp_path / "nope.tsv"), "--output", str(tmp_path / "o"),
                                  "--workers", "0", "--no-progress"])
    assert rc == 2 and "--workers must be >= 1" in one_line_error(err)
    assert not (tmp_path / "o").exists() and converter_leftovers(tmp_path / "o") == []


def test_output_that_is_a_file(tmp_path: Path, raw: dict[str, Path]) -> None:
    blocker = tmp_path / "results.txt"
    blocker.write_text("precious")
    rc, err = run_main("criteo", ["--input", str(raw["criteo"]), "--output", str(blocker), *QUIET])
    assert rc == 2
    assert one_line_error(err).endswith(f"{blocker}: is a file, not a directory")
    assert blocker.read_text() == "precious" and converter_leftovers(blocker) == []
    rc, err = run_main("criteo", ["--input", str(raw["criteo"]), "--output", str(blocker / "sub" / "o"), *QUIET])
    assert rc == 2
    assert f"{blocker}: is a file, not a directory (in --output {blocker}/sub/o)" in one_line_error(err)
    assert blocker.read_text() == "precious"


def test_empty_output_path_and_input_with_explicit_splits(tmp_path: Path, raw: dict[str, Path]) -> None:
    rc, err = run_main("criteo", ["--input", str(raw["criteo"]), "--output", "", *QUIET])
    assert rc == 2 and "--output is empty" in one_line_error(err)
    out, before = previous(tmp_path, raw)
    rc, err = run_main("criteo", ["--input", str(raw["criteo"]), "--train", str(raw["criteo"]),
                                  "--output", str(out), *QUIET])
    assert_failed_cleanly(rc, err, 2, "not both", out=out, before=before)


# ----------------------------------------------------------------------------- damaged files


def _truncated_gz(src: Path, dst: Path) -> Path:
    """gzip of ``src`` cut at 60%: the first chunks decompress fine, the damage is found mid-run."""
    data = gzip.compress(src.read_bytes(), compresslevel=1)
    dst.write_bytes(data[: int(len(data) * 0.6)])
    return dst


@pytest.mark.parametrize("dataset", ["criteo", "avazu", "kdd12"])
def test_truncated_gz_in_each_cli(tmp_path: Path, raw: dict[str, Path], dataset: str) -> None:
    """The real CLI, a subprocess: one line naming the file and how far it got, exit 2, old kept."""
    big = tmp_path / f"big_{dataset}"
    WRITERS[dataset](big, 6000, seed=3)
    bad = _truncated_gz(big, tmp_path / f"cut_{dataset}.gz")
    out, before = previous(tmp_path, raw, dataset)
    rc, err = run_cli([f"data_prep/{dataset}_to_npy.py", "--input", str(bad), "--output", str(out),
                       "--chunk-mb", "0.0625", *QUIET])  # 64 KB chunks: several written before the damage
    line = assert_failed_cleanly(rc, err, 2, f"{bad}: truncated gzip file", "decompressed bytes", out=out,
                                 before=before)
    good = int(line.split("after ")[1].split(" decompressed")[0].replace(",", ""))
    # how far it got: all that can be decompressed (zlib in one call as the oracle), which is past
    # the first 64 KB chunk and short of the whole file
    assert good == len(zlib.decompressobj(wbits=31).decompress(bad.read_bytes()))
    assert 65536 < good < big.stat().st_size


def test_corrupt_gz_and_gz_that_is_not_gzip(tmp_path: Path, raw: dict[str, Path]) -> None:
    out, before = previous(tmp_path, raw)
    data = bytearray(gzip.compress(raw["criteo"].read_bytes()))
    data[len(data) // 2] ^= 0xFF
    flipped = tmp_path / "flipped.tsv.gz"
    flipped.write_bytes(bytes(data))
    rc, err = run_main("criteo", ["--input", str(flipped), "--output", str(out), *QUIET])
    assert_failed_cleanly(rc, err, 2, f"{flipped}:", "gzip data", "decompressed bytes", out=out, before=before)
    plain = tmp_path / "plain.tsv.gz"
    plain.write_bytes(raw["criteo"].read_bytes())
    rc, err = run_main("criteo", ["--input", str(plain), "--output", str(out), *QUIET])
    assert_failed_cleanly(rc, err, 2, f"{plain}: not gzip data", out=out, before=before)


@pytest.mark.parametrize("dataset", ["criteo", "avazu", "kdd12"])
def test_binary_input(tmp_path: Path, raw: dict[str, Path], dataset: str) -> None:
    out, before = previous(tmp_path, raw, dataset)
    rng = np.random.default_rng(0)
    noise = tmp_path / "noise.bin"
    noise.write_bytes(rng.integers(1, 256, 4096, dtype=np.uint8).tobytes())  # no NUL: non-text by majority
    nul = tmp_path / "nul.bin"
    nul.write_bytes(raw[dataset].read_bytes()[:500] + b"\x00" + raw[dataset].read_bytes()[500:2000])
    for f in (noise, nul):
        rc, err = run_main(dataset, ["--input", str(f), "--output", str(out), *QUIET])
        line = assert_failed_cleanly(rc, err, 2, f"{f}: binary data, not a {dataset} text log", out=out,
                                     before=before)
        assert "Avazu" not in line  # the old misleading hint
    rc, err = run_main(dataset, ["--input", str(out / "train_sparse.npy"), "--output", str(out), *QUIET])
    assert_failed_cleanly(rc, err, 2, "train_sparse.npy: a NumPy .npy array", out=out, before=before)
    packed = tmp_path / "packed.txt"
    packed.write_bytes(gzip.compress(raw[dataset].read_bytes()))
    rc, err = run_main(dataset, ["--input", str(packed), "--output", str(out), *QUIET])
    assert_failed_cleanly(rc, err, 2, f"{packed}: gzip-compressed data", "*.gz", out=out, before=before)


def test_latin1_text_is_not_called_binary(tmp_path: Path, raw: dict[str, Path]) -> None:
    """A few non-UTF-8 bytes in categorical values are text, converted as opaque values."""
    lines = criteo_lines(raw)
    lines = [with_field(ln, 20, "caf\xe9") if i % 10 == 0 else ln for i, ln in enumerate(lines)]
    src = tmp_path / "latin1.tsv"
    src.write_bytes(("\n".join(lines) + "\n").encode("latin-1"))
    rc, err = run_main("criteo", ["--input", str(src), "--output", str(tmp_path / "o"), *QUIET, "--min-count", "1"])
    assert rc == 0, err
    assert Schema.load(tmp_path / "o").splits["train"] > 0


@pytest.mark.parametrize("dataset", ["criteo", "avazu", "kdd12"])
def test_wrong_column_counts_everywhere(tmp_path: Path, raw: dict[str, Path], dataset: str) -> None:
    """A file whose rows after the first have one column too few: too many bad rows, found after
    the first chunks were written; exit 1, the first bad row named, old output kept."""
    out, before = previous(tmp_path, raw, dataset)
    sep = "," if dataset == "avazu" else "\t"
    lines = raw[dataset].read_text().splitlines()
    head = 2 if dataset == "avazu" else 1  # header + first row stay good
    cut = lines[:head] + [ln.rsplit(sep, 1)[0] for ln in lines[head:]]
    src = tmp_path / "short.txt"
    src.write_text("\n".join(cut) + "\n")
    rc, err = run_main(dataset, ["--input", str(src), "--output", str(out), *QUIET])
    ncol = len(lines[-1].split(sep))
    assert_failed_cleanly(rc, err, 1, "rows malformed", f"first: {src}:{head + 1}: expected {ncol} columns, "
                          f"got {ncol - 1}", out=out, before=before)


def test_all_rows_bad_fails_even_at_max_bad_fraction_1(tmp_path: Path, raw: dict[str, Path]) -> None:
    """--max-bad-fraction 1 allows any share of bad rows, but not an empty dataset (it used to
    "succeed" with 0 rows in every split)."""
    out, before = previous(tmp_path, raw, "kdd12")
    lines = raw["kdd12"].read_text().splitlines()
    src = tmp_path / "all_bad.txt"
    src.write_text("\n".join(with_field(ln, 0, "click?") for ln in lines) + "\n")
    rc, err = run_main("kdd12", ["--input", str(src), "--output", str(out), *QUIET, "--max-bad-fraction", "1"])
    assert_failed_cleanly(rc, err, 1, "all 600 rows malformed, nothing to convert",
                          f"first: {src}:1: bad Click (label) value 'click?'", out=out, before=before)


@pytest.mark.parametrize("dataset", ["criteo", "avazu", "kdd12"])
def test_crlf_converts_like_lf(tmp_path: Path, raw: dict[str, Path], dataset: str) -> None:
    crlf = tmp_path / "crlf.txt"
    crlf.write_bytes(raw[dataset].read_bytes().replace(b"\n", b"\r\n"))
    outs = []
    for name, src in (("lf", raw[dataset]), ("crlf", crlf)):
        rc, err = run_main(dataset, ["--input", str(src), "--output", str(tmp_path / name), *QUIET,
                                     "--min-count", "1"])
        assert rc == 0, err
        outs.append(arrays(tmp_path / name))
    for k in outs[0]:
        np.testing.assert_array_equal(outs[0][k], outs[1][k])
    assert Schema.load(tmp_path / "crlf").preprocessing["bad_rows"] == 0


def test_lone_carriage_return_keeps_line_numbers_right(tmp_path: Path, raw: dict[str, Path]) -> None:
    """Avazu (pyarrow only): a CR inside a row once split it in two rows and shifted every later
    bad-row line number by one; now it is one bad row and later reports name the right line."""
    lines = raw["avazu"].read_text().splitlines()
    lines[10] = with_field(lines[10], 6, "ab\rcd", ",")  # line 11: site_domain
    lines[20] = with_field(lines[20], 2, "14x02100", ",")  # line 21: bad hour
    src = tmp_path / "cr.csv"
    src.write_text("\n".join(lines) + "\n")
    out = tmp_path / "o"
    rc, err = run_main("avazu", ["--input", str(src), "--output", str(out), *QUIET, "--max-bad-fraction", "0.01"])
    assert rc == 0, err
    assert f"{src}:11: carriage return inside the line" in err and f"{src}:21: bad hour value" in err
    meta = Schema.load(out)
    assert meta.preprocessing["rows_read"] == 600 and meta.preprocessing["bad_rows"] == 2


@pytest.mark.parametrize("dataset", ["avazu", "kdd12"])
def test_non_utf8_bad_row_in_the_real_cli(tmp_path: Path, raw: dict[str, Path], dataset: str) -> None:
    """A damaged row that is also not UTF-8: counted as one bad row; stderr (the real process's,
    where pyarrow once printed a traceback) holds no traceback."""
    sep = b"," if dataset == "avazu" else b"\t"
    lines = raw[dataset].read_bytes().splitlines()
    lines[9] = lines[9] + sep + b"caf\xe9"  # line 10: one column too many, latin-1
    src = tmp_path / "latin1_bad.txt"
    src.write_bytes(b"\n".join(lines) + b"\n")
    out = tmp_path / "o"
    rc, err = run_cli([f"data_prep/{dataset}_to_npy.py", "--input", str(src), "--output", str(out), *QUIET,
                       "--max-bad-fraction", "0.01"])
    assert rc == 0, err
    assert "Traceback" not in err and "Exception ignored" not in err
    ncol = len(lines[1].split(sep))
    assert f"{src}:10: expected {ncol} columns, got {ncol + 1}" in err
    assert Schema.load(out).preprocessing["bad_rows"] == 1


def test_header_only_and_blank_only_files(tmp_path: Path, raw: dict[str, Path]) -> None:
    out, before = previous(tmp_path, raw, "avazu")
    header = tmp_path / "header.csv"
    header.write_text(raw["avazu"].read_text().splitlines()[0] + "\n")
    rc, err = run_main("avazu", ["--input", str(header), "--output", str(out), *QUIET])
    assert_failed_cleanly(rc, err, 2, f"{header}: no data rows", out=out, before=before)
    blank = tmp_path / "blank.tsv"
    blank.write_text("\n\r\n\n")
    rc, err = run_main("kdd12", ["--input", str(blank), "--output", str(out), *QUIET])
    assert_failed_cleanly(rc, err, 2, f"{blank}: empty file", out=out, before=before)


def test_cr_only_line_ends_get_a_hint(tmp_path: Path, raw: dict[str, Path]) -> None:
    out, before = previous(tmp_path, raw)
    mac = tmp_path / "mac.tsv"
    mac.write_bytes(raw["criteo"].read_bytes().replace(b"\n", b"\r"))
    rc, err = run_main("criteo", ["--input", str(mac), "--output", str(out), *QUIET])
    assert_failed_cleanly(rc, err, 2, f"{mac}:1: not a criteo file", "CR only", out=out, before=before)


@pytest.mark.parametrize("engine", ["native", "arrow"])
def test_extreme_numbers_give_finite_dense_values(tmp_path: Path, raw: dict[str, Path], engine: str) -> None:
    """1e308, -1e308, the largest double, a denormal: finite outputs in both numeric modes;
    1e309 (overflows), inf, nan and NA are bad rows, reported with their text."""
    lines = criteo_lines(raw)
    extremes = ["1e308", "-1e308", "1.7976931348623157e308", "1e-320", "4.9e-324", "-0"]
    good = [with_field(lines[i], 1 + i, v) for i, v in enumerate(extremes)]  # row i: I(i+1)
    words = ["1e309", "inf", "nan", "NA", "-1e999", "9" * 400]  # the last: ~1e400, overflows too
    bad = [with_field(lines[50 + i], 2, v) for i, v in enumerate(words)]
    src = tmp_path / "extreme.tsv"
    src.write_text("\n".join(good + lines[len(good):50] + bad + lines[50 + len(bad):]) + "\n")
    for numeric in ("dense", "discretize"):
        out = tmp_path / numeric
        rc, err = run_main("criteo", ["--input", str(src), "--output", str(out), *QUIET, "--min-count", "1",
                                      "--numeric", numeric, "--engine", engine, "--max-bad-fraction", "0.05",
                                      "--split", "1,0,0"])
        assert rc == 0, err
        meta = Schema.load(out)
        assert meta.preprocessing["bad_rows"] == len(words)
        a = arrays(out)
        assert all(np.isfinite(v).all() for v in a.values())
        sizes = np.array(meta.vocab_sizes)
        assert (a["train_sparse"] >= 0).all() and (a["train_sparse"] < sizes).all()
        if numeric == "dense":
            d = a["train_dense"]
            assert d.shape == (len(lines) - len(words), 13)
            np.testing.assert_allclose(np.diag(d[:3, :3]), np.log1p([1e308, 0.0, 1.7976931348623157e308]),
                                       rtol=1e-6)  # -1e308: log(1 + max(v, 0)) = 0
            assert d[3, 3] == d[4, 4] == d[5, 5] == 0.0  # denormals: 0 in float32; -0 -> 0
        for i, v in enumerate(words[:5]):
            assert f"{src}:{51 + i}: non-numeric I2 value {v!r}" in err


def test_huge_integer_ids_are_bad_rows_not_collisions(tmp_path: Path, raw: dict[str, Path]) -> None:
    """Beyond 2^53 a float64 id is not exact (and beyond 2^63 all collapsed to one key): such ids
    in KDD12/Avazu integer columns are reported bad, never silently merged."""
    lines = raw["kdd12"].read_text().splitlines()
    lines[3] = with_field(lines[3], 3, "9007199254740993")
    lines[4] = with_field(lines[4], 3, "1e308")
    src = tmp_path / "ids.txt"
    src.write_text("\n".join(lines) + "\n")
    rc, err = run_main("kdd12", ["--input", str(src), "--output", str(tmp_path / "o"), *QUIET,
                                 "--max-bad-fraction", "0.01", "--min-count", "1"])
    assert rc == 0, err
    assert f"{src}:4: non-integer or out-of-range AdID value '9007199254740993'" in err
    assert f"{src}:5: non-integer or out-of-range AdID value '1e308'" in err
    assert "RuntimeWarning" not in err


@pytest.mark.parametrize("engine", ["native", "arrow"])
def test_very_long_lines(tmp_path: Path, raw: dict[str, Path], engine: str) -> None:
    """A valid row with a 2 MB categorical value converts (arrow once failed: a line longer
    than its 1 MB block); a 2 MB junk value in a numeric column is a bad row shown cut short."""
    lines = criteo_lines(raw)
    lines[0] = with_field(lines[0], 20, "x" * (2 << 20))
    lines[1] = with_field(lines[1], 2, "y" * (2 << 20))
    src = tmp_path / "long.tsv"
    src.write_text("\n".join(lines) + "\n")
    out = tmp_path / "o"
    rc, err = run_main("criteo", ["--input", str(src), "--output", str(out), *QUIET, "--min-count", "1",
                                  "--engine", engine, "--max-bad-fraction", "0.01"])
    assert rc == 0, err
    assert f"{src}:2: non-numeric I2 value '{'y' * 40}'... (2,097,152 chars)" in err
    assert Schema.load(out).preprocessing["bad_rows"] == 1
    assert sum(a.shape[0] for k, a in arrays(out).items() if k.endswith("labels")) == len(lines) - 1


def test_empty_fields(tmp_path: Path, raw: dict[str, Path]) -> None:
    """Empty numeric and categorical fields are values (their own token); an empty label, or an
    empty Avazu integer field, is a bad row shown as ''."""
    lines = criteo_lines(raw)
    lines[0] = "\t".join([lines[0].split("\t")[0]] + [""] * 39)
    lines[1] = with_field(lines[1], 0, "")
    src = tmp_path / "empty_fields.tsv"
    src.write_text("\n".join(lines) + "\n")
    rc, err = run_main("criteo", ["--input", str(src), "--output", str(tmp_path / "c"), *QUIET, "--min-count", "1",
                                  "--max-bad-fraction", "0.01"])
    assert rc == 0, err
    assert f"{src}:2: bad label (label) value ''" in err and Schema.load(tmp_path / "c").preprocessing["bad_rows"] == 1
    av = raw["avazu"].read_text().splitlines()
    av[5] = with_field(av[5], 3, "", ",")  # C1
    asrc = tmp_path / "empty_fields.csv"
    asrc.write_text("\n".join(av) + "\n")
    rc, err = run_main("avazu", ["--input", str(asrc), "--output", str(tmp_path / "a"), *QUIET,
                                 "--max-bad-fraction", "0.01"])
    assert rc == 0, err
    assert f"{asrc}:6: non-integer or out-of-range C1 value ''" in err


@pytest.mark.parametrize("engine", ["native", "arrow"])
def test_bad_value_is_shown_with_file_and_line(tmp_path: Path, raw: dict[str, Path], engine: str) -> None:
    out, before = previous(tmp_path, raw)
    lines = criteo_lines(raw)
    for i in range(10, 30):
        lines[i] = with_field(lines[i], 2, "twelve" if i == 10 else "z" * 100)
    src = tmp_path / "words.tsv"
    src.write_text("\n".join(lines) + "\n")
    rc, err = run_main("criteo", ["--input", str(src), "--output", str(out), *QUIET, "--engine", engine])
    assert_failed_cleanly(rc, err, 1, "20 of 600 rows malformed", f"first: {src}:11: non-numeric I2 value 'twelve'",
                          out=out, before=before)
    rc, err = run_main("criteo", ["--input", str(src), "--output", str(tmp_path / "lenient"), *QUIET,
                                  "--engine", engine, "--max-bad-fraction", "0.5", "--min-count", "1"])
    assert rc == 0 and f"{src}:12: non-numeric I2 value '{'z' * 40}'... (100 chars)" in err


@pytest.mark.parametrize("engine", ["native", "arrow"])
def test_null_words_are_bad_values_in_both_engines(tmp_path: Path, raw: dict[str, Path], engine: str) -> None:
    """``nan``/``NA``/``null`` in a numeric column, in a chunk with no other bad value: arrow's
    typed reader used to take them for empty fields (nan) while the C scanner rejected them."""
    lines = criteo_lines(raw)
    for i, w in enumerate(["nan", "NaN", "-nan"]):
        lines[100 + i] = with_field(lines[100 + i], 4, w)
    src = tmp_path / "nan.tsv"
    src.write_text("\n".join(lines) + "\n")
    out = tmp_path / engine
    rc, err = run_main("criteo", ["--input", str(src), "--output", str(out), *QUIET, "--engine", engine,
                                  "--max-bad-fraction", "0.01", "--min-count", "1", "--numeric", "dense"])
    assert rc == 0, err
    assert Schema.load(out).preprocessing["bad_rows"] == 3
    assert f"{src}:101: non-numeric I4 value 'nan'" in err


# ----------------------------------------------------------------------------- the non-finite guard


@pytest.mark.parametrize("engine", ["native", "arrow"])
def test_non_finite_dense_value_stops_the_run(tmp_path: Path, raw: dict[str, Path], engine: str,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """A parser fault that lets NaN through (injected here) is never written: exit 1, the file
    line and feature named, old output kept."""
    out, before = previous(tmp_path, raw)
    lines = criteo_lines(raw)
    lines[300] = with_field(lines[300], 5, "12345")
    src = tmp_path / "nan_inside.tsv"
    src.write_text("\n".join(lines) + "\n")
    if engine == "native":
        table = kernels._LOG_TABLE.copy()
        table[12345] = np.nan
        monkeypatch.setattr(kernels, "_LOG_TABLE", table)
    else:
        real = parse_arrow._typed_numeric

        def faulty(col, v, empty, numeric):  # type: ignore[no-untyped-def]
            res = real(col, v, empty, numeric)
            if res.dense is not None:
                res.dense[v == 12345] = np.inf
            return res

        monkeypatch.setattr(parse_arrow, "_typed_numeric", faulty)
    rc, err = run_main("criteo", ["--input", str(src), "--output", str(out), *QUIET, "--engine", engine,
                                  "--numeric", "dense", "--chunk-mb", "0.0625"])
    assert_failed_cleanly(rc, err, 1, f"{src}:301: dense feature I5 is", "nothing written", out=out, before=before)


# ----------------------------------------------------------------------------- failures mid-run


def test_keyboard_interrupt_keeps_the_old_output(tmp_path: Path, raw: dict[str, Path],
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    out, before = previous(tmp_path, raw)
    big = tmp_path / "big.tsv"
    write_criteo(big, 3000, seed=1)
    calls = {"n": 0}
    real = driver.run_count_chunk

    def interrupted(job, task):  # type: ignore[no-untyped-def]
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real(job, task)

    monkeypatch.setattr(driver, "run_count_chunk", interrupted)
    rc, err = run_main("criteo", ["--input", str(big), "--output", str(out), *QUIET, "--chunk-mb", "0.0625"])
    assert rc == 130 and calls["n"] == 3 and f"interrupted; {out} left as it was" in err
    assert_unchanged(before, out)
    assert converter_leftovers(out) == []


@pytest.mark.parametrize("mode", [["--hash", "1000"], ["--min-count", "1"]])
def test_full_disk_keeps_the_old_output(tmp_path: Path, raw: dict[str, Path], mode: list[str]) -> None:
    """RLIMIT_FSIZE makes every write past 1 MB fail with EFBIG, like a full disk: hash mode fails
    appending rows, vocabulary mode preallocating its outputs."""
    out, before = previous(tmp_path, raw)
    big = tmp_path / "big.tsv"
    write_criteo(big, 12000, seed=1)  # train_sparse alone: ~1.5 MB
    rc, err = run_cli_file_limit(["data_prep/criteo_to_npy.py", "--input", str(big), "--output", str(out),
                                  *QUIET, "--chunk-mb", "0.0625", *mode], max_file_bytes=1 << 20)
    line = assert_failed_cleanly(rc, err, 2, f"{out}: cannot write", "File too large", f"{out} left as it was",
                                 out=out, before=before)
    assert "train_sparse.npy" in line


def test_commit_closes_every_file_and_reports_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Three of nine closes fail (disk full while flushing): all nine are closed anyway, the one
    error names the first and counts the rest, and abort deletes every file."""
    w = SplitWriter(tmp_path, 2, 3)
    real = writer.NpyAppender.close
    failing = {"train_sparse.npy.tmp", "val_dense.npy.tmp", "test_labels.npy.tmp"}

    def close(self):  # type: ignore[no-untyped-def]
        real(self)
        if self.path.name in failing:
            raise OSError(28, "No space left on device", str(self.path))

    monkeypatch.setattr(writer.NpyAppender, "close", close)
    with pytest.raises(OSError) as e:
        w.commit()
    assert e.value.errno == 28 and e.value.filename.endswith("train_sparse.npy.tmp")
    assert "(and 2 more of the 9 output files)" in e.value.strerror
    assert all(f.fh.closed for f in w.files.values())
    assert w.abort() == [] and list(tmp_path.iterdir()) == []


# ----------------------------------------------------------------------------- kill -9, SIGTERM

SLOW_CLI = r"""
import sys, time
from pathlib import Path
from recsys.data.convert import cli, driver as p
marker, phase, after = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
real = getattr(p, phase)
calls = [0]
def slow(job, item):
    out = real(job, item)
    calls[0] += 1
    if calls[0] == after:  # mid-run: chunks done, outputs open; now wait to be killed
        marker.write_text("ready")
        time.sleep(600)
    return out
setattr(p, phase, slow)
sys.exit(cli.main("criteo", sys.argv[4:]))
"""


def _start_slow_cli(tmp_path: Path, phase: str, after: int, argv: list[str]) -> tuple[subprocess.Popen, Path]:
    """The converter CLI (``recsys.data.convert.main`` in a fresh process) stopped for good in ``phase``
    after ``after`` chunks: a deterministic mid-run point to kill it at, whatever the machine."""
    marker = tmp_path / f"ready_{phase}"
    proc = subprocess.Popen([sys.executable, "-c", SLOW_CLI, str(marker), phase, str(after), *argv], cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    deadline = time.monotonic() + 240  # a hang guard, not a timing assertion
    while not marker.exists():
        if proc.poll() is not None:
            pytest.fail(f"the converter ended before the kill point: rc {proc.returncode}\n{proc.stderr.read()}")
        if time.monotonic() > deadline:
            os.killpg(proc.pid, signal.SIGKILL)
            pytest.fail("the converter never reached the kill point")
        time.sleep(0.02)
    return proc, marker


@pytest.mark.parametrize("phase,workers,engine", [("run_count_chunk", 1, "native"), ("run_map_chunk", 1, "native"),
                                                  ("run_hash_chunk", 2, "arrow")])
def test_kill_9_mid_run_keeps_the_old_output_and_next_run_cleans_up(tmp_path: Path, raw: dict[str, Path],
                                                                    phase: str, workers: int, engine: str) -> None:
    out, before = previous(tmp_path, raw)
    big = tmp_path / "big.tsv"
    write_criteo(big, 8000, seed=2)  # ~2 MB: 32 chunks of 64 KB
    mode = ["--hash", "5000"] if phase == "run_hash_chunk" else ["--min-count", "1"]
    argv = ["--input", str(big), "--output", str(out), "--no-progress", "--chunk-mb", "0.0625",
            "--workers", str(workers), "--engine", engine, *mode]
    proc, _ = _start_slow_cli(tmp_path, phase, 3, argv)
    os.killpg(proc.pid, signal.SIGKILL)  # the whole group: forked pool workers die too
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    assert_unchanged(before, out)  # byte-identical, meta.json included
    left = converter_leftovers(out)
    assert len(left) == 1 and left[0].startswith(".out.convert-"), left  # what the kill left behind
    staging = out.parent / left[0]
    assert (staging / ".convert_cache").is_dir() and list(staging.glob("*.npy.tmp"))
    # the next run that reaches the output, even a failing one, removes the dead run's leftovers
    rc, err = run_main("criteo", ["--input", str(_late_bad(tmp_path, raw)), "--output", str(out), *QUIET])
    assert_failed_cleanly(rc, err, 1, "rows malformed", out=out, before=before)
    assert not staging.exists()
    rc, err = run_main("criteo", ["--input", str(big), "--output", str(out), *QUIET, "--chunk-mb", "0.0625", *mode])
    assert rc == 0, err
    assert converter_leftovers(out) == [] and not staging.exists()
    assert Schema.load(out).preprocessing["inputs"] == [str(big)]
    assert (out / "notes.txt").read_text() == "the user's own notes: never lost\n"


def test_sigterm_cleans_up_at_once(tmp_path: Path, raw: dict[str, Path]) -> None:
    out, before = previous(tmp_path, raw)
    big = tmp_path / "big.tsv"
    write_criteo(big, 3000, seed=2)
    proc, _ = _start_slow_cli(tmp_path, "run_count_chunk", 2, ["--input", str(big), "--output", str(out),
                                                              "--no-progress", "--chunk-mb", "0.0625",
                                                              "--workers", "1"])
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143
    assert f"terminated; {out} left as it was" in err and "Traceback" not in err
    assert_unchanged(before, out)
    assert converter_leftovers(out) == []


POOL_TERMINATE = r"""
from recsys.data.convert import pool as p
from recsys.data.convert.errors import InputError
def big(job, item):
    return b"x" * (8 << 20)  # a result larger than a pipe's buffer: sent in many writes
def items():
    yield from range(8)
    raise InputError("damaged input found mid-run")
for attempt in range(4):
    pool = p.make_pool(4, "arrow")
    try:
        for _ in p.ordered_map(big, items(), None, pool, 4):
            pass
    except InputError:
        pass
    pool.terminate()
    pool.join()
print("terminated cleanly")
"""


def test_failure_mid_run_never_hangs_the_process_pool(tmp_path: Path) -> None:
    """Pool.terminate() hung when a worker was still sending a large result (pass-1 counts)
    as the run failed: terminate stops the result thread first, the worker then blocks on the
    full pipe holding its lock.  ordered_map now lets in-flight chunks finish before."""
    proc = subprocess.Popen([sys.executable, "-c", POOL_TERMINATE], cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=120)  # a hang guard: a healthy run takes ~1 s
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # the stuck pool workers too
        proc.communicate()
        pytest.fail("Pool.terminate() hung after a failure mid-run")
    assert proc.returncode == 0 and "terminated cleanly" in out, err


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads signal masks from /proc (Linux)")
def test_pool_workers_do_not_inherit_the_sigterm_handler() -> None:
    """main() turns SIGTERM into an exception; a forked worker that inherited it would ignore
    Pool.terminate()'s SIGTERM while busy in C code or blocked on the task queue (seen: a worker
    left stuck forever).  Workers reset it to the default action."""
    old = signal.signal(signal.SIGTERM, cli._on_sigterm)  # as main() does; restored below
    pool = convert_pool.make_pool(2, "arrow")
    try:
        pool.apply(time.sleep, (0,))  # the initializer has run in at least one worker
        time.sleep(0.2)
        for proc in pool._pool:  # the worker processes (a private list, stable since Python 3.0)
            status = dict(ln.split(":", 1) for ln in Path(f"/proc/{proc.pid}/status").read_text().splitlines())
            bit = 1 << (signal.SIGTERM - 1)
            assert not int(status["SigCgt"], 16) & bit, f"worker {proc.pid} catches SIGTERM"
            assert not int(status["SigBlk"], 16) & bit, f"worker {proc.pid} blocks SIGTERM"
        assert not signal.pthread_sigmask(signal.SIG_BLOCK, set()) & {signal.SIGTERM}  # nor does the parent
    finally:
        pool.terminate()
        pool.join()
        signal.signal(signal.SIGTERM, old)


TERMINATE_AT_ONCE = r"""
import signal
from recsys.data.convert import cli, pool as p
signal.signal(signal.SIGTERM, cli._on_sigterm)  # as main() does
for attempt in range(100):  # a failure right at the start of a run: the pool is terminated at once
    pool = p.make_pool(2, "arrow")
    pool.terminate()
    pool.join()
print("terminated cleanly")
"""


def test_pool_terminated_right_after_it_forked(tmp_path: Path) -> None:
    """A worker SIGTERMed by terminate() before its initializer ran got the inherited Python
    handler: a ``Terminated`` traceback on stderr, or (the signal then dropped once the
    initializer reset the handler) a worker blocked forever and terminate() hung (found by
    the fuzz: a truncated .gz so small the run failed before its first chunk).  Workers are
    forked with SIGTERM blocked now."""
    proc = subprocess.Popen([sys.executable, "-c", TERMINATE_AT_ONCE], cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=120)  # a hang guard: a healthy run takes ~2 s
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        pytest.fail("Pool.terminate() hung on a worker that lost its SIGTERM")
    assert proc.returncode == 0 and "terminated cleanly" in out, err
    assert "Traceback" not in err and "Terminated" not in err, err


def test_truncated_gz_with_forked_workers(tmp_path: Path, raw: dict[str, Path]) -> None:
    """The same failure through the CLI: pyarrow workers in processes, vocabulary mode (large
    pass-1 results), damage found by the parent mid-run."""
    big = tmp_path / "big.csv"
    write_avazu(big, 20000, seed=3)
    bad = _truncated_gz(big, tmp_path / "cut.csv.gz")
    out, before = previous(tmp_path, raw, "avazu")
    rc, err = run_cli(["data_prep/avazu_to_npy.py", "--input", str(bad), "--output", str(out), "--no-progress",
                       "--workers", "2", "--chunk-mb", "0.0625"], timeout=240)
    assert_failed_cleanly(rc, err, 2, f"{bad}: truncated gzip file", out=out, before=before)


# ----------------------------------------------------------------------------- the staging dir and the swap


def test_reconversion_replaces_arrays_and_keeps_the_users_files(tmp_path: Path, raw: dict[str, Path]) -> None:
    out, before = previous(tmp_path, raw)
    (out / "plots").mkdir()
    (out / "plots" / "auc.png").write_bytes(b"\x89PNG...")
    os.chmod(out, 0o750)
    other = tmp_path / "other.tsv"
    write_criteo(other, 900, seed=11)
    rc, err = run_main("criteo", ["--input", str(other), "--output", str(out), *QUIET, "--min-count", "1"])
    assert rc == 0, err
    assert (out / "notes.txt").read_text() == "the user's own notes: never lost\n"
    assert (out / "plots" / "auc.png").read_bytes() == b"\x89PNG..."
    assert sum(Schema.load(out).splits.values()) == 900
    assert snapshot(out)["train_sparse.npy"] != before["train_sparse.npy"]
    assert (os.stat(out).st_mode & 0o777) == 0o750 and converter_leftovers(out) == []


def test_two_rename_fallback_swap(tmp_path: Path, raw: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    """Where renameat2(RENAME_EXCHANGE) is missing: the same result through two renames."""
    out, _ = previous(tmp_path, raw)
    monkeypatch.setattr(staging, "_exchange", lambda a, b: False)
    rc, err = run_main("criteo", ["--input", str(raw["criteo"]), "--output", str(out),
                                  *QUIET, "--min-count", "2"])
    assert rc == 0, err
    assert Schema.load(out).preprocessing["min_count"] == 2
    assert (out / "notes.txt").exists() and converter_leftovers(out) == []


def _late_bad(tmp_path: Path, raw: dict[str, Path]) -> Path:
    """A Criteo file that passes the up-front checks (its first row is good) and fails the run
    later: every other row lacks a column."""
    bad = tmp_path / "late_bad.tsv"
    bad.write_text("\n".join(ln.rsplit("\t", 1)[0] if i else ln for i, ln in enumerate(criteo_lines(raw))) + "\n")
    return bad


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def test_recovery_after_a_kill_between_the_fallback_renames(tmp_path: Path, raw: dict[str, Path]) -> None:
    """Killed between the two renames: no output dir, the old conversion parked in a dead staging
    dir (with the user's file moved in).  The next run, even a failing one, puts both back."""
    out, before = previous(tmp_path, raw)
    staging = tmp_path / f".out.convert-{_dead_pid()}-0123abcd"
    staging.mkdir()
    (staging / "train_sparse.npy").write_bytes(b"new, complete")
    os.rename(out / "notes.txt", staging / "notes.txt")
    os.rename(out, staging / ".previous")
    rc, err = run_main("criteo", ["--input", str(raw["criteo"]), "--output", str(out), *QUIET, "--seed", "-4"])
    assert rc == 2  # a bad flag: nothing touched, not even the repair
    rc, err = run_main("criteo", ["--input", str(tmp_path / "gone.tsv"), "--output", str(out), *QUIET])
    assert rc == 2 and "gone.tsv: no such file" in one_line_error(err)
    rc, err = run_main("criteo", ["--input", str(_late_bad(tmp_path, raw)), "--output", str(out), *QUIET])
    assert_failed_cleanly(rc, err, 1, "rows malformed", out=out, before=before)
    assert not staging.exists()


def test_users_files_go_back_from_a_dead_staging_dir(tmp_path: Path, raw: dict[str, Path]) -> None:
    """Killed while moving the user's files into the new conversion, before the swap."""
    out, before = previous(tmp_path, raw)
    staging = tmp_path / f".out.convert-{_dead_pid()}-feedbeef"
    staging.mkdir()
    (staging / "meta.json").write_text("{}")
    os.rename(out / "notes.txt", staging / "notes.txt")
    # a run that fails late (after it reached the output) still repairs first
    rc, err = run_main("criteo", ["--input", str(_late_bad(tmp_path, raw)), "--output", str(out), *QUIET])
    assert_failed_cleanly(rc, err, 1, "rows malformed", out=out, before=before)
    assert not staging.exists()


def test_live_run_is_never_touched(tmp_path: Path, raw: dict[str, Path]) -> None:
    """A staging dir whose owner still holds its lock (another run converting into the same
    output) is left alone and the second run refuses; once the owner is gone it is cleaned."""
    import fcntl

    out, before = previous(tmp_path, raw)
    staging = tmp_path / ".out.convert-4242-00c0ffee"
    staging.mkdir()
    (staging / "train_sparse.npy.tmp").write_bytes(b"half written")
    fd = os.open(staging / ".owner", os.O_CREAT | os.O_RDWR)
    fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        rc, err = run_main("criteo", ["--input", str(raw["criteo"]), "--output", str(out), *QUIET])
        assert rc == 2
        assert "another conversion into it is running (pid 4242" in one_line_error(err)
        assert (staging / "train_sparse.npy.tmp").read_bytes() == b"half written"
        assert_unchanged(before, out)
    finally:
        os.close(fd)
    rc, err = run_main("criteo", ["--input", str(raw["criteo"]), "--output", str(out), *QUIET, "--min-count", "1"])
    assert rc == 0, err
    assert not staging.exists() and converter_leftovers(out) == []


def test_live_pid_without_lock_file_is_never_touched(tmp_path: Path, raw: dict[str, Path]) -> None:
    """Before its lock file exists a staging dir is judged by its pid: a live one is left alone."""
    out, before = previous(tmp_path, raw)
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        staging = tmp_path / f".out.convert-{holder.pid}-0badcafe"
        staging.mkdir()
        rc, err = run_main("criteo", ["--input", str(raw["criteo"]), "--output", str(out), *QUIET])
        assert rc == 2 and f"pid {holder.pid}" in one_line_error(err)
        assert staging.is_dir()
        assert_unchanged(before, out)
    finally:
        holder.kill()
        holder.wait()
    rc, err = run_main("criteo", ["--input", str(raw["criteo"]), "--output", str(out), *QUIET, "--min-count", "1"])
    assert rc == 0, err
    assert not staging.exists()


def test_symlinked_output_stays_a_symlink(tmp_path: Path, raw: dict[str, Path]) -> None:
    real_dir, _ = previous(tmp_path, raw)
    link = tmp_path / "current"
    link.symlink_to(real_dir)
    rc, err = run_main("criteo", ["--input", str(raw["criteo"]), "--output", str(link), *QUIET, "--min-count", "3"])
    assert rc == 0, err
    assert link.is_symlink() and Schema.load(real_dir).preprocessing["min_count"] == 3
    assert (real_dir / "notes.txt").exists() and converter_leftovers(real_dir) == []


def test_legacy_leftovers_inside_the_output_are_removed(tmp_path: Path, raw: dict[str, Path]) -> None:
    """Older converter versions staged inside the output: their temp arrays and cache go."""
    out, _ = previous(tmp_path, raw)
    (out / "train_dense.npy.tmp").write_bytes(b"x")
    (out / ".convert_cache").mkdir()
    (out / ".convert_cache" / "chunk_0000_000000.indices.npy").write_bytes(b"x" * 1000)
    rc, err = run_main("criteo", ["--input", str(raw["criteo"]), "--output", str(out), *QUIET, "--min-count", "1"])
    assert rc == 0, err
    assert converter_leftovers(out) == [] and (out / "notes.txt").exists()
