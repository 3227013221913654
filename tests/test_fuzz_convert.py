"""Seeded fuzz of the converters' CLI contract (``recsys.data.convert.main``, in-process for speed).

Each round mutates valid Criteo / Avazu / KDD12 text (byte flips, truncation, inserted
delimiters, quotes, CRs and NULs, numbers at the extremes, random unicode, shuffled
columns, gzip with and without damage) and converts it with random valid flags into an
output dir that holds the previous round's conversion.  Then exactly one of:

* exit 0: dense values finite, every id inside its vocabulary, labels 0/1, row counts
  consistent with meta.json and with --max-bad-fraction;
* exit 1 or 2: ONE error line naming the input file, and the previous output
  byte-identical, with no staging dir or temp file left.

Never a traceback (an exception escaping ``main``), never a hang.  ``tests/test_preprocess.py``
already compares the two Criteo engines on damaged rows; this checks what a user sees.

``RECSYS_FUZZ_ROUNDS=N`` runs N rounds (default 60, well under a minute on one core).
"""
from __future__ import annotations

import faulthandler
import gzip
import io
import os
import signal
from contextlib import redirect_stderr
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from hostile_util import assert_unchanged, converter_leftovers, one_line_error, snapshot
from recsys.data.convert import main
from recsys.data.schema import Schema
from recsys.data.synth import write_avazu, write_criteo, write_kdd12

ROUNDS = int(os.environ.get("RECSYS_FUZZ_ROUNDS", "60"))
SEED = 20240612
ROUND_LIMIT_S = 120  # a round this slow is a hang (a healthy one takes well under a second)
DATASETS = ("criteo", "avazu", "kdd12")
EXTREMES = [b"1e308", b"-1e308", b"1e309", b"-1e999", b"1e-320", b"4.9e-324", b"1.7976931348623157e308", b"nan",
            b"inf", b"-inf", b"NA", b"-0", b"0x1F", b"1_000", b"", b" 7 ", b"+.5e-3", b"9" * 40,
            b"9007199254740993", b"-9223372036854775809", b"18446744073709551616", b"1e", b".", b"--1"]
UNICODE = ["é", "ß", "中文", "🙂", "\u0301", "\u202e", "\u2028", "\ufeff", "\ufffd", "Ω≈ç√", "\u00a0"]


class _Hang(BaseException):
    """Raised by the watchdog: a BaseException, so no ``except OSError/Exception`` swallows it."""


@pytest.fixture(scope="module")
def bases(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    d = tmp_path_factory.mktemp("fuzz_base")
    out = {}
    for name, writer in (("criteo", write_criteo), ("avazu", write_avazu), ("kdd12", write_kdd12)):
        writer(d / name, 80, seed=5)
        out[name] = (d / name).read_bytes()
    return out


def _mutate(data: bytes, dataset: str, rng: np.random.Generator) -> bytes:
    """1-4 random edits of the raw text."""
    sep = b"," if dataset == "avazu" else b"\t"
    b = bytearray(data)
    for _ in range(int(rng.integers(1, 5))):
        op = int(rng.integers(0, 11))
        pos = int(rng.integers(0, len(b) + 1)) if b else 0
        if op == 0 and b:  # flip bytes
            for _ in range(int(rng.integers(1, 6))):
                i = int(rng.integers(0, len(b)))
                b[i] ^= int(rng.integers(1, 256))
        elif op == 1:  # truncate
            del b[pos:]
        elif op == 2:  # inserted delimiters, other datasets' delimiters
            b[pos:pos] = bytes(rng.choice([sep, b"\t", b",", b";"])) * int(rng.integers(1, 4))
        elif op == 3:  # quotes
            b[pos:pos] = rng.choice([b'"', b"'", b'""', b'"a,b"'])
        elif op == 4:  # a field replaced by an extreme number or word
            lines = bytes(b).split(b"\n")
            li = int(rng.integers(0, len(lines)))
            fields = lines[li].split(sep)
            fields[int(rng.integers(0, len(fields)))] = EXTREMES[int(rng.integers(0, len(EXTREMES)))]
            lines[li] = sep.join(fields)
            b = bytearray(b"\n".join(lines))
        elif op == 5:  # random unicode
            b[pos:pos] = "".join(rng.choice(UNICODE, size=int(rng.integers(1, 4)))).encode()
        elif op == 6:  # control bytes: CR, LF, NUL, a lone CR before a tab
            b[pos:pos] = rng.choice([b"\r", b"\n", b"\x00", b"\r\t", b"\n\n"])
        elif op == 7:  # CRLF everywhere
            b = bytearray(bytes(b).replace(b"\n", b"\r\n"))
        elif op == 8:  # duplicate or delete a run of lines
            lines = bytes(b).split(b"\n")
            i = int(rng.integers(0, len(lines)))
            k = int(rng.integers(1, 10))
            lines = lines[:i] + lines[i:i + k] * 2 + lines[i + k:] if rng.random() < 0.5 else lines[:i] + lines[i + k:]
            b = bytearray(b"\n".join(lines))
        elif op == 9:  # two columns swapped on every line
            cols = bytes(b).split(b"\n")[-2].count(sep) + 1 if b.count(b"\n") > 1 else 2
            i, j = (int(x) for x in rng.choice(cols, size=2, replace=False))
            lines = []
            for ln in bytes(b).split(b"\n"):
                f = ln.split(sep)
                if max(i, j) < len(f):
                    f[i], f[j] = f[j], f[i]
                lines.append(sep.join(f))
            b = bytearray(b"\n".join(lines))
        else:  # a very long value
            b[pos:pos] = b"x" * int(rng.integers(1000, 300_000))
    return bytes(b)


def _flags(dataset: str, rng: np.random.Generator) -> list[str]:
    """Random valid flags."""
    f = ["--no-progress", "--workers", str(1 if rng.random() < 0.85 else 2),
         "--chunk-mb", str(rng.choice(["0.0625", "1"])),
         "--max-bad-fraction", str(rng.choice(["0", "0.05", "0.5", "1"])),
         "--seed", str(int(rng.integers(0, 5)))]
    f += ["--hash", str(int(rng.integers(1, 5000)))] if rng.random() < 0.4 else ["--min-count",
                                                                               str(int(rng.integers(1, 4)))]
    if dataset == "criteo":
        f += ["--numeric", str(rng.choice(["discretize", "dense"])), "--engine", str(rng.choice(["native", "arrow"]))]
    return f


def _check_success(out: Path, err: str, flags: list[str]) -> None:
    assert "Traceback" not in err, err
    schema = Schema.load(out)
    sizes = np.array(schema.vocab_sizes)
    pre = schema.preprocessing
    total = 0
    for s in ("train", "val", "test"):
        dense, sparse, labels = (np.load(out / f"{s}_{k}.npy") for k in ("dense", "sparse", "labels"))
        n = schema.splits[s]
        assert dense.shape == (n, schema.num_dense) and sparse.shape == (n, schema.num_sparse) and labels.shape == (n,)
        assert np.isfinite(dense).all() and np.isin(labels, [0.0, 1.0]).all()
        assert (sparse >= 0).all() and (sparse < sizes).all()
        total += n
    assert total == pre["rows_read"] - pre["bad_rows"] > 0
    assert pre["bad_rows"] <= float(flags[flags.index("--max-bad-fraction") + 1]) * pre["rows_read"]


def _run(dataset: str, argv: list[str]) -> tuple[int, str]:
    def hang(signum: int, frame: Any) -> None:
        raise _Hang(f"{dataset} conversion ran over {ROUND_LIMIT_S} s: {argv}")

    err = io.StringIO()
    old = signal.signal(signal.SIGALRM, hang)
    signal.setitimer(signal.ITIMER_REAL, ROUND_LIMIT_S)
    try:
        with redirect_stderr(err):
            rc = main(dataset, argv)  # any exception escaping it fails the round, with its traceback
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
    return rc, err.getvalue()


@pytest.mark.filterwarnings("error::pytest.PytestUnraisableExceptionWarning")  # "Exception ignored" in C callbacks
def test_fuzzed_inputs_keep_the_cli_contract(tmp_path: Path, bases: dict[str, bytes]) -> None:
    faulthandler.dump_traceback_later(ROUND_LIMIT_S * 3, exit=True)  # a hang inside C code: fail loudly
    try:
        outs: dict[str, tuple[Path, dict[str, str]]] = {}
        for name in DATASETS:  # each output dir starts with a good conversion
            src = tmp_path / f"base_{name}"
            src.write_bytes(bases[name])
            out = tmp_path / f"out_{name}"
            rc, err = _run(name, ["--input", str(src), "--output", str(out), "--no-progress", "--workers", "1",
                                  "--min-count", "1"])
            assert rc == 0, err
            outs[name] = (out, snapshot(out))
        seen = {0: 0, 1: 0, 2: 0}
        for rnd in range(ROUNDS):
            rng = np.random.default_rng([SEED, rnd])
            dataset = DATASETS[rnd % 3]
            data = _mutate(bases[dataset], dataset, rng)
            gz = rng.random() < 0.25
            src = tmp_path / f"r{rnd:04d}_{dataset}{'.gz' if gz else '.txt'}"
            if gz:
                packed = bytearray(gzip.compress(data, compresslevel=1))
                if rng.random() < 0.5:
                    del packed[int(rng.integers(10, len(packed))):]  # truncated
                elif rng.random() < 0.5:
                    packed[int(rng.integers(10, len(packed)))] ^= 0x5A  # corrupt
                src.write_bytes(bytes(packed))
            else:
                src.write_bytes(data)
            out, before = outs[dataset]
            flags = _flags(dataset, rng)
            rc, err = _run(dataset, ["--input", str(src), "--output", str(out), *flags])
            where = f"round {rnd} ({src.name}, flags {flags}; RECSYS_FUZZ_ROUNDS={rnd + 1} reproduces it)"
            assert rc in (0, 1, 2), f"{where}: exit {rc}\n{err}"
            seen[rc] += 1
            if rc == 0:
                try:
                    _check_success(out, err, flags)
                except AssertionError as e:
                    raise AssertionError(f"{where}: {e}") from None
                outs[dataset] = (out, snapshot(out))
            else:
                try:
                    line = one_line_error(err)
                except AssertionError as e:
                    raise AssertionError(f"{where}: {e}") from None
                assert str(src) in line, f"{where}: the error line does not name the input: {line}"
                assert_unchanged(before, out)
            assert converter_leftovers(out) == [], f"{where}: leftovers {converter_leftovers(out)}"
            src.unlink()
        if ROUNDS >= 30:  # the mutations reach both outcomes (else the fuzz tests little)
            assert seen[0] > 0 and seen[1] + seen[2] > 0, seen
    finally:
        faulthandler.cancel_dump_traceback_later()
