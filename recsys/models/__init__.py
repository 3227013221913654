"""Model zoo: one file per architecture (its config, its interaction wiring, a builder),
composed from the reusable blocks in ``recsys.modules`` into a ``Member``
(``member.py``), and registered by name in ``registry.py``.

Example::

    from recsys.models import build_member
    member = build_member("dcnv2:seed=3,cross_layers=4", schema, name="m0")
    logits = member(dense, kjt)   # [B]
"""
from recsys.models.member import Member
from recsys.models.protocols import FlopCounted, Interaction, MemberBuilder
from recsys.models.registry import MODELS, build_member
from recsys.models.spec import MemberConfig, SpecError

__all__ = ["MODELS", "FlopCounted", "Interaction", "Member", "MemberBuilder", "MemberConfig", "SpecError", "build_member"]
