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
import time
from pathlib import Path
from typing import Any, Sequence

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


def run_cli_file_limit(args: Sequence[str], max_file_bytes: int, timeout: float = 300,
                       env: dict[str, str] | None = None, cwd: Path = REPO) -> tuple[int, str]:
    """``run_cli`` with ``RLIMIT_FSIZE`` set: any write past ``max_file_bytes`` fails with EFBIG
    ("File too large"), a portable, unprivileged stand-in for a full disk.  SIGXFSZ is
    ignored in the child (its default action would kill it instead); reads are unaffected."""
    import resource
    import signal

    def limit() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (max_file_bytes, max_file_bytes))

    full_env = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    r = subprocess.run([sys.executable, *args], cwd=cwd, capture_output=True, text=True, timeout=timeout,
                       env=full_env, preexec_fn=limit)
    return r.returncode, r.stderr


def converter_leftovers(out: Path) -> list[str]:
    """What a failed or killed conversion into ``out`` must not leave behind (once cleaned up):
    staging dirs beside ``out``, temp arrays or the pass-1 cache inside it."""
    found = [p.name for p in out.parent.glob(f".{out.name}.convert-*")]
    if out.is_dir():
        found += [p.name for p in out.iterdir() if p.name.endswith(".tmp") or p.name in (".convert_cache", ".previous")]
    return sorted(found)


# ----------------------------------------------------------------------------- serving faults
# Used by tests/test_hostile_serve.py: a worker hook (it must be importable in a spawned worker,
# hence here and not in the test module) and a look at a process's state, for SIGSTOP/SIGKILL.

FAULTY_MEMBER = "m1_fnn"  # the only member serve_fault_hook ever faults
FAIL_MARK = 123.0  # a request whose dense[0, 0] is this fails inside FAULTY_MEMBER's worker
SLOW_MARK = 456.0  # ... makes FAULTY_MEMBER's worker sleep SLOW_S before its forward
SLOW_S = 2.0


def serve_fault_hook(name: str, dense: Any, ids: Any) -> None:
    """``worker_hook`` for ``EnsembleServer``: faults FAULTY_MEMBER, only on marked requests
    (dense [B, Dd] with dense[0, 0] == FAIL_MARK or SLOW_MARK); every other request is untouched."""
    if name != FAULTY_MEMBER or dense.shape[1] == 0:
        return
    if dense[0, 0] == FAIL_MARK:
        raise RuntimeError("injected fault")
    if dense[0, 0] == SLOW_MARK:
        time.sleep(SLOW_S)


def proc_state(pid: int) -> str | None:
    """The state letter of process ``pid`` from /proc (R, S, T stopped, Z zombie, ...); None when gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    return stat[stat.rindex(")") + 2]


def wait_proc_state(pid: int, states: str, timeout: float = 30) -> str | None:
    """Waits until ``proc_state(pid)`` is one of ``states`` ("-" stands for gone); returns it.
    Signals are delivered asynchronously, so a test that stops or kills a worker waits here."""
    deadline = time.monotonic() + timeout
    while True:
        s = proc_state(pid)
        if (s or "-") in states:
            return s
        assert time.monotonic() < deadline, f"process {pid} still in state {s!r} after {timeout} s, not in {states!r}"
        time.sleep(0.02)
