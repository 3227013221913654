"""Serving a trained ensemble: every request fans out to one worker process per member, and
the answer is ``sigmoid(mean of the members' logits)``, the merge that evaluation reports.

Why a process per member: a member's forward is a chain of small ops dispatched from Python,
so in one process M members run one after another and the latency grows ~M-fold.  With a
worker per member they run at the same time, and the latency a caller sees stays near the
slowest member's plus the hand-off (a pipe round trip), as long as there is a core per
member.  Each worker loads its member from the training checkpoints (DCP reshards them into
an unsharded module) and runs it with ``torch.inference_mode`` on its own threads.
``mode="inline"`` runs every member in the caller's process instead, as the baseline.

Requests are raw rows, as a caller has them: ``dense`` float32 [B, Dd] and ``ids`` int
[B, F] (one id per sparse field, the npy layout).

Example::

    with EnsembleServer("configs/demo.toml", "checkpoints/demo") as server:
        probs, member_logits = server.predict(dense, ids)   # [B], [B, M]

    python -m recsys.serve --config configs/demo.toml --checkpoint checkpoints/demo
"""
from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import sys
import time
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from recsys.checkpoint import CheckpointMissing, load_trained_group
from recsys.config import ExperimentConfig, load_config
from recsys.data.batch import kjt_from_ids
from recsys.models.member import Member
from recsys.errors import UserError


class ServeError(UserError, RuntimeError):
    """A checkpoint, request or worker problem, with a one-line message."""


def load_trained_members(
    cfg: ExperimentConfig, indices: Sequence[int], checkpoint_root: str | Path, which: str = "best"
) -> list[Member]:
    """Members ``indices`` (config order) with their groups' checkpointed weights; each group's
    checkpoint is read once, however many of its members are asked for."""
    groups: dict[int, Any] = {}
    members = []
    for j in indices:
        k = next(k for k, idx in enumerate(cfg.groups) if j in idx)
        if k not in groups:
            groups[k] = load_trained_group(cfg, k, checkpoint_root, which)[0]
        member = groups[k].members[cfg.member_names[j]]
        assert isinstance(member, Member)
        members.append(member.eval())
    return members


def _forward(members: Sequence[Member], dense: np.ndarray, ids: np.ndarray, names: Sequence[str]) -> np.ndarray:
    """Logits [B, len(members)]; the request's KJT is built once for all of them."""
    with torch.inference_mode():
        kjt = kjt_from_ids(torch.from_numpy(ids), list(names))
        dense_t = torch.from_numpy(dense)
        return torch.stack([m(dense_t, kjt) for m in members], dim=1).numpy()


def _worker(conn: Connection, config: str, overrides: list[str], checkpoint: str, which: str, j: int,
            threads: int) -> None:
    """One member's process: load it, say ready, then answer requests until ``None`` arrives."""
    torch.set_num_threads(threads)
    try:
        cfg = load_config(config, overrides)
        members = load_trained_members(cfg, [j], checkpoint, which)
        names = cfg.schema().sparse_names
        conn.send(("ready", cfg.member_names[j]))
    except Exception as e:  # reported by the server as one line
        conn.send(("error", f"{type(e).__name__}: {' '.join(str(e).split())}"))
        return
    while True:
        msg = conn.recv()
        if msg is None:
            return
        try:
            conn.send(("ok", _forward(members, msg[0], msg[1], names)[:, 0]))
        except Exception as e:
            conn.send(("error", f"{type(e).__name__}: {' '.join(str(e).split())}"))


class EnsembleServer:
    """Answers ``predict(dense, ids)`` with the merged probability and every member's logit.

    ``mode="fanout"`` starts one worker process per member (spawned: each imports torch and
    loads its member, ~5 s); ``mode="inline"`` keeps all members in this process and sets
    its torch threads to ``threads_per_member``.  ``members`` (config indices) serves a
    subset, e.g. the first m for the AUC-vs-m curve.
    """

    def __init__(
        self, config: str | Path, checkpoint: str | Path, *, mode: str = "fanout", which: str = "best",
        threads_per_member: int = 1, overrides: Sequence[str] = (), members: Sequence[int] | None = None,
    ) -> None:
        if mode not in ("fanout", "inline"):
            raise ValueError(f"mode must be fanout or inline, got {mode!r}")
        if which not in ("best", "latest"):
            raise ValueError(f"which must be best or latest, got {which!r}")
        self.cfg = load_config(config, list(overrides))
        schema = self.cfg.schema()
        self.members = list(range(len(self.cfg.members))) if members is None else list(members)
        if not self.members or any(not 0 <= j < len(self.cfg.members) for j in self.members):
            raise ServeError(f"members must be config indices in [0, {len(self.cfg.members)}), got {members}")
        self.names = [self.cfg.member_names[j] for j in self.members]
        self.sparse_names = schema.sparse_names
        self.num_dense = schema.num_dense
        self.vocab_sizes = np.array(schema.vocab_sizes)
        self.mode = mode
        self._procs: list[Any] = []
        self._conns: list[Connection] = []
        self._members: list[Member] = []
        if mode == "inline":
            torch.set_num_threads(threads_per_member)
            self._members = load_trained_members(self.cfg, self.members, checkpoint, which)
            return
        ctx = mp.get_context("spawn")  # fork would copy this process's torch threads and state
        try:
            for j, name in zip(self.members, self.names):
                parent, child = ctx.Pipe()
                p = ctx.Process(target=_worker, daemon=True, name=f"recsys-serve-{name}",
                                args=(child, str(config), list(overrides), str(checkpoint), which, j,
                                      threads_per_member))
                p.start()
                child.close()
                self._procs.append(p)
                self._conns.append(parent)
            for j, conn in enumerate(self._conns):
                status, detail = self._recv(j, conn)
                if status != "ready":
                    raise ServeError(f"member {self.names[j]}: {detail}")
        except BaseException:
            self.close()
            raise

    def _recv(self, j: int, conn: Connection) -> tuple[str, Any]:
        try:
            return conn.recv()
        except EOFError:
            raise ServeError(f"member {self.names[j]}: worker process exited "
                             f"(exit code {self._procs[j].exitcode})") from None

    def _check(self, dense: np.ndarray, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        ids = np.ascontiguousarray(ids, dtype=np.int64)
        if ids.ndim != 2 or ids.shape[1] != len(self.sparse_names):
            raise ServeError(f"ids must be [B, {len(self.sparse_names)}] (one id per sparse field), got {ids.shape}")
        dense = np.ascontiguousarray(dense, dtype=np.float32)
        if self.num_dense == 0 and dense.size == 0:
            dense = np.zeros((len(ids), 0), np.float32)
        if dense.shape != (len(ids), self.num_dense):
            raise ServeError(f"dense must be [B, {self.num_dense}] with B = {len(ids)} as in ids, got {dense.shape}")
        bad = (ids < 0) | (ids >= self.vocab_sizes)
        if bad.any():
            r, f = map(int, np.argwhere(bad)[0])
            raise ServeError(f"row {r}: id {ids[r, f]} of {self.sparse_names[f]} is outside its table "
                             f"[0, {self.vocab_sizes[f]})")
        return dense, ids

    def predict(self, dense: np.ndarray, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(probability [B], member logits [B, M])`` for B rows; merged = sigmoid(mean logit)."""
        dense, ids = self._check(dense, ids)
        if self.mode == "inline":
            logits = _forward(self._members, dense, ids, self.sparse_names)  # [B, M]
        else:
            for conn in self._conns:  # every member starts before any answer is awaited
                conn.send((dense, ids))
            cols = []
            for j, conn in enumerate(self._conns):
                status, out = self._recv(j, conn)
                if status != "ok":
                    raise ServeError(f"member {self.names[j]}: {out}")
                cols.append(out)
            logits = np.stack(cols, axis=1)  # [B, M]
        return 1.0 / (1.0 + np.exp(-logits.mean(axis=1))), logits

    def close(self) -> None:
        for conn in self._conns:
            try:
                conn.send(None)
            except (BrokenPipeError, OSError):
                pass
        for p in self._procs:
            p.join(timeout=10)
            if p.is_alive():
                p.terminate()
        self._procs, self._conns = [], []

    def __enter__(self) -> "EnsembleServer":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


# ----------------------------------------------------------------------------- CLI: latency


def _percentiles(seconds: list[float]) -> str:
    ms = np.array(seconds) * 1e3
    return f"p50 {np.percentile(ms, 50):.2f} ms, p90 {np.percentile(ms, 90):.2f} ms, p99 {np.percentile(ms, 99):.2f} ms"


def _time_requests(server: EnsembleServer, batches: list[tuple[np.ndarray, np.ndarray]], requests: int,
                   warmup: int) -> tuple[list[float], np.ndarray]:
    """Seconds per request, and the probabilities of the first pass over ``batches``."""
    for i in range(warmup):
        server.predict(*batches[i % len(batches)])
    lat, probs = [], []
    for i in range(requests):
        d, x = batches[i % len(batches)]
        t0 = time.perf_counter()
        prob, _ = server.predict(d, x)
        lat.append(time.perf_counter() - t0)
        if i < len(batches):
            probs.append(prob)
    return lat, np.concatenate(probs)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m recsys.serve",
        description="Serve a trained ensemble on rows of a split: request latency with members fanned out to one "
                    "process each, against all members in one process, and a check that both give the same answers.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n"
               "  python -m recsys.serve --config configs/demo.toml --checkpoint checkpoints/demo\n"
               "  python -m recsys.serve --config configs/demo.toml --checkpoint checkpoints/demo --batch 1 "
               "--requests 500 --mode fanout\n"
               "  python -m recsys.serve --config configs/demo.toml --checkpoint checkpoints/demo --sweep",
    )
    p.add_argument("--config", required=True, help="the experiment TOML the ensemble was trained with")
    p.add_argument("--checkpoint", required=True, help="its checkpoint directory (group0/, group1/, ...)")
    p.add_argument("--split", default="test", help="rows to send as requests")
    p.add_argument("--batch", type=int, default=256, help="rows per request")
    p.add_argument("--requests", type=int, default=100)
    p.add_argument("--warmup", type=int, default=10, help="requests sent before timing")
    p.add_argument("--mode", choices=["both", "fanout", "inline"], default="both")
    p.add_argument("--which", choices=["best", "latest"], default="best", help="checkpoint per group")
    p.add_argument("--threads", type=int, default=1, help="torch threads per member")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override")
    p.add_argument("--sweep", action="store_true",
                   help="latency of the first m members for m = 1..M, both modes (the latency-vs-M table)")
    args = p.parse_args(argv)
    from recsys.config import ConfigError
    from recsys.data.loader import LoaderError, open_split
    from recsys.data.schema import SchemaError

    try:
        cfg = load_config(args.config, args.set)
        rows = open_split(cfg.data_source(), args.split)
        n = min(rows.num_rows, args.batch * (args.requests + args.warmup))
        dense, ids, _ = rows.read(np.arange(n))
        batches = [(dense[i:i + args.batch], ids[i:i + args.batch]) for i in range(0, n, args.batch)]
        batches = [b for b in batches if len(b[1]) == args.batch] or batches
        modes = ["fanout", "inline"] if args.mode == "both" or args.sweep else [args.mode]
        sizes = range(1, len(cfg.members) + 1) if args.sweep else [len(cfg.members)]
        table = []
        for m in sizes:
            answers: dict[str, np.ndarray] = {}
            p50 = {}
            for mode in modes:
                t = time.perf_counter()
                with EnsembleServer(args.config, args.checkpoint, mode=mode, which=args.which,
                                    threads_per_member=args.threads, overrides=args.set,
                                    members=range(m)) as server:
                    start_s = time.perf_counter() - t
                    lat, answers[mode] = _time_requests(server, batches, args.requests, args.warmup)
                p50[mode] = float(np.percentile(lat, 50)) * 1e3
                print(f"{mode}: {m} of {len(cfg.members)} members, batch {args.batch}, {args.requests} requests: "
                      f"{_percentiles(lat)} (start-up {start_s:.1f} s)", flush=True)
            if len(answers) == 2:
                diff = float(np.abs(answers["fanout"] - answers["inline"]).max())
                print(f"fanout vs inline: max |probability difference| {diff:.2e}")
                if diff > 1e-5:
                    print("error: fanout and inline answers differ", file=sys.stderr)
                    return 1
            table.append((m, p50))
        if args.sweep:
            print(f"\n| members | fanout p50 ms | inline p50 ms |   ({os.cpu_count()} CPU cores, batch {args.batch})")
            print("|---:|---:|---:|")
            for m, p in table:
                print(f"| {m} | {p['fanout']:.2f} | {p['inline']:.2f} |")
    except (ServeError, CheckpointMissing, ConfigError, LoaderError, SchemaError, ValueError) as e:
        print("error: " + " ".join(str(e).split()), file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
