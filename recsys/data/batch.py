"""Turning row-major numpy/tensor arrays into TorchRec ``Batch`` objects."""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from torchrec.datasets.utils import Batch
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor


def kjt_from_ids(ids: torch.Tensor, keys: Sequence[str]) -> KeyedJaggedTensor:
    """[B, F] per-field ids (one id per field per row) -> KJT keyed by field.

    KJT values are feature-major: all B ids of field 0, then field 1, ...
    """
    batch_size, num_fields = ids.shape
    if num_fields != len(keys):
        raise ValueError(f"ids have {num_fields} fields but {len(keys)} keys were given")
    values = ids.t().reshape(-1).to(torch.int64)  # [F*B], feature-major
    lengths = torch.ones(num_fields * batch_size, dtype=torch.int32)
    return KeyedJaggedTensor(keys=list(keys), values=values, lengths=lengths)


def batch_from_arrays(
    dense: np.ndarray | torch.Tensor,
    sparse: np.ndarray | torch.Tensor,
    labels: np.ndarray | torch.Tensor,
    keys: Sequence[str],
) -> Batch:
    """dense [B, Dd] float32, sparse [B, F] int, labels [B] -> ``Batch``."""
    d = torch.as_tensor(np.asarray(dense, dtype=np.float32) if isinstance(dense, np.ndarray) else dense)
    s = torch.as_tensor(np.asarray(sparse) if isinstance(sparse, np.ndarray) else sparse)
    y = torch.as_tensor(np.asarray(labels, dtype=np.float32) if isinstance(labels, np.ndarray) else labels)
    if d.dim() == 1:
        d = d.reshape(s.shape[0], -1)
    return Batch(dense_features=d.float(), sparse_features=kjt_from_ids(s, keys), labels=y.float().reshape(-1))
