"""Shared test settings: two CPU cores, so keep torch to one intra-op thread per process."""
import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch  # noqa: E402

torch.set_num_threads(1)
