"""Checks shared by the hostile-input suites (tests/test_hostile_*.py).

Every hostile case asserts three things: the exit code, that the message is ONE line that
names the file, row or field at fault, and that nothing already written was lost.  These
helpers make each of the three one call.

Example::

    before = snapshot(out)
    rc, err = run_cli(["data_prep/criteo_to_npy.py", "--input", str(bad), "--output", str(out)])
    assert rc == 2
    assert "bad.tsv.gz" in one_line_error(err)
    assert_unchanged(before, out)
"""
from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path
from typing import Sequence

REPO = Path(__file__).resolve().parents[1]


def run_cli(args: Sequence[str], timeout: float = 300, env: dict[str, str] | None = None,
            cwd: Path = REPO) -> tuple[int, str]:
    """Runs ``python ARGS...`` in the repo; returns (exit code, stderr)."""
    full_env = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    r = subprocess.run([sys.executable, *args], cwd=cwd, capture_output=True, text=True, timeout=timeout,
                       env=full_env)
    return r.returncode, r.stderr


def one_line_error(err: str) -> str:
    """The single non-empty line of ``err`` that carries the error; fails on a traceback or
    on more than one error line (warnings and progress bars are allowed around it)."""
    assert "Traceback" not in err, err
    lines = [ln for ln in err.strip().splitlines() if "error" in ln.lower()]
    assert len(lines) == 1, f"expected one error line, got {len(lines)}:\n{err}"
    return lines[0]


def snapshot(root: Path) -> dict[str, str]:
    """sha256 of every file under ``root`` (relative path -> digest); {} if it does not exist."""
    if not root.exists():
        return {}
    out = {}
    for p in sorted(root.rglob("*")):
        if p.is_file():
            out[str(p.relative_to(root))] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def assert_unchanged(before: dict[str, str], root: Path) -> None:
    """Every file of ``before`` is still under ``root`` with the same bytes."""
    after = snapshot(root)
    lost = sorted(set(before) - set(after))
    changed = sorted(k for k in before if k in after and after[k] != before[k])
    assert not lost and not changed, f"lost {lost}, changed {changed}"
