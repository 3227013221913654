"""RankMixer (arXiv 2507.15551): token mixing + per-token FFNs over feature tokens.

Wiring: optional tokenizer -> ``layers`` x ``RankMixerLayer`` (``recsys.modules.token_mixing``,
where the layer and its mixing permutation are written down), flattened ->
``OverArch(mlp)`` -> [B].

Lifting the reference's constraint.  The reference mixes by splitting each
token's D channels into H = T equal heads, so it needs D % T == 0 (embedding dim
39 on Criteo).  Here:

- a tokenizer, ``Linear(F*E -> T*D)`` on the flattened field embeddings, makes
  T and D free knobs; it is left out when (T, D) == (fields, embedding dim),
  which is the reference's configuration;
- the mixing permutation splits every token's D channels into H near-equal
  chunks, so any (T, D, H) works; H == T with D % T == 0 is exactly the
  reference's mixing.  ``heads`` defaults to T (0 means T).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from recsys.data.schema import Schema
from recsys.models.member import Member, compose_member
from recsys.models.protocols import total_flops
from recsys.models.spec import MemberConfig, check_layer_sizes
from recsys.modules.token_mixing import NORMS, PerTokenFFN, RankMixerLayer, token_mixing_permutation

__all__ = [
    "PerTokenFFN", "RankMixerConfig", "RankMixerInteraction", "RankMixerLayer", "build_rankmixer",
    "token_mixing_permutation",
]


@dataclass
class RankMixerConfig(MemberConfig):
    """Reference defaults (T = fields, D = embedding dim); ``layers``/``expansion``/``tokens``/``token_dim`` scale it."""

    layers: int = 3
    expansion: int = 2
    tokens: int = 0  # T; 0 means the number of input tokens (fields, plus one if dense)
    token_dim: int = 0  # D; 0 means embedding_dim
    heads: int = 0  # H for token mixing; 0 means T
    mlp: tuple[int, ...] = (1024, 512, 256)
    # "token": LayerNorm per token over D, with affine (the paper's); "tensor": over the whole
    # [B, T, D] batch tensor, no affine (the official code's F.layer_norm(x, x.shape)).  See
    # recsys.modules.token_mixing for why ours is the default.
    norm: str = "token"

    def __post_init__(self) -> None:
        if self.norm not in NORMS:
            raise ValueError(f"norm must be one of {', '.join(NORMS)}, got {self.norm!r}")
        for key in ("layers", "expansion"):
            if getattr(self, key) < 1:
                raise ValueError(f"{key} must be >= 1, got {getattr(self, key)}")
        for key in ("tokens", "token_dim", "heads"):
            if getattr(self, key) < 0:
                raise ValueError(f"{key} must be >= 0 (0 = default), got {getattr(self, key)}")
        check_layer_sizes(mlp=self.mlp)


class RankMixerInteraction(nn.Module):
    """Optional tokenizer, then RankMixer layers, flattened: [B, F, E] -> [B, T*D].

    Example::

        inter = RankMixerInteraction(6, 16, RankMixerConfig(tokens=5, token_dim=7))
        h = inter(torch.randn(8, 6, 16))   # [8, 35]
    """

    def __init__(self, in_tokens: int, in_dim: int, cfg: RankMixerConfig) -> None:
        super().__init__()
        self.num_tokens = cfg.tokens or in_tokens
        self.dim = cfg.token_dim or in_dim
        heads = cfg.heads or self.num_tokens
        needs_tokenizer = (self.num_tokens, self.dim) != (in_tokens, in_dim)
        self.tokenizer = nn.Linear(in_tokens * in_dim, self.num_tokens * self.dim) if needs_tokenizer else None
        self.layers = nn.Sequential(
            *(RankMixerLayer(self.num_tokens, self.dim, heads, cfg.expansion, cfg.norm) for _ in range(cfg.layers))
        )
        self.output_dim = self.num_tokens * self.dim

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        x = tokens
        if self.tokenizer is not None:
            x = self.tokenizer(tokens.flatten(1)).view(-1, self.num_tokens, self.dim)  # [B, T, D]
        return self.layers(x).flatten(1)  # [B, T*D]

    def flops_per_example(self) -> int:
        flops = total_flops(self.layers)
        if self.tokenizer is not None:
            flops += 2 * self.tokenizer.in_features * self.tokenizer.out_features
        return flops


def build_rankmixer(cfg: RankMixerConfig, schema: Schema, name: str) -> Member:
    """Example::

        member = build_member("rankmixer:tokens=5,token_dim=7,mlp=256-128", schema, name="rm0")
        logits = member(dense, kjt)   # [B]
    """
    return compose_member(
        "rankmixer", cfg, schema, name, lambda t, d: RankMixerInteraction(t, d, cfg), head=cfg.mlp
    )
