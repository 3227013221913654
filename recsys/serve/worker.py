"""The body of one member's worker process, and the messages it exchanges with the server.

Why a module of its own: the worker is started with multiprocessing's ``spawn`` (fork would
copy the server's torch threads and state), so its target is imported by module path in a
fresh interpreter; here it sits apart from the server's side of the pipe
(``recsys.serve.fanout``) and imports only what a worker needs.

The protocol, over one ``multiprocessing`` pipe per worker:

- the worker loads its member and sends ``(READY, "ready", name)``, or
  ``(READY, "error", one line)`` and exits 1;
- then, for each request ``(rid, dense float32 [B, Dd], ids int64 [B, F])``, it replies
  ``(rid, "ok", logits float32 [B])`` or ``(rid, "error", one line)``;
- ``None``, or the server's end of the pipe closing, ends it (exit 0).

Example::

    ctx = mp.get_context("spawn")
    parent, child = ctx.Pipe()
    ctx.Process(target=serve_member, args=(child, source, 0), daemon=True).start()
    parent.recv()                    # (0, "ready", "m0_dcnv2")
"""
from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import NoReturn

import numpy as np
import torch

from recsys.config import load_config
from recsys.serve.members import WorkerHook, error_text, forward_members, load_trained_members

__all__ = ["READY", "MemberSource", "serve_member"]

READY = 0  # the request id of a worker's start-up reply; requests count from 1


@dataclass(frozen=True)
class MemberSource:
    """Where a worker finds its member, and how it runs it (picklable: it crosses ``spawn``).

    ``config`` / ``overrides``: the experiment TOML and its ``KEY=VALUE`` overrides;
    ``checkpoint``: the checkpoint root (``group0/``, ...); ``which``: ``"best"`` or
    ``"latest"``; ``threads``: torch threads of the worker; ``hook``: a module-level callable
    run before each forward (``recsys.serve.members.WorkerHook``), or None.
    """

    config: str
    overrides: tuple[str, ...]
    checkpoint: str
    which: str
    threads: int
    hook: WorkerHook | None


Reply = tuple[int, str, np.ndarray | str]
"""``(request id, "ok" | "error" | "ready", logits [B] | one line | member name)``."""


def serve_member(conn: Connection, source: MemberSource, j: int) -> None:
    """Member ``j``'s (config index) process: load it, reply ``(READY, "ready", name)``, then
    answer each request until ``None`` arrives or the server's end of the pipe closes."""
    torch.set_num_threads(source.threads)
    try:
        cfg = load_config(source.config, list(source.overrides))
        members = load_trained_members(cfg, [j], source.checkpoint, source.which)
        names = cfg.schema().sparse_names
        name = cfg.member_names[j]
        conn.send((READY, "ready", name))
    except Exception as e:  # reported by the server as one line
        try:
            conn.send((READY, "error", error_text(e)))
        except OSError:
            pass
        _quit(1)
    while True:
        try:
            msg = conn.recv()
        except (EOFError, OSError):  # the server is gone
            _quit(0)
        if msg is None:
            _quit(0)
        rid, dense, ids = msg
        try:
            if source.hook is not None:
                source.hook(name, dense, ids)
            reply: Reply = (rid, "ok", forward_members(members, dense, ids, names)[:, 0])
        except Exception as e:
            reply = (rid, "error", error_text(e))
        try:
            conn.send(reply)
        except OSError:
            _quit(0)


def _quit(code: int) -> NoReturn:
    """End a worker at once: a normal interpreter exit tears torch down for ~3 s, which made
    ``close()`` and every restart wait; a worker has nothing to flush but stdio."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
