"""TorchX components: grouped ensemble training, evaluation and serving latency, scheduler-agnostic.

``grouped_train`` builds the AppDef with ``torchx.components.dist.ddp`` (one role,
``nnodes`` replicas, torchrun inside each), so it runs unchanged on every TorchX
scheduler: ``local_cwd`` (this checkout), ``local_docker``, ``slurm``,
``kubernetes``, ``aws_batch``...  Only ``image`` and the resources differ between
them; see docs/launching.md.

Examples::

    # 2 ranks on this machine (groups of configs/demo.toml train in parallel):
    torchx run -s local_cwd torchx_components/recsys.py:grouped_train --config configs/demo.toml --nproc_per_node 2
    # 2 nodes x 8 GPUs on Slurm, from a shared checkout:
    torchx run -s slurm torchx_components/recsys.py:grouped_train \\
        --config configs/paper_heterogeneous.toml --nnodes 2 --nproc_per_node 8 --gpu 8 --cpu 64 --memMB 480000
    # re-score the checkpoints, then time serving with members fanned out (one process each):
    torchx run -s local_cwd torchx_components/recsys.py:evaluate --config configs/demo.toml --checkpoint checkpoints/demo
    torchx run -s local_cwd torchx_components/recsys.py:serve_latency --config configs/demo.toml \
        --checkpoint checkpoints/demo --sweep
    # Kubernetes, from an image that holds this repository at /app:
    torchx run -s kubernetes -cfg queue=default torchx_components/recsys.py:grouped_train \\
        --image registry.example.com/recsys:latest --config configs/paper_homogeneous.toml --nproc_per_node 4 --gpu 4
"""

from typing import Dict, List, Optional

import torchx
import torchx.specs as specs
from torchx.components import utils
from torchx.components.dist import ddp

TRAIN_SCRIPT = "recsys/train_group.py"


def grouped_train(
    config: str = "configs/demo.toml",
    nnodes: int = 1,
    nproc_per_node: int = 2,
    image: str = torchx.IMAGE,
    cpu: int = 2,
    gpu: int = 0,
    memMB: int = 4096,
    h: Optional[str] = None,
    name: str = "recsys/grouped_train",
    resume: bool = False,
    device: str = "auto",
    overrides: Optional[List[str]] = None,
    env: Optional[Dict[str, str]] = None,
    max_retries: int = 0,
    rdzv_port: int = 29500,
    mounts: Optional[List[str]] = None,
) -> specs.AppDef:
    """Grouped training of an ensemble (recsys/train_group.py under torchrun).

    With W = nnodes * nproc_per_node ranks and K groups in the config, the groups
    train in parallel on W/K ranks each when W % K == 0 (and W >= K), else one
    after another on all W ranks.

    Args:
        config: experiment TOML, relative to the job's working directory (the image's
            workdir, or this checkout for local_cwd)
        nnodes: number of hosts
        nproc_per_node: ranks per host (for GPUs: at most the GPUs per host)
        image: container image holding this repository (ignored by local_cwd; for slurm the
            directory to run in)
        cpu: CPUs per host
        gpu: GPUs per host
        memMB: host memory in MB
        h: a named TorchX resource (takes precedence over cpu/gpu/memMB)
        name: job name, "{experiment}/{run}"
        resume: continue from the latest checkpoints of this config's run
        device: auto | cpu | cuda (auto: cuda + NCCL if available, else cpu + gloo)
        overrides: config overrides KEY=VALUE, e.g. train.epochs=1,name=try2
        env: extra environment variables, e.g. OMP_NUM_THREADS=1
        max_retries: scheduler retries (combine with resume=True to continue after a failure)
        rdzv_port: rendezvous port on the first host (multi-node only)
        mounts: mounts for container schedulers, e.g. type=bind,src=/data,dst=/app/data
    """
    args = ["--config", config]
    if resume:
        args.append("--resume")
    if device != "auto":
        args += ["--device", device]
    args += _overrides(overrides)
    job_env = {"OMP_NUM_THREADS": str(max(1, cpu // max(1, nproc_per_node)))}
    job_env.update(env or {})
    return ddp(
        *args,
        script=TRAIN_SCRIPT,
        image=image,
        name=name,
        h=h,
        cpu=cpu,
        gpu=gpu,
        memMB=memMB,
        j=f"{nnodes}x{nproc_per_node}",
        env=job_env,
        max_retries=max_retries,
        rdzv_port=rdzv_port,
        mounts=mounts,
    )


def _overrides(overrides: Optional[List[str]]) -> List[str]:
    args: List[str] = []
    for item in overrides or []:
        args += ["--set", item]
    return args


def evaluate(
    config: str = "configs/demo.toml",
    checkpoint: str = "checkpoints/demo",
    split: str = "test",
    which: str = "best",
    image: str = torchx.IMAGE,
    cpu: int = 2,
    gpu: int = 0,
    memMB: int = 4096,
    h: Optional[str] = None,
    name: str = "recsys_evaluate",  # no "/": a utils.python app name is used as is (local_cwd loses "a/b")
    overrides: Optional[List[str]] = None,
) -> specs.AppDef:
    """Re-scores saved checkpoints on a split (python -m recsys.eval), in one process: the
    report (results.md/.json, AUC-vs-m plot) lands in the config's run directory.

    Args:
        config: the experiment TOML the ensemble was trained with
        checkpoint: its checkpoint directory (group0/, group1/, ...)
        split: train | val | test
        which: best (early stopping's choice) or latest checkpoint per group
        image: container image holding this repository (ignored by local_cwd)
        cpu: CPUs
        gpu: GPUs (the evaluation uses cuda when the config's device allows it)
        memMB: memory in MB
        h: a named TorchX resource (takes precedence over cpu/gpu/memMB)
        name: job name
        overrides: config overrides KEY=VALUE
    """
    args = ["--config", config, "--checkpoint", checkpoint, "--split", split, "--which", which]
    return utils.python(*args, *_overrides(overrides), m="recsys.eval", image=image, name=name, cpu=cpu,
                        gpu=gpu, memMB=memMB, h=h)


def serve_latency(
    config: str = "configs/demo.toml",
    checkpoint: str = "checkpoints/demo",
    batch: int = 256,
    requests: int = 100,
    sweep: bool = False,
    threads: int = 1,
    image: str = torchx.IMAGE,
    cpu: int = 4,
    memMB: int = 8192,
    h: Optional[str] = None,
    name: str = "recsys_serve_latency",
    overrides: Optional[List[str]] = None,
) -> specs.AppDef:
    """Request latency of the trained ensemble served with one process per member against all
    members in one process (python -m recsys.serve); checks that both answer the same.

    Args:
        config: the experiment TOML the ensemble was trained with
        checkpoint: its checkpoint directory
        batch: rows per request
        requests: timed requests per configuration
        sweep: time the first m members for every m (latency against the number of members)
        threads: torch threads per member
        image: container image holding this repository (ignored by local_cwd)
        cpu: CPUs (fan-out stays flat while there is one per member)
        memMB: memory in MB
        h: a named TorchX resource (takes precedence over cpu/memMB)
        name: job name
        overrides: config overrides KEY=VALUE
    """
    args = ["--config", config, "--checkpoint", checkpoint, "--batch", str(batch), "--requests", str(requests),
            "--threads", str(threads)]
    if sweep:
        args.append("--sweep")
    return utils.python(*args, *_overrides(overrides), m="recsys.serve", image=image, name=name, cpu=cpu,
                        memMB=memMB, h=h)



def study(
    *study_args: str,
    image: str = torchx.IMAGE,
    cpu: int = 2,
    gpu: int = 0,
    memMB: int = 8192,
    h: Optional[str] = None,
    name: str = "recsys_study",
) -> specs.AppDef:
    """The whole study (python -m recsys.study) as one job: its runs one after another on the
    job's host; a re-submitted job skips the runs already done.  To fan the runs out instead,
    run the study anywhere with ``--launcher torchx --scheduler <yours>``.

    Example: ``torchx run -s slurm torchx_components/recsys.py:study --gpu 1 -- --device cuda --knobs all``

    Args:
        study_args: the study's options (python -m recsys.study --help)
        image: container image holding this repository (ignored by local_cwd)
        cpu: CPUs
        gpu: GPUs
        memMB: memory in MB
        h: a named TorchX resource (takes precedence over cpu/gpu/memMB)
        name: job name
    """
    return utils.python(*study_args, m="recsys.study", image=image, name=name, cpu=cpu, gpu=gpu, memMB=memMB, h=h)
