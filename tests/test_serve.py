"""Serving (recsys/serve/): checkpointed members answer requests, fanned out or inline, and
their merge equals the offline ensemble; bad requests and missing checkpoints are one-line errors."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from recsys import serve
from recsys.checkpoint import CheckpointMissing
from recsys.serve import EnsembleServer, ServeError
from tests.dist_harness import run_ranks
from tests.test_evaluate import SPECS, _checkpointed_logits, _save_checkpoints, _write_split

GROUPS = [[0, 2], [1]]


def _alive(pid: int | None) -> bool:
    """Whether ``pid`` is a running (not reaped) process."""
    try:
        os.kill(pid, 0)  # type: ignore[arg-type]
    except ProcessLookupError:
        return False
    return True


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, np.ndarray, np.ndarray, np.ndarray]:
    """A 3-member ensemble in 2 groups, checkpointed with weights that differ from the seeded init,
    its config, and the offline merged probability of 30 rows computed member by member."""
    tmp = tmp_path_factory.mktemp("serve")
    data = tmp / "data"
    data.mkdir()
    schema, batch = _write_split(data, 30, split="test")
    run_ranks(_save_checkpoints, 1, str(tmp / "ckpt"), SPECS, GROUPS)
    cfg = tmp / "c.toml"
    cfg.write_text(f'name = "t"\ndata_dir = "{data}"\nmembers = {SPECS!r}\ngroups = {GROUPS!r}\n'.replace("'", '"'))
    logits = _checkpointed_logits(schema, batch, SPECS, GROUPS).numpy()
    dense = np.load(data / "test_dense.npy")
    ids = np.load(data / "test_sparse.npy")
    return cfg, tmp / "ckpt", dense, ids, logits


def test_inline_answers_are_the_checkpointed_ensemble(trained) -> None:  # type: ignore[no-untyped-def]
    cfg, ckpt, dense, ids, logits = trained
    with EnsembleServer(cfg, ckpt, mode="inline") as server:
        prob, member_logits = server.predict(dense, ids)
        np.testing.assert_allclose(member_logits, logits, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(prob, 1 / (1 + np.exp(-logits.mean(1))), rtol=1e-5)
        one, _ = server.predict(dense[:1], ids[:1])  # a single-row request
        assert one.shape == (1,) and one[0] == pytest.approx(prob[0], rel=1e-5)
    with EnsembleServer(cfg, ckpt, mode="inline", members=[2, 0]) as server:  # a subset, in the order asked
        _, sub = server.predict(dense, ids)
        np.testing.assert_allclose(sub, logits[:, [2, 0]], rtol=1e-5, atol=1e-6)


def test_fanout_equals_inline_and_reports_worker_errors(trained) -> None:  # type: ignore[no-untyped-def]
    cfg, ckpt, dense, ids, logits = trained
    with EnsembleServer(cfg, ckpt, mode="fanout") as server:
        pids = server.worker_pids()
        assert len(set(pids)) == 3 and all(_alive(pid) for pid in pids)
        assert server.member_states() == {"m0_fnn": "ready", "m1_fnn": "ready", "m2_fnn": "ready"}
        prob, member_logits = server.predict(dense, ids)
        np.testing.assert_allclose(member_logits, logits, rtol=1e-5, atol=1e-6)
    assert not any(_alive(pid) for pid in pids)  # close() stopped (and reaped) the workers
    # a member whose group has no checkpoint: the worker's error, in one line, at start-up
    with pytest.raises(ServeError, match="member m1_fnn: CheckpointMissing: .*group1: no complete checkpoint"):
        EnsembleServer(cfg, ckpt.parent / "nothing_here", mode="fanout", members=[1])


def test_bad_requests_are_one_line_errors(trained) -> None:  # type: ignore[no-untyped-def]
    cfg, ckpt, dense, ids, _ = trained
    with EnsembleServer(cfg, ckpt, mode="inline") as server:
        with pytest.raises(ServeError, match=r"ids must be \[B, 3\]"):
            server.predict(dense, ids[:, :2])
        with pytest.raises(ServeError, match=r"dense must be \[B, 1\]"):
            server.predict(np.zeros((len(ids), 2), np.float32), ids)
        with pytest.raises(ServeError, match=r"dense must be \[B, 1\] with B = 15"):  # rows disagree
            server.predict(dense, ids[:15])
        bad = ids.copy()
        bad[4, 1] = 10_000
        with pytest.raises(ServeError, match="row 4: id 10000 of .* is outside its table"):
            server.predict(dense, bad)
    with pytest.raises(CheckpointMissing, match="no complete checkpoint"):
        EnsembleServer(cfg, ckpt.parent / "nothing_here", mode="inline")
    with pytest.raises(ServeError, match="members must be config indices"):
        EnsembleServer(cfg, ckpt, mode="inline", members=[3])


def test_cli_times_both_modes(trained, capsys: pytest.CaptureFixture[str]) -> None:  # type: ignore[no-untyped-def]
    cfg, ckpt, _, _, _ = trained
    assert serve.main(["--config", str(cfg), "--checkpoint", str(ckpt), "--batch", "8", "--requests", "5",
                       "--warmup", "1", "--mode", "inline"]) == 0
    out = capsys.readouterr().out
    assert "inline: 3 of 3 members, batch 8, 5 requests: p50" in out
    assert serve.main(["--config", str(cfg), "--checkpoint", str(ckpt.parent / "none")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "no complete checkpoint" in err
