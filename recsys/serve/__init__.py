"""Serving a trained ensemble: every request fans out to one worker process per member, and the
answer is ``sigmoid(mean of the members' logits)``, the merge that evaluation reports.

The modules, along a request's path:

- ``request``: what a valid request is (shapes, ids inside their tables, finite bounded
  dense values, 1 <= B <= max_batch_rows), refused with one line; numpy only.
- ``server``: ``EnsembleServer``, which checks a request, runs it on its members and merges.
- ``members``: members loaded from the training checkpoints, and their forward.
- ``fanout`` (the server's side) and ``worker`` (the worker process): one process per
  member, request ids, deadlines, restarts.
- ``inline``: every member in the caller's process, the baseline.
- ``latency``, ``cli``: timing, the latency-vs-members table, ``python -m recsys.serve``.
- ``ray_parse``, ``ray_member``, ``ray_ingress``, ``ray_app``, ``ray_cli``: the Ray Serve
  engine (``--engine ray``): request bodies (ids or raw rows), one deployment per member
  with ``@serve.batch``, the HTTP ingress (fan-out, deadline, merge), the application
  builder (also ``serve run``'s), its command-line options.  Ray is imported by these only.

Why names are imported lazily here: ``recsys.serve.request`` (and ``recsys.serve_request``)
needs only numpy, so an ingress can check requests without importing torch; the names that
need torch are imported on first use.

Example::

    from recsys.serve import EnsembleServer

    with EnsembleServer("configs/demo.toml", "checkpoints/demo", timeout_s=10) as server:
        probs, member_logits = server.predict(dense, ids)   # [B], [B, M]

    python -m recsys.serve --config configs/demo.toml --checkpoint checkpoints/demo --timeout-s 10
"""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from recsys.serve.request import (DEFAULT_MAX_ABS_DENSE, DEFAULT_MAX_BATCH_ROWS, RequestError, RequestSpec, ServeError,
                                  validate_request)

if TYPE_CHECKING:
    from recsys.serve.cli import main
    from recsys.serve.members import WorkerHook, load_trained_members
    from recsys.serve.server import (DEFAULT_MAX_RESTARTS, DEFAULT_STARTUP_TIMEOUT_S, DEFAULT_TIMEOUT_S,
                                     EnsembleServer)

__all__ = ["DEFAULT_MAX_ABS_DENSE", "DEFAULT_MAX_BATCH_ROWS", "DEFAULT_MAX_RESTARTS", "DEFAULT_STARTUP_TIMEOUT_S",
           "DEFAULT_TIMEOUT_S", "EnsembleServer", "RequestError", "RequestSpec", "ServeError", "WorkerHook",
           "load_trained_members", "main", "validate_request"]

_LAZY = {  # name -> the module that defines it (imports torch)
    "DEFAULT_MAX_RESTARTS": "recsys.serve.server", "DEFAULT_STARTUP_TIMEOUT_S": "recsys.serve.server",
    "DEFAULT_TIMEOUT_S": "recsys.serve.server", "EnsembleServer": "recsys.serve.server",
    "WorkerHook": "recsys.serve.members", "load_trained_members": "recsys.serve.members",
    "main": "recsys.serve.cli",
}


def __getattr__(name: str) -> object:
    """``from recsys.serve import EnsembleServer`` and the like, imported on first use (PEP 562)."""
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
