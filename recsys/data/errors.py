"""The loader's user error, in a module with no heavy imports.

Why here and not in ``loader.py``: ``recsys.config`` checks TorchRec day files and catches this
error while loading a config, and must not pull in torch and torchdata to do so.

Example::

    from recsys.data.errors import LoaderError

    try:
        loader = make_loader("data/criteo", "train", 4096)
    except LoaderError as e:          # "data/criteo/train_sparse.npy: no such file (split 'train')"
        print(e)
"""
from __future__ import annotations

from recsys.errors import UserError


class LoaderError(UserError, ValueError):
    """A missing or inconsistent data file, or bad loader arguments; one line."""


__all__ = ["LoaderError"]
