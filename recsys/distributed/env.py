"""This process's place in the torchrun world: ``init_distributed`` and the ``DistEnv`` it returns.

Why one place: the launcher's variables (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``,
``LOCAL_WORLD_SIZE``) are read here, once, and everything below takes them from the
``DistEnv``; before, four functions read them, each with its own fallback.

Example::

    env = init_distributed("cpu")   # DistEnv(rank=0, world_size=1, local_rank=0, ..., backend="gloo")
    env.local_world_size            # ranks per node: a global rank's GPU is rank % this
"""
from __future__ import annotations

import os
import socket
from dataclasses import dataclass

import torch
import torch.distributed as dist

from recsys.config.schema import DEVICES


@dataclass
class DistEnv:
    """This process's place in the world, and the device/backend it uses."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    backend: str  # "gloo" | "nccl"
    # Ranks per node (torchrun's LOCAL_WORLD_SIZE): a global rank's CUDA shard lives on
    # cuda:{rank % local_world_size}.  0 (a hand-built env) = one node: world_size.
    local_world_size: int = 0

    def __post_init__(self) -> None:
        if self.local_world_size <= 0:
            self.local_world_size = self.world_size


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("localhost", 0))
        return int(s.getsockname()[1])


def init_distributed(device: str = "auto") -> DistEnv:
    """Joins the torchrun/torchx world (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT).

    Without torchrun's env it starts a 1-process world on a free localhost port, so
    ``python recsys/train_group.py`` runs the same code path as a launched job.  The
    launcher's variables are read here and nowhere else: the returned ``DistEnv`` carries
    them (``local_world_size``: LOCAL_WORLD_SIZE, else the world size, i.e. one node).
    ``device``: "auto" (cuda + nccl if CUDA is available, else cpu + gloo), "cpu" or
    "cuda".  If a process group already exists it is reused.

    Example::

        env = init_distributed("cpu")   # DistEnv(rank=0, world_size=1, ..., backend="gloo")
    """
    if device not in DEVICES:
        raise ValueError(f"device must be auto, cpu or cuda, got {device!r}")
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' was requested but torch.cuda.is_available() is False")
    backend = "nccl" if device == "cuda" else "gloo"
    launched = "RANK" in os.environ and "WORLD_SIZE" in os.environ
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    local_world_size = int(os.environ.get("LOCAL_WORLD_SIZE", "0"))  # 0: the world size, below
    if device == "cuda":
        visible = torch.cuda.device_count()
        if local_rank >= visible:
            raise ValueError(
                f"local rank {local_rank} needs GPU {local_rank} but only {visible} are visible; "
                f"use --nproc_per_node <= {visible} or --device cpu"
            )
        torch.cuda.set_device(local_rank)
        dev = torch.device("cuda", local_rank)
    else:
        dev = torch.device("cpu")
    if not dist.is_initialized():
        if launched:
            dist.init_process_group(backend=backend, init_method="env://")
        else:
            port = _free_port()
            dist.init_process_group(
                backend=backend, init_method=f"tcp://localhost:{port}", rank=0, world_size=1
            )
    return DistEnv(dist.get_rank(), dist.get_world_size(), local_rank, dev, dist.get_backend(), local_world_size)
