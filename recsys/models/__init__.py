"""Model zoo: one file per architecture, composed from ``blocks``."""
from recsys.models.member import Member
from recsys.models.registry import MODELS, build_member
from recsys.models.spec import MemberConfig, SpecError

__all__ = ["MODELS", "Member", "MemberConfig", "SpecError", "build_member"]
