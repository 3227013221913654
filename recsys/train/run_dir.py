"""A run's directories: checked before anything is touched, set aside, restored, released.

Why: a run must never lose what an earlier run wrote.  The inputs are validated first
(``preflight``, ``check_previous_run``, on every rank, before the process group exists); a
fresh run then moves the previous run of its name (``runs/<name>``, ``checkpoints/<name>``)
to ``<dir>.previous`` and deletes it only once its own report is written
(``release_previous_run``); ``--resume`` after a fresh run that died before checkpointing
moves the set-aside run back (``restore_previous_for_resume``).

Example::

    preflight(cfg); check_previous_run(cfg, resume)     # every rank, before init_distributed
    resume = prepare_run_dirs(cfg, env, resume)         # collective: set aside or restore
    ...                                                 # train, report
    release_previous_run(cfg)                           # rank 0, after the report
"""
from __future__ import annotations

import shutil
from pathlib import Path
from typing import TYPE_CHECKING

import torch.distributed as dist

from recsys.config import ConfigError
from recsys.data.loader import LoaderError, open_split
from recsys.errors import one_line

if TYPE_CHECKING:
    from recsys.config import ExperimentConfig
    from recsys.distributed import DistEnv

PREVIOUS_SUFFIX = ".previous"  # runs/<name>.previous, checkpoints/<name>.previous: the run a fresh one replaces


def _has_checkpoint(ckpt_dir: Path) -> bool:
    return any(any(d.glob("step-*/state.json")) for d in ckpt_dir.glob("group*"))


def _previous(d: Path) -> Path:
    return d.with_name(d.name + PREVIOUS_SUFFIX)


def _run_dirs(cfg: ExperimentConfig) -> list[Path]:
    """runs/<name> and checkpoints/<name>, once each (they may be one directory)."""
    out: list[Path] = []
    for d in (cfg.run_dir, cfg.ckpt_dir):
        if all(d.resolve() != o.resolve() for o in out):
            out.append(d)
    return out


def _has_previous_checkpoint(cfg: ExperimentConfig) -> bool:
    return _has_checkpoint(_previous(cfg.ckpt_dir))


def preflight(cfg: ExperimentConfig) -> None:
    """Opens every split the run will read (train, val, test) and checks what a run needs of
    them, before anything is written, moved or removed; every rank runs it before the process
    group exists, so a bad input costs one line and no work.

    Checks: each split's arrays exist, are readable .npy files (a truncated file is caught by
    its header's size), have the schema's shapes, dtypes and row counts; the train split holds
    at least one global batch (else an epoch runs 0 steps and reports an untrained model).
    """
    source = cfg.data_source()
    splits = {}
    for split in ("train", "val", "test"):
        try:
            splits[split] = open_split(source, split)
        except LoaderError as e:
            raise LoaderError(f"{cfg.source}: data_dir: {one_line(e)}") from None
    rows, batch = splits["train"].num_rows, cfg.train.batch_size
    if rows < batch:
        raise ConfigError(
            f"{cfg.source}: train.batch_size={batch} is larger than the train split ({rows} rows): "
            "an epoch would run 0 steps; lower train.batch_size"
        )


def check_previous_run(cfg: ExperimentConfig, resume: bool) -> None:
    """Refuses, before anything is touched, a fresh run that could only proceed by deleting
    checkpoints: ``checkpoints/<name>`` holds an unfinished run that checkpointed while
    ``<name>.previous`` still holds the run before it (set aside by that unfinished run).
    Every rank runs it (file reads only), so all refuse alike."""
    if resume or not _has_checkpoint(cfg.ckpt_dir) or not _has_previous_checkpoint(cfg):
        return
    raise ConfigError(
        f"{cfg.source}: {cfg.ckpt_dir} holds an unfinished run with checkpoints, and {_previous(cfg.ckpt_dir)} "
        "the run before it: continue the unfinished one with --resume, or delete one of them"
    )


def set_aside_previous_run(cfg: ExperimentConfig) -> None:
    """Moves the last run of this name (``runs/<name>``, ``checkpoints/<name>``) to
    ``<dir>.previous``, where it stays until the new run has finished (report written).

    If a ``.previous`` pair is already there, the run after it never finished and (see
    ``check_previous_run``) never checkpointed: what it left, at most a few TensorBoard
    events, is dropped and the ``.previous`` pair kept.  No checkpoint is deleted before a
    newer finished run exists.  Runs on global rank 0 only.
    """
    dirs = [d for d in _run_dirs(cfg) if d.exists()]
    if not dirs:
        return
    keep_current = not any(_previous(d).exists() for d in _run_dirs(cfg))
    if not keep_current:
        check_previous_run(cfg, resume=False)  # never drop checkpoints (main checks it first, on every rank)
    for d in dirs:
        if keep_current:
            d.rename(_previous(d))
        else:
            shutil.rmtree(d)
    where = " and ".join(str(_previous(d)) for d in _run_dirs(cfg) if _previous(d).exists())
    print(f"train_group: the previous run of {cfg.name!r} is kept in {where} until this run finishes "
          "(use --resume to continue a run instead)", flush=True)


def restore_previous_for_resume(cfg: ExperimentConfig) -> bool:
    """``--resume`` where ``checkpoints/<name>`` has no checkpoint but ``<name>.previous`` has
    (a fresh run set it aside and died before checkpointing): moves it back, dropping the dead
    run's leftovers, so the resume continues it.  Global rank 0 only; True if it did."""
    if _has_checkpoint(cfg.ckpt_dir) or not _has_previous_checkpoint(cfg):
        return False
    for d in _run_dirs(cfg):
        if d.exists():
            shutil.rmtree(d)
        if _previous(d).exists():
            _previous(d).rename(d)
    print(f"train_group: --resume: continuing the run kept in {_previous(cfg.ckpt_dir)} (the fresh run after it "
          "never checkpointed)", flush=True)
    return True


def release_previous_run(cfg: ExperimentConfig) -> None:
    """Deletes the ``.previous`` pair once the new run has finished."""
    for d in _run_dirs(cfg):
        if _previous(d).exists():
            shutil.rmtree(_previous(d), ignore_errors=True)


def prepare_run_dirs(cfg: ExperimentConfig, env: DistEnv, resume: bool) -> bool:
    """Readies the run's directories on every rank (collective); -> whether the run resumes.

    ``--resume``: a set-aside run with checkpoints is moved back first (rank 0); with no
    checkpoint at all it says so and the run starts fresh.  A fresh run of a name replaces that
    name's old checkpoints and TensorBoard events (a stale best.json or event file would
    otherwise mix two runs), but only once it has something to show: the old run is set aside
    now and deleted when the new run has finished, so a run that fails, in any group, loses
    nothing.
    """
    if resume:
        if env.rank == 0:
            restore_previous_for_resume(cfg)
        dist.barrier()
        # Every rank looks before rank 0 may move anything (the barrier), so all agree.
        has_ckpt = _has_checkpoint(cfg.ckpt_dir)
        dist.barrier()
        if not has_ckpt:
            if env.rank == 0:
                print(f"train_group: --resume: no checkpoint under {cfg.ckpt_dir}; starting fresh", flush=True)
            resume = False
    if not resume:
        if env.rank == 0:
            set_aside_previous_run(cfg)
        dist.barrier()
    return resume
