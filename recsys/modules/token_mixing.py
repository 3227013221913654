"""RankMixer's layer (arXiv 2507.15551): token mixing + per-token FFNs over feature tokens.

Each layer (post-norm, as in the paper)::

    S = LN(TokenMix(X) + X)          parameter-free, [B, T, D] -> [B, T, D]
    X = LN(PFFN(S) + S)              T independent FFNs D -> k*D -> D (GELU)

The mixing.  The reference mixes by splitting each token's D channels into H = T
equal heads and gathering head h of every token into output token h, so it needs
D % T == 0.  Here the mixing is a fixed permutation of the T*D values: split every
token's D channels into H near-equal chunks (the first D % H chunks one longer),
list the values head-major (head h of token 1, head h of token 2, ...), and cut
that list into T rows of D.  When H == T and D % T == 0 this is exactly the
reference's mixing; otherwise every output token still draws about D/T channels
from every input token.

LayerNorm (``norm="token"``, our default) normalizes each token over its D channels with
learned affine parameters, as the paper.  The official code (``norm="tensor"``, the
tts4ctr preset's) calls ``F.layer_norm(x, x.shape)``: one mean and variance over the whole
[B, T, D] batch tensor, no affine.  That couples the examples of a batch: an example's
logit depends on which other examples share its batch, and so on the batch size, and
serving one request alone differs from scoring it in a batch.  Per token it depends on
the example alone.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

NORMS = ("token", "tensor")


def token_mixing_permutation(num_tokens: int, dim: int, heads: int) -> torch.Tensor:
    """Indices into the flattened [T*D] tokens giving the mixed [T*D] layout (see module doc).

    Example::

        perm = token_mixing_permutation(3, 4, 3)   # chunks of 2, 1, 1 channels
        mixed = x.flatten(1)[:, perm].view(-1, 3, 4)
    """
    base, extra = divmod(dim, heads)
    starts = [h * base + min(h, extra) for h in range(heads + 1)]
    perm = [
        t * dim + c
        for h in range(heads)
        for t in range(num_tokens)
        for c in range(starts[h], starts[h + 1])
    ]
    return torch.tensor(perm, dtype=torch.long)


class PerTokenFFN(nn.Module):
    """T independent FFNs, one per token, run as two batched matmuls: [B, T, D] -> [B, T, D].

    Batching the T FFNs into ``baddbmm`` is the same math as the reference's loop
    over T ``nn.Sequential`` blocks, with 2 kernel calls instead of 2*T.

    Example::

        ffn = PerTokenFFN(num_tokens=5, dim=8, expansion=2)
        y = ffn(torch.randn(4, 5, 8))   # [4, 5, 8]
    """

    def __init__(self, num_tokens: int, dim: int, expansion: int) -> None:
        super().__init__()
        hidden = dim * expansion
        self.w1 = nn.Parameter(torch.empty(num_tokens, dim, hidden))
        self.b1 = nn.Parameter(torch.empty(num_tokens, 1, hidden))
        self.w2 = nn.Parameter(torch.empty(num_tokens, hidden, dim))
        self.b2 = nn.Parameter(torch.empty(num_tokens, 1, dim))
        for fan_in, params in ((dim, (self.w1, self.b1)), (hidden, (self.w2, self.b2))):
            bound = 1.0 / math.sqrt(fan_in)  # nn.Linear's default init, per token
            for p in params:
                nn.init.uniform_(p, -bound, bound)
        self.act = nn.GELU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xt = x.transpose(0, 1)  # [T, B, D]
        h = self.act(torch.baddbmm(self.b1, xt, self.w1))  # [T, B, k*D]
        return torch.baddbmm(self.b2, h, self.w2).transpose(0, 1)  # [B, T, D]

    def flops_per_example(self) -> int:
        return 2 * (self.w1.numel() + self.w2.numel())


class TensorNorm(nn.Module):
    """LayerNorm over the whole input tensor, no affine: the official RankMixer's
    ``F.layer_norm(x, x.shape)`` ([B, T, D] -> [B, T, D], one mean and variance per batch).

    Example::

        y = TensorNorm()(torch.randn(8, 5, 7))   # y.mean() ~ 0, y.var() ~ 1 over all 280 values
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(x, x.shape)


class RankMixerLayer(nn.Module):
    """Token mixing and per-token FFN, each with residual + LayerNorm: [B, T, D] -> [B, T, D].

    ``norm``: "token" (``nn.LayerNorm(D)``) or "tensor" (``TensorNorm``), see the module doc.

    Example::

        layer = RankMixerLayer(num_tokens=5, dim=7, heads=5, expansion=2)
        y = layer(torch.randn(8, 5, 7))   # [8, 5, 7]
    """

    perm: torch.Tensor  # a buffer, registered in __init__

    def __init__(self, num_tokens: int, dim: int, heads: int, expansion: int, norm: str = "token") -> None:
        super().__init__()
        if norm not in NORMS:
            raise ValueError(f"norm must be one of {', '.join(NORMS)}, got {norm!r}")
        self.num_tokens, self.dim = num_tokens, dim
        self.register_buffer("perm", token_mixing_permutation(num_tokens, dim, heads), persistent=False)
        self.norm1: nn.Module = nn.LayerNorm(dim) if norm == "token" else TensorNorm()
        self.ffn = PerTokenFFN(num_tokens, dim, expansion)
        self.norm2: nn.Module = nn.LayerNorm(dim) if norm == "token" else TensorNorm()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mixed = x.flatten(1)[:, self.perm].view(-1, self.num_tokens, self.dim)  # [B, T, D]
        s = self.norm1(mixed + x)
        return self.norm2(self.ffn(s) + s)

    def flops_per_example(self) -> int:
        return self.ffn.flops_per_example()
