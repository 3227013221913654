"""Checkpoints: DCP save/load of one training group, verification, loading a trained group.

Used by train, eval and serve alike (so it sits below all three).

=============  ==============================================================================
``state``      ``TrainState`` (state.json) and the RNG states a resume restores
``manifest``   ``write_manifest`` / ``verify_checkpoint``: sizes and hashes, ``CheckpointCorrupt``
``group``      ``GroupCheckpointer``: atomic sharded saves, verified loads, fallback, best.json
``trained``    ``load_trained_group``: a group's best or latest weights, unsharded, on CPU
=============  ==============================================================================

Example::

    ckpt = GroupCheckpointer(Path("checkpoints/demo/group0"), pg, group_rank=0)
    ckpt.save(step, model, optimizer, state, extras)     # each epoch / every N steps
    found = ckpt.load_latest(model, optimizer)           # -> (state, extras) or None
"""
from __future__ import annotations

from recsys.checkpoint.group import GroupCheckpointer, Optimizer, init_lazy_optimizer_state
from recsys.checkpoint.manifest import HASHED_MAX_BYTES, MANIFEST, CheckpointCorrupt, verify_checkpoint, write_manifest
from recsys.checkpoint.state import RngState, TrainState, rng_state, set_rng_state
from recsys.checkpoint.trained import CheckpointMissing, load_trained_group

__all__ = [
    "HASHED_MAX_BYTES", "MANIFEST", "CheckpointCorrupt", "CheckpointMissing", "GroupCheckpointer", "Optimizer",
    "RngState", "TrainState", "init_lazy_optimizer_state", "load_trained_group", "rng_state", "set_rng_state",
    "verify_checkpoint", "write_manifest",
]
