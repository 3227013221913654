"""The C kernels' build and load (recsys/data/native.py), and the converter's fallback without a compiler."""
from __future__ import annotations

import gc
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from recsys.data import native
from recsys.data.convert import ConvertConfig, InputError, convert
from recsys.data.convert.parse_native import resolve_engine
from recsys.data.convert.vocab import VocabCache
from recsys.data.synth import write_criteo

ROOT = Path(__file__).resolve().parents[1]


def test_build_compiles_once_per_source_version(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RECSYS_BUILD_DIR", str(tmp_path / "b"))
    path = native.build()
    assert path.parent == tmp_path / "b" and path.name == native.library_name()
    mtime = path.stat().st_mtime_ns
    assert native.build() == path and path.stat().st_mtime_ns == mtime  # reused, not rebuilt
    assert list((tmp_path / "b").iterdir()) == [path]  # no temporary files left
    lib = native.load()
    buf = np.frombuffer(b"a\nbb\n\nccc", dtype=np.uint8)
    assert lib.rc_count_newlines(buf.ctypes.data, buf.size) == 3


def test_library_name_follows_the_source(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    src = tmp_path / "k.c"
    src.write_text("int f(void) { return 1; }\n")
    monkeypatch.setattr(native, "SOURCE", src)
    first = native.library_name()
    src.write_text("int f(void) { return 2; }\n")
    assert native.library_name() != first


def test_unloadable_library_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RECSYS_BUILD_DIR", str(tmp_path))
    (tmp_path / native.library_name()).write_bytes(b"not a shared library")
    with pytest.raises(native.NativeUnavailable, match="cannot load .*delete it to rebuild"):
        native.load()


def test_no_compiler_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RECSYS_BUILD_DIR", str(tmp_path / "empty"))
    monkeypatch.setattr(native, "compiler", lambda cc="cc": None)
    with pytest.raises(native.NativeUnavailable, match="no C compiler found"):
        native.build()


def test_compile_error_names_the_compiler_message(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    src = tmp_path / "broken.c"
    src.write_text("int f(void) { return }\n")
    monkeypatch.setattr(native, "SOURCE", src)
    monkeypatch.setenv("RECSYS_BUILD_DIR", str(tmp_path / "b"))
    with pytest.raises(native.NativeUnavailable, match="compiling broken.c with .* failed: .*error"):
        native.build()
    assert not any((tmp_path / "b").iterdir())  # the failed build left nothing behind


def test_converter_falls_back_to_arrow_without_a_compiler(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def unavailable() -> float:
        raise native.NativeUnavailable("no C compiler found (set $CC or install gcc)")

    monkeypatch.setattr("recsys.data.convert.kernels.load", unavailable)
    logged: list[str] = []
    assert resolve_engine("auto", "criteo", log=logged.append) == ("arrow", 0.0)
    assert logged and "no C compiler found" in logged[0] and "--engine arrow" in logged[0]
    with pytest.raises(InputError, match="--engine native unavailable: no C compiler"):
        resolve_engine("native", "criteo")
    src = tmp_path / "c.tsv"
    write_criteo(src, 300, seed=1)
    schema = convert(ConvertConfig("criteo", str(tmp_path / "o"), inputs=[str(src)], min_count=1, progress=False),
                     log=logged.append)
    assert schema.preprocessing["engine"] == "arrow" and sum(schema.splits.values()) == 300


def test_native_engine_rejects_other_datasets() -> None:
    with pytest.raises(InputError, match="reads criteo only"):
        resolve_engine("native", "avazu")
    assert resolve_engine("auto", "kdd12") == ("arrow", 0.0)


def test_cli_builds_and_prints_the_library(tmp_path: Path) -> None:
    env = {"RECSYS_BUILD_DIR": str(tmp_path / "cli"), "PATH": "/usr/bin:/bin"}
    res = subprocess.run([sys.executable, "-m", "recsys.data.native"], cwd=ROOT, env=env, capture_output=True,
                         text=True)
    assert res.returncode == 0, res.stderr
    assert Path(res.stdout.strip()).is_file() and Path(res.stdout.strip()).parent == tmp_path / "cli"
    res = subprocess.run([sys.executable, "-m", "recsys.data.native", "--help"], capture_output=True, text=True,
                         cwd=ROOT)
    assert res.returncode == 0 and "examples:" in res.stdout


def test_native_threads_match_one_worker(tmp_path: Path) -> None:
    """Two thread workers (the C engine's pool) write the same bytes as one, in vocabulary mode."""
    src = tmp_path / "c.tsv"
    write_criteo(src, 5000, seed=3)
    outs = []
    for w in (1, 2):
        out = tmp_path / f"w{w}"
        schema = convert(ConvertConfig("criteo", str(out), inputs=[str(src)], min_count=2, workers=w, chunk_mb=0.1,
                                       engine="native", progress=False), log=lambda s: None)
        assert schema.preprocessing["engine"] == "native"
        outs.append(out)
    for name in ("train_sparse.npy", "val_sparse.npy", "test_labels.npy"):
        assert (outs[0] / name).read_bytes() == (outs[1] / name).read_bytes()
    gc.collect()
    assert not [o for o in gc.get_objects() if type(o) is VocabCache]  # nothing kept after the run
