"""Dense parameter counts (and FLOPs) of the official TTS4CTR models: tests/test_preset.py's reference numbers.

Why a script: the parity test must not import the official code (it is not ours, and not
installed), but its numbers must be reproducible.  This builds each official model with the
official defaults (trainer_group.py's argparse defaults: dim 16, MLP 1024-512-256, 3 cross
layers, Wukong 3 x (LCB 16, FMB 16, rank 24, FMB MLP 512-512), RankMixer 3 layers, expansion
2 at latent_dim = field_num) and counts every parameter except the one global embedding table.
With ``--flops`` it also counts FLOPs per example of one forward with
``torch.utils.flop_counter.FlopCounterMode`` (matmul-family ops, 2 per multiply-add: a naive
count of the official model, which docs/preset.md sets against our convention).

Extract the official modules first (read-only mirror of aTitye/TTS4CTR)::

    mkdir -p /tmp/tts4ctr/modules && touch /tmp/tts4ctr/modules/__init__.py
    for f in models layers; do
        git -C /work/.mirror/aTitye+TTS4CTR/repo show HEAD:modules/$f.py > /tmp/tts4ctr/modules/$f.py
    done

Example::

    .venv/bin/python scripts/official_param_counts.py /tmp/tts4ctr/modules --fields 39 24 --flops
"""
from __future__ import annotations

import argparse
import importlib
import sys
from pathlib import Path
from typing import Any, Sequence

import torch
from torch.utils.flop_counter import FlopCounterMode

from recsys.cli import parser_with_examples, run_main
from recsys.errors import UserError

MODELS = ("fnn", "ipnn", "deepfm", "dcn", "dcnv2", "finalmlp", "wukong", "rankmixer")
FEAT_NUM = 100  # rows of the global table: irrelevant to the dense count


class OfficialCodeError(UserError, ValueError):
    """The given path does not hold the official ``modules`` package (models.py, layers.py)."""


def official_opt(fields: int, dim: int, model: str) -> dict[str, Any]:
    """The official ``opt`` dict at trainer_group.py's defaults; RankMixer runs at D = fields."""
    return {
        "latent_dim": fields if model == "rankmixer" else dim,
        "feat_num": FEAT_NUM,
        "field_num": fields,
        "mlp_dims": [1024, 512, 256],
        "mlp_dropout": 0.0,
        "use_bn": False,
        "cross": 3,
        "num_layers": 3,
        "num_embed_lcb": 16,
        "num_embed_fmb": 16,
        "rank_fmb": 24,
        "fm_mlp_dims": [512, 512],
        "num_L": 3,
        "expansion_rate": 2,
    }


def _official_models(modules_dir: Path) -> Any:
    """The official ``modules.models`` module, imported from ``modules_dir``."""
    if not (modules_dir / "models.py").is_file() or not (modules_dir / "layers.py").is_file():
        raise OfficialCodeError(f"{modules_dir} has no models.py and layers.py (see this script's --help)")
    sys.path.insert(0, str(modules_dir.resolve().parent))  # the official code imports "modules.layers"
    return importlib.import_module("modules.models")


def official_counts(modules_dir: Path, fields: int, dim: int = 16, batch: int = 4) -> dict[str, tuple[int, int]]:
    """{model: (dense parameters, FLOPs per example)} of the official models on ``fields``
    categorical fields; FLOPs from ``FlopCounterMode`` over one eval forward of ``batch`` rows."""
    models = _official_models(modules_dir)
    out = {}
    for name in MODELS:
        opt = official_opt(fields, dim, name)
        model = models.build_model(name, opt).eval()
        table = model.embedding.embedding.numel()
        ids = torch.randint(0, opt["feat_num"], (batch, fields), generator=torch.Generator().manual_seed(0))
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            model(ids)
        out[name] = (sum(p.numel() for p in model.parameters()) - table, counter.get_total_flops() // batch)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    p = parser_with_examples(
        "scripts/official_param_counts.py",
        "Dense parameter counts of the official TTS4CTR models (all parameters minus the embedding table).",
        """examples:
  .venv/bin/python scripts/official_param_counts.py /tmp/tts4ctr/modules
  .venv/bin/python scripts/official_param_counts.py /tmp/tts4ctr/modules --fields 39 24 --dim 16 --flops

The modules dir holds the official models.py and layers.py (git show HEAD:modules/<f>.py from
the TTS4CTR mirror) and an empty __init__.py.
""",
    )
    p.add_argument("modules_dir", type=Path, help="the extracted official modules/ directory")
    p.add_argument("--fields", type=int, nargs="+", default=[39, 24], help="field counts (default 39 24)")
    p.add_argument("--dim", type=int, default=16, help="latent_dim of all but RankMixer (default 16)")
    p.add_argument("--flops", action="store_true", help="also print FLOPs per example (FlopCounterMode)")
    args = p.parse_args(argv)

    def body() -> int:
        counts = {f: official_counts(args.modules_dir, f, args.dim) for f in args.fields}
        cols = [(f, "dense params", 0) for f in args.fields]
        if args.flops:
            cols += [(f, "FLOPs/example", 1) for f in args.fields]
        print("| model | " + " | ".join(f"{what}, {f} fields" for f, what, _ in cols) + " |")
        print("|---|" + "---:|" * len(cols))
        for name in MODELS:
            print(f"| {name} | " + " | ".join(f"{counts[f][name][i]}" for f, _, i in cols) + " |")
        return 0

    return run_main("official_param_counts", body)


if __name__ == "__main__":
    sys.exit(main())
