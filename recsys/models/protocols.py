"""The contracts between the model zoo and its users, as Protocols.

- ``FlopCounted``: anything that knows its exact forward cost per example (every
  member, arch and interaction; ``recsys.budget`` reads it).  The convention is in
  ``recsys.modules``: the matmul family only, 2 FLOPs per multiply-add.
- ``Interaction``: a member's model-specific part, tokens -> [B, output_dim].
- ``MemberBuilder``: what the registry maps a model name to, ``(config, schema, name)
  -> Member``, typed by the model's own config class.

Example::

    def cost(x: FlopCounted) -> int:
        return x.flops_per_example()

    cost(build_member("dcnv2", schema, "m0"))          # a Member
    total_flops(member.interaction.layers)             # an nn.Sequential of counted layers
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Iterable, Protocol, TypeVar, runtime_checkable

import torch
from torch import nn

if TYPE_CHECKING:
    from recsys.data.schema import Schema
    from recsys.models.member import Member
    from recsys.models.spec import MemberConfig

ConfigT = TypeVar("ConfigT", bound="MemberConfig", contravariant=True)


@runtime_checkable
class FlopCounted(Protocol):
    """Has an exact FLOP count per example of its forward (see ``recsys.modules``).

    Runtime-checkable, so ``isinstance(m, FlopCounted)`` tells a counted module
    from one that would silently count as zero.
    """

    def flops_per_example(self) -> int: ...


class Interaction(FlopCounted, Protocol):
    """A member's interaction: an ``nn.Module`` mapping tokens [B, T, D] (multi-set members:
    [B, M, T, D]) to features [B, output_dim].  Interactions that end in the logit
    themselves (DeepFM, FinalMLP) return [B] and have ``output_dim == 1``."""

    output_dim: int

    def __call__(self, tokens: torch.Tensor) -> torch.Tensor: ...


class MemberBuilder(Protocol[ConfigT]):
    """Builds one member from its model's config: ``build_ipnn(IPNNConfig(), schema, "m0")``.

    Generic in the config class, so the registry checks that each builder is paired
    with the config it takes (``recsys.models.registry.model_entry``).
    """

    def __call__(self, cfg: ConfigT, schema: Schema, name: str) -> Member: ...


def total_flops(modules: Iterable[nn.Module]) -> int:
    """Sum of ``flops_per_example()`` over ``modules`` (an ``nn.Sequential`` or ``nn.ModuleList``
    of counted blocks); raises TypeError for a module without a count instead of skipping it.

    Example::

        total_flops(nn.ModuleList([MLP(8, [4]), MLP(4, [2])]))   # 2*8*4 + 2*4*2 = 80
    """
    total = 0
    for m in modules:
        if not isinstance(m, FlopCounted):
            raise TypeError(f"{type(m).__name__} has no flops_per_example(), so its cost is unknown")
        total += m.flops_per_example()
    return total
