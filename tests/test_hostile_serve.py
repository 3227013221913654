"""Hostile serving (issue 12, "nothing lost, nothing silently wrong"): the probe that found
stale answers, NaN probabilities, hangs and unreplaced workers in recsys/serve.py, kept as
a suite.

Every case asserts the error, that its message is ONE line naming the field and row (or the
member and deadline), and that the requests after it get exactly the reference answers: the
inline server's, which are themselves checked against the offline logits.  A stale answer
(another request's rows) differs from the reference, so these comparisons catch it.

One fan-out server (3 workers, ~5-15 s to start on 2 cores) is shared by the module; every
test that breaks a worker also checks that it was replaced and answers correctly again.
"""
from __future__ import annotations

import concurrent.futures as cf
import multiprocessing as mp
import os
import re
import shutil
import signal
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import pytest

from recsys import serve
from recsys.serve import EnsembleServer, ServeError
from recsys.serve.fanout import _exchange
from tests.hostile_util import (FAIL_MARK, FAULTY_MEMBER, SLOW_MARK, one_line_error, proc_state, run_cli,
                                serve_fault_hook, wait_proc_state)
from tests.test_serve import trained  # noqa: F401  (the module-scoped checkpoint fixture)

TIMEOUT_S = 8.0  # the shared server's request deadline: generous for 30-row requests on 2 busy cores
BATCHES = [(0, 10), (10, 20), (20, 30), (5, 25)]  # row ranges of the good requests, all different
NAMES = ["m0_fnn", "m1_fnn", "m2_fnn"]


@pytest.fixture(scope="module")
def inline(trained) -> Iterator[EnsembleServer]:  # type: ignore[no-untyped-def]  # noqa: F811
    cfg, ckpt, _, _, _ = trained
    with EnsembleServer(cfg, ckpt, mode="inline", worker_hook=serve_fault_hook) as server:
        yield server


@pytest.fixture(scope="module")
def reference(trained, inline) -> list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]]:  # type: ignore[no-untyped-def]  # noqa: F811
    """``(dense, ids, probability, logits)`` of each good request, answered inline; the inline
    answers are checked against the checkpointed members' offline logits first."""
    _, _, dense, ids, logits = trained
    out = []
    for a, b in BATCHES:
        prob, lg = inline.predict(dense[a:b], ids[a:b])
        np.testing.assert_allclose(lg, logits[a:b], rtol=1e-5, atol=1e-6)
        out.append((dense[a:b], ids[a:b], prob, lg))
    return out


@pytest.fixture(scope="module")
def server(trained) -> Iterator[EnsembleServer]:  # type: ignore[no-untyped-def]  # noqa: F811
    cfg, ckpt, _, _, _ = trained
    with EnsembleServer(cfg, ckpt, mode="fanout", timeout_s=TIMEOUT_S, worker_hook=serve_fault_hook) as s:
        assert s.names == NAMES
        yield s


def assert_reference_answers(server: EnsembleServer, reference: list) -> None:  # type: ignore[type-arg]
    """Every good request, in turn, gets exactly its own reference answer (not a stale one)."""
    for dense, ids, prob, logits in reference:
        p, lg = server.predict(dense, ids)
        np.testing.assert_array_equal(lg, logits)
        np.testing.assert_array_equal(p, prob)
    assert server.member_states() == {n: "ready" for n in server.names}


def the_line(e: pytest.ExceptionInfo[ServeError]) -> str:
    """The error's message, asserted to be one non-empty line."""
    msg = str(e.value)
    assert msg and "\n" not in msg, repr(msg)
    return msg


# ----------------------------------------------------------------------------- bad requests


def _set(arr: np.ndarray, r: int, c: int, v: Any, dtype: Any = None) -> np.ndarray:
    out = arr.astype(dtype if dtype is not None else arr.dtype, copy=True)
    out[r, c] = v
    return out


Case = Callable[[np.ndarray, np.ndarray], tuple[Any, Any]]
BAD: dict[str, tuple[Case, str]] = {
    # dense: non-finite and beyond max_abs_dense (default 1e6)
    "nan": (lambda d, i: (_set(d, 3, 0, np.nan), i), r"^row 3: dense I0 is nan \(dense values must be finite\)$"),
    "inf": (lambda d, i: (_set(d, 4, 0, np.inf), i), r"^row 4: dense I0 is inf "),
    "-inf": (lambda d, i: (_set(d, 0, 0, -np.inf), i), r"^row 0: dense I0 is -inf "),
    "1e30": (lambda d, i: (_set(d, 5, 0, 1e30), i), r"^row 5: dense I0 = 1e\+30 is beyond max_abs_dense = 1e\+06$"),
    "-2e6": (lambda d, i: (_set(d, 1, 0, -2e6), i), r"^row 1: dense I0 = -2e\+06 is beyond max_abs_dense"),
    "dense str": (lambda d, i: (_set(d, 2, 0, "0.5", object), i), r"^row 2: dense I0 '0.5' is a str, not a number$"),
    "dense None": (lambda d, i: (_set(d, 6, 0, None, object), i), r"^row 6: dense I0 None is a NoneType"),
    # ids: float ids are never truncated, strings and objects never coerced
    "id 2.7": (lambda d, i: (d, _set(i, 6, 1, 2.7, np.float64)), r"^row 6: id 2\.7 of C1 is not an integer"),
    "id nan": (lambda d, i: (d, _set(i, 2, 2, np.nan, np.float32)), r"^row 2: id nan of C2 is not an integer"),
    "id str": (lambda d, i: (d, _set(i, 7, 2, "7", object)), r"^row 7: id '7' of C2 is a str, not an integer"),
    "ids all str": (lambda d, i: (d, i.astype(str)), r"^row 0: id '\d+' of C0 is a str, not an integer"),
    "id bool": (lambda d, i: (d, i.astype(bool)), r"^row 0: id (True|False) of C0 is a bool, not an integer"),
    "id -1": (lambda d, i: (d, _set(i, 8, 0, -1)), r"^row 8: id -1 of C0 is outside its table \[0, 10\)$"),
    "id 11": (lambda d, i: (d, _set(i, 9, 1, 11)), r"^row 9: id 11 of C1 is outside its table \[0, 11\)$"),
    "id 1e30": (lambda d, i: (d, _set(i, 1, 2, 1e30, np.float64)), r"^row 1: id 1e\+30 of C2 is outside its table"),
    # shapes
    "ids [B, 2]": (lambda d, i: (d, i[:, :2]), r"^ids must be \[B, 3\] \(one id per sparse field\), got \(10, 2\)$"),
    "ids 1-D": (lambda d, i: (d, i[0]), r"^ids must be \[B, 3\] .*got \(3,\)$"),
    "ids ragged": (lambda d, i: (d, [[1, 2, 3], [1, 2]]), r"^ids must be a rectangular array"),
    "dense [B, 2]": (lambda d, i: (np.zeros((10, 2), np.float32), i), r"^dense must be \[B, 1\] with B = 10 as in ids, "
                     r"got \(10, 2\)$"),
    "rows differ": (lambda d, i: (d[:4], i), r"^dense must be \[B, 1\] with B = 10 as in ids, got \(4, 1\)$"),
    "dense missing": (lambda d, i: (None, i), r"^dense must be \[B, 1\] with B = 10 as in ids, got None$"),
    # empty and oversized requests: refused before any worker sees them
    "empty": (lambda d, i: (d[:0], i[:0]), r"^request has no rows \(B = 0\); send at least one row$"),
    "empty, dense [0, 0]": (lambda d, i: (np.zeros((0, 0), np.float32), np.zeros((0, 3), np.int64)),
                            r"^request has no rows \(B = 0\)"),
    "65537 rows": (lambda d, i: (np.zeros((65537, 1), np.float32), np.zeros((65537, 3), np.int64)),
                   r"^request has 65537 rows in ids, more than max_batch_rows = 65536; split it"),
    "1e6 rows": (lambda d, i: (np.broadcast_to(d[:1], (10**6, 1)), np.broadcast_to(i[:1], (10**6, 3))),
                 r"^request has 1000000 rows in ids, more than max_batch_rows = 65536"),
}


@pytest.mark.parametrize("kind", list(BAD))
def test_bad_request_is_one_line_and_poisons_nothing(kind: str, server: EnsembleServer, inline: EnsembleServer,
                                                     trained, reference) -> None:  # type: ignore[no-untyped-def]  # noqa: F811
    make, pattern = BAD[kind]
    _, _, dense, ids, _ = trained
    bad_dense, bad_ids = make(dense[:10].copy(), ids[:10].copy())
    pids = server.worker_pids()
    messages = []
    for s in (server, inline):  # the same check, the same line, in both modes
        with pytest.raises(ServeError) as e:
            s.predict(bad_dense, bad_ids)
        messages.append(the_line(e))
    assert messages[0] == messages[1]
    assert re.search(pattern, messages[0]), messages[0]
    assert server.worker_pids() == pids  # refused before any worker saw it: nothing to restart
    assert_reference_answers(server, reference)


def test_integral_float_ids_and_lists_are_accepted(server: EnsembleServer, reference) -> None:  # type: ignore[no-untyped-def]
    """The documented leniencies: float ids that are exactly integral, integer dense, plain lists."""
    dense, ids, prob, logits = reference[0]
    for d, i in ((dense, ids.astype(np.float64)), (dense.tolist(), ids.tolist()), (dense, ids.astype(object)),
                 (dense.astype(np.float64), ids.astype(np.uint16))):
        p, lg = server.predict(d, i)
        np.testing.assert_array_equal(lg, logits)
    d_int = np.round(dense).astype(np.int32)
    p_float, _ = server.predict(d_int.astype(np.float32), ids)
    p_int, _ = server.predict(d_int, ids)
    np.testing.assert_array_equal(p_int, p_float)


# ----------------------------------------------------------------------------- server faults


def test_worker_error_mid_request_leaks_no_reply(server: EnsembleServer, inline: EnsembleServer, reference) -> None:  # type: ignore[no-untyped-def]
    """The probe's first finding: one member fails a request, and the others' replies to it
    must not answer the next requests.  Three failures in a row, then the good requests."""
    dense, ids, _, _ = reference[0]
    marked = _set(dense, 0, 0, FAIL_MARK)
    pids = server.worker_pids()
    for _ in range(3):
        for s in (server, inline):
            with pytest.raises(ServeError) as e:
                s.predict(marked, ids)
            assert the_line(e) == f"member {FAULTY_MEMBER}: RuntimeError: injected fault"
    assert server.worker_pids() == pids  # a member's own error needs no restart
    assert_reference_answers(server, reference)


class _Interrupt(Exception):
    pass


def test_interrupted_request_leaves_no_stale_reply(server: EnsembleServer, reference) -> None:  # type: ignore[no-untyped-def]
    """A caller gives up mid-request (a signal, as Ctrl-C would): the members' replies to it
    arrive later, and must be dropped, not returned as the next request's answer."""
    dense, ids, _, _ = reference[1]

    def interrupt(*_: Any) -> None:
        raise _Interrupt()

    old = signal.signal(signal.SIGALRM, interrupt)
    try:
        signal.setitimer(signal.ITIMER_REAL, 0.5)  # FAULTY_MEMBER sleeps SLOW_S = 2 s on this request
        with pytest.raises(_Interrupt):
            server.predict(_set(dense, 0, 0, SLOW_MARK), ids)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
    assert_reference_answers(server, reference)


def test_stopped_workers_miss_the_deadline_and_are_restarted(server: EnsembleServer, reference, trained) -> None:  # type: ignore[no-untyped-def]  # noqa: F811
    """SIGSTOP: FAULTY_MEMBER is stopped mid-request (inside its forward), m2_fnn before a
    request too big for its pipe (the send itself blocks).  The request fails within the
    deadline naming both, both workers are killed and restarted, the next requests are right."""
    _, _, dense, ids, _ = trained
    rng = np.random.default_rng(0)
    rows = rng.integers(0, len(ids), 65536)  # 65536 x 3 int64 ids: 1.5 MB, more than a pipe holds
    big_dense, big_ids = dense[rows].copy(), ids[rows].copy()
    big_dense[0, 0] = SLOW_MARK
    pids = server.worker_pids()
    slow, big = pids[NAMES.index(FAULTY_MEMBER)], pids[2]
    assert slow is not None and big is not None
    os.kill(big, signal.SIGSTOP)
    wait_proc_state(big, "T")
    ex = cf.ThreadPoolExecutor(1)
    try:
        t0 = time.monotonic()
        fut = ex.submit(server.predict, big_dense, big_ids)
        time.sleep(0.5)  # FAULTY_MEMBER has the request and sleeps in the hook (SLOW_S = 2 s)
        os.kill(slow, signal.SIGSTOP)
        with pytest.raises(ServeError) as e:
            fut.result(timeout=TIMEOUT_S + 30)
        elapsed = time.monotonic() - t0
    finally:
        ex.shutdown(wait=False)
    msg = the_line(e)
    assert elapsed < TIMEOUT_S + 10, elapsed  # the deadline, with a generous margin for the kill
    assert msg.startswith(f"member {FAULTY_MEMBER}: no answer within timeout_s = 8 s (worker killed); its worker is "
                          "restarting from the checkpoint (restart 1 of at most 3 in a row) (and 1 more: member "
                          "m2_fnn: no answer within timeout_s = 8 s"), msg
    for pid in (slow, big):
        assert proc_state(pid) is None  # killed and reaped, stopped or not
    new = server.worker_pids()
    assert new[0] == pids[0] and new[1] not in (None, slow) and new[2] not in (None, big)
    assert_reference_answers(server, reference)  # waits for the restarted workers' ready


def test_killed_worker_is_restarted(server: EnsembleServer, reference) -> None:  # type: ignore[no-untyped-def]
    """SIGKILL: the next request fails with one line (no raw BrokenPipeError), the worker is
    respawned from the checkpoint, and the request after that is answered correctly."""
    dense, ids, _, _ = reference[2]
    j = NAMES.index(FAULTY_MEMBER)
    pid = server.worker_pids()[j]
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    wait_proc_state(pid, "Z-")  # dead (a zombie until the server reaps it)
    with pytest.raises(ServeError) as e:
        server.predict(dense, ids)
    assert the_line(e) == (f"member {FAULTY_MEMBER}: worker process died (killed by SIGKILL); its worker is "
                           "restarting from the checkpoint (restart 1 of at most 3 in a row)")
    assert proc_state(pid) is None
    assert server.worker_pids()[j] not in (None, pid)
    assert_reference_answers(server, reference)


def test_restarts_are_bounded(trained, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]  # noqa: F811
    """A worker that cannot start again (its checkpoint is gone) is restarted at most
    max_restarts times in a row, one try per request; then the member is down and every
    request is refused with one line, without spawning anything."""
    cfg, ckpt, dense, ids, logits = trained
    copy = tmp_path / "ckpt"
    shutil.copytree(ckpt, copy)
    with EnsembleServer(cfg, copy, members=[1], max_restarts=1, timeout_s=TIMEOUT_S) as server:
        _, lg = server.predict(dense, ids)
        np.testing.assert_allclose(lg[:, 0], logits[:, 1], rtol=1e-5, atol=1e-6)
        shutil.rmtree(copy / "group1")
        (pid,) = server.worker_pids()
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
        wait_proc_state(pid, "Z-")
        with pytest.raises(ServeError) as e:
            server.predict(dense, ids)
        assert the_line(e).endswith("worker process died (killed by SIGKILL); its worker is restarting from the "
                                    "checkpoint (restart 1 of at most 1 in a row)")
        with pytest.raises(ServeError) as e:
            server.predict(dense, ids)
        msg = the_line(e)
        assert msg.startswith("member m1_fnn: its restarted worker did not start: CheckpointMissing: ")
        assert "group1: no complete checkpoint" in msg
        assert msg.endswith("not restarted: 1 restarts in a row already (max_restarts = 1), the member is down")
        assert server.worker_pids() == [None] and server.member_states() == {"m1_fnn": "down"}
        children = len(mp.active_children())
        for _ in range(3):
            with pytest.raises(ServeError) as e:
                server.predict(dense, ids)
            assert the_line(e).startswith("member m1_fnn is down (its restarted worker did not start: "
                                          "CheckpointMissing: ")
            assert the_line(e).endswith("; start a new server")
        assert len(mp.active_children()) == children  # no restart loop
    assert server.worker_pids() == [None]


def test_stale_replies_are_dropped_by_request_id() -> None:
    """The matching rule itself: replies to earlier requests waiting in a pipe are skipped."""
    ours, worker = mp.Pipe()
    worker.send((3, "ok", "answer to request 3"))
    worker.send((4, "error", "answer to request 4"))
    worker.send((5, "ok", "answer to request 5"))
    assert _exchange(ours, None, 5) == ("ok", "answer to request 5")
    worker.send((6, "ok", "answer to request 6"))
    assert _exchange(ours, None, 6) == ("ok", "answer to request 6")


# ----------------------------------------------------------------------------- knobs and CLI


def test_limits_are_configurable(trained) -> None:  # type: ignore[no-untyped-def]  # noqa: F811
    cfg, ckpt, dense, ids, _ = trained
    with EnsembleServer(cfg, ckpt, mode="inline", max_batch_rows=8, max_abs_dense=2.0) as s:
        with pytest.raises(ServeError) as e:
            s.predict(dense[:9], ids[:9])
        assert the_line(e) == "request has 9 rows in ids, more than max_batch_rows = 8; split it into smaller requests"
        s.predict(dense[:8] * 0, ids[:8])
        with pytest.raises(ServeError) as e:
            s.predict(_set(dense[:8] * 0, 7, 0, 2.5), ids[:8])
        assert the_line(e) == "row 7: dense I0 = 2.5 is beyond max_abs_dense = 2"
    for knob, bad, pattern in (("timeout_s", 0, "timeout_s must be a number of seconds > 0"),
                               ("startup_timeout_s", float("inf"), "startup_timeout_s must be"),
                               ("max_restarts", -1, "max_restarts must be an integer >= 0"),
                               ("max_batch_rows", 0, "max_batch_rows must be an integer >= 1"),
                               ("max_abs_dense", float("nan"), "max_abs_dense must be a finite number > 0")):
        with pytest.raises(ServeError, match=pattern):
            EnsembleServer(cfg, ckpt, mode="inline", **{knob: bad})


def test_cli_bad_checkpoint_is_exit_2_and_one_line(trained, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]  # noqa: F811
    cfg, _, _, _, _ = trained
    rc, err = run_cli(["-m", "recsys.serve", "--config", str(cfg), "--checkpoint", str(tmp_path / "nope"),
                       "--mode", "inline", "--requests", "1", "--warmup", "0"])
    assert rc == 2, err
    line = one_line_error(err)
    assert line.startswith("error: ") and str(tmp_path / "nope" / "group0") in line and "no complete checkpoint" in line


def test_cli_refused_request_and_bad_knob_are_exit_2(trained, capsys: pytest.CaptureFixture[str]) -> None:  # type: ignore[no-untyped-def]  # noqa: F811
    cfg, ckpt, _, _, _ = trained
    base = ["--config", str(cfg), "--checkpoint", str(ckpt), "--mode", "inline", "--requests", "1", "--warmup", "0"]
    assert serve.main([*base, "--batch", "8", "--max-batch-rows", "4"]) == 2
    err = capsys.readouterr().err
    assert err == "error: request has 8 rows in ids, more than max_batch_rows = 4; split it into smaller requests\n"
    assert serve.main([*base, "--timeout-s", "0"]) == 2
    assert capsys.readouterr().err == "error: timeout_s must be a number of seconds > 0, got 0.0\n"
    assert serve.main([*base, "--batch", "0"]) == 2
    assert capsys.readouterr().err.startswith("error: --batch, --requests and --threads must be >= 1")
