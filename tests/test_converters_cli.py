"""Converter CLIs and bad input: one-line errors, exit codes, counted bad rows, nothing half-written."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from recsys.data.convert import SplitWriter, driver, main
from recsys.data.synth import write_avazu, write_criteo

REPO = Path(__file__).resolve().parents[1]


def criteo_rows(n: int, seed: int = 0) -> list[str]:
    rng = np.random.default_rng(seed)
    rows = []
    for _ in range(n):
        ints = [str(x) for x in rng.integers(-2, 50, 13)]
        cats = [f"{x:08x}" for x in rng.integers(0, 30, 26)]
        rows.append("\t".join([str(rng.integers(0, 2)), *ints, *cats]) + "\n")
    return rows


def one_error_line(err: str) -> str:
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    return lines[0]


def no_partial_outputs(out: Path) -> None:
    """No new array, temp file, cache or staging dir of the failed run, in or beside ``out``."""
    assert not list(out.glob("*.tmp")) if out.exists() else True
    assert not (out / ".convert_cache").exists()
    assert not list(out.parent.glob(f".{out.name}.convert-*")), list(out.parent.iterdir())


def test_cli_help_and_exit_code_via_subprocess(tmp_path: Path) -> None:
    r = subprocess.run([sys.executable, "data_prep/criteo_to_npy.py", "--help"], cwd=REPO,
                       capture_output=True, text=True)
    assert r.returncode == 0 and "--min-count" in r.stdout and "examples:" in r.stdout
    r = subprocess.run([sys.executable, "data_prep/criteo_to_npy.py", "--input", str(tmp_path / "nope.tsv"),
                        "--output", str(tmp_path / "o")], cwd=REPO, capture_output=True, text=True)
    assert r.returncode == 2
    assert "nope.tsv: no such file" in one_error_line(r.stderr)


def test_cli_end_to_end_subprocess(tmp_path: Path) -> None:
    src = tmp_path / "c.tsv.gz"
    write_criteo(src, 500, seed=1)
    out = tmp_path / "o"
    r = subprocess.run([sys.executable, "data_prep/criteo_to_npy.py", "--input", str(src), "--output", str(out),
                        "--min-count", "1", "--split", "0.5,0.25,0.25", "--seed", "3", "--workers", "1",
                        "--no-progress"], cwd=REPO, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    meta = (out / "meta.json").read_text()
    assert '"split": [\n      0.5' in meta and '"seed": 3' in meta


def test_missing_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc = main("avazu", ["--input", str(tmp_path / "missing.csv"), "--output", str(tmp_path / "o"), "--no-progress"])
    assert rc == 2
    assert "missing.csv: no such file" in one_error_line(capsys.readouterr().err)


def test_empty_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "empty.tsv").write_text("")
    rc = main("criteo", ["--input", str(tmp_path / "empty.tsv"), "--output", str(tmp_path / "o"), "--no-progress"])
    assert rc == 2
    assert "empty.tsv: empty file" in one_error_line(capsys.readouterr().err)


def test_wrong_dataset_avazu_to_criteo(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = tmp_path / "train.csv"
    write_avazu(src, 50)
    rc = main("criteo", ["--input", str(src), "--output", str(tmp_path / "o"), "--no-progress"])
    assert rc == 2
    line = one_error_line(capsys.readouterr().err)
    assert "train.csv:1: not a criteo file" in line and "Avazu" in line
    no_partial_outputs(tmp_path / "o")


def test_wrong_dataset_criteo_to_avazu_and_kdd12(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = tmp_path / "day_0"
    write_criteo(src, 50)
    assert main("avazu", ["--input", str(src), "--output", str(tmp_path / "o"), "--no-progress"]) == 2
    assert "not a avazu file" in one_error_line(capsys.readouterr().err)
    assert main("kdd12", ["--input", str(src), "--output", str(tmp_path / "o"), "--no-progress"]) == 2
    assert "expected 12 tab-separated columns, got 40" in one_error_line(capsys.readouterr().err)


@pytest.mark.parametrize("engine", ["native", "arrow"])
def test_bad_rows_below_threshold_are_counted_and_reported(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                           monkeypatch: pytest.MonkeyPatch, engine: str) -> None:
    real = driver.resolve_engine
    monkeypatch.setattr(driver, "resolve_engine", lambda _e, dataset, **kw: real(engine, dataset, **kw))
    rows = criteo_rows(2000)
    rows.insert(5, "\n")  # an empty line (line 6) is skipped but still counts for line numbers
    rows[9] = rows[9].replace("\t", "\t\t", 1)  # line 10: 41 columns
    fields = rows[1499].split("\t")
    fields[5] = "abc"  # line 1500: non-numeric I5
    rows[1499] = "\t".join(fields)
    src = tmp_path / "bad.tsv"
    src.write_text("".join(rows))
    out = tmp_path / "o"
    rc = main("criteo", ["--input", str(src), "--output", str(out), "--max-bad-fraction", "0.01",
                         "--min-count", "1", "--no-progress", "--workers", "1"])  # one chunk: both bad rows
    err = capsys.readouterr().err
    assert rc == 0, err
    assert f"{src}:10: expected 40 columns, got 41" in err
    assert f"{src}:1500: non-numeric I5 value" in err
    assert "skipped 2 malformed rows of 2000" in err
    meta = (out / "meta.json").read_text()
    assert '"bad_rows": 2' in meta and '"rows_read": 2000' in meta and f'"engine": "{engine}"' in meta
    total = sum(np.load(out / f"{s}_labels.npy").shape[0] for s in ("train", "val", "test"))
    assert total == 1998


def test_bad_rows_avazu_line_numbers_count_the_header(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = tmp_path / "a.csv"
    write_avazu(src, 300)
    lines = src.read_text().splitlines(keepends=True)
    f = lines[7].split(",")
    f[2] = "14x02100"  # bad hour on file line 8
    lines[7] = ",".join(f)
    src.write_text("".join(lines))
    assert main("avazu", ["--input", str(src), "--output", str(tmp_path / "o"), "--no-progress",
                          "--max-bad-fraction", "0.5"]) == 0
    assert f"{src}:8: bad hour value" in capsys.readouterr().err


def test_too_many_bad_rows_fail_with_one_line_and_keep_the_old_output(tmp_path: Path,
                                                                      capsys: pytest.CaptureFixture[str]) -> None:
    rows = criteo_rows(1000)
    rows[41] = "0\t1\t2\n"  # line 42
    rows[700] = rows[700].replace("\t", "\tx", 1)  # line 701: bad I1
    src = tmp_path / "bad.tsv"
    src.write_text("".join(rows))
    out = tmp_path / "o"
    out.mkdir()
    (out / "meta.json").write_text("{}")  # from an earlier run: a failed run must leave it as it was
    rc = main("criteo", ["--input", str(src), "--output", str(out), "--no-progress"])  # default 0.001
    assert rc == 1
    line = one_error_line(capsys.readouterr().err.split("\n", 0)[0])
    assert "2 of 1000 rows malformed" in line and f"first: {src}:42: expected 40 columns, got 3" in line
    no_partial_outputs(out)
    assert (out / "meta.json").read_text() == "{}"
    assert not list(out.glob("*.npy"))


def test_interrupted_run_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    src = tmp_path / "c.tsv"
    src.write_text("".join(criteo_rows(3000)))
    out = tmp_path / "o"
    calls = {"n": 0}
    real_append = SplitWriter.append

    def flaky(self, parts):  # type: ignore[no-untyped-def]
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        real_append(self, parts)

    monkeypatch.setattr(SplitWriter, "append", flaky)
    rc = main("criteo", ["--input", str(src), "--output", str(out), "--no-progress", "--chunk-mb", "0.1",
                         "--hash", "100", "--workers", "1"])
    assert rc == 130 and calls["n"] == 2
    no_partial_outputs(out)
    assert not list(out.glob("*.npy"))


def test_explicit_split_files_and_flag_conflicts(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    a, b = tmp_path / "day_0", tmp_path / "day_1"
    a.write_text("".join(criteo_rows(30, 1)))
    b.write_text("".join(criteo_rows(20, 2)))
    out = tmp_path / "o"
    assert main("criteo", ["--train", str(a), "--val", str(b), "--test", str(b), "--output", str(out),
                           "--no-progress", "--min-count", "1"]) == 0
    meta = (out / "meta.json").read_text()
    assert '"train": 30' in meta and '"val": 20' in meta and '"test": 20' in meta
    assert main("criteo", ["--input", str(a), "--train", str(a), "--output", str(out), "--no-progress"]) == 2
    assert main("criteo", ["--input", str(a), "--output", str(out), "--split", "0.5,0.6,0.1", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "not both" in err and "--split must be three non-negative fractions" in err


def test_unwritable_output_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = tmp_path / "c.tsv"
    src.write_text("".join(criteo_rows(10)))
    blocker = tmp_path / "file"
    blocker.write_text("x")  # output "dir" below a regular file cannot be created
    rc = main("criteo", ["--input", str(src), "--output", str(blocker / "out"), "--no-progress"])
    assert rc == 2
    assert "error:" in one_error_line(capsys.readouterr().err)


@pytest.mark.parametrize("dataset", ["criteo", "avazu", "kdd12"])
def test_cli_vocab_from_via_subprocess(tmp_path: Path, dataset: str) -> None:
    from recsys.data.synth import write_kdd12

    src = tmp_path / f"raw.{dataset}"
    {"criteo": write_criteo, "avazu": write_avazu, "kdd12": write_kdd12}[dataset](src, 300, seed=1)
    script = f"data_prep/{dataset}_to_npy.py"
    r = subprocess.run([sys.executable, script, "--help"], cwd=REPO, capture_output=True, text=True)
    assert r.returncode == 0 and "--vocab-from DIR" in r.stdout and "--vocab-from data/" in r.stdout
    base = [sys.executable, script, "--input", str(src), "--no-progress", "--workers", "1"]
    assert subprocess.run([*base, "--output", str(tmp_path / "a")], cwd=REPO).returncode == 0
    r = subprocess.run([*base, "--output", str(tmp_path / "b"), "--vocab-from", str(tmp_path / "a")], cwd=REPO,
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    for name in ("train_sparse.npy", "test_sparse.npy", "val_dense.npy"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    r = subprocess.run([*base, "--output", str(tmp_path / "c"), "--vocab-from", str(tmp_path / "missing")],
                       cwd=REPO, capture_output=True, text=True)
    assert r.returncode == 2 and "missing: no such directory" in one_error_line(r.stderr)
    assert not (tmp_path / "c").exists()
