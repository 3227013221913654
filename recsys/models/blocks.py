"""Deprecated location: the blocks moved, this module re-exports them.

- ``MLP`` -> ``recsys.modules.mlp``; ``SparseArch``, ``DenseArch``, ``OverArch`` ->
  ``recsys.modules.arches`` (reusable blocks, as ``torchrec/modules``);
- ``table_name``, ``make_ebc``, ``table_inits``, ``materialize_embeddings`` ->
  ``recsys.models.embedding_init`` (how a member's tables are born and filled);
- ``num_tokens``, ``member_arches`` -> ``recsys.models.member`` (member composition).

The FLOP accounting convention is documented in ``recsys.modules``.

Example::

    from recsys.models.blocks import MLP             # still works
    from recsys.modules.mlp import MLP               # the new home
"""
from __future__ import annotations

from recsys.cli import warn_moved

warn_moved("recsys.models.blocks", "recsys.modules and recsys.models.embedding_init", __name__)

from recsys.models.embedding_init import make_ebc, materialize_embeddings, table_inits, table_name
from recsys.models.member import member_arches, num_tokens
from recsys.modules.arches import DenseArch, OverArch, SparseArch
from recsys.modules.mlp import MLP

__all__ = [
    "MLP", "DenseArch", "OverArch", "SparseArch", "make_ebc", "materialize_embeddings", "member_arches",
    "num_tokens", "table_inits", "table_name",
]
